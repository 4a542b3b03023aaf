//! End to end, from a cold start: Envoy comes up before its IdP is reachable. Its own stack (the
//! IdP starts late), so the main e2e stack is never disturbed.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::browser::describe_chain;
use harness::{Browser, Mode, Response, Site, SiteSpec, Stack, StackSpec};
use oidc_filter::secret::Secret;
use oidc_filter::session::Session;
use serde_json::json;

fn assert_not_ready(r: &Response) {
    assert_eq!(r.status, 503, "{} {}", r.url, r.body);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.header("location").is_none());
}

#[test]
fn filter_waits_for_its_idp_and_refuses_a_foreign_discovery_document() {
    let t0 = Instant::now();
    let stack = Stack::start(StackSpec {
        start_idp: false,
        ..StackSpec::new("e2e_startup", vec![SiteSpec::new("app")])
    })
    .unwrap();
    let s = stack.site("app").unwrap();

    // The IdP refuses connections: protected paths wait, bypass paths do not.
    let b = Browser::new();
    assert_not_ready(&b.get(&s.url("/")).unwrap());
    assert_not_ready(&b.get(&s.url("/login")).unwrap());
    assert_not_ready(
        &b.get_with(&s.url("/api"), &[("accept", "application/json")])
            .unwrap(),
    );
    let health = b
        .get_with(&s.url("/healthz"), &[("accept", "application/json")])
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json().unwrap()["path"], "/healthz");

    // A session from before Envoy restarted, logged out while the IdP is down: ended here all the same,
    // and the user told that the IdP's session may live on (found by a black-box test: it went to `/`
    // as if the IdP had no end-session endpoint, and the next visit logged the user in again without
    // a password). Held for the IdP first, as a login is.
    let cookie = session_from_before(&stack, s);
    let r = b
        .get_with(&s.url("/logout"), &[("cookie", cookie.as_str())])
        .unwrap();
    assert_not_ready(&r);
    assert!(
        r.body.contains("may still be logged in there"),
        "{}",
        r.body
    );
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("_oidc_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );

    // Something answers with a redirect (an `http` issuer for an `https` IdP, a missing `/`): the log
    // line says where to, without the query (found in review: only "HTTP 301").
    let moved_to = "https://idp.example/realms/demo/.well-known/openid-configuration";
    stack.idp_proxy().set_mode(Mode::Redirect {
        location: format!("{moved_to};jsessionid=hush1?session=hush2#hush3"),
    });
    let line = format!("failed: HTTP 301 to \"{moved_to}\"; retrying");
    stack
        .wait_for_envoy_log(&line, Duration::from_secs(20))
        .unwrap();
    // One that names a user is not shown.
    stack.idp_proxy().set_mode(Mode::Redirect {
        location: "https://admin:hush4@idp.example/".into(),
    });
    stack
        .wait_for_envoy_log("failed: HTTP 301; retrying", Duration::from_secs(40))
        .unwrap();
    assert!(!stack.envoy_log().unwrap().contains("hush"));
    assert_not_ready(&b.get(&s.url("/")).unwrap());

    // Something answers, but with another issuer's document: refused, still not ready.
    let foreign = json!({
        "issuer": "https://evil.example",
        "authorization_endpoint": "https://evil.example/auth",
        "token_endpoint": "https://evil.example/token",
        "jwks_uri": "https://evil.example/jwks",
    });
    stack
        .idp_proxy()
        .set_mode(Mode::respond(200, "application/json", &foreign.to_string()));
    let mismatch = format!(
        "discovery issuer \"https://evil.example\" is not the configured issuer \"{}\"",
        stack.issuer()
    );
    // (The tries are up to 30 s apart by now.)
    stack
        .wait_for_envoy_log(&mismatch, Duration::from_secs(40))
        .unwrap();
    assert_not_ready(&b.get(&s.url("/")).unwrap());
    assert_not_ready(&Browser::new().get(&s.url("/login")).unwrap());

    // The IdP comes up: the filter gets ready by itself, in each of its VMs (Envoy's main thread
    // and the two workers).
    assert_eq!(stack.keys_loaded("app", stack.issuer()).unwrap(), 0);
    stack.start_idp().unwrap();
    stack
        .wait_keys_loaded(Duration::from_secs(45))
        .unwrap_or_else(|e| panic!("not ready after the IdP came up: {e:#}"));
    for _ in 0..4 {
        let r = Browser::new().get(&s.url("/after")).unwrap();
        assert_eq!(r.status, 302, "{}", r.body);
        assert_eq!(r.header("location"), Some("/login?rd=%2Fafter"));
    }
    let b = Browser::new();
    let done = b.login(&s.url("/after"), "alice").unwrap();
    assert_eq!(done.response.status, 200, "{}", describe_chain(&done.chain));
    assert!(
        done.response.body.contains("Hello, alice@example.com"),
        "{}",
        done.response.body
    );
    let log = stack.envoy_log().unwrap();
    assert!(!log.to_ascii_lowercase().contains("panic"), "{log}");
    eprintln!("whole test {:?}", t0.elapsed());
}

/// The `Cookie` header of a session of `s`, sealed with the stack's key as a login before Envoy restarted
/// would have left it: its ID token as the filter reads a sealed one (its claims; the signature was
/// checked at that login).
fn session_from_before(stack: &Stack, s: &Site) -> String {
    let now = harness::unix_now();
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({"iss": stack.issuer(), "aud": s.client_id, "sub": "alice", "iat": now, "exp": now + 600});
    let id_token = format!("{}.{}.c2ln", b64(&json!({"alg": "RS256"})), b64(&claims));
    let session = Session {
        id_token: Secret::new(id_token),
        access_token: None,
        refresh_token: None,
        token_expires_at: now + 600,
        expires_at: now + 600,
        sub: "alice".into(),
        login_sid: None,
        login_id: Some(7),
        renew_at_expiry: false,
    };
    harness::sealed::seal(&session).unwrap()
}
