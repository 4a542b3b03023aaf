//! A native driver for the core: fake request headers, a fixed clock, counting randomness, a cookie jar,
//! a provider fed from testdata, and ID tokens minted with the test keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use jwt_simple::prelude::*;
use oidc_filter::config::Config;
use oidc_filter::flow::{self, Callout, Env, Forward, Headers, Pending, Reply, State, Step};
use oidc_filter::provider::Fetch;
use oidc_filter::session::{LoginState, Session};
use oidc_filter::weburl::WebUrl;

/// The tokens in testdata are issued at this time; every test starts here.
pub const NOW: u64 = 1_900_000_000;
pub const ISSUER: &str = "https://idp.example.com";
pub const CLIENT_ID: &str = "oidc-filter-test";
pub const CLIENT_SECRET: &str = "s3cret:with/odd&chars";
pub const HOST: &str = "app.example.com";
/// Two 32-byte cookie keys, base64.
pub const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const KEY_B: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";

pub const DISCOVERY: &[u8] = include_bytes!("../../../testdata/discovery/good.json");
pub const OTHER_ISSUER: &[u8] = include_bytes!("../../../testdata/discovery/other-issuer.json");
pub const JWKS: &[u8] = include_bytes!("../../../testdata/jwks/keys.json");
const ES256_PEM: &str = include_str!("../../../testdata/jwks/private/es256-1.pem");

/// The configuration every test starts from, with `extra` members merged in.
pub fn config(extra: serde_json::Value) -> Config {
    let mut json = serde_json::json!({
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "cookie_keys": [KEY_A],
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            json[k] = v;
        }
    }
    Config::parse(json.to_string().as_bytes(), &|_| None).unwrap()
}

/// One worker's view of the filter: config, state, a clock the test moves, and randomness that counts.
pub struct Filter {
    pub cfg: Config,
    pub state: State,
    pub now: u64,
    counter: u64,
    pub no_randomness: bool,
    /// Why the next reply's call was never sent, as the adapter says it (`Env::unsent`).
    pub unsent: Option<String>,
}

impl Filter {
    /// A filter whose provider has not been reached yet.
    pub fn new(cfg: Config) -> Filter {
        Filter {
            cfg,
            state: State::default(),
            now: NOW,
            counter: 0,
            no_randomness: false,
            unsent: None,
        }
    }

    /// A filter with the good discovery document and the full test JWKS loaded.
    pub fn ready(cfg: Config) -> Filter {
        Filter::ready_with(cfg, DISCOVERY, JWKS)
    }

    pub fn ready_with(cfg: Config, discovery: &[u8], jwks: &[u8]) -> Filter {
        let mut f = Filter::new(cfg);
        let (call, fetch) = f.poll().expect("discovery is due");
        assert_eq!(fetch, Fetch::Discovery);
        assert_eq!(
            header(&call.headers, ":path"),
            Some("/.well-known/openid-configuration")
        );
        f.provider_reply(fetch, Some((200, discovery))).unwrap();
        let (call, fetch) = f.poll().expect("JWKS is due");
        assert_eq!(fetch, Fetch::Jwks);
        assert_eq!(header(&call.headers, ":path"), Some("/oauth2/keys"));
        f.provider_reply(fetch, Some((200, jwks))).unwrap();
        assert!(flow::provider(&f.state).is_some(), "provider is ready");
        f
    }

    pub fn poll(&mut self) -> Option<(Callout, Fetch)> {
        self.state.provider.poll(&self.cfg, self.now)
    }

    pub fn provider_reply(
        &mut self,
        fetch: Fetch,
        reply: Option<(u16, &[u8])>,
    ) -> Result<String, String> {
        self.state
            .provider
            .on_reply(&self.cfg, fetch, reply, self.now)
    }

    pub fn request(&mut self, h: &Req) -> Step {
        let counter = &mut self.counter;
        let none = self.no_randomness;
        let mut random = || {
            if none {
                return None;
            }
            *counter += 1;
            let mut b = [0x5a; 32];
            b[..8].copy_from_slice(&counter.to_le_bytes());
            Some(b)
        };
        let mut env = Env {
            now: self.now,
            random: &mut random,
            unsent: None,
        };
        flow::on_request(&self.cfg, &mut self.state, &mut env, h)
    }

    pub fn reply(&mut self, pending: Box<Pending>, reply: Option<(u16, &[u8])>) -> Step {
        let counter = &mut self.counter;
        let mut random = || {
            *counter += 1;
            let mut b = [0xa5; 32];
            b[..8].copy_from_slice(&counter.to_le_bytes());
            Some(b)
        };
        let mut env = Env {
            now: self.now,
            random: &mut random,
            unsent: self.unsent.as_deref(),
        };
        flow::on_reply(&self.cfg, &mut self.state, &mut env, *pending, reply)
    }

    /// The IdP posts `body` to the back-channel logout path.
    pub fn backchannel(&mut self, body: &[u8]) -> Step {
        let mut random = || None;
        let env = Env {
            now: self.now,
            random: &mut random,
            unsent: None,
        };
        flow::on_backchannel_logout(&self.cfg, &mut self.state, &env, body)
    }

    /// Opens a sealed session cookie value (the joined chunks) with the configured keys.
    pub fn open_session(&self, jar: &Jar) -> Session {
        let sealed = oidc_filter::session::join(&jar.header(), &self.cfg.cookie_name)
            .unwrap()
            .unwrap();
        let plain = self.cfg.keys.open(&self.cfg.cookie_name, &sealed).unwrap();
        Session::decode(&plain).unwrap()
    }

    /// The session in `jar` sealed again as the builds before login ids sealed it (no login id).
    #[allow(dead_code)] // Not every test binary uses it.
    pub fn sealed_before_login_ids(&self, jar: &Jar) -> Jar {
        let mut s = self.open_session(jar);
        s.login_id = None;
        let name = &self.cfg.cookie_name;
        let sealed = self.cfg.keys.seal(name, &s.encode(), [3; 24]);
        Jar(oidc_filter::session::split(name, &sealed).unwrap())
    }
}

/// Request headers as Envoy would present them.
#[derive(Clone, Debug)]
pub struct Req(pub HashMap<String, String>);

impl Req {
    /// A browser navigation.
    pub fn browser(path: &str) -> Req {
        Req(HashMap::from([
            (":method".into(), "GET".into()),
            (":scheme".into(), "https".into()),
            (":authority".into(), HOST.into()),
            (":path".into(), path.into()),
            (
                "accept".into(),
                "text/html,application/xhtml+xml,*/*;q=0.8".into(),
            ),
            ("sec-fetch-mode".into(), "navigate".into()),
        ]))
    }

    /// A script or API client.
    pub fn api(path: &str) -> Req {
        Req(HashMap::from([
            (":method".into(), "GET".into()),
            (":scheme".into(), "https".into()),
            (":authority".into(), HOST.into()),
            (":path".into(), path.into()),
            ("accept".into(), "application/json".into()),
        ]))
    }

    pub fn with(mut self, name: &str, value: &str) -> Req {
        self.0.insert(name.into(), value.into());
        self
    }

    pub fn without(mut self, name: &str) -> Req {
        self.0.remove(name);
        self
    }

    pub fn cookies(self, jar: &Jar) -> Req {
        let h = jar.header();
        if h.is_empty() {
            self.without("cookie")
        } else {
            self.with("cookie", &h)
        }
    }
}

impl Headers for Req {
    fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.0
            .get(name)
            .map(|v| std::borrow::Cow::Borrowed(v.as_str()))
    }

    /// A request made with `.with(":body", "")`: its headers do not end the stream.
    fn body_follows(&self) -> bool {
        self.0.contains_key(":body")
    }
}

/// A browser's cookies: `Set-Cookie` values applied in order, `Max-Age=0` deletes.
#[derive(Clone, Debug, Default)]
pub struct Jar(pub Vec<(String, String)>);

impl Jar {
    pub fn apply<'a>(&mut self, set_cookies: impl IntoIterator<Item = &'a str>) {
        for c in set_cookies {
            let pair = c.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            if !c.contains("; Max-Age=0") {
                self.0.push((name.to_string(), value.to_string()));
            }
        }
    }

    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}

pub fn respond(step: Step) -> Reply {
    match step {
        Step::Respond(r) => r,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

pub fn forward(step: Step) -> Forward {
    match step {
        Step::Forward(f) => f,
        other => panic!("expected forward, got {other:?}"),
    }
}

pub fn call(step: Step) -> (Callout, Box<Pending>) {
    match step {
        Step::Call(c, p) => (c, p),
        other => panic!("expected a callout, got {other:?}"),
    }
}

/// The first value of header `name`.
pub fn header<'a, N: AsRef<str>, V: AsRef<str>>(
    headers: &'a [(N, V)],
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.as_ref() == name)
        .map(|(_, v)| v.as_ref())
}

pub fn set_cookies(r: &Reply) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| *n == "set-cookie")
        .map(|(_, v)| v.as_ref())
        .collect()
}

pub fn location(r: &Reply) -> &str {
    assert_eq!(r.status, 302, "{r:?}");
    header(&r.headers, "location").unwrap()
}

/// The query of a URL (or a path with a query) as a map; asserts no parameter repeats.
pub fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form(q.as_bytes())
}

pub fn form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in oidc_filter::form::parse(body) {
        assert!(
            out.insert(k.to_string(), v.to_string()).is_none(),
            "{k} repeats"
        );
    }
    out
}

/// The claims of a good ID token for the login with `nonce`.
pub fn claims(nonce: Option<&str>) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "user-1",
        "iat": NOW,
        "exp": NOW + 3600,
        "email": "user-1@example.com",
    });
    if let Some(n) = nonce {
        c["nonce"] = n.into();
    }
    c
}

/// The claims of an ID token a refresh at `now` brings: issued then, for an hour.
pub fn refreshed_claims(now: u64) -> serde_json::Value {
    let mut c = claims(None);
    c["iat"] = now.into();
    c["exp"] = (now + 3600).into();
    c
}

/// Signs `claims` with the test ES256 key under `kid`.
pub fn mint_with_kid(claims: &serde_json::Value, kid: &str) -> String {
    mint_as(claims, kid, None)
}

/// [`mint_with_kid`], with the header's `typ` set to `typ` if given.
pub fn mint_as(claims: &serde_json::Value, kid: &str, typ: Option<&str>) -> String {
    let key = ES256KeyPair::from_pem(ES256_PEM).unwrap().with_key_id(kid);
    let custom: serde_json::Map<String, serde_json::Value> = claims.as_object().unwrap().clone();
    // Every registered claim comes from `custom`, so the test (not the system clock) decides iat/exp.
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(1));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    match typ {
        None => key.sign(c).unwrap(),
        Some(typ) => {
            let options = HeaderOptions {
                signature_type: Some(typ.to_string()),
                ..Default::default()
            };
            key.sign_with_options(c, &options).unwrap()
        }
    }
}

pub fn mint(claims: &serde_json::Value) -> String {
    mint_with_kid(claims, "es256-1")
}

/// A token endpoint success answer.
pub fn token_body(id_token: Option<&str>, refresh_token: Option<&str>) -> Vec<u8> {
    let mut b = serde_json::json!({
        "access_token": "access-1",
        "token_type": "Bearer",
        "expires_in": 300,
    });
    if let Some(t) = id_token {
        b["id_token"] = t.into();
    }
    if let Some(t) = refresh_token {
        b["refresh_token"] = t.into();
    }
    b.to_string().into_bytes()
}

/// One login attempt as the browser sees it after `/login`.
#[derive(Debug)]
pub struct Login {
    pub auth_url: WebUrl,
    pub params: HashMap<String, String>,
    pub state: String,
    pub nonce: String,
    pub cookie_name: String,
    pub cookie_value: String,
    pub set_cookie: String,
    /// Opened from the login cookie with the configured keys.
    pub sealed: LoginState,
}

impl Login {
    pub fn cookie(&self) -> String {
        format!("{}={}", self.cookie_name, self.cookie_value)
    }

    /// The IdP's redirect back with `code`, carrying this attempt's cookie (and `jar`'s).
    pub fn callback(&self, code: &str, jar: &Jar) -> Req {
        let mut cookie = jar.header();
        if !cookie.is_empty() {
            cookie.push_str("; ");
        }
        cookie.push_str(&self.cookie());
        Req::browser(&format!(
            "/oauth2/callback?code={code}&state={}",
            self.state
        ))
        .with("sec-fetch-mode", "navigate")
        .with("cookie", &cookie)
    }
}

/// `/login?rd=…` (rd given raw, as it appears in the query).
pub fn start_login(f: &mut Filter, raw_query: &str) -> Login {
    // As the browser asks once the page of `/login` has read the fragment.
    let sep = if raw_query.is_empty() { "?" } else { "&" };
    let target = format!("/login{raw_query}{sep}fragment_read=");
    let r = respond(f.request(&Req::browser(&target)));
    login_from(f, &r)
}

/// The login attempt that `/login`'s answer `r` (a redirect to the IdP) started.
pub fn login_from(f: &Filter, r: &oidc_filter::flow::Reply) -> Login {
    let auth_url = WebUrl::parse(location(r)).unwrap();
    let params = query(auth_url.as_str());
    let state = params["state"].clone();
    let nonce = params["nonce"].clone();
    let sets = set_cookies(r);
    assert_eq!(sets.len(), 1, "{sets:?}");
    let set_cookie = sets[0].to_string();
    let (cookie_name, rest) = set_cookie.split_once('=').unwrap();
    let cookie_value = rest.split(';').next().unwrap().to_string();
    let plain = f.cfg.keys.open(cookie_name, &cookie_value).unwrap();
    let sealed = LoginState::decode(&plain).unwrap();
    Login {
        auth_url,
        params,
        state,
        nonce,
        cookie_name: cookie_name.to_string(),
        cookie_value,
        set_cookie,
        sealed,
    }
}

/// A whole login ending in a session; returns the browser's cookies and the ID token it was given.
pub fn log_in(f: &mut Filter, refresh_token: Option<&str>) -> (Jar, String) {
    log_in_with(f, refresh_token, |nonce| mint(&claims(Some(nonce))))
}

/// A whole login whose ID token `make_token(nonce)` builds.
pub fn log_in_with(
    f: &mut Filter,
    refresh_token: Option<&str>,
    make_token: impl Fn(&str) -> String,
) -> (Jar, String) {
    let login = start_login(f, "?rd=/app");
    let (_, pending) = call(f.request(&login.callback("code-1", &Jar::default())));
    let id_token = make_token(&login.nonce);
    let body = token_body(Some(&id_token), refresh_token);
    let r = respond(f.reply(pending, Some((200, &body))));
    assert_eq!(location(&r), "/app");
    let mut jar = Jar::default();
    jar.apply(set_cookies(&r));
    assert!(
        jar.get(&f.cfg.cookie_name).is_some(),
        "{:?}",
        set_cookies(&r)
    );
    (jar, id_token)
}

/// A small generator (SplitMix64) for the schedule tests (`*_schedules.rs`): each schedule is its seed's.
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `lo..hi`.
    pub fn within(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// True once in `n`, on average.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}
