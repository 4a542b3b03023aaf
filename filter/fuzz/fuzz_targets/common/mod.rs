//! What every target shares: the test configuration, a provider loaded from testdata, fake headers,
//! and a fixed clock with counting randomness (so a crash replays exactly).

#![allow(dead_code)]

use std::sync::OnceLock;

use oidc_filter::config::Config;
use oidc_filter::flow::{self, Env, Headers, Pending, State, Step};
use oidc_filter::oidc::jwks::Jwks;
use oidc_filter::provider::Fetch;
use oidc_filter::secret::Secret;

/// The testdata tokens are issued at this time.
pub const NOW: u64 = 1_900_000_000;
pub const ISSUER: &str = "https://idp.example.com";
pub const CLIENT_ID: &str = "oidc-filter-test";
pub const NONCE: &str = "n-0S6_WzA2Mj";
pub const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const DISCOVERY: &[u8] = include_bytes!("../../../../testdata/discovery/good.json");
pub const JWKS: &[u8] = include_bytes!("../../../../testdata/jwks/keys.json");

/// The configuration of the flow targets: bypass paths, claim rules, identity headers and the access
/// token's header on.
pub fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        let json = serde_json::json!({
            "issuer": ISSUER,
            "client_id": CLIENT_ID,
            "client_secret": "s3cret",
            "cookie_keys": [KEY],
            "bypass_paths": ["/healthz", "/.well-known/acme-challenge/"],
            "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
            "backchannel_logout_path": "/oauth2/backchannel",
            "access_token_header": "x-forwarded-access-token",
        });
        match Config::parse(json.to_string().as_bytes(), &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        }
    })
}

/// The testdata keys, parsed once per thread (a `Jwks` shares its keys by `Rc`: not a `static`'s).
pub fn jwks() -> &'static Jwks {
    thread_local! {
        static JWKS_SET: &'static Jwks = Box::leak(Box::new(match Jwks::parse(JWKS) {
            Ok(j) => j,
            Err(e) => panic!("fuzz JWKS: {e}"),
        }));
    }
    JWKS_SET.with(|j| *j)
}

/// A worker's state with discovery and keys loaded, as after start-up.
pub fn ready_state() -> State {
    let mut state = State::default();
    let cfg = config();
    let _ = state.provider.poll(cfg, NOW);
    if let Err(e) = state
        .provider
        .on_reply(cfg, Fetch::Discovery, Some((200, DISCOVERY)), NOW)
    {
        panic!("fuzz discovery: {e}");
    }
    state
        .provider
        .install_jwks(jwks().clone(), NOW, cfg.jwks_refresh_interval);
    state
}

/// Request headers as a list.
pub struct H(pub Vec<(String, String)>);

impl Headers for H {
    fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::borrow::Cow::Borrowed(v.as_str()))
    }
}

impl H {
    pub fn request(path: &str, cookie: &str, browser: bool) -> H {
        let accept = if browser {
            "text/html"
        } else {
            "application/json"
        };
        H(vec![
            (":method".into(), "GET".into()),
            (":scheme".into(), "https".into()),
            (":authority".into(), "app.example.com".into()),
            (":path".into(), path.into()),
            ("accept".into(), accept.into()),
            ("cookie".into(), cookie.into()),
        ])
    }
}

/// Runs `f` with an environment at `NOW` whose randomness counts from `seed`.
pub fn with_env<T>(seed: u64, f: impl FnOnce(&mut Env) -> T) -> T {
    let mut counter = seed;
    let mut random = || {
        counter += 1;
        let mut b = [0x5a; 32];
        b[..8].copy_from_slice(&counter.to_le_bytes());
        Some(b)
    };
    let mut env = Env {
        now: NOW,
        random: &mut random,
        unsent: None,
    };
    f(&mut env)
}

pub fn on_request(state: &mut State, h: &H) -> Step {
    with_env(0, |env| flow::on_request(config(), state, env, h))
}

pub fn on_reply(state: &mut State, pending: Pending, reply: Option<(u16, &[u8])>) -> Step {
    with_env(1000, |env| {
        flow::on_reply(config(), state, env, *Box::new(pending), reply)
    })
}

/// Whatever a step does, the values it would emit as headers are header-safe.
pub fn check_step(step: &Step) {
    let safe = |v: &str| !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
    match step {
        Step::Respond(r) => {
            for (n, v) in &r.headers {
                assert!(safe(n) && safe(v), "unsafe response header {n}");
                if *n == "location" {
                    // As a browser reads it (the WHATWG URL parser): leading spaces and control
                    // characters and every tab and newline dropped, a backslash taken for a slash.
                    // Two slashes then lead to another host. (The absolute ones, to the IdP or another
                    // host of the site, start with their scheme.)
                    let read: Vec<u8> = v
                        .bytes()
                        .skip_while(|b| *b <= b' ')
                        .filter(|b| !matches!(b, b'\t' | b'\n' | b'\r'))
                        .take(2)
                        .map(|b| if b == b'\\' { b'/' } else { b })
                        .collect();
                    assert!(read != b"//", "off-site redirect {v:?}");
                }
            }
        }
        Step::Forward(f) => {
            for c in &f.set_cookies {
                assert!(safe(c), "unsafe set-cookie");
            }
            for (n, v) in f.identity.iter().flat_map(|i| i.iter()) {
                assert!(
                    safe(n) && v.as_ref().map(Secret::expose).is_none_or(safe),
                    "unsafe identity header {n}"
                );
            }
        }
        _ => {}
    }
}
