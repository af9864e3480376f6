//! `liblayergate_native.so`: layergate as an Envoy dynamic module, for Envoy's
//! `envoy.extensions.filters.http.dynamic_modules` HTTP filter (Envoy 1.39.x and 1.40.x; see
//! `layergate-filter`'s `native` module for the pinned ABI).
//!
//! The code is `layergate-filter`'s, built with its `native` feature; this crate only makes
//! the shared object, which exports the filter's `envoy_dynamic_module_on_*` hooks. Envoy
//! finds it as `lib<name>.so` on `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` with
//! `dynamic_module_config.name: layergate_native`.

// Linked for its exports, which nothing here names.
extern crate layergate_filter;
