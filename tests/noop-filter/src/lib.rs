//! A proxy-wasm HTTP filter that does nothing: every request continues untouched. `make bench`
//! runs it to measure the cost of having a wasm VM in the chain at all (the floor layergate is
//! compared against).

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Noop) });
    }}

    struct Noop;

    impl Context for Noop {}

    impl HttpContext for Noop {}

    impl RootContext for Noop {
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }
}
