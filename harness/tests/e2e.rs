//! End to end: the filter in a real Envoy, with Istio's jwt_authn and RBAC behind it, in front of
//! the echo app, against the real IdP behind the fault proxy. Each test asserts what a user (or an
//! API client, or an operator reading stats and logs) would notice.
//!
//! One stack for the whole binary, one site per configuration variant. Tests run in parallel, each
//! with its own `Browser`; the few that switch the IdP proxy's mode, or count the filter's Envoy-wide
//! counters exactly, hold the IdP lock exclusively; every other test that sends requests through the
//! filter holds it shared (so that nothing moves a counter while a test holds it exclusively).

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::browser::{Cookie, describe_chain, query_param};
use harness::idp::jwt_payload;
use harness::idp_hold;
use harness::{
    AccessLog, Browser, DEFAULT_COOKIE_KEYS, Envoy, EnvoyConfig, EnvoyOptions, EnvoySite, Mode,
    Response, Site, SiteSpec, Stack, StackSpec, default_filter_config, wasm_path,
};
use serde_json::{Value, json};

/// A second cookie key (base64url of 32 bytes), for the rotation sites.
const KEY_B: &str = "ZTJlLXJvdGF0ZWQtY29va2llLWtleS0wMDAwMDAwMDA";
const SESSION: &str = "_oidc_session";
const LOGIN_COOKIE_PREFIX: &str = "_oidc_session_login_";
const STAT: &str = "wasmcustom.oidc_filter.";
/// The ID token lifetime (seconds) of site `refresh`, renewed in its last half.
const REFRESH_TTL: u64 = 8;
/// Site `accesshdr`'s header for the access token, and that token's lifetime (seconds).
const ACCESS_HEADER: &str = "x-forwarded-access-token";
const ACCESS_TTL: u64 = 8;
/// How long after the login site `capped`'s IdP ends its tokens (seconds); renewed in its last half.
const CAPPED_LIFE: u64 = 10;

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let t0 = Instant::now();
        let sites = vec![
            SiteSpec::new("main").filter(json!({"post_logout_redirect_uri": "/"})),
            // Opaque access tokens: jwt_authn could not judge them, so this site has no Istio authn.
            {
                let mut s = SiteSpec::new("access")
                    .filter(json!({
                        "forward_token": "access_token",
                        "token_endpoint_auth": "client_secret_post",
                    }))
                    .idp_client(json!({"token_endpoint_auth_method": "client_secret_post"}));
                s.istio_authn = false;
                s
            },
            // The access token beside the ID token, in a header of its own; it lives 8 s, the ID
            // token an hour.
            SiteSpec::new("accesshdr")
                .filter(json!({"access_token_header": ACCESS_HEADER, "refresh_margin": "4s"}))
                .idp_client(json!({"access_token_ttl": ACCESS_TTL})),
            SiteSpec::new("big").idp_client(json!({"extra_claims_bytes": 4000})),
            // An 8 s ID token renewed in its last 4 s (half its life): a request has 3 s or more to
            // arrive on either side of a renewal, which a loaded machine keeps.
            SiteSpec::new("refresh")
                .filter(json!({"refresh_margin": "4s"}))
                .idp_client(json!({"id_token_ttl": REFRESH_TTL})),
            // As `refresh`, for the logout of a renewed session alone on its site (it counts the
            // workers' connections).
            SiteSpec::new("renewedlogout")
                .filter(json!({"refresh_margin": "4s"}))
                .idp_client(json!({"id_token_ttl": REFRESH_TTL})),
            // Its IdP ends tokens 10 s after the login, as IdPs that cap them at the end of their own
            // session: a renewal's ID token expires when the one it renews does.
            SiteSpec::new("capped").idp_client(json!({"tokens_end_after_login": CAPPED_LIFE})),
            SiteSpec::new("rotating")
                .filter(json!({"refresh_margin": "1s"}))
                .idp_client(json!({"id_token_ttl": 3, "rotate_refresh_token": true})),
            SiteSpec::new("norefresh")
                .filter(json!({"refresh_margin": "1s"}))
                .idp_client(json!({"id_token_ttl": 3, "refresh": false})),
            // Its ID tokens carry Entra ID's `login_hint` claim.
            SiteSpec::new("nologout")
                .idp_client(json!({"post_logout_redirect_uris": null, "login_hint": true})),
            // `sid` in its ID tokens (the `claims` parameter), without back-channel logout.
            SiteSpec::new("sid").filter(json!({
                "authorization_params": {"claims": "{\"id_token\":{\"sid\":null}}"},
            })),
            SiteSpec::new("slow").filter(json!({"callout_timeout": "2s"})),
            // Asks the IdP to log the user in again, whatever session it has (OIDC Core 3.1.2.1).
            SiteSpec::new("relogin").filter(json!({"authorization_params": {"prompt": "login"}})),
            // Only an authentication of the last 5 s will do (OIDC Core 3.1.2.1), to the second (5:
            // a login through the IdP's form on a loaded machine takes well under that).
            SiteSpec::new("recent").filter(json!({
                "authorization_params": {"max_age": "5"},
                "clock_leeway": "0s",
            })),
            // The RBAC policy lets OPTIONS through (an AuthorizationPolicy with notMethods: OPTIONS).
            SiteSpec::new("cors").filter(json!({"pass_cors_preflight": true})),
            // Behind a load balancer that terminates TLS and says so in `X-Forwarded-Proto`: the
            // gateway trusts one hop (Istio: `numTrustedProxies: 1`).
            SiteSpec {
                hcm_overrides: json!({"xff_num_trusted_hops": 1}),
                ..SiteSpec::new("behindlb")
            },
            // `main`'s client behind keys [B, A] and [B]: sessions sealed by `main` (key A) open on
            // the first only. No logins here, so their IdP registrations are unused placeholders.
            rotation_site("rotated", json!([KEY_B, DEFAULT_COOKIE_KEYS])),
            rotation_site("newkey", json!([KEY_B])),
        ];
        let spec = StackSpec {
            envoy_component_log_level: Some("wasm:debug".into()),
            ..StackSpec::new("e2e", sites)
        };
        let stack = Stack::start(spec).unwrap();
        stack
            .wait_keys_loaded(Duration::from_secs(75))
            .unwrap_or_else(|e| panic!("filter not ready: {e:#}"));
        eprintln!("stack up in {:?}", t0.elapsed());
        stack
    })
}

fn rotation_site(name: &str, keys: Value) -> SiteSpec {
    let mut s = SiteSpec::new(name)
        .filter(json!({"cookie_keys_env": null, "cookie_keys": keys}))
        .idp_client(json!({"client_id": format!("{name}-unused")}));
    s.client_id = "main".into();
    s
}

fn site(name: &str) -> &'static Site {
    stack().site(name).unwrap()
}

/// Logs alice in from `path` of `site`; asserts she lands back on it, at the app.
fn login(b: &Browser, site: &Site, path: &str) -> Response {
    let done = b.login(&site.url(path), "alice").unwrap();
    let r = done.response;
    assert_eq!(r.status, 200, "{}\n{}", describe_chain(&done.chain), r.body);
    assert_eq!(r.url, site.url(path), "{}", describe_chain(&done.chain));
    r
}

/// Follows a login from `start` through the IdP's form up to the redirect back to `site`'s
/// callback, and returns that callback URL without requesting it.
fn until_callback(b: &Browser, site: &Site, start: &str) -> String {
    b.until_callback(start, &site.url("/oauth2/callback?"), "alice")
        .unwrap()
}

/// A request as an API client would send it (JSON wanted); the echo app answers in JSON.
fn api(b: &Browser, url: &str) -> Response {
    b.get_with(url, &[("accept", "application/json")]).unwrap()
}

/// What the app received, from its JSON echo.
fn echoed(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{} {}", r.url, r.body);
    r.json().unwrap()
}

/// The bearer token the app received.
fn app_bearer(r: &Response) -> String {
    let e = echoed(r);
    let auth = e["headers"]["authorization"].as_str().unwrap_or_default();
    auth.strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("no bearer reached the app: {e}"))
        .to_string()
}

/// The `Set-Cookie` line of `r` for cookie `name`.
fn set_cookie<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.set_cookies()
        .into_iter()
        .find(|c| c.split('=').next() == Some(name))
}

fn session_cookies(b: &Browser) -> Vec<Cookie> {
    b.stored_cookies("localhost")
        .into_iter()
        .filter(|c| c.name == SESSION || c.name.starts_with("_oidc_session."))
        .collect()
}

fn assert_login_redirect(r: &Response, rd: &str) {
    assert_eq!(r.status, 302, "{} {}", r.url, r.body);
    let loc = r.header("location").unwrap();
    assert_eq!(query_param(loc, "rd").as_deref(), Some(rd), "{loc}");
    assert!(loc.starts_with("/login?"), "{loc}");
}

fn assert_json_401(r: &Response) {
    assert_eq!(r.status, 401, "{} {}", r.url, r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.header("location").is_none());
    assert!(r.json().unwrap()["error"].is_string(), "{}", r.body);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sleeps until the Unix time `t` (seconds) has passed by `extra`.
fn sleep_until_unix(t: u64, extra: Duration) {
    let wait = t as f64 + extra.as_secs_f64() - unix_now();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
}

fn stats() -> HashMap<String, u64> {
    stack().envoy_stats().unwrap()
}

/// Polls until counter `oidc_filter.NAME` is above its value in `before`. Only under the exclusive hold: the
/// counters are Envoy-wide, so under the shared one another test's requests could move them instead.
fn assert_counted(before: &HashMap<String, u64>, name: &str) {
    let full = format!("{STAT}{name}");
    let was = before.get(&full).copied().unwrap_or(0);
    stack()
        .wait_for_stat(&full, was + 1, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Envoy's log has no panic and none of `secrets`, read once it holds everything logged so far.
fn assert_log_clean(secrets: &[&str]) {
    let log = log_so_far();
    assert!(
        !log.to_ascii_lowercase().contains("panic"),
        "panic in envoy.log:\n{}",
        log.lines()
            .filter(|l| l.to_ascii_lowercase().contains("panic"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for s in secrets {
        assert!(s.len() >= 8, "too short to grep for: {s:?}");
        assert!(
            !log.contains(s),
            "envoy.log contains a secret ({}...)",
            &s[..8]
        );
    }
}

/// Envoy's log once everything logged before this call is in it: Envoy writes its log in batches, so
/// this sends a failed callback whose log line is known and unique, and polls until that line is
/// there (sending another now and then: the filter logs at most 20 failed callbacks a second per
/// worker).
fn log_so_far() -> String {
    stack().envoy_log_after_sentinel("main").unwrap()
}

// 1. A logged-in request reaches the app with the ID token as a bearer.

#[test]
fn session_reaches_the_app_as_a_bearer_id_token() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let page = login(&b, s, "/");
    assert!(
        page.body.contains("<h1>Hello, alice@example.com</h1>"),
        "{}",
        page.body
    );

    // Cookies of the app and look-alikes of ours pass; ours never do.
    b.set_cookie("localhost", "x_oidc_session", "keep");
    b.set_cookie("localhost", "_oidc_session_other", "keep");
    b.set_cookie("localhost", "app", "1");
    b.set_cookie("localhost", "_oidc_session_login_AAAAAAAAAAAA", "stale");
    b.set_cookie("localhost", "_oidc_session.9", "stale");
    // A client-sent Authorization is replaced by the session's token.
    let r = b
        .get_with(
            &s.url("/api/me?x=1"),
            &[
                ("accept", "application/json"),
                ("authorization", "Bearer client-sent"),
            ],
        )
        .unwrap();
    let e = echoed(&r);
    assert_eq!(e["path"], "/api/me?x=1");
    let token = app_bearer(&r);
    let claims = jwt_payload(&token).unwrap();
    assert_eq!(claims["iss"], stack().issuer());
    assert_eq!(claims["aud"], "main");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");

    let cookie = e["headers"]["cookie"].as_str().unwrap();
    let mut names: Vec<&str> = cookie
        .split("; ")
        .map(|c| c.split('=').next().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["_oidc_session_other", "app", "x_oidc_session"],
        "{cookie}"
    );

    // An app's own `access_token` query parameter (GitLab's, Gitea's API tokens) is the app's: jwt_authn
    // reads only the header the filter sets, as the shipped RequestAuthentication's `fromHeaders` say
    // (found by a black-box test: without them, istiod's provider also read the parameter, and answered
    // the logged-in user `401 Jwt is not in the form…`; `manifests.rs` holds the two alike).
    let r = api(&b, &s.url("/api/v4/projects?access_token=glpat-abcdef123"));
    assert_eq!(
        echoed(&r)["path"],
        "/api/v4/projects?access_token=glpat-abcdef123"
    );
    assert_eq!(app_bearer(&r), token);

    // The app answered a protected path, so jwt_authn accepted the token: RBAC lets no request
    // through without the principal jwt_authn derives from it (it would answer 403).
    let stats = stats();
    assert!(stats["http.main.jwt_authn.allowed"] >= 1, "{stats:?}");
    assert!(stats["http.main.rbac.allowed"] >= 1, "{stats:?}");
}

/// Whether `page` is the IdP's login form (the user types a password there).
fn idp_form(page: &Response) -> bool {
    page.forms()
        .into_iter()
        .any(|f| f.fields.iter().any(|(n, v)| n == "prompt" && v == "login"))
}

#[test]
fn authorization_params_reach_the_idp() {
    let _idp = idp_hold::shared();
    let b = Browser::new();
    login(&b, site("main"), "/");
    // The IdP has a session now: another site's login goes through without its form...
    let sso = b
        .follow(b.get(&site("slow").url("/")).unwrap(), 20)
        .unwrap()
        .response;
    assert_eq!(sso.status, 200, "{}", sso.body);
    assert!(
        !idp_form(&sso) && sso.url == site("slow").url("/"),
        "{}",
        sso.url
    );
    // ...but `prompt=login` in `authorization_params` has it ask again, and the login completes.
    let start = b.get(&site("relogin").url("/login?rd=/x")).unwrap();
    let to_idp = start.location().unwrap().to_string();
    assert!(to_idp.contains("&prompt=login"), "{to_idp}");
    let page = b.follow(start, 20).unwrap().response;
    assert!(idp_form(&page), "{} {}", page.url, page.body);
    login(&b, site("relogin"), "/x");
}

#[test]
fn max_age_has_an_older_idp_session_log_in_again_and_a_login_without_it_is_refused() {
    let _idp = idp_hold::shared();
    let s = site("recent");
    let b = Browser::new();
    login(&b, site("main"), "/");
    // The IdP's session is older than max_age now.
    std::thread::sleep(Duration::from_secs(6));

    // max_age leaves the browser's hands on its way to the IdP: a user who takes it out gets signed in
    // from the IdP's session without its form, and the filter refuses the ID token (its auth_time, or
    // none, does not show an authentication that recent).
    let start = b.get(&s.url("/login?rd=/x")).unwrap();
    let to_idp = start.location().unwrap().to_string();
    assert!(to_idp.contains("&max_age=5"), "{to_idp}");
    let done = b
        .follow(b.get(&to_idp.replace("&max_age=5", "")).unwrap(), 20)
        .unwrap();
    let chain = describe_chain(&done.chain);
    assert_eq!(done.response.status, 502, "{chain}\n{}", done.response.body);
    assert!(
        done.response.url.starts_with(&s.url("/oauth2/callback?")),
        "{chain}"
    );
    assert!(
        done.response.body.contains("did not pass validation"),
        "{}",
        done.response.body
    );

    // As sent, max_age has the IdP ask for the password again, and the login completes.
    let start = b.get(&s.url("/login?rd=/x")).unwrap();
    let page = b.follow(start, 20).unwrap().response;
    assert!(idp_form(&page), "{} {}", page.url, page.body);
    login(&b, s, "/x");
}

#[test]
fn access_token_can_be_forwarded_instead() {
    let _idp = idp_hold::shared();
    let s = site("access");
    let b = Browser::new();
    login(&b, s, "/");
    let token = app_bearer(&api(&b, &s.url("/")));
    assert!(
        !token.contains('.'),
        "an ID token (JWT) reached the app: {token}"
    );
    // It is the access token: the IdP's userinfo endpoint accepts it for alice.
    assert_eq!(userinfo_sub(&token).as_deref(), Some("alice"));
    // The login itself proves `client_secret_post`: the IdP registered this client with that
    // method and refuses any other.
}

/// `sub` of the user the IdP's userinfo endpoint says `access_token` stands for (`None`: refused).
fn userinfo_sub(access_token: &str) -> Option<String> {
    let me = Browser::new()
        .get_with(
            &stack().idp_url("/me"),
            &[
                ("accept", "application/json"),
                ("authorization", &format!("Bearer {access_token}")),
            ],
        )
        .unwrap();
    (me.status == 200).then(|| me.json().unwrap()["sub"].as_str().unwrap().to_string())
}

#[test]
fn the_access_token_can_go_upstream_in_a_header_beside_the_id_token() {
    let _idp = idp_hold::shared();
    let s = site("accesshdr");
    let b = Browser::new();
    login(&b, s, "/");
    let forged = [("accept", "application/json"), (ACCESS_HEADER, "forged")];
    let r = b.get_with(&s.url("/"), &forged).unwrap();
    // The bearer is the ID token (jwt_authn judged it); the access token is in its header, in place of
    // the client's own, and the IdP's userinfo endpoint takes it for alice.
    let id_token = jwt_payload(&app_bearer(&r)).unwrap();
    assert_eq!(id_token["sub"], "alice");
    let access = echoed(&r)["headers"][ACCESS_HEADER]
        .as_str()
        .unwrap_or_else(|| panic!("no {ACCESS_HEADER} reached the app: {}", r.body))
        .to_string();
    assert_ne!(access, "forged");
    assert_eq!(userinfo_sub(&access).as_deref(), Some("alice"));
    // Without a session (a bypassed path) the client's copy is removed.
    let anon = Browser::new()
        .get_with(&s.url("/healthz"), &forged)
        .unwrap();
    let headers = &echoed(&anon)["headers"];
    assert!(headers.get(ACCESS_HEADER).is_none(), "{headers}");

    // Not renewed yet: the access token is new.
    assert!(set_cookie(&r, SESSION).is_none(), "{:?}", r.headers);

    // The session is renewed when the access token is due (its last 4 s), not the ID token (an hour):
    // the app then gets a new access token, and the browser a new cookie. The filter counts the token's
    // life from when the token response came, just after the ID token's `iat`: due from about iat + 4 s,
    // asked for from iat + 4 s on until it comes, by iat + 9 s at the latest. The renewing request
    // waits for the IdP and then goes on: client copies spelled with underscores do not pass it either.
    let iat = id_token["iat"].as_u64().unwrap();
    sleep_until_unix(iat + ACCESS_TTL / 2, Duration::ZERO);
    let copies = [
        ("accept", "application/json"),
        ("x_forwarded_access_token", "forged"),
        ("x_auth_request_user", "forged"),
    ];
    let r = loop {
        let r = b.get_with(&s.url("/later"), &copies).unwrap();
        let headers = &echoed(&r)["headers"];
        assert!(
            headers.get("x_forwarded_access_token").is_none()
                && headers.get("x_auth_request_user").is_none(),
            "a client's copy reached the app: {headers}"
        );
        if headers[ACCESS_HEADER] != access.as_str() {
            break r;
        }
        assert!(
            unix_now() < (iat + ACCESS_TTL + 1) as f64,
            "the access token was not renewed by its expiry: {headers}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let renewed = echoed(&r)["headers"][ACCESS_HEADER]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(userinfo_sub(&renewed).as_deref(), Some("alice"));
    assert!(set_cookie(&r, SESSION).is_some(), "{:?}", r.headers);
}

// 2 and 3. The login redirect, the IdP request, the callback's cookies.

#[test]
fn browser_without_session_goes_to_login_and_comes_back() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let target = "/reports/q3?year=2024&view=a%20b";

    let r = b.get(&s.url(target)).unwrap();
    assert_login_redirect(&r, target);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let head = b.request("HEAD", &s.url(target), &[], None).unwrap();
    assert_login_redirect(&head, target);

    let login_url = r.location().unwrap();
    let to_idp = b.get(&login_url).unwrap();
    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
    let auth = to_idp.location().unwrap();
    assert!(
        auth.starts_with(&format!("{}/auth?", stack().issuer())),
        "{auth}"
    );
    let p = |k| query_param(&auth, k).unwrap_or_else(|| panic!("no {k} in {auth}"));
    assert_eq!(p("response_type"), "code");
    assert_eq!(p("client_id"), "main");
    assert_eq!(p("redirect_uri"), s.url("/oauth2/callback"));
    assert_eq!(p("scope"), "openid email profile");
    assert_eq!(p("code_challenge_method"), "S256");
    assert_eq!(p("code_challenge").len(), 43);
    assert!(p("state").len() >= 32 && p("nonce").len() >= 32);
    let attempt = to_idp
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(LOGIN_COOKIE_PREFIX))
        .unwrap_or_else(|| panic!("no login cookie: {:?}", to_idp.headers));
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(attempt.contains(attr), "{attr} missing: {attempt}");
    }

    let callback = until_callback(&b, s, &auth);
    let done = b.get(&callback).unwrap();
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(done.header("location"), Some(target));
    let session = set_cookie(&done, SESSION).unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
    let max_age: u64 = session
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age > 3000, "{session}");
    // The login attempt's cookie is spent.
    let cleared = done
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(LOGIN_COOKIE_PREFIX))
        .unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    let landed = b.follow(done, 3).unwrap().response;
    assert_eq!(landed.url, s.url(target));
    assert_eq!(echoed(&api(&b, &s.url(target)))["path"], target);
    assert!(
        landed.body.contains("Hello, alice@example.com"),
        "{}",
        landed.body
    );
}

#[test]
fn callback_checks_state_against_its_cookie() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let callback = until_callback(&b, s, &s.url("/login?rd=/x"));
    let state = query_param(&callback, "state").unwrap();
    let code = query_param(&callback, "code").unwrap();

    // Tampered state: same cookie, other value.
    let mut tampered = state.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let r = b
        .get(&s.url(&format!("/oauth2/callback?code={code}&state={tampered}")))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(session_cookies(&b).is_empty());

    // The IdP reporting an error.
    let r = b
        .get(&s.url(&format!(
            "/oauth2/callback?error=access_denied&state={state}"
        )))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("access_denied"), "{}", r.body);

    // Without the login cookie (another browser, or it expired): a page to start again.
    let r = Browser::new().get(&callback).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.header("content-type").unwrap().starts_with("text/html"),
        "{:?}",
        r.headers
    );
    assert!(r.body.contains("<a href=\"/\">"), "{}", r.body);
    assert!(session_cookies(&b).is_empty());
}

#[test]
fn replayed_callback_is_refused() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let callback = until_callback(&b, s, &s.url("/login?rd=/"));
    let attempt = b
        .stored_cookies("localhost")
        .into_iter()
        .find(|c| c.name.starts_with(LOGIN_COOKIE_PREFIX))
        .unwrap();
    let first = b.get(&callback).unwrap();
    assert_eq!(first.status, 302, "{}", first.body);
    let session = b.cookie("localhost", SESSION).unwrap();

    // The browser replays it (back through the IdP's pages): its login attempt is spent, and it is
    // logged in, so it goes on to the site; nothing is exchanged or sealed again.
    let again = b.get(&callback).unwrap();
    assert_eq!(again.status, 302, "{}", again.body);
    assert_eq!(again.location(), Some(s.url("/")));
    assert!(set_cookie(&again, SESSION).is_none(), "{:?}", again.headers);
    // An attacker replays it with the attempt's cookie: the IdP refuses the spent code.
    let cookie = format!("{}={}", attempt.name, attempt.value);
    let replay = Browser::new()
        .get_with(&callback, &[("cookie", &cookie)])
        .unwrap();
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);
    // The first login is unharmed.
    assert_eq!(b.cookie("localhost", SESSION).unwrap(), session);
    assert_eq!(app_bearer(&api(&b, &s.url("/"))).split('.').count(), 3);
}

#[test]
fn after_login_only_same_origin_paths_are_followed() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    login(&b, s, "/start");
    // Each time through the IdP (which remembers alice) and the callback: without the session, which a
    // `/login` within 30 s of the login answers with a page instead.
    let again = || b.remove_cookie("localhost", SESSION);
    for rd in [
        "//evil.example",
        "https://evil.example",
        "/%2F%2Fevil.example",
        "/\\evil.example",
        "javascript:alert(1)",
    ] {
        let start = s.url(&format!(
            "/login?rd={}",
            harness::browser::form_urlencode(&[("", rd)]).trim_start_matches('=')
        ));
        // The IdP remembers alice: straight back through the callback.
        again();
        let done = b.follow(b.get(&start).unwrap(), 10).unwrap();
        assert_eq!(
            done.response.url,
            s.url("/"),
            "rd={rd}:\n{}",
            describe_chain(&done.chain)
        );
        assert!(
            done.chain.iter().all(|(u, _)| !u.contains("evil.example")
                || u.starts_with(&s.origin())
                || u.starts_with(stack().issuer())),
            "{}",
            describe_chain(&done.chain)
        );
    }
    again();
    let done = b
        .follow(b.get(&s.url("/login?rd=%2Fok%3Fa%3D1")).unwrap(), 10)
        .unwrap();
    assert_eq!(done.response.url, s.url("/ok?a=1"));
    // An absolute `rd` of the site's own origin, as oauth2-proxy's nginx examples build it, and an
    // IdP-started login's `target_link_uri`: their paths (found by a black-box test of a migration).
    for (param, path) in [("rd", "/own?a=1"), ("target_link_uri", "/tile")] {
        let own = harness::browser::form_urlencode(&[(param, &s.url(path))]);
        again();
        let done = b
            .follow(b.get(&s.url(&format!("/login?{own}"))).unwrap(), 10)
            .unwrap();
        assert_eq!(
            done.response.url,
            s.url(path),
            "{own}:\n{}",
            describe_chain(&done.chain)
        );
    }

    // A page whose address is too long for the login cookie (a dashboard with its state in a 40 KB
    // query, which Envoy takes) comes back to its path: the whole address, encoded into
    // `/login?rd=…`, would be more than Envoy takes.
    let other = Browser::new();
    let query = "_a=(filters:!(),query:(language:kuery,query:'%22x%22'))&".repeat(700);
    let long = s.url(&format!("/app/dashboards/d1?{query}"));
    assert!(long.len() > 39_000);
    let done = other.login(&long, "alice").unwrap();
    assert_eq!(done.response.status, 200, "{}", describe_chain(&done.chain));
    assert_eq!(done.response.url, s.url("/app/dashboards/d1"));
}

#[test]
fn two_tabs_log_in_at_once() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let tab1 = b.get(&s.url("/login?rd=/one")).unwrap().location().unwrap();
    let tab2 = b.get(&s.url("/login?rd=/two")).unwrap().location().unwrap();
    assert_ne!(query_param(&tab1, "state"), query_param(&tab2, "state"));
    let attempts = b
        .stored_cookies("localhost")
        .into_iter()
        .filter(|c| c.name.starts_with(LOGIN_COOKIE_PREFIX))
        .count();
    assert_eq!(attempts, 2);

    let cb1 = until_callback(&b, s, &tab1);
    // The IdP session now exists: the second tab goes straight back.
    let cb2 = until_callback(&b, s, &tab2);
    let one = b.follow(b.get(&cb1).unwrap(), 3).unwrap().response;
    let two = b.follow(b.get(&cb2).unwrap(), 3).unwrap().response;
    assert_eq!(
        (one.status, one.url.as_str()),
        (200, s.url("/one").as_str())
    );
    assert_eq!(
        (two.status, two.url.as_str()),
        (200, s.url("/two").as_str())
    );
    assert!(two.body.contains("Hello, alice@example.com"));
}

// 4. Big tokens.

#[test]
fn large_tokens_span_several_cookies_and_stale_chunks_are_cleared() {
    let _idp = idp_hold::shared();
    let big = site("big");
    let b = Browser::new();
    let page = login(&b, big, "/");
    assert!(page.body.contains("Hello, alice@example.com"));
    let chunks = session_cookies(&b);
    assert!(chunks.len() >= 2, "{chunks:?}");
    assert!(chunks.iter().any(|c| c.name == "_oidc_session.1"));
    let token = app_bearer(&api(&b, &big.url("/")));
    assert!(token.len() > 4000, "{}", token.len());
    assert_eq!(jwt_payload(&token).unwrap()["aud"], "big");

    // A smaller session for the same cookie (here: `main`, on the same host) replaces it.
    let main = site("main");
    let callback = until_callback(&b, main, &main.url("/login?rd=/"));
    let r = b.get(&callback).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    for c in chunks.iter().filter(|c| c.name != SESSION) {
        let line = set_cookie(&r, &c.name).unwrap_or_else(|| panic!("{} not cleared", c.name));
        assert!(line.contains("Max-Age=0"), "{line}");
    }
    let left = session_cookies(&b);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        jwt_payload(&app_bearer(&api(&b, &main.url("/")))).unwrap()["aud"],
        "main"
    );
}

/// Over HTTP/2 a browser may send its cookies as separate `cookie` fields (RFC 9113 §8.2.3), and a
/// chunked session then arrives in pieces, in any order. Envoy joins them before the filter; this
/// checks that a session split that way still opens and that the app gets only its own cookies.
#[test]
fn http2_clients_may_split_the_session_across_cookie_fields() {
    let _idp = idp_hold::shared();
    let big = site("big");
    let b = Browser::new();
    login(&b, big, "/");
    let mut crumbs: Vec<String> = b
        .cookies("localhost")
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    assert!(crumbs.len() >= 3, "{crumbs:?}");
    // Chunks last first, with the app's cookies between them.
    crumbs.reverse();
    crumbs.insert(1, "app=1".into());
    crumbs.push("theme=dark".into());

    let h2 = |path: &str, accept: &str, crumbs: &[String]| -> String {
        let mut args = vec![
            "--no-verify-peer".to_string(),
            "-H".into(),
            format!("accept: {accept}"),
        ];
        for c in crumbs {
            args.extend(["-H".into(), format!("cookie: {c}")]);
        }
        args.extend(["-v".into(), big.url(path)]);
        let out = std::process::Command::new("nghttp")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = h2("/api/me", "application/json", &crumbs);
    assert!(out.contains(":status: 200"), "{out}");
    let body = &out[out.find("\n{").unwrap_or_else(|| panic!("{out}"))..];
    let body = &body[..body.rfind("\n}").unwrap() + 2];
    let e: Value = serde_json::from_str(body).unwrap();
    let bearer = e["headers"]["authorization"].as_str().unwrap();
    let claims = jwt_payload(bearer.strip_prefix("Bearer ").unwrap()).unwrap();
    assert_eq!(claims["aud"], "big");
    assert_eq!(e["headers"]["cookie"], "app=1; theme=dark", "{e}");

    // Without the session's first piece, the browser is sent to log in.
    let rest: Vec<String> = crumbs
        .into_iter()
        .filter(|c| !c.starts_with(&format!("{SESSION}=")))
        .collect();
    let out = h2("/page", "text/html", &rest);
    assert!(out.contains(":status: 302"), "{out}");
    assert!(out.contains("location: /login?rd=%2Fpage"), "{out}");
}

// 5. Refresh.

#[test]
fn expired_token_is_refreshed_with_a_renewed_cookie() {
    let _idp = idp_hold::shared();
    let s = site("refresh");
    let b = Browser::new();
    login(&b, s, "/");
    let first = app_bearer(&api(&b, &s.url("/")));
    let c1 = jwt_payload(&first).unwrap();
    let exp = c1["exp"].as_u64().unwrap();
    assert!(exp <= c1["iat"].as_u64().unwrap() + REFRESH_TTL, "{c1}");

    // Within the refresh margin (4 s, half the token's life) of expiry: renewed on the way.
    sleep_until_unix(exp - REFRESH_TTL / 2, Duration::from_millis(100));
    let r = api(&b, &s.url("/cacheable/after"));
    let second = app_bearer(&r);
    // The app marked the page for shared caches, but it now carries this user's cookie: no cache may
    // keep it, also none that reads a field of its own before `Cache-Control` (RFC 9213; found by a
    // black-box test: they went through).
    assert_eq!(r.header("cache-control"), Some("no-store"));
    for name in CDN_CACHE_HEADERS {
        assert_eq!(r.header(name), None, "{name}: {:?}", r.headers);
    }
    let c2 = jwt_payload(&second).unwrap();
    assert_ne!(second, first);
    assert!(c2["iat"].as_u64() > c1["iat"].as_u64(), "{c1} {c2}");
    assert!(c2["exp"].as_u64() > c1["exp"].as_u64(), "{c1} {c2}");
    assert_eq!(c2["sub"], "alice");
    let renewed = set_cookie(&r, SESSION).unwrap_or_else(|| panic!("{:?}", r.headers));
    assert!(renewed.contains("Max-Age="), "{renewed}");
    // (The `refreshes` counter is checked exactly, where no other test moves it, by
    // `parallel_requests_at_expiry_share_one_refresh`.)

    // The renewed cookie carries the new token, and no further refresh happens for it (its own
    // margin starts 3 s or more from now); the app's caching is left alone when the filter adds no
    // cookie.
    let r = api(&b, &s.url("/cacheable/again"));
    assert_eq!(app_bearer(&r), second);
    assert!(set_cookie(&r, SESSION).is_none(), "{:?}", r.headers);
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=60, s-maxage=600")
    );
    for name in CDN_CACHE_HEADERS {
        assert!(r.header(name).is_some(), "{name}: {:?}", r.headers);
    }
}

/// The caching fields of CDNs and of `Expires`-only caches the echo app sets on `/cacheable`.
const CDN_CACHE_HEADERS: [&str; 6] = [
    "cdn-cache-control",
    "cloudflare-cdn-cache-control",
    "surrogate-control",
    "edge-control",
    "x-accel-expires",
    "expires",
];

#[test]
fn parallel_requests_at_expiry_share_one_refresh() {
    // Exclusive: `refreshes` is Envoy-wide, and this test counts it exactly.
    let _idp = idp_hold::exclusive();
    let s = site("rotating");
    let b = Browser::new();
    login(&b, s, "/");
    let mut token = app_bearer(&api(&b, &s.url("/")));
    // After that request, which may have renewed the session on a slow machine.
    let mut cookie = format!("{SESSION}={}", b.cookie("localhost", SESSION).unwrap());
    let before = stats();

    // This IdP rotates refresh tokens and, seeing an old one used twice, revokes the whole grant: a
    // page whose resources each refreshed the session would log its user out. Round 0 comes within
    // the refresh margin (the old token is still valid), round 1 after expiry (requests must wait).
    for (round, after_exp) in [(0, -0.85), (1, 0.2)] {
        let exp = jwt_payload(&token).unwrap()["exp"].as_f64().unwrap();
        let wait = exp + after_exp - unix_now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        let t = Instant::now();
        // Separate connections, so both workers take part.
        let results: Vec<Response> = harness::at_once(6, |i| {
            Browser::new()
                .get_with(
                    &s.url(&format!("/r{round}/{i}")),
                    &[("accept", "application/json"), ("cookie", &cookie)],
                )
                .unwrap()
        });
        let took = t.elapsed();
        for r in &results {
            assert_eq!(r.status, 200, "round {round}: {} {}", r.url, r.body);
        }
        let renewed: Vec<(&Response, &str)> = results
            .iter()
            .filter_map(|r| set_cookie(r, SESSION).map(|c| (r, c)))
            .collect();
        assert!(!renewed.is_empty(), "round {round}: no renewed cookie");
        let new_token = app_bearer(renewed[0].0);
        assert_ne!(new_token, token, "round {round}");
        if round == 1 {
            // Expired: every request waited for the one renewal and carries its result.
            assert_eq!(renewed.len(), results.len(), "round {round}");
            for r in &results {
                assert_eq!(app_bearer(r), new_token, "round {round}");
            }
            // Woken by the renewal's end (the filter looks every 100 ms), not by the claim lapsing:
            // that is 2 x callout_timeout (5 s) + 2 s after it was made, so 11 s or more.
            assert!(took < Duration::from_secs(7), "round {round} took {took:?}");
        }
        cookie = renewed[0].1.split(';').next().unwrap().to_string();
        token = new_token;
    }
    // One refresh per round reached the IdP, whichever worker each request landed on: the first
    // request claims the renewal in Envoy's shared data (compare-and-swap, seen by both workers), the
    // others use the old token while it lasts, wait for the renewal, or adopt its result. (`refreshes`
    // counts at once, not on the tick; nobody else sends requests while this test holds the lock.)
    let refreshes = stats()[&format!("{STAT}refreshes")] - before[&format!("{STAT}refreshes")];
    assert_eq!(
        refreshes, 2,
        "refreshes in two rounds of 6 parallel requests"
    );
    assert_eq!(
        stats().get(&format!("{STAT}refresh_failures")),
        before.get(&format!("{STAT}refresh_failures"))
    );
}

/// Found in review: an IdP that caps its tokens at the end of its own session (or gives the same ID token
/// again) renews, within the refresh margin, with an ID token that expires when the old one does: every
/// request until then asked the IdP again. It is asked once now, and the session ends with the IdP's.
#[test]
fn an_idp_that_caps_tokens_at_its_session_end_is_asked_once_not_on_every_request() {
    // Exclusive: `refreshes` is Envoy-wide, and this test counts it exactly.
    let _idp = idp_hold::exclusive();
    let s = site("capped");
    let b = Browser::new();
    login(&b, s, "/");
    let before = stats();
    let first = app_bearer(&api(&b, &s.url("/")));
    let exp = jwt_payload(&first).unwrap()["exp"].as_u64().unwrap();
    // Within the margin (half the token's life: 5 s) until a second before the token expires.
    sleep_until_unix(exp - CAPPED_LIFE / 2, Duration::from_millis(200));
    let mut within = 0;
    while unix_now() < exp as f64 - 1.0 {
        let token = app_bearer(&api(&b, &s.url(&format!("/capped/{within}"))));
        let claims = jwt_payload(&token).unwrap();
        assert_eq!(claims["exp"].as_u64(), Some(exp), "{claims}");
        within += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(within >= 3, "only {within} requests within the margin");
    let count = |name: &str| {
        let full = format!("{STAT}{name}");
        stats().get(&full).copied().unwrap_or(0) - before.get(&full).copied().unwrap_or(0)
    };
    assert_eq!(count("refreshes"), 1, "renewals for {within} requests");
    // Once the token has expired the session renews, the IdP's session has ended: log in again.
    let cookie = format!("{SESSION}={}", b.cookie("localhost", SESSION).unwrap());
    let refused = || {
        stack()
            .idp_log()
            .unwrap()
            .matches("POST /token 400")
            .count()
    };
    let refused_before = refused();
    sleep_until_unix(exp, Duration::from_millis(1200));
    let r = api(&b, &s.url("/capped/after"));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(count("refresh_failures"), 1);
    // A client that keeps sending the dead cookie (it ignores `Set-Cookie`), on either worker: answered
    // as without a session, and the IdP is not asked again (found by a black-box test: each request
    // asked it).
    let results: Vec<Response> = harness::at_once(8, |i| {
        Browser::new()
            .get_with(
                &s.url(&format!("/capped/dead/{i}")),
                &[("accept", "application/json"), ("cookie", &cookie)],
            )
            .unwrap()
    });
    for r in &results {
        assert_eq!(r.status, 401, "{} {}", r.url, r.body);
    }
    assert_eq!(refused() - refused_before, 1, "token requests refused");
}

/// Found by a black-box test: a renewal that met an outage published, as its own, the cookies an earlier
/// renewal of the same cookie had left in the worker's cache, and the requests that came with that cookie
/// in the next 30 s, on either worker, took them (expired by then) for a renewal just made: `503` "renewed
/// while this request was on its way", with the expired cookie. They get the outage's own answer now.
#[test]
fn a_renewal_that_meets_an_outage_hands_on_no_earlier_renewal() {
    // Shared while it logs in and renews; exclusive only for the outage, not through the 30 s wait.
    let idp = idp_hold::shared();
    let s = site("rotating");
    let b = Browser::new();
    login(&b, s, "/");
    let token = app_bearer(&api(&b, &s.url("/")));
    // After that request, which may have renewed the session on a slow machine.
    let old = format!("{SESSION}={}", b.cookie("localhost", SESSION).unwrap());
    let exp = |t: &str| jwt_payload(t).unwrap()["exp"].as_u64().unwrap();
    // Renewed once, within the refresh margin (1 s): a client that keeps its old cookie.
    let with_old = |path: &str, accept: &str| {
        Browser::new()
            .get_with(&s.url(path), &[("accept", accept), ("cookie", &old)])
            .unwrap()
    };
    sleep_until_unix(exp(&token) - 1, Duration::from_millis(300));
    let renewed = app_bearer(&with_old("/due", "application/json"));
    assert_ne!(renewed, token);
    // That renewal's token expires too, and the renewal table has forgotten it (30 s): the IdP's token
    // endpoint is down.
    let renewed_at = unix_now();
    drop(idp);
    sleep_until_unix(exp(&renewed), Duration::from_millis(300));
    std::thread::sleep(Duration::from_secs_f64(
        (renewed_at + 31.0 - unix_now()).max(0.0),
    ));
    let _idp = idp_hold::exclusive();
    stack().set_idp_mode(Mode::respond_for(
        "/token",
        503,
        "text/plain",
        "down for a test",
    ));
    // New connections, so that both workers answer some (the one that made the renewal above among them).
    let answers: Vec<Response> = (0..10)
        .map(|i| with_old(&format!("/o{i}"), "text/html"))
        .collect();
    stack().set_idp_mode(Mode::Forward);
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 503, "{i}: {}", r.body);
        assert!(r.body.contains("could not be renewed"), "{i}: {}", r.body);
    }
    assert_log_clean(&[]);
    // The outage paused this site's renewals on both workers for 5 s: wait it out before the next test
    // on this site, which counts renewals (found in CI: `parallel_requests_at_expiry_share_one_refresh`
    // met the pause, and its round within the margin renewed nothing).
    std::thread::sleep(Duration::from_secs(6));
}

#[test]
fn expired_token_without_refresh_token_needs_a_new_login() {
    let _idp = idp_hold::shared();
    let s = site("norefresh");
    let b = Browser::new();
    login(&b, s, "/");
    let token = app_bearer(&api(&b, &s.url("/")));
    let exp = jwt_payload(&token).unwrap()["exp"].as_u64().unwrap();
    let cookie = format!("{SESSION}={}", b.cookie("localhost", SESSION).unwrap());
    // Without a refresh token the cookie lives as long as the token (its `Max-Age` counted from the
    // filter's clock in whole seconds), not `session_lifetime`.
    let expires = session_cookies(&b)[0]
        .expires
        .expect("a session cookie with Max-Age")
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expires <= exp as f64 + 5.0,
        "the cookie expires at {expires}, the token at {exp}"
    );

    sleep_until_unix(exp, Duration::from_millis(100));
    let wait = expires - unix_now();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait + 0.05));
    }
    // The browser's cookie expired with the token: it sends none (so there is none to clear), and is
    // sent to log in.
    assert!(session_cookies(&b).is_empty());
    let r = b.get(&s.url("/page?a=1")).unwrap();
    assert_login_redirect(&r, "/page?a=1");
    assert!(set_cookie(&r, SESSION).is_none(), "{:?}", r.set_cookies());
    // A client that keeps sending it (a skewed clock) is treated as logged out.
    let r = b.get_with(&s.url("/page"), &[("cookie", &cookie)]).unwrap();
    assert_login_redirect(&r, "/page");
    let cleared = set_cookie(&r, SESSION).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_json_401(
        &b.get_with(
            &s.url("/api"),
            &[("cookie", &cookie), ("accept", "application/json")],
        )
        .unwrap(),
    );
}

// 6. Logout.

#[test]
fn logout_ends_the_session_here_and_at_the_idp() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    login(&b, s, "/");
    let token = app_bearer(&api(&b, &s.url("/")));

    let r = b.get(&s.url("/logout")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let end = r.location().unwrap();
    assert!(
        end.starts_with(&format!("{}/session/end?", stack().issuer())),
        "{end}"
    );
    assert_eq!(query_param(&end, "id_token_hint"), Some(token));
    assert_eq!(
        query_param(&end, "post_logout_redirect_uri"),
        Some(s.url("/"))
    );
    let cleared = set_cookie(&r, SESSION).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(session_cookies(&b).is_empty());
    assert_login_redirect(&b.get(&s.url("/")).unwrap(), "/");
    // (The `logouts` counter: `metrics_count_logins_logouts_and_failures`.)

    // At the IdP: confirm, back to the app, which now asks for a fresh login.
    let confirm = b.follow(b.get(&end).unwrap(), 5).unwrap().response;
    let form = confirm
        .forms()
        .into_iter()
        .find(|f| f.action.contains("/session/end/confirm"))
        .unwrap_or_else(|| panic!("no logout form: {}", confirm.body));
    let back = b
        .follow(b.submit(&form, &[("logout", "yes")]).unwrap(), 10)
        .unwrap();
    assert!(
        back.chain.iter().any(|(u, _)| u == &s.url("/")),
        "{}",
        describe_chain(&back.chain)
    );
    let login_form = back
        .response
        .forms()
        .into_iter()
        .any(|f| f.fields.iter().any(|(n, v)| n == "prompt" && v == "login"));
    assert!(login_form, "{}", describe_chain(&back.chain));
}

/// Found in review: without `backchannel_logout_path` the workers never read the list a `/logout` shares, so
/// it ended the session on its own worker only; a copy of the cookie (or a renewal on its way) went on
/// through the others. Every worker refuses the old cookie now, and a new login in the same IdP session
/// (the IdP's logout page left unconfirmed) is a session again.
#[test]
fn logout_without_backchannel_logout_ends_the_cookie_on_every_worker() {
    let _idp = idp_hold::shared();
    let s = site("sid");
    let (b, claims, cookie) = logged_out_everywhere(s);
    assert!(claims["sid"].is_string(), "{claims}");
    login(&b, s, "/");
    let again = b.cookie("localhost", SESSION).unwrap();
    assert_ne!(again, cookie);
    for _ in 0..6 {
        assert_eq!(status_with_cookie(s, &again), 200);
    }
}

/// The same without a `sid` in the ID token (this site's client asks for none): the logged-out token
/// itself is refused by every worker.
#[test]
fn logout_ends_a_cookie_without_sid_on_every_worker() {
    let _idp = idp_hold::shared();
    let (_, claims, _) = logged_out_everywhere(site("main"));
    assert!(claims.get("sid").is_none(), "{claims}");
}

/// Found in review: a `/logout` ended the ID token of the cookie it came with (and that token's `sid` up
/// to its `iat`). A renewal done just before (a page's poll, whose answer with the renewed cookie had not
/// reached the browser when the user pressed "Log out") has a later token, so the renewed cookie stayed a
/// session on every worker. The logout ends the login now, which every renewal keeps.
#[test]
fn logout_with_the_cookie_from_before_a_renewal_ends_the_renewed_cookie() {
    let _idp = idp_hold::shared();
    let s = site("renewedlogout");
    let b = Browser::new();
    login(&b, s, "/");
    let old = b.cookie("localhost", SESSION).unwrap();
    let claims = jwt_payload(&app_bearer(&api(&b, &s.url("/")))).unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    sleep_until_unix(exp - REFRESH_TTL / 2, Duration::from_millis(100));
    let poll = Browser::new().with_header("accept", "application/json");
    poll.set_cookie("localhost", SESSION, &old);
    let r = poll.get(&s.url("/poll")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed = poll.cookie("localhost", SESSION).unwrap();
    assert_ne!(renewed, old, "the poll renewed the session");
    assert_eq!(status_with_cookie(s, &renewed), 200);
    // The browser still holds the cookie from before the renewal.
    let r = b.get(&s.url("/logout")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    for cookie in [&renewed, &old] {
        stack()
            .until_every_worker(&s.name, Duration::from_secs(30), || {
                status_with_cookie(s, cookie) == 401
            })
            .unwrap();
    }
}

/// Whether a `/logout` in a browser logged in on `s` ends the cookie it held on every worker: the
/// cookie, sent by a client of its own (a copy), passes before and is refused by each worker after.
/// Returns the browser and the ID token's claims.
fn logged_out_everywhere(s: &'static Site) -> (Browser, Value, String) {
    let b = Browser::new();
    login(&b, s, "/");
    let claims = jwt_payload(&app_bearer(&api(&b, &s.url("/")))).unwrap();
    let cookie = b.cookie("localhost", SESSION).unwrap();
    for _ in 0..6 {
        assert_eq!(status_with_cookie(s, &cookie), 200);
    }
    let r = b.get(&s.url("/logout")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    stack()
        .until_every_worker(&s.name, Duration::from_secs(30), || {
            status_with_cookie(s, &cookie) == 401
        })
        .unwrap();
    (b, claims, cookie)
}

/// The status an API client gets from `s` with session cookie `value`.
fn status_with_cookie(s: &Site, value: &str) -> u16 {
    let c = Browser::new().with_header("accept", "application/json");
    c.set_cookie("localhost", SESSION, value);
    c.get(&s.url("/")).unwrap().status
}

#[test]
fn logout_without_post_logout_redirect_uri_ends_at_the_idp() {
    let _idp = idp_hold::shared();
    let s = site("nologout");
    let b = Browser::new();
    login(&b, s, "/");
    let r = b.get(&s.url("/logout")).unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let end = r.location().unwrap();
    let hint = query_param(&end, "id_token_hint").unwrap_or_else(|| panic!("{end}"));
    assert_eq!(query_param(&end, "post_logout_redirect_uri"), None, "{end}");
    // The account named by the ID token's `login_hint` (as Entra ID takes it, to skip its account
    // picker); the IdP takes the parameter.
    let login_hint = jwt_payload(&hint).unwrap()["login_hint"].clone();
    assert!(login_hint.is_string(), "{login_hint}");
    assert_eq!(
        query_param(&end, "logout_hint").as_deref(),
        login_hint.as_str(),
        "{end}"
    );
    assert!(session_cookies(&b).is_empty());
    let confirm = b.follow(b.get(&end).unwrap(), 5).unwrap().response;
    let form = confirm
        .forms()
        .into_iter()
        .find(|f| f.action.contains("/session/end/confirm"))
        .unwrap_or_else(|| panic!("no logout form: {}", confirm.body));
    let done = b
        .follow(b.submit(&form, &[("logout", "yes")]).unwrap(), 5)
        .unwrap()
        .response;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.url.starts_with(stack().issuer()), "{}", done.url);
    assert!(done.body.contains("Sign-out Success"), "{}", done.body);
}

// 7. API clients.

#[test]
fn api_clients_bring_their_own_token_or_get_401() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let token = {
        let b = Browser::new();
        login(&b, s, "/");
        app_bearer(&api(&b, &s.url("/")))
    };
    let client = Browser::new();

    // Its own valid token: untouched, judged by jwt_authn.
    let bearer = format!("Bearer {token}");
    let r = client
        .get_with(
            &s.url("/api"),
            &[("accept", "application/json"), ("authorization", &bearer)],
        )
        .unwrap();
    assert_eq!(echoed(&r)["headers"]["authorization"], bearer);
    // Even a browser navigation with a token is left to jwt_authn.
    let r = client
        .get_with(&s.url("/"), &[("authorization", &bearer)])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // A garbage token: jwt_authn refuses it, no redirect.
    let r = client
        .get_with(
            &s.url("/api"),
            &[
                ("accept", "application/json"),
                ("authorization", "Bearer garbage"),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("Jwt"), "{}", r.body);
    assert!(r.header("location").is_none());

    // Credentials jwt_authn does not read (another scheme, another spelling) are no token: the filter
    // answers as it does without them, rather than leave the request to policies that may not cover
    // its host.
    for value in ["Basic YWxpY2U6cHc=", "bearer x.y.z"] {
        let r = client
            .get_with(
                &s.url("/api"),
                &[("accept", "application/json"), ("authorization", value)],
            )
            .unwrap();
        assert_json_401(&r);
        let r = client
            .get_with(&s.url("/page"), &[("authorization", value)])
            .unwrap();
        assert_eq!(r.status, 302, "{value}: {}", r.body);
        assert_eq!(r.header("location"), Some("/login?rd=%2Fpage"), "{value}");
    }

    // No token, not a navigation: 401 with a JSON body.
    assert_json_401(&api(&client, &s.url("/api")));
    assert_json_401(
        &client
            .get_with(&s.url("/api"), &[("x-requested-with", "XMLHttpRequest")])
            .unwrap(),
    );
    assert_json_401(
        &client
            .get_with(&s.url("/api"), &[("sec-fetch-mode", "cors")])
            .unwrap(),
    );
    assert_json_401(&client.post_form(&s.url("/form"), &[("a", "1")]).unwrap());
    // The same form posted by a browser's navigation: a page that says the form was not sent, with a
    // way to log in and come back.
    let navigate_post = |extra: &[(&str, &str)]| {
        let mut headers = vec![
            ("sec-fetch-mode", "navigate"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        headers.extend_from_slice(extra);
        let r = client
            .request("POST", &s.url("/form?step=2"), &headers, Some(b"a=1"))
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
        r
    };
    let r = navigate_post(&[]);
    assert!(r.body.contains("You are not logged in"), "{}", r.body);
    assert!(
        r.body.contains("href=\"/login?rd=%2Fform%3Fstep%3D2\""),
        "{}",
        r.body
    );
    // With the page of the form named in `Referer` (as browsers do within a site), the way back is
    // that page, not the address the form posts to.
    let r = navigate_post(&[("referer", &s.url("/edit?id=3"))]);
    assert!(
        r.body.contains("href=\"/login?rd=%2Fedit%3Fid%3D3\""),
        "{}",
        r.body
    );
    assert_json_401(&client.request("DELETE", &s.url("/x"), &[], None).unwrap());
    // (The `bearer_passthrough` and `unauthorized` counters: `metrics_count_logins_logouts_and_failures`,
    // which counts them exactly, where no other test moves them.)
}

/// A page on another origin calling this app with credentials first sends a preflight, which carries no
/// cookies: with `pass_cors_preflight` it reaches the app (here the echo app answers it), through
/// jwt_authn and an RBAC policy that lets `OPTIONS` through; the filter still answers every other
/// `OPTIONS` itself.
#[test]
fn cors_preflights_reach_the_app_when_configured() {
    let _idp = idp_hold::shared();
    let client = Browser::new();
    // What a browser sends (its preflights ask for `*/*`).
    let preflight = [
        ("origin", "https://spa.example.com"),
        ("accept", "*/*"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "content-type"),
    ];
    let r = client
        .request("OPTIONS", &site("cors").url("/api/items"), &preflight, None)
        .unwrap();
    let e = echoed(&r);
    assert_eq!(e["method"], "OPTIONS");
    assert_eq!(e["headers"]["access-control-request-method"], "PUT");
    assert!(e["headers"].get("authorization").is_none(), "{e}");

    // Not a preflight: the filter's 401.
    let r = client
        .request(
            "OPTIONS",
            &site("cors").url("/api/items"),
            &preflight[..1],
            None,
        )
        .unwrap();
    assert_json_401(&r);
    // Without the option: the filter's 401 for the preflight too.
    let r = client
        .request("OPTIONS", &site("main").url("/api/items"), &preflight, None)
        .unwrap();
    assert_json_401(&r);

    // Found in review: over HTTP/2 a body needs neither `content-length` nor `transfer-encoding`, and an
    // `OPTIONS` shaped as a preflight took its body to the app. No preflight has one: the filter's 401.
    let file = stack().dir().join("options-body.txt");
    std::fs::write(&file, "action=delete-everything").unwrap();
    let out = std::process::Command::new("nghttp")
        .args(["-v", "--no-content-length", "-H", ":method: OPTIONS"])
        .args(["-H", "origin: https://spa.example.com"])
        .args(["-H", "access-control-request-method: PUT", "-d"])
        .arg(&file)
        .arg(site("cors").url("/api/items"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("send DATA frame"), "{out}");
    let status = harness::nghttp_statuses(&out);
    assert_eq!(status.len(), 1, "{out}");
    assert!(status[0].ends_with(":status: 401"), "{out}");
    assert!(
        !out.contains("delete-everything\""),
        "the app got the body: {out}"
    );
}

// 8. Bypass.

#[test]
fn bypass_paths_pass_but_traversal_does_not() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let r = api(&b, &s.url("/healthz"));
    assert_eq!(echoed(&r)["path"], "/healthz");
    assert_eq!(
        echoed(&api(&b, &s.url("/healthz/deep?x=1")))["path"],
        "/healthz/deep?x=1"
    );
    assert_eq!(b.get(&s.url("/healthz")).unwrap().status, 200);

    for path in [
        "/healthz/../admin",
        "/healthz/%2E%2E/admin",
        "/healthz%2F..%2Fadmin",
        "/healthz%2f..%2fadmin",
        "/healthz/..%5Cadmin",
        "/healthz;/../admin",
        "/healthzx",
    ] {
        let nav = b.get(&s.url(path)).unwrap();
        assert_eq!(nav.status, 302, "{path}: {}", nav.body);
        assert!(
            nav.header("location").unwrap().starts_with("/login?rd="),
            "{path}: {:?}",
            nav.header("location")
        );
        let r = api(&b, &s.url(path));
        assert_eq!(r.status, 401, "{path}: {}", r.body);
    }
}

/// Found by a black-box test: the README sends an app's own `Basic` login to `bypass_paths`, but a
/// logged-in browser sends its session cookie there too, and the filter replaced the app's credentials
/// with the session's token. There a client's own `Authorization` now reaches the app (through
/// jwt_authn and the policy, which exempt the bypass paths); elsewhere the session's token replaces it.
#[test]
fn an_apps_own_basic_login_on_a_bypass_path_reaches_it_from_a_logged_in_browser() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    login(&b, s, "/");
    let basic = "Basic dXNlcjpwYXNzd29yZA==";
    let own = |path: &str| {
        b.get_with(
            &s.url(path),
            &[("authorization", basic), ("accept", "application/json")],
        )
        .unwrap()
    };
    let seen = echoed(&own("/healthz/login"));
    assert_eq!(seen["headers"]["authorization"], basic, "{seen}");
    assert!(seen["headers"]["cookie"].is_null(), "{seen}");
    // Not a bypass path: the session's token, not the client's.
    let r = own("/app");
    assert!(!app_bearer(&r).is_empty());
}

// 9. Behind a load balancer that terminates TLS.

/// Behind a load balancer that terminates TLS, the gateway gets plain HTTP/1.1, and the load balancer
/// says `X-Forwarded-Proto: https`. Envoy keeps that header, and takes the request's scheme from it,
/// only when it trusts hops in front of it (`xff_num_trusted_hops`; Istio's `numTrustedProxies`): then
/// the IdP is sent the https redirect URI it has registered. By default Envoy overwrites the header with
/// what it saw, so a client's word changes nothing, and behind such a load balancer the login would fail
/// at the IdP (an `http` redirect URI it does not know).
#[test]
fn behind_a_tls_terminating_load_balancer_the_redirect_uri_is_https_once_the_gateway_trusts_it() {
    // Its requests move the filter's counters, which the metrics test counts exactly.
    let _idp = idp_hold::shared();
    let redirect_uri = |site: &str, forwarded_proto: Option<&str>| {
        let headers: Vec<(&str, &str)> = forwarded_proto
            .map(|proto| ("x-forwarded-proto", proto))
            .into_iter()
            .collect();
        let r = Browser::new()
            .get_with(&self::site(site).url("/login"), &headers)
            .unwrap();
        assert_eq!(r.status, 302, "{}", r.body);
        query_param(&r.location().unwrap(), "redirect_uri").unwrap()
    };
    let at = |scheme: &str, site: &str| {
        format!(
            "{scheme}://localhost:{}/oauth2/callback",
            self::site(site).port
        )
    };
    assert_eq!(
        redirect_uri("behindlb", Some("https")),
        at("https", "behindlb")
    );
    assert_eq!(redirect_uri("behindlb", None), at("http", "behindlb"));
    assert_eq!(redirect_uri("main", Some("https")), at("http", "main"));
}

// 10. Configuration.

/// Starts a one-site Envoy with `patch` over a valid filter configuration; returns the start's
/// error, which carries Envoy's log.
fn start_with_config(name: &str, patch: Value) -> (String, String) {
    let dir = harness::target_dir().join(format!("e2e/config-{name}"));
    let _ = fs::remove_dir_all(&dir);
    let issuer = "http://127.0.0.1:9";
    let mut cfg = default_filter_config(issuer, "app", "app").unwrap();
    harness::merge_json(&mut cfg, &patch);
    let config = EnvoyConfig {
        wasm_path: wasm_path().unwrap(),
        issuer: issuer.into(),
        jwks_uri: format!("{issuer}/jwks"),
        app_port: 9,
        admin_port: 0,
        access_log: AccessLog::Off,
        sites: vec![EnvoySite::new("app", 0, "app", cfg)],
        idp_front: None,
    };
    let mut opts = EnvoyOptions::new(&dir);
    opts.concurrency = 1;
    opts.ready_timeout = Duration::from_secs(15);
    // The cookie keys are set; the client secret is not, unless the patch inlines one.
    opts.env = vec![(
        harness::COOKIE_KEYS_ENV.to_string(),
        DEFAULT_COOKIE_KEYS.to_string(),
    )];
    let err = match Envoy::start(&config.render().unwrap(), &opts) {
        Ok(_) => panic!("envoy accepted the configuration {patch}"),
        Err(e) => format!("{e:#}"),
    };
    let log = fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    (err, log)
}

#[test]
fn invalid_plugin_config_stops_envoy_and_names_the_field() {
    let (err, log) = start_with_config(
        "unknown-field",
        json!({"client_secret_env": null, "client_secret": "inline-secret", "colour": "blue"}),
    );
    // Envoy 1.40 refuses a static listener whose Wasm plugin fails `on_configure`, and exits.
    assert!(err.contains("envoy exited"), "{err}");
    assert!(log.contains("Unable to create Wasm plugin"), "{log}");
    assert!(log.contains("field `colour`"), "{log}");
    assert!(!log.contains("inline-secret"), "{log}");

    // Spelt as the Secret's keys are: named, with the field meant.
    let (_, log) = start_with_config(
        "kebab-field",
        json!({"client_secret_env": null, "client-secret-env": "OIDC_CLIENT_SECRET"}),
    );
    assert!(
        log.contains("field `client-secret-env`: unknown field (the field is `client_secret_env`)"),
        "{log}"
    );

    let (err, log) = start_with_config("missing-secret", json!({}));
    assert!(err.contains("envoy exited"), "{err}");
    assert!(log.contains("field `client_secret_env`"), "{log}");
    assert!(
        log.contains("the environment variable it names is not set or empty"),
        "{log}"
    );
    // What the field holds is not repeated: it may be a secret pasted in place of a name.
    assert!(!log.contains("OIDC_CLIENT_SECRET_APP"), "{log}");
}

#[test]
fn secrets_reach_the_filter_from_the_environment_only() {
    // Every login on `main` proves the filter read its secrets from the variables its
    // configuration names (Istio's `vmConfig.env`); the configuration itself holds none.
    let cfg = &site("main").filter_config;
    assert_eq!(cfg["client_secret_env"], "OIDC_CLIENT_SECRET_MAIN");
    assert_eq!(cfg["cookie_keys_env"], harness::COOKIE_KEYS_ENV);
    assert!(cfg.get("client_secret").is_none() && cfg.get("cookie_keys").is_none());
    let bootstrap = fs::read_to_string(stack().dir().join("envoy.json")).unwrap();
    assert!(bootstrap.contains("\"host_env_keys\""));
    for s in stack().sites() {
        assert!(!bootstrap.contains(&s.client_secret), "{}", s.name);
    }
    // The rotation sites write their cookie keys in the configuration: a warning says that whoever
    // reads it reads them; no site writes its client secret there, and none is warned of.
    let log = stack().envoy_log().unwrap();
    let warned = |field: &str| {
        harness::wasm_log_lines(
            &log,
            "warning",
            &format!("`{field}` holds a secret in pluginConfig"),
        )
    };
    assert!(warned("cookie_keys") > 0, "{log}");
    assert_eq!(warned("client_secret"), 0, "{log}");
    // And with nothing else to go on, a login completes: the code exchange authenticated with the
    // secret from the environment, and the session sealed with the keys from there opens.
    let _idp = idp_hold::shared();
    let b = Browser::new();
    login(&b, site("main"), "/");
    // (app_bearer fails the test when no bearer reached the app.)
    let token = app_bearer(&api(&b, &site("main").url("/")));
    assert_eq!(token.split('.').count(), 3, "{token}");
}

#[test]
fn rotated_cookie_keys_still_open_old_sessions() {
    let _idp = idp_hold::shared();
    let b = Browser::new();
    login(&b, site("main"), "/");
    let token = app_bearer(&api(&b, &site("main").url("/")));

    // Keys [B, A]: the session sealed under A still opens.
    let r = api(&b, &site("rotated").url("/"));
    assert_eq!(app_bearer(&r), token);
    assert!(set_cookie(&r, SESSION).is_none());
    // Keys [B] only: it does not, and the unreadable cookie is cleared.
    let r = b.get(&site("newkey").url("/page")).unwrap();
    assert_login_redirect(&r, "/page");
    assert!(set_cookie(&r, SESSION).unwrap().contains("Max-Age=0"));
}

// 11. Metrics.

#[test]
fn metrics_count_logins_logouts_and_failures() {
    // Exclusive: the counters are Envoy-wide, and every other test that sends requests holds the lock.
    let _idp = idp_hold::exclusive();
    let s = site("main");
    // What the tests before this one counted is handed to Envoy within a tick.
    let before = settled_counters();
    let b = Browser::new();
    assert_eq!(b.get(&s.url("/m")).unwrap().status, 302);
    login(&b, s, "/m");
    let token = app_bearer(&api(&b, &s.url("/m")));
    assert_json_401(&api(&Browser::new(), &s.url("/m")));
    // An API client with its own token, no session.
    let r = Browser::new()
        .get_with(
            &s.url("/m"),
            &[
                ("accept", "application/json"),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .unwrap();
    assert_eq!(app_bearer(&r), token);
    let r = b
        .get(&s.url("/oauth2/callback?error=access_denied&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .unwrap();
    assert_eq!(r.status, 400);
    // From a browser without a session (one with a session is sent on to the site).
    let r = Browser::new()
        .get(&s.url("/oauth2/callback?code=x&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(b.get(&s.url("/logout")).unwrap().status, 302);

    // Each counter moved by exactly what was done above; every other one stayed.
    let expected: BTreeMap<String, u64> = [
        // The anonymous navigation, and the one that starts the login.
        ("login_redirects", 2),
        ("logins_started", 1),
        ("logins_completed", 1),
        // The landing page after the login, and the API call.
        ("sessions_forwarded", 2),
        ("unauthorized", 1),
        ("bearer_passthrough", 1),
        ("logouts", 1),
        ("callback_failures.idp_error", 1),
        ("callback_failures.state_mismatch", 1),
    ]
    .into_iter()
    .map(|(name, n)| (format!("{STAT}{name}"), n))
    .collect();
    // The per-request counters trail by up to a tick: wait until they have all arrived, then until
    // nothing moves any more (a count that came on top would show then).
    let delta = |now: &HashMap<String, u64>| harness::counter_delta(&before, now);
    let arrived = harness::process::poll(Duration::from_secs(10), || {
        let d = delta(&counters());
        Ok(expected
            .iter()
            .all(|(k, n)| d.get(k).copied().unwrap_or(0) >= *n)
            .then_some(()))
    });
    let got = delta(&settled_counters());
    assert!(
        arrived.is_ok() && got == expected,
        "counted {got:?}, expected {expected:?}"
    );
}

/// The filter's counters (`wasmcustom.oidc_filter.*`) now.
fn counters() -> HashMap<String, u64> {
    stats()
        .into_iter()
        .filter(|(k, _)| k.starts_with(STAT))
        .collect()
}

/// The filter's counters once they have settled: unchanged for 1.5 s, longer than the 1 s tick on
/// which each worker hands Envoy its per-request counts, so nothing counted before is still to come.
/// Only meaningful under `idp_exclusive` (nobody else sends requests meanwhile).
fn settled_counters() -> HashMap<String, u64> {
    let read = || Ok(counters());
    harness::process::settled(
        Duration::from_secs(20),
        Duration::from_millis(1500),
        read,
        Clone::clone,
    )
    .expect("the filter's counters settle")
}

// 12. The IdP failing during a login, and the logs.

#[test]
fn token_endpoint_down_or_hanging_fails_the_login_cleanly() {
    let _idp = idp_hold::exclusive();
    let proxy = stack().idp_proxy();
    let before = stats();

    // Refused while the callback exchanges the code.
    let s = site("main");
    let b = Browser::new();
    let callback = until_callback(&b, s, &s.url("/login?rd=/"));
    stack().set_idp_mode(Mode::Refuse);
    let r = b.get(&callback);
    proxy.set_mode(Mode::Forward);
    let r = r.unwrap();
    // A refused connection is the IdP's failure (502), not a timeout (504, below).
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("Login failed"), "{}", r.body);
    assert!(session_cookies(&b).is_empty());
    // Starting again works once the IdP is back.
    login(&b, s, "/again");

    // Hanging longer than callout_timeout (2 s on this site).
    let s = site("slow");
    let b = Browser::new();
    let callback = until_callback(&b, s, &s.url("/login?rd=/"));
    stack().set_idp_mode(Mode::Hang);
    let t = Instant::now();
    let r = b.get(&callback);
    let took = t.elapsed();
    proxy.set_mode(Mode::Forward);
    let r = r.unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        // This site's 2 s, not the default 5 s: the IdP never answers, so only a timeout ends the
        // wait, and the default one could not end it before 5 s.
        took >= Duration::from_millis(1900) && took < Duration::from_millis(4900),
        "{took:?}"
    );
    assert!(session_cookies(&b).is_empty());
    assert_counted(&before, "callback_failures.timeout");
    assert_counted(&before, "callback_failures.token_endpoint");
    assert_log_clean(&[]);
}

#[test]
fn logs_carry_no_secrets_and_no_panics() {
    let _idp = idp_hold::shared();
    let s = site("main");
    let b = Browser::new();
    let callback = until_callback(&b, s, &s.url("/login?rd=/"));
    let code = query_param(&callback, "code").unwrap();
    let state = query_param(&callback, "state").unwrap();
    let attempt = b
        .stored_cookies("localhost")
        .into_iter()
        .find(|c| c.name.starts_with(LOGIN_COOKIE_PREFIX))
        .unwrap()
        .value;
    b.follow(b.get(&callback).unwrap(), 3).unwrap();
    let cookie = b.cookie("localhost", SESSION).unwrap();
    let token = app_bearer(&api(&b, &s.url("/")));
    b.get(&s.url("/logout")).unwrap();

    let mut secrets = vec![
        code.as_str(),
        state.as_str(),
        attempt.as_str(),
        cookie.as_str(),
        token.as_str(),
        DEFAULT_COOKIE_KEYS,
        KEY_B,
    ];
    // The signature part of the token: no fragment of it either.
    let sig = token.rsplit('.').next().unwrap();
    secrets.push(sig);
    for site in stack().sites() {
        secrets.push(&site.client_secret);
    }
    assert_log_clean(&secrets);
}
