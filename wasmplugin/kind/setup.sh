#!/usr/bin/env bash
# oidc-filter on a local kind cluster, from nothing to a browser that logs in:
#   Istio (Helm), an ingress gateway of the login's own (the istio/gateway release `oidc-ingressgateway`)
#   whose environment carries the filter's secrets, Keycloak, an echo app,
#   an OCI registry in the cluster, the filter built, packed by `oci-image` and pushed there, and the
#   WasmPlugin, RequestAuthentication and AuthorizationPolicy of wasmplugin/kind.
#
# Usage: wasmplugin/kind/setup.sh [up|down]
#   up    (default) create or update everything, then port-forward and print where to log in
#   down  stop the port-forwards and delete the cluster
#
# Needs: docker, kind, kubectl, helm, cargo with the wasm32-wasip1 target, wasm-opt (binaryen), skopeo.
# Settings (environment): CLUSTER (oidc-filter), ISTIO_VERSION (1.27.0; 1.27 or later, for the gateway chart's
# envVarFrom), APP_PORT (8080), KEYCLOAK_PORT (8180: fixed by the issuer in wasmplugin/kind).
# Not run in CI: it needs Docker and the internet.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KIND_DIR="$ROOT/wasmplugin/kind"
CLUSTER=${CLUSTER:-oidc-filter}
ISTIO_VERSION=${ISTIO_VERSION:-1.27.0}
APP_PORT=${APP_PORT:-8080}
KEYCLOAK_PORT=${KEYCLOAK_PORT:-8180}
# The issuer of wasmplugin/kind (Keycloak's KC_HOSTNAME and realm), which names its authorization endpoint.
ISSUER=http://keycloak.localhost:8180/realms/demo
REGISTRY_PORT=${REGISTRY_PORT:-5000}
STATE="$ROOT/target/kind-$CLUSTER"
KUBECTL=(kubectl --context "kind-$CLUSTER")

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (see the header of this script)"
  done
}

# Starts `kubectl port-forward` in the background and records its pid for `down`.
forward() {
  local name=$1 namespace=$2 target=$3 ports=$4
  stop_forward "$name"
  "${KUBECTL[@]}" -n "$namespace" port-forward "$target" "$ports" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

stop_forward() {
  local pidfile="$STATE/$1.pid"
  if [[ -f $pidfile ]]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

# Waits until a browser's GET of $1 (with Host $2) answers 302, for at most $3 seconds; prints the Location.
# `Accept: text/html`: the filter sends only a browser navigation to log in; plain curl (`*/*`) gets 401.
wait_for_redirect() {
  local url=$1 host=$2 limit=$3 headers="" status="" waited=0
  while ((waited < limit)); do
    headers=$(curl -s -o /dev/null -D - -H "Host: $host" -H 'Accept: text/html' "$url" | tr -d '\r' || true)
    status=$(awk 'NR == 1 {print $2}' <<<"$headers")
    if [[ $status == 302 ]]; then
      awk 'tolower($1) == "location:" {print $2}' <<<"$headers"
      return 0
    fi
    sleep 2
    waited=$((waited + 2))
  done
  die "$url (Host: $host) answered ${status:-nothing}, not 302, after ${limit}s"
}

up() {
  need docker kind kubectl helm cargo wasm-opt skopeo curl openssl
  mkdir -p "$STATE"

  if ! kind get clusters | grep -qx "$CLUSTER"; then
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER"
  fi

  log "installing Istio $ISTIO_VERSION"
  helm repo add istio https://istio-release.storage.googleapis.com/charts >/dev/null 2>&1 || true
  helm repo update istio >/dev/null
  helm --kube-context "kind-$CLUSTER" upgrade --install istio-base istio/base \
    -n istio-system --create-namespace --version "$ISTIO_VERSION" --wait
  helm --kube-context "kind-$CLUSTER" upgrade --install istiod istio/istiod \
    -n istio-system --version "$ISTIO_VERSION" --wait

  log "secrets: a client secret for Keycloak and the gateway, a cookie key for the filter"
  "${KUBECTL[@]}" create namespace istio-ingress --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
  "${KUBECTL[@]}" create namespace keycloak --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
  local client_secret cookie_key
  if "${KUBECTL[@]}" -n istio-ingress get secret oidc-filter >/dev/null 2>&1; then
    client_secret=$("${KUBECTL[@]}" -n istio-ingress get secret oidc-filter \
      -o jsonpath='{.data.client-secret}' | base64 -d)
  else
    client_secret=$(openssl rand -hex 24)
    cookie_key=$(openssl rand -base64 32)
    "${KUBECTL[@]}" -n istio-ingress create secret generic oidc-filter \
      --from-literal=client-secret="$client_secret" --from-literal=cookie-keys="$cookie_key"
  fi
  # The client's redirect URIs name the port the browser reaches the gateway on.
  sed -e "s/@CLIENT_SECRET@/$client_secret/" -e "s/app\.localhost:8080/app.localhost:$APP_PORT/g" \
    "$KIND_DIR/realm.json" >"$STATE/realm.json"
  "${KUBECTL[@]}" -n keycloak create configmap keycloak-realm --from-file=demo.json="$STATE/realm.json" \
    --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -

  log "the login's own gateway, its environment from the Secret (wasmplugin/gateway/values.yaml)"
  helm --kube-context "kind-$CLUSTER" upgrade --install oidc-ingressgateway istio/gateway \
    -n istio-ingress --version "$ISTIO_VERSION" -f "$ROOT/wasmplugin/gateway/values.yaml" \
    --set service.type=ClusterIP --wait

  log "registry, Keycloak, echo app, Gateway and VirtualService"
  "${KUBECTL[@]}" apply -k "$KIND_DIR/apps"
  "${KUBECTL[@]}" -n registry rollout status deployment/registry --timeout=180s
  "${KUBECTL[@]}" -n demo rollout status deployment/httpbin --timeout=180s
  "${KUBECTL[@]}" -n keycloak rollout status deployment/keycloak --timeout=300s

  log "building the filter and its image"
  (cd "$ROOT" && cargo build --release --target wasm32-wasip1 -p oidc-filter)
  forward registry registry svc/registry "$REGISTRY_PORT:5000"
  sleep 2
  local digest
  digest=$(cd "$ROOT" && cargo run -q -p harness --bin oci-image -- \
    --wasm target/wasm32-wasip1/release/oidc_filter.wasm --out "$STATE/oci" \
    --push "localhost:$REGISTRY_PORT/oidc-filter:dev" --insecure)
  stop_forward registry
  [[ $digest =~ ^[0-9a-f]{64}$ ]] || die "oci-image printed '$digest', not a digest"

  log "WasmPlugin (sha256 $digest), RequestAuthentication, AuthorizationPolicy"
  # The overlay carries a placeholder digest (which the API server refuses); the WasmPlugin is the only
  # resource with a spec.sha256.
  "${KUBECTL[@]}" kustomize "$KIND_DIR" | sed "s/^  sha256: .*/  sha256: $digest/" |
    "${KUBECTL[@]}" apply -f -

  forward gateway istio-ingress svc/oidc-ingressgateway "$APP_PORT:80"
  forward keycloak keycloak svc/keycloak "$KEYCLOAK_PORT:8080"
  log "waiting for the gateway to load the filter (a browser is sent to /login, and from there to Keycloak)"
  local location param
  location=$(wait_for_redirect "http://127.0.0.1:$APP_PORT/" "app.localhost:$APP_PORT" 180)
  [[ $location == "/login?rd=%2F" ]] || die "/ redirected to '$location', not to /login?rd=%2F"
  location=$(wait_for_redirect "http://127.0.0.1:$APP_PORT/login?rd=%2F" "app.localhost:$APP_PORT" 60)
  [[ $location == "$ISSUER/protocol/openid-connect/auth?"* ]] ||
    die "/login redirected to '$location', not to Keycloak's authorization endpoint"
  for param in state nonce code_challenge; do
    [[ $location == *[?\&]"$param="* ]] || die "/login redirected to Keycloak without $param: $location"
  done

  cat >&2 <<EOF

Open http://app.localhost:$APP_PORT/ and log in as alice / alice (Keycloak admin: admin / admin at
http://keycloak.localhost:$KEYCLOAK_PORT/). The echo app shows the request it got, with the ID token in
Authorization. Port-forwards run in the background (logs in $STATE); stop everything with
  $0 down
EOF
}

down() {
  need kind
  stop_forward gateway
  stop_forward keycloak
  stop_forward registry
  kind delete cluster --name "$CLUSTER"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 [up|down]" ;;
esac
