# Two commands on a fresh machine:
#   make demo   Envoy + oidc-filter + a local IdP + a sample app, ready to log in from a browser
#   make test   every test: lints, unit and flow tests, real-Envoy end-to-end and browser runs, image and
#               manifests, attack suite, soak, log audit, bounded fuzzing
# Everything else here is what those two are made of.

# Cargo's target directory: `target/`, or where CARGO_TARGET_DIR says (the harness follows it too).
TARGET := $(or $(CARGO_TARGET_DIR),target)
WASM := $(TARGET)/wasm32-wasip1/release/oidc_filter.wasm

.PHONY: setup wasm lint unit e2e fuzz test demo bench image envoy-config

setup:
	@bash harness/setup.sh

wasm: setup
	cargo build --release --target wasm32-wasip1 -p oidc-filter

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p oidc-filter --target wasm32-wasip1 -- -D warnings
	# The fuzz crate is outside the workspace: build its targets here so a filter API change that breaks
	# them fails the lint, not the fuzz step after the long end-to-end runs.
	cd filter && cargo +nightly fuzz build

unit: setup
	cargo nextest run -p oidc-filter --no-fail-fast
	# The byte loops that have a Wasm SIMD form, checked in that form, in Node's V8 (the engine Envoy embeds),
	# the JSON numbers, whose limits depend on wasm32's 32-bit usize, and the cookies' cipher and form decoding
	# as the module runs them.
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $(CURDIR)/harness/wasi-run.mjs" \
		cargo test -p oidc-filter --lib --target wasm32-wasip1 -- --nocapture cookies:: headers:: session:: json:: aead:: form:: heap:: wasm::

e2e: wasm
	cargo test -p harness --no-fail-fast

fuzz: setup
	bash filter/fuzz/run.sh 20

test: lint unit e2e fuzz

demo: wasm
	cargo run -q -p harness -- demo

bench: wasm
	cargo run -q --release -p harness -- bench

image: wasm
	cargo run -q -p harness --bin oci-image -- --wasm $(WASM) --out $(TARGET)/oci

envoy-config:
	cargo run -q -p harness -- envoy-config > wasmplugin/envoy.yaml
