//! Log audit: with the wasm component at trace level (everything the filter can print, and Envoy's
//! own wasm lines), run a login, a refresh with a rotated refresh token, a logout, a failed refresh
//! and every kind of failed callback; then no token, code, state, nonce, verifier, client secret,
//! cookie key or cookie value may appear in Envoy's log, whole or as a recognisable part.
//!
//! Not audited: Envoy's access log, which records request paths, so the callback's one-time code
//! (useless without the PKCE verifier, and expired within a minute) is there by Envoy's design.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use harness::browser::query_param;
use harness::idp::{Forge, forge_id_token};
use harness::sealed;
use harness::{Browser, Mode, Response, SiteSpec, Stack, StackSpec, unix_now};
use oidc_filter::session::{Keys, LoginState, Session};
use serde_json::json;

const SITE: &str = "app";
const COOKIE: &str = "_oidc_session";
const HOST: &str = "localhost";

/// Everything secret one login attempt produced.
struct Attempt {
    state: String,
    nonce: String,
    verifier: String,
    cookie: String,
}

fn start(stack: &Stack, b: &Browser) -> (Attempt, String) {
    // Each worker loads discovery and keys on its own: until then /login answers 503 (Retry-After).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let r = loop {
        let r = b
            .get(&stack.site(SITE).unwrap().url("/login?rd=/audited"))
            .unwrap();
        if r.status != 503 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(r.status, 302, "{}", r.body);
    let authorize = r.location().unwrap();
    let state = query_param(&authorize, "state").unwrap();
    let name = format!("{COOKIE}_login_{}", &state[..12]);
    let cookie = b.cookie(HOST, &name).unwrap();
    let login = LoginState::decode(&keys().open(&name, &cookie).unwrap()).unwrap();
    assert_eq!(login.state.expose(), state);
    let attempt = Attempt {
        nonce: query_param(&authorize, "nonce").unwrap(),
        verifier: login.verifier.expose().to_string(),
        state,
        cookie,
    };
    (attempt, authorize)
}

fn api(stack: &Stack, cookie: &str) -> Response {
    Browser::new()
        .get_with(
            &stack.site(SITE).unwrap().url("/x"),
            &[("accept", "application/json"), ("cookie", cookie)],
        )
        .unwrap()
}

#[test]
fn no_secret_reaches_envoys_log_at_trace_level() {
    let stack = Stack::start(StackSpec {
        envoy_component_log_level: Some("wasm:trace".into()),
        ..StackSpec::new(
            "log_audit",
            vec![SiteSpec {
                client_secret: "audit-client-secret-0123456789".into(),
                ..SiteSpec::new(SITE)
                    .filter(json!({"post_logout_redirect_uri": "/"}))
                    .idp_client(json!({"rotate_refresh_token": true}))
            }],
        )
    })
    .unwrap();
    let site = stack.site(SITE).unwrap().clone();
    // Every worker ready, not only the first to answer.
    stack.wait_ready(SITE).unwrap();
    let mut secrets: Vec<String> = vec![
        harness::DEFAULT_COOKIE_KEYS.to_string(),
        site.client_secret.clone(),
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", site.client_id, site.client_secret)),
    ];
    let attempt_secrets = |a: &Attempt| {
        vec![
            a.state.clone(),
            a.nonce.clone(),
            a.verifier.clone(),
            a.cookie.clone(),
        ]
    };

    // A login through the real IdP.
    let b = Browser::new();
    let (attempt, authorize) = start(&stack, &b);
    secrets.extend(attempt_secrets(&attempt));
    let mut resp = b.get(&authorize).unwrap();
    let callback_url = loop {
        if resp.url.starts_with(&site.url("/oauth2/callback")) {
            break resp.url.clone();
        }
        let form = resp.forms().into_iter().find(|f| {
            f.fields
                .iter()
                .any(|(n, v)| n == "prompt" && (v == "login" || v == "consent"))
        });
        resp = match form {
            Some(f) => b
                .submit(&f, &[("login", "alice"), ("password", "pw-not-secret")])
                .unwrap(),
            None => b.get(&resp.location().unwrap()).unwrap(),
        };
    };
    let code = query_param(&callback_url, "code").unwrap();
    secrets.push(code.clone());
    assert_eq!(resp.status, 302, "{}", resp.body);
    let live = session_cookies(&b);
    let s = open_session(&live);
    secrets.push(live.clone());
    secrets.push(s.id_token.expose().to_string());
    secrets.push(s.refresh_token.as_ref().unwrap().expose().to_string());
    assert_eq!(api(&stack, &live).status, 200);

    // A refresh (the IdP rotates the refresh token), then the old refresh token once more: refused.
    let mut due = s.clone();
    due.token_expires_at = unix_now() + 30;
    let due = seal(&due);
    secrets.push(due.clone());
    std::thread::sleep(Duration::from_millis(1100));
    let r = api(&stack, &due);
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed: Vec<&str> = r
        .set_cookies()
        .into_iter()
        .filter_map(|c| c.split(';').next())
        .filter(|p| p.starts_with(COOKIE) && !p.ends_with('='))
        .collect();
    let renewed = renewed.join("; ");
    let fresh = open_session(&renewed);
    secrets.push(renewed.clone());
    secrets.push(fresh.id_token.expose().to_string());
    secrets.push(fresh.refresh_token.as_ref().unwrap().expose().to_string());
    // The login's own refresh token, which the refresh above spent (in `secrets` already): the IdP
    // refuses it, and the filter logs why, with the token it sent nowhere in the line.
    assert_ne!(fresh.refresh_token, s.refresh_token, "the IdP rotated it");
    let mut stale = s.clone();
    stale.token_expires_at = unix_now() - 1;
    let stale = seal(&stale);
    secrets.push(stale.clone());
    let r = api(&stack, &stale);
    assert_eq!(r.status, 401, "{}", r.body);

    // The same code again (invalid_grant; the IdP also revokes what the code gave), with a copy of
    // the spent login cookie.
    let replay = Browser::new()
        .get_with(
            &callback_url,
            &[(
                "cookie",
                &format!("{COOKIE}_login_{}={}", &attempt.state[..12], attempt.cookie),
            )],
        )
        .unwrap();
    assert_eq!(replay.status, 400, "{}", replay.body);

    // Failed callbacks: no state, a foreign state, an IdP error, and token endpoint answers that
    // echo secrets back or carry forged tokens.
    let b = Browser::new();
    let (a, _) = start(&stack, &b);
    secrets.extend(attempt_secrets(&a));
    for q in [
        "code=c0de-not-logged-0123".to_string(),
        format!("code=c0de-not-logged-0123&state={}", "A".repeat(43)),
        // The IdP's description is logged (the operator's only word of why), but not one that quotes
        // the login's secrets, as an IdP that echoes the request would.
        format!(
            "error=invalid_request&error_description=state%20{}%20nonce%20{}%20refused&state={}",
            a.state, a.nonce, a.state
        ),
    ] {
        let r = b.get(&site.url(&format!("/oauth2/callback?{q}"))).unwrap();
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }
    let jwks = stack.idp_jwks_file().unwrap().to_path_buf();
    let claims = |nonce: &str| {
        json!({"iss": stack.issuer(), "aud": site.client_id, "sub": "mallory", "nonce": nonce,
               "iat": unix_now(), "exp": unix_now() + 300})
    };
    let answers: Vec<(u16, String)> = vec![
        (
            400,
            json!({"error": "invalid_request", "error_description": format!("bad code {code} for {}", site.client_secret)})
                .to_string(),
        ),
        // The error code too (found by a black-box test: it was logged as sent, in its characters).
        (
            401,
            json!({"error": format!("bad secret {}", site.client_secret)}).to_string(),
        ),
        (500, format!("<html>upstream failed for verifier {}</html>", a.verifier)),
        (200, format!("{{\"access_token\": \"at-secret-0123456789\", \"oops\": {}", a.verifier)),
        (
            200,
            json!({"access_token": "at-secret-0123456789", "token_type": "Bearer",
                   "id_token": forge_id_token(&jwks, Forge::AlgNone, &json!({}), &claims(&a.nonce)).unwrap()})
            .to_string(),
        ),
        (
            200,
            json!({"access_token": "at-secret-0123456789", "token_type": "Bearer",
                   "id_token": forge_id_token(&jwks, Forge::OtherKey, &json!({}), &claims(&a.nonce)).unwrap()})
            .to_string(),
        ),
        (
            200,
            json!({"access_token": "at-secret-0123456789", "token_type": "Bearer",
                   "id_token": forge_id_token(&jwks, Forge::Rs256, &json!({}), &claims("wrong-nonce")).unwrap()})
            .to_string(),
        ),
    ];
    secrets.push("at-secret-0123456789".into());
    for (status, body) in answers {
        if let Some(t) = body.split("\"id_token\":\"").nth(1) {
            secrets.push(t.split('"').next().unwrap().to_string());
        }
        let b = Browser::new();
        let (a, _) = start(&stack, &b);
        secrets.extend(attempt_secrets(&a));
        stack.set_idp_mode(Mode::respond_for(
            "/token",
            status,
            "application/json",
            &body,
        ));
        let r = b
            .get(&site.url(&format!(
                "/oauth2/callback?code=c0de-forged-0123456&state={}",
                a.state
            )))
            .unwrap();
        stack.idp_proxy().set_mode(Mode::Forward);
        assert!(
            matches!(r.status, 400 | 502),
            "{status} {body}: {} {}",
            r.status,
            r.body
        );
    }
    secrets.push("c0de-forged-0123456".into());

    // Logout sends the ID token to the IdP as id_token_hint, in the browser's redirect only.
    let out = Browser::new()
        .get_with(&site.url("/logout"), &[("cookie", &renewed)])
        .unwrap();
    assert_eq!(out.status, 302);

    // Envoy writes its log in batches: read it once a line logged after all of the above is in it.
    let log = log_after_sentinel(&stack);
    let wasm_lines = log.lines().filter(|l| l.contains("[wasm]")).count();
    assert!(
        wasm_lines > 10,
        "the audit saw no wasm lines: is the level right?"
    );
    assert!(
        log.contains("wasm log"),
        "the filter itself printed nothing"
    );
    // The whole value, and any 16-character piece of it (a truncated or split token): every 16-byte
    // window of every secret, looked up for every 16-byte window of the log.
    let mut pieces: HashMap<&[u8], usize> = HashMap::new();
    for (i, secret) in secrets.iter().enumerate() {
        assert!(secret.len() >= 16, "too short to grep for: {secret:?}");
        for w in secret.as_bytes().windows(16) {
            pieces.entry(w).or_insert(i);
        }
    }
    let mut leaked = HashSet::new();
    let mut leaks = Vec::new();
    for line in log.lines() {
        for w in line.as_bytes().windows(16) {
            if let Some(&i) = pieces.get(w)
                && leaked.insert(i)
            {
                leaks.push(format!(
                    "{}… (secret {i}): {line}",
                    String::from_utf8_lossy(&w[..12])
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets in envoy.log:\n{}",
        leaks.join("\n")
    );
    assert!(!log.to_ascii_lowercase().contains("panic"));
    eprintln!(
        "audited {} lines ({wasm_lines} wasm) for {} secrets",
        log.lines().count(),
        secrets.len()
    );
}

/// Envoy's log once it holds everything logged before this call: sends a failed callback whose log
/// line is known and unique (again now and then: such lines are rate-limited) and polls until that
/// line is there.
fn log_after_sentinel(stack: &Stack) -> String {
    stack.envoy_log_after_sentinel(SITE).unwrap()
}

// The filter's cookies, through the shared helpers (harness::sealed).
fn keys() -> Keys {
    sealed::keys().unwrap()
}

fn session_cookies(b: &Browser) -> String {
    sealed::session_cookies(b, HOST)
}

fn open_session(cookie_header: &str) -> Session {
    sealed::open_session(cookie_header).unwrap()
}

fn seal(s: &Session) -> String {
    sealed::seal(s).unwrap()
}

/// Mutation testing of the throttled log lines (`log_admitted`): a flood of failed callbacks, more than
/// the 20 lines a second a kind may log, leaves lines out; the next line of that kind the worker logs says
/// how many, so that an operator reading the log knows it is not the whole story (and how large the
/// flood was). One worker, so that every line counts against one budget.
#[test]
fn the_line_after_a_throttled_flood_says_how_many_were_left_out() {
    let stack = Stack::start(StackSpec {
        concurrency: 1,
        ..StackSpec::new("log_audit_throttle", vec![SiteSpec::new(SITE)])
    })
    .unwrap();
    stack.wait_keys_loaded(Duration::from_secs(60)).unwrap();
    let site = stack.site(SITE).unwrap();
    let bad = |i: usize| {
        let r = Browser::new()
            .get(&site.url(&format!(
                "/oauth2/callback?code=x&state={}{i:02}",
                "B".repeat(41)
            )))
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
    };
    // 70 within a second or three: in one of those seconds more than 20.
    for i in 0..70 {
        bad(i);
    }
    std::thread::sleep(Duration::from_millis(1100));
    bad(99);
    let said = "more of this kind not logged)";
    stack
        .wait_for_envoy_log(said, Duration::from_secs(10))
        .unwrap();
    let log = stack.envoy_log().unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(said)).collect();
    assert!(
        lines.iter().all(|l| {
            l.contains("oidc-filter: login callback failed (state_mismatch), answered 400")
        }),
        "{lines:?}"
    );
    // Only a line after some were left out says so: none says it left out none.
    assert!(!log.contains("(0 more of this kind"), "{lines:?}");
    // The count is of lines left out, each one a bad callback.
    let left_out: usize = lines
        .iter()
        .map(|l| {
            let (before, _) = l.rsplit_once(" more of this kind").unwrap();
            before.rsplit_once('(').unwrap().1.parse::<usize>().unwrap()
        })
        .sum();
    assert!((1..=71 - 20).contains(&left_out), "{lines:?}");
}
