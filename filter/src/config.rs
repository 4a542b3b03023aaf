//! pluginConfig JSON -> a validated `Config`. Parsed once in `on_configure`; the request path never re-checks.

use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use core::fmt;
use core::time::Duration;

use crate::b64;
use crate::claims::{self, Access};
use crate::cookies::{CookieAttrs, SameSite};
use crate::json::{self, Object, Value};
use crate::oidc::discovery::quotable;
use crate::oidc::token::ClientAuth;
use crate::secret::Secret;
use crate::session::Keys;
use crate::weburl::WebUrl;

/// Which token the filter puts into `Authorization: Bearer …` upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardToken {
    IdToken,
    AccessToken,
}

/// The validated configuration of one plugin instance.
#[derive(Debug)]
pub struct Config {
    /// The issuer exactly as configured (compared byte for byte with discovery and `iss`).
    pub issuer: String,
    pub issuer_url: WebUrl,
    pub client_id: String,
    pub client_secret: Secret,
    pub keys: Keys,
    /// Explicit cluster for every IdP callout; `None` derives Istio's `outbound|PORT||HOST` per endpoint.
    pub idp_cluster: Option<String>,
    pub redirect_uri: Option<String>,
    pub callback_path: String,
    pub login_path: String,
    pub logout_path: String,
    pub post_logout_redirect_uri: Option<String>,
    /// Space-separated, ready for the authorization request.
    pub scopes: String,
    /// Whether refresh requests send `scopes` again (the IdP wants them: [`crate::oidc::token::scope_on_refresh`]).
    pub scope_on_refresh: bool,
    pub forward_token: ForwardToken,
    pub client_auth: ClientAuth,
    pub cookie_name: String,
    pub cookie: CookieAttrs,
    pub session_lifetime: u64,
    pub refresh_margin: u64,
    pub clock_leeway: u64,
    pub bypass_paths: Vec<String>,
    /// Forward CORS preflights without a session (they never carry one) instead of answering 401.
    pub pass_cors_preflight: bool,
    pub callout_timeout: Duration,
    pub jwks_refresh_interval: u64,
    /// Host patterns this site serves (empty for the top-level site, which serves unmatched hosts).
    pub hosts: Vec<String>,
    /// Claim rules, most specific path prefix first.
    pub access: Vec<Access>,
    /// `(header, claim)` pairs set on every request that goes upstream (absent claim: header removed).
    /// The claim [`ACCESS_TOKEN`] stands for the session's access token (`access_token_header`).
    pub identity_headers: Vec<(String, String)>,
    /// More parameters for the authorization request (Google's `access_type`, Auth0's `audience`, …).
    pub authorization_params: Vec<(String, String)>,
    /// Its `max_age`, which the ID token's `auth_time` must meet at the callback.
    pub max_age: Option<u64>,
    /// The claims a session keeps: those the rules and identity headers read.
    pub keep_claims: Vec<String>,
    /// Where the IdP posts logout tokens (OIDC Back-Channel Logout); `None`: not offered.
    pub backchannel_logout_path: Option<String>,
    /// Where a logged-in client reads its own identity as JSON (oauth2-proxy's `/oauth2/userinfo`); `None`:
    /// not offered, the path is the app's.
    pub userinfo_path: Option<String>,
    /// The cookie names of the plugin's other sites: their cookies are credentials for those sites, and a
    /// browser sends them here too when the sites share a `cookie_domain`, so they never go upstream.
    pub other_sites_cookies: CookieNames,
    /// How long a logout is kept: the longest `session_lifetime` of the sites of this IdP client, so that
    /// no session of the logged-out IdP session outlives it.
    pub logout_lifetime: u64,
}

/// Why a configuration was refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: field `{}`: {}",
            self.field, self.reason
        )
    }
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// pluginConfig's fields as given; `null` is the same as absent. [`Raw::read`] checks names and types.
struct Raw {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_env: Option<String>,
    cookie_keys: Option<Vec<Secret>>,
    cookie_keys_env: Option<String>,
    idp_cluster: Option<String>,
    redirect_uri: Option<String>,
    callback_path: Option<String>,
    login_path: Option<String>,
    logout_path: Option<String>,
    post_logout_redirect_uri: Option<String>,
    scopes: Option<Vec<String>>,
    forward_token: Option<String>,
    token_endpoint_auth: Option<String>,
    cookie_name: Option<String>,
    cookie_domain: Option<String>,
    cookie_secure: Option<bool>,
    pass_cors_preflight: Option<bool>,
    cookie_same_site: Option<String>,
    session_lifetime: Option<String>,
    refresh_margin: Option<String>,
    clock_leeway: Option<String>,
    bypass_paths: Option<Vec<String>>,
    callout_timeout: Option<String>,
    jwks_refresh_interval: Option<String>,
    claim_rules: Option<Value>,
    backchannel_logout_path: Option<String>,
    userinfo_path: Option<String>,
    /// Sorted by header name.
    identity_headers: Option<Vec<(String, String)>>,
    access_token_header: Option<String>,
    authorization_params: Option<Vec<(String, String)>>,
}

/// The JSON type a pluginConfig field takes.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    /// A list of strings.
    Strs,
    /// An object of strings.
    StrMap,
    /// Any JSON (checked by the field's own parser).
    Any,
    /// A duration: a string like `90s`, or a whole non-negative number of seconds.
    Duration,
}

/// Every field of one site's configuration, and its type. (`hosts` and `unmatched_hosts` are read by
/// [`Plugin::parse`] before this.)
const FIELDS: [(&str, Kind); 32] = [
    ("issuer", Kind::Str),
    ("client_id", Kind::Str),
    ("client_secret", Kind::Str),
    ("client_secret_env", Kind::Str),
    ("cookie_keys", Kind::Strs),
    ("cookie_keys_env", Kind::Str),
    ("idp_cluster", Kind::Str),
    ("redirect_uri", Kind::Str),
    ("callback_path", Kind::Str),
    ("login_path", Kind::Str),
    ("logout_path", Kind::Str),
    ("post_logout_redirect_uri", Kind::Str),
    ("scopes", Kind::Strs),
    ("forward_token", Kind::Str),
    ("token_endpoint_auth", Kind::Str),
    ("cookie_name", Kind::Str),
    ("cookie_domain", Kind::Str),
    ("cookie_secure", Kind::Bool),
    ("cookie_same_site", Kind::Str),
    ("session_lifetime", Kind::Duration),
    ("refresh_margin", Kind::Duration),
    ("clock_leeway", Kind::Duration),
    ("bypass_paths", Kind::Strs),
    ("pass_cors_preflight", Kind::Bool),
    ("callout_timeout", Kind::Duration),
    ("jwks_refresh_interval", Kind::Duration),
    ("claim_rules", Kind::Any),
    ("backchannel_logout_path", Kind::Str),
    ("userinfo_path", Kind::Str),
    ("identity_headers", Kind::StrMap),
    ("access_token_header", Kind::Str),
    ("authorization_params", Kind::StrMap),
];

/// The two ways each secret may be given: a value, or the variable that holds it.
const SECRET_WAYS: [(&str, &str); 4] = [
    ("client_secret", "client_secret_env"),
    ("client_secret_env", "client_secret"),
    ("cookie_keys", "cookie_keys_env"),
    ("cookie_keys_env", "cookie_keys"),
];

/// An entry that sets where a secret comes from (not `null`, and not the other way too) replaces the
/// other way the top level gave: removed from `merged`, the top level's fields the entry's will join.
/// One rule for the entries and for the check of a top level without `issuer`.
#[inline(never)]
fn drop_replaced_secrets(merged: &mut Object, entry: &Object) {
    for (field, paired) in SECRET_WAYS {
        if entry.get(field).is_some_and(|v| !v.is_null()) && !entry.contains_key(paired) {
            merged.remove(paired);
        }
    }
}

/// A field the top level of pluginConfig may hold: a site's, or `hosts` and `unmatched_hosts`.
fn is_top_level_field(name: &str) -> bool {
    TOP_LEVEL_ONLY.contains(&name) || FIELDS.iter().any(|(n, _)| *n == name)
}

/// The fields only the top level holds.
const TOP_LEVEL_ONLY: [&str; 2] = ["hosts", "unmatched_hosts"];

/// Every field of a configuration object known, and of its type. Apart from `Raw::read`: Envoy's V8
/// compiles every function when the plugin loads, and the memory a compile takes, which Envoy's allocator
/// keeps, grows with the function: the largest compile sets what stays.
#[inline(never)]
fn check_types(obj: &Object) -> Result<(), ConfigError> {
    for (name, value) in obj.iter() {
        let Some(&(field, kind)) = FIELDS.iter().find(|(n, _)| *n == name) else {
            return Err(unknown_field(name));
        };
        let expected = match (kind, value) {
            (_, Value::Null)
            | (Kind::Any, _)
            | (Kind::Str | Kind::Duration, Value::String(_))
            | (Kind::Bool, Value::Bool(_)) => continue,
            (Kind::Strs, Value::Array(a)) if a.iter().all(Value::is_string) => continue,
            (Kind::StrMap, Value::Object(m)) if m.iter().all(|(_, v)| v.is_string()) => {
                continue;
            }
            // YAML makes `max_age: 300` a number, `prompt: true` a boolean: taken as their text.
            (Kind::StrMap, Value::Object(m))
                if field == "authorization_params"
                    && m.iter().all(|(_, v)| {
                        matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
                    }) =>
            {
                continue;
            }
            (Kind::Duration, Value::Number(n)) => match whole_seconds(n) {
                Some(_) => continue,
                None => {
                    return Err(err(
                        field,
                        "a number of seconds must be whole and not negative",
                    ));
                }
            },
            (Kind::Str, _) => "a string",
            (Kind::Bool, _) => "a boolean",
            (Kind::Strs, _) => "a list of strings",
            (Kind::StrMap, _) => "a map of strings",
            (Kind::Duration, _) => "a duration like `90s` or a number of seconds",
        };
        return Err(err(field, format!("wrong type, expected {expected}")));
    }
    Ok(())
}

impl Raw {
    /// The fields of a pluginConfig object. The first unknown or mistyped field, in document order, is the
    /// error, naming the field; a mistyped one is reported without its value (it may be a secret).
    #[inline(never)]
    fn read(mut obj: Object) -> Result<Raw, ConfigError> {
        check_types(&obj)?;
        let mut identity_headers = str_map(&mut obj, "identity_headers");
        if let Some(h) = &mut identity_headers {
            crate::claims::sort_small(h, |a, b| a < b);
        }
        Ok(Raw {
            issuer: text(&mut obj, "issuer"),
            client_id: text(&mut obj, "client_id"),
            client_secret: text(&mut obj, "client_secret").map(Secret::new),
            client_secret_env: text(&mut obj, "client_secret_env"),
            cookie_keys: texts(&mut obj, "cookie_keys").map(|keys| {
                let mut out = Vec::new();
                for k in keys {
                    out.push(Secret::new(k));
                }
                out
            }),
            cookie_keys_env: text(&mut obj, "cookie_keys_env"),
            idp_cluster: text(&mut obj, "idp_cluster"),
            redirect_uri: text(&mut obj, "redirect_uri"),
            callback_path: text(&mut obj, "callback_path"),
            login_path: text(&mut obj, "login_path"),
            logout_path: text(&mut obj, "logout_path"),
            post_logout_redirect_uri: text(&mut obj, "post_logout_redirect_uri"),
            scopes: texts(&mut obj, "scopes"),
            forward_token: text(&mut obj, "forward_token"),
            token_endpoint_auth: text(&mut obj, "token_endpoint_auth"),
            cookie_name: text(&mut obj, "cookie_name"),
            cookie_domain: text(&mut obj, "cookie_domain"),
            cookie_secure: obj.get("cookie_secure").and_then(Value::as_bool),
            cookie_same_site: text(&mut obj, "cookie_same_site"),
            session_lifetime: seconds(&mut obj, "session_lifetime"),
            refresh_margin: seconds(&mut obj, "refresh_margin"),
            clock_leeway: seconds(&mut obj, "clock_leeway"),
            bypass_paths: texts(&mut obj, "bypass_paths"),
            pass_cors_preflight: obj.get("pass_cors_preflight").and_then(Value::as_bool),
            callout_timeout: seconds(&mut obj, "callout_timeout"),
            jwks_refresh_interval: seconds(&mut obj, "jwks_refresh_interval"),
            claim_rules: obj.remove("claim_rules").filter(|v| !v.is_null()),
            backchannel_logout_path: text(&mut obj, "backchannel_logout_path"),
            userinfo_path: text(&mut obj, "userinfo_path"),
            identity_headers,
            access_token_header: text(&mut obj, "access_token_header"),
            authorization_params: str_map(&mut obj, "authorization_params"),
        })
    }
}

/// A map of strings, taken out of `obj` in document order (checked by [`Raw::read`]).
fn str_map(obj: &mut Object, name: &str) -> Option<Vec<(String, String)>> {
    match obj.remove(name) {
        // A loop, not `filter_map` and `collect`: their in-place collecting took 600 bytes here.
        Some(Value::Object(m)) => {
            let mut out = Vec::new();
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.as_str().to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                out.push((k, v));
            }
            Some(out)
        }
        _ => None,
    }
}

/// A string field, taken out of `obj` (checked by [`Raw::read`]: a string or `null`).
fn text(obj: &mut Object, name: &str) -> Option<String> {
    match obj.remove(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A duration field, taken out of `obj` as text (checked by [`Raw::read`]: a string, a whole non-negative
/// number or `null`). A number is its digits, which [`duration`] reads as seconds.
fn seconds(obj: &mut Object, name: &str) -> Option<String> {
    match obj.remove(name) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => whole_seconds(&n).map(|n| format!("{n}")),
        _ => None,
    }
}

/// A JSON number that is whole and not negative (`10`, `10.0`, `1e1`), as a `u64` (`u64::MAX` when larger,
/// which every duration's bound refuses); `None` for a fraction or a negative number.
fn whole_seconds(n: &json::Number) -> Option<u64> {
    let whole = n.floor_u64()?;
    if whole == u64::MAX {
        return Some(whole);
    }
    // Equal as decimal values: nothing was cut off.
    let back = json::parse(format!("{whole}").as_bytes()).ok()?;
    (back.as_number() == Some(n)).then_some(whole)
}

/// A list-of-strings field, taken out of `obj` (checked by [`Raw::read`]).
fn texts(obj: &mut Object, name: &str) -> Option<Vec<String>> {
    match obj.remove(name) {
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for v in a {
                if let Value::String(s) = v {
                    out.push(s);
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// A field this filter does not take, named (found in review: `client-secret-env`, spelt as the Secret's
/// keys are, was reported as `pluginConfig`), with the field meant when only the case or `-` for `_` differ.
#[inline(never)]
fn unknown_field(name: &str) -> ConfigError {
    let mut meant = None;
    for (n, _) in FIELDS {
        if n.len() == name.len()
            && n.bytes()
                .zip(name.bytes())
                .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'_' && b == b'-'))
        {
            meant = Some(n);
            break;
        }
    }
    match meant {
        Some(n) => err(
            &plain_field(name),
            format!("unknown field (the field is `{n}`)"),
        ),
        None => err(
            &plain_field(name),
            "unknown field (the configuration reference lists them)",
        ),
    }
}

/// A field name as an error may repeat it: a plain identifier (`-` too). Anything else (an empty or odd
/// key, a pasted value, a newline) is not echoed.
fn plain_field(name: &str) -> String {
    if is_plain_name(name) {
        name.to_string()
    } else {
        "pluginConfig".to_string()
    }
}

/// A name a log line may quote as it is.
fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads the pluginConfig document. Errors give a position, never a value; `what` says what it is not.
fn parse_json(json: &[u8], what: &str) -> Result<Value, ConfigError> {
    let v = json::parse(json).map_err(|e| {
        let (line, column) = e.line_col(json);
        // Valid JSON nested past the parser's bound is said so (found by a black-box test: a deep
        // `all_of` was called a syntax error).
        let why = match e.reason {
            "nested too deeply" => "nested more than 64 deep",
            _ => "syntax error",
        };
        err(
            "pluginConfig",
            format!("{what} ({why} at line {line} column {column})"),
        )
    })?;
    // A field given twice is a mistake: which one was meant?
    const DUPLICATE: &str = "not valid JSON for this filter (duplicate field)";
    if let Some(name) = v.as_object().and_then(Object::duplicate) {
        return Err(err(&plain_field(name), DUPLICATE));
    }
    // In a `hosts` entry: named with the entry (found by a black-box test: `pluginConfig` said nothing of
    // which of up to 64).
    let entries = v
        .as_object()
        .and_then(|o| o.get("hosts"))
        .and_then(Value::as_array);
    for (i, entry) in entries.into_iter().flatten().enumerate() {
        if let Some(name) = entry.as_object().and_then(Object::duplicate) {
            let field = if is_plain_name(name) {
                format!("hosts[{i}].{name}")
            } else {
                format!("hosts[{i}]")
            };
            return Err(err(&field, DUPLICATE));
        }
    }
    if let Some(name) = v.find_duplicate() {
        // The name if it is a plain one (a key may be anything: it is not written out then).
        let reason = if is_plain_name(name) {
            format!("not valid JSON for this filter (field `{name}` given twice in one object)")
        } else {
            DUPLICATE.to_string()
        };
        return Err(err("pluginConfig", reason));
    }
    Ok(v)
}

impl Config {
    /// Parses and validates pluginConfig. `env` looks up environment variables (WASI `environ_get` in Envoy,
    /// which Istio fills from `vmConfig.env`).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(err(
                "issuer",
                "pluginConfig is empty; issuer, client_id, a client secret and cookie keys are required",
            ));
        }
        match parse_json(json, "not valid JSON for this filter")? {
            Value::Object(obj) => Self::top_level(obj, env),
            _ => Err(err("pluginConfig", "must be a JSON object")),
        }
    }

    fn from_object(
        obj: Object,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_raw(Raw::read(obj)?, env)
    }

    #[inline(never)]
    fn from_raw(mut raw: Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (issuer, issuer_url, client_id) = client_of(&mut raw)?;
        let client_secret = secret_from(
            "client_secret",
            raw.client_secret.take(),
            raw.client_secret_env.as_deref(),
            env,
        )?;
        let keys = cookie_keys(raw.cookie_keys.take(), raw.cookie_keys_env.as_deref(), env)?;

        let [callback_path, login_path, logout_path] = own_paths(&mut raw)?;
        let scopes = scopes_from(raw.scopes.take())?;
        let scope_on_refresh = crate::oidc::token::scope_on_refresh(issuer_url.host());
        let (forward_token, client_auth) = token_settings(&raw)?;
        let (cookie_name, cookie) = cookie_settings(
            raw.cookie_name.take(),
            raw.cookie_domain.take(),
            raw.cookie_secure,
            raw.cookie_same_site.as_deref(),
        )?;

        let Later {
            timings:
                [
                    session_lifetime,
                    refresh_margin,
                    clock_leeway,
                    callout_timeout,
                    jwks_refresh_interval,
                ],
            access,
            identity_headers,
            authorization_params,
            max_age,
            backchannel_logout_path,
            userinfo_path,
            bypass_paths,
            keep_claims,
        } = later(&mut raw, [&callback_path, &login_path, &logout_path])?;

        Ok(Config {
            issuer,
            issuer_url,
            client_id,
            client_secret,
            keys,
            idp_cluster: raw.idp_cluster,
            redirect_uri: raw.redirect_uri,
            callback_path,
            login_path,
            logout_path,
            post_logout_redirect_uri: raw.post_logout_redirect_uri,
            scopes: crate::headers::join(scopes.iter().map(String::as_str), " "),
            scope_on_refresh,
            forward_token,
            client_auth,
            cookie_name,
            cookie,
            session_lifetime,
            refresh_margin,
            clock_leeway,
            bypass_paths,
            pass_cors_preflight: raw.pass_cors_preflight.unwrap_or(false),
            callout_timeout: Duration::from_secs(callout_timeout),
            jwks_refresh_interval,
            hosts: Vec::new(),
            access,
            identity_headers,
            max_age,
            authorization_params,
            keep_claims,
            logout_lifetime: session_lifetime,
            backchannel_logout_path,
            userinfo_path,
            other_sites_cookies: CookieNames::default(),
        })
    }

    /// A site of the top level: [`Config::from_object`], its `redirect_uri` within its `cookie_domain` (a
    /// `hosts` entry's is checked against its hosts, [`redirect_host_served`]).
    fn top_level(obj: Object, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let site = Self::from_object(obj, env)?;
        redirect_within_cookie_domain(&site)?;
        Ok(site)
    }

    /// Whether `other` is a site of the same IdP client.
    pub fn same_client(&self, other: &Config) -> bool {
        self.issuer == other.issuer && self.client_id == other.client_id
    }

    /// Whether host `name` (lower case) is `cookie_domain` or a name under it: a host the browser sends
    /// this site's cookies to.
    pub(crate) fn within_cookie_domain(&self, name: &str) -> bool {
        let Some(d) = &self.cookie.domain else {
            return false;
        };
        let d = d.trim_matches('.').to_ascii_lowercase();
        !d.is_empty()
            && name
                .strip_suffix(d.as_str())
                .is_some_and(|sub| sub.is_empty() || sub.ends_with('.'))
    }

    /// Whether the session keeps its access token for `access_token_header`.
    pub fn passes_access_token(&self) -> bool {
        self.identity_headers.iter().any(|(_, c)| c == ACCESS_TOKEN)
    }

    /// The Envoy cluster that reaches `url`: the configured one, or Istio's name for a ServiceEntry host.
    pub fn cluster_for(&self, url: &WebUrl) -> String {
        match &self.idp_cluster {
            Some(c) => c.clone(),
            None => format!(
                "outbound|{}||{}",
                u32::from(url.port_or_default()),
                url.host()
            ),
        }
    }

    /// The name of the short-lived cookie that carries one login attempt, keyed by its state.
    pub fn login_cookie_name(&self, state: &str) -> String {
        // Its first 12 characters.
        let end = state.char_indices().nth(12).map_or(state.len(), |(i, _)| i);
        let key = state.get(..end).unwrap_or(state);
        format!("{}_login_{}", self.cookie_name, key)
    }

    /// `header` as [`cookies::strip_edit`] leaves it without this site's cookies. Every name of ours starts
    /// with `cookie_name`, so no other cookie is parsed.
    ///
    /// [`cookies::strip_edit`]: crate::cookies::strip_edit
    pub fn strip_own_cookies(&self, header: &str) -> Option<Option<String>> {
        let edit = crate::cookies::strip_edit(header, &self.cookie_name, |n| self.is_own_cookie(n));
        self.strip_other_sites(Some(header), edit)
    }

    /// True for every cookie this filter owns (session chunks and login attempts); they never go upstream.
    pub fn is_own_cookie(&self, name: &str) -> bool {
        is_site_cookie(&self.cookie_name, name)
    }

    /// `edit` (the change to the `Cookie` header that this site's answer makes: `None` none, `Some(None)`
    /// removed) extended to take out the other sites' cookies too. `original` is the header as sent.
    pub fn strip_other_sites(
        &self,
        original: Option<&str>,
        edit: Option<Option<String>>,
    ) -> Option<Option<String>> {
        if self.other_sites_cookies.is_empty() {
            return edit;
        }
        let current = match &edit {
            None => original,
            Some(h) => h.as_deref(),
        };
        match current.and_then(|h| self.other_sites_cookies.strip(h)) {
            Some(stripped) => Some(stripped),
            None => edit,
        }
    }
}

/// What `Config::from_raw` reads after the client, its keys, paths and cookie: apart, so that V8 compiles
/// neither as one large function when the plugin loads (the memory a compile takes, which Envoy's
/// allocator keeps, grows with the function: the largest compile sets what stays).
struct Later {
    timings: [u64; 5],
    access: Vec<Access>,
    identity_headers: Vec<(String, String)>,
    authorization_params: Vec<(String, String)>,
    max_age: Option<u64>,
    backchannel_logout_path: Option<String>,
    userinfo_path: Option<String>,
    bypass_paths: Vec<String>,
    keep_claims: Vec<String>,
}

#[inline(never)]
fn later(raw: &mut Raw, own: [&String; 3]) -> Result<Later, ConfigError> {
    let timings = timings(raw)?;
    let access = match &raw.claim_rules {
        None => Vec::new(),
        Some(v) => claims::parse_access(v).map_err(|e| err("claim_rules", e))?,
    };
    let mut identity_headers = identity_headers_from(raw.identity_headers.take())?;
    let (authorization_params, max_age) =
        authorization_params_from(raw.authorization_params.take())?;
    let ([backchannel_logout_path, userinfo_path], bypass_paths) = open_paths(
        raw.backchannel_logout_path.take(),
        raw.userinfo_path.take(),
        raw.bypass_paths.take(),
        own,
    )?;
    let keep_claims = claims_kept(
        &access,
        &bypass_paths,
        &mut identity_headers,
        raw.access_token_header.take(),
        userinfo_path.is_some(),
    )?;
    Ok(Later {
        timings,
        access,
        identity_headers,
        authorization_params,
        max_age,
        backchannel_logout_path,
        userinfo_path,
        bypass_paths,
        keep_claims,
    })
}

/// The IdP and the client: `issuer` (its URL too) and `client_id`, checked.
#[inline(never)]
fn client_of(raw: &mut Raw) -> Result<(String, WebUrl, String), ConfigError> {
    let issuer = raw.issuer.take().ok_or_else(|| err("issuer", "required"))?;
    let issuer_url = http_url("issuer", &issuer)?;
    if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
        return Err(err("issuer", "must not have a query or fragment"));
    }
    let client_id = non_empty("client_id", raw.client_id.take())?;
    // RFC 6749 Appendix A: printable ASCII (spaces allowed). A control character (a YAML block's
    // newline) would only fail at the IdP, and split the log lines that name the client.
    if !client_id.bytes().all(|b| matches!(b, b' '..=b'~')) {
        return Err(err(
            "client_id",
            "printable ASCII only (no control characters)",
        ));
    }
    // `aud` is compared exactly: a space around it would fail every login (found in review).
    if client_id.trim_ascii() != client_id {
        return Err(err("client_id", "must not start or end with a space"));
    }
    Ok((issuer, issuer_url, client_id))
}

/// `forward_token` and `token_endpoint_auth`.
#[inline(never)]
fn token_settings(raw: &Raw) -> Result<(ForwardToken, ClientAuth), ConfigError> {
    let forward_token = match raw.forward_token.as_deref() {
        None | Some("id_token") => ForwardToken::IdToken,
        Some("access_token") => ForwardToken::AccessToken,
        Some(_) => return Err(err("forward_token", "must be `id_token` or `access_token`")),
    };
    let client_auth = match raw.token_endpoint_auth.as_deref() {
        None | Some("client_secret_basic") => ClientAuth::Basic,
        Some("client_secret_post") => ClientAuth::Post,
        Some(_) => {
            return Err(err(
                "token_endpoint_auth",
                "must be `client_secret_basic` or `client_secret_post`",
            ));
        }
    };
    Ok((forward_token, client_auth))
}

/// `backchannel_logout_path`, `userinfo_path` and `bypass_paths`: none of them one of the filter's `own`
/// paths or the other, and no bypass path covering either.
#[inline(never)]
fn open_paths(
    backchannel_logout_path: Option<String>,
    userinfo_path: Option<String>,
    bypass_paths: Option<Vec<String>>,
    own: [&String; 3],
) -> Result<([Option<String>; 2], Vec<String>), ConfigError> {
    let backchannel_logout_path = own_other_path(
        "backchannel_logout_path",
        backchannel_logout_path,
        own,
        None,
    )?;
    let userinfo_path = own_other_path(
        "userinfo_path",
        userinfo_path,
        own,
        backchannel_logout_path.as_ref(),
    )?;
    let bypass_paths = bypass_paths_from(
        bypass_paths,
        [
            Some(own[0]),
            Some(own[1]),
            Some(own[2]),
            backchannel_logout_path.as_ref(),
            userinfo_path.as_ref(),
        ],
    )?;
    Ok(([backchannel_logout_path, userinfo_path], bypass_paths))
}

/// An optional path of the filter's, written as its `own` paths are and differing from them and `other`.
fn own_other_path(
    field: &str,
    p: Option<String>,
    own: [&String; 3],
    other: Option<&String>,
) -> Result<Option<String>, ConfigError> {
    let Some(p) = p else {
        return Ok(None);
    };
    let p = path(field, Some(p), "")?;
    if own.contains(&&p) || other == Some(&p) {
        return Err(err(field, "must differ from the other paths"));
    }
    Ok(Some(p))
}

/// The claims a session keeps: those the identity headers and claim rules read (and the user's name for
/// the `403` page), sorted. Checks that no rule lies under a bypass path, and adds `access_token_header` to
/// the identity headers. (Apart from [`Config::from_raw`], so that V8 compiles neither as one large
/// function when the plugin loads: the peak of that compile stays in Envoy's memory.)
#[inline(never)]
fn claims_kept(
    access: &[Access],
    bypass_paths: &[String],
    identity_headers: &mut Vec<(String, String)>,
    access_token_header: Option<String>,
    userinfo: bool,
) -> Result<Vec<String>, ConfigError> {
    // A rule on a path the bypass leaves open to everyone would never be asked: an operator who
    // wrote it believes that path closed (found by a black-box test).
    if let Some((a, b)) = access.iter().find_map(|a| {
        bypass_paths
            .iter()
            // Without regard to case, as rules are applied: a rule on `/Public/admin` under `/public`
            // left `/public/admin` open (found in review).
            // (Its look-alike letters folded too: `/publİc/admin` is `/public/admin` to such apps.)
            .find(|b| crate::paths::prefix_matches_as(b, &a.folded, true))
            .map(|b| (a, b))
    }) {
        return Err(err(
            "claim_rules",
            format!(
                "`{}` is under bypass path `{b}`, open to everyone: no rule applies there (a `hosts` entry that inherits it may set its own `claim_rules`)",
                a.path_prefix
            ),
        ));
    }
    let mut keep_claims: Vec<&str> = Vec::new();
    for (_, c) in identity_headers.iter() {
        keep_claims.push(c);
    }
    access
        .iter()
        .for_each(|a| a.rule.claim_names(&mut keep_claims));
    if !access.is_empty() {
        // The 403 page names the user by these, whatever the headers and rules read.
        keep_claims.push("preferred_username");
        keep_claims.push("email");
    }
    if userinfo {
        // What `userinfo_path` answers, whatever the headers and rules read.
        for (_, c, _) in crate::flow::USERINFO_CLAIMS {
            keep_claims.push(c);
        }
    }
    crate::json::heapsort(&mut keep_claims);
    keep_claims.dedup();
    let keep_claims = {
        let mut out = Vec::new();
        for c in keep_claims {
            out.push(c.to_string());
        }
        out
    };
    // The access token travels as one more identity header, under a claim name no configuration
    // can give (an empty one).
    if let Some(h) = access_token_header {
        let h = h.to_ascii_lowercase();
        if !settable(&h) || identity_headers.iter().any(|(i, _)| *i == h) {
            return Err(err(
                "access_token_header",
                format!("`{}` cannot carry the access token", quotable(&h, 64)),
            ));
        }
        identity_headers.push((h, ACCESS_TOKEN.to_string()));
    }
    Ok(keep_claims)
}

/// True for the cookies of the site whose cookies are named `cookie_name`: session chunks and login attempts.
fn is_site_cookie(cookie_name: &str, name: &str) -> bool {
    crate::session::is_session_cookie(cookie_name, name)
        || name
            .strip_prefix(cookie_name)
            .is_some_and(|rest| rest.starts_with("_login_"))
}

/// The cookie names of several sites, to take all their cookies out of a `Cookie` header in one pass
/// (found in review: a pass per site made a header of thousands of cookies cost each request as many
/// passes as the plugin has sites, and every logged-in request of a plugin with many sites paid one pass
/// per site too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieNames {
    /// Sorted, each once.
    names: Vec<String>,
    /// What every name starts with: only the cookies whose names start so are looked at.
    prefix: String,
}

impl CookieNames {
    pub fn new(mut names: Vec<String>) -> CookieNames {
        // A few dozen names at most, sorted once: an insertion sort, far smaller in the module than the
        // standard library's.
        for i in 1..names.len() {
            let mut j = i;
            while j > 0 && names.get(j - 1) > names.get(j) {
                names.swap(j - 1, j);
                j -= 1;
            }
        }
        names.dedup();
        // Of sorted names, the first and the last share what all of them share.
        let prefix = match (names.first(), names.last()) {
            (Some(a), Some(b)) => {
                let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
                while !a.is_char_boundary(n) {
                    n -= 1;
                }
                a.get(..n).unwrap_or_default().to_string()
            }
            _ => String::new(),
        };
        CookieNames { names, prefix }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `name` is a cookie of one of the sites ([`is_site_cookie`] for one of their names): the
    /// name itself, or the name before a chunk's `.K` or before a `_login_`, must be one of theirs.
    fn owns(&self, name: &str) -> bool {
        let site = |stem: &str| {
            self.names
                .binary_search_by(|n| n.as_str().cmp(stem))
                .is_ok()
                && is_site_cookie(stem, name)
        };
        const LOGIN: &[u8] = b"_login_";
        let b = name.as_bytes();
        site(name)
            || b.iter()
                .rposition(|&c| c == b'.')
                .is_some_and(|i| name.get(..i).is_some_and(site))
            || (0..b.len()).any(|i| {
                b.get(i..).is_some_and(|rest| rest.starts_with(LOGIN))
                    && name.get(..i).is_some_and(site)
            })
    }

    /// `header` without the cookies of these sites (as [`crate::cookies::strip_edit`] gives it: `None`
    /// when none is there).
    pub fn strip(&self, header: &str) -> Option<Option<String>> {
        if self.names.is_empty() {
            return None;
        }
        crate::cookies::strip_edit(header, &self.prefix, |n| self.owns(n))
    }
}

/// What happens to a request whose host matches no entry of `hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// The top-level site handles it.
    Default,
    /// Passes without login (another policy, or nothing, protects it).
    Pass,
    /// 403.
    Deny,
}

/// The whole plugin: one site per IdP client and the hosts it serves.
#[derive(Debug)]
pub struct Plugin {
    /// The top-level site (if the top level names an `issuer`) first, then one per `hosts` entry.
    pub sites: Vec<Config>,
    pub unmatched: Unmatched,
    default_site: Option<usize>,
    /// Every site's cookie name.
    cookie_names: CookieNames,
    /// The secret fields written in pluginConfig itself (`cookie_keys`, `hosts[1].client_secret`), which
    /// whoever reads the WasmPlugin or the proxy's configuration can read: warned of at start.
    pub inline_secrets: Vec<String>,
}

/// The secret fields `obj` writes out (not `null`), named with `prefix`.
fn inline_secrets(obj: &Object, prefix: &str, out: &mut Vec<String>) {
    for field in ["client_secret", "cookie_keys"] {
        if obj.get(field).is_some_and(|v| !v.is_null()) {
            out.push(format!("{prefix}{field}"));
        }
    }
}

impl Plugin {
    /// Parses pluginConfig. Without `hosts`, it is one site serving every host, exactly as [`Config::parse`].
    /// With `hosts: [{"hosts": ["grafana.example.com", "*.apps.example.com"], …overrides}]`, each entry is a
    /// site of its own that inherits every top-level field it does not set.
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Plugin, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Config::parse(json, env).map(Plugin::single);
        }
        let Value::Object(mut top) = parse_json(json, "not valid JSON")? else {
            return Err(err("pluginConfig", "must be a JSON object"));
        };
        // `null` is absent, as for every field (a template renders an unset value so): at the top level
        // it is dropped here, once; an entry's `null` unsets what the entry would inherit (below). An
        // unknown name stays, to be refused as one.
        top.retain(|k, v| !(v.is_null() && is_top_level_field(k)));
        let mut inline = Vec::new();
        inline_secrets(&top, "", &mut inline);
        let entries = top.remove("hosts");
        let unmatched = top.remove("unmatched_hosts");
        let Some(entries) = entries else {
            if unmatched.is_some() {
                return Err(err(
                    "unmatched_hosts",
                    "only meaningful together with `hosts`",
                ));
            }
            let mut plugin = Config::top_level(top, env).map(Plugin::single)?;
            plugin.inline_secrets = inline;
            return Ok(plugin);
        };
        let entries = match entries {
            Value::Array(a) if !a.is_empty() && a.len() <= 64 => a,
            _ => return Err(err("hosts", "a list of 1 to 64 objects")),
        };
        let mut sites = Vec::new();
        let default_site = if top.contains_key("issuer") {
            sites.push(Config::top_level(top.clone(), env)?);
            Some(0)
        } else {
            None
        };
        // A top level that names no IdP is checked as a site of the first entry's IdP client, after the
        // entries: a value there that every entry overrides is still a mistake (found in review: six
        // invalid values were taken unread).
        let mut probe = (default_site.is_none()).then(|| top.clone());
        if let (Some(probe), Some(Value::Object(first))) = (&mut probe, entries.first()) {
            for f in ["issuer", "client_id", "idp_cluster"] {
                if let (false, Some(v)) = (probe.contains_key(f), first.get(f)) {
                    probe.insert(f.to_string(), v.clone());
                }
            }
            // A secret the entry sets, either way, replaces the top level's, as it does for the entry
            // (found in review: the top level's `cookie_keys_env` beside the entry's `cookie_keys` read as
            // both set, and a default variable every entry overrides, unset on the gateway, was refused;
            // then, with a rule of its own here, an entry's `null` dropped the top level's other way).
            drop_replaced_secrets(probe, first);
            for (f, _) in SECRET_WAYS {
                if let Some(v) = first.get(f) {
                    probe.insert(f.to_string(), v.clone());
                }
            }
        }
        let mut seen_hosts: Vec<String> = Vec::new();
        let mut inherits_redirect: Vec<bool> = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let (site, inherits) = entry_site(i, entry, &top, env, &mut seen_hosts, &mut inline)?;
            inherits_redirect.push(inherits);
            sites.push(site);
        }
        if let Some(probe) = probe {
            Config::top_level(probe, env).map_err(|mut e| {
                e.reason = format!(
                    "{} (at the top level, checked with the first entry's IdP client)",
                    e.reason
                );
                e
            })?;
        }
        check_site_pairs(&sites, default_site)?;
        let cookie_names = share_site_lists(&mut sites);
        let unmatched = match unmatched.as_ref().map(|v| v.as_str()) {
            None if default_site.is_some() => Unmatched::Default,
            None => Unmatched::Deny,
            Some(Some("default")) if default_site.is_some() => Unmatched::Default,
            Some(Some("default")) => {
                return Err(err(
                    "unmatched_hosts",
                    "`default` needs a top-level `issuer`",
                ));
            }
            Some(Some("pass")) => Unmatched::Pass,
            Some(Some("deny")) => Unmatched::Deny,
            Some(_) => return Err(err("unmatched_hosts", "`default`, `pass` or `deny`")),
        };
        let plugin = Plugin {
            sites,
            unmatched,
            default_site,
            cookie_names: CookieNames::new(cookie_names),
            inline_secrets: inline,
        };
        check_redirect_takers(&plugin, &inherits_redirect)?;
        Ok(plugin)
    }

    fn single(cfg: Config) -> Plugin {
        Plugin {
            cookie_names: CookieNames::new(vec![cfg.cookie_name.clone()]),
            sites: vec![cfg],
            unmatched: Unmatched::Default,
            default_site: Some(0),
            inline_secrets: Vec::new(),
        }
    }

    /// `header` without the cookies of any site (for a request no site serves that passes upstream).
    pub fn strip_all_cookies(&self, header: &str) -> Option<Option<String>> {
        self.cookie_names.strip(header)
    }

    /// The site for a request; reads `:authority` (through `authority`) only when several sites exist.
    /// `Err` when it is not a host and port: a request that could be routed as one host and judged as
    /// another gets no site.
    pub fn site_for_request(
        &self,
        authority: impl FnOnce() -> Option<String>,
    ) -> Result<Option<usize>, BadAuthority> {
        if self.sites.len() == 1 && self.default_site == Some(0) {
            return Ok(Some(0));
        }
        self.site_for(&authority().unwrap_or_default())
    }

    /// The site serving `authority` (`host[:port]`): an exact name first, then the longest wildcard.
    pub fn site_for(&self, authority: &str) -> Result<Option<usize>, BadAuthority> {
        if self.sites.len() == 1 && self.default_site == Some(0) {
            return Ok(Some(0));
        }
        let host = host_of(authority).ok_or(BadAuthority)?;
        let mut best: Option<(usize, usize)> = None;
        for (i, s) in self.sites.iter().enumerate() {
            for p in &s.hosts {
                let Some(score) = pattern_score(p, &host) else {
                    continue;
                };
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i, score));
                }
            }
        }
        Ok(match best {
            Some((i, _)) => Some(i),
            None if self.unmatched == Unmatched::Default => self.default_site,
            None => None,
        })
    }
}

/// Sites that share a cookie name must be able to share its sessions, and no site's name may read as
/// another's login attempt. `default_site`: the top level's own site, if any (for the field names).
#[inline(never)]
fn check_site_pairs(sites: &[Config], default_site: Option<usize>) -> Result<(), ConfigError> {
    // `field` as named in site `i`'s part of the configuration.
    let site_field = |i: usize, field: &str| match default_site {
        Some(d) if d == i => field.to_string(),
        d => format!("hosts[{}].{field}", i - usize::from(d.is_some())),
    };
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[..i] {
            // One site's name must not read as another's login attempt (`s_login_x` beside `s`):
            // each would take the other's cookies for its own, and a login at one cleared the
            // other's session as stale attempts (found by a black-box test).
            let attempt = |x: &Config, y: &Config| {
                x.cookie_name != y.cookie_name && is_site_cookie(&y.cookie_name, &x.cookie_name)
            };
            if attempt(a, b) || attempt(b, a) {
                return Err(err(
                    &site_field(i, "cookie_name"),
                    "one site's name and `_login_` must not start another's: it reads as that site's login cookie",
                ));
            }
            if a.cookie_name != b.cookie_name {
                continue;
            }
            // Where the browser sends one cookie to both sites (a `cookie_domain`; host-only cookies
            // of two hosts never meet, a host being one site's), each takes the other's sessions.
            let meet = a.cookie.domain.is_some() || b.cookie.domain.is_some();
            if meet && !set_alike(a, b) {
                return Err(err(
                    &site_field(i, "cookie_name"),
                    "sites of one cookie name must share cookie_domain, and authorization_params' max_age and acr_values",
                ));
            }
            if !a.same_client(b) {
                return Err(err(
                    &site_field(i, "cookie_name"),
                    format!(
                        "`{}` is used by sites of different IdP clients; give each its own",
                        a.cookie_name
                    ),
                ));
            }
            if let Some(field) = meet.then(|| session_unlike(a, b)).flatten() {
                return Err(err(
                    &site_field(i, field),
                    format!(
                        "sites sharing the cookie name `{}` share one session, which the site that logs the user in makes: give them the same {field}, or each its own cookie_name",
                        a.cookie_name
                    ),
                ));
            }
            // One cookie, two sets of keys: each would take the other's session for a forgery and
            // clear it.
            if meet && !a.keys.open_each_other(&b.keys, &a.cookie_name) {
                return Err(err(
                    &site_field(i, "cookie_keys"),
                    format!(
                        "sites sharing the cookie name `{}` cannot open each other's sessions; give them the same keys or each its own cookie_name",
                        a.cookie_name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What each site takes from the others: their identity headers to remove, the longest session of its
/// client (how long its logouts are kept), and their cookie names to strip. Returns every site's cookie name.
#[inline(never)]
fn share_site_lists(sites: &mut [Config]) -> Vec<String> {
    let mut cookie_names: Vec<String> = Vec::new();
    // Every identity header (and `access_token_header`) any site sets: each site removes them all.
    let mut identity_names: Vec<String> = Vec::new();
    for s in sites.iter() {
        if !cookie_names.contains(&s.cookie_name) {
            cookie_names.push(s.cookie_name.clone());
        }
        for (h, _) in &s.identity_headers {
            if !identity_names.contains(h) {
                identity_names.push(h.clone());
            }
        }
    }
    for i in 0..sites.len() {
        let site = &sites[i];
        // The longest of its client's (this site's own among them).
        let mut logout_lifetime = site.session_lifetime;
        for o in sites.iter() {
            if site.same_client(o) {
                logout_lifetime = logout_lifetime.max(o.session_lifetime);
            }
        }
        // The identity headers (and `access_token_header`) any other site sets, this one removes
        // too: a client's copy must not reach an app served under two names (found by a black-box
        // test: an entry with `identity_headers: {}`, for API clients with bearer tokens, let a
        // logged-in user's `X-Auth-Request-User: admin` through to the app).
        let site = &mut sites[i];
        for h in &identity_names {
            if !site.identity_headers.iter().any(|(g, _)| g == h) {
                site.identity_headers
                    .push((h.clone(), STRIPPED.to_string()));
            }
        }
        site.logout_lifetime = logout_lifetime;
        let mut others = Vec::new();
        for n in &cookie_names {
            if *n != site.cookie_name {
                others.push(n.clone());
            }
        }
        site.other_sites_cookies = CookieNames::new(others);
    }
    cookie_names
}

/// Each `redirect_uri`'s host is served by the site that names it.
#[inline(never)]
fn check_redirect_takers(plugin: &Plugin, inherits_redirect: &[bool]) -> Result<(), ConfigError> {
    // The site that serves the redirect's host takes the callback, and only the site that started a
    // login can finish it: its callback path, login cookie (name and keys) and `redirect_uri`, and the
    // host the browser goes back to. The top level's own site serves requests only as the default.
    let entry_of = |i: usize| i.saturating_sub(usize::from(plugin.default_site.is_some()));
    for (i, site) in plugin.sites.iter().enumerate() {
        let top_site = plugin.default_site == Some(i);
        if top_site && plugin.unmatched != Unmatched::Default {
            continue;
        }
        let Some(url) = site
            .redirect_uri
            .as_deref()
            .and_then(|r| WebUrl::parse(r).ok())
        else {
            continue;
        };
        let taker = plugin.site_for(url.authority()).ok().flatten();
        if taker == Some(i) {
            continue;
        }
        let by = match taker {
            None => "no site".to_string(),
            Some(t) if plugin.default_site == Some(t) => "the top level's site".to_string(),
            Some(t) => format!("`hosts[{}]`", entry_of(t)),
        };
        let (field, note) = if top_site {
            ("redirect_uri".to_string(), "")
        } else {
            let entry = entry_of(i);
            let inherited = inherits_redirect.get(entry).copied().unwrap_or(false);
            (
                format!("hosts[{entry}].redirect_uri"),
                if inherited {
                    " (inherited from the top level)"
                } else {
                    ""
                },
            )
        };
        return Err(err(
            &field,
            format!(
                "its host `{}` is served by {by}, not by this site, which alone can finish its \
                 logins{note}",
                url.host()
            ),
        ));
    }
    Ok(())
}

/// A `hosts` entry's host names, lowercased, each named by no entry before it. Out of `entry_site`: Envoy's
/// V8 compiles every function when the plugin loads, and the memory a compile takes, which Envoy's
/// allocator keeps, grows with the function: the largest compile sets what stays.
#[inline(never)]
fn entry_hosts(
    patterns: Option<Value>,
    seen_hosts: &mut Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    let patterns = match patterns {
        Some(Value::Array(h)) if !h.is_empty() => h,
        _ => {
            return Err(err(
                "hosts",
                "a non-empty list of host names like `grafana.example.com` or `*.example.com`",
            ));
        }
    };
    let mut hosts = Vec::new();
    for p in patterns {
        let Some(p) = p
            .as_str()
            .map(str::to_ascii_lowercase)
            .filter(|p| valid_host_pattern(p))
        else {
            return Err(err(
                "hosts",
                "host names like `grafana.example.com` or `*.example.com`",
            ));
        };
        if seen_hosts.contains(&p) {
            return Err(err("hosts", format!("`{p}` is listed twice")));
        }
        seen_hosts.push(p.clone());
        hosts.push(p);
    }
    Ok(hosts)
}

/// `hosts` entry `i` as a site of its own: the top level with the entry's fields over it, its host names
/// (none listed twice across the entries, `seen_hosts`), and whether it inherits `redirect_uri`. Its inline
/// secrets go to `inline`. (Apart from [`Plugin::parse`], so that V8 compiles neither as one large
/// function when the plugin loads: the peak of that compile stays in Envoy's memory.)
#[inline(never)]
fn entry_site(
    i: usize,
    entry: Value,
    top: &Object,
    env: &dyn Fn(&str) -> Option<String>,
    seen_hosts: &mut Vec<String>,
    inline: &mut Vec<String>,
) -> Result<(Config, bool), ConfigError> {
    let at = |e: ConfigError| ConfigError {
        field: format!("hosts[{i}].{}", e.field),
        reason: e.reason,
    };
    let Value::Object(mut entry) = entry else {
        return Err(at(err("hosts", "each entry is an object")));
    };
    let hosts = entry_hosts(entry.remove("hosts"), seen_hosts).map_err(at)?;
    inline_secrets(&entry, &format!("hosts[{i}]."), inline);
    let explicit_cookie = entry.get("cookie_name").is_some_and(|v| !v.is_null());
    // An error in a field the entry does not set is the top level's: named as it is there
    // (found in review: a top level without an `issuer`, checked only through its entries, had
    // its mistakes blamed on `hosts[0]`).
    let mut own: Vec<String> = Vec::new();
    for (k, _) in entry.iter() {
        own.push(k.to_string());
    }
    let inherited_error = |e: &ConfigError| {
        let root = e.field.split(['.', '[']).next().unwrap_or_default();
        !own.iter().any(|k| k == root) && top.contains_key(root)
    };
    // Fields the entry takes from the top level, named in its `redirect_uri` errors.
    let mut inherited: Vec<&str> = Vec::new();
    for f in ["`redirect_uri`", "`callback_path`", "`cookie_domain`"] {
        let plain = f.trim_matches('`');
        if !entry.contains_key(plain) && top.contains_key(plain) {
            inherited.push(f);
        }
    }
    let at_redirect = |mut e: ConfigError| {
        if inherited_error(&e) && e.field != "redirect_uri" {
            // The top level's value, or how it meets the entry's own fields (found in review:
            // the valid top-level field was blamed for the entry's own `callback_path`).
            let with_own = if own.is_empty() {
                ""
            } else {
                ": that value, or that entry's own fields with it"
            };
            e.reason = format!(
                "{} (at the top level, inherited by hosts[{i}]{with_own})",
                e.reason
            );
            return e;
        }
        if e.field == "redirect_uri" && !inherited.is_empty() {
            e.reason = format!(
                "{} ({} inherited from the top level)",
                e.reason,
                crate::headers::join(inherited.iter().copied(), ", ")
            );
        }
        at(e)
    };
    // An entry with an IdP of its own is reached through its own cluster (set, or derived from its
    // issuer), never through the one the top level names for another IdP. A top level that names
    // no IdP names the cluster for its entries' (found in review: it was dropped).
    let other_idp = top
        .get("issuer")
        .is_some_and(|t| entry.get("issuer").is_some_and(|i| i != t))
        && !entry.contains_key("idp_cluster");
    let mut merged = top.clone();
    if other_idp {
        merged.remove("idp_cluster");
    }
    drop_replaced_secrets(&mut merged, &entry);
    for (name, value) in entry {
        // `null` unsets a field; for these it would silently drop what the top level protects
        // (its access rules; the headers it sets and strips, so a client's copy would pass), as a
        // template that renders an unset value as `null` does.
        if value.is_null()
            && matches!(
                name.as_str(),
                "claim_rules" | "identity_headers" | "access_token_header"
            )
            && top.contains_key(&name)
        {
            return Err(at(err(
                &name,
                "`null` would drop what the top level sets: leave it out to inherit it",
            )));
        }
        merged.insert(name, value);
    }
    let mut site = Config::from_object(merged, env).map_err(at_redirect)?;
    redirect_host_served(&site, &hosts).map_err(at_redirect)?;
    hosts_within_cookie_domain(&site, &hosts).map_err(at_redirect)?;
    post_logout_not_own(&site, &hosts).map_err(at_redirect)?;
    if !explicit_cookie {
        // Each site seals under its own cookie name (the AEAD's associated data), so a session
        // of one host's IdP never opens on another host.
        site.cookie_name = format!("{}_{i}", site.cookie_name);
    }
    site.hosts = hosts;
    Ok((site, inherited.contains(&"`redirect_uri`")))
}

/// How well host pattern `p` matches `host`: an exact name above every wildcard, a longer wildcard
/// suffix above a shorter one; `None` when it does not match (`*.a.com` covers names under `a.com`).
fn pattern_score(p: &str, host: &str) -> Option<usize> {
    if p == host {
        return Some(usize::MAX);
    }
    let suffix = p.strip_prefix('*')?;
    (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len())
}

/// An `:authority` that is not `host[:port]` (`a.example.com:1:2`, `a.example.com@b`, empty): Envoy may
/// route it by a prefix (Istio gives each host the domain `host:*`), so no site is picked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAuthority;

/// The lowercase host of `host[:port]` (an IPv6 address keeps its brackets); `None` unless the authority
/// is exactly that: a name of letters, digits, `-`, `.` and `_` that does not end with a dot, or a
/// bracketed address, then at most one `:` and up to five digits.
pub(crate) fn host_of(authority: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return None;
        }
        (authority.get(..inside.len() + 2)?, after)
    } else {
        let (host, port) =
            crate::weburl::split_at(authority, authority.find(':').unwrap_or(authority.len()));
        if host.is_empty()
            || !host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        {
            return None;
        }
        (host, port)
    };
    if let Some(digits) = port.strip_prefix(':') {
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    // A trailing dot is refused, not trimmed: Envoy routes `grafana.example.com.` as that name only with
    // `strip_trailing_host_dot` (off in Istio), so it may reach another virtual host than the site it
    // would be judged as.
    if host.ends_with('.') {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// The setting two sites whose cookies meet differ in that shapes the session one of them makes for both:
/// which token goes upstream, whether the access token is kept for `access_token_header`, the scopes (in
/// any order) that give the claims, and `authorization_params`' `audience` and `resource`, which give the
/// access token's audience. Found by a black-box test: which token an app got, and whether a
/// user passed a claim rule, depended on the site the user had logged in at first.
fn session_unlike(a: &Config, b: &Config) -> Option<&'static str> {
    let within = |x: &Config, y: &Config| {
        x.scopes
            .split(' ')
            .all(|w| y.scopes.split(' ').any(|v| v == w))
    };
    if a.forward_token != b.forward_token {
        Some("forward_token")
    } else if a.passes_access_token() != b.passes_access_token() {
        Some("access_token_header")
    } else if !within(a, b) || !within(b, a) {
        Some("scopes")
    // The access token's audience (Auth0's `audience`, RFC 8707's `resource`).
    } else if ["audience", "resource"]
        .iter()
        .any(|n| auth_param(a, n) != auth_param(b, n))
    {
        Some("authorization_params")
    } else {
        None
    }
}

/// The value of `authorization_params`' `name` (in any case) in `c`, if set.
fn auth_param<'a>(c: &'a Config, name: &str) -> Option<&'a str> {
    c.authorization_params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether two sites whose cookies meet set them alike and ask the same of a login: the same
/// `cookie_domain` (without a leading dot, in any case), `max_age` and `acr_values`. Found by a black-box
/// test: a `/logout` at a host-only site left the user logged in there by the other site's `Domain`
/// cookie of the same name; a site's `max_age` was met by a session the other site made without it.
fn set_alike(a: &Config, b: &Config) -> bool {
    fn domain(c: &Config) -> Option<&str> {
        c.cookie
            .domain
            .as_deref()
            .map(|d| d.trim_start_matches('.'))
    }
    let same_domain = match (domain(a), domain(b)) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        (x, y) => x.is_none() && y.is_none(),
    };
    same_domain
        && a.max_age == b.max_age
        && auth_param(a, "acr_values") == auth_param(b, "acr_values")
}

/// A `hosts` entry's `cookie_domain` (set or inherited) must hold each of its hosts. Found in review: it was
/// checked only through a `redirect_uri`. A browser drops a cookie whose `Domain` its host is not within,
/// so every login of such a host would end in a state mismatch.
#[inline(never)]
fn hosts_within_cookie_domain(site: &Config, hosts: &[String]) -> Result<(), ConfigError> {
    match hosts
        .iter()
        .find(|p| !site.within_cookie_domain(p.strip_prefix("*.").unwrap_or(p)))
    {
        Some(p) if site.cookie.domain.is_some() => Err(err(
            "cookie_domain",
            format!(
                "this entry's host `{p}` is not within it: browsers drop the cookies set for it there, \
                 so its logins would fail"
            ),
        )),
        _ => Ok(()),
    }
}

/// `redirect_uri`'s host within `cookie_domain`, when there is one: the login-attempt cookie is set for
/// that domain, which a browser neither takes from nor sends to a host outside it, so no login could finish
/// (found in review: refused in a `hosts` entry, taken without `hosts`, and every login then failed with a
/// state mismatch).
fn redirect_within_cookie_domain(site: &Config) -> Result<(), ConfigError> {
    let (Some(domain), Some(url)) = (
        &site.cookie.domain,
        site.redirect_uri
            .as_deref()
            .and_then(|r| WebUrl::parse(r).ok()),
    ) else {
        return Ok(());
    };
    if site.within_cookie_domain(url.host()) {
        return Ok(());
    }
    Err(err(
        "redirect_uri",
        format!(
            "its host `{}` is not within cookie_domain `{domain}`: the login cookie is set for that \
             domain, which the browser does not send to `{}`, so every login would fail with a state \
             mismatch",
            url.host(),
            url.host()
        ),
    ))
}

/// A `hosts` entry's `redirect_uri` (set or inherited): the login-attempt cookie is set for the host that
/// starts the login (with the site's `Domain` when it has one), so every host of the entry must be the
/// redirect's host or lie within its `cookie_domain`, or the IdP's redirect back arrives without it.
#[inline(never)]
fn redirect_host_served(site: &Config, hosts: &[String]) -> Result<(), ConfigError> {
    let Some(url) = site
        .redirect_uri
        .as_deref()
        .and_then(|r| WebUrl::parse(r).ok())
    else {
        return Ok(());
    };
    let host = url.host();
    if hosts
        .iter()
        .all(|p| p == host || site.within_cookie_domain(p.strip_prefix("*.").unwrap_or(p)))
        && (hosts.iter().any(|p| p == host) || site.within_cookie_domain(host))
    {
        return Ok(());
    }
    Err(err(
        "redirect_uri",
        format!(
            "its host `{host}` is not among this entry's hosts ({}) or they are not all within it{}: the \
             login cookie is set for the host that starts the login, so the IdP's redirect to `{host}` would \
             fail with a state mismatch",
            crate::headers::join(hosts.iter().map(String::as_str), ", "),
            match &site.cookie.domain {
                Some(d) => format!(" nor within cookie_domain `{d}`"),
                // Found by a black-box test: `*.apps.example.com` and a `redirect_uri` on one of its hosts
                // read as refused for a host the pattern covers.
                None => " (every host of the entry but the redirect's own must be within a cookie_domain that holds them all; none is set)".into(),
            }
        ),
    ))
}

fn valid_host_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && !name.contains('*')
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Headers that carry claims unless configured otherwise: the ones oauth2-proxy sets, so apps made for it
/// (Grafana's auth proxy mode and the like) work unchanged.
/// In the order a configured map gets (sorted by name), so the default and the same map written out
/// are one configuration.
pub const DEFAULT_IDENTITY_HEADERS: [(&str, &str); 4] = [
    ("x-auth-request-email", "email"),
    ("x-auth-request-groups", "groups"),
    ("x-auth-request-preferred-username", "preferred_username"),
    ("x-auth-request-user", "sub"),
];

#[inline(never)]
fn non_empty(field: &str, v: Option<String>) -> Result<String, ConfigError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(err(field, "must not be empty")),
        None => Err(err(field, "required")),
    }
}

/// An absolute http(s) URL with a host; the error names `field`.
#[inline(never)]
fn http_url(field: &str, s: &str) -> Result<WebUrl, ConfigError> {
    WebUrl::parse(s).map_err(|e| err(field, e.to_string()))
}

/// The filter's own paths (callback, login, logout), and the URL fields checked with them.
#[inline(never)]
fn own_paths(raw: &mut Raw) -> Result<[String; 3], ConfigError> {
    if raw.idp_cluster.as_deref().is_some_and(str::is_empty) {
        return Err(err("idp_cluster", "must not be empty"));
    }
    // An Envoy cluster's name has no space or control character: with one (a YAML block's trailing
    // newline) the plugin would start and every callout fail.
    if raw
        .idp_cluster
        .as_deref()
        .is_some_and(|c| !c.bytes().all(|b| matches!(b, b'!'..=b'~')))
    {
        return Err(err("idp_cluster", "no spaces or control characters"));
    }
    let redirect_path = match &raw.redirect_uri {
        Some(r) => Some(redirect_uri_path(r)?),
        None => None,
    };
    // The filter answers the IdP's redirect only at callback_path: redirect_uri must point there.
    let (callback_path, derived) = match (raw.callback_path.take(), redirect_path) {
        (None, Some(p)) => {
            if p == "/" {
                return Err(err(
                    "redirect_uri",
                    "has no path to take callback_path from; give one like `https://app.example.com/oauth2/callback`",
                ));
            }
            // What a set `callback_path` may not hold ([`path`]) is refused here too: both ways of
            // naming the callback path take the same paths. (A `;` also fails the normalized-path check.)
            if p.starts_with("//")
                || p.contains(['?', '#', '%', ' ', ';', '"', '\'', '<', '>', '\\'])
                || !crate::paths::is_normal_prefix(&p)
            {
                return Err(err(
                    "redirect_uri",
                    format!(
                        "its path `{p}` cannot be callback_path (no escapes, non-ASCII characters, `;`, quotes, \
                         `<`, `>`, `\\` or `//`)"
                    ),
                ));
            }
            (p, true)
        }
        (Some(c), Some(p)) => {
            let c = path("callback_path", Some(c), "")?;
            if c != p {
                return Err(err(
                    "redirect_uri",
                    format!(
                        "its path `{p}` differs from callback_path `{c}`, the only path where the filter takes the IdP's redirect back (leave callback_path out to use `{p}`)"
                    ),
                ));
            }
            (c, false)
        }
        (c, None) => (path("callback_path", c, "/oauth2/callback")?, false),
    };
    let login_path = path("login_path", raw.login_path.take(), "/login")?;
    let logout_path = path("logout_path", raw.logout_path.take(), "/logout")?;
    if derived && (callback_path == login_path || callback_path == logout_path) {
        return Err(err(
            "redirect_uri",
            format!(
                "its path `{callback_path}` becomes callback_path, which must differ from login_path and logout_path"
            ),
        ));
    }
    if callback_path == login_path || callback_path == logout_path {
        return Err(err(
            "callback_path",
            "callback_path, login_path and logout_path must differ",
        ));
    }
    // Named by a field at fault (found by mutation testing: named `callback_path`, which was not).
    if login_path == logout_path {
        return Err(err(
            "logout_path",
            "callback_path, login_path and logout_path must differ",
        ));
    }
    post_logout_redirect_uri_check(
        raw.post_logout_redirect_uri.as_deref(),
        raw.redirect_uri.as_deref(),
        [&callback_path, &logout_path],
    )?;
    Ok([callback_path, login_path, logout_path])
}

/// `redirect_uri`: an absolute http(s) URL without query or fragment. Returns its (normalised) path, the
/// path a browser requests when the IdP sends it there.
#[inline(never)]
fn redirect_uri_path(r: &str) -> Result<String, ConfigError> {
    const FIELD: &str = "redirect_uri";
    if r.chars().any(char::is_control) {
        return Err(err(FIELD, "must not contain spaces or control characters"));
    }
    let url = http_url(FIELD, r)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(FIELD, "must not have a query or fragment"));
    }
    Ok(url.path().to_string())
}

/// `post_logout_redirect_uri`: an absolute http(s) URL, or a path on this site that a browser cannot read
/// as another host (no `//` start, no backslash) and that [`safe_redirect`] keeps as it is; not the
/// filter's `own` callback or logout path, on this site or `redirect_uri`'s host (found by a black-box
/// test: set to `/logout`, a logout sent the browser round to log out again, for good).
///
/// [`safe_redirect`]: crate::paths::safe_redirect
#[inline(never)]
fn post_logout_redirect_uri_check(
    v: Option<&str>,
    redirect_uri: Option<&str>,
    own: [&String; 2],
) -> Result<(), ConfigError> {
    const FIELD: &str = "post_logout_redirect_uri";
    let Some(p) = v else { return Ok(()) };
    if p.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err(FIELD, "must not contain spaces or control characters"));
    }
    if !p.starts_with('/') {
        let url = http_url(FIELD, p)?;
        let ours = redirect_uri
            .and_then(|r| WebUrl::parse(r).ok())
            .is_some_and(|r| r.host().eq_ignore_ascii_case(url.host()));
        return if ours {
            not_own_path(url.path(), own)
        } else {
            Ok(())
        };
    }
    not_own_path(p, own)?;
    if p.starts_with("//") {
        return Err(err(
            FIELD,
            "a path must not start with `//` (a browser reads it as another host)",
        ));
    }
    if p.contains('\\') {
        return Err(err(
            FIELD,
            "must not contain a backslash (a browser reads it as `/`)",
        ));
    }
    if crate::paths::safe_redirect(p) != p {
        return Err(err(
            FIELD,
            "a path must be one `rd` would keep as it is: visible ASCII, at most 2048 characters, and neither \
             as written nor percent-decoded starting with `//` or holding a backslash, a NUL or a `.` or `..` segment",
        ));
    }
    Ok(())
}

/// `post_logout_redirect_uri`'s `path` is not one of the filter's `own` (callback and logout) paths.
fn not_own_path(path: &str, own: [&String; 2]) -> Result<(), ConfigError> {
    let normal = crate::paths::normalize(path).unwrap_or_default();
    if own.contains(&&normal) || own.iter().any(|o| **o == crate::paths::path_only(path)) {
        return Err(err(
            "post_logout_redirect_uri",
            "must not be callback_path or logout_path (a logout would never end)",
        ));
    }
    Ok(())
}

/// A `hosts` entry's `post_logout_redirect_uri` at one of its own hosts: not its callback or logout path
/// either (found in review: `https://app.example.com/logout` at app.example.com was taken).
#[inline(never)]
fn post_logout_not_own(site: &Config, hosts: &[String]) -> Result<(), ConfigError> {
    let Some(url) = site
        .post_logout_redirect_uri
        .as_deref()
        .filter(|p| !p.starts_with('/'))
        .and_then(|p| WebUrl::parse(p).ok())
    else {
        return Ok(());
    };
    let host = url.host().to_ascii_lowercase();
    if hosts.iter().any(|p| pattern_score(p, &host).is_some()) {
        return not_own_path(url.path(), [&site.callback_path, &site.logout_path]);
    }
    Ok(())
}

/// session_lifetime, refresh_margin, clock_leeway, callout_timeout and jwks_refresh_interval, in seconds.
#[inline(never)]
fn timings(raw: &mut Raw) -> Result<[u64; 5], ConfigError> {
    let session_lifetime = duration("session_lifetime", raw.session_lifetime.take(), 8 * 3600)?;
    let refresh_margin = duration("refresh_margin", raw.refresh_margin.take(), 60)?;
    let clock_leeway = duration("clock_leeway", raw.clock_leeway.take(), 60)?;
    if clock_leeway > 300 {
        return Err(err("clock_leeway", "at most 5m"));
    }
    if session_lifetime < 60 {
        return Err(err(
            "session_lifetime",
            "at least 60s (a number without a unit is seconds: `8h` is eight hours)",
        ));
    }
    let callout_timeout = duration("callout_timeout", raw.callout_timeout.take(), 5)?;
    if callout_timeout == 0 || callout_timeout > 60 {
        return Err(err("callout_timeout", "between 1s and 60s"));
    }
    let jwks_refresh_interval = duration(
        "jwks_refresh_interval",
        raw.jwks_refresh_interval.take(),
        3600,
    )?;
    if jwks_refresh_interval < 60 {
        return Err(err("jwks_refresh_interval", "at least 60s"));
    }
    Ok([
        session_lifetime,
        refresh_margin,
        clock_leeway,
        callout_timeout,
        jwks_refresh_interval,
    ])
}

/// `scopes`, space-separated; `openid` is required.
#[inline(never)]
fn scopes_from(scopes: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let scopes = scopes.unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
    if !scopes.iter().any(|s| s == "openid") {
        return Err(err("scopes", "must include `openid`"));
    }
    if scopes.iter().any(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(err(
            "scopes",
            "each scope must be a non-empty token without spaces or quotes",
        ));
    }
    Ok(scopes)
}

/// The session cookie's name and attributes.
#[inline(never)]
fn cookie_settings(
    name: Option<String>,
    domain: Option<String>,
    secure: Option<bool>,
    same_site: Option<&str>,
) -> Result<(String, CookieAttrs), ConfigError> {
    let cookie_name = name.unwrap_or_else(|| "_oidc_session".into());
    if cookie_name.is_empty()
        || cookie_name.len() > 64
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(err("cookie_name", "1 to 64 characters of A-Z a-z 0-9 _ -"));
    }
    // Two labels at least (a single one is a top-level domain, whose cookies browsers refuse), none
    // empty (`example..com`, a trailing dot), each of letters, digits and inner `-`; a leading `.`, which
    // browsers ignore, is allowed. Found in review: `com`, `.` and `example.com.` were taken, and every
    // login then failed on cookies the browser dropped.
    if let Some(d) = &domain {
        let name = d.strip_prefix('.').unwrap_or(d);
        let labels = name.split('.');
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        // An address is no domain either: browsers take a `Domain` only as a name (found by a black-box
        // test: `127.0.0.1` was taken). The last label of a name is never all digits.
        let address = crate::weburl::rsplit_once(name, b'.')
            .map_or(name, |(_, l)| l)
            .bytes()
            .all(|b| b.is_ascii_digit());
        if d.len() > 253 || labels.clone().count() < 2 || !labels.clone().all(label_ok) || address {
            return Err(err(
                "cookie_domain",
                "must be a domain name of two labels or more, like `example.com` (not an IP address)",
            ));
        }
    }
    let secure = secure.unwrap_or(true);
    let same_site = match same_site {
        None | Some("Lax") | Some("lax") => SameSite::Lax,
        Some("Strict") | Some("strict") => SameSite::Strict,
        Some("None") | Some("none") if secure => SameSite::None,
        Some("None") | Some("none") => {
            return Err(err(
                "cookie_same_site",
                "`None` requires cookie_secure: true",
            ));
        }
        Some(_) => return Err(err("cookie_same_site", "must be `Lax`, `Strict` or `None`")),
    };
    // Browsers drop a `__Host-` cookie that lacks `Secure` or has a `Domain`, and a `__Secure-` one that
    // lacks `Secure` (the prefixes matched without regard to case): every login would fail.
    let prefixed = |p: &str| crate::cookies::has_prefix(&cookie_name, p);
    if (prefixed("__Host-") && (domain.is_some() || !secure)) || (prefixed("__Secure-") && !secure)
    {
        return Err(err(
            "cookie_name",
            "a `__Host-` name needs cookie_secure and no cookie_domain, a `__Secure-` one cookie_secure",
        ));
    }
    let cookie = CookieAttrs {
        secure,
        domain,
        path: "/".into(),
        same_site,
    };

    Ok((cookie_name, cookie))
}

/// `bypass_paths`: plain prefixes that cover none of the filter's own paths.
#[inline(never)]
fn bypass_paths_from(
    paths: Option<Vec<String>>,
    special: [Option<&String>; 5],
) -> Result<Vec<String>, ConfigError> {
    let bypass_paths = paths.unwrap_or_else(|| vec!["/healthz".into()]);
    for p in &bypass_paths {
        // A request's path carries only these characters as they are (RFC 3986 `pchar` and `/`), and a
        // bypass must cover it as it came too (`paths::is_bypass`): a prefix with any other (a space, a
        // letter beyond ASCII) could match no request (found in review: taken, and the probe it was
        // meant for needed a login).
        let raw = p
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/[]".contains(&c));
        if !raw || !crate::paths::is_normal_prefix(p) {
            return Err(err(
                "bypass_paths",
                "each entry must be a plain, normalized absolute path prefix like `/healthz` (no `//`, `.` or \
                 `..` segments, no `;`), of the characters a request's path carries as they are (letters, \
                 digits and `-._~!$&'()*+,=:@/[]`)",
            ));
        }
    }
    // (Found by a black-box test: a back-channel path under a bypass path answered the health probe
    // `405`, and the IdP's posts never reached the filter.)
    for special in special.into_iter().flatten() {
        if bypass_paths
            .iter()
            .any(|b| crate::paths::prefix_matches(b, special))
        {
            return Err(err(
                "bypass_paths",
                "must not cover callback_path, login_path, logout_path, backchannel_logout_path or userinfo_path",
            ));
        }
    }

    Ok(bypass_paths)
}

/// Name and value pairs, in order.
type Params = Vec<(String, String)>;

/// `authorization_params`: at most 16, none the filter sets itself or that changes how the answer comes
/// back (`response_mode`, a request object); with their `max_age`, read.
#[inline(never)]
fn authorization_params_from(
    params: Option<Vec<(String, String)>>,
) -> Result<(Params, Option<u64>), ConfigError> {
    const FIELD: &str = "authorization_params";
    // With the filter's own, those that change how the answer comes back, and those that are the token
    // endpoint's secrets, which would go to every browser in the login's URL (found by a black-box test:
    // `client_secret` was taken).
    const ALSO: [&str; 6] = [
        "response_mode",
        "request",
        "request_uri",
        "client_secret",
        "client_assertion",
        "code_verifier",
    ];
    let params = params.unwrap_or_default();
    if params.len() > 16 {
        return Err(err(FIELD, "at most 16 parameters"));
    }
    let mut max_age = None;
    for (k, v) in &params {
        if k.is_empty()
            || k.len() > 64
            || v.len() > 1024
            || k.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(err(
                FIELD,
                "names of 1 to 64 characters without spaces, values of at most 1024",
            ));
        }
        // In any case: an IdP that reads parameter names without regard to case (ASP.NET's) would take
        // `Response_Type` for the filter's own (found by a black-box test).
        let own = |p: &&str| p.eq_ignore_ascii_case(k);
        if crate::flow::AUTHORIZATION_PARAMS.iter().any(own) || ALSO.iter().any(own) {
            return Err(err(
                FIELD,
                format!("`{}` is the filter's to set", quotable(k, 64)),
            ));
        }
        if k.eq_ignore_ascii_case("max_age") && k != "max_age" {
            return Err(err(FIELD, "write `max_age` in lower case"));
        }
        // Checked against the ID token's `auth_time` at the callback. Digits only: `parse` would take a
        // `+` too.
        if k == "max_age" {
            match v.parse::<u64>() {
                Ok(s) if !v.starts_with('+') => max_age = Some(s),
                _ => return Err(err(FIELD, "`max_age` is a whole number of seconds")),
            }
        }
        // `none` forbids the IdP any page: a user not logged in there yet is answered `login_required`
        // at every login (found by a black-box test: taken, and such users never got in).
        if k.eq_ignore_ascii_case("prompt") && v.split(' ').any(|p| p == "none") {
            return Err(err(
                FIELD,
                "`prompt` `none` refuses every user not yet logged in at the IdP",
            ));
        }
    }
    Ok((params, max_age))
}

/// The claim name of `access_token_header` in [`Config::identity_headers`]: no configured claim is empty.
pub const ACCESS_TOKEN: &str = "";

/// The claim name of a header another site sets, which this site only removes: no configured claim holds
/// a NUL.
pub const STRIPPED: &str = "\0";

/// Whether the filter may set request header `h` (lower case) from a session: a plain name, none of
/// the headers Envoy and the filter set themselves.
fn settable(h: &str) -> bool {
    // Hop-by-hop headers and Envoy's own would change how the request travels, not who sent it.
    let reserved = [
        "authorization",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "proxy-connection",
        // What Envoy sets about the client and the request, which apps trust: a claim there would
        // overwrite the client's address or the request's id with what a user may choose (found in
        // review).
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-client-cert",
        "forwarded",
        "x-real-ip",
        // The client's address as CDNs and load balancers pass it, which apps trust as the real IP
        // (found in review).
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        // The scheme and host as proxies pass them (Rack's `X-Forwarded-Scheme`, `X-Forwarded-Ssl`,
        // `Front-End-Https`; ingress-nginx's `X-Scheme`), which apps build links and cookies by.
        "x-forwarded-scheme",
        "x-scheme",
        "x-forwarded-ssl",
        "front-end-https",
        "x-forwarded-server",
        "x-original-host",
        "x-request-id",
        "via",
        "proxy-authorization",
        // What tells the app what to serve, which some apps and proxies take over the path and method
        // (found by a black-box test): a claim there would route the request where a user chooses.
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "content-type",
        "content-encoding",
        "expect",
        "range",
        "origin",
    ]
    .contains(&h)
        || h.starts_with("x-envoy-");
    // No `_`: a client's copy spelled with `-` would pass (the filter removes `_` spellings of `-` names),
    // and CGI-style servers read the two as one.
    !h.is_empty() && !reserved && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `identity_headers` (lower-cased names), or the defaults.
#[inline(never)]
fn identity_headers_from(
    headers: Option<Vec<(String, String)>>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut identity_headers: Vec<(String, String)> = Vec::new();
    match headers {
        None => {
            for (h, c) in DEFAULT_IDENTITY_HEADERS {
                identity_headers.push((h.to_string(), c.to_string()));
            }
        }
        Some(map) => {
            for (h, c) in map {
                identity_headers.push((h.to_ascii_lowercase(), c));
            }
        }
    }
    for (i, (h, c)) in identity_headers.iter().enumerate() {
        if identity_headers[..i].iter().any(|(g, _)| g == h) {
            return Err(err(
                "identity_headers",
                format!(
                    "`{}` is given twice (names are read in any letter case)",
                    quotable(h, 64)
                ),
            ));
        }
        if !settable(h) {
            return Err(err(
                "identity_headers",
                format!("`{}` cannot carry a claim", quotable(h, 64)),
            ));
        }
        if c.is_empty() || c.contains('\0') {
            return Err(err(
                "identity_headers",
                format!("`{}` names no claim", quotable(h, 64)),
            ));
        }
    }
    Ok(identity_headers)
}

#[inline(never)]
fn path(field: &str, v: Option<String>, default: &str) -> Result<String, ConfigError> {
    let p = v.unwrap_or_else(|| default.to_string());
    // Visible ASCII without quotes, angle brackets or backslash: the paths also go into the links of the
    // filter's HTML pages.
    let plain = p
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && !b"?#%\"'<>\\;".contains(&b));
    if !p.starts_with('/') || p.starts_with("//") || !plain {
        return Err(err(
            field,
            "must be an absolute path like `/login`, without query, spaces, quotes, `;`, `<`, `>` or `\\`",
        ));
    }
    // A browser resolves dot segments before it asks, and Envoy merges `//` where Istio is told to:
    // `/auth/./login` would never be reached (found by a black-box test: every visitor went round
    // a redirect loop).
    if !crate::paths::is_normal_prefix(&p) {
        return Err(err(
            field,
            "must be a normalized path: no `//`, `.` or `..` segments",
        ));
    }
    // Found by a black-box test: `/` as login_path sent a logged-in user round the IdP for ever, as
    // callback_path answered every visit of the home page with a state error, as logout_path logged
    // out whoever opened it.
    if p == "/" {
        return Err(err(
            field,
            "must not be `/`: the site's home page would become the filter's own",
        ));
    }
    Ok(p)
}

fn from_env(
    field: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    match env(var) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        // The name is not repeated: found in review, a secret pasted here in place of a name was
        // logged at error level.
        _ => Err(err(
            field,
            "the environment variable it names is not set or empty (it takes the variable's name, not \
             the secret)",
        )),
    }
}

#[inline(never)]
fn secret_from(
    field: &str,
    inline: Option<Secret>,
    var: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let env_field = format!("{field}_env");
    match (inline, var) {
        (Some(_), Some(_)) => Err(err(
            field,
            format!("set either `{field}` or `{env_field}`, not both"),
        )),
        (Some(s), None) if s.is_empty() => Err(err(field, "must not be empty")),
        // As a secret read from the environment is trimmed; here a space around it is a mistake the
        // IdP would only refuse later (found in review).
        (Some(s), None) if s.expose().trim_ascii() != s.expose() => Err(err(
            field,
            "must not start or end with a space or line break",
        )),
        (Some(s), None) => Ok(s),
        (None, Some(v)) => Ok(Secret::new(from_env(&env_field, v, env)?)),
        (None, None) => Err(err(field, format!("required (or `{env_field}`)"))),
    }
}

#[inline(never)]
fn cookie_keys(
    inline: Option<Vec<Secret>>,
    var: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Keys, ConfigError> {
    let mut encoded: Vec<String> = Vec::new();
    let field = match (inline, var) {
        (Some(_), Some(_)) => {
            return Err(err(
                "cookie_keys",
                "set either `cookie_keys` or `cookie_keys_env`, not both",
            ));
        }
        (Some(list), None) => {
            for s in &list {
                encoded.push(s.expose().trim().to_string());
            }
            "cookie_keys"
        }
        (None, Some(v)) => {
            // Comma-separated, or one per line as a Secret's file often holds them (found by a black-box
            // test: refused as "not base64").
            for s in from_env("cookie_keys_env", v, env)?.split([',', '\n']) {
                let s = s.trim();
                if !s.is_empty() {
                    encoded.push(s.to_string());
                }
            }
            "cookie_keys_env"
        }
        (None, None) => return Err(err("cookie_keys", "required (or `cookie_keys_env`)")),
    };
    let mut raw = Vec::with_capacity(encoded.len());
    for (i, k) in encoded.iter().enumerate() {
        let bytes = decode_key(k).ok_or_else(|| err(field, format!("key {i} is not base64")))?;
        // `AAAA…` (zeros), one character repeated, a copied example: 32 random bytes have about 30 values.
        let mut seen = [false; 256];
        bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
        // (A key too short to tell is refused for that, below: found by a black-box test, an empty one
        // after a trailing comma was called a placeholder.)
        if bytes.len() >= crate::session::MIN_RAW_KEY_LEN && seen.iter().filter(|s| **s).count() < 8
        {
            return Err(err(
                field,
                format!(
                    "key {i} is a placeholder, not a random key (fewer than 8 different byte values): \
                     make one with `head -c 32 /dev/urandom | base64`"
                ),
            ));
        }
        raw.push(bytes);
    }
    Keys::new(&raw).map_err(|e| err(field, e.to_string()))
}

fn decode_key(k: &str) -> Option<Vec<u8>> {
    b64::decode_padded(k, false).or_else(|| b64::decode_padded(k, true))
}

/// Parses `90s`, `15m`, `8h`, `7d` or a bare number of seconds (a JSON number arrives as its digits).
#[inline(never)]
fn duration(field: &str, v: Option<String>, default: u64) -> Result<u64, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    // Digits only: `u64::from_str` takes a `+`, and `str::trim` Unicode spaces (found in review).
    let s = s.trim_ascii();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (s.get(..i).unwrap_or_default(), 1),
        Some((i, 'm')) => (s.get(..i).unwrap_or_default(), 60),
        Some((i, 'h')) => (s.get(..i).unwrap_or_default(), 3600),
        Some((i, 'd')) => (s.get(..i).unwrap_or_default(), 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| num.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n <= 365 * 86400)
        .ok_or_else(|| {
            err(
                field,
                "a duration like `90s`, `15m`, `8h` or `7d`, or a number of seconds (at most 365d)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

    /// A plugin of one client at one IdP with `entries` as its `hosts`, and `extra` then `top` over its top
    /// level (`null` in `top`: the top level leaves the field out).
    fn with_hosts(
        extra: &serde_json::Value,
        top: serde_json::Value,
        entries: serde_json::Value,
    ) -> Result<Plugin, ConfigError> {
        let mut v = serde_json::json!({"cookie_keys": [KEY], "client_secret": "s", "client_id": "app",
            "issuer": "https://idp.example.com"});
        for (k, x) in extra
            .as_object()
            .unwrap()
            .iter()
            .chain(top.as_object().unwrap())
        {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        v["hosts"] = entries;
        Plugin::parse(v.to_string().as_bytes(), &no_env)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes(), &no_env)
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "issuer": "https://idp.example.com/realms/x",
            "client_id": "app",
            "client_secret": "s3cret",
            "cookie_keys": [KEY],
        })
    }

    fn with(k: &str, v: serde_json::Value) -> String {
        let mut m = minimal();
        m[k] = v;
        m.to_string()
    }

    #[test]
    fn secrets_written_in_the_config_are_named_for_a_warning() {
        let env = |k: &str| (k == "S" || k == "K").then(|| KEY.to_string());
        let names = |v: serde_json::Value| {
            Plugin::parse(v.to_string().as_bytes(), &env)
                .unwrap()
                .inline_secrets
        };
        assert_eq!(names(minimal()), ["client_secret", "cookie_keys"]);
        let from_env = serde_json::json!({"issuer": "https://idp.example.com", "client_id": "app",
            "client_secret_env": "S", "cookie_keys_env": "K"});
        assert!(names(from_env.clone()).is_empty());
        let mut hosts = from_env;
        hosts["client_secret"] = serde_json::Value::Null;
        hosts["hosts"] = serde_json::json!([{"hosts": ["a.example.com"]},
            {"hosts": ["b.example.com"], "client_secret": "inline", "client_secret_env": null}]);
        assert_eq!(names(hosts), ["hosts[1].client_secret"]);
    }

    /// The README's configuration reference, row by row: the field and its default column.
    fn readme_reference() -> Vec<(&'static str, &'static str)> {
        let readme = include_str!("../../README.md");
        let from = readme
            .find("\n## Configuration reference\n")
            .expect("the section");
        readme[from..]
            .lines()
            .skip_while(|l| !l.starts_with("| field | default |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let mut cells = row.trim_start_matches("| ").split(" | ");
                let field = cells.next().unwrap_or_default().trim_matches('`');
                (field, cells.next().unwrap_or_default())
            })
            .collect()
    }

    /// Every site's cookies come out in one pass, whatever their names share: one name the start of
    /// another, a dot in a name, `_login_` in a name.
    #[test]
    fn the_cookies_of_several_sites_come_out_in_one_pass() {
        let names = CookieNames::new(
            ["s", "s_1", "a.b", "x_login_y", "s_1", "zz"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(names.prefix, "");
        let header = "s=1; s.2=2; s_1.3=3; s_login_abc=4; s_1_login_q=5; a.b.1=6; a.b=7;                       x_login_y_login_k=8; x_login_y.2=9; zz=10;                       keep=1; s.0=a; s.17=b; s_2=c; a=d; a.b.x=e; x_login_z=f; x=g; sx=h; z=i";
        assert_eq!(
            names.strip(header),
            Some(Some(
                "keep=1; s.0=a; s.17=b; s_2=c; a=d; a.b.x=e; x_login_z=f; x=g; sx=h; z=i".into()
            ))
        );
        for (kept, owned) in [("keep=1", false), ("s.1=x", true)] {
            let stripped = names.strip(kept);
            assert_eq!(stripped, owned.then_some(None), "{kept}");
        }
        // Names that share a start: only cookies that start so are looked at.
        let names = CookieNames::new(
            ["_oidc_session_1", "_oidc_session_0", "_oidc_session"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(names.prefix, "_oidc_session");
        assert_eq!(
            names.strip("a=1; _oidc_session_1.1=x; _oidc_session_10=y; _oidc_session_0_login_z=w"),
            Some(Some("a=1; _oidc_session_10=y".into()))
        );
        assert_eq!(CookieNames::new(Vec::new()).strip("a=1; b=2"), None);
    }

    /// Found in a review of the configuration: each was accepted wrongly, refused wrongly, or named the
    /// wrong field.
    #[test]
    fn configuration_mistakes_a_review_found() {
        let plugin = |v: serde_json::Value| Plugin::parse(v.to_string().as_bytes(), &no_env);
        let base =
            || serde_json::json!({"client_id": "c", "client_secret": "s", "cookie_keys": [KEY]});
        let with_top = |extra: serde_json::Value| {
            let mut v = base();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        // A host outside the entry's cookie_domain, without a redirect_uri: its cookies would be dropped.
        let e = plugin(with_top(
            serde_json::json!({"issuer": "https://idp.example.com",
            "cookie_domain": "example.com", "hosts": [{"hosts": ["wiki.example.org"]}]}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "cookie_domain", "{e}");
        assert!(
            e.reason.contains("wiki.example.org") && e.reason.contains("hosts[0]"),
            "{e}"
        );
        let e = plugin(with_top(
            serde_json::json!({"issuer": "https://idp.example.com",
            "hosts": [{"hosts": ["wiki.example.org"], "cookie_domain": "example.com"}]}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].cookie_domain", "{e}");
        // A top level without an issuer still names the cluster its entries inherit.
        let p = plugin(with_top(serde_json::json!({
            "idp_cluster": "outbound|8080||kc.auth.svc.cluster.local",
            "hosts": [{"hosts": ["a.example.com"], "issuer": "https://sso.example.com/r"}]})))
        .unwrap();
        assert_eq!(
            p.sites[0].idp_cluster.as_deref(),
            Some("outbound|8080||kc.auth.svc.cluster.local")
        );
        // `cookie_name: null` in an entry is unset: the entry's own name.
        let p = plugin(with_top(
            serde_json::json!({"issuer": "https://idp.example.com",
            "hosts": [{"hosts": ["a.example.com"], "cookie_name": null}]}),
        ))
        .unwrap();
        assert_eq!(p.sites[1].cookie_name, "_oidc_session_0");
        // A `;` in the path callback_path is taken from.
        let e = parse(&with("redirect_uri", "https://app.example.com/cb;x".into())).unwrap_err();
        assert_eq!(e.field, "redirect_uri");
        // A top level's own mistake is named as the top level's, not its first entry's.
        for (field, value) in [
            ("callout_timeout", serde_json::json!(0)),
            ("cookie_secure", serde_json::json!("false")),
        ] {
            let mut v = with_top(serde_json::json!({
                "hosts": [{"hosts": ["a.example.com"], "issuer": "https://idp.example.com"}]}));
            v[field] = value;
            let e = plugin(v).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("inherited by hosts[0]"), "{e}");
        }
        // YAML's numbers and booleans among the authorization parameters.
        let c = parse(&with(
            "authorization_params",
            serde_json::json!({"max_age": 300, "prompt": "login", "x": true}),
        ))
        .unwrap();
        assert_eq!(c.max_age, Some(300));
        assert!(
            c.authorization_params
                .iter()
                .any(|(k, v)| &**k == "x" && &**v == "true")
        );
        // `null` is absent at the top level too.
        assert!(
            plugin(
                serde_json::from_str(&with("unmatched_hosts", serde_json::Value::Null)).unwrap()
            )
            .is_ok()
        );
        assert!(
            plugin(serde_json::from_str(&with("hosts", serde_json::Value::Null)).unwrap()).is_ok()
        );
        let mut v = with_top(serde_json::json!({"issuer": null,
            "hosts": [{"hosts": ["a.example.com"], "issuer": "https://idp.example.com"}]}));
        assert_eq!(plugin(v.clone()).unwrap().sites.len(), 1);
        v["unmatched_hosts"] = serde_json::Value::Null;
        assert!(plugin(v.clone()).is_ok());
        // A misspelt field is refused as one, `null` or not, with or without `hosts`.
        for mut v in [
            v,
            with_top(serde_json::json!({"issuer": "https://idp.example.com"})),
        ] {
            v["sesion_lifetime"] = serde_json::Value::Null;
            let e = plugin(v).unwrap_err();
            assert_eq!(e.field, "sesion_lifetime", "{e}");
            assert!(e.reason.contains("unknown field"), "{e}");
        }
    }

    #[test]
    fn the_readme_documents_every_field_and_no_other() {
        let documented: Vec<&str> = readme_reference().iter().map(|(f, _)| *f).collect();
        let mut taken: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
        taken.extend(TOP_LEVEL_ONLY);
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            documented.len(),
            "a field twice: {documented:?}"
        );
        taken.sort_unstable();
        assert_eq!(sorted, taken);
    }

    /// A default the README gives as a value (in backticks, first in its cell) is what the filter
    /// applies: setting the field to it explicitly changes nothing.
    #[test]
    fn the_readme_defaults_are_the_filters() {
        let base = format!("{:?}", parse(&minimal().to_string()).unwrap());
        let mut checked = Vec::new();
        for (field, default) in readme_reference() {
            let Some(value) = default
                .strip_prefix('`')
                .and_then(|d| d.split_once('`'))
                .map(|(v, _)| v)
            else {
                continue;
            };
            // Templates (`<:scheme>://…`, `outbound|PORT||HOST`) and the choice that depends on
            // `hosts` are not values.
            if value.contains('<') || value.contains('|') || field == "unmatched_hosts" {
                continue;
            }
            // As written (serde_json's map would sort the keys of `identity_headers`).
            let json = match serde_json::from_str::<serde_json::Value>(value) {
                Ok(_) => value.to_string(),
                Err(_) => serde_json::Value::from(value).to_string(),
            };
            let text = minimal().to_string();
            let text = format!("{},\"{field}\":{json}}}", &text[..text.len() - 1]);
            let c = parse(&text).unwrap_or_else(|e| panic!("{field}: {e:?}"));
            assert_eq!(
                format!("{c:?}"),
                base,
                "{field}: the README's default {value}"
            );
            checked.push(field);
        }
        eprintln!("checked: {checked:?}");
        assert!(checked.len() >= 15, "{checked:?}");
    }

    /// A prefix no normalized path can start with would never apply: a claim rule on it would leave the
    /// path open, a bypass on it would do nothing. Both are refused, naming the field.
    #[test]
    fn path_prefixes_must_be_normalized() {
        let rule = |p: &str| serde_json::json!([{"path_prefix": p, "rule": {"claim": "sub", "equals": "x"}}]);
        for bad in [
            "//admin",
            "/a/../admin",
            "/./admin",
            "/admin/..",
            "/a;x",
            "/a%2Fb",
            "admin",
            "/a?b",
            // Found by mutation testing: an empty prefix (a templated value left blank) was not proven
            // refused.
            "",
        ] {
            let e = parse(&with("claim_rules", rule(bad))).unwrap_err();
            assert_eq!(e.field, "claim_rules", "{bad}");
            let e = parse(&with("bypass_paths", serde_json::json!([bad]))).unwrap_err();
            assert_eq!(e.field, "bypass_paths", "{bad}");
        }
        for good in [
            "/admin",
            "/admin/",
            "/Admin",
            "/.well-known/acme-challenge/",
        ] {
            parse(&with("claim_rules", rule(good))).unwrap();
            parse(&with("bypass_paths", serde_json::json!([good]))).unwrap();
        }
        // The whole site: fine for a rule (a bypass would cover the filter's own paths).
        parse(&with("claim_rules", rule("/"))).unwrap();
    }

    /// Header names with `_`, or twice in another case, and two claim rules for one prefix: each would
    /// leave something unchecked (a client's `-` spelling passes; one of the two is never asked), so each
    /// is refused, naming the field. So is a filter path with `;`, which the login cookie's `Path` cannot
    /// carry.
    #[test]
    fn names_and_prefixes_that_would_leave_something_unchecked_are_refused() {
        for headers in [
            serde_json::json!({"x_remote_user": "sub"}),
            serde_json::json!({"X-User": "sub", "x-user": "email"}),
        ] {
            let e = parse(&with("identity_headers", headers.clone())).unwrap_err();
            assert_eq!(e.field, "identity_headers", "{headers}");
        }
        let e = parse(&with("access_token_header", serde_json::json!("x_token"))).unwrap_err();
        assert_eq!(e.field, "access_token_header");
        let rule = serde_json::json!({"claim": "sub", "equals": "x"});
        for rules in [
            serde_json::json!([{"path_prefix": "/admin", "rule": rule}, {"path_prefix": "/admin", "rule": rule}]),
            serde_json::json!([{"path_prefix": "/Admin", "rule": rule}, {"path_prefix": "/admin", "rule": rule}]),
            serde_json::json!([{"rule": rule}, {"path_prefix": "/", "rule": rule}]),
        ] {
            let e = parse(&with("claim_rules", rules.clone())).unwrap_err();
            assert_eq!(e.field, "claim_rules", "{rules}");
        }
        let e = parse(&with("callback_path", serde_json::json!("/cb;v2"))).unwrap_err();
        assert_eq!(e.field, "callback_path");
    }

    /// Cookie name prefixes browsers enforce (matched without regard to case): a `__Host-` name with
    /// `cookie_domain` or without `cookie_secure`, or a `__Secure-` one without `cookie_secure`, would be
    /// dropped by every browser, so every login would fail. Refused, naming `cookie_name`.
    #[test]
    fn cookie_name_prefixes_browsers_enforce_are_checked() {
        let cfg = |extra: serde_json::Value| {
            let mut json = minimal();
            for (k, v) in extra.as_object().unwrap() {
                json[k] = v.clone();
            }
            parse(&json.to_string())
        };
        for bad in [
            serde_json::json!({"cookie_name": "__Host-s", "cookie_domain": "example.com"}),
            serde_json::json!({"cookie_name": "__host-s", "cookie_secure": false}),
            serde_json::json!({"cookie_name": "__Secure-s", "cookie_secure": false}),
            serde_json::json!({"cookie_name": "__SECURE-s", "cookie_secure": false}),
        ] {
            assert_eq!(cfg(bad.clone()).unwrap_err().field, "cookie_name", "{bad}");
        }
        for good in [
            serde_json::json!({"cookie_name": "__Host-s"}),
            serde_json::json!({"cookie_name": "__Secure-s", "cookie_domain": "example.com"}),
            serde_json::json!({"cookie_name": "_Host-s", "cookie_secure": false}),
        ] {
            cfg(good.clone()).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
    }

    /// Found by a black-box test: a site named `s_login_b` beside a site named `s` had its session cleared
    /// by a login at `s`, which took its cookies for stale login attempts. Refused, in either order.
    #[test]
    fn a_cookie_name_that_reads_as_another_site_s_login_cookie_is_refused() {
        let json = |top: &str, entry: &str| {
            serde_json::json!({
                "issuer": "https://idp.example.com", "client_id": "corp", "client_secret": "s",
                "cookie_keys": [KEY], "cookie_name": top,
                "hosts": [{"hosts": ["b.example.com"], "cookie_name": entry}],
            })
            .to_string()
        };
        for (top, entry) in [("s", "s_login_b"), ("s_login_b", "s")] {
            let e = Plugin::parse(json(top, entry).as_bytes(), &no_env).unwrap_err();
            assert!(e.field.ends_with("cookie_name"), "{e:?}");
        }
        for (top, entry) in [("s", "s_loginb"), ("s", "s_b_login_x"), ("s", "t_login_s")] {
            Plugin::parse(json(top, entry).as_bytes(), &no_env)
                .unwrap_or_else(|e| panic!("{top} {entry}: {e:?}"));
        }
    }

    /// Found by a black-box test: a filter path with a dot segment or an empty one was taken, and the
    /// browser, which resolves them, never reached it (`/auth/./login`: a redirect loop); a back-channel
    /// path under a bypass path answered the health probe `405`. Refused, naming the field.
    #[test]
    fn filter_paths_must_be_normalized_and_outside_bypass_paths() {
        for (field, bad) in [
            ("login_path", "/auth/./login"),
            ("login_path", "/a/.."),
            ("callback_path", "/a//cb"),
            ("logout_path", "/x/../logout"),
            ("backchannel_logout_path", "/bc/."),
        ] {
            let e = parse(&with(field, serde_json::json!(bad))).unwrap_err();
            assert_eq!(e.field, field, "{bad}");
        }
        let e = parse(&with(
            "redirect_uri",
            serde_json::json!("https://app.example.com/a//cb"),
        ))
        .unwrap_err();
        assert_eq!(e.field, "redirect_uri");
        let e = parse(&with(
            "backchannel_logout_path",
            serde_json::json!("/healthz/backchannel"),
        ))
        .unwrap_err();
        assert_eq!(e.field, "bypass_paths");
        for (field, good) in [
            ("login_path", "/auth/login"),
            ("logout_path", "/auth/logout/"),
            ("backchannel_logout_path", "/oauth2/backchannel"),
        ] {
            parse(&with(field, serde_json::json!(good)))
                .unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
    }

    /// Found by a black-box test: a claim rule under a bypass path was taken, though the bypass leaves
    /// that path open to everyone. Refused, naming `claim_rules`.
    #[test]
    fn a_claim_rule_under_a_bypass_path_is_refused() {
        let rule = serde_json::json!({"claim": "groups", "contains_any": ["admins"]});
        for prefix in ["/healthz", "/healthz/admin"] {
            let mut v = minimal();
            v["claim_rules"] = serde_json::json!([{"path_prefix": prefix, "rule": rule}]);
            let e = parse(&v.to_string()).unwrap_err();
            assert_eq!(e.field, "claim_rules", "{prefix}");
            assert!(e.reason.contains("bypass"), "{e}");
        }
        for prefix in ["/", "/healthzx", "/admin"] {
            let mut v = minimal();
            v["claim_rules"] = serde_json::json!([{"path_prefix": prefix, "rule": rule}]);
            parse(&v.to_string()).unwrap_or_else(|e| panic!("{prefix}: {e:?}"));
        }
        // Found by mutation testing: every rule against every bypass path, not the first of each (the
        // rules most specific first: `/admin/reports/q3` before `/static/x`).
        let mut v = minimal();
        v["bypass_paths"] = serde_json::json!(["/healthz", "/static"]);
        v["claim_rules"] = serde_json::json!([
            {"path_prefix": "/admin/reports/q3", "rule": rule},
            {"path_prefix": "/static/x", "rule": rule},
        ]);
        let e = parse(&v.to_string()).unwrap_err();
        assert_eq!(e.field, "claim_rules");
        assert!(
            e.reason
                .contains("`/static/x` is under bypass path `/static`"),
            "{e}"
        );
    }

    /// Found by a black-box test: two sites of one cookie name, one host-only and one with a
    /// `cookie_domain`, or one asking a login for `max_age` and one not, each took the other's sessions:
    /// a `/logout` at the first left the user logged in by the other's cookie, and the `max_age` was met by
    /// a session made without it. Refused, naming the cookie name.
    #[test]
    fn sites_of_one_cookie_name_must_set_and_ask_alike() {
        let json = |a: serde_json::Value, b: serde_json::Value| {
            let mut e1 =
                serde_json::json!({"hosts": ["a.apps.example.com"], "cookie_name": "shared"});
            let mut e2 =
                serde_json::json!({"hosts": ["b.apps.example.com"], "cookie_name": "shared"});
            for (e, x) in [(&mut e1, a), (&mut e2, b)] {
                for (k, v) in x.as_object().unwrap() {
                    e[k] = v.clone();
                }
            }
            serde_json::json!({
                "issuer": "https://idp.example.com", "client_id": "corp", "client_secret": "s",
                "cookie_keys": [KEY], "hosts": [e1, e2],
            })
            .to_string()
        };
        use serde_json::json as j;
        let d = "apps.example.com";
        for (a, b) in [
            (j!({"cookie_domain": d}), j!({})),
            (
                j!({"cookie_domain": d, "authorization_params": {"max_age": "30"}}),
                j!({"cookie_domain": d}),
            ),
            (
                j!({"cookie_domain": d, "authorization_params": {"acr_values": "mfa"}}),
                j!({"cookie_domain": d, "authorization_params": {"ACR_VALUES": "pwd"}}),
            ),
        ] {
            let e = Plugin::parse(json(a.clone(), b).as_bytes(), &no_env).unwrap_err();
            assert!(e.field.ends_with("cookie_name"), "{a}: {e:?}");
        }
        // Found by mutation testing: `acr_values` is read in any case, as the IdP may read it: one
        // site's `ACR_VALUES` asks what the other's `acr_values` does, and against none it is no match.
        let acr = |name: &str| j!({"cookie_domain": d, "authorization_params": {name: "mfa"}});
        let e = Plugin::parse(
            json(acr("ACR_VALUES"), j!({"cookie_domain": d})).as_bytes(),
            &no_env,
        )
        .unwrap_err();
        assert!(e.field.ends_with("cookie_name"), "{e:?}");
        Plugin::parse(
            json(acr("acr_values"), acr("ACR_VALUES")).as_bytes(),
            &no_env,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        for (a, b) in [
            (
                j!({"cookie_domain": "apps.example.com"}),
                j!({"cookie_domain": "apps.example.com"}),
            ),
            (
                j!({"cookie_domain": d, "authorization_params": {"max_age": "30", "kc_idp_hint": "x"}}),
                j!({"cookie_domain": ".APPS.example.com", "authorization_params": {"max_age": "30"}}),
            ),
            // Host-only cookies of two sites never meet: each may ask its own.
            (j!({"authorization_params": {"max_age": "30"}}), j!({})),
        ] {
            Plugin::parse(json(a.clone(), b).as_bytes(), &no_env)
                .unwrap_or_else(|e| panic!("{a}: {e:?}"));
        }
    }

    /// Every site removes the identity headers any other site sets, under a claim name no configuration
    /// can give; another site's `access_token_header` does not make this one keep its access token.
    #[test]
    fn each_site_strips_the_identity_headers_the_others_set() {
        let json = serde_json::json!({
            "issuer": "https://idp.example.com", "client_id": "corp", "client_secret": "s",
            "cookie_keys": [KEY],
            "hosts": [{"hosts": ["api.example.com"], "identity_headers": {}},
                      {"hosts": ["b.example.com"], "identity_headers": {"x-b": "sub"},
                       "access_token_header": "x-token"}],
        });
        let plugin = Plugin::parse(json.to_string().as_bytes(), &no_env).unwrap();
        let names = |i: usize| -> Vec<(&str, &str)> {
            plugin.sites[i]
                .identity_headers
                .iter()
                .map(|(h, c)| (h.as_str(), c.as_str()))
                .collect()
        };
        let top = plugin
            .sites
            .iter()
            .position(|s| s.hosts.is_empty())
            .unwrap();
        let api = plugin
            .sites
            .iter()
            .position(|s| s.hosts == ["api.example.com"])
            .unwrap();
        let b = plugin
            .sites
            .iter()
            .position(|s| s.hosts == ["b.example.com"])
            .unwrap();
        assert!(names(top).contains(&("x-b", STRIPPED)), "{:?}", names(top));
        assert!(
            names(top).contains(&("x-token", STRIPPED)),
            "{:?}",
            names(top)
        );
        assert!(!plugin.sites[top].passes_access_token());
        assert!(plugin.sites[b].passes_access_token());
        for h in [
            "x-auth-request-user",
            "x-auth-request-email",
            "x-token",
            "x-b",
        ] {
            assert!(names(api).contains(&(h, STRIPPED)), "{h}: {:?}", names(api));
        }
        assert!(!plugin.sites[api].passes_access_token());
        assert!(names(b).contains(&("x-b", "sub")), "{:?}", names(b));
        assert!(
            names(b).contains(&("x-auth-request-user", STRIPPED)),
            "{:?}",
            names(b)
        );
        // Each name once.
        let mut all = names(b);
        all.sort();
        all.dedup_by_key(|(h, _)| *h);
        assert_eq!(all.len(), names(b).len());
        // No configured claim is the marker.
        let nul = serde_json::json!({
            "issuer": "https://idp.example.com", "client_id": "corp", "client_secret": "s",
            "cookie_keys": [KEY], "identity_headers": {"x-a": "\u{0}"},
        });
        let e = Plugin::parse(nul.to_string().as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "identity_headers");
    }

    /// `null` in an entry unsets a field, but not the access rules or headers it would inherit: refused.
    #[test]
    fn an_entry_cannot_drop_inherited_claim_rules_with_null() {
        let rules = serde_json::json!([{"rule": {"claim": "groups", "contains_any": ["admins"]}}]);
        let json = |entry: serde_json::Value| {
            serde_json::json!({
                "issuer": "https://idp.example.com", "client_id": "corp", "client_secret": "s",
                "cookie_keys": [KEY], "claim_rules": rules, "cookie_domain": "example.com",
                "hosts": [entry],
            })
            .to_string()
        };
        let e = Plugin::parse(
            json(serde_json::json!({"hosts": ["a.example.com"], "claim_rules": null})).as_bytes(),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].claim_rules");
        let mut top: serde_json::Value =
            serde_json::from_str(&json(serde_json::json!({}))).unwrap();
        top["identity_headers"] = serde_json::json!({"x-remote-user": "sub"});
        top["access_token_header"] = serde_json::json!("x-access-token");
        for field in ["identity_headers", "access_token_header"] {
            top["hosts"] = serde_json::json!([{"hosts": ["a.example.com"], field: null}]);
            let e = Plugin::parse(top.to_string().as_bytes(), &no_env).unwrap_err();
            assert_eq!(e.field, format!("hosts[0].{field}"));
        }
        // Both ways for one secret in one entry: refused as at the top level, not one dropped.
        top["hosts"] = serde_json::json!([{"hosts": ["a.example.com"], "client_secret": "x",
            "client_secret_env": "X"}]);
        let e = Plugin::parse(top.to_string().as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "hosts[0].client_secret");
        for entry in [
            serde_json::json!({"hosts": ["a.example.com"]}),
            serde_json::json!({"hosts": ["a.example.com"], "claim_rules": []}),
        ] {
            let p = Plugin::parse(json(entry.clone()).as_bytes(), &no_env).unwrap();
            assert_eq!(
                p.sites[1].access.len(),
                usize::from(entry.get("claim_rules").is_none())
            );
        }
        // Other fields: `null` unsets (here the inherited cookie_domain).
        let p = Plugin::parse(
            json(serde_json::json!({"hosts": ["a.example.com"], "cookie_domain": null})).as_bytes(),
            &no_env,
        )
        .unwrap();
        assert_eq!(p.sites[1].cookie.domain, None);
    }

    /// An entry that takes its secret or cookie keys from elsewhere than the top level replaces the
    /// top level's way: it does not have both.
    #[test]
    fn an_entry_may_take_its_secret_from_another_source_than_the_top_level() {
        let json = serde_json::json!({
            "issuer": "https://idp.example.com",
            "client_id": "corp",
            "client_secret": "top-secret",
            "cookie_keys": [KEY],
            "hosts": [{
                "hosts": ["grafana.example.com"],
                "client_id": "grafana",
                "client_secret_env": "GRAFANA_SECRET",
                "cookie_keys_env": "GRAFANA_KEYS",
            }],
        })
        .to_string();
        let env = |name: &str| match name {
            "GRAFANA_SECRET" => Some("grafana-secret".to_string()),
            "GRAFANA_KEYS" => Some(KEY.to_string()),
            _ => None,
        };
        let p = Plugin::parse(json.as_bytes(), &env).unwrap();
        assert_eq!(p.sites[0].client_secret.expose(), "top-secret");
        assert_eq!(p.sites[1].client_secret.expose(), "grafana-secret");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(&minimal().to_string()).unwrap();
        assert_eq!(c.callback_path, "/oauth2/callback");
        assert_eq!(c.login_path, "/login");
        assert_eq!(c.logout_path, "/logout");
        assert_eq!(c.scopes, "openid email profile");
        assert_eq!(c.forward_token, ForwardToken::IdToken);
        assert_eq!(c.cookie_name, "_oidc_session");
        assert!(c.cookie.secure);
        assert_eq!(c.session_lifetime, 8 * 3600);
        assert_eq!(c.refresh_margin, 60);
        assert_eq!(c.bypass_paths, vec!["/healthz".to_string()]);
        assert_eq!(c.callout_timeout, Duration::from_secs(5));
        let token = WebUrl::parse("https://idp.example.com/token").unwrap();
        assert_eq!(c.cluster_for(&token), "outbound|443||idp.example.com");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (serde_json::json!({"client_id": "a"}).to_string(), "issuer"),
            (with("issuer", "ftp://x".into()), "issuer"),
            (with("client_id", "".into()), "client_id"),
            (
                with("forward_token", "refresh_token".into()),
                "forward_token",
            ),
            (with("scopes", serde_json::json!(["email"])), "scopes"),
            (
                with("session_lifetime", "8 hours".into()),
                "session_lifetime",
            ),
            (
                with("cookie_keys", serde_json::json!(["c2hvcnQ="])),
                "cookie_keys",
            ),
            (
                with("cookie_keys", serde_json::json!(["!!!"])),
                "cookie_keys",
            ),
            (
                with("bypass_paths", serde_json::json!(["healthz"])),
                "bypass_paths",
            ),
            (
                with("bypass_paths", serde_json::json!(["/"])),
                "bypass_paths",
            ),
            (with("clock_leeway", "1h".into()), "clock_leeway"),
            (with("callback_path", "/login".into()), "callback_path"),
            (with("cookie_name", "a;b".into()), "cookie_name"),
            (with("unknown_knob", true.into()), "unknown_knob"),
            (with("", true.into()), "pluginConfig"),
            (with("x\n[critical] y", true.into()), "pluginConfig"),
            (with("cookie_secure", "yes".into()), "cookie_secure"),
            ("{".to_string(), "pluginConfig"),
            ("".to_string(), "issuer"),
        ];
        for (json, field) in cases {
            let e = parse(&json).unwrap_err();
            assert_eq!(e.field, field, "{json} -> {e}");
        }
        // Valid JSON nested past the bound is said so, not called a syntax error (found by a black-box
        // test).
        let e = parse(&format!("{}1{}", "[".repeat(70), "]".repeat(70))).unwrap_err();
        assert!(e.reason.contains("nested more than 64 deep"), "{e}");
        assert!(parse("{").unwrap_err().reason.contains("syntax error"));
    }

    #[test]
    fn url_errors_name_the_field_and_the_reason() {
        let cases = [
            ("issuer", "idp.example.com", "not an absolute URL"),
            (
                "issuer",
                "https://user:pw@idp.example.com",
                "user name or password",
            ),
            ("issuer", "https://bücher.example", "xn--"),
            ("issuer", "https://idp.example.com:99999", "port"),
            ("issuer", "https://idp.example.com/a b", "spaces"),
            ("issuer", "https://idp.example.com/?x", "query or fragment"),
            ("redirect_uri", "/oauth2/callback", "not an absolute URL"),
            ("redirect_uri", "https:///cb", "must have a host"),
            ("post_logout_redirect_uri", "ftp://x/", "http or https"),
            (
                "post_logout_redirect_uri",
                "//evil.example/",
                "must not start with `//`",
            ),
            ("redirect_uri", "https://app.example.com/cb?x=1", "query"),
            ("redirect_uri", "https://app.example.com/cb#x", "fragment"),
        ];
        for (field, value, reason) in cases {
            let e = parse(&with(field, value.into())).unwrap_err();
            assert_eq!(e.field, field, "{value} -> {e}");
            assert!(e.reason.contains(reason), "{value} -> {e}");
        }
        let c = parse(&with(
            "issuer",
            "HTTPS://IdP.Example.com:443/realms/x".into(),
        ))
        .unwrap();
        assert_eq!(
            c.issuer, "HTTPS://IdP.Example.com:443/realms/x",
            "kept as configured"
        );
        assert_eq!(c.issuer_url.as_str(), "https://idp.example.com/realms/x");
    }

    #[test]
    fn null_is_absent_and_types_are_checked() {
        let c = parse(&with("cookie_name", serde_json::Value::Null)).unwrap();
        assert_eq!(c.cookie_name, "_oidc_session");
        let c = parse(&with("claim_rules", serde_json::Value::Null)).unwrap();
        assert!(c.access.is_empty());
        use serde_json::json;
        for (field, value, expected) in [
            ("cookie_secure", json!("yes"), "expected a boolean"),
            ("cookie_secure", json!(1), "expected a boolean"),
            ("issuer", json!(true), "expected a string"),
            (
                "client_secret",
                json!({"a": "s3cret-value"}),
                "expected a string",
            ),
            (
                "client_secret",
                json!(["s3cret-value"]),
                "expected a string",
            ),
            ("scopes", json!("openid"), "expected a list of strings"),
            (
                "scopes",
                json!({"openid": "s3cret-value"}),
                "expected a list of strings",
            ),
            ("scopes", json!(["openid", 1]), "expected a list of strings"),
            (
                "cookie_keys",
                json!([KEY, null]),
                "expected a list of strings",
            ),
            (
                "identity_headers",
                json!(["x-user"]),
                "expected a map of strings",
            ),
            (
                "identity_headers",
                json!({"x-user": 1}),
                "expected a map of strings",
            ),
            (
                "callout_timeout",
                json!(true),
                "expected a duration like `90s` or a number of seconds",
            ),
            (
                "session_lifetime",
                json!(["8h"]),
                "expected a duration like `90s` or a number of seconds",
            ),
        ] {
            let e = parse(&with(field, value)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.reason, format!("wrong type, {expected}"), "{field}");
            assert!(!e.to_string().contains("s3cret-value"), "{e}");
        }
        // In a `hosts` entry, the entry is named too.
        let e = Plugin::parse(
            json!({"cookie_keys": [KEY], "client_secret": "s", "issuer": "https://i.example.com",
                "client_id": "a", "hosts": [{"hosts": ["a.example.com"], "cookie_secure": "no"}]})
            .to_string()
            .as_bytes(),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].cookie_secure");
        assert_eq!(e.reason, "wrong type, expected a boolean");
        // The first problem in document order is the one reported, as serde did.
        let e = parse(r#"{"zzz": 1, "cookie_secure": "yes"}"#).unwrap_err();
        assert_eq!(e.field, "zzz");
        assert_eq!(
            e.reason,
            "unknown field (the configuration reference lists them)"
        );
        // Spelt as the Secret's keys are, or in another case: named, with the field meant.
        for slip in ["client-secret-env", "Cookie_Keys_Env"] {
            let e = parse(&format!(r#"{{"{slip}": "X"}}"#)).unwrap_err();
            assert_eq!(e.field, slip);
            let meant = slip.to_ascii_lowercase().replace('-', "_");
            assert_eq!(e.reason, format!("unknown field (the field is `{meant}`)"));
        }
        // Not echoed: not a name.
        let e = parse(r#"{"a b": 1}"#).unwrap_err();
        assert_eq!(e.field, "pluginConfig");
        let e = parse(r#"{"cookie_secure": "yes", "zzz": 1}"#).unwrap_err();
        assert_eq!(e.field, "cookie_secure");
    }

    #[test]
    fn syntax_errors_and_duplicates() {
        let e = parse("{\n  \"issuer\": \"x\",\n}").unwrap_err();
        assert_eq!(e.field, "pluginConfig");
        assert_eq!(
            e.reason,
            "not valid JSON for this filter (syntax error at line 3 column 1)"
        );
        let e = Plugin::parse(b"{\"issuer\": 01}", &no_env).unwrap_err();
        assert_eq!(e.field, "pluginConfig");
        assert_eq!(
            e.reason,
            "not valid JSON (syntax error at line 1 column 13)"
        );
        for not_an_object in ["[]", "\"x\"", "null", "1"] {
            assert_eq!(parse(not_an_object).unwrap_err().field, "pluginConfig");
            let e = Plugin::parse(not_an_object.as_bytes(), &no_env).unwrap_err();
            assert_eq!(e.field, "pluginConfig");
        }
        // A field given twice: which one was meant? Refused, naming it when it is a top-level field.
        let twice =
            r#"{"issuer": "https://idp.example.com", "client_id": "app", "client_secret": "s",
            "cookie_keys": ["KEY"], "client_id": "other"}"#
                .replace("KEY", KEY);
        for e in [
            parse(&twice).unwrap_err(),
            Plugin::parse(twice.as_bytes(), &no_env).unwrap_err(),
        ] {
            assert_eq!(e.field, "client_id");
            assert_eq!(e.reason, "not valid JSON for this filter (duplicate field)");
        }
        let nested = with(
            "claim_rules",
            serde_json::json!([{"rule": {"claim": "groups", "contains_any": ["a"]}}]),
        )
        .replace(r#""rule":"#, r#""rule": {}, "rule":"#);
        let e = parse(&nested).unwrap_err();
        assert_eq!(e.field, "pluginConfig");
        assert_eq!(
            e.reason,
            "not valid JSON for this filter (field `rule` given twice in one object)"
        );
        // A name that is not plain is not written out (it could be anything, a pasted secret too).
        let odd = r#"{"a\nb": 1, "a\nb": 2}"#;
        let e = parse(odd).unwrap_err();
        assert_eq!(e.field, "pluginConfig");
        assert_eq!(e.reason, "not valid JSON for this filter (duplicate field)");
        // In a `hosts` entry, named with the entry (found by a black-box test).
        let twice = format!(
            r#"{{"issuer": "https://idp.example.com", "client_id": "app", "client_secret": "s",
            "cookie_keys": ["{KEY}"], "hosts": [{{"hosts": ["a.example.com"]}},
            {{"hosts": ["b.example.com"], "client_id": "b", "client_id": "c"}}]}}"#
        );
        let e = Plugin::parse(twice.as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "hosts[1].client_id", "{e}");
        // Not written out there either, when it is not plain, or too long to be a field's name (found by
        // mutation testing).
        let long = "k".repeat(65);
        for odd in [r"a\nb", long.as_str()] {
            let twice = format!(
                r#"{{"issuer": "https://idp.example.com", "client_id": "app", "client_secret": "s",
                "cookie_keys": ["{KEY}"], "hosts": [{{"hosts": ["a.example.com"], "{odd}": 1, "{odd}": 2}}]}}"#
            );
            let e = Plugin::parse(twice.as_bytes(), &no_env).unwrap_err();
            assert_eq!(e.field, "hosts[0]", "{e}");
            assert_eq!(e.reason, "not valid JSON for this filter (duplicate field)");
            let twice = format!(r#"{{"{odd}": 1, "{odd}": 2}}"#);
            let e = parse(&twice).unwrap_err();
            assert_eq!(e.field, "pluginConfig", "{e}");
            assert!(!e.to_string().contains(&long), "{e}");
        }
        let nested = with("claim_rules", serde_json::json!([{"rule": {}}]))
            .replace(r#""rule":{}"#, r#""rule":{"a\nb":1,"a\nb":2}"#);
        let e = parse(&nested).unwrap_err();
        assert_eq!(
            e.reason, "not valid JSON for this filter (duplicate field)",
            "{nested}"
        );
    }

    #[test]
    fn placeholder_cookie_keys_are_refused() {
        // 32 zero bytes, one character repeated, a word repeated: base64 of 32 bytes all the same, of
        // which none is a random key. The key's index is named, never its value.
        for (i, placeholder) in [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg=",
            "Y2hhbmdlbWVjaGFuZ2VtZWNoYW5nZW1lY2hhbmdlbWU=",
        ]
        .iter()
        .enumerate()
        {
            let e = parse(&with("cookie_keys", serde_json::json!([KEY, placeholder]))).unwrap_err();
            assert_eq!(e.field, "cookie_keys", "{i}");
            assert!(e.reason.starts_with("key 1 is a placeholder"), "{i}: {e}");
            assert!(!e.to_string().contains(placeholder), "{e}");
            let env = |_: &str| Some(format!("{KEY},{placeholder}"));
            let json = serde_json::json!({"issuer": "https://idp.example.com", "client_id": "app",
                "client_secret": "s", "cookie_keys_env": "KEYS"});
            let e = Config::parse(json.to_string().as_bytes(), &env).unwrap_err();
            assert_eq!(e.field, "cookie_keys_env", "{i}");
            assert!(e.reason.starts_with("key 1 is a placeholder"), "{i}: {e}");
        }
        // Too short, or empty (a trailing comma): said so, not called a placeholder.
        for short in ["", "AAAA"] {
            let e = parse(&with("cookie_keys", serde_json::json!([KEY, short]))).unwrap_err();
            assert!(
                e.reason.contains("at least 32 are required"),
                "{short:?}: {e}"
            );
        }
        // Eight different byte values are enough (the test keys here have 16).
        let eight = "MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=";
        assert!(parse(&with("cookie_keys", serde_json::json!([eight]))).is_ok());
    }

    #[test]
    fn wrong_type_error_does_not_echo_values() {
        let e = parse(&with("client_secret", serde_json::json!(12345678))).unwrap_err();
        assert!(!e.to_string().contains("12345678"), "{e}");
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let env = |k: &str| match k {
            "SECRET" => Some("from-env".to_string()),
            "KEYS" => Some(format!(" {KEY} , {KEY}")),
            _ => None,
        };
        let json = serde_json::json!({
            "issuer": "https://idp.example.com",
            "client_id": "app",
            "client_secret_env": "SECRET",
            "cookie_keys_env": "KEYS",
        })
        .to_string();
        let c = Config::parse(json.as_bytes(), &env).unwrap();
        assert_eq!(c.client_secret.expose(), "from-env");
        // One key a line, as a Secret's file may hold them (found by a black-box test).
        let eight = "MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=";
        // Found by mutation testing: a blank line, or a comma at a line's end, separates no key.
        for lines in [
            format!("{KEY}\n{eight}\n"),
            format!("{KEY}\r\n{eight}"),
            format!("{KEY}\n\n{eight}"),
            format!("{KEY},\n{eight}"),
        ] {
            let env = |k: &str| (k == "KEYS").then(|| lines.clone());
            let json = serde_json::json!({"issuer": "https://idp.example.com", "client_id": "app",
                "client_secret": "s", "cookie_keys_env": "KEYS"});
            assert!(
                Config::parse(json.to_string().as_bytes(), &env).is_ok(),
                "{lines:?}"
            );
        }

        let missing = serde_json::json!({
            "issuer": "https://idp.example.com", "client_id": "app",
            "client_secret_env": "NOPE", "cookie_keys": [KEY],
        })
        .to_string();
        let e = Config::parse(missing.as_bytes(), &env).unwrap_err();
        assert_eq!(e.field, "client_secret_env");
        // What the field holds is not repeated: it may be a secret pasted in place of a name.
        assert!(!e.to_string().contains("NOPE"), "{e}");

        let both = with("client_secret_env", "SECRET".into());
        assert_eq!(
            Config::parse(both.as_bytes(), &env).unwrap_err().field,
            "client_secret"
        );
    }

    /// Found in review: values that started the plugin and then failed every login or callout, or let a
    /// claim overwrite what Envoy says about the client; and error lines that repeated a control
    /// character of the configuration into the log.
    #[test]
    fn values_that_would_fail_later_are_refused_at_start() {
        for (field, bad) in [
            ("cookie_domain", "com"),
            ("cookie_domain", "."),
            ("cookie_domain", "example..com"),
            ("cookie_domain", "example.com."),
            ("cookie_domain", "-x.example.com"),
            // Found by a black-box test: an address is no cookie domain.
            ("cookie_domain", "127.0.0.1"),
            ("cookie_domain", ".10.0.0.1"),
            ("idp_cluster", "outbound|443||idp.example.com\n"),
            ("idp_cluster", "outbound|443||idp.example.com "),
            ("client_id", "app\n"),
        ]
        .into_iter()
        .map(|(f, b)| (f, b.to_string()))
        // Found by mutation testing: browsers drop the cookie of a domain over 253 bytes, with a label
        // over 63, or a label ending in `-` (every login would fail); CR, tab and DEL in a client id split
        // log lines and fail at the IdP.
        .chain([
            ("cookie_domain", format!("{}.com", "a".repeat(250))),
            ("cookie_domain", format!("{}.example.com", "a".repeat(64))),
            ("cookie_domain", "x-.example.com".into()),
            ("client_id", "app\r".into()),
            ("client_id", "a\tb".into()),
            ("client_id", "a\u{7f}".into()),
        ]) {
            let mut v = minimal();
            v[field] = bad.clone().into();
            let e = parse(&v.to_string()).unwrap_err();
            assert_eq!(e.field, field, "{bad:?}: {e}");
        }
        assert!(
            parse(&with(
                "cookie_domain",
                format!("{}.example.com", "a".repeat(63)).into()
            ))
            .is_ok()
        );
        // Found by mutation testing: only a last label of digits alone makes an address: a first label
        // of digits, or a top-level domain with one (`.рф`), is a name.
        for good in ["123.example.com", "example.xn--p1ai"] {
            assert!(parse(&with("cookie_domain", good.into())).is_ok(), "{good}");
        }
        for good in ["example.com", ".example.com", "a-b.shared.localhost"] {
            assert!(parse(&with("cookie_domain", good.into())).is_ok(), "{good}");
        }
        assert!(parse(&with("client_id", "my app".into())).is_ok());
        for reserved in [
            "x-forwarded-for",
            "X-Request-Id",
            "forwarded",
            "x-real-ip",
            "x-forwarded-client-cert",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-envoy-original-path",
            // What some apps and proxies route by (found by a black-box test).
            "x-original-url",
            "X-HTTP-Method-Override",
            "x-forwarded-uri",
            "content-type",
            // Found in review: nginx's `auth_request` path, the client's address as CDNs pass it.
            "x-original-uri",
            "True-Client-IP",
            "cf-connecting-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "fastly-client-ip",
            "X-Original-Forwarded-For",
            "x-forwarded-scheme",
            "x-scheme",
            "x-forwarded-ssl",
            "front-end-https",
            "x-forwarded-server",
            "x-original-host",
            // Every other name of the list (found by mutation testing: none of these was held).
            "authorization",
            "cookie",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "te",
            "keep-alive",
            "proxy-connection",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "via",
            "proxy-authorization",
            "x-rewrite-url",
            "x-forwarded-method",
            "x-http-method",
            "x-method-override",
            "content-encoding",
            "expect",
            "range",
            "origin",
        ] {
            let e = parse(&with(
                "identity_headers",
                serde_json::json!({ reserved: "preferred_username" }),
            ))
            .unwrap_err();
            assert_eq!(e.field, "identity_headers", "{reserved}");
        }
        // A name given twice in other letters is said to be so (found by a black-box test: it was called
        // one that cannot carry a claim).
        let e = parse(&with(
            "identity_headers",
            serde_json::json!({"x-user": "sub", "X-User": "email"}),
        ))
        .unwrap_err();
        assert!(e.reason.contains("`x-user` is given twice"), "{e}");
        // oauth2-proxy's names stay free.
        assert!(
            parse(&with(
                "identity_headers",
                serde_json::json!({"x-forwarded-user": "sub", "x-forwarded-email": "email"})
            ))
            .is_ok()
        );
        let e = parse(&with(
            "identity_headers",
            serde_json::json!({"x-a\nb\u{1b}[31m": "sub"}),
        ))
        .unwrap_err();
        assert!(!e.to_string().contains(['\n', '\u{1b}']), "{e}");
        assert!(e.to_string().contains("x-a\\u{a}b"), "{e}");
        let e = parse(&with(
            "claim_rules",
            serde_json::json!([{"rule": {"claim": "g\n", "equal": "x"}}]),
        ))
        .unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn explicit_cluster_wins() {
        let c = parse(&with(
            "idp_cluster",
            "outbound|8443||keycloak.auth.svc.cluster.local".into(),
        ))
        .unwrap();
        let u = WebUrl::parse("https://other/token").unwrap();
        assert_eq!(
            c.cluster_for(&u),
            "outbound|8443||keycloak.auth.svc.cluster.local"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration("x", Some("90s".into()), 0), Ok(90));
        assert_eq!(duration("x", Some("15m".into()), 0), Ok(900));
        assert_eq!(duration("x", Some("2d".into()), 0), Ok(172800));
        assert_eq!(duration("x", Some("42".into()), 0), Ok(42));
        assert!(duration("x", Some("-1s".into()), 0).is_err());
        assert!(duration("x", Some("99999999999999999999d".into()), 0).is_err());
    }

    /// Found in review: `u64::from_str` takes a leading `+`, which `max_age` refuses, and `str::trim`
    /// Unicode spaces.
    #[test]
    fn durations_are_digits_and_a_unit() {
        assert_eq!(duration("x", Some(" 5m ".into()), 0), Ok(300));
        let accepted: Vec<(&str, u64)> = ["+5s", "+5", " +5m ", "\u{a0}5s\u{3000}", "\u{2003}+1d"]
            .into_iter()
            .filter_map(|odd| duration("x", Some(odd.into()), 0).ok().map(|v| (odd, v)))
            .collect();
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
    }

    /// Found in review: values that started the plugin and then failed every login (`aud` is compared
    /// exactly, the secret sent as it is).
    #[test]
    fn a_client_id_or_secret_with_spaces_around_is_refused() {
        use serde_json::json;
        let mut accepted = Vec::new();
        for (k, v) in [
            ("client_id", json!(" app")),
            ("client_id", json!("app ")),
            ("client_secret", json!(" s3cret ")),
            // Found by mutation testing: a space or line break at the end alone.
            ("client_secret", json!("s3cret ")),
            ("client_secret", json!(" s3cret")),
            ("client_secret", json!("s3cret\n")),
        ] {
            if let Ok(c) = parse(&with(k, v.clone())) {
                accepted.push(format!(
                    "{k}={v} -> client_id {:?}, secret of {} bytes",
                    c.client_id,
                    c.client_secret.expose().len()
                ));
            }
        }
        assert!(accepted.is_empty(), "{accepted:#?}");
    }

    #[test]
    fn own_cookies_by_exact_name() {
        let c = parse(&minimal().to_string()).unwrap();
        assert!(c.is_own_cookie("_oidc_session"));
        assert!(c.is_own_cookie("_oidc_session.1"));
        assert!(c.is_own_cookie(&c.login_cookie_name("abcdefghijklmnop")));
        assert!(!c.is_own_cookie("_oidc_sessionx"));
        assert!(!c.is_own_cookie("x_oidc_session"));
        assert!(!c.is_own_cookie("session"));
    }
    #[test]
    fn hosts_map_to_sites_that_inherit_the_top_level() {
        let json = serde_json::json!({
            "cookie_keys": [KEY],
            "client_secret": "shared",
            "issuer": "https://corp.example.com",
            "client_id": "corp",
            "hosts": [
                {"hosts": ["grafana.example.com"], "client_id": "grafana", "claim_rules": [{"rule": {"claim": "groups", "contains_any": ["admins"]}}]},
                {"hosts": ["*.partners.example.com", "partners.example.com"], "issuer": "https://other.example.org", "client_id": "p"},
            ],
            "unmatched_hosts": "deny",
        })
        .to_string();
        let p = Plugin::parse(json.as_bytes(), &no_env).unwrap();
        assert_eq!(p.sites.len(), 3);
        assert_eq!(p.site_for("grafana.example.com:443"), Ok(Some(1)));
        assert_eq!(p.site_for("GRAFANA.example.com"), Ok(Some(1)));
        assert_eq!(p.site_for("a.partners.example.com"), Ok(Some(2)));
        assert_eq!(p.site_for("partners.example.com"), Ok(Some(2)));
        assert_eq!(p.site_for("evilpartners.example.com"), Ok(None));
        assert_eq!(p.site_for("other.example.com"), Ok(None));
        assert_eq!(p.site_for("[::1]:8443"), Ok(None));
        // What Envoy may route as grafana (Istio's `grafana.example.com:*` domain is a prefix match)
        // while a looser reading would judge it as another host: no site at all.
        for bad in [
            "grafana.example.com:1:2",
            "grafana.example.com.",
            "grafana.example.com..:443",
            "grafana.example.com:",
            "grafana.example.com:443x",
            "grafana.example.com:123456",
            "evil@grafana.example.com",
            "grafana.example.com/x",
            "grafana example.com",
            "",
            ":443",
            "[::1",
            "[::1]x",
            "[]",
        ] {
            assert_eq!(p.site_for(bad), Err(BadAuthority), "{bad:?}");
        }
        assert_eq!(p.sites[1].client_secret.expose(), "shared");
        assert_eq!(p.sites[1].access.len(), 1);
        assert_eq!(p.sites[2].issuer, "https://other.example.org");
        // Distinct cookie names: a session sealed for one site never opens on another.
        assert_ne!(p.sites[1].cookie_name, p.sites[2].cookie_name);
        assert_ne!(p.sites[0].cookie_name, p.sites[1].cookie_name);

        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("unmatched_hosts");
        let p = Plugin::parse(v.to_string().as_bytes(), &no_env).unwrap();
        assert_eq!(p.site_for("other.example.com"), Ok(Some(0)));
        assert_eq!(p.site_for("other.example.com:1:2"), Err(BadAuthority));
    }

    #[test]
    fn an_entry_with_its_own_issuer_does_not_inherit_the_top_level_cluster() {
        let json = serde_json::json!({
            "cookie_keys": [KEY], "client_secret": "s", "client_id": "corp",
            "issuer": "https://corp.example.com", "idp_cluster": "outbound|8443||keycloak.auth.svc.cluster.local",
            "hosts": [
                {"hosts": ["a.example.com"], "client_id": "a"},
                {"hosts": ["b.example.com"], "issuer": "https://other.example.org:9443/realm", "client_id": "b"},
                {"hosts": ["c.example.com"], "issuer": "https://other.example.org", "client_id": "c",
                 "idp_cluster": "outbound|443||egress"},
                {"hosts": ["d.example.com"], "issuer": "https://corp.example.com", "client_id": "d"},
            ],
        })
        .to_string();
        let p = Plugin::parse(json.as_bytes(), &no_env).unwrap();
        let token = |s: &Config| s.cluster_for(&s.issuer_url.with_path("/token"));
        assert_eq!(
            token(&p.sites[1]),
            "outbound|8443||keycloak.auth.svc.cluster.local"
        );
        assert_eq!(token(&p.sites[2]), "outbound|9443||other.example.org");
        assert_eq!(token(&p.sites[3]), "outbound|443||egress");
        assert_eq!(
            token(&p.sites[4]),
            "outbound|8443||keycloak.auth.svc.cluster.local"
        );
    }

    #[test]
    fn host_errors_name_the_entry() {
        let bad = serde_json::json!({"cookie_keys": [KEY], "client_secret": "s",
            "hosts": [{"hosts": ["a.example.com"], "issuer": "https://i.example.com", "client_id": "a"},
                      {"hosts": ["b.example.com"], "issuer": "https://i.example.com"}]});
        let e = Plugin::parse(bad.to_string().as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "hosts[1].client_id");
        let bad = serde_json::json!({"cookie_keys": [KEY], "client_secret": "s", "unmatched_hosts": "default",
            "hosts": [{"hosts": ["a.*.com"], "issuer": "https://i.example.com", "client_id": "a"}]});
        assert_eq!(
            Plugin::parse(bad.to_string().as_bytes(), &no_env)
                .unwrap_err()
                .field,
            "hosts[0].hosts"
        );
        let no_default = serde_json::json!({"cookie_keys": [KEY], "client_secret": "s", "unmatched_hosts": "default",
            "hosts": [{"hosts": ["a.example.com"], "issuer": "https://i.example.com", "client_id": "a"}]});
        assert_eq!(
            Plugin::parse(no_default.to_string().as_bytes(), &no_env)
                .unwrap_err()
                .field,
            "unmatched_hosts"
        );
        let same_cookie = serde_json::json!({"cookie_keys": [KEY], "client_secret": "s",
            "hosts": [{"hosts": ["a.example.com"], "issuer": "https://i.example.com", "client_id": "a", "cookie_name": "s"},
                      {"hosts": ["b.example.com"], "issuer": "https://i.example.com", "client_id": "b", "cookie_name": "s"}]});
        assert_eq!(
            Plugin::parse(same_cookie.to_string().as_bytes(), &no_env)
                .unwrap_err()
                .field,
            "hosts[1].cookie_name"
        );
    }

    /// `none` is refused only as a whole word of `prompt`: other prompts load (one that merely begins
    /// with those letters too), and so does a parameter of the IdP's own whose value is `none`.
    #[test]
    fn authorization_params_refuse_none_only_as_a_prompt() {
        for json in [
            serde_json::json!({"prompt": "login consent"}),
            serde_json::json!({"prompt": "select_account", "login_hint": "none"}),
            serde_json::json!({"prompt": "nonexistent_prompt"}),
        ] {
            assert!(
                parse(&with("authorization_params", json.clone())).is_ok(),
                "{json}"
            );
        }
    }

    #[test]
    fn authorization_params_keep_their_order_and_leave_the_filters_own_alone() {
        let json = serde_json::json!({"access_type": "offline", "prompt": "consent"});
        let c = parse(&with("authorization_params", json)).unwrap();
        let expected = [("access_type", "offline"), ("prompt", "consent")];
        let got: Vec<(&str, &str)> = c
            .authorization_params
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect();
        assert_eq!(got, expected);
        assert!(
            parse(&minimal().to_string())
                .unwrap()
                .authorization_params
                .is_empty()
        );
        let many: serde_json::Map<String, serde_json::Value> =
            (0..17).map(|i| (format!("p{i}"), "v".into())).collect();
        for (params, why) in [
            (
                serde_json::json!({"state": "x"}),
                "`state` is the filter's to set",
            ),
            (
                serde_json::json!({"response_mode": "form_post"}),
                "`response_mode` is the filter's",
            ),
            (
                serde_json::json!({"prompt": "none"}),
                "`prompt` `none` refuses every user",
            ),
            (
                serde_json::json!({"Prompt": "consent none"}),
                "`prompt` `none` refuses every user",
            ),
            (
                serde_json::json!({"redirect_uri": "https://evil/"}),
                "`redirect_uri` is the filter's",
            ),
            // In any case, and without spaces (found by a black-box test).
            (
                serde_json::json!({"Response_Type": "token"}),
                "`Response_Type` is the filter's",
            ),
            (
                serde_json::json!({"RESPONSE_MODE": "fragment"}),
                "`RESPONSE_MODE` is the filter's",
            ),
            (
                serde_json::json!({"client_secret": "s3cret"}),
                "`client_secret` is the filter's",
            ),
            (
                serde_json::json!({"Client_Assertion": "eyJ"}),
                "`Client_Assertion` is the filter's",
            ),
            (
                serde_json::json!({"code_verifier": "v"}),
                "`code_verifier` is the filter's",
            ),
            (
                serde_json::json!({"redirect_uri ": "https://evil/"}),
                "without spaces",
            ),
            (
                serde_json::json!({"Max_Age": "0"}),
                "`max_age` in lower case",
            ),
            // Found by mutation testing: nor a control character, DEL or a tab as a space is.
            (
                serde_json::json!({"kc_idp\u{7f}hint": "x"}),
                "without spaces",
            ),
            (serde_json::json!({"kc\tidp": "x"}), "without spaces"),
            (serde_json::json!({"": "x"}), "names of 1 to 64 characters"),
            (
                serde_json::json!({"a": "x".repeat(1025)}),
                "values of at most 1024",
            ),
            (serde_json::Value::Object(many), "at most 16"),
            (
                serde_json::json!({"max_age": [300]}),
                "wrong type, expected a map of strings",
            ),
            (
                serde_json::json!({"max_age": 300.5}),
                "`max_age` is a whole number of seconds",
            ),
            (
                serde_json::json!({"max_age": "5m"}),
                "`max_age` is a whole number of seconds",
            ),
            (
                serde_json::json!({"max_age": "+300"}),
                "`max_age` is a whole number of seconds",
            ),
        ] {
            let e = parse(&with("authorization_params", params)).unwrap_err();
            assert_eq!(e.field, "authorization_params");
            assert!(e.reason.contains(why), "{e}");
        }
    }

    #[test]
    fn identity_headers_default_to_oauth2_proxy_names_and_can_be_turned_off() {
        let c = parse(&minimal().to_string()).unwrap();
        assert!(
            c.identity_headers
                .iter()
                .any(|(h, c)| h == "x-auth-request-email" && c == "email")
        );
        assert!(c.keep_claims.contains(&"groups".to_string()));
        let off = parse(&with("identity_headers", serde_json::json!({}))).unwrap();
        assert!(off.identity_headers.is_empty());
        assert!(off.keep_claims.is_empty());
        let mut rules_only = minimal();
        rules_only["identity_headers"] = serde_json::json!({});
        rules_only["claim_rules"] =
            serde_json::json!([{"rule": {"claim": "groups", "contains_any": ["a"]}}]);
        let c = parse(&rules_only.to_string()).unwrap();
        assert_eq!(
            c.keep_claims,
            ["email", "groups", "preferred_username"],
            "the 403 page can name the user"
        );
        assert_eq!(
            parse(&with(
                "identity_headers",
                serde_json::json!({"authorization": "sub"})
            ))
            .unwrap_err()
            .field,
            "identity_headers"
        );
        assert_eq!(
            parse(&with("claim_rules", serde_json::json!([{"rule": {}}])))
                .unwrap_err()
                .field,
            "claim_rules"
        );
    }

    #[test]
    fn access_token_header_is_off_by_default_and_must_be_a_header_of_its_own() {
        use serde_json::json;
        assert!(!parse(&minimal().to_string()).unwrap().passes_access_token());
        let c = parse(&with(
            "access_token_header",
            json!("X-Forwarded-Access-Token"),
        ))
        .unwrap();
        assert!(c.passes_access_token());
        assert_eq!(
            c.identity_headers.last(),
            Some(&(
                "x-forwarded-access-token".to_string(),
                ACCESS_TOKEN.to_string()
            )),
            "set and stripped like the identity headers"
        );
        assert!(!c.keep_claims.contains(&ACCESS_TOKEN.to_string()));
        for bad in [
            json!("authorization"),
            json!("Cookie"),
            json!(":path"),
            json!(""),
            json!("x token"),
            json!("x-auth-request-user"),
            json!("Transfer-Encoding"),
            json!("x-envoy-original-path"),
        ] {
            let e = parse(&with("access_token_header", bad.clone())).unwrap_err();
            assert_eq!(e.field, "access_token_header", "{bad}");
            assert!(e.reason.contains("cannot carry the access token"), "{e}");
        }
        let e = parse(&with("access_token_header", json!(true))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: field `access_token_header`: wrong type, expected a string"
        );
    }

    #[test]
    fn durations_may_be_json_numbers_of_seconds() {
        use serde_json::json;
        // What Istio makes of YAML `callout_timeout: 10`; `10.0` and `1e1` are the same whole number.
        for v in [json!(10), json!("10"), json!(10.0), json!(1e1)] {
            let c = parse(&with("callout_timeout", v.clone())).unwrap();
            assert_eq!(c.callout_timeout, Duration::from_secs(10), "{v}");
        }
        let mut m = minimal();
        m["session_lifetime"] = json!(86400);
        m["refresh_margin"] = json!(0);
        m["clock_leeway"] = json!(300);
        m["jwks_refresh_interval"] = json!(600);
        let c = parse(&m.to_string()).unwrap();
        assert_eq!(
            (
                c.session_lifetime,
                c.refresh_margin,
                c.clock_leeway,
                c.jwks_refresh_interval
            ),
            (86400, 0, 300, 600)
        );
        // Fractions and negative numbers are refused, naming the field.
        for (field, v) in [
            ("callout_timeout", json!(1.5)),
            ("callout_timeout", json!(-5)),
            ("session_lifetime", json!(-0.5)),
            ("refresh_margin", json!(0.1)),
        ] {
            let e = parse(&with(field, v.clone())).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.reason.contains("whole and not negative"), "{v}: {e}");
        }
        // Each field's bounds still apply.
        for (field, v, reason) in [
            ("callout_timeout", json!(0), "between 1s and 60s"),
            ("callout_timeout", json!(61), "between 1s and 60s"),
            ("clock_leeway", json!(301), "at most 5m"),
            ("jwks_refresh_interval", json!(59), "at least 60s"),
            ("session_lifetime", json!(0), "at least 60s"),
            (
                "session_lifetime",
                json!(8),
                "a number without a unit is seconds",
            ),
            ("session_lifetime", json!("59s"), "at least 60s"),
            ("session_lifetime", json!(1e30), "at most 365d"),
            (
                "session_lifetime",
                json!(18446744073709551615u64),
                "at most 365d",
            ),
        ] {
            let e = parse(&with(field, v.clone())).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.reason.contains(reason), "{v}: {e}");
        }
        // The bound itself is a lifetime (found by mutation testing).
        assert_eq!(
            parse(&with("session_lifetime", json!("60s"))).map(|c| c.session_lifetime),
            Ok(60)
        );
        let e = Plugin::parse(
            json!({"cookie_keys": [KEY], "client_secret": "s", "issuer": "https://i.example.com",
                "client_id": "a", "hosts": [{"hosts": ["a.example.com"], "callout_timeout": 2.5}]})
            .to_string()
            .as_bytes(),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].callout_timeout", "{e}");
    }

    #[test]
    fn callback_path_follows_redirect_uri() {
        use serde_json::json;
        // Only redirect_uri: the filter takes the IdP's redirect at its path.
        let c = parse(&with("redirect_uri", "https://app.example.com/cb".into())).unwrap();
        assert_eq!(c.callback_path, "/cb");
        assert_eq!(
            c.redirect_uri.as_deref(),
            Some("https://app.example.com/cb")
        );
        // As a browser resolves it.
        let c = parse(&with(
            "redirect_uri",
            "https://app.example.com/a/../cb".into(),
        ))
        .unwrap();
        assert_eq!(c.callback_path, "/cb");
        // Both, agreeing.
        let mut m = minimal();
        m["redirect_uri"] = json!("https://app.example.com/auth/done");
        m["callback_path"] = json!("/auth/done");
        assert_eq!(parse(&m.to_string()).unwrap().callback_path, "/auth/done");
        // Both, disagreeing: every login would loop.
        m["callback_path"] = json!("/oauth2/callback");
        let e = parse(&m.to_string()).unwrap_err();
        assert_eq!(e.field, "redirect_uri");
        assert!(
            e.reason.contains("`/auth/done`") && e.reason.contains("`/oauth2/callback`"),
            "{e}"
        );
        // Neither: the default.
        assert_eq!(
            parse(&minimal().to_string()).unwrap().callback_path,
            "/oauth2/callback"
        );
        for (uri, reason) in [
            ("https://app.example.com", "has no path"),
            ("https://app.example.com/", "has no path"),
            ("https://app.example.com/login", "login_path"),
            (
                "https://app.example.com/b%C3%BCcher",
                "cannot be callback_path",
            ),
            ("https://app.example.com/cb?next=1", "query or fragment"),
            ("https://app.example.com/cb?", "query or fragment"),
            ("https://app.example.com/cb#", "query or fragment"),
            ("https://app.example.com/cb\u{85}", "control characters"),
        ] {
            let e = parse(&with("redirect_uri", uri.into())).unwrap_err();
            assert_eq!(e.field, "redirect_uri", "{uri}: {e}");
            assert!(e.reason.contains(reason), "{uri}: {e}");
        }
    }

    #[test]
    fn a_logout_lasts_as_long_as_the_longest_session_of_its_client() {
        let p = Plugin::parse(
            serde_json::json!({
                "cookie_keys": [KEY], "client_secret": "s", "client_id": "app",
                "issuer": "https://idp.example.com", "session_lifetime": "1h",
                "backchannel_logout_path": "/bcl",
                "hosts": [
                    {"hosts": ["wiki.example.com"], "session_lifetime": "24h"},
                    {"hosts": ["other.example.com"], "client_id": "other", "session_lifetime": "48h"},
                ],
            })
            .to_string()
            .as_bytes(),
            &no_env,
        )
        .unwrap();
        let lifetimes: Vec<u64> = p.sites.iter().map(|s| s.logout_lifetime).collect();
        // The top level's logouts end wiki sessions too (one IdP client); another client's do not.
        assert_eq!(lifetimes, [24 * 3600, 24 * 3600, 48 * 3600]);
        assert!(p.sites[0].same_client(&p.sites[1]) && !p.sites[0].same_client(&p.sites[2]));
    }

    #[test]
    fn hosts_entries_check_redirect_uri_after_inheriting() {
        use serde_json::json;
        let plugin = |top, entries| with_hosts(&json!({}), top, entries);
        // Each entry's own redirect_uri sets its callback_path; an inherited one is checked per entry.
        let p = plugin(
            json!({"issuer": null, "redirect_uri": "https://app.example.com/top/cb",
                "cookie_domain": "example.com"}),
            json!([
                {"hosts": ["grafana.example.com"], "issuer": "https://idp.example.com",
                    "redirect_uri": "https://grafana.example.com/g/cb"},
                {"hosts": ["app.example.com", "*.apps.example.com"], "issuer": "https://idp.example.com"},
            ]),
        )
        .unwrap();
        assert_eq!(p.sites[0].callback_path, "/g/cb");
        assert_eq!(p.sites[1].callback_path, "/top/cb", "inherited");
        // A login started on a host of the entry other than the redirect's, outside cookie_domain, sets
        // its cookie where the redirect back does not go.
        let e = plugin(
            json!({"redirect_uri": "https://app.example.com/top/cb"}),
            json!([{"hosts": ["*.example.com"]}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        // A redirect_uri on a host the entry does not serve: the login cookie never reaches it.
        let e = plugin(
            json!({"redirect_uri": "https://app.example.com/cb"}),
            json!([
                {"hosts": ["app.example.com"]},
                {"hosts": ["grafana.example.com", "*.apps.example.com"]},
            ]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[1].redirect_uri", "{e}");
        assert!(e.reason.contains("`app.example.com`"), "{e}");
        assert!(
            e.reason.contains("grafana.example.com, *.apps.example.com"),
            "{e}"
        );
        assert!(e.reason.contains("inherited"), "{e}");
        let e = plugin(
            json!({}),
            json!([{"hosts": ["*.apps.example.com"], "redirect_uri": "https://apps.example.com/cb"}]),
        )
        .unwrap_err();
        assert_eq!(
            e.field, "hosts[0].redirect_uri",
            "a wildcard covers subdomains only: {e}"
        );
        assert!(!e.reason.contains("inherited"), "{e}");
        // An entry whose other hosts lie within cookie_domain: the login cookie is set with it.
        for (domain, ok) in [
            ("example.com", true),
            (".Example.com", true),
            ("app.example.com", false),
            ("other.example.com", false),
            ("ample.com", false),
        ] {
            let r = plugin(
                json!({"cookie_domain": domain}),
                json!([{"hosts": ["grafana.example.com", "app.example.com"],
                    "redirect_uri": "https://app.example.com/cb"}]),
            );
            assert_eq!(r.is_ok(), ok, "{domain}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.field, "hosts[0].redirect_uri");
                assert!(e.reason.contains("cookie_domain"), "{e}");
            }
        }
        // Without `hosts`, the one site serves every host: nothing to compare.
        assert!(
            parse(&with(
                "redirect_uri",
                "https://elsewhere.example.org/cb".into()
            ))
            .is_ok()
        );
    }
    /// Found in review: two sites of one client with one explicit cookie name and different keys each
    /// took the other's session (the browser sends it to both under a shared `cookie_domain`) for a
    /// forgery, and cleared it.
    #[test]
    fn sites_sharing_a_cookie_name_must_open_each_others_sessions() {
        use serde_json::json;
        let other = "MTIzNDU2Nzg5MGFiY2RlZjEyMzQ1Njc4OTBhYmNkZWY=";
        let plugin = |keys_b: serde_json::Value, cookie_b: &str| {
            let v = json!({"cookie_keys": [KEY], "client_secret": "s", "client_id": "app",
            "issuer": "https://idp.example.com", "cookie_domain": "example.com",
            "hosts": [
                {"hosts": ["a.example.com"], "cookie_name": "_sso"},
                {"hosts": ["b.example.com"], "cookie_name": cookie_b, "cookie_keys": keys_b},
            ]});
            Plugin::parse(v.to_string().as_bytes(), &no_env)
        };
        let e = plugin(json!([other]), "_sso").err().unwrap();
        assert_eq!(e.field, "hosts[1].cookie_keys", "{e}");
        assert!(e.reason.contains("`_sso`"), "{e}");
        // The same keys, one rotated in ahead of the other (each opens what the other seals), or a
        // cookie of its own: accepted.
        assert!(plugin(json!([KEY]), "_sso").is_ok());
        assert!(plugin(json!([KEY, other]), "_sso").is_ok());
        assert!(plugin(json!([other]), "_sso_b").is_ok());
        // Host-only cookies of two hosts never meet: each site may keep its keys.
        let v = json!({"cookie_keys": [KEY], "client_secret": "s", "client_id": "app",
        "issuer": "https://idp.example.com",
        "hosts": [
            {"hosts": ["a.example.com"], "cookie_name": "_sso"},
            {"hosts": ["b.example.com"], "cookie_name": "_sso", "cookie_keys": [other]},
        ]});
        assert!(Plugin::parse(v.to_string().as_bytes(), &no_env).is_ok());
    }

    /// Found by a black-box test: sites whose cookies meet share one session, which the site the user logs
    /// in at makes: with another `forward_token`, `access_token_header` or `scopes` at the other site, its
    /// app got the other token, no access-token header, or a 403 for a claim the session lacked.
    #[test]
    fn sites_sharing_a_session_must_shape_it_alike() {
        use serde_json::json;
        let plugin = |b: serde_json::Value, domain: bool| {
            let mut entry = json!({"hosts": ["b.example.com"], "cookie_name": "_sso"});
            for (k, v) in b.as_object().unwrap() {
                entry[k] = v.clone();
            }
            let mut v = json!({"cookie_keys": [KEY], "client_secret": "s", "client_id": "app",
            "issuer": "https://idp.example.com",
            "hosts": [{"hosts": ["a.example.com"], "cookie_name": "_sso"}, entry]});
            if domain {
                v["cookie_domain"] = "example.com".into();
            }
            Plugin::parse(v.to_string().as_bytes(), &no_env)
        };
        for (b, field) in [
            (json!({"forward_token": "access_token"}), "forward_token"),
            (
                json!({"access_token_header": "x-access-token"}),
                "access_token_header",
            ),
            (json!({"scopes": ["openid", "email"]}), "scopes"),
            (
                json!({"authorization_params": {"audience": "https://api.example.com"}}),
                "authorization_params",
            ),
            (
                json!({"scopes": ["openid", "email", "profile", "groups"]}),
                "scopes",
            ),
        ] {
            let e = plugin(b.clone(), true).err().unwrap();
            assert_eq!(e.field, format!("hosts[1].{field}"), "{e}");
            assert!(
                e.reason.contains("`_sso`") && e.reason.contains(field),
                "{e}"
            );
            // Cookies that never meet (host-only, two hosts): each site its own.
            assert!(plugin(b, false).is_ok());
        }
        // The same scopes in another order, or other settings: one session still.
        let same = json!({"scopes": ["profile", "openid", "email"], "refresh_margin": "30s"});
        assert!(plugin(same, true).is_ok());
    }

    #[test]
    fn a_redirect_uri_must_be_served_by_its_own_site() {
        use serde_json::json;
        let plugin =
            |top, entries| with_hosts(&json!({"cookie_domain": "example.com"}), top, entries);
        let refused = |r: Result<Plugin, ConfigError>, field: &str, by: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("`auth.example.com`"), "{e}");
            assert!(e.reason.contains(by), "{e}");
            e
        };
        // Within cookie_domain, but no entry serves the redirect's host: the callback would be refused.
        refused(
            plugin(
                json!({"unmatched_hosts": "deny"}),
                json!([{"hosts": ["grafana.example.com"],
                    "redirect_uri": "https://auth.example.com/cb"}]),
            ),
            "hosts[0].redirect_uri",
            "no site",
        );
        // Another entry serves it: its callback path, login cookie and redirect are its own, even with
        // the same cookie name, and the browser would land on that host.
        for cookie in [None, Some("_sso")] {
            let mut entries = json!([
                {"hosts": ["grafana.example.com"], "redirect_uri": "https://auth.example.com/cb"},
                {"hosts": ["auth.example.com"]},
            ]);
            if let Some(c) = cookie {
                entries[0]["cookie_name"] = json!(c);
                entries[1]["cookie_name"] = json!(c);
            }
            let e = refused(
                plugin(json!({}), entries),
                "hosts[0].redirect_uri",
                "`hosts[1]`",
            );
            assert!(!e.reason.contains("inherited"), "{e}");
        }
        // An inherited redirect_uri: the entries that do not serve its host are refused, saying so.
        let e = refused(
            plugin(
                json!({"redirect_uri": "https://auth.example.com/cb", "unmatched_hosts": "deny"}),
                json!([{"hosts": ["auth.example.com"]}, {"hosts": ["grafana.example.com"]}]),
            ),
            "hosts[1].redirect_uri",
            "`hosts[0]`",
        );
        assert!(e.reason.contains("inherited from the top level"), "{e}");
        // The top level's own site when it serves unmatched hosts, its redirect on an entry's host.
        refused(
            plugin(
                json!({"redirect_uri": "https://auth.example.com/cb"}),
                json!([{"hosts": ["auth.example.com"], "redirect_uri": "https://auth.example.com/cb2"}]),
            ),
            "redirect_uri",
            "`hosts[0]`",
        );
        // Serving no request (`deny`, `pass`), the top level's site is not checked.
        for unmatched in ["deny", "pass"] {
            assert!(
                plugin(
                    json!({"redirect_uri": "https://auth.example.com/cb", "unmatched_hosts": unmatched}),
                    json!([{"hosts": ["auth.example.com"]}]),
                )
                .is_ok(),
                "{unmatched}"
            );
        }
        // A host no entry lists goes to the top level's site, which is the redirect's own.
        assert!(
            plugin(
                json!({"redirect_uri": "https://auth.example.com/cb"}),
                json!([{"hosts": ["grafana.example.com"], "redirect_uri": "https://grafana.example.com/cb"}]),
            )
            .is_ok()
        );
    }

    #[test]
    fn post_logout_redirect_uri_cannot_leave_the_site() {
        for (value, reason) in [
            ("/\\evil.example", "backslash"),
            ("/a\\b", "backslash"),
            ("//evil.example", "must not start with `//`"),
            ("/a\r\nSet-Cookie: x=y", "control characters"),
            ("/a\tb", "control characters"),
            ("/a\u{85}b", "control characters"),
            ("/a b", "spaces"),
            ("/%2F%2Fevil.example", "percent-decoded starting with `//`"),
            ("/%5Cevil.example", "holding a backslash"),
            ("/a/../b", "`..` segment"),
            ("/bücher", "visible ASCII"),
            ("https://app.example.com/a\u{85}b", "control characters"),
            ("https://app.example.com/a\rb", "control characters"),
            ("https://app.example.com/a b", "spaces"),
            ("javascript:alert(1)", "http or https"),
            ("evil.example", "not an absolute URL"),
        ] {
            let e = parse(&with("post_logout_redirect_uri", value.into())).unwrap_err();
            assert_eq!(e.field, "post_logout_redirect_uri", "{value:?}: {e}");
            assert!(e.reason.contains(reason), "{value:?}: {e}");
        }
        let long = format!("/{}", "a".repeat(2048));
        assert_eq!(
            parse(&with("post_logout_redirect_uri", long.into()))
                .unwrap_err()
                .field,
            "post_logout_redirect_uri"
        );
        for value in [
            "/",
            "/goodbye",
            "/goodbye?from=logout#top",
            "/a%20b",
            "https://app.example.com/bye",
        ] {
            let c = parse(&with("post_logout_redirect_uri", value.into())).unwrap();
            assert_eq!(c.post_logout_redirect_uri.as_deref(), Some(value));
        }
    }

    /// Found by a black-box test: set to the filter's own logout path, every logout sent the browser to
    /// log out again (a redirect loop without an end-session endpoint, else the page that asks, for
    /// good); set to the callback path, every logout ended on the failed login's page.
    #[test]
    fn post_logout_redirect_uri_is_not_the_filters_own_logout_or_callback() {
        let refused = |m: serde_json::Value| {
            let e = parse(&m.to_string()).unwrap_err();
            assert_eq!(e.field, "post_logout_redirect_uri", "{m}: {e}");
            assert!(
                e.reason.contains("callback_path or logout_path"),
                "{m}: {e}"
            );
        };
        let accepted = |m: serde_json::Value| {
            parse(&m.to_string()).unwrap_or_else(|e| panic!("{m}: {e}"));
        };
        let at = |v: &str, extra: serde_json::Value| {
            let mut m = minimal();
            m["post_logout_redirect_uri"] = v.into();
            for (k, x) in extra.as_object().unwrap() {
                m[k] = x.clone();
            }
            m
        };
        let none = serde_json::json!({});
        for v in [
            "/logout",
            "/logout?x=1",
            "/./logout",
            "/a/../logout#top",
            "/oauth2/callback",
        ] {
            refused(at(v, none.clone()));
        }
        for v in [
            "/logout/",
            "/logoutx",
            "/login",
            "/",
            "https://other.example.com/logout",
        ] {
            accepted(at(v, none.clone()));
        }
        let own = serde_json::json!({"logout_path": "/bye", "callback_path": "/cb"});
        refused(at("/bye", own.clone()));
        refused(at("/cb?code=x", own.clone()));
        accepted(at("/logout", own.clone()));
        // On `redirect_uri`'s host, in any letter case; not on another.
        let r = serde_json::json!({"redirect_uri": "https://app.example.com/oauth2/callback"});
        refused(at("https://APP.example.com/logout", r.clone()));
        refused(at("https://app.example.com/oauth2/callback", r.clone()));
        accepted(at("https://portal.example.com/logout", r.clone()));
        accepted(at("https://app.example.com/bye", r));
        // At a `hosts` entry's own host, exact or under its wildcard (found in review: taken there).
        for (url, ok) in [
            ("https://app.example.com/logout", false),
            ("https://x.apps.example.com/oauth2/callback", false),
            ("https://portal.example.com/logout", true),
            ("https://app.example.com/bye", true),
        ] {
            let mut m = minimal();
            m["hosts"] = serde_json::json!([{
                "hosts": ["app.example.com", "*.apps.example.com"],
                "post_logout_redirect_uri": url,
            }]);
            match Plugin::parse(m.to_string().as_bytes(), &no_env) {
                Ok(_) => assert!(ok, "{url} taken"),
                Err(e) => {
                    assert!(!ok, "{url}: {e}");
                    assert!(e.field.ends_with("post_logout_redirect_uri"), "{url}: {e}");
                }
            }
        }
    }

    #[test]
    fn userinfo_path_is_off_by_default_and_checked_as_the_filters_other_paths() {
        use serde_json::json;
        let parsed = |pairs: &[(&str, serde_json::Value)]| {
            let mut v = minimal();
            for (k, x) in pairs {
                v[*k] = x.clone();
            }
            parse(&v.to_string())
        };
        let refused = |pairs: &[(&str, serde_json::Value)], field: &str, why: &str| {
            let e = parsed(pairs).unwrap_err();
            assert_eq!(e.field, field, "{pairs:?}: {e}");
            assert!(e.reason.contains(why), "{pairs:?}: {e}");
        };
        assert_eq!(parsed(&[]).unwrap().userinfo_path, None);
        let c = parsed(&[("identity_headers", json!({}))]).unwrap();
        assert!(c.keep_claims.is_empty(), "{:?}", c.keep_claims);
        // Set, it keeps the claims it answers with, whatever the identity headers read.
        let c = parsed(&[
            ("userinfo_path", json!("/oauth2/userinfo")),
            ("identity_headers", json!({})),
        ])
        .unwrap();
        assert_eq!(c.userinfo_path.as_deref(), Some("/oauth2/userinfo"));
        assert_eq!(
            c.keep_claims,
            ["email", "groups", "preferred_username", "sub"]
        );
        for own in ["/oauth2/callback", "/login", "/logout"] {
            refused(
                &[("userinfo_path", json!(own))],
                "userinfo_path",
                "must differ",
            );
        }
        refused(
            &[
                ("backchannel_logout_path", json!("/me")),
                ("userinfo_path", json!("/me")),
            ],
            "userinfo_path",
            "must differ",
        );
        for bad in ["me", "/", "/a/../me", "/me?x", "//me"] {
            refused(&[("userinfo_path", json!(bad))], "userinfo_path", "must");
        }
        // A bypass path over it would answer it without a session on the app's behalf, and with one by
        // the filter's: refused.
        refused(
            &[
                ("userinfo_path", json!("/oauth2/userinfo")),
                ("bypass_paths", json!(["/oauth2"])),
            ],
            "bypass_paths",
            "userinfo_path",
        );
        // An entry of `hosts` inherits it, or sets its own.
        let plugin = |hosts: serde_json::Value| {
            let mut v = minimal();
            v["userinfo_path"] = json!("/whoami");
            v["hosts"] = hosts;
            Plugin::parse(v.to_string().as_bytes(), &no_env).unwrap()
        };
        let p = plugin(json!([{"hosts": ["a.example.com"]},
            {"hosts": ["b.example.com"], "userinfo_path": "/me", "cookie_name": "b"}]));
        let paths: Vec<_> = p.sites.iter().map(|s| s.userinfo_path.as_deref()).collect();
        assert_eq!(paths, [Some("/whoami"), Some("/whoami"), Some("/me")]);
    }

    /// Found by mutation testing: each bound and refusal below could be dropped or moved by one with every
    /// other test passing.
    #[test]
    fn bounds_and_refusals_mutation_testing_found_unchecked() {
        use serde_json::json;
        let refused = |v: serde_json::Value, field: &str, why: &str| {
            let e = parse(&v.to_string()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.reason.contains(why), "{v}: {e}");
        };
        let set = |pairs: &[(&str, serde_json::Value)]| {
            let mut v = minimal();
            for (k, x) in pairs {
                v[*k] = x.clone();
            }
            v
        };
        // An issuer's fragment is no part of an issuer (its query was checked, not its fragment).
        refused(
            set(&[("issuer", json!("https://idp.example.com/realms/x#f"))]),
            "issuer",
            "must not have a query or fragment",
        );
        // The back-channel logout path is neither of the filter's other paths, logout_path included.
        for other in ["/oauth2/callback", "/login", "/logout"] {
            refused(
                set(&[("backchannel_logout_path", json!(other))]),
                "backchannel_logout_path",
                "must differ",
            );
        }
        // login_path and logout_path must differ too (the error names the three, the field logout_path).
        refused(
            set(&[("login_path", json!("/x")), ("logout_path", json!("/x"))]),
            "logout_path",
            "must differ",
        );
        // A redirect_uri whose path starts with `//` cannot give callback_path: a browser reads `//x` as
        // a host.
        refused(
            set(&[(
                "redirect_uri",
                json!("https://app.example.com//oauth2/callback"),
            )]),
            "redirect_uri",
            "or `//`",
        );
        // Each scope a non-empty token without quotes, spaces or backslashes (it goes into the
        // authorization URL and the session's JSON; found by mutation testing: `\` was not held).
        for bad in ["", "a\"b", "a b", "a\\b"] {
            refused(
                set(&[("scopes", json!(["openid", bad]))]),
                "scopes",
                "non-empty token without spaces or quotes",
            );
        }
        // SameSite=None only with Secure: a browser drops such a cookie without it.
        refused(
            set(&[
                ("cookie_same_site", json!("None")),
                ("cookie_secure", json!(false)),
            ]),
            "cookie_same_site",
            "requires cookie_secure",
        );
        // The limits themselves are allowed, one more is not.
        let name = |n: usize| "c".repeat(n);
        assert!(parse(&set(&[("cookie_name", json!(name(64)))]).to_string()).is_ok());
        refused(
            set(&[("cookie_name", json!(name(65)))]),
            "cookie_name",
            "1 to 64 characters",
        );
        // Domains of 253 and 254 bytes, every label within 63.
        let domain = long_name;
        assert_eq!(domain(61).len(), 253);
        assert!(parse(&set(&[("cookie_domain", json!(domain(61)))]).to_string()).is_ok());
        refused(
            set(&[("cookie_domain", json!(domain(62)))]),
            "cookie_domain",
            "two labels or more",
        );
        let param = |n: usize| json!({ "x".repeat(n): "v" });
        assert!(parse(&set(&[("authorization_params", param(64))]).to_string()).is_ok());
        refused(
            set(&[("authorization_params", param(65))]),
            "authorization_params",
            "names of 1 to 64 characters",
        );
        assert_eq!(
            parse(&set(&[("jwks_refresh_interval", json!(60))]).to_string())
                .map(|c| c.jwks_refresh_interval),
            Ok(60)
        );
        // 365 days is the longest duration, and is one.
        assert_eq!(
            parse(&set(&[("session_lifetime", json!("365d"))]).to_string())
                .map(|c| c.session_lifetime),
            Ok(365 * 86400)
        );
    }

    /// Found in review of the README against the code: a bypass path of characters no request's path
    /// carries as they are (`/a b`, `/über`) was taken, and no request could match it (a bypass must cover
    /// the path as it came too); a claim rule under a bypass path in another letter case was taken, and
    /// left its path open in the case of the bypass.
    #[test]
    fn bypass_paths_no_request_matches_and_rules_under_them_in_any_case_are_refused() {
        use serde_json::json;
        for p in [
            "/a b",
            "/\u{fc}ber",
            "/x\"y",
            "/a|b",
            "/a^b",
            "/{x}",
            "/a\\b",
        ] {
            let e = parse(&with("bypass_paths", json!([p]))).unwrap_err();
            assert_eq!(e.field, "bypass_paths", "{p}: {e}");
            assert!(e.reason.contains("as they are"), "{e}");
        }
        for p in ["/healthz", "/a-b_c.d~e/", "/x!$&'()*+,=:@y"] {
            assert!(parse(&with("bypass_paths", json!([p]))).is_ok(), "{p}");
        }
        let rule = |p: &str| {
            let mut m = minimal();
            m["bypass_paths"] = json!(["/public"]);
            m["claim_rules"] = json!([{"path_prefix": p, "rule": {"claim": "groups", "contains_any": ["admins"]}}]);
            parse(&m.to_string())
        };
        for p in ["/public/admin", "/Public/admin", "/PUBLIC"] {
            let e = rule(p).unwrap_err();
            assert_eq!(e.field, "claim_rules", "{p}");
            assert!(e.reason.contains("is under bypass path `/public`"), "{e}");
        }
        assert!(rule("/publicity").is_ok());
    }

    /// Found in review of the README against the code: without `hosts`, a `redirect_uri` whose host lies
    /// outside `cookie_domain` was taken, and every login failed with a state mismatch (the login cookie,
    /// set for that domain, never reached the callback).
    #[test]
    fn a_redirect_uri_outside_cookie_domain_is_refused_without_hosts_too() {
        use serde_json::json;
        let mut m = minimal();
        m["cookie_domain"] = json!("example.com");
        m["redirect_uri"] = json!("https://auth.other.org/oauth2/callback");
        let e = parse(&m.to_string()).unwrap_err();
        assert_eq!(e.field, "redirect_uri", "{e}");
        assert!(
            e.reason
                .contains("its host `auth.other.org` is not within cookie_domain `example.com`"),
            "{e}"
        );
        for ok in [
            "https://example.com/oauth2/callback",
            "https://auth.example.com/oauth2/callback",
        ] {
            m["redirect_uri"] = json!(ok);
            assert!(parse(&m.to_string()).is_ok(), "{ok}");
        }
        // The same through `Plugin::parse`, and for a top level with `hosts`.
        m["redirect_uri"] = json!("https://auth.other.org/oauth2/callback");
        assert_eq!(
            Plugin::parse(m.to_string().as_bytes(), &no_env)
                .unwrap_err()
                .field,
            "redirect_uri"
        );
        let e = with_hosts(&json!({}), m.clone(), json!([{"hosts": ["a.example.com"], "redirect_uri": "https://a.example.com/oauth2/callback"}]))
            .unwrap_err();
        assert_eq!(e.field, "redirect_uri", "{e}");
    }

    /// Found in review of the README against the code: without a top-level `issuer` the top level was read
    /// only through its entries, so a value there that every entry overrides was never checked; and a
    /// conflict an entry's own field made with an inherited one blamed the inherited field alone.
    #[test]
    fn a_top_level_without_issuer_is_checked_and_inherited_conflicts_name_the_entry() {
        use serde_json::json;
        let entry = json!({"hosts": ["a.example.com"], "issuer": "https://idp.example.com",
            "session_lifetime": "8h", "callout_timeout": "5s", "cookie_secure": true,
            "scopes": ["openid"], "claim_rules": [], "cookie_same_site": "Lax"});
        for (field, bad) in [
            ("session_lifetime", json!("8")),
            ("callout_timeout", json!("forever")),
            ("cookie_secure", json!("no")),
            ("scopes", json!(["email"])),
            ("claim_rules", json!({"not": "a list"})),
            ("cookie_same_site", json!("Sometimes")),
        ] {
            let e = with_hosts(
                &json!({"issuer": null}),
                json!({ field: bad }),
                json!([entry.clone()]),
            )
            .unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(
                e.reason
                    .ends_with("(at the top level, checked with the first entry's IdP client)"),
                "{e}"
            );
        }
        // Valid values every entry overrides are taken.
        with_hosts(
            &json!({"issuer": null}),
            json!({"session_lifetime": "1h"}),
            json!([entry.clone()]),
        )
        .unwrap();
        // A valid top-level field that meets an entry's own: both are named.
        let e = with_hosts(
            &json!({}),
            json!({"bypass_paths": ["/healthz"]}),
            json!([{"hosts": ["a.example.com"], "callback_path": "/healthz/cb"}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "bypass_paths", "{e}");
        assert!(
            e.reason.ends_with(
                "(at the top level, inherited by hosts[0]: that value, or that entry's own fields with it)"
            ),
            "{e}"
        );
    }

    /// Found in review of the check of a top level without `issuer`: it took the first entry's secret
    /// beside the top level's other way of giving it (`cookie_keys` beside `cookie_keys_env`: "not both"),
    /// and read a default variable every entry overrides, unset on the gateway. An entry's secret, either
    /// way, replaces the top level's, as it does for the entry.
    #[test]
    fn a_top_level_without_issuer_is_checked_with_the_first_entrys_secrets() {
        use serde_json::json;
        let env = |k: &str| match k {
            "KEYS" => Some(KEY.to_string()),
            "SECRET_A" | "SECRET_B" => Some("s3cret".to_string()),
            _ => None,
        };
        let parse = |v: serde_json::Value| Plugin::parse(v.to_string().as_bytes(), &env);
        let entry = |h: &str, extra: serde_json::Value| {
            let mut e = json!({"hosts": [h], "issuer": format!("https://idp.{h}"), "client_id": h});
            for (k, v) in extra.as_object().unwrap() {
                e[k] = v.clone();
            }
            e
        };
        for (top, first) in [
            (
                json!({"cookie_keys_env": "KEYS", "client_secret_env": "SECRET_B"}),
                json!({"cookie_keys": [KEY]}),
            ),
            (
                json!({"cookie_keys_env": "KEYS", "client_secret_env": "SECRET_B"}),
                json!({"client_secret": "inline-for-a"}),
            ),
            (
                json!({"cookie_keys_env": "KEYS", "client_secret_env": "UNSET_DEFAULT"}),
                json!({"client_secret_env": "SECRET_A"}),
            ),
        ] {
            let mut v = top.clone();
            let second = match top["client_secret_env"].as_str() {
                Some("UNSET_DEFAULT") => json!({"client_secret_env": "SECRET_B"}),
                _ => json!({}),
            };
            v["hosts"] = json!([
                entry("a.example.com", first.clone()),
                entry("b.example.org", second)
            ]);
            assert!(parse(v).is_ok(), "{top} {first}");
        }
        // An entry's `null` unsets one way of its own and keeps the top level's other way, for the
        // entry and for the top level's check alike (found in review: the check dropped the top level's
        // variable, and refused the valid configuration).
        let mut v = json!({"cookie_keys_env": "KEYS", "client_secret_env": "SECRET_B"});
        v["hosts"] = json!([
            entry(
                "a.example.com",
                json!({"client_secret": null, "cookie_keys": null})
            ),
            entry("b.example.org", json!({}))
        ]);
        assert!(parse(v).is_ok(), "a null secret in the first entry");
        // An entry that inherits the unset default is refused, naming it.
        let mut v = json!({"cookie_keys_env": "KEYS", "client_secret_env": "UNSET_DEFAULT"});
        v["hosts"] = json!([
            entry("a.example.com", json!({"client_secret_env": "SECRET_A"})),
            entry("b.example.org", json!({}))
        ]);
        let e = parse(v).unwrap_err();
        assert!(e.field.starts_with("client_secret"), "{e}");
        // A folded look-alike letter is a letter case too: a rule on `/publİc/admin` under `/public` is
        // under it (found in review). `[` and `]` reach the filter as they are, through Envoy too.
        let mut m = minimal();
        m["bypass_paths"] = json!(["/public"]);
        m["claim_rules"] = json!([{"path_prefix": "/publ\u{130}c/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}]);
        assert_eq!(parse(m).unwrap_err().field, "claim_rules");
        assert!(super::tests::parse(&with("bypass_paths", json!(["/api/[v1]"]))).is_ok());
    }

    /// Mutation gaps (C9-C12): a top level without `issuer` borrows the first entry's whole IdP client for
    /// its check, each way a secret may come (`client_secret` or `client_secret_env`, `cookie_keys` or
    /// `cookie_keys_env`): a top level of shared settings only, whose entries each name their own
    /// client, is valid.
    #[test]
    fn a_top_level_of_shared_settings_borrows_every_part_of_the_first_entrys_client() {
        use serde_json::json;
        let env = |k: &str| match k {
            "S" => Some("s3cret".to_string()),
            "K" => Some(KEY.to_string()),
            _ => None,
        };
        for (secret, keys) in [
            (
                json!({"client_secret": "s3cret"}),
                json!({"cookie_keys": [KEY]}),
            ),
            (
                json!({"client_secret_env": "S"}),
                json!({"cookie_keys_env": "K"}),
            ),
        ] {
            let mut entry = json!({"hosts": ["a.example.com"], "issuer": "https://idp.example.com",
                "client_id": "app"});
            for (k, v) in secret
                .as_object()
                .unwrap()
                .iter()
                .chain(keys.as_object().unwrap())
            {
                entry[k] = v.clone();
            }
            let cfg = json!({"session_lifetime": "1h", "hosts": [entry]});
            let p = Plugin::parse(cfg.to_string().as_bytes(), &env);
            assert!(p.is_ok(), "{secret} {keys}: {:?}", p.err());
        }
    }

    /// Mutation gaps (C16, C14): the top level without `issuer` is checked as a whole site, its
    /// `redirect_uri` within its `cookie_domain` too, and with its own client fields, never the first
    /// entry's in their place, even where every entry overrides them.
    #[test]
    fn a_top_level_without_issuer_is_checked_with_its_redirect_and_its_own_client_fields() {
        use serde_json::json;
        let entry = json!({"hosts": ["a.example.com"], "issuer": "https://idp.example.com",
            "client_id": "app", "redirect_uri": "https://a.example.com/oauth2/callback"});
        let e = with_hosts(
            &json!({"issuer": null}),
            json!({"cookie_domain": "example.com",
                "redirect_uri": "https://auth.other.org/oauth2/callback"}),
            json!([entry.clone()]),
        )
        .unwrap_err();
        assert_eq!(e.field, "redirect_uri", "{e}");
        assert!(
            e.reason
                .ends_with("(at the top level, checked with the first entry's IdP client)"),
            "{e}"
        );
        // A top-level `client_id` every entry overrides is still read.
        let e = with_hosts(
            &json!({"issuer": null}),
            json!({"client_id": " app"}),
            json!([entry]),
        )
        .unwrap_err();
        assert_eq!(e.field, "client_id", "{e}");
        assert!(e.reason.contains("(at the top level, checked with"), "{e}");
    }

    /// Mutation gaps (C21a, C21f): the characters a bypass path may hold are exactly the ones a request's
    /// path carries as they are: digits among them (`/v1/healthz`), and not those a browser or client
    /// percent-encodes (`<`, `>`, `` ` ``, `{`, `}`, `|`), which no request's path could match as written.
    #[test]
    fn bypass_paths_take_digits_and_refuse_what_a_path_carries_encoded() {
        use serde_json::json;
        for p in ["/v1/healthz", "/status/200", "/2fa"] {
            let r = parse(&with("bypass_paths", json!([p])));
            assert!(r.is_ok(), "{p}: {:?}", r.err());
        }
        for p in ["/a<b", "/a>b", "/a`b", "/a}b", "/a{b", "/a|b"] {
            let e = parse(&with("bypass_paths", json!([p]))).unwrap_err();
            assert_eq!(e.field, "bypass_paths", "{p}: {e}");
            assert!(e.reason.contains("as they are"), "{p}: {e}");
        }
    }

    /// A name of four labels, three of 63 bytes and the last of `last`: 253 bytes for 61.
    fn long_name(last: usize) -> String {
        format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(last)
        )
    }

    /// Found by mutation testing: a `hosts` pattern of 254 bytes was taken, and an entry whose hosts all lie
    /// within cookie_domain could name a redirect_uri on a host outside it that it does not serve.
    #[test]
    fn hosts_entries_mutation_testing_found_unchecked() {
        use serde_json::json;
        let plugin = |top, entries| with_hosts(&json!({"unmatched_hosts": "deny"}), top, entries);
        // 253 bytes, labels within 63, and one byte more.
        let host = long_name;
        let p = plugin(json!({}), json!([{"hosts": [host(61)]}])).unwrap();
        assert_eq!(p.site_for(&host(61)), Ok(Some(1)));
        let e = plugin(json!({}), json!([{"hosts": [host(62)]}])).unwrap_err();
        assert_eq!(e.field, "hosts[0].hosts", "{e}");
        // The redirect's host outside cookie_domain and no host of the entry.
        let e = plugin(
            json!({"cookie_domain": "example.com"}),
            json!([{"hosts": ["grafana.example.com"], "redirect_uri": "https://login.example.org/cb"}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        assert!(e.reason.contains("`login.example.org`"), "{e}");
        // Said as it is, not only as "served by no site", which a later check would say.
        assert!(e.reason.contains("is not among this entry's hosts"), "{e}");
        // A wildcard that covers the redirect's host, without cookie_domain: what is missing is said.
        let e = plugin(
            json!({}),
            json!([{"hosts": ["*.apps.example.com"], "redirect_uri": "https://portal.apps.example.com/cb"}]),
        )
        .unwrap_err();
        assert!(
            e.reason.contains("cookie_domain that holds them all"),
            "{e}"
        );
        // A wildcard needs at least one character before its suffix, as Envoy's domains do: no site
        // for `.example.com`.
        let p = plugin(json!({}), json!([{"hosts": ["*.example.com"]}])).unwrap();
        assert_eq!(p.site_for("a.example.com"), Ok(Some(1)));
        assert_eq!(p.site_for(".example.com"), Ok(None));
    }

    /// Found by mutation testing: an identity header with an empty claim name (the name under which the
    /// access token travels) was not proven refused, a path starting with `//` (a link to another host
    /// in the filter's pages) was refused only through its other checks, and a secret from the
    /// environment was not proven trimmed, nor a blank one refused.
    #[test]
    fn values_a_mistake_would_turn_into_a_leak_or_a_link_off_site() {
        use serde_json::json;
        let e = parse(&with("identity_headers", json!({"x-user": ""}))).unwrap_err();
        assert_eq!(e.field, "identity_headers", "{e}");
        assert!(e.reason.contains("names no claim"), "{e}");
        for field in FILTER_PATHS {
            let e = parse(&with(field, json!("//evil.example.com"))).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            // Nor the site's home page.
            let e = parse(&with(field, json!("/"))).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("must not be `/`"), "{e}");
        }
        let env = |k: &str| match k {
            "SECRET" => Some("from-env\n".to_string()),
            "BLANK" => Some(" \n".to_string()),
            _ => None,
        };
        let json = |var: &str| {
            json!({"issuer": "https://idp.example.com", "client_id": "app",
                "client_secret_env": var, "cookie_keys": [KEY]})
            .to_string()
        };
        let c = Config::parse(json("SECRET").as_bytes(), &env).unwrap();
        assert_eq!(c.client_secret.expose(), "from-env");
        let e = Config::parse(json("BLANK").as_bytes(), &env).unwrap_err();
        assert_eq!(e.field, "client_secret_env", "{e}");
        let e = parse(&with("client_secret", json!(""))).unwrap_err();
        assert_eq!(e.field, "client_secret", "{e}");
        assert!(e.reason.contains("must not be empty"), "{e}");
    }

    /// The filter's own paths, each checked by [`path`].
    const FILTER_PATHS: [&str; 4] = [
        "callback_path",
        "login_path",
        "logout_path",
        "backchannel_logout_path",
    ];

    /// Mutation gap (V28): a filter path with `;` is refused with a reason that names the `;`. With `;`
    /// dropped from the plain-path check it was still refused, by the normalized-path check (which cuts
    /// `;x` parameters from a segment), but with a reason of `//`, `.` and `..` segments the path has none
    /// of.
    #[test]
    fn a_filter_path_with_a_semicolon_is_refused() {
        use serde_json::json;
        for field in FILTER_PATHS {
            let e = parse(&with(field, json!("/auth;x/in"))).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("`;`"), "{e}");
            let r = parse(&with(field, json!("/auth/x-in")));
            assert!(r.is_ok(), "{field}: {:?}", r.err());
        }
    }

    /// Mutation gap (V33): a host listed twice, in two entries or in one, in any letter case, is refused
    /// naming the entry that lists it again (which entry serves it would be a matter of order). A name and
    /// a wildcard that covers it are two patterns: the name wins for its host.
    #[test]
    fn a_host_listed_twice_is_refused_naming_the_entry() {
        use serde_json::json;
        let plugin = |entries| with_hosts(&json!({}), json!({}), entries);
        for (entries, field, host) in [
            (
                json!([{"hosts": ["a.example.com"]}, {"hosts": ["b.example.com", "A.Example.com"]}]),
                "hosts[1].hosts",
                "a.example.com",
            ),
            (
                json!([{"hosts": ["*.example.com", "*.example.com"]}]),
                "hosts[0].hosts",
                "*.example.com",
            ),
        ] {
            let e = plugin(entries).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.reason, format!("`{host}` is listed twice"));
        }
        let p =
            plugin(json!([{"hosts": ["*.example.com"]}, {"hosts": ["a.example.com"]}])).unwrap();
        assert_eq!(p.site_for("a.example.com"), Ok(Some(2)));
        assert_eq!(p.site_for("b.example.com"), Ok(Some(1)));
    }

    /// Mutation gap (V36): `hosts` holds 1 to 64 entries, as its error says: 64 are taken, 65 are not,
    /// nor an empty list or a single object.
    #[test]
    fn hosts_holds_1_to_64_entries() {
        use serde_json::json;
        let entries = |n: usize| {
            json!(
                (0..n)
                    .map(|i| json!({ "hosts": [format!("h{i}.example.com")] }))
                    .collect::<Vec<_>>()
            )
        };
        let p = with_hosts(&json!({}), json!({}), entries(64)).unwrap();
        assert_eq!(p.sites.len(), 65, "the top level's site and 64 entries");
        for bad in [entries(65), json!([]), json!({"hosts": ["a.example.com"]})] {
            let e = with_hosts(&json!({}), json!({}), bad).unwrap_err();
            assert_eq!(e.field, "hosts", "{e}");
            assert_eq!(e.reason, "a list of 1 to 64 objects");
        }
        // An entry that is no object, or lists no host: named by the entry.
        for (entry, why) in [
            (json!("a.example.com"), "each entry is an object"),
            (
                json!({"cookie_name": "x"}),
                "a non-empty list of host names",
            ),
            (json!({"hosts": []}), "a non-empty list of host names"),
        ] {
            let e = with_hosts(
                &json!({}),
                json!({}),
                json!([{"hosts": ["a.example.com"]}, entry]),
            )
            .unwrap_err();
            assert_eq!(e.field, "hosts[1].hosts", "{e}");
            assert!(e.reason.starts_with(why), "{e}");
        }
    }

    /// `unmatched_hosts` is read only beside `hosts`, and takes its three values only (the errors of
    /// [`Plugin::parse`] itself).
    #[test]
    fn unmatched_hosts_is_refused_without_hosts_or_with_another_value() {
        use serde_json::json;
        let mut m = minimal();
        m["unmatched_hosts"] = json!("deny");
        let e = Plugin::parse(m.to_string().as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "unmatched_hosts", "{e}");
        assert!(
            e.reason.contains("only meaningful together with `hosts`"),
            "{e}"
        );
        for bad in [json!("Deny"), json!("allow"), json!(true)] {
            let e = with_hosts(
                &json!({ "unmatched_hosts": bad }),
                json!({}),
                json!([{"hosts": ["a.example.com"]}]),
            )
            .unwrap_err();
            assert_eq!(e.field, "unmatched_hosts", "{e}");
            assert_eq!(e.reason, "`default`, `pass` or `deny`");
        }
        for (value, unmatched) in [
            ("default", Unmatched::Default),
            ("pass", Unmatched::Pass),
            ("deny", Unmatched::Deny),
        ] {
            let p = with_hosts(
                &json!({ "unmatched_hosts": value }),
                json!({}),
                json!([{"hosts": ["a.example.com"]}]),
            )
            .unwrap();
            assert!(p.unmatched == unmatched, "{value}");
        }
    }

    /// The two token settings ([`token_settings`]): each documented value taken, any other refused naming
    /// the field, in a `hosts` entry naming the entry too.
    #[test]
    fn token_endpoint_auth_and_forward_token_take_their_values_and_refuse_others() {
        use serde_json::json;
        assert_eq!(
            parse(&minimal().to_string()).unwrap().client_auth,
            ClientAuth::Basic
        );
        for (v, auth) in [
            ("client_secret_basic", ClientAuth::Basic),
            ("client_secret_post", ClientAuth::Post),
        ] {
            let c = parse(&with("token_endpoint_auth", json!(v))).unwrap();
            assert_eq!(c.client_auth, auth, "{v}");
        }
        for (v, token) in [
            ("id_token", ForwardToken::IdToken),
            ("access_token", ForwardToken::AccessToken),
        ] {
            let c = parse(&with("forward_token", json!(v))).unwrap();
            assert_eq!(c.forward_token, token, "{v}");
        }
        for (field, bad, why) in [
            (
                "token_endpoint_auth",
                "private_key_jwt",
                "must be `client_secret_basic` or `client_secret_post`",
            ),
            (
                "token_endpoint_auth",
                "Client_Secret_Post",
                "must be `client_secret_basic` or `client_secret_post`",
            ),
            (
                "forward_token",
                "ID_TOKEN",
                "must be `id_token` or `access_token`",
            ),
        ] {
            let e = parse(&with(field, json!(bad))).unwrap_err();
            assert_eq!(e.field, field, "{bad}: {e}");
            assert_eq!(e.reason, why);
            let e = with_hosts(
                &json!({}),
                json!({}),
                json!([{"hosts": ["a.example.com"], field: bad}]),
            )
            .unwrap_err();
            assert_eq!(e.field, format!("hosts[0].{field}"), "{e}");
        }
    }

    /// The errors of [`check_site_pairs`] name the entry at fault exactly: after a top-level site (site 0)
    /// the first entry is `hosts[0]`, without one the second is `hosts[1]`.
    #[test]
    fn sites_of_one_cookie_name_are_refused_naming_the_entry_at_fault() {
        use serde_json::json;
        let after_top = |entry: serde_json::Value| {
            let mut e = json!({"hosts": ["b.example.com"]});
            for (k, v) in entry.as_object().unwrap() {
                e[k] = v.clone();
            }
            with_hosts(&json!({"cookie_name": "s"}), json!({}), json!([e]))
        };
        for (entry, why) in [
            (
                json!({"cookie_name": "s_login_b"}),
                "it reads as that site's login cookie",
            ),
            (
                json!({"cookie_name": "s", "client_id": "other"}),
                "`s` is used by sites of different IdP clients",
            ),
            (
                json!({"cookie_name": "s", "cookie_domain": "example.com"}),
                "sites of one cookie name must share cookie_domain",
            ),
        ] {
            let e = after_top(entry.clone()).unwrap_err();
            assert_eq!(e.field, "hosts[0].cookie_name", "{entry}: {e}");
            assert!(e.reason.contains(why), "{entry}: {e}");
        }
        after_top(json!({"cookie_name": "s"})).unwrap();
        // No top-level site: the second entry of the two is named.
        let idp = "https://idp.example.com";
        let e = with_hosts(
            &json!({"issuer": null}),
            json!({}),
            json!([{"hosts": ["a.example.com"], "issuer": idp, "cookie_name": "s"},
                {"hosts": ["b.example.com"], "issuer": idp, "cookie_name": "s_login_a"}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[1].cookie_name", "{e}");
        assert!(e.reason.contains("login cookie"), "{e}");
    }

    /// The `redirect_uri` errors of [`check_redirect_takers`] and of an entry's own checks name the entry,
    /// and say when its value came from the top level.
    #[test]
    fn a_redirect_uri_error_names_the_entry_and_says_whether_it_was_inherited() {
        use serde_json::json;
        // Inherited by hosts[0], whose site does not serve its host: hosts[1] does.
        let e = with_hosts(
            &json!({"cookie_domain": "example.com", "unmatched_hosts": "deny"}),
            json!({"redirect_uri": "https://auth.example.com/cb"}),
            json!([{"hosts": ["grafana.example.com"]}, {"hosts": ["auth.example.com"]}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        assert!(e.reason.contains("is served by `hosts[1]`"), "{e}");
        assert!(e.reason.ends_with(" (inherited from the top level)"), "{e}");
        // Its own beside the top level's: no word of inheriting.
        let e = with_hosts(
            &json!({"cookie_domain": "example.com", "unmatched_hosts": "deny"}),
            json!({"redirect_uri": "https://auth.example.com/cb"}),
            json!([{"hosts": ["grafana.example.com"], "redirect_uri": "https://auth.example.com/g"},
                {"hosts": ["auth.example.com"]}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        assert!(e.reason.contains("is served by `hosts[1]`"), "{e}");
        assert!(!e.reason.contains("inherited"), "{e}");
        // Its own, without a top-level site: no word of inheriting.
        let idp = "https://idp.example.com";
        let e = with_hosts(
            &json!({"issuer": null, "cookie_domain": "example.com"}),
            json!({}),
            json!([{"hosts": ["grafana.example.com"], "issuer": idp,
                    "redirect_uri": "https://auth.example.com/cb"},
                {"hosts": ["auth.example.com"], "issuer": idp}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        assert!(e.reason.contains("is served by `hosts[1]`"), "{e}");
        assert!(!e.reason.contains("inherited"), "{e}");
        // An entry's own check of an inherited redirect_uri names what it inherited.
        let e = with_hosts(
            &json!({}),
            json!({"redirect_uri": "https://app.example.com/top/cb"}),
            json!([{"hosts": ["*.example.com"]}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        assert!(
            e.reason
                .ends_with(" (`redirect_uri` inherited from the top level)"),
            "{e}"
        );
        let e = with_hosts(
            &json!({}),
            json!({"redirect_uri": "https://app.example.com/top/cb"}),
            json!([{"hosts": ["*.example.com"], "redirect_uri": "https://app.example.com/cb"}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].redirect_uri", "{e}");
        assert!(!e.reason.contains("inherited"), "{e}");
    }

    /// The errors of [`open_paths`] and [`claims_kept`] in a `hosts` entry: named by the entry when the
    /// field is its own, by the top level's field, saying which entry inherits it, when it is not.
    #[test]
    fn an_entry_s_path_and_claim_errors_name_the_entry_or_the_inherited_field() {
        use serde_json::json;
        let rules = json!([{"path_prefix": "/public/admin",
            "rule": {"claim": "groups", "contains_any": ["admins"]}}]);
        let inherited = "(at the top level, inherited by hosts[0]: that value, or that entry's own fields with it)";
        for (top, entry, field, why) in [
            (
                json!({"bypass_paths": ["/public"]}),
                json!({"claim_rules": rules}),
                "hosts[0].claim_rules",
                "is under bypass path `/public`",
            ),
            (
                json!({"claim_rules": rules}),
                json!({"bypass_paths": ["/public"]}),
                "claim_rules",
                inherited,
            ),
            (
                json!({}),
                json!({"access_token_header": "X-Auth-Request-User"}),
                "hosts[0].access_token_header",
                "cannot carry the access token",
            ),
            (
                json!({}),
                json!({"backchannel_logout_path": "/login"}),
                "hosts[0].backchannel_logout_path",
                "must differ from the other paths",
            ),
            (
                json!({"backchannel_logout_path": "/signin"}),
                json!({"login_path": "/signin"}),
                "backchannel_logout_path",
                inherited,
            ),
        ] {
            let mut e1 = json!({"hosts": ["a.example.com"]});
            for (k, v) in entry.as_object().unwrap() {
                e1[k] = v.clone();
            }
            let e = with_hosts(&json!({}), top.clone(), json!([e1])).unwrap_err();
            assert_eq!(e.field, field, "{top} {entry}: {e}");
            assert!(e.reason.contains(why), "{top} {entry}: {e}");
        }
    }
}
