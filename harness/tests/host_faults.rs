//! Faults Envoy does not produce on request, with the real module in Node's V8 under a small proxy-wasm
//! host (`harness/profile-host.mjs`):
//! - the host refuses to change a request header: the filter must then answer 500 itself, never forward
//!   a request it could not clean (a client's own `Authorization` or identity headers would stand for a
//!   user, and the session cookie would reach the app);
//! - the host refuses to send a callout (Envoy's answer for a cluster it does not have, as while a
//!   `ServiceEntry` is being replaced): a session due for a refresh must go on with its still-valid token,
//!   as through an IdP outage, not fail every request with 502; and the warning is not one per request.
//!   A login whose code exchange the host will not send gets 502 and is counted as a failed callback;
//! - a request ends while keys fetched for a new `kid` are on their way (the IdP gave up on its
//!   back-channel post, or the app answered it first): the keys are still taken in, and the logout
//!   recorded.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use harness::sealed::seal;
use oidc_filter::secret::Secret;
use oidc_filter::session::Session;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example.com";
const CLIENT: &str = "app";
const REQUESTS: u64 = 5;

/// What the host saw of `REQUESTS` logged-in requests, with header changes refused or not.
fn play(refuse: bool) -> Value {
    let now = unix_now();
    run_host(
        &format!("headers-{refuse}"),
        Some(&session(now, now + 3600, None)),
        None,
        &[("REFUSE_HEADER_WRITES", if refuse { "1" } else { "0" })],
    )
}

/// A session as the filter seals it after a login, for an hour, its token valid from `iat` to `exp`.
fn session(iat: u64, exp: u64, refresh_token: Option<&str>) -> Session {
    Session {
        id_token: Secret::new(id_token(iat, exp)),
        access_token: None,
        refresh_token: refresh_token.map(Secret::new),
        token_expires_at: exp,
        expires_at: unix_now() + 3600,
        sub: "alice".into(),
        login_sid: None,
        login_id: Some(1),
        renew_at_expiry: false,
    }
}

/// The IdP's discovery document and keys, for the host to answer the filter's fetches with.
fn idp_documents() -> Value {
    let root = harness::workspace_root().join("testdata");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    json!({
        "/.well-known/openid-configuration": {"status": 200, "body": read("discovery/good.json")},
        "/oauth2/keys": {"status": 200, "body": read("jwks/keys.json")},
    })
}

/// An ID token as the filter seals it after a login: it was checked then, so only its claims matter now
/// (issuer, audience, times).
fn id_token(iat: u64, exp: u64) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "kid": "k"})),
        b64(&json!({"iss": ISSUER, "aud": CLIENT, "sub": "alice", "iat": iat, "exp": exp}))
    )
}

/// The warnings (and worse) the module logged under the host.
fn warnings(seen: &Value) -> Vec<&str> {
    seen["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `REQUESTS` requests carrying `session` through the module under the Node host, which answers
/// the callouts named in `replies`, with `env` in the host's environment; returns what the host saw.
fn run_host(
    name: &str,
    session: Option<&Session>,
    replies: Option<Value>,
    env: &[(&str, &str)],
) -> Value {
    let dir = harness::target_dir().join("host-faults");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("input-{name}.json"));
    // The secrets from the VM's environment, as the gateway gives them.
    let config = json!({
        "issuer": ISSUER, "client_id": CLIENT, "client_secret_env": "CLIENT_SECRET",
        "cookie_keys_env": "COOKIE_KEYS",
        "backchannel_logout_path": "/oauth2/backchannel-logout",
    });
    let cookie = session.map(|s| seal(s).unwrap()).unwrap_or_default();
    let mut input_json = json!({"config": config.to_string(),
        "env": {"CLIENT_SECRET": "s", "COOKIE_KEYS": harness::DEFAULT_COOKIE_KEYS},
        "cookie": cookie, "logout": {"iss": ISSUER, "aud": CLIENT}});
    if let Some(replies) = replies {
        input_json["replies"] = replies;
    }
    std::fs::write(&input, input_json.to_string()).unwrap();
    let out = Command::new("node")
        .arg(harness::workspace_root().join("harness/profile-host.mjs"))
        .arg(harness::wasm_path().unwrap())
        .arg(&input)
        .arg(REQUESTS.to_string())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_request_whose_headers_the_host_will_not_change_is_answered_500_not_forwarded() {
    // The session is good: with a willing host every request goes up with its bearer token.
    let willing = play(false);
    assert_eq!(willing["forwarded"], REQUESTS, "{willing}");
    assert_eq!(willing["setAuthorization"], REQUESTS, "{willing}");
    assert_eq!(willing["local"], 0, "{willing}");

    let refusing = play(true);
    assert_eq!(refusing["forwarded"], 0, "{refusing}");
    assert_eq!(refusing["local"], REQUESTS, "{refusing}");
    assert_eq!(refusing["localStatus"], 500, "{refusing}");
}

#[test]
fn a_refresh_the_host_will_not_send_keeps_the_session_while_its_token_lasts() {
    // Due for a refresh: 30 s of its hour left, within the 60 s `refresh_margin`.
    let now = unix_now();
    let due = session(now - 3570, now + 30, Some("refresh-token"));
    let seen = run_host(
        "refresh",
        Some(&due),
        Some(idp_documents()),
        &[("REFUSE_CALLS", "1")],
    );
    // The first request tried to renew the session and the host refused the call; that pauses the
    // worker's renewals for 5 s, so the others asked nothing. Each still went up with the session's
    // token.
    assert_eq!(seen["refusedCalls"], 1, "{seen}");
    assert_eq!(seen["forwarded"], REQUESTS, "{seen}");
    assert_eq!(seen["setAuthorization"], REQUESTS, "{seen}");
    assert_eq!(
        seen["authorizations"],
        json!([format!("Bearer {}", due.id_token.expose())]),
        "{seen}"
    );
    assert_eq!(seen["local"], 0, "{seen}");
    // One warning, naming the cluster, not one per request.
    let warnings = warnings(&seen);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("cannot call the IdP: cluster `outbound|443||idp.example.com`"),
        "{warnings:?}"
    );
}

#[test]
fn a_code_exchange_the_host_will_not_send_is_a_counted_502() {
    let seen = run_host(
        "login",
        None,
        Some(idp_documents()),
        &[("REFUSE_CALLS", "1"), ("LOGIN_FLOW", "1")],
    );
    assert_eq!(seen["statuses"], json!([302, 502]), "{seen}");
    assert_eq!(seen["refusedCalls"], 1, "{seen}");
    assert_eq!(
        seen["counters"]["oidc_filter.callback_failures.token_endpoint"], 1,
        "{seen}"
    );
    // Found in review: it was a bare line of text, with no way back, and logged only as a call the
    // host refused; now the login-failed page, and the line every failed callback gets.
    let body = seen["body"].as_str().unwrap();
    assert!(body.contains("<h1>Login failed</h1>"), "{body}");
    assert!(body.contains("Start again"), "{body}");
    let warnings = warnings(&seen);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("login callback failed (token_endpoint), answered 502: cannot call the IdP: cluster `outbound|443||idp.example.com`"),
        "{warnings:?}"
    );
}

/// Found in review: keys fetched for a new `kid` whose request had ended before they came (the IdP's
/// client gave up, or the app answered the IdP's POST first) were dropped with the request, and so was
/// the back-channel logout that waited for them, while the fetch had used up the worker's one fetch for
/// a `kid` in 30 s: the IdP's next post of that logout got 503. The ended request is kept for the keys,
/// which are taken in, and the logout is recorded.
#[test]
fn keys_fetched_for_a_logout_whose_request_ended_are_taken_in_and_the_logout_recorded() {
    let mut replies = idp_documents();
    replies["/oauth2/keys"] = json!([replies["/oauth2/keys"].clone()]);
    let seen = run_host(
        "orphan-logout",
        None,
        Some(replies),
        &[("ORPHAN_LOGOUT", "1")],
    );
    // The first post fetched the keys again (the third call, after discovery and the first keys) and
    // got no answer of its own: its request had ended.
    assert_eq!(seen["refetches"], 3, "{seen}");
    assert_eq!(seen["statuses"], json!([0, 200]), "{seen}");
    // Both posts ended the session: the one whose request ended, and the one after it, which needed
    // no fetch.
    assert_eq!(seen["calls"], 3, "{seen}");
    assert_eq!(
        seen["counters"]["oidc_filter.backchannel_logouts"], 2,
        "{seen}"
    );
}
