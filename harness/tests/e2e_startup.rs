//! End to end, from a cold start: Envoy comes up before its IdP is reachable. Its own stack (the
//! IdP starts late), so the main e2e stack is never disturbed.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::browser::describe_chain;
use harness::{Browser, Mode, Response, Site, SiteSpec, Stack, StackSpec, WebDriver};
use oidc_filter::secret::Secret;
use oidc_filter::session::Session;
use serde_json::json;

fn assert_not_ready(r: &Response) {
    assert_eq!(r.status, 503, "{} {}", r.url, r.body);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // When the worker tries the IdP again: its tries back off from 1 s to 30 s.
    assert!((1..=31).contains(&retry), "{retry}");
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

/// Review (do the answers tell the truth): the IdP is up and answers, its discovery document loads, but
/// its key set holds no key the filter verifies with (here an empty one, as from an IdP that signs with
/// HS256: authentik without a signing key). The operator's log says so (`JWKS has no usable signing
/// key`), and the site stays unavailable, rightly; but the `503` every user gets said "the identity
/// provider has not been reached", and a `/logout` said "the identity provider could not be reached, so
/// you may still be logged in there" and left the user logged in at the IdP, though the filter had read
/// its end-session endpoint (a logout needs no key).
#[test]
fn an_idp_whose_keys_are_unusable_is_not_said_to_be_unreached_and_logout_still_reaches_it() {
    let stack = Stack::start(StackSpec {
        start_idp: false,
        ..StackSpec::new("e2e_startup_keys", vec![SiteSpec::new("app")])
    })
    .unwrap();
    let s = stack.site("app").unwrap();
    // The IdP's own documents, but an empty key set at its `jwks_uri`.
    let jwks_path = {
        let after_scheme = stack.issuer().split_once("://").unwrap().1;
        let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        format!("{}/jwks", path.trim_end_matches('/'))
    };
    stack.start_idp().unwrap();
    stack.idp_proxy().set_mode(Mode::RespondFor {
        path_prefix: jwks_path,
        containing: None,
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"keys":[]}"#.into(),
    });
    stack
        .wait_for_envoy_log(
            "JWKS has no usable signing key (0 skipped)",
            Duration::from_secs(45),
        )
        .unwrap();
    let discovery = Browser::new()
        .get(&stack.idp_url("/.well-known/openid-configuration"))
        .unwrap()
        .json()
        .unwrap();
    let end_session = discovery["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_string();

    // What a person sees in Chromium.
    let driver = WebDriver::start(stack.dir()).unwrap();
    driver.goto(&s.url("/after")).unwrap();
    let seen = driver
        .execute("return document.body.innerText;", json!([]))
        .unwrap();
    let seen = seen.as_str().unwrap_or_default().to_string();
    driver.quit().unwrap();
    assert!(
        seen.contains("Login is not available") && seen.contains("answered"),
        "{seen}"
    );
    assert!(!seen.contains("not been reached"), "Chromium shows: {seen}");

    // Every user, a browser's page, a login, an API client: 503, rightly, but not "not reached".
    for (path, accept) in [
        ("/after", harness::browser::HTML_ACCEPT),
        ("/login?rd=%2Fafter", harness::browser::HTML_ACCEPT),
        ("/api", "application/json"),
    ] {
        let r = Browser::new()
            .get_with(&s.url(path), &[("accept", accept)])
            .unwrap();
        assert_not_ready(&r);
        assert!(
            !r.body.contains("not been reached"),
            "{path}: the IdP was reached, and its keys are what is wrong: {}",
            r.body
        );
    }

    // A logged-in user (a session from before the restart, whose token is valid) logs out: the IdP's
    // end-session endpoint is known, so the user goes there, as with usable keys.
    let cookie = session_from_before(&stack, s);
    let b = Browser::new();
    let r = b
        .get_with(&s.url("/logout"), &[("cookie", cookie.as_str())])
        .unwrap();
    assert!(
        !r.body.contains("could not be reached"),
        "the IdP was reached: {} {}",
        r.status,
        r.body
    );
    assert_eq!(r.status, 302, "{}", r.body);
    let location = r.location().unwrap();
    assert!(
        location.starts_with(&format!("{end_session}?")),
        "{location}"
    );
}

/// Review (do the answers tell the truth): the IdP's discovery document names a token endpoint on a host
/// this proxy has no cluster for (Google's token endpoint is on another host than its issuer; a
/// ServiceEntry left out). A session's renewal cannot even be sent, and its request is answered at once;
/// but the operator's line said `token refresh failed, answered 503: no answer from the token endpoint
/// within callout_timeout`, sending them after the IdP's latency, where it should say the call could not
/// be made (the cluster, as the login's `cannot call the IdP: …` does).
#[test]
fn a_renewal_that_cannot_be_sent_is_not_logged_as_a_token_endpoint_that_did_not_answer() {
    let stack = Stack::start(StackSpec {
        start_idp: false,
        // Each endpoint's cluster named after its URL, as on Istio (no `idp_cluster`).
        ..StackSpec::new(
            "e2e_startup_unsent",
            vec![SiteSpec::new("app").filter(json!({"idp_cluster": null}))],
        )
    })
    .unwrap();
    let s = stack.site("app").unwrap();
    stack.start_idp().unwrap();
    stack.idp_proxy().set_mode(Mode::Refuse);
    let idp = format!("http://{}", stack.idp_addr().unwrap());
    let mut discovery = Browser::new()
        .get(&format!("{idp}/.well-known/openid-configuration"))
        .unwrap()
        .json()
        .unwrap();
    // The token endpoint on a host no cluster of this proxy serves.
    discovery["token_endpoint"] = json!("http://token.invalid:8443/token");
    let discovery_path = {
        let after_scheme = stack.issuer().split_once("://").unwrap().1;
        let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        format!(
            "{}/.well-known/openid-configuration",
            path.trim_end_matches('/')
        )
    };
    stack.idp_proxy().set_mode(Mode::RespondFor {
        path_prefix: discovery_path,
        containing: None,
        status: 200,
        content_type: "application/json".into(),
        body: discovery.to_string(),
    });
    stack.wait_keys_loaded(Duration::from_secs(60)).unwrap();

    // A session from before, whose token has expired, with a refresh token.
    let now = harness::unix_now();
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({"iss": stack.issuer(), "aud": s.client_id, "sub": "alice", "iat": now - 700, "exp": now - 100});
    let id_token = format!("{}.{}.c2ln", b64(&json!({"alg": "RS256"})), b64(&claims));
    let session = Session {
        id_token: Secret::new(id_token),
        access_token: None,
        refresh_token: Some(Secret::new("a-refresh-token")),
        token_expires_at: now - 100,
        expires_at: now + 3600,
        sub: "alice".into(),
        login_sid: None,
        login_id: Some(Session::login_id_made_at(now - 700, 7)),
        renew_at_expiry: false,
    };
    let cookie = harness::sealed::seal(&session).unwrap();
    let t = Instant::now();
    let r = Browser::new()
        .get_with(
            &s.url("/after"),
            &[("cookie", cookie.as_str()), ("accept", "application/json")],
        )
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json().unwrap()["error"],
        "renewal_unavailable",
        "{}",
        r.body
    );
    // Answered at once: nothing was waited for.
    assert!(took < Duration::from_secs(2), "{took:?}");
    let line = "token refresh failed, answered 503: ";
    stack
        .wait_for_envoy_log(line, Duration::from_secs(10))
        .unwrap();
    let log = stack.envoy_log().unwrap();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(line)).collect();
    assert!(
        said.iter()
            .all(|l| !l.contains("no answer from the token endpoint within callout_timeout")),
        "the call was never sent (no cluster), yet the line blames the IdP's silence: {said:?}"
    );
    assert!(
        said.iter().all(|l| l.contains(
            "cannot call the IdP: cluster `outbound|8443||token.invalid`: BadArgument (is the cluster defined on this proxy?)"
        )),
        "the line should name the cluster the proxy does not have: {said:?}"
    );
}

/// Review (the filter's host calls read against Envoy's): a call Envoy fails before it is sent, because
/// the cluster has no endpoint (a `ServiceEntry` whose host does not resolve), comes back
/// `InternalFailure`, and the line said `(is the cluster defined on this proxy?)`, sending the operator
/// to look for a cluster that is there. Now it says what failed.
#[test]
fn an_idp_cluster_without_endpoints_is_not_said_to_be_undefined() {
    let cluster = "idp-no-endpoint";
    let mut site = SiteSpec::new("app").filter(json!({ "idp_cluster": cluster }));
    site.clusters = vec![(cluster.into(), "127.0.0.1:0".parse().unwrap())];
    let stack = Stack::start(StackSpec {
        start_idp: false,
        ..StackSpec::new("e2e_startup_no_endpoint", vec![site])
    })
    .unwrap();
    let s = stack.site("app").unwrap();
    assert_not_ready(&Browser::new().get(&s.url("/")).unwrap());
    let line = format!("cannot call the IdP: cluster `{cluster}`: ");
    stack
        .wait_for_envoy_log(&line, Duration::from_secs(10))
        .unwrap();
    let log = stack.envoy_log().unwrap();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
    let why = "InternalFailure (failed at once: no healthy endpoint, or a circuit breaker open?)";
    assert!(
        said.iter().all(|l| l.contains(why)),
        "the cluster is defined, with no endpoint: {said:?}"
    );
}
