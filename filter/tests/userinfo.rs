//! `userinfo_path`: a logged-in client reads its own identity as JSON, as oauth2-proxy's
//! `/oauth2/userinfo` answers it, through the same session checks, renewals and claim rules as any
//! request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other whole-flow tests, which use more of it.
#[allow(dead_code)]
mod common;

use common::*;
use oidc_filter::flow::{Metric, Reply};
use serde_json::json;

const PATH: &str = "/oauth2/userinfo";

fn filter(extra: serde_json::Value) -> Filter {
    let mut cfg = json!({"userinfo_path": PATH});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    Filter::ready(config(cfg))
}

/// Logs in with an ID token of the usual claims and `extra` besides.
fn log_in_as(f: &mut Filter, refresh_token: Option<&str>, extra: serde_json::Value) -> Jar {
    log_in_with(f, refresh_token, |nonce| {
        let mut c = claims(Some(nonce));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        mint(&c)
    })
    .0
}

/// The reply's JSON body, after checking it is JSON nobody caches.
fn identity(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
    assert_eq!(header(&r.headers, "cache-control"), Some("no-store"));
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn a_logged_in_client_reads_its_identity_as_oauth2_proxy_answers_it() {
    let mut f = filter(json!({}));
    let jar = log_in_as(
        &mut f,
        None,
        json!({"preferred_username": "alice", "groups": ["admins", "cn=a,dc=b"], "email_verified": true}),
    );
    let r = respond(f.request(&Req::api(PATH).cookies(&jar)));
    assert_eq!(
        identity(&r),
        json!({"user": "user-1", "email": "user-1@example.com", "groups": ["admins", "cn=a,dc=b"],
               "preferredUsername": "alice"})
    );
    assert_eq!(r.metric, Some(Metric::SessionForwarded));
    assert!(set_cookies(&r).is_empty(), "{r:?}");
    // With a query too, and from a browser's address bar.
    let r = respond(f.request(&Req::browser(&format!("{PATH}?x=1")).cookies(&jar)));
    assert_eq!(identity(&r)["user"], "user-1");
    // A path under it, or beside it, is the app's.
    for other in [format!("{PATH}/x"), format!("{PATH}x"), "/app".into()] {
        let fwd = forward(f.request(&Req::api(&other).cookies(&jar)));
        assert!(fwd.authorization.is_some(), "{other}");
    }
}

#[test]
fn without_the_option_the_path_is_the_apps() {
    let mut f = Filter::ready(config(json!({})));
    let (jar, _) = log_in(&mut f, None);
    let fwd = forward(f.request(&Req::api(PATH).cookies(&jar)));
    assert!(fwd.authorization.is_some());
}

#[test]
fn claims_the_token_lacks_and_an_unverified_email_are_left_out() {
    let mut f = filter(json!({}));
    let jar = log_in_as(&mut f, None, json!({"email_verified": false}));
    let r = respond(f.request(&Req::api(PATH).cookies(&jar)));
    assert_eq!(identity(&r), json!({"user": "user-1", "email": ""}));

    // A lone group as a string is a list of one; Zitadel's roles (an object of objects) by their keys;
    // a name that needs escaping is escaped.
    let mut f = filter(json!({}));
    let jar = log_in_as(
        &mut f,
        None,
        json!({"groups": "ops", "preferred_username": "zoë \"z\""}),
    );
    let v = identity(&respond(f.request(&Req::api(PATH).cookies(&jar))));
    assert_eq!(v["groups"], json!(["ops"]));
    assert_eq!(v["preferredUsername"], "zoë \"z\"");
    let mut f = filter(json!({}));
    let jar = log_in_as(
        &mut f,
        None,
        json!({"groups": {"admin": {"id": 1}, "viewer": {}}}),
    );
    let v = identity(&respond(f.request(&Req::api(PATH).cookies(&jar))));
    assert_eq!(v["groups"], json!(["admin", "viewer"]));
}

#[test]
fn without_a_session_a_script_gets_401_and_a_browser_is_sent_to_log_in() {
    let mut f = filter(json!({}));
    let r = respond(f.request(&Req::api(PATH)));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.body.contains("user"), "{r:?}");
    let r = respond(f.request(&Req::browser(PATH)));
    assert_eq!(location(&r), "/login?rd=%2Foauth2%2Fuserinfo");
}

#[test]
fn a_claim_rule_that_refuses_the_user_there_refuses_the_answer() {
    let rules =
        json!([{"path_prefix": "/", "rule": {"claim": "email", "equals": "boss@example.com"}}]);
    let mut f = filter(json!({"claim_rules": rules}));
    let (jar, _) = log_in(&mut f, None);
    let r = respond(f.request(&Req::api(PATH).cookies(&jar)));
    // The refusal, which names whom it refuses (as on every path), not the identity's answer.
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.metric, Some(Metric::Forbidden));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "forbidden", "{r:?}");
}

#[test]
fn a_due_session_is_renewed_first_and_the_answer_carries_the_new_cookie() {
    let mut f = filter(json!({}));
    let jar = log_in_as(&mut f, Some("rt-1"), json!({}));
    f.now = NOW + 3600 - 30;
    let (_, pending) = call(f.request(&Req::api(PATH).cookies(&jar)));
    let mut claims = refreshed_claims(f.now);
    claims["preferred_username"] = "alice-renewed".into();
    let body = token_body(Some(&mint(&claims)), Some("rt-2"));
    let r = respond(f.reply(pending, Some((200, &body))));
    assert_eq!(identity(&r)["preferredUsername"], "alice-renewed");
    assert_eq!(r.metric, Some(Metric::Refreshed));
    let mut renewed = jar.clone();
    renewed.apply(set_cookies(&r));
    assert_ne!(renewed.header(), jar.header(), "{r:?}");
    // The new cookie opens, with the new token, without asking the IdP again.
    let r = respond(f.request(&Req::api(PATH).cookies(&renewed)));
    assert_eq!(identity(&r)["preferredUsername"], "alice-renewed");
}

#[test]
fn a_renewal_that_fails_while_the_token_lasts_answers_with_its_identity_counted_as_failed() {
    let mut f = filter(json!({}));
    let jar = log_in_as(&mut f, Some("rt-1"), json!({}));
    f.now = NOW + 3600 - 30;
    let (_, pending) = call(f.request(&Req::api(PATH).cookies(&jar)));
    let r = respond(f.reply(pending, Some((503, b"busy"))));
    assert_eq!(identity(&r)["user"], "user-1");
    // Counted as the request that went up with its old token would be: a renewal that did not renew.
    assert_eq!(r.metric, Some(Metric::RefreshFailed));
    assert!(set_cookies(&r).is_empty(), "{r:?}");
    // Once the token has expired, the outage answers 503 here as elsewhere.
    f.now = NOW + 3600 + 30;
    let step = f.request(&Req::api(PATH).cookies(&jar));
    let r = match step {
        oidc_filter::flow::Step::Call(_, pending) => {
            respond(f.reply(pending, Some((503, b"busy"))))
        }
        other => respond(other),
    };
    assert_eq!(r.status, 503, "{r:?}");
}

/// Found by mutation testing: a claim of a shape the answer does not take is left out, never written as
/// what it is not: a list or an object where a string belongs (the answer would not be JSON, or would
/// name a key as the user), an object of groups whose values are not objects (no Zitadel roles), and in
/// a list of groups, items that are not strings.
#[test]
fn claims_of_another_shape_are_left_out_and_the_answer_stays_json() {
    for (extra, expected) in [
        (
            json!({"preferred_username": ["alice", "bob"], "email": ["a@example.com"]}),
            json!({"user": "user-1", "email": ""}),
        ),
        (
            json!({"preferred_username": {"alice": {}}, "groups": {"admins": 1, "ops": "x"}}),
            json!({"user": "user-1", "email": "user-1@example.com"}),
        ),
        (
            json!({"groups": ["admins", 1, null, {"x": {}}, "ops"]}),
            json!({"user": "user-1", "email": "user-1@example.com", "groups": ["admins", "ops"]}),
        ),
    ] {
        let mut f = filter(json!({}));
        let jar = log_in_as(&mut f, None, extra.clone());
        let r = respond(f.request(&Req::api(PATH).cookies(&jar)));
        assert_eq!(identity(&r), expected, "{extra}: {}", r.body);
    }
}

/// Found by mutation testing: a bypass path that covers `userinfo_path` and none of the filter's other paths
/// is refused too (it would answer the path without a session on the app's behalf, and with one by the
/// filter's); one beside it is not.
#[test]
fn a_bypass_path_over_userinfo_path_alone_is_refused() {
    let parsed = |bypass: serde_json::Value| {
        let mut cfg = json!({
            "issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "cookie_keys": [KEY_A], "userinfo_path": "/me",
        });
        cfg["bypass_paths"] = bypass;
        oidc_filter::config::Config::parse(cfg.to_string().as_bytes(), &|_| None)
    };
    for bypass in [json!(["/me"]), json!(["/healthz", "/me"])] {
        let e = parsed(bypass.clone()).unwrap_err();
        assert_eq!(e.field, "bypass_paths", "{bypass}: {e}");
        assert!(e.reason.contains("userinfo_path"), "{bypass}: {e}");
    }
    let c = parsed(json!(["/healthz", "/me2", "/mex"])).unwrap();
    assert_eq!(c.userinfo_path.as_deref(), Some("/me"));
}
