//! Common misconfigurations, end to end: what the README's "Troubleshooting" section and its "Logs"
//! table promise an operator (and what a user sees) when a deployment gets the client secret or the
//! issuer wrong, against the real Envoy and the real IdP.
//!
//! One stack, a site per misconfiguration:
//! - `secret`: the filter's client secret is not the one the IdP has registered;
//! - `slash`: the filter's issuer has a trailing `/` the IdP's discovery document does not have;
//! - `par`: the IdP requires pushed authorization requests of the client (RFC 9126), which the filter
//!   does not make;
//! - `good`: configured right, for the request that anyone can send and to show the IdP logs these users
//!   in.
//!
//! The failed logins count `callback_failures.token_endpoint`, an Envoy-wide counter, and log lines that
//! do not name the site: the tests that cause them hold the IdP exclusively and count exactly.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::Duration;

use harness::browser::describe_chain;
use harness::envoy::cluster_name;
use harness::idp::random_token;
use harness::idp_hold;
use harness::process::poll;
use harness::{Browser, Response, SiteSpec, Stack, StackSpec, wasm_log_lines};
use oidc_filter::session;
use serde_json::json;

const SECRET: &str = "secret";
const SLASH: &str = "slash";
const GOOD: &str = "good";
const PAR: &str = "par";
const COOKIE: &str = "_oidc_session";
const HOST: &str = "localhost";
/// Envoy's log is written asynchronously: generous bounds for a line to show.
const LOG_WAIT: Duration = Duration::from_secs(20);

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        // The filter has `secret-secret` (SiteSpec's default), the IdP another one.
        let secret =
            SiteSpec::new(SECRET).idp_client(json!({"client_secret": "rotated-at-the-idp"}));
        // Never ready, so nothing reaches jwt_authn; without it the site is the filter alone.
        let mut slash = SiteSpec::new(SLASH);
        slash.issuer_suffix = "/".into();
        slash.istio_authn = false;
        // Keycloak's "Pushed authorization request required", Okta's and Auth0's "Require PAR".
        let par =
            SiteSpec::new(PAR).idp_client(json!({"require_pushed_authorization_requests": true}));
        let sites = vec![secret, slash, SiteSpec::new(GOOD), par];
        let stack = Stack::start(StackSpec::new("misconfig", sites)).unwrap();
        for site in [SECRET, GOOD, PAR] {
            stack.wait_ready(site).unwrap();
        }
        stack
    })
}

fn url(site: &str, path: &str) -> String {
    stack().site(site).unwrap().url(path)
}

fn stat(name: &str) -> u64 {
    stack().filter_stat(name).unwrap()
}

/// Session cookies (the cookie or one of its chunks) among `name=value` pairs that set a value.
fn sets_a_session(r: &Response) -> Vec<String> {
    r.set_cookies()
        .into_iter()
        .filter(|c| {
            let (name, rest) = c.split_once('=').unwrap_or((c, ""));
            session::is_session_cookie(COOKIE, name.trim()) && !rest.starts_with(';')
        })
        .map(str::to_string)
        .collect()
}

/// A real login at `site` (through the IdP's login form) whose code exchange the IdP refuses with
/// `why`: the user sees the filter's 502 "Login failed" page and has no session,
/// `callback_failures.token_endpoint` counts it once, and Envoy's log says why at `warning` (istio-proxy's
/// default level), once. `idp_says`: the IdP's own log line for the refusal. Holds the IdP exclusively
/// (the counter and the line are not the site's alone).
fn login_refused_at_the_token_endpoint(site: &str, why: &str, idp_says: &str) {
    let _idp = idp_hold::exclusive();
    let line = format!("oidc-filter: login callback failed (token_endpoint), answered 502: {why}");
    let lines_before = wasm_log_lines(&stack().envoy_log().unwrap(), "warning", &line);
    let idp_before = stack().idp_log().unwrap().matches(idp_says).count();
    let failures = stat("callback_failures.token_endpoint");
    let completed = stat("logins_completed");

    let b = Browser::new();
    let done = b.login(&url(site, "/after"), "alice").unwrap();
    let r = &done.response;
    let chain = describe_chain(&done.chain);
    // The IdP logged the user in and sent the browser back: the callback answered.
    assert!(
        done.chain
            .iter()
            .any(|(u, _)| u.starts_with(&format!("{}/", stack().issuer()))),
        "{chain}"
    );
    assert!(
        r.url.starts_with(&url(site, "/oauth2/callback?")),
        "{chain}"
    );
    assert_eq!(r.status, 502, "{chain}\n{}", r.body);
    assert!(r.body.contains("<h1>Login failed</h1>"), "{}", r.body);
    assert!(
        r.body
            .contains("The identity provider refused this site's client credentials"),
        "{}",
        r.body
    );
    // "Start again" begins a new login towards where this one was going.
    assert!(
        r.body.contains(r#"<a href="/login?rd=%2Fafter">"#),
        "{}",
        r.body
    );
    assert!(r.header("location").is_none(), "{:?}", r.header("location"));
    // No session: none set, none kept; the login attempt's cookie is gone too.
    assert!(sets_a_session(r).is_empty(), "{:?}", r.set_cookies());
    let kept = b.cookies(HOST);
    assert!(
        kept.iter().all(|(n, _)| !n.starts_with(COOKIE)),
        "cookies left for {HOST}: {kept:?}"
    );
    // Not logged in: the site sends the browser to log in again.
    let again = b.get(&url(site, "/after")).unwrap();
    assert_eq!(again.status, 302, "{}", again.body);
    assert_eq!(again.header("location"), Some("/login?rd=%2Fafter"));

    // Counted at once, exactly this login; no login completed.
    assert_eq!(
        stat("callback_failures.token_endpoint") - failures,
        1,
        "callback_failures.token_endpoint"
    );
    assert_eq!(stat("logins_completed"), completed, "logins_completed");
    // The IdP's answer was the refusal.
    let idp = poll(LOG_WAIT, || {
        let log = stack().idp_log()?;
        Ok((log.matches(idp_says).count() > idp_before).then_some(log))
    })
    .unwrap_or_else(|e| panic!("{e}: no {idp_says:?} in idp.log"));
    assert_eq!(idp.matches(idp_says).count(), idp_before + 1, "{idp}");
    // Once everything logged before it is in the log (a later failed callback's line shows), the
    // warning is there, once.
    let log = stack().envoy_log_after_sentinel(site).unwrap();
    let lines = wasm_log_lines(&log, "warning", &line);
    assert_eq!(
        lines,
        lines_before + 1,
        "want one more [warning][wasm] line with {line:?}; the wasm lines:\n{}",
        log.lines()
            .filter(|l| l.contains("][wasm]"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A logged-in request at `site` after a real login: the app greets the user.
fn logs_in(site: &str) {
    let b = Browser::new();
    let done = b.login(&url(site, "/after"), "alice").unwrap();
    assert_eq!(
        done.response.status,
        200,
        "{}\n{}",
        describe_chain(&done.chain),
        done.response.body
    );
    assert!(
        done.response.body.contains("Hello, alice@example.com"),
        "{}",
        done.response.body
    );
}

#[test]
fn a_client_secret_the_idp_does_not_know_ends_the_login_at_a_502_and_warns_why() {
    login_refused_at_the_token_endpoint(
        SECRET,
        "token endpoint answered status 401, error invalid_client",
        "POST /token 401 ",
    );
    // The same IdP and user log in where the secret is right.
    let _idp = idp_hold::shared();
    logs_in(GOOD);
}

#[test]
fn an_issuer_with_a_trailing_slash_the_idp_does_not_have_keeps_logins_unavailable_and_warns_why() {
    let _idp = idp_hold::shared();
    let idp_issuer = stack().issuer();
    let configured = stack().site(SLASH).unwrap().filter_config["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(configured, format!("{idp_issuer}/"));
    let line = format!(
        "oidc-filter: fetching the discovery document of {configured} (cluster `{}`) failed: discovery \
         issuer \"{idp_issuer}\" is not the configured issuer \"{configured}\"; retrying",
        cluster_name(&configured).unwrap()
    );
    poll(LOG_WAIT, || {
        Ok((wasm_log_lines(&stack().envoy_log()?, "warning", &line) > 0).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: no [warning][wasm] line with {line:?} in:\n{}",
            stack().envoy_log().unwrap()
        )
    });
    // A counter to alert on moves with each failed fetch, retries too (at most 30 s apart).
    let failures = stat("idp_fetch_failures");
    assert!(failures > 0);
    poll(Duration::from_secs(40), || {
        Ok((stat("idp_fetch_failures") > failures).then_some(()))
    })
    .expect("the retries are counted too");
    // The document was read and refused: the site is not ready, on every worker (fresh connections), and
    // stays so. A user gets 503 with Retry-After, never a redirect to the IdP.
    for _ in 0..10 {
        for path in ["/login", "/login?rd=%2Fafter", "/after"] {
            let r = Browser::new().get(&url(SLASH, path)).unwrap();
            assert_eq!(r.status, 503, "{path}: {}", r.body);
            let retry: u64 = r
                .header("retry-after")
                .unwrap_or_else(|| panic!("{path}: no Retry-After"))
                .parse()
                .unwrap();
            assert!((1..=31).contains(&retry), "{path}: Retry-After {retry}");
            assert!(r.header("location").is_none(), "{path}");
            // Review (do the answers tell the truth): the IdP was reached, and answered another
            // issuer's document; the page said "the identity provider has not been reached".
            assert!(
                !r.body.contains("not been reached"),
                "{path}: the IdP was reached: {}",
                r.body
            );
        }
    }
    // Never loaded, on any of the VMs (Envoy's main thread and the workers).
    let log = stack().envoy_log().unwrap();
    assert_eq!(
        wasm_log_lines(
            &log,
            "info",
            &format!("{configured}: discovery document loaded")
        ),
        0,
        "{log}"
    );
}

/// Found by a black-box test: an IdP that requires pushed authorization requests of the client answers
/// every login `invalid_request`; the user saw the 400 page, and the gateway's log said nothing at
/// istio-proxy's default level (`warning`), nor the IdP's reason at any. Now the first such answer on a
/// worker is a warning that quotes the IdP's reason.
#[test]
fn an_idp_that_refuses_the_authorization_request_is_a_400_and_a_warning_with_its_reason() {
    let _idp = idp_hold::shared();
    let line = "oidc-filter: login callback failed (idp_error), answered 400: the IdP answered \
                error=invalid_request, \"Pushed Authorization Request must be used\"";
    let failures = stat("callback_failures.idp_error");
    // The IdP sends the browser straight back, without its login form.
    let r = Browser::new()
        .login(&url(PAR, "/after"), "alice")
        .unwrap()
        .response;
    assert!(
        r.url.starts_with(&url(PAR, "/oauth2/callback?")),
        "{}",
        r.url
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("The identity provider did not log you in (invalid_request)."),
        "{}",
        r.body
    );
    assert!(sets_a_session(&r).is_empty(), "{:?}", r.set_cookies());
    assert!(stat("callback_failures.idp_error") > failures);
    poll(LOG_WAIT, || {
        let log = stack().envoy_log()?;
        Ok((wasm_log_lines(&log, "warning", line) > 0).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: no [warning][wasm] line with {line:?} in:\n{}",
            stack().envoy_log().unwrap()
        )
    });
}

#[test]
fn a_callback_that_matches_no_login_is_a_400_logged_at_info_not_warning() {
    let _idp = idp_hold::shared();
    let line = "oidc-filter: login callback failed (state_mismatch), answered 400";
    let infos_before = wasm_log_lines(&stack().envoy_log().unwrap(), "info", line);
    let mismatches = stat("callback_failures.state_mismatch");
    // A well-formed state and a code, but this browser started no login: anyone can send this.
    let state = random_token(32).unwrap();
    assert_eq!(state.len(), 43);
    let r = Browser::new()
        .get(&url(
            GOOD,
            &format!("/oauth2/callback?code=made-up&state={state}"),
        ))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("<h1>Login failed</h1>"), "{}", r.body);
    assert!(
        r.body
            .contains("This login has expired or was already used"),
        "{}",
        r.body
    );
    assert!(sets_a_session(&r).is_empty(), "{:?}", r.set_cookies());
    assert_eq!(
        stat("callback_failures.state_mismatch") - mismatches,
        1,
        "callback_failures.state_mismatch"
    );
    // Logged at info (which istio-proxy does not show by default), and not at warning.
    let log = poll(LOG_WAIT, || {
        let log = stack().envoy_log()?;
        Ok((wasm_log_lines(&log, "info", line) > infos_before).then_some(log))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: no [info][wasm] line with {line:?} in:\n{}",
            stack().envoy_log().unwrap()
        )
    });
    assert_eq!(wasm_log_lines(&log, "warning", line), 0, "{log}");
    assert_eq!(
        wasm_log_lines(&log, "warning", "login callback failed (state_mismatch)"),
        0,
        "{log}"
    );
}
