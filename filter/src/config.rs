//! pluginConfig JSON -> a validated `Config`. Parsed once in `on_configure`; the request path never re-checks.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use url::Url;

use crate::cookies::{CookieAttrs, SameSite};
use crate::oidc::token::ClientAuth;
use crate::secret::Secret;
use crate::session::Keys;

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
    pub issuer_url: Url,
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
    pub forward_token: ForwardToken,
    pub client_auth: ClientAuth,
    pub cookie_name: String,
    pub cookie: CookieAttrs,
    pub session_lifetime: u64,
    pub refresh_margin: u64,
    pub clock_leeway: u64,
    pub bypass_paths: Vec<String>,
    pub callout_timeout: Duration,
    pub jwks_refresh_interval: u64,
}

/// Why a configuration was refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: field `{}`: {}", self.field, self.reason)
    }
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { field: field.to_string(), reason: reason.into() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    cookie_same_site: Option<String>,
    session_lifetime: Option<String>,
    refresh_margin: Option<String>,
    clock_leeway: Option<String>,
    bypass_paths: Option<Vec<String>>,
    callout_timeout: Option<String>,
    jwks_refresh_interval: Option<String>,
}

impl Config {
    /// Parses and validates pluginConfig. `env` looks up environment variables (WASI `environ_get` in Envoy,
    /// which Istio fills from `vmConfig.env`).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(err("issuer", "pluginConfig is empty; issuer, client_id, a client secret and cookie keys are required"));
        }
        let raw: Raw = serde_json::from_slice(json).map_err(|e| {
            // serde's message names the unknown or mistyped field; keep it but never echo values.
            err(&field_from_serde(&e.to_string()), format!("not valid JSON for this filter ({})", classify(&e)))
        })?;

        let issuer = raw.issuer.ok_or_else(|| err("issuer", "required"))?;
        let issuer_url = http_url("issuer", &issuer)?;
        if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
            return Err(err("issuer", "must not have a query or fragment"));
        }
        let client_id = non_empty("client_id", raw.client_id)?;
        let client_secret = secret_from("client_secret", raw.client_secret, raw.client_secret_env.as_deref(), env)?;
        let keys = cookie_keys(raw.cookie_keys, raw.cookie_keys_env.as_deref(), env)?;

        if raw.idp_cluster.as_deref().is_some_and(str::is_empty) {
            return Err(err("idp_cluster", "must not be empty"));
        }
        if let Some(r) = &raw.redirect_uri {
            http_url("redirect_uri", r)?;
        }
        let callback_path = path("callback_path", raw.callback_path, "/oauth2/callback")?;
        let login_path = path("login_path", raw.login_path, "/login")?;
        let logout_path = path("logout_path", raw.logout_path, "/logout")?;
        if callback_path == login_path || callback_path == logout_path || login_path == logout_path {
            return Err(err("callback_path", "callback_path, login_path and logout_path must differ"));
        }
        if let Some(p) = &raw.post_logout_redirect_uri
            && (!p.starts_with('/') || p.starts_with("//"))
        {
            http_url("post_logout_redirect_uri", p)?;
        }
        let scopes = raw.scopes.unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
        if !scopes.iter().any(|s| s == "openid") {
            return Err(err("scopes", "must include `openid`"));
        }
        if scopes.iter().any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
            return Err(err("scopes", "each scope must be a non-empty token without spaces or quotes"));
        }
        let forward_token = match raw.forward_token.as_deref() {
            None | Some("id_token") => ForwardToken::IdToken,
            Some("access_token") => ForwardToken::AccessToken,
            Some(_) => return Err(err("forward_token", "must be `id_token` or `access_token`")),
        };
        let client_auth = match raw.token_endpoint_auth.as_deref() {
            None | Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some(_) => return Err(err("token_endpoint_auth", "must be `client_secret_basic` or `client_secret_post`")),
        };
        let cookie_name = raw.cookie_name.unwrap_or_else(|| "_oidc_session".into());
        if cookie_name.is_empty()
            || cookie_name.len() > 64
            || !cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err("cookie_name", "1 to 64 characters of A-Z a-z 0-9 _ -"));
        }
        if let Some(d) = &raw.cookie_domain
            && (d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(err("cookie_domain", "must be a domain name"));
        }
        let secure = raw.cookie_secure.unwrap_or(true);
        let same_site = match raw.cookie_same_site.as_deref() {
            None | Some("Lax") | Some("lax") => SameSite::Lax,
            Some("Strict") | Some("strict") => SameSite::Strict,
            Some("None") | Some("none") if secure => SameSite::None,
            Some("None") | Some("none") => return Err(err("cookie_same_site", "`None` requires cookie_secure: true")),
            Some(_) => return Err(err("cookie_same_site", "must be `Lax`, `Strict` or `None`")),
        };
        let cookie = CookieAttrs { secure, domain: raw.cookie_domain, path: "/".into(), same_site };

        let session_lifetime = duration("session_lifetime", raw.session_lifetime, 8 * 3600)?;
        let refresh_margin = duration("refresh_margin", raw.refresh_margin, 60)?;
        let clock_leeway = duration("clock_leeway", raw.clock_leeway, 60)?;
        if clock_leeway > 300 {
            return Err(err("clock_leeway", "at most 5m"));
        }
        if session_lifetime == 0 {
            return Err(err("session_lifetime", "must be positive"));
        }
        let callout_timeout = duration("callout_timeout", raw.callout_timeout, 5)?;
        if callout_timeout == 0 || callout_timeout > 60 {
            return Err(err("callout_timeout", "between 1s and 60s"));
        }
        let jwks_refresh_interval = duration("jwks_refresh_interval", raw.jwks_refresh_interval, 3600)?;
        if jwks_refresh_interval < 60 {
            return Err(err("jwks_refresh_interval", "at least 60s"));
        }
        let bypass_paths = raw.bypass_paths.unwrap_or_else(|| vec!["/healthz".into()]);
        for p in &bypass_paths {
            if !p.starts_with('/') || p.contains(['?', '#', '%', '\\']) || p.contains("/../") || p.contains("/./") {
                return Err(err("bypass_paths", "each entry must be a plain absolute path prefix like `/healthz`"));
            }
        }
        for special in [&callback_path, &login_path, &logout_path] {
            if bypass_paths.iter().any(|b| crate::paths::prefix_matches(b, special)) {
                return Err(err("bypass_paths", "must not cover callback_path, login_path or logout_path"));
            }
        }

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
            scopes: scopes.join(" "),
            forward_token,
            client_auth,
            cookie_name,
            cookie,
            session_lifetime,
            refresh_margin,
            clock_leeway,
            bypass_paths,
            callout_timeout: Duration::from_secs(callout_timeout),
            jwks_refresh_interval,
        })
    }

    /// The Envoy cluster that reaches `url`: the configured one, or Istio's name for a ServiceEntry host.
    pub fn cluster_for(&self, url: &Url) -> String {
        match &self.idp_cluster {
            Some(c) => c.clone(),
            None => format!(
                "outbound|{}||{}",
                url.port_or_known_default().unwrap_or(443),
                url.host_str().unwrap_or_default()
            ),
        }
    }

    /// The name of the short-lived cookie that carries one login attempt, keyed by its state.
    pub fn login_cookie_name(&self, state: &str) -> String {
        let key: String = state.chars().take(12).collect();
        format!("{}_login_{}", self.cookie_name, key)
    }

    /// True for every cookie this filter owns (session chunks and login attempts); they never go upstream.
    pub fn is_own_cookie(&self, name: &str) -> bool {
        crate::session::is_session_cookie(&self.cookie_name, name)
            || name
                .strip_prefix(self.cookie_name.as_str())
                .is_some_and(|rest| rest.starts_with("_login_"))
    }
}

fn field_from_serde(msg: &str) -> String {
    // serde_json says e.g. "unknown field `foo`, expected one of …" or "invalid type: …".
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            return rest[..end].to_string();
        }
    }
    "pluginConfig".to_string()
}

fn classify(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("unknown field") {
        "unknown field".into()
    } else if msg.starts_with("invalid type") {
        // "invalid type: string \"…\", expected …" can quote a secret; keep only what was expected.
        match msg.find("expected") {
            Some(i) => format!("wrong type, {}", msg[i..].split(" at line").next().unwrap_or("")),
            None => "wrong type".into(),
        }
    } else {
        format!("syntax error at line {} column {}", e.line(), e.column())
    }
}

fn non_empty(field: &str, v: Option<String>) -> Result<String, ConfigError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(err(field, "must not be empty")),
        None => Err(err(field, "required")),
    }
}

fn http_url(field: &str, s: &str) -> Result<Url, ConfigError> {
    let u = Url::parse(s).map_err(|e| err(field, format!("not an absolute URL ({e})")))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(err(field, "must be an http or https URL"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(err(field, "must have a host"));
    }
    Ok(u)
}

fn path(field: &str, v: Option<String>, default: &str) -> Result<String, ConfigError> {
    let p = v.unwrap_or_else(|| default.to_string());
    if !p.starts_with('/') || p.starts_with("//") || p.contains(['?', '#', '%', ' ']) {
        return Err(err(field, "must be an absolute path like `/login`, without query"));
    }
    Ok(p)
}

fn from_env(field: &str, var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    match env(var) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(err(field, format!("environment variable `{var}` is not set or empty"))),
    }
}

fn secret_from(
    field: &str,
    inline: Option<Secret>,
    var: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let env_field = format!("{field}_env");
    match (inline, var) {
        (Some(_), Some(_)) => Err(err(field, format!("set either `{field}` or `{env_field}`, not both"))),
        (Some(s), None) if s.is_empty() => Err(err(field, "must not be empty")),
        (Some(s), None) => Ok(s),
        (None, Some(v)) => Ok(Secret::new(from_env(&env_field, v, env)?)),
        (None, None) => Err(err(field, format!("required (or `{env_field}`)"))),
    }
}

fn cookie_keys(
    inline: Option<Vec<Secret>>,
    var: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Keys, ConfigError> {
    let (field, encoded): (&str, Vec<String>) = match (inline, var) {
        (Some(_), Some(_)) => return Err(err("cookie_keys", "set either `cookie_keys` or `cookie_keys_env`, not both")),
        (Some(list), None) => ("cookie_keys", list.iter().map(|s| s.expose().trim().to_string()).collect()),
        (None, Some(v)) => (
            "cookie_keys_env",
            from_env("cookie_keys_env", v, env)?.split(',').map(|s| s.trim().to_string()).collect(),
        ),
        (None, None) => return Err(err("cookie_keys", "required (or `cookie_keys_env`)")),
    };
    let mut raw = Vec::with_capacity(encoded.len());
    for (i, k) in encoded.iter().enumerate() {
        let bytes = decode_key(k).ok_or_else(|| err(field, format!("key {i} is not base64")))?;
        raw.push(bytes);
    }
    Keys::new(&raw).map_err(|e| err(field, e.to_string()))
}

fn decode_key(k: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(k).ok())
}

/// Parses `90s`, `15m`, `8h`, `7d` or a bare number of seconds.
fn duration(field: &str, v: Option<String>, default: u64) -> Result<u64, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n <= 365 * 86400)
        .ok_or_else(|| err(field, "a duration like `90s`, `15m`, `8h` or `7d`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

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
        let token = Url::parse("https://idp.example.com/token").unwrap();
        assert_eq!(c.cluster_for(&token), "outbound|443||idp.example.com");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (serde_json::json!({"client_id": "a"}).to_string(), "issuer"),
            (with("issuer", "ftp://x".into()), "issuer"),
            (with("client_id", "".into()), "client_id"),
            (with("forward_token", "refresh_token".into()), "forward_token"),
            (with("scopes", serde_json::json!(["email"])), "scopes"),
            (with("session_lifetime", "8 hours".into()), "session_lifetime"),
            (with("cookie_keys", serde_json::json!(["c2hvcnQ="])), "cookie_keys"),
            (with("cookie_keys", serde_json::json!(["!!!"])), "cookie_keys"),
            (with("bypass_paths", serde_json::json!(["healthz"])), "bypass_paths"),
            (with("bypass_paths", serde_json::json!(["/"])), "bypass_paths"),
            (with("clock_leeway", "1h".into()), "clock_leeway"),
            (with("callback_path", "/login".into()), "callback_path"),
            (with("cookie_name", "a;b".into()), "cookie_name"),
            (with("unknown_knob", true.into()), "unknown_knob"),
            (with("cookie_secure", "yes".into()), "pluginConfig"),
            ("{".to_string(), "pluginConfig"),
            ("".to_string(), "issuer"),
        ];
        for (json, field) in cases {
            let e = parse(&json).unwrap_err();
            assert_eq!(e.field, field, "{json} -> {e}");
        }
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

        let missing = serde_json::json!({
            "issuer": "https://idp.example.com", "client_id": "app",
            "client_secret_env": "NOPE", "cookie_keys": [KEY],
        })
        .to_string();
        let e = Config::parse(missing.as_bytes(), &env).unwrap_err();
        assert_eq!(e.field, "client_secret_env");
        assert!(e.reason.contains("NOPE"));

        let both = with("client_secret_env", "SECRET".into());
        assert_eq!(Config::parse(both.as_bytes(), &env).unwrap_err().field, "client_secret");
    }

    #[test]
    fn explicit_cluster_wins() {
        let c = parse(&with("idp_cluster", "outbound|8443||keycloak.auth.svc.cluster.local".into())).unwrap();
        let u = Url::parse("https://other/token").unwrap();
        assert_eq!(c.cluster_for(&u), "outbound|8443||keycloak.auth.svc.cluster.local");
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
}
