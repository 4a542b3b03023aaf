//! Interoperability with a second, independent OpenID Provider: `oauth2-mock-server`
//! (`harness/idp/mock-op.mjs`), in a real Envoy (two workers) with Istio's `jwt_authn` and RBAC behind
//! the filter, in front of the echo app.
//!
//! It differs from the harness's usual IdP (`oidc-provider`) where a platform engineer would feel it:
//! it approves every authorization request at once (no login form, no session of its own), signs with
//! its keys in turn, puts only `iss`, `sub`, `aud`, `iat`, `exp`, `nbf` and the nonce into ID tokens,
//! issues JWT access tokens without an `aud`, rotates refresh tokens on every refresh, advertises
//! `token_endpoint_auth_methods_supported: ["none"]`, and reads the client id out of HTTP Basic
//! without form-decoding it (the mock runner's `conformant` setting undoes those last two for one mock).
//!
//! One site: its top level is configured as a platform engineer would for this IdP (`localhost`);
//! each `hosts` entry tries one more behaviour, most with a mock of their own. The stack's own IdP is
//! never started: nothing here uses it.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::browser::{describe_chain, query_param};
use harness::envoy::cluster_name;
use harness::idp::{ClientAuth, idp_dir, jwt_payload, node_bin, token_request};
use harness::process::{self, Process};
use harness::{Browser, Followed, HostSpec, Response, SiteSpec, Stack, StackSpec, unix_now};
use serde_json::{Value, json};

const SITE: &str = "interop";
/// Top level: the main mock, with the harness's default configuration (close to the README's minimal
/// example).
const MAIN: &str = "localhost";
/// 8-second tokens and `post_logout_redirect_uri`.
const SHORT: &str = "short.localhost";
/// `forward_token: access_token`, at the main mock (access tokens without `aud`).
const ACCESS: &str = "access.localhost";
/// `forward_token: access_token`, at a mock whose access tokens name this client in `aud`, and last
/// 8 seconds.
const ACCESS_AUD: &str = "access-aud.localhost";
/// An issuer with a trailing `/` (as Auth0's).
const SLASH: &str = "slash.localhost";
/// A mock with ES256, PS256 and EdDSA keys, which it signs with in turn.
const KEYS: &str = "keys.localhost";
/// Mocks that sign with algorithms the filter does not take: ES512 (P-521), and `Ed25519`, the
/// fully-specified name RFC 9864 gives EdDSA over Ed25519.
const ES512: &str = "es512.localhost";
const ED25519: &str = "ed25519.localhost";
/// A client id that form-encoding changes, with `client_secret_basic`…
const BASIC_ID: &str = "basic-id.localhost";
/// … and with `client_secret_post`.
const POST_ID: &str = "post-id.localhost";
/// The same with `client_secret_basic` at a mock made to decode it, as RFC 6749 2.3.1 says.
const DECODED_ID: &str = "decoded-id.localhost";
/// A mock whose clock lags 90 s, with one-minute tokens: they have expired by the gateway's clock when
/// they arrive (within `clock_leeway`).
const LAGGING: &str = "lagging.localhost";
const BASIC_CLIENT: &str = "urn:interop:basic";
const DECODED_CLIENT: &str = "urn:interop:decoded";
const POST_CLIENT: &str = "urn:interop:post";
/// The claims the mocks add to ID tokens (the library's own ID tokens name only `sub: johndoe`).
const EMAIL: &str = "johndoe@example.com";
const STAT: &str = "wasmcustom.oidc_filter.";
const SHORT_TTL: u64 = 8;

/// The `hosts` entries in order (their session cookies are `_oidc_session_<index>`): host, client id,
/// mock, entry overrides.
fn entries() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            SHORT,
            "short",
            "short",
            json!({"post_logout_redirect_uri": "/"}),
        ),
        (
            ACCESS,
            "access",
            "main",
            json!({"forward_token": "access_token"}),
        ),
        (
            ACCESS_AUD,
            "access-aud",
            "audience",
            json!({"forward_token": "access_token"}),
        ),
        (SLASH, "slash", "slash", json!({})),
        (KEYS, "keys", "keys", json!({})),
        (ES512, "es512", "es512", json!({})),
        (ED25519, "ed25519", "ed25519", json!({})),
        (BASIC_ID, BASIC_CLIENT, "main", json!({})),
        (
            POST_ID,
            POST_CLIENT,
            "main",
            json!({"token_endpoint_auth": "client_secret_post"}),
        ),
        (DECODED_ID, DECODED_CLIENT, "conformant", json!({})),
        (LAGGING, "lagging", "lagging", json!({})),
    ]
}

/// One `oauth2-mock-server`.
struct Mock {
    name: &'static str,
    issuer: String,
    process: Process,
}

impl Mock {
    fn start(dir: &std::path::Path, name: &'static str, settings: Value) -> Mock {
        let marker = idp_dir().join("node_modules/oauth2-mock-server/package.json");
        assert!(
            marker.exists(),
            "{} is missing: run harness/setup.sh (or `npm ci` in harness/idp)",
            marker.display()
        );
        let mut cmd = Command::new(node_bin());
        cmd.arg(idp_dir().join("mock-op.mjs"))
            .arg(settings.to_string());
        let mut process =
            Process::spawn_with_handshake(name, cmd, &dir.join(format!("{name}.log"))).unwrap();
        let port = process.wait_for_port(Duration::from_secs(30)).unwrap();
        let slash = if settings["trailing_slash"] == true {
            "/"
        } else {
            ""
        };
        Mock {
            name,
            issuer: format!("http://127.0.0.1:{port}{slash}"),
            process,
        }
    }

    fn log(&self) -> String {
        self.process.log().unwrap()
    }
}

struct Interop {
    stack: Stack,
    mocks: Vec<Mock>,
}

fn interop() -> &'static Interop {
    static INTEROP: OnceLock<Interop> = OnceLock::new();
    INTEROP.get_or_init(|| {
        let t0 = Instant::now();
        // Not under the stack's directory, which the stack empties when it starts.
        let dir = harness::target_dir().join("e2e/interop-mocks");
        let _ = std::fs::remove_dir_all(&dir);
        let claims = json!({
            "email": EMAIL,
            "email_verified": true,
            "preferred_username": "johndoe",
            "name": "John Doe",
            "groups": ["users"],
        });
        let mocks = vec![
            Mock::start(&dir, "main", json!({"id_token_claims": claims})),
            Mock::start(
                &dir,
                "short",
                json!({"id_token_claims": claims, "token_ttl": SHORT_TTL}),
            ),
            Mock::start(
                &dir,
                "audience",
                json!({
                    "id_token_claims": claims,
                    "access_token_claims": {"aud": "access-aud"},
                    "token_ttl": SHORT_TTL,
                }),
            ),
            Mock::start(
                &dir,
                "slash",
                json!({"id_token_claims": claims, "trailing_slash": true}),
            ),
            Mock::start(
                &dir,
                "keys",
                json!({"id_token_claims": claims, "algs": ["ES256", "PS256", "EdDSA"]}),
            ),
            Mock::start(
                &dir,
                "conformant",
                json!({"id_token_claims": claims, "conformant": true}),
            ),
            Mock::start(
                &dir,
                "lagging",
                json!({"id_token_claims": claims, "token_ttl": 60, "clock_offset": -90}),
            ),
            Mock::start(
                &dir,
                "es512",
                json!({"id_token_claims": claims, "algs": ["ES512"]}),
            ),
            Mock::start(
                &dir,
                "ed25519",
                json!({"id_token_claims": claims, "algs": ["Ed25519"]}),
            ),
        ];
        let issuer_of = |name: &str| {
            mocks
                .iter()
                .find(|m| m.name == name)
                .unwrap()
                .issuer
                .clone()
        };
        let at = |name: &str| {
            let issuer = issuer_of(name);
            json!({"issuer": issuer, "idp_cluster": cluster_name(&issuer).unwrap()})
        };
        let mut site = SiteSpec::new(SITE).filter(at("main"));
        for (host, client, mock, overrides) in entries() {
            site = site.host(
                HostSpec::new(client, 0, &[host])
                    .filter(at(mock))
                    .filter(overrides),
            );
        }
        let spec = StackSpec {
            start_idp: false,
            ..StackSpec::new("interop", vec![site])
        };
        let stack = Stack::start(spec).unwrap();
        let interop = Interop { stack, mocks };
        interop.wait_until_ready();
        eprintln!("stack up in {:?}", t0.elapsed());
        interop
    })
}

impl Interop {
    /// Every host's `/login` sends ten fresh connections in a row to the IdP, and those reached every
    /// worker ([`Stack::until_every_worker`]): each worker has loaded discovery and keys of each issuer.
    fn wait_until_ready(&self) {
        // Not those whose IdP has no key the filter takes: they never get ready.
        let hosts = std::iter::once(MAIN)
            .chain(entries().into_iter().map(|e| e.0))
            .filter(|h| ![ES512, ED25519].contains(h));
        for host in hosts {
            let url = self.url(host, "/login");
            self.stack
                .until_every_worker(SITE, Duration::from_secs(90), || {
                    Browser::new().get(&url).is_ok_and(|r| r.status == 302)
                })
                .unwrap_or_else(|e| {
                    panic!(
                        "{host} never got ready: {e:#}\n{}",
                        self.stack.envoy_log().unwrap()
                    )
                });
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        self.stack.site(SITE).unwrap().host_url(host, path)
    }

    fn mock(&self, name: &str) -> &Mock {
        self.mocks.iter().find(|m| m.name == name).unwrap()
    }

    fn stat(&self, name: &str) -> u64 {
        let stats = self.stack.envoy_stats().unwrap();
        stats.get(&format!("{STAT}{name}")).copied().unwrap_or(0)
    }
}

fn url(host: &str, path: &str) -> String {
    interop().url(host, path)
}

fn issuer(mock: &str) -> String {
    interop().mock(mock).issuer.clone()
}

/// The session cookie of `host`: the top level's, or its `hosts` entry's.
fn session_cookie(host: &str) -> String {
    match entries().iter().position(|e| e.0 == host) {
        None => "_oidc_session".into(),
        Some(i) => format!("_oidc_session_{i}"),
    }
}

/// A browser's navigation to `url`, every redirect followed.
fn navigate(b: &Browser, url: &str) -> Followed {
    b.follow(b.get(url).unwrap(), 20).unwrap()
}

/// Logs in from `url` and asserts the browser lands back there, at the app, having passed the IdP
/// without a page of its own. Returns the chain's authorization request and the app's page.
fn login(b: &Browser, url: &str) -> (String, Response) {
    let done = navigate(b, url);
    let chain = describe_chain(&done.chain);
    let r = done.response;
    assert_eq!(r.status, 200, "{chain}\n{}", r.body);
    assert_eq!(r.url, url, "{chain}");
    assert!(
        r.body.contains("<pre id=\"echo\">"),
        "not the app: {}",
        r.body
    );
    let authorize = done
        .chain
        .iter()
        .find(|(u, _)| u.contains("/authorize?"))
        .unwrap_or_else(|| panic!("no authorization request: {chain}"));
    assert_eq!(authorize.1, 302, "the mock approves at once: {chain}");
    (authorize.0.clone(), r)
}

/// What the app received for a GET of `url` (as an API client).
fn echo(b: &Browser, url: &str) -> Value {
    let r = b.get_with(url, &[("accept", "application/json")]).unwrap();
    assert_eq!(r.status, 200, "{url}: {}", r.body);
    r.json().unwrap()
}

/// The token the app received as `Authorization: Bearer`.
fn bearer(echo: &Value) -> String {
    let auth = echo["headers"]["authorization"]
        .as_str()
        .unwrap_or_else(|| panic!("no authorization header: {echo}"));
    auth.strip_prefix("Bearer ").unwrap().to_string()
}

/// A JWT's header.
fn jwt_header(jwt: &str) -> Value {
    use base64::Engine as _;
    let h = jwt.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

// --- the login ---

#[test]
fn a_browser_logs_in_through_the_mock_without_a_form_and_the_app_gets_the_id_token() {
    let b = Browser::new();
    let start = url(MAIN, "/dashboards?tab=1");
    let r = b.get(&start).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/login?rd=%2Fdashboards%3Ftab%3D1")
    );

    let (authorize, page) = login(&b, &start);
    assert!(
        authorize.starts_with(&format!("{}/authorize?", issuer("main"))),
        "{authorize}"
    );
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(
        page.body.contains(&format!("Hello, {EMAIL}")),
        "{}",
        page.body
    );

    let seen = echo(&b, &start);
    let token = bearer(&seen);
    let claims = jwt_payload(&token).unwrap();
    assert_eq!(claims["iss"], issuer("main"));
    assert_eq!(claims["aud"], SITE);
    assert_eq!(claims["sub"], "johndoe");
    // The library keeps the request's nonce per code and puts it into the ID token.
    assert_eq!(
        claims["nonce"].as_str(),
        query_param(&authorize, "nonce").as_deref()
    );
    assert_eq!(jwt_header(&token)["alg"], "RS256");
    let h = &seen["headers"];
    assert_eq!(h["x-auth-request-user"], "johndoe");
    assert_eq!(h["x-auth-request-email"], EMAIL);
    assert_eq!(h["x-auth-request-preferred-username"], "johndoe");
    assert_eq!(h["x-auth-request-groups"], "users");
    let cookie = h["cookie"].as_str().unwrap_or_default();
    assert!(!cookie.contains("_oidc_session"), "{cookie}");
    assert!(b.cookie("localhost", "_oidc_session").is_some());
    assert!(interop().stat("logins_completed") >= 1);
}

#[test]
fn the_mocks_discovery_says_it_supports_no_client_authentication_and_the_filter_warns() {
    // `token_endpoint_auth_methods_supported: ["none"]`, yet the mock takes any client
    // authentication: the operator sees a warning that logins may fail, and they do not.
    interop();
    let lacks = |auth: &str, mock: &str| {
        format!(
            "{}: token_endpoint_auth_methods_supported lacks `{auth}`: logins may fail",
            issuer(mock)
        )
    };
    for auth in ["client_secret_basic", "client_secret_post"] {
        interop()
            .stack
            .wait_for_envoy_log(&lacks(auth, "main"), Duration::from_secs(10))
            .unwrap();
    }
    login(&Browser::new(), &url(MAIN, "/"));
    // A mock whose document lists what it takes draws no warning (it has been loaded: its host is
    // ready).
    let log = interop().stack.envoy_log().unwrap();
    assert!(
        log.contains(&format!(
            "{}: discovery document loaded",
            issuer("conformant")
        )),
        "{log}"
    );
    assert!(!log.contains(&lacks("client_secret_basic", "conformant")));
}

// --- Istio's jwt_authn behind the filter ---

#[test]
fn jwt_authn_accepts_the_forwarded_id_token_and_refuses_a_forged_one() {
    let b = Browser::new();
    // RBAC demands a principal from jwt_authn: a 200 at the app is jwt_authn's approval.
    login(&b, &url(MAIN, "/"));
    let token = bearer(&echo(&b, &url(MAIN, "/api")));

    // The same token from an API client without a session: the filter lets it through untouched, and
    // jwt_authn (with the mock's JWKS, fetched by Envoy) judges it.
    let api = |token: &str| {
        Browser::new()
            .get_with(
                &url(MAIN, "/api"),
                &[
                    ("accept", "application/json"),
                    ("authorization", &format!("Bearer {token}")),
                ],
            )
            .unwrap()
    };
    let r = api(&token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(bearer(&r.json().unwrap()), token);

    let (head, _) = token.rsplit_once('.').unwrap();
    let r = api(&format!("{head}.{}", "A".repeat(342)));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("Jwt verification fails"), "{}", r.body);
}

// --- refresh ---

#[test]
fn a_due_token_is_refreshed_at_the_mock_before_it_expires() {
    let b = Browser::new();
    let start = url(SHORT, "/");
    login(&b, &start);
    let first = bearer(&echo(&b, &start));
    let first_claims = jwt_payload(&first).unwrap();
    assert_eq!(
        first_claims["exp"].as_u64().unwrap() - first_claims["iat"].as_u64().unwrap(),
        SHORT_TTL
    );
    let refreshes = interop().stat("refreshes");

    // Every request until the token changes: the app never gets an expired one. The filter refreshes
    // when half of an 8-second token's life is left (refresh_margin caps at half the life).
    let (renewed, response) = process::poll(Duration::from_secs(3 * SHORT_TTL), || {
        let r = b
            .get_with(&start, &[("accept", "application/json")])
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let token = bearer(&r.json().unwrap());
        let exp = jwt_payload(&token).unwrap()["exp"].as_u64().unwrap();
        assert!(exp > unix_now(), "the app got an expired token");
        std::thread::sleep(Duration::from_millis(250));
        Ok((token != first).then_some((token, r)))
    })
    .unwrap();
    let claims = jwt_payload(&renewed).unwrap();
    assert_eq!(claims["iss"], issuer("short"));
    assert_eq!(claims["sub"], first_claims["sub"]);
    assert_eq!(claims["aud"], "short");
    assert!(claims["iat"].as_u64() > first_claims["iat"].as_u64());
    // A refreshed ID token carries no nonce (OIDC Core 12.2 does not ask for one).
    assert!(claims.get("nonce").is_none(), "{claims}");
    assert_eq!(
        response.json().unwrap()["headers"]["x-auth-request-email"],
        EMAIL
    );
    let cookie = format!("{}=", session_cookie(SHORT));
    assert!(
        response
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(&cookie)),
        "the renewed session comes back: {:?}",
        response.set_cookies()
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(interop().stat("refreshes") > refreshes);
    assert!(
        interop()
            .mock("short")
            .log()
            .lines()
            .filter(|l| l.starts_with("POST /token 200"))
            .count()
            >= 2
    );
    // The renewed session (with the rotated refresh token) keeps working.
    assert_eq!(bearer(&echo(&b, &start)), renewed);
}

// --- logout ---

#[test]
fn logout_without_a_post_logout_redirect_uri_ends_on_the_mocks_plain_text_page() {
    let b = Browser::new();
    login(&b, &url(MAIN, "/"));
    let id_token = bearer(&echo(&b, &url(MAIN, "/")));

    let r = b.get(&url(MAIN, "/logout")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let to = r.location().unwrap();
    assert!(
        to.starts_with(&format!("{}/endsession?", issuer("main"))),
        "{to}"
    );
    assert_eq!(query_param(&to, "client_id").as_deref(), Some(SITE));
    assert_eq!(
        query_param(&to, "id_token_hint").as_deref(),
        Some(id_token.as_str())
    );
    assert_eq!(query_param(&to, "post_logout_redirect_uri"), None);
    assert!(b.cookie("localhost", "_oidc_session").is_none());

    // With no post_logout_redirect_uri the mock answers with a bare text page: the user is left
    // at the IdP, as the filter's default configuration does at any IdP.
    let page = b.get(&to).unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.body, "Logout successful");

    // The mock keeps no session, so the next visit logs straight back in: a new session.
    login(&b, &url(MAIN, "/"));
    assert_ne!(bearer(&echo(&b, &url(MAIN, "/"))), id_token);
}

#[test]
fn logout_with_a_post_logout_redirect_uri_comes_back_and_the_mock_logs_straight_back_in() {
    let b = Browser::new();
    let home = url(SHORT, "/");
    login(&b, &home);
    let id_token = bearer(&echo(&b, &home));

    let r = b.get(&url(SHORT, "/logout")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let to = r.location().unwrap();
    assert!(
        to.starts_with(&format!("{}/endsession?", issuer("short"))),
        "{to}"
    );
    assert_eq!(
        query_param(&to, "post_logout_redirect_uri").as_deref(),
        Some(home.as_str())
    );
    assert_eq!(
        query_param(&to, "id_token_hint").as_deref(),
        Some(id_token.as_str())
    );

    // What the user sees: back at the site, which (no session) sends them to log in, which the mock
    // approves at once. Logging out of a site behind this IdP ends only the site's session.
    let done = b.follow(r, 20).unwrap();
    let chain = describe_chain(&done.chain);
    assert_eq!(done.response.status, 200, "{chain}");
    assert_eq!(done.response.url, home, "{chain}");
    let urls: Vec<&str> = done.chain.iter().map(|(u, _)| u.as_str()).collect();
    assert!(urls.iter().any(|u| u.contains("/endsession?")), "{chain}");
    assert!(urls.iter().any(|u| u.contains("/authorize?")), "{chain}");
    assert_ne!(bearer(&echo(&b, &home)), id_token);
}

#[test]
fn a_code_injected_into_another_login_is_refused_by_the_mocks_pkce_check() {
    // Browser A starts a login and stops at the IdP; browser B completes its own at the mock, and its
    // code is then delivered with A's state: the filter redeems B's code with A's verifier, which the
    // mock refuses (RFC 7636 4.6), and A gets no session. The mock answers with
    // `application/problem+json` and no `error` member (RFC 6749 5.2 requires one): the filter reads
    // it as a failed token endpoint, its 502 page.
    let victim = Browser::new();
    let r = victim.get(&url(MAIN, "/login?rd=/")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let state = query_param(&r.location().unwrap(), "state").unwrap();

    let attacker = Browser::new();
    let r = attacker.get(&url(MAIN, "/login?rd=/")).unwrap();
    let r = attacker.get(&r.location().unwrap()).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = r.location().unwrap();
    let code = query_param(&callback, "code").unwrap();

    const FILTER_SAYS: &str =
        "login callback failed (token_endpoint), answered 502: token endpoint answered status 400";
    const MOCK_SAYS: &str = "POST /token 400";
    let said = || {
        (
            interop()
                .stack
                .envoy_log()
                .unwrap()
                .matches(FILTER_SAYS)
                .count(),
            interop().mock("main").log().matches(MOCK_SAYS).count(),
        )
    };
    let before = said();
    let r = victim
        .get(&url(
            MAIN,
            &format!("/oauth2/callback?code={code}&state={state}"),
        ))
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(victim.cookie("localhost", "_oidc_session").is_none());
    // This exchange's refusal, not an earlier one: one more of each line than before it.
    harness::process::poll(Duration::from_secs(10), || {
        let (filter, mock) = said();
        Ok((filter > before.0 && mock > before.1).then_some(()))
    })
    .unwrap_or_else(|e| panic!("the mock's refusal, as the filter read it: {e:#}; {before:?}"));
}

// --- forward_token: access_token ---

#[test]
fn forwarding_the_mocks_access_token_fails_at_jwt_authn_for_want_of_an_audience() {
    // The login itself completes; the access token (a JWT: iss, sub, scope, amr, no aud) goes
    // upstream, and jwt_authn, whose provider lists the client id in `audiences` (as a
    // RequestAuthentication with `audiences` does), refuses it. The user sees jwt_authn's 403.
    let b = Browser::new();
    let completed = interop().stat("logins_completed");
    let done = navigate(&b, &url(ACCESS, "/"));
    let chain = describe_chain(&done.chain);
    assert!(
        done.chain
            .iter()
            .any(|(u, s)| u.contains("/oauth2/callback?") && *s == 302),
        "{chain}"
    );
    assert!(interop().stat("logins_completed") > completed);
    assert!(b.cookie(ACCESS, &session_cookie(ACCESS)).is_some());
    assert_eq!(done.response.status, 403, "{chain}\n{}", done.response.body);
    assert_eq!(done.response.body, "Audiences in Jwt are not allowed");

    // What the mock issues: a JWT access token without `aud`.
    let (status, tokens) = token_request(
        &issuer("main"),
        "access",
        "secret-access",
        ClientAuth::Basic,
        &[("grant_type", "password"), ("username", "johndoe")],
    )
    .unwrap();
    assert_eq!(status, 200, "{tokens}");
    let access = jwt_payload(tokens["access_token"].as_str().unwrap()).unwrap();
    assert!(access.get("aud").is_none(), "{access}");
    assert_eq!(access["iss"], issuer("main"));
}

#[test]
fn forwarding_an_access_token_that_names_the_client_works() {
    let b = Browser::new();
    let start = url(ACCESS_AUD, "/");
    login(&b, &start);
    let seen = echo(&b, &start);
    let token = bearer(&seen);
    let claims = jwt_payload(&token).unwrap();
    assert_eq!(claims["aud"], "access-aud");
    assert_eq!(claims["iss"], issuer("audience"));
    // The library ignores the requested scopes: the access token says `dummy`.
    assert_eq!(claims["scope"], "dummy");
    assert!(claims.get("nonce").is_none(), "an access token: {claims}");
    // Identity headers still come from the ID token.
    assert_eq!(seen["headers"]["x-auth-request-email"], EMAIL);

    // Due by `expires_in`, the access token is refreshed too, and jwt_authn takes the new one.
    let renewed = process::poll(Duration::from_secs(3 * SHORT_TTL), || {
        let now_token = bearer(&echo(&b, &start));
        let exp = jwt_payload(&now_token).unwrap()["exp"].as_u64().unwrap();
        assert!(exp > unix_now(), "the app got an expired token");
        std::thread::sleep(Duration::from_millis(250));
        Ok((now_token != token).then_some(now_token))
    })
    .unwrap();
    let renewed = jwt_payload(&renewed).unwrap();
    assert_eq!(renewed["aud"], "access-aud");
    assert!(renewed["iat"].as_u64() > claims["iat"].as_u64());
}

/// An IdP whose clock lags by more than its tokens' lifetime issues tokens that have expired by the
/// gateway's clock (accepted within `clock_leeway`). A session made of one would be dropped by the
/// browser at once and send it back to log in, for ever: the login fails instead, saying why.
#[test]
fn tokens_expired_by_the_gateways_clock_fail_the_login_instead_of_looping() {
    let before = interop().stat("callback_failures.id_token");
    let b = Browser::new();
    let done = navigate(&b, &url(LAGGING, "/"));
    let chain = describe_chain(&done.chain);
    assert_eq!(done.response.status, 502, "{chain}\n{}", done.response.body);
    assert!(
        done.response.body.contains("clocks of the two differ"),
        "{}",
        done.response.body
    );
    let logins = done
        .chain
        .iter()
        .filter(|(u, _)| u.contains("/login"))
        .count();
    assert_eq!(logins, 1, "one login, no loop: {chain}");
    assert!(
        b.cookie(LAGGING, &session_cookie(LAGGING)).is_none(),
        "no session"
    );
    assert_eq!(interop().stat("callback_failures.id_token"), before + 1);
    interop()
        .stack
        .wait_for_envoy_log(
            "the gateway's and the IdP's clocks differ",
            Duration::from_secs(5),
        )
        .unwrap();
}

// --- issuers and keys ---

#[test]
fn an_issuer_with_a_trailing_slash_works() {
    let b = Browser::new();
    let start = url(SLASH, "/");
    login(&b, &start);
    let claims = jwt_payload(&bearer(&echo(&b, &start))).unwrap();
    assert!(issuer("slash").ends_with('/'));
    assert_eq!(claims["iss"], issuer("slash"));
    // OIDC Discovery 4.1: the trailing `/` goes before `/.well-known/…` is appended.
    let log = interop().mock("slash").log();
    assert!(
        log.contains("GET /.well-known/openid-configuration 200"),
        "{log}"
    );
    assert!(!log.contains(" 404 "), "{log}");
}

#[test]
fn the_mock_signs_with_each_of_its_keys_in_turn_and_every_one_is_accepted() {
    // Three keys, two tokens per response (access, then ID): three logins see each key sign an ID
    // token, while the mock's discovery claims `id_token_signing_alg_values_supported: ["RS256"]`.
    let mut algs = BTreeSet::new();
    let mut kids = BTreeSet::new();
    for _ in 0..3 {
        let b = Browser::new();
        let start = url(KEYS, "/");
        login(&b, &start);
        let token = bearer(&echo(&b, &start));
        let header = jwt_header(&token);
        algs.insert(header["alg"].as_str().unwrap().to_string());
        kids.insert(header["kid"].as_str().unwrap().to_string());
    }
    let want: BTreeSet<String> = ["ES256", "EdDSA", "PS256"].map(String::from).into();
    assert_eq!(algs, want);
    assert_eq!(kids.len(), 3);
}

#[test]
fn a_key_set_only_of_algorithms_the_filter_does_not_take_leaves_the_site_unavailable() {
    // Neither algorithm is an OIDC requirement (only RS256 is, OIDC Core 15.1), so this is a limit of
    // the filter, not a fault: it skips such keys, and with no usable key left it never gets ready.
    // The operator sees a warning per try; every user gets 503 (no login is even started).
    for (host, mock) in [(ES512, "es512"), (ED25519, "ed25519")] {
        let line = format!(
            "fetching the JWKS of {} (cluster `{}`) failed: JWKS has no usable signing key (1 skipped): \
             the filter takes RSA keys of 2048 to 4096 bits with exponent 65537 (RS256, RS384, RS512, \
             PS256, PS384, PS512), P-256 (ES256), P-384 (ES384) and Ed25519 (EdDSA) keys whose alg, if \
             any, is one of those; not HMAC (HS256); retrying",
            issuer(mock),
            cluster_name(&issuer(mock)).unwrap()
        );
        interop()
            .stack
            .wait_for_envoy_log(&line, Duration::from_secs(10))
            .unwrap();
        for path in ["/", "/login"] {
            let r = Browser::new().get(&url(host, path)).unwrap();
            assert_eq!(r.status, 503, "{host}{path}: {}", r.body);
            // When the worker tries the IdP again: its tries back off from 1 s to 30 s.
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!(
                (1..=31).contains(&retry),
                "{host}{path}: Retry-After {retry}"
            );
        }
        assert!(
            !interop().mock(mock).log().contains("/authorize"),
            "no login was started at {mock}"
        );
    }
}

// --- client authentication ---

#[test]
fn a_client_id_that_form_encoding_changes_fails_with_basic_and_works_with_post() {
    // RFC 6749 2.3.1: the client id is form-encoded before it goes into HTTP Basic, and the server
    // decodes it. The mock does not decode, so its ID token is for `urn%3Ainterop%3Abasic`, and
    // the filter refuses it (rightly: the token is not for this client) with its 502 page.
    let b = Browser::new();
    let done = navigate(&b, &url(BASIC_ID, "/"));
    let chain = describe_chain(&done.chain);
    assert_eq!(done.response.status, 502, "{chain}\n{}", done.response.body);
    assert!(
        done.response
            .body
            .contains("The identity provider's ID token did not pass validation."),
        "{}",
        done.response.body
    );
    assert!(
        done.chain
            .last()
            .is_some_and(|(u, _)| u.contains("/oauth2/callback?")),
        "{chain}"
    );
    interop()
        .stack
        .wait_for_envoy_log(
            "login callback failed (id_token), answered 502: ID token aud does not include our client id",
            Duration::from_secs(10),
        )
        .unwrap();
    let (status, tokens) = token_request(
        &issuer("main"),
        BASIC_CLIENT,
        "secret",
        ClientAuth::Basic,
        &[("grant_type", "password"), ("username", "johndoe")],
    )
    .unwrap();
    assert_eq!(status, 200);
    let id = jwt_payload(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(id["aud"], "urn%3Ainterop%3Abasic");

    // The same client id in the form (client_secret_post) arrives as sent.
    let b = Browser::new();
    let start = url(POST_ID, "/");
    login(&b, &start);
    let claims = jwt_payload(&bearer(&echo(&b, &start))).unwrap();
    assert_eq!(claims["aud"], POST_CLIENT);

    // And with client_secret_basic at a mock that decodes it (`conformant`).
    let b = Browser::new();
    let start = url(DECODED_ID, "/");
    login(&b, &start);
    let claims = jwt_payload(&bearer(&echo(&b, &start))).unwrap();
    assert_eq!(claims["aud"], DECODED_CLIENT);
}
