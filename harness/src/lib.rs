//! Runs oidc-filter in a real Envoy against a real IdP and a sample app: the demo, the end-to-end
//! tests (`harness/tests/`) and the benchmark.
//!
//! [`Stack::start`] brings up, in this order: the sample app, a [`FaultProxy`] (the issuer URL
//! and Envoy's IdP cluster point at it), Envoy with one listener per site, then the IdP (whose
//! client registrations need the sites' ports) behind the proxy. Processes die with the test
//! binary, even when the stack lives in a `static OnceLock` and is never dropped.

pub mod bench;
pub mod browser;
pub mod envoy;
pub mod idp;
pub mod module;
pub mod oci;
pub mod process;
pub mod profile;
pub mod proxy;
pub mod sealed;
pub mod webdriver;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

pub use browser::{Browser, Followed, Form, Response};
pub use envoy::{
    AccessLog, Envoy, EnvoyConfig, EnvoyOptions, EnvoySite, Served, VmEnv, json_access_log,
    logged_requests, served_requests,
};
pub use idp::{EchoApp, Idp, IdpConfig};
pub use proxy::{FaultProxy, Mode, RoundRobin};
pub use webdriver::{Element, WebDriver};

/// The cookie keys every stack gives the filter unless told otherwise (base64url of 32 bytes).
pub const DEFAULT_COOKIE_KEYS: &str = "aGFybmVzcy1jb29raWUta2V5LTAwMDAwMDAwMDAwMDA";
/// The variable holding the cookie keys.
pub const COOKIE_KEYS_ENV: &str = "OIDC_COOKIE_KEYS";
/// The filter's default callback path, for the IdP's `redirect_uris`.
pub const DEFAULT_CALLBACK_PATH: &str = "/oauth2/callback";

/// The counters of `now` that moved since `before`, and by how much.
pub fn counter_delta(
    before: &HashMap<String, u64>,
    now: &HashMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// Runs `f(0)` to `f(n - 1)` at once, each on a thread of its own, and returns their results in that
/// order: a crowd of clients.
pub fn at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..n).map(|i| scope.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Seconds since the Unix epoch, as the filter's clock and the tokens count them.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `:status` lines `nghttp -v` printed for the responses it received.
pub fn nghttp_statuses(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.contains("] recv (stream_id=") && l.contains(") :status: "))
        .collect()
}

/// How many lines of Envoy's log `log` the Wasm component wrote at `level` (`info`, `warning`: Envoy
/// prints `[warning][wasm]`) that contain `needle`.
pub fn wasm_log_lines(log: &str, level: &str, needle: &str) -> usize {
    let tag = format!("[{level}][wasm]");
    log.lines()
        .filter(|l| l.contains(&tag) && l.contains(needle))
        .count()
}

/// The test binary's hold on its stack's IdP and fault proxy. Tests that reach the IdP (a login, a
/// refresh) hold it shared, so they run side by side; a test that changes what the IdP or its proxy
/// does (a fault, a restart, new keys), or that counts Envoy-wide counters exactly, holds it
/// exclusively (where a suite counts so, every test that sends requests through the filter holds
/// it, so that the counters move by the exclusive test's requests alone). One hold per process, so
/// per test binary: each binary has a stack of its own. A test that fails while holding it does not
/// poison it for the others.
pub mod idp_hold {
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    static HOLD: RwLock<()> = RwLock::new(());

    /// Shared with the other tests that only use the IdP as it is.
    pub fn shared() -> RwLockReadGuard<'static, ()> {
        HOLD.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This test alone.
    pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
        HOLD.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The workspace root (the parent of `harness/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `$CARGO_TARGET_DIR` if set, else `target/` at the workspace root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// The release build of the filter; an error says how to build it if it is missing.
pub fn release_wasm_path() -> Result<PathBuf> {
    let path = target_dir().join("wasm32-wasip1/release/oidc_filter.wasm");
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --target wasm32-wasip1 -p oidc-filter`",
            path.display()
        );
    }
    Ok(path)
}

/// The module as shipped (see [`module`]): the release build without unused exports, through
/// `wasm-opt -Oz`; made from the release build when that is newer.
pub fn wasm_path() -> Result<PathBuf> {
    module::shipped(&release_wasm_path()?)
}

/// A proxy-wasm module that lets everything through (`harness/testdata/passthrough.wat`, built
/// with `wat2wasm` into the target directory): runs the generated Envoy configuration without
/// the real filter, and gives the benchmark a baseline.
pub fn passthrough_wasm() -> Result<PathBuf> {
    let wat = workspace_root().join("harness/testdata/passthrough.wat");
    let out = target_dir().join("e2e/passthrough.wasm");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    // Built under a private name and renamed: another test may be reading the file.
    let tmp = out.with_extension(format!("wasm.{}", private_suffix()));
    module::wat2wasm(&wat, &tmp, &[])?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

/// A name part no other process or thread uses at the same time: the process id and a count. (Tests of
/// one binary run as threads of one process, and may build the same file at once.)
pub fn private_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// The environment variable holding a site's client secret: `OIDC_CLIENT_SECRET_<SITE>`
/// (upper-cased, other characters than A-Z and 0-9 as `_`).
pub fn client_secret_env(site: &str) -> String {
    let suffix: String = site
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("OIDC_CLIENT_SECRET_{suffix}")
}

/// The filter configuration a site starts from: secrets from the environment (Istio's
/// `vmConfig.env` with `valueFrom: HOST`), the IdP cluster named the Istio way.
pub fn default_filter_config(issuer: &str, client_id: &str, site: &str) -> Result<Value> {
    Ok(json!({
        "issuer": issuer,
        "client_id": client_id,
        "client_secret_env": client_secret_env(site),
        "cookie_keys_env": COOKIE_KEYS_ENV,
        "idp_cluster": envoy::cluster_name(issuer)?,
        "bypass_paths": ["/healthz", "/.well-known/acme-challenge/"],
    }))
}

/// Applies a JSON merge patch (RFC 7386): objects merge recursively, `null` removes a key,
/// anything else replaces.
pub fn merge_json(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_json(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A blocking HTTP client for our loopback servers: no proxy from the environment, IPv4 only
/// (so `localhost` is 127.0.0.1), `*.localhost` names resolved to 127.0.0.1 ([`LoopbackNames`]),
/// no redirects followed, every status returned as a response.
pub fn local_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::with_parts(
        ureq::Agent::config_builder()
            .proxy(None)
            .ip_family(ureq::config::IpFamily::Ipv4Only)
            .http_status_as_error(false)
            .max_redirects(0)
            .allow_non_standard_methods(true)
            .timeout_global(Some(timeout))
            .build(),
        ureq::unversioned::transport::DefaultConnector::default(),
        LoopbackNames,
    )
}

/// Resolves `localhost` and every `*.localhost` name to 127.0.0.1, as RFC 6761 lets resolvers do
/// (the system's may not): sites serve host names like `wiki.localhost`, and cookies stay apart
/// per host name as in a browser. Other names go to the system resolver.
#[derive(Debug)]
pub struct LoopbackNames;

impl ureq::unversioned::resolver::Resolver for LoopbackNames {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        if host == "localhost" || host.ends_with(".localhost") {
            let default_port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let mut out = self.empty();
            out.push(SocketAddr::from((
                [127, 0, 0, 1],
                uri.port_u16().unwrap_or(default_port),
            )));
            return Ok(out);
        }
        ureq::unversioned::resolver::DefaultResolver::default().resolve(uri, config, timeout)
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct StackSpec {
    /// Names the work directory `target/e2e/<name>` (logs, generated configs); one per test binary.
    pub name: String,
    /// The sites, each its own listener and IdP client.
    pub sites: Vec<SiteSpec>,
    /// Envoy's `--log-level`.
    pub envoy_log_level: String,
    /// Envoy's `--component-log-level`, e.g. `wasm:debug`.
    pub envoy_component_log_level: Option<String>,
    /// Envoy's `--concurrency`.
    pub concurrency: u32,
    /// The value of `OIDC_COOKIE_KEYS` (comma-separated base64 keys).
    pub cookie_keys: String,
    /// The filter module; `None`: the release build ([`wasm_path`]).
    pub wasm: Option<PathBuf>,
    /// Fixed ports (the demo); `None`: the OS picks every port.
    pub ports: Option<FixedPorts>,
    /// Start the IdP; `false` leaves it down (the proxy refuses connections) until
    /// [`Stack::start_idp`], to test a filter that starts without its IdP.
    pub start_idp: bool,
    /// More IdPs (other instances of the same one): IdP `n` (1-based here, as in
    /// [`HostSpec::idp`]) has its proxy, and so its issuer, on `127.0.0.{n+1}` - another host, so
    /// a browser keeps its cookies apart from the first IdP's - and its clients are the
    /// [`HostSpec`]s that name it. They start with the stack when `start_idp` is set.
    pub extra_idps: usize,
    /// How many seconds the clock of each of `extra_idps` runs ahead ([`IdpConfig::clock_ahead`]), IdP
    /// 1's first; those not listed run on time.
    pub extra_idps_ahead: Vec<u64>,
    /// Serve the IdP over HTTPS, as every real one is: its issuer is then `https://idp.localhost:PORT`,
    /// a TLS front in the stack's Envoy ([`envoy::IdpFront`]) with the stack's certificate ([`Stack::tls`]),
    /// and the IdP cluster reaches it over TLS, checking the certificate. Not with `extra_idps`.
    pub idp_tls: bool,
}

impl Default for StackSpec {
    fn default() -> Self {
        StackSpec {
            name: "default".into(),
            sites: Vec::new(),
            envoy_log_level: "info".into(),
            envoy_component_log_level: None,
            concurrency: 2,
            cookie_keys: DEFAULT_COOKIE_KEYS.into(),
            wasm: None,
            ports: None,
            start_idp: true,
            extra_idps: 0,
            extra_idps_ahead: Vec::new(),
            idp_tls: false,
        }
    }
}

impl StackSpec {
    /// A spec named `name` with these sites and defaults otherwise.
    pub fn new(name: &str, sites: Vec<SiteSpec>) -> StackSpec {
        StackSpec {
            name: name.into(),
            sites,
            ..StackSpec::default()
        }
    }
}

/// Fixed ports: site `i` listens on `first_site + i`.
#[derive(Clone, Copy, Debug)]
pub struct FixedPorts {
    /// The first site's listener.
    pub first_site: u16,
    /// The issuer's port (the proxy in front of the IdP).
    pub idp: u16,
    /// The sample app.
    pub echo: u16,
}

/// One site: a listener with the filter, and its client at the IdP.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// Listener name, stat prefix, and the suffix of `OIDC_CLIENT_SECRET_<SITE>`.
    pub name: String,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret (given to Envoy in `OIDC_CLIENT_SECRET_<SITE>` and to the IdP).
    pub client_secret: String,
    /// Merge patch over [`default_filter_config`].
    pub filter_overrides: Value,
    /// Merge patch over the IdP client registration ([`idp::idp_client`]), e.g.
    /// `{"id_token_ttl": 5, "refresh": false}`.
    pub idp_client_overrides: Value,
    /// Put Istio's `jwt_authn` + `rbac` after the filter (default true).
    pub istio_authn: bool,
    /// Entries of the filter's `hosts` (several hosts and IdPs in one plugin), each with its own
    /// client at its IdP.
    pub hosts: Vec<HostSpec>,
    /// Share the Wasm VM of this id with the other sites naming it: one VM, a root context per site.
    pub shared_vm: Option<String>,
    /// Deliver the filter through file-based ECDS, as istiod delivers a `WasmPlugin`, so that
    /// [`Stack::update_filter_config`] can change it in the running Envoy.
    pub ecds: bool,
    /// Merge patch over the listener's `HttpConnectionManager` (see
    /// [`envoy::EnvoySite::hcm_overrides`]).
    pub hcm_overrides: Value,
    /// A path Envoy buffers whole before the filter (see [`envoy::EnvoySite::buffered_path`]).
    pub buffered_path: Option<String>,
    /// Merge patch over the Wasm filter's `PluginConfig` (see
    /// [`envoy::EnvoySite::plugin_overrides`]).
    pub plugin_overrides: Value,
    /// Clusters the site's filter may name in `idp_cluster` that lead elsewhere than their issuer
    /// (see [`envoy::EnvoySite::clusters`]).
    pub clusters: Vec<(String, SocketAddr)>,
    /// Appended to the stack's issuer in this site's filter configuration, e.g. `/`: an issuer that
    /// differs from the one the IdP's discovery document names (empty: the IdP's own).
    pub issuer_suffix: String,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 over TLS, HTTP/3 over QUIC on the same port number) with the
    /// stack's certificate ([`Stack::tls`]), as an Istio `Gateway` with `tls.mode: SIMPLE` does; the
    /// site's URLs and its IdP client's redirect URIs are then `https`.
    pub tls: bool,
}

impl SiteSpec {
    /// Site `name`, client id `name`, client secret `secret-<name>`, no overrides.
    pub fn new(name: &str) -> SiteSpec {
        SiteSpec {
            name: name.into(),
            client_id: name.into(),
            client_secret: format!("secret-{name}"),
            filter_overrides: json!({}),
            idp_client_overrides: json!({}),
            istio_authn: true,
            hosts: Vec::new(),
            shared_vm: None,
            ecds: false,
            hcm_overrides: Value::Null,
            buffered_path: None,
            plugin_overrides: Value::Null,
            clusters: Vec::new(),
            issuer_suffix: String::new(),
            tls: false,
        }
    }

    /// With a merge patch over the filter configuration (`null` removes a field).
    pub fn filter(mut self, overrides: Value) -> SiteSpec {
        compose_patches(&mut self.filter_overrides, &overrides);
        self
    }

    /// With a merge patch over the IdP client registration (`null` removes a field).
    pub fn idp_client(mut self, overrides: Value) -> SiteSpec {
        compose_patches(&mut self.idp_client_overrides, &overrides);
        self
    }

    /// With one more `hosts` entry.
    pub fn host(mut self, host: HostSpec) -> SiteSpec {
        self.hosts.push(host);
        self
    }
}

/// What Envoy made of an ECDS update ([`Stack::ecds_outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcdsUpdate {
    /// `config_reload` counted it.
    Applied,
    /// `config_fail` counted it.
    Rejected,
}

/// One entry of a site's `hosts`: host names served by their own IdP client. The stack fills in
/// `hosts`, `issuer`, `client_id`, `client_secret_env` and `idp_cluster`, and registers the
/// client at its IdP with a redirect URI (and a post-logout one) for each name in `hosts` without
/// a wildcard and in `redirect_hosts`, on the site's port; when the entry's configuration (or
/// the site's) has a `backchannel_logout_path`, the client's `backchannel_logout_uri` points at
/// it on the first of those names, with `backchannel_logout_session_required`.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// Host patterns, e.g. `wiki.localhost` or `*.apps.localhost`.
    pub hosts: Vec<String>,
    /// Which IdP: 0 is the stack's first, `n` the `n`th of [`StackSpec::extra_idps`].
    pub idp: usize,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret (given to Envoy in `OIDC_CLIENT_SECRET_<SITE>_<CLIENT>`).
    pub client_secret: String,
    /// More host names the client may be redirected back to (names under a wildcard).
    pub redirect_hosts: Vec<String>,
    /// Merge patch over the entry (e.g. `claim_rules`, `scopes`).
    pub filter_overrides: Value,
    /// Merge patch over the IdP client registration.
    pub idp_client_overrides: Value,
}

impl HostSpec {
    /// Hosts `hosts` at IdP `idp` with client `client_id`, secret `secret-<client_id>`.
    pub fn new(client_id: &str, idp: usize, hosts: &[&str]) -> HostSpec {
        HostSpec {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            idp,
            client_id: client_id.into(),
            client_secret: format!("secret-{client_id}"),
            redirect_hosts: Vec::new(),
            filter_overrides: json!({}),
            idp_client_overrides: json!({}),
        }
    }

    /// With a merge patch over the entry.
    pub fn filter(mut self, overrides: Value) -> HostSpec {
        compose_patches(&mut self.filter_overrides, &overrides);
        self
    }

    /// With a merge patch over the IdP client registration.
    pub fn idp_client(mut self, overrides: Value) -> HostSpec {
        compose_patches(&mut self.idp_client_overrides, &overrides);
        self
    }

    /// With one more host name the client may be redirected back to.
    pub fn redirect_host(mut self, name: &str) -> HostSpec {
        self.redirect_hosts.push(name.into());
        self
    }

    /// The names browsers use for these hosts: every pattern without a wildcard, then
    /// `redirect_hosts`.
    pub fn names(&self) -> Vec<String> {
        let exact = self.hosts.iter().filter(|h| !h.contains('*')).cloned();
        exact.chain(self.redirect_hosts.iter().cloned()).collect()
    }
}

/// Adds merge patch `patch` to merge patch `into`. Unlike [`merge_json`], a `null` is kept: it
/// still has to remove that key when the combined patch is applied.
fn compose_patches(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => compose_patches(slot, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

/// The IdP registration of a [`HostSpec`]'s client, for a site listening on `port`.
fn host_client(h: &HostSpec, entry: &Value, site_config: &Value, scheme: &str, port: u16) -> Value {
    let setting = |k: &str| {
        entry
            .get(k)
            .or_else(|| site_config.get(k))
            .and_then(Value::as_str)
    };
    let callback = setting("callback_path").unwrap_or(DEFAULT_CALLBACK_PATH);
    let names = h.names();
    let mut client = json!({
        "client_id": h.client_id,
        "client_secret": h.client_secret,
        "redirect_uris": names.iter().map(|n| format!("{scheme}://{n}:{port}{callback}")).collect::<Vec<_>>(),
        "post_logout_redirect_uris": names.iter().map(|n| format!("{scheme}://{n}:{port}/")).collect::<Vec<_>>(),
        "token_endpoint_auth_method": "client_secret_basic",
        "refresh": true,
    });
    if let (Some(path), Some(name)) = (setting("backchannel_logout_path"), names.first()) {
        client["backchannel_logout_uri"] = json!(format!("{scheme}://{name}:{port}{path}"));
        client["backchannel_logout_session_required"] = json!(true);
    }
    merge_json(&mut client, &h.idp_client_overrides);
    client
}

/// Adds a hosts entry's client registration to an IdP's list; a client that another entry registered
/// already (two entries of one IdP client) gets the entry's redirect URIs added to its own.
fn add_client(list: &mut Vec<Value>, client: Value) {
    let Some(known) = list
        .iter_mut()
        .find(|c| c["client_id"] == client["client_id"])
    else {
        list.push(client);
        return;
    };
    for key in ["redirect_uris", "post_logout_redirect_uris"] {
        if let (Some(to), Some(more)) = (known[key].as_array_mut(), client[key].as_array()) {
            to.extend(more.iter().cloned());
        }
    }
}

/// A started site.
#[derive(Clone, Debug)]
pub struct Site {
    /// Its name.
    pub name: String,
    /// The listener port.
    pub port: u16,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// The filter configuration Envoy was given.
    pub filter_config: Value,
    /// The client registration the IdP was given.
    pub idp_client: Value,
    /// `http`, or `https` for a site with [`SiteSpec::tls`].
    pub scheme: &'static str,
}

impl Site {
    /// `http://localhost:PORT` (`https` with TLS).
    pub fn origin(&self) -> String {
        format!("{}://localhost:{}", self.scheme, self.port)
    }

    /// [`Site::origin`] + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// `http://HOST:PORT` + `path`: this site's listener under another host name (one of its
    /// `hosts`, say `wiki.localhost`, which [`LoopbackNames`] resolves to 127.0.0.1).
    pub fn host_url(&self, host: &str, path: &str) -> String {
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }

    /// The issuer of each IdP client its filter has: the top-level `issuer`, then each `hosts`
    /// entry's (an issuer twice when two entries use it).
    pub fn issuers(&self) -> Vec<&str> {
        let top = self.filter_config["issuer"].as_str();
        let entries = self.filter_config["hosts"].as_array().into_iter().flatten();
        top.into_iter()
            .chain(entries.filter_map(|e| e["issuer"].as_str()))
            .collect()
    }
}

/// A site's scheme.
fn scheme(s: &SiteSpec) -> &'static str {
    if s.tls { "https" } else { "http" }
}

/// A port number free both in TCP and in UDP on 127.0.0.1, for a TLS site's two listeners.
fn free_tcp_and_udp_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free in both TCP and UDP")
}

/// A self-signed certificate for `localhost`, `*.localhost` and 127.0.0.1, made with the `openssl`
/// command for one stack, and the hash a browser is told to trust it by.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The certificate and key files.
    pub files: envoy::TlsFiles,
    /// Base64 of the SHA-256 of its public key (SPKI), for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
}

impl Tls {
    /// Makes the certificate in `dir` (an EC P-256 key, valid for two days).
    pub fn make(dir: &Path) -> Result<Tls> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let openssl = |args: &[&str], input: Option<&[u8]>| -> Result<Vec<u8>> {
            use std::io::Write as _;
            let mut child = std::process::Command::new("openssl")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("running openssl (install it with harness/setup.sh)")?;
            if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin.write_all(input)?;
            }
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(out.stdout)
        };
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1",
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &cert.to_string_lossy(),
            ],
            None,
        )?;
        let public = openssl(
            &["x509", "-in", &cert.to_string_lossy(), "-pubkey", "-noout"],
            None,
        )?;
        let der = openssl(&["pkey", "-pubin", "-outform", "der"], Some(&public))?;
        let digest = openssl(&["dgst", "-sha256", "-binary"], Some(&der))?;
        use base64::Engine as _;
        Ok(Tls {
            files: envoy::TlsFiles { cert, key },
            spki_sha256: base64::engine::general_purpose::STANDARD.encode(digest),
        })
    }
}

/// [`Stack::keys_loaded`] in `log`.
fn keys_loaded_in(log: &str, site: &str, issuer: &str) -> usize {
    let line = format!("{}: oidc-filter: {issuer}: ", envoy::ecds_name(site));
    log.lines()
        .filter(|l| l.contains(&line) && l.contains(" signing keys loaded ("))
        .count()
}

/// A running stack. Everything stops on drop, and at the latest when the process exits.
pub struct Stack {
    dir: PathBuf,
    sites: Vec<Site>,
    issuer: String,
    idp_config: IdpConfig,
    idp: Mutex<Option<Idp>>,
    proxy: FaultProxy,
    extra_idps: Vec<ExtraIdp>,
    envoy: Envoy,
    echo: EchoApp,
    /// The certificate of the TLS sites, when there are any.
    tls: Option<Tls>,
    /// How its Envoy was started (its environment: cookie keys, client secrets), for replicas.
    envoy_options: EnvoyOptions,
    /// The bootstrap's parts, for ECDS updates, and the last ECDS version written.
    ecds: Mutex<(EnvoyConfig, u64)>,
}

/// One of [`StackSpec::extra_idps`]: an IdP with its own proxy, issuer and work directory.
struct ExtraIdp {
    dir: PathBuf,
    config: IdpConfig,
    proxy: FaultProxy,
    idp: Option<Idp>,
}

/// The IdP's proxy in a fault mode until dropped ([`Stack::idp_fault`]).
#[must_use = "the fault ends when the guard is dropped"]
pub struct IdpFault<'a>(&'a Stack);

impl Drop for IdpFault<'_> {
    fn drop(&mut self) {
        self.0.proxy.set_mode(Mode::Forward);
    }
}

impl Stack {
    /// Starts the stack (see the crate docs for the order). Fails with the tail of the failing
    /// process's log.
    pub fn start(spec: StackSpec) -> Result<Stack> {
        if spec.sites.is_empty() {
            bail!("a stack needs at least one site");
        }
        let dir = target_dir().join("e2e").join(&spec.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let wasm = match &spec.wasm {
            Some(w) => w.clone(),
            None => wasm_path()?,
        };

        let echo = EchoApp::start(spec.ports.map_or(0, |p| p.echo), &dir)?;
        let proxy = FaultProxy::bind(SocketAddr::from((
            [127, 0, 0, 1],
            spec.ports.map_or(0, |p| p.idp),
        )))?;
        // Until the IdP is up, connections are refused rather than closed without a target.
        proxy.set_mode(Mode::Refuse);
        let tls = if spec.idp_tls || spec.sites.iter().any(|s| s.tls) {
            Some(Tls::make(&dir.join("tls"))?)
        } else {
            None
        };
        let idp_front = match &tls {
            Some(t) if spec.idp_tls => Some(envoy::IdpFront {
                listen: true,
                port: free_tcp_and_udp_port()?,
                target: proxy.addr(),
                tls: t.files.clone(),
            }),
            _ => None,
        };
        let issuer = match &idp_front {
            Some(f) => format!("https://{}:{}", envoy::IDP_FRONT_HOST, f.port),
            None => proxy.url(),
        };
        let mut extra_proxies = Vec::new();
        for n in 1..=spec.extra_idps {
            let host = u8::try_from(n + 1).context("too many IdPs")?;
            let p = FaultProxy::bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
            p.set_mode(Mode::Refuse);
            extra_proxies.push(p);
        }
        let issuers: Vec<String> = std::iter::once(issuer.clone())
            .chain(extra_proxies.iter().map(FaultProxy::url))
            .collect();

        let mut env = vec![(COOKIE_KEYS_ENV.to_string(), spec.cookie_keys.clone())];
        let mut envoy_sites = Vec::new();
        for (i, s) in spec.sites.iter().enumerate() {
            let site_issuer = format!("{issuer}{}", s.issuer_suffix);
            let mut filter_config = default_filter_config(&site_issuer, &s.client_id, &s.name)?;
            merge_json(&mut filter_config, &s.filter_overrides);
            env.push((client_secret_env(&s.name), s.client_secret.clone()));
            if !s.hosts.is_empty() {
                let mut entries = Vec::new();
                for h in &s.hosts {
                    let idp_issuer = issuers
                        .get(h.idp)
                        .ok_or_else(|| anyhow!("site {}: no IdP {}", s.name, h.idp))?;
                    let secret_env = client_secret_env(&format!("{}_{}", s.name, h.client_id));
                    let mut entry = json!({
                        "hosts": h.hosts,
                        "issuer": idp_issuer,
                        "client_id": h.client_id,
                        "client_secret_env": secret_env,
                        "idp_cluster": envoy::cluster_name(idp_issuer)?,
                    });
                    merge_json(&mut entry, &h.filter_overrides);
                    env.push((secret_env, h.client_secret.clone()));
                    entries.push(entry);
                }
                filter_config["hosts"] = Value::Array(entries);
            }
            let port = match spec.ports {
                Some(p) => p
                    .first_site
                    .checked_add(u16::try_from(i)?)
                    .ok_or_else(|| anyhow!("port overflow"))?,
                // Its TCP and UDP listeners share the number.
                None if s.tls => free_tcp_and_udp_port()?,
                None => 0,
            };
            let mut site = EnvoySite::new(&s.name, port, &s.client_id, filter_config);
            site.istio_authn = s.istio_authn;
            site.shared_vm = s.shared_vm.clone();
            site.hcm_overrides = s.hcm_overrides.clone();
            site.buffered_path = s.buffered_path.clone();
            site.plugin_overrides = s.plugin_overrides.clone();
            site.clusters = s.clusters.clone();
            if s.tls {
                site.tls = tls.as_ref().map(|t| t.files.clone());
            }
            if s.ecds {
                site.ecds = Some(dir.join("ecds").join(format!("{}.json", s.name)));
            }
            envoy_sites.push(site);
        }
        let config = EnvoyConfig {
            wasm_path: wasm,
            issuer: issuer.clone(),
            jwks_uri: format!("{issuer}/jwks"),
            app_port: echo.port(),
            admin_port: 0,
            access_log: AccessLog::File(dir.join("access.log")),
            sites: envoy_sites.clone(),
            idp_front,
        };
        for site in &config.sites {
            if let Some(path) = &site.ecds {
                if let Some(d) = path.parent() {
                    fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                }
                envoy::write_ecds(path, &config.ecds_response(site, "1")?)?;
            }
        }
        let mut opts = EnvoyOptions::new(&dir);
        opts.concurrency = spec.concurrency;
        opts.log_level = spec.envoy_log_level.clone();
        opts.component_log_level = spec.envoy_component_log_level.clone();
        opts.env = env;
        let envoy = Envoy::start(&config.render()?, &opts)?;
        let envoy_options = opts.clone();

        let mut sites = Vec::new();
        let mut extra_clients: Vec<Vec<Value>> = vec![Vec::new(); spec.extra_idps];
        let mut host_clients = Vec::new();
        for (s, e) in spec.sites.iter().zip(&envoy_sites) {
            let port = envoy
                .listener_port(&s.name)
                .ok_or_else(|| anyhow!("envoy has no listener {}", s.name))?;
            for (h, entry) in s
                .hosts
                .iter()
                .zip(e.filter_config["hosts"].as_array().into_iter().flatten())
            {
                let client = host_client(h, entry, &e.filter_config, scheme(s), port);
                let list = match h.idp.checked_sub(1) {
                    None => &mut host_clients,
                    Some(n) => extra_clients
                        .get_mut(n)
                        .ok_or_else(|| anyhow!("site {}: no IdP {}", s.name, h.idp))?,
                };
                add_client(list, client);
            }
            let origin = format!("{}://localhost:{port}", scheme(s));
            let callback = e
                .filter_config
                .get("callback_path")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_CALLBACK_PATH);
            let mut client = idp::idp_client(&s.client_id, &s.client_secret, &origin, callback);
            if let Some(uri) = e.filter_config.get("redirect_uri").and_then(Value::as_str) {
                client["redirect_uris"] = json!([uri]);
            }
            if let Some(path) = e
                .filter_config
                .get("backchannel_logout_path")
                .and_then(Value::as_str)
            {
                client["backchannel_logout_uri"] = json!(format!("{origin}{path}"));
                client["backchannel_logout_session_required"] = json!(true);
            }
            merge_json(&mut client, &s.idp_client_overrides);
            sites.push(Site {
                name: s.name.clone(),
                port,
                client_id: s.client_id.clone(),
                client_secret: s.client_secret.clone(),
                filter_config: e.filter_config.clone(),
                idp_client: client,
                scheme: scheme(s),
            });
        }

        let mut clients: Vec<Value> = sites.iter().map(|s| s.idp_client.clone()).collect();
        clients.extend(host_clients);
        let idp_config = IdpConfig {
            issuer: issuer.clone(),
            port: 0,
            clients,
            jwks_file: Some(dir.join("idp-jwks.json")),
            ..Default::default()
        };
        let mut extra_idps = Vec::new();
        for (i, (proxy, clients)) in extra_proxies.into_iter().zip(extra_clients).enumerate() {
            let idp_dir = dir.join(format!("idp{}", i + 2));
            extra_idps.push(ExtraIdp {
                config: IdpConfig {
                    issuer: proxy.url(),
                    port: 0,
                    clients,
                    jwks_file: Some(idp_dir.join("idp-jwks.json")),
                    clock_ahead: spec.extra_idps_ahead.get(i).copied().filter(|&s| s > 0),
                },
                dir: idp_dir,
                proxy,
                idp: None,
            });
        }
        let mut stack = Stack {
            dir,
            sites,
            issuer,
            idp_config,
            idp: Mutex::new(None),
            proxy,
            extra_idps,
            envoy,
            echo,
            tls,
            envoy_options,
            ecds: Mutex::new((config, 1)),
        };
        if spec.start_idp {
            stack.start_idp()?;
            for x in &mut stack.extra_idps {
                let started = Idp::start(&x.config, &x.dir)?;
                x.proxy.set_target(Some(started.addr()));
                x.proxy.set_mode(Mode::Forward);
                x.idp = Some(started);
            }
        }
        Ok(stack)
    }

    /// Another replica of the stack's gateway, as a second pod of an ingress gateway's Deployment: an Envoy
    /// of its own with the same configuration, cookie keys and client secrets, in `DIR/NAME` (its access log
    /// there too), its sites on ports of their own ([`Envoy::listener_port`]; a TLS site's on a number free
    /// in both TCP and UDP). It reaches the same IdP (with [`StackSpec::idp_tls`], through the first
    /// Envoy's TLS front). Revocations, cached sessions and renewals are its own, as in a real replica.
    pub fn start_replica(&self, name: &str) -> Result<Envoy> {
        self.start_replica_with(name, self.envoy_options.concurrency, |_| {})
    }

    /// [`Stack::start_replica`] with `concurrency` worker threads (one: every request meets the one VM),
    /// its configuration changed by `edit` (e.g. sites left out, or each in a VM of its own).
    pub fn start_replica_with(
        &self,
        name: &str,
        concurrency: u32,
        edit: impl FnOnce(&mut EnvoyConfig),
    ) -> Result<Envoy> {
        let mut config = self
            .ecds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        edit(&mut config);
        for site in &mut config.sites {
            site.port = if site.tls.is_some() {
                free_tcp_and_udp_port()?
            } else {
                0
            };
        }
        if let Some(front) = &mut config.idp_front {
            front.listen = false;
        }
        let dir = self.dir.join(name);
        config.access_log = AccessLog::File(dir.join("access.log"));
        let mut opts = self.envoy_options.clone();
        opts.dir = dir;
        opts.concurrency = concurrency;
        Envoy::start(&config.render()?, &opts)
    }

    /// The certificate the TLS sites ([`SiteSpec::tls`]) serve, when the stack has any.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Result<&Site> {
        self.sites.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.sites.iter().map(|s| s.name.as_str()).collect();
            anyhow!("no site {name:?}; sites: {names:?}")
        })
    }

    /// All sites, in spec order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The issuer URL (`http://127.0.0.1:PORT`, the proxy).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Every IdP's issuer: the first, then [`StackSpec::extra_idps`] (`http://127.0.0.N:PORT`),
    /// indexed as [`HostSpec::idp`].
    pub fn issuers(&self) -> Vec<&str> {
        std::iter::once(self.issuer.as_str())
            .chain(self.extra_idps.iter().map(|x| x.config.issuer.as_str()))
            .collect()
    }

    /// The log of IdP `n` (0: the first, as [`Stack::idp_log`]).
    pub fn idp_log_of(&self, n: usize) -> Result<String> {
        match n.checked_sub(1) {
            None => self.idp_log(),
            Some(i) => {
                let x = self
                    .extra_idps
                    .get(i)
                    .ok_or_else(|| anyhow!("no IdP {n}"))?;
                process::read_lossy(&x.dir.join("idp.log"))
            }
        }
    }

    /// Issuer + `path`, e.g. `/.well-known/openid-configuration`.
    pub fn idp_url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The fault proxy in front of the IdP.
    pub fn idp_proxy(&self) -> &FaultProxy {
        &self.proxy
    }

    /// Puts the IdP's proxy in `mode`, then waits (up to 5 s, and no error if they stay) until Envoy has
    /// no connection to it open: switching closes the proxy's connections, and a callout that met a
    /// pooled one already gone would get a 503 of Envoy's own instead of what `mode` answers. While
    /// other tests use the IdP, connections may stay open: then it waits in vain, as before.
    pub fn set_idp_mode(&self, mode: Mode) {
        self.proxy.set_mode(mode);
        let _ = process::poll(Duration::from_secs(5), || {
            Ok((self.idp_cluster_stat("upstream_cx_active")? == 0).then_some(()))
        });
    }

    /// Puts the IdP's proxy in `mode` ([`Stack::set_idp_mode`]) until the guard is dropped, then back
    /// to forwarding.
    pub fn idp_fault(&self, mode: Mode) -> IdpFault<'_> {
        self.set_idp_mode(mode);
        IdpFault(self)
    }

    /// The address the IdP itself listens on, if it runs.
    pub fn idp_addr(&self) -> Option<SocketAddr> {
        self.lock_idp().as_ref().map(Idp::addr)
    }

    /// Starts the IdP (if it is not running) and points the proxy at it in [`Mode::Forward`].
    /// Signing keys persist in the work directory across restarts.
    pub fn start_idp(&self) -> Result<()> {
        let mut idp = self.lock_idp();
        if idp.is_none() {
            let started = Idp::start(&self.idp_config, &self.dir)?;
            self.proxy.set_target(Some(started.addr()));
            *idp = Some(started);
        }
        self.proxy.set_mode(Mode::Forward);
        Ok(())
    }

    /// Stops the IdP; the proxy then refuses connections (its mode is left as it was, and
    /// [`Mode::Forward`] without a target closes every connection).
    pub fn stop_idp(&self) {
        if let Some(mut idp) = self.lock_idp().take() {
            idp.stop();
        }
        self.proxy.set_target(None);
    }

    /// Restarts the IdP: same keys and clients, but sessions, codes and tokens are gone (it
    /// keeps them in memory).
    pub fn restart_idp(&self) -> Result<()> {
        self.stop_idp();
        self.start_idp()
    }

    /// Restarts the IdP with new signing keys (new `kid`s), as after a key rotation.
    pub fn rotate_idp_keys(&self) -> Result<()> {
        self.stop_idp();
        if let Some(f) = &self.idp_config.jwks_file {
            let _ = fs::remove_file(f);
        }
        self.start_idp()
    }

    /// The file with the IdP's private signing keys (for forging tokens with its own key).
    pub fn idp_jwks_file(&self) -> Option<&Path> {
        self.idp_config.jwks_file.as_deref()
    }

    /// The IdP's log (one line per request, errors).
    pub fn idp_log(&self) -> Result<String> {
        process::read_lossy(&self.dir.join("idp.log"))
    }

    /// The Envoy process (admin API, listener ports).
    pub fn envoy(&self) -> &Envoy {
        &self.envoy
    }

    /// Counters and gauges from Envoy's `/stats`.
    pub fn envoy_stats(&self) -> Result<HashMap<String, u64>> {
        self.envoy.stats()
    }

    /// Envoy's counter or gauge `key`, 0 until it is first set.
    fn stat_or_zero(&self, key: &str) -> Result<u64> {
        Ok(self.envoy.stats()?.get(key).copied().unwrap_or(0))
    }

    /// The filter's counter `name` (`wasmcustom.oidc_filter.NAME`), 0 until it first counts.
    pub fn filter_stat(&self, name: &str) -> Result<u64> {
        self.stat_or_zero(&format!("wasmcustom.oidc_filter.{name}"))
    }

    /// The filter's counters by name (`wasmcustom.oidc_filter.` left off), but `idp_fetch_failures`,
    /// which the periodic fetches move on their own clock.
    pub fn filter_counters(&self) -> Result<HashMap<String, u64>> {
        Ok(self
            .envoy_stats()?
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("wasmcustom.oidc_filter.")?.to_string(), v)))
            .filter(|(k, _)| k != "idp_fetch_failures")
            .collect())
    }

    /// [`Stack::filter_counters`] once unchanged for 1.5 s: longer than the 1 s tick on which each
    /// worker hands Envoy its per-request counts.
    pub fn settled_counters(&self) -> Result<HashMap<String, u64>> {
        process::settled(
            Duration::from_secs(20),
            Duration::from_millis(1500),
            || self.filter_counters(),
            Clone::clone,
        )
    }

    /// Runs `f`, then gives the counters that moved and by how much: once those in `expected` moved that
    /// far (the batched ones trail by up to a tick; 5 s at most) and then nothing moved for 1.5 s.
    pub fn counted<T>(
        &self,
        expected: &BTreeMap<String, u64>,
        f: impl FnOnce() -> T,
    ) -> Result<(T, BTreeMap<String, u64>)> {
        let before = self.settled_counters()?;
        let out = f();
        let _ = process::poll(Duration::from_secs(5), || {
            let d = counter_delta(&before, &self.filter_counters()?);
            Ok(expected
                .iter()
                .all(|(k, n)| d.get(k).copied().unwrap_or(0) >= *n)
                .then_some(()))
        });
        Ok((out, counter_delta(&before, &self.settled_counters()?)))
    }

    /// Envoy's counter `name` of `site`'s Wasm plugin (`wasm.oidc-filter-SITE.NAME`: `vm_reload_success`,
    /// `vm_reload_backoff`, …), 0 until it first counts.
    pub fn plugin_stat(&self, site: &str, name: &str) -> Result<u64> {
        self.stat_or_zero(&format!("wasm.oidc-filter-{site}.{name}"))
    }

    /// Connections each of Envoy's workers has accepted on `site`'s listener so far
    /// (`listener.SITE.worker_N.downstream_cx_total`), in worker order.
    pub fn worker_connections(&self, site: &str) -> Result<Vec<u64>> {
        let prefix = format!("listener.{site}.worker_");
        let stats = self.envoy.stats()?;
        let mut workers: Vec<(u32, u64)> = stats
            .iter()
            .filter_map(|(name, &n)| {
                let worker = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".downstream_cx_total")?;
                Some((worker.parse().ok()?, n))
            })
            .collect();
        workers.sort_unstable();
        if workers.len() != self.envoy.workers() as usize {
            bail!(
                "{} per-worker connection counters for {site}, Envoy runs {} workers",
                workers.len(),
                self.envoy.workers()
            );
        }
        Ok(workers.into_iter().map(|(_, n)| n).collect())
    }

    /// Waits until ten probes in a row hold, between them answered by every one of Envoy's workers:
    /// a change that reaches the workers one by one (a back-channel logout, which the others read on
    /// their tick) has reached them all. Each probe must send one request to `site` on a new
    /// connection: Envoy's per-worker connection counters say which workers took them
    /// ([`Stack::worker_connections`]). A round in which anything else connected to `site` proves
    /// nothing and is tried again; at the timeout the error says how the last round went.
    pub fn until_every_worker(
        &self,
        site: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> Result<()> {
        const IN_A_ROW: u64 = 10;
        let mut last = String::new();
        process::poll(timeout, || {
            let before = self.worker_connections(site)?;
            let mut held = 0;
            while held < IN_A_ROW && probe() {
                held += 1;
            }
            let after = self.worker_connections(site)?;
            let took: Vec<u64> = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let probes = held + u64::from(held < IN_A_ROW);
            last =
                format!("{held} of {IN_A_ROW} probes held; the workers took {took:?} connections");
            let alone = took.iter().sum::<u64>() == probes;
            Ok((held == IN_A_ROW && alone && took.iter().all(|&n| n > 0)).then_some(()))
        })
        .map_err(|e| e.context(format!("{site}: {last}")))
    }

    /// The counter or gauge `name` of the cluster the filter's callouts to the stack's IdP take
    /// (`cluster.CLUSTER.NAME`: `upstream_rq_active`, `upstream_cx_active`, …), 0 until it is set.
    pub fn idp_cluster_stat(&self, name: &str) -> Result<u64> {
        let cluster = envoy::cluster_name(self.issuer())?;
        self.stat_or_zero(&format!("cluster.{cluster}.{name}"))
    }

    /// What the app was shown of the request that carried `x-echo-record: ID` (its method, path and
    /// headers, logged as they arrived, before any body), once it has arrived.
    pub fn app_record(&self, id: &str, timeout: Duration) -> Result<Value> {
        let path = self.dir.join("echo.log");
        process::poll(timeout, || {
            let log = process::read_lossy(&path)?;
            Ok(log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["record"] == id))
        })
        .with_context(|| format!("the app never saw the request recorded as {id}"))
    }

    /// Envoy's log so far.
    pub fn envoy_log(&self) -> Result<String> {
        self.envoy.log()
    }

    /// How many times `site`'s filter has logged loading `issuer`'s signing keys: once in each thread
    /// (Envoy's main thread and each worker) of each VM that starts, per IdP client of that issuer,
    /// and again for a key it does not know or on `jwks_refresh_interval`.
    pub fn keys_loaded(&self, site: &str, issuer: &str) -> Result<usize> {
        Ok(keys_loaded_in(&self.envoy.log()?, site, issuer))
    }

    /// Waits until every site's filter has loaded the signing keys of each of its IdP clients in
    /// each thread (Envoy's main thread and each worker): until then that thread answers 503. Unlike
    /// [`Stack::wait_ready`] this needs no path to answer in a particular way, so it serves sites
    /// that redirect nothing; the error names a site and issuer that is not ready.
    pub fn wait_keys_loaded(&self, timeout: Duration) -> Result<()> {
        let threads = self.envoy.workers() as usize + 1;
        let mut waiting = String::new();
        process::poll(timeout, || {
            let log = self.envoy.log()?;
            for s in &self.sites {
                let issuers = s.issuers();
                for issuer in &issuers {
                    let clients = issuers.iter().filter(|i| *i == issuer).count();
                    let loaded = keys_loaded_in(&log, &s.name, issuer);
                    if loaded < threads * clients {
                        waiting = format!(
                            "site {}: keys of {issuer} loaded {loaded} times of {}",
                            s.name,
                            threads * clients
                        );
                        return Ok(None);
                    }
                }
            }
            Ok(Some(()))
        })
        .map_err(|e| {
            e.context(format!(
                "{waiting}; envoy log's last lines:\n{}",
                process::log_tail(&self.envoy.log_path(), 30)
            ))
        })
    }

    /// Polls Envoy's log until it contains `needle` (e.g. the filter reporting its discovery
    /// document loaded); the error carries the log's tail.
    pub fn wait_for_envoy_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        process::poll(timeout, || {
            Ok(self.envoy.log()?.contains(needle).then_some(()))
        })
        .map_err(|e| {
            e.context(format!(
                "envoy log has no {needle:?}; last lines:\n{}",
                process::log_tail(&self.envoy.log_path(), 30)
            ))
        })
    }

    /// Envoy's log once everything logged before this call is in it: a failed callback on `site`
    /// carrying a unique error code must appear first (sent again each second, as the filter logs at
    /// most 20 failed callbacks a second per worker). A fixed sleep would let a late flush hide lines.
    pub fn envoy_log_after_sentinel(&self, site: &str) -> Result<String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let sentinel = format!("log_sentinel_{nanos}");
        let url = self.site(site)?.url(&format!(
            "/oauth2/callback?error={sentinel}&state={}",
            "A".repeat(43)
        ));
        let line = format!("the IdP answered error={sentinel}");
        let mut sent: Option<std::time::Instant> = None;
        process::poll(Duration::from_secs(15), || {
            if sent.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                let status = Browser::new().get(&url)?.status;
                if status != 400 {
                    bail!("the sentinel callback answered {status}, not 400");
                }
                sent = Some(std::time::Instant::now());
            }
            let log = self.envoy.log()?;
            Ok(log.contains(&line).then_some(log))
        })
        .with_context(|| format!("no {line:?} in envoy.log"))
    }

    /// Waits until `site`'s `/login` answers 302 on every worker ([`Stack::until_every_worker`]): each
    /// worker loads discovery and keys on its own, and answers 503 until then. Generous: where the IdP
    /// stalled at start (a node start on a busy disk, seen in CI) the workers' fetches failed meanwhile
    /// and back off (1 s doubling to 30 s), so the one that succeeds may come half a minute later.
    pub fn wait_ready(&self, site: &str) -> Result<()> {
        let url = self.site(site)?.url("/login");
        self.until_every_worker(site, Duration::from_secs(75), || {
            Browser::new().get(&url).is_ok_and(|r| r.status == 302)
        })
        .with_context(|| format!("{site} never got ready"))
    }

    /// Polls Envoy's stats until `name` is at least `min`; returns its value.
    pub fn wait_for_stat(&self, name: &str, min: u64, timeout: Duration) -> Result<u64> {
        process::poll(timeout, || {
            Ok(self.envoy.stats()?.get(name).copied().filter(|&v| v >= min))
        })
        .with_context(|| format!("stat {name} did not reach {min}"))
    }

    /// Gives `site` (started with [`SiteSpec::ecds`]) a new filter configuration through ECDS, as
    /// istiod does when an operator edits a `WasmPlugin`'s `pluginConfig`: the VM's configuration is
    /// kept, so Envoy keeps the VM and adds a root context for the new configuration. Returns the new
    /// version; whether Envoy took it shows in [`Stack::ecds_stat`] (`config_reload`, `config_fail`).
    /// Only the Wasm filter changes: the listener's jwt_authn and RBAC, the VM's environment and
    /// [`Site::filter_config`] stay as the stack started them.
    pub fn update_filter_config(&self, site: &str, filter_config: Value) -> Result<String> {
        self.update_ecds(site, |s| s.filter_config = filter_config)
    }

    /// Gives `site` (started with [`SiteSpec::ecds`]) another module through ECDS, with the same
    /// filter configuration and VM settings (`vm_id` included), as istiod does when a platform team
    /// bumps a `WasmPlugin`'s image tag (istio-agent fetches the image and points `vm_config.code` at
    /// the module it stored). Envoy's VM key hashes the code, so it starts a new VM for it, next to
    /// the old one, which serves the streams that began under it. Returns the new version; whether
    /// Envoy took it shows in [`Stack::ecds_stat`], the VMs in [`Stack::wasm_vm_stats`]. A module
    /// that differs only in a custom section: [`module::with_release_tag`].
    pub fn update_filter_module(&self, site: &str, wasm: &Path) -> Result<String> {
        let wasm = wasm.to_path_buf();
        self.update_ecds(site, |s| s.wasm_path = Some(wasm))
    }

    /// Writes `site`'s next ECDS version, changed by `change`.
    fn update_ecds(&self, site: &str, change: impl FnOnce(&mut EnvoySite)) -> Result<String> {
        let mut ecds = self.ecds.lock().unwrap_or_else(|p| p.into_inner());
        let (config, version) = &mut *ecds;
        let s = config
            .sites
            .iter_mut()
            .find(|s| s.name == site)
            .ok_or_else(|| anyhow!("no site {site:?}"))?;
        let path = s
            .ecds
            .clone()
            .ok_or_else(|| anyhow!("site {site:?} was not started with ecds"))?;
        change(s);
        let s = s.clone();
        *version += 1;
        let v = version.to_string();
        envoy::write_ecds(&path, &config.ecds_response(&s, &v)?)?;
        Ok(v)
    }

    /// Envoy's Wasm VM figures for the V8 runtime, all sites together: `active` (VMs alive now: per
    /// VM key, the base VM, one on the main thread and one per worker) and `created` (VMs made since
    /// start; Envoy 1.40 makes five for a new key on two workers).
    pub fn wasm_vm_stats(&self) -> Result<WasmVms> {
        let stats = self.envoy.stats()?;
        let get = |name: &str| {
            stats
                .get(&format!("wasm.envoy.wasm.runtime.v8.{name}"))
                .copied()
                .ok_or_else(|| anyhow!("envoy has no stat wasm.envoy.wasm.runtime.v8.{name}"))
        };
        Ok(WasmVms {
            active: get("active")?,
            created: get("created")?,
        })
    }

    /// A counter of `site`'s ECDS subscription: `config_reload` (an update applied) or `config_fail`
    /// (one refused), 0 until it first counts.
    pub fn ecds_stat(&self, site: &str, name: &str) -> Result<u64> {
        self.stat_or_zero(&format!(
            "extension_config_discovery.http_filter.{}.{name}",
            envoy::ecds_name(site)
        ))
    }

    /// `site`'s ECDS updates applied and refused so far (`config_reload`, `config_fail`): counted before
    /// an update is written, for [`Stack::ecds_outcome`].
    pub fn ecds_counts(&self, site: &str) -> Result<(u64, u64)> {
        Ok((
            self.ecds_stat(site, "config_reload")?,
            self.ecds_stat(site, "config_fail")?,
        ))
    }

    /// Waits until Envoy has applied or refused an ECDS update of `site` written after it counted
    /// `before` ([`Stack::ecds_counts`]).
    pub fn ecds_outcome(&self, site: &str, (reload, fail): (u64, u64)) -> Result<EcdsUpdate> {
        // A bound on the wait only: on a loaded machine Envoy has taken over 10 s to pick up the file.
        // The admin API may not answer within its 5 s meanwhile (the main thread compiling a new module
        // on a loaded machine, seen in a CI run): asked again until the bound, the last error told.
        let mut last_error = None;
        process::poll(Duration::from_secs(30), || {
            let stat = |name| self.ecds_stat(site, name);
            match (stat("config_fail"), stat("config_reload")) {
                (Ok(f), _) if f > fail => Ok(Some(EcdsUpdate::Rejected)),
                (Ok(_), Ok(r)) => Ok((r > reload).then_some(EcdsUpdate::Applied)),
                (Err(e), _) | (_, Err(e)) => {
                    last_error = Some(e);
                    Ok(None)
                }
            }
        })
        .map_err(|e| match last_error {
            Some(last) => e.context(format!("the admin API last said: {last:#}")),
            None => e,
        })
    }

    /// Envoy's access log so far.
    pub fn access_log(&self) -> Result<String> {
        process::read_lossy(&self.dir.join("access.log"))
    }

    /// The sample app's direct URL (bypassing Envoy).
    pub fn echo_url(&self) -> String {
        self.echo.url()
    }

    /// The work directory: generated configs and every log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_idp(&self) -> MutexGuard<'_, Option<Idp>> {
        self.idp.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Envoy's count of Wasm VMs ([`Stack::wasm_vm_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WasmVms {
    /// VMs alive now.
    pub active: u64,
    /// VMs created since Envoy started.
    pub created: u64,
}

/// The demo's fixed setup: site `demo` on port 8080, the IdP at 127.0.0.1:9000, the app at
/// 127.0.0.1:9001.
pub mod demo {
    use super::*;

    /// The demo client id.
    pub const CLIENT_ID: &str = "demo";
    /// The demo client secret (a demo: inline, unlike a real deployment).
    pub const CLIENT_SECRET: &str = "demo-secret";
    /// The issuer.
    pub const ISSUER: &str = "http://127.0.0.1:9000";
    /// Ports.
    pub const PORTS: FixedPorts = FixedPorts {
        first_site: 8080,
        idp: 9000,
        echo: 9001,
    };

    /// The stack the `demo` command runs.
    pub fn stack_spec() -> StackSpec {
        let mut site = SiteSpec::new(CLIENT_ID).filter(after_logout());
        site.client_secret = CLIENT_SECRET.into();
        StackSpec {
            name: "demo".into(),
            sites: vec![site],
            ports: Some(PORTS),
            ..StackSpec::default()
        }
    }

    /// The bootstrap of `wasmplugin/envoy.yaml`: the release module by relative path (run Envoy
    /// from the workspace root), secrets inline in `key_values`, access log on stdout.
    pub fn envoy_config() -> Result<EnvoyConfig> {
        let mut filter_config = default_filter_config(ISSUER, CLIENT_ID, CLIENT_ID)?;
        merge_json(&mut filter_config, &after_logout());
        let mut site = EnvoySite::new(CLIENT_ID, PORTS.first_site, CLIENT_ID, filter_config);
        site.vm_env = VmEnv {
            host_env_keys: Vec::new(),
            key_values: BTreeMap::from([
                (client_secret_env(CLIENT_ID), CLIENT_SECRET.to_string()),
                (COOKIE_KEYS_ENV.to_string(), DEFAULT_COOKIE_KEYS.to_string()),
            ]),
        };
        Ok(EnvoyConfig {
            wasm_path: PathBuf::from("target/wasm32-wasip1/release/oidc_filter.wasm"),
            issuer: ISSUER.into(),
            jwks_uri: format!("{ISSUER}/jwks"),
            app_port: PORTS.echo,
            admin_port: 9901,
            access_log: AccessLog::Stdout,
            sites: vec![site],
            idp_front: None,
        })
    }

    /// After logging out at the IdP, back to the app (the IdP registers it), not the IdP's last page.
    /// Where the demo lands after a logout, and where its pages read who is logged in.
    fn after_logout() -> Value {
        json!({"post_logout_redirect_uri": "/", "userinfo_path": USERINFO_PATH})
    }

    /// The demo's `userinfo_path`.
    pub const USERINFO_PATH: &str = "/oauth2/userinfo";

    /// `wasmplugin/envoy.yaml` as it should read.
    pub fn envoy_yaml() -> Result<String> {
        let header = "# Generated by `cargo run -p harness -- envoy-config`; do not edit.\n\
# The demo without the harness: from the workspace root, start the IdP\n\
# (`node harness/idp/idp.mjs harness/idp/demo.json`), the app (`node harness/idp/echo.mjs 9001`) and\n\
# `envoy -c wasmplugin/envoy.yaml`, then open http://localhost:8080/ and log in as alice.\n";
        Ok(format!(
            "{header}{}",
            envoy::to_yaml(&envoy_config()?.render()?)
        ))
    }

    /// `harness/idp/demo.json`: the IdP of `wasmplugin/envoy.yaml`, on port 9000.
    pub fn idp_config() -> Value {
        let origin = format!("http://localhost:{}", PORTS.first_site);
        let mut v = IdpConfig {
            issuer: ISSUER.into(),
            port: PORTS.idp,
            clients: vec![idp::idp_client(
                CLIENT_ID,
                CLIENT_SECRET,
                &origin,
                DEFAULT_CALLBACK_PATH,
            )],
            jwks_file: None,
            ..Default::default()
        }
        .to_json();
        v["comment"] = json!("Generated by `cargo run -p harness -- idp-config`; do not edit.");
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_json(
            &mut v,
            &json!({"a": null, "b": {"c": 4}, "e": [2], "f": "x"}),
        );
        assert_eq!(v, json!({"b": {"c": 4, "d": 3}, "e": [2], "f": "x"}));
    }

    #[test]
    fn site_patches_keep_removals() {
        let site = SiteSpec::new("s")
            .filter(json!({"a": {"b": 1}, "c": null}))
            .filter(json!({"a": {"d": null}}));
        let mut config = json!({"a": {"d": 2}, "c": 3, "e": 4});
        merge_json(&mut config, &site.filter_overrides);
        assert_eq!(config, json!({"a": {"b": 1}, "e": 4}));
    }

    #[test]
    fn secret_env_names() {
        assert_eq!(client_secret_env("site-a"), "OIDC_CLIENT_SECRET_SITE_A");
    }

    #[test]
    fn default_cookie_key_has_32_bytes() {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(DEFAULT_COOKIE_KEYS)
            .unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn stack_is_shareable() {
        fn assert_sync<T: Sync + Send>() {}
        assert_sync::<Stack>();
        assert_sync::<Browser>();
    }
}
