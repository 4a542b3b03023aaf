//! One refresh per session across workers (`renewal`): what the adapter asks the core when another request
//! already renews a session, with two `Filter`s standing for two workers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other whole-flow tests, which use more of it.
#[allow(dead_code)]
mod common;

use common::*;
use oidc_filter::flow::{self, Metric, Pending, RefreshJob, Step};
use oidc_filter::workers;

/// Logs in on `a` with refresh token `rt-1` and moves both workers' clocks into the refresh margin.
fn due(a: &mut Filter, b: &mut Filter) -> (Jar, String) {
    let (jar, id_token) = log_in(a, Some("rt-1"));
    a.now = NOW + 3600 - 30;
    b.now = a.now;
    (jar, id_token)
}

/// As [`due`], for a session that forwards the login's opaque access token: logged in on worker A, the
/// first request after the login on both workers (the token lives 300 s from then, due 60 s before it
/// expires), then 50 s before it expires.
fn access_token_due(a: &mut Filter, b: &mut Filter) -> (Jar, String) {
    let (jar, id_token) = log_in(a, Some("rt-1"));
    forward(a.request(&Req::api("/x").cookies(&jar)));
    forward(b.request(&Req::api("/x").cookies(&jar)));
    a.now = NOW + 250;
    b.now = a.now;
    (jar, id_token)
}

/// The session cookie `jar` holds, as sealed (its chunks joined).
fn sealed_in(jar: &Jar) -> String {
    oidc_filter::session::join(&jar.header(), "_oidc_session")
        .unwrap()
        .unwrap()
}

/// The 32 earlier logouts of `user-1` that use up the user's share of the list of ended logins, each
/// at `at`, kept for `life` seconds.
fn fill_users_share(list: &mut oidc_filter::revocation::Revocations, at: u64, life: u64) {
    for i in 0..32u64 {
        let key = oidc_filter::revocation::login_key("user-1", 1_000 + i);
        list.end_session(&[&key], None, "user-1", at, at, life);
    }
}

fn refresh_job(step: Step) -> RefreshJob {
    match *call(step).1 {
        Pending::Refresh(job) => job,
        other => panic!("not a refresh: {other:?}"),
    }
}

fn bearer(f: &oidc_filter::flow::Forward) -> String {
    f.authorization.as_ref().unwrap().expose().to_string()
}

#[test]
fn a_renewal_made_by_another_worker_is_adopted_without_asking_the_idp() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    let sealed = sealed_in(&jar);

    // Worker A renews.
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let (step, new_token) = refreshed(&mut a, pending, "rt-2");
    let fwd = forward(step);
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    assert_eq!(lines, fwd.set_cookies);

    // Worker B, asked to refresh the same session, takes A's result instead.
    let job =
        refresh_job(b.request(&Req::api("/y").with("cookie", &format!("app=1; {}", jar.header()))));
    assert_eq!(job.sealed(), sealed);
    let now = b.now;
    let adopted = forward(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    assert_eq!(bearer(&adopted), format!("Bearer {new_token}"));
    assert_eq!(adopted.set_cookies, lines);
    assert_eq!(adopted.cookie, Some(Some("app=1".into())));
    assert_eq!(adopted.metric, Some(Metric::SessionForwarded));
    // B's later requests with the old cookie find it in its cache.
    let again = forward(b.request(&Req::api("/z").cookies(&jar)));
    assert_eq!(bearer(&again), format!("Bearer {new_token}"));

    // Lines that do not open (another key, garbage) are a failed renewal, not a crash.
    let mut c = Filter::ready(config(serde_json::json!({})));
    c.now = now;
    let job = refresh_job(c.request(&Req::api("/").cookies(&jar)));
    let r = respond(flow::adopt_renewal(
        &c.cfg,
        &mut c.state,
        job,
        &["_oidc_session=1.garbage; Path=/".into()],
        now,
    ));
    assert_eq!(r.status, 401);
}

/// Found by mutation testing: an adopted renewal is handed on (its cookie holds only a new refresh token,
/// and renewing is left to it) only when its tokens and their expiry are the old ones. An IdP that gives
/// the same access token again with a later expiry made a renewal: a request with the old cookie within
/// the new expiry's margin renews it.
#[test]
fn an_adopted_renewal_of_the_same_access_token_with_a_later_expiry_is_renewed_in_its_margin() {
    let cfg = || config(serde_json::json!({"forward_token": "access_token"}));
    let (mut a, mut b) = (Filter::ready(cfg()), Filter::ready(cfg()));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    // The access token lasts 300 s; renewed as it expires, the same token for 600 s more.
    a.now = NOW + 300;
    b.now = a.now;
    let sealed = sealed_in(&jar);
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let body = serde_json::json!({
        "access_token": "access-1", "token_type": "Bearer", "expires_in": 600, "refresh_token": "rt-2",
    });
    forward(a.reply(pending, Some((200, body.to_string().as_bytes()))));
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let now = b.now;
    forward(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    b.now = NOW + 300 + 600 - 5;
    let (c, _) = call(b.request(&Req::api("/z").cookies(&jar)));
    assert_eq!(form(c.body.as_deref().unwrap())["refresh_token"], "rt-2");
}

/// Found by mutation testing: an adopted renewal that brings the access token again, expiring when it did,
/// but a new ID token (`forward_token: access_token`) made a renewal, not one that handed on only a new
/// refresh token: once that token expires, a request with the old cookie renews it with the new refresh
/// token, rather than being answered `503` to wait for a new cookie.
#[test]
fn an_adopted_renewal_of_the_same_access_token_with_a_new_id_token_is_renewed_when_it_expires() {
    let cfg = || config(serde_json::json!({"forward_token": "access_token"}));
    let new_id_token = mint(&refreshed_claims(NOW + 250));
    renewed_as_it_expires_after_adopting(
        cfg,
        |_| serde_json::json!({"access_token": "access-1", "id_token": new_id_token}),
    );
}

/// Found by mutation testing: the same with the ID token going upstream and the access token in
/// `access_token_header`: a renewal that brings the login's ID token again, expiring when it did, with a
/// new access token is renewed once it expires, not taken for one that handed on a new refresh token.
#[test]
fn an_adopted_renewal_of_the_same_id_token_with_a_new_access_token_is_renewed_when_it_expires() {
    let cfg = || config(serde_json::json!({"access_token_header": "X-Forwarded-Access-Token"}));
    renewed_as_it_expires_after_adopting(
        cfg,
        |id_token| serde_json::json!({"access_token": "access-2", "id_token": id_token}),
    );
}

/// [`access_token_due`] on workers A and B, then a renewal on A 50 s
/// before the token expires with `tokens` (given the login's ID token) and a new refresh token, for the
/// 50 s left, and has worker B adopt that renewal: B's request with the old cookie as the token expires
/// asks the IdP, with the new refresh token.
fn renewed_as_it_expires_after_adopting(
    cfg: impl Fn() -> oidc_filter::config::Config,
    tokens: impl FnOnce(&str) -> serde_json::Value,
) {
    let (mut a, mut b) = (Filter::ready(cfg()), Filter::ready(cfg()));
    let (jar, id_token) = access_token_due(&mut a, &mut b);
    let sealed = sealed_in(&jar);
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let mut body = tokens(&id_token);
    body["token_type"] = "Bearer".into();
    body["expires_in"] = 50.into();
    body["refresh_token"] = "rt-2".into();
    forward(a.reply(pending, Some((200, body.to_string().as_bytes()))));
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let now = b.now;
    forward(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    b.now = NOW + 300;
    let (c, _) = call(b.request(&Req::api("/z").cookies(&jar)));
    assert_eq!(form(c.body.as_deref().unwrap())["refresh_token"], "rt-2");
}

/// Found by mutation testing: a worker that has only opened a session (no renewal made, none refused)
/// has no renewal of it to tell: not an empty one, which the other workers take for a session found over.
#[test]
fn a_session_only_opened_has_no_renewal_to_tell() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    forward(a.request(&Req::api("/x").cookies(&jar)));
    assert_eq!(flow::renewed_cookies(&a.state, &sealed_in(&jar)), None);
}

/// Found by mutation testing: a published renewal is adopted only when it is of the session's own user.
/// Lines that hold another user's session (no renewal of this one makes them) are a failed renewal:
/// never that user's token upstream.
#[test]
fn a_published_renewal_of_another_user_is_not_adopted() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    let mut other = Filter::ready(config(serde_json::json!({})));
    let (theirs, their_token) = log_in_with(&mut other, None, |nonce| {
        let mut c = claims(Some(nonce));
        c["sub"] = "user-2".into();
        mint(&c)
    });
    let lines: Vec<String> = theirs
        .0
        .iter()
        .map(|(n, v)| format!("{n}={v}; Path=/"))
        .collect();
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let now = b.now;
    match flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now) {
        Step::Respond(r) => assert_eq!(r.status, 401, "{r:?}"),
        Step::Forward(f) => {
            assert_ne!(bearer(&f), format!("Bearer {their_token}"));
            panic!("forwarded: {f:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// Worker A's refresh was granted but its new ID token cannot be checked yet (a signing key A cannot
/// fetch just now): A keeps the IdP's new refresh token in a new cookie with the old tokens and
/// publishes it. Worker B adopts it without a refresh of its own, also once the old token has expired
/// (503 with the new cookie, not a logout), and B's later requests with the old cookie leave the new
/// refresh token to the new cookie.
#[test]
fn a_new_cookie_holding_only_a_new_refresh_token_is_adopted_not_refreshed_again() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, id_token) = due(&mut a, &mut b);
    let sealed = sealed_in(&jar);
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let unknown_key = mint_with_kid(&refreshed_claims(a.now), "rotated-1");
    let (_, pending) = call(a.reply(
        pending,
        Some((200, &token_body(Some(&unknown_key), Some("rt-2")))),
    ));
    let fwd = forward(a.reply(pending, None));
    assert_eq!(bearer(&fwd), format!("Bearer {id_token}"));
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    assert_eq!(lines, fwd.set_cookies);

    // B adopts while the old token is valid, and after it expired.
    for (now, valid) in [(b.now, true), (NOW + 3600, false)] {
        let mut b = Filter::ready(config(serde_json::json!({})));
        b.now = now;
        let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
        let step = flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now);
        match step {
            Step::Forward(f) if valid => {
                assert_eq!(bearer(&f), format!("Bearer {id_token}"));
                assert_eq!(f.set_cookies, lines);
            }
            Step::Respond(r) if !valid => {
                assert_eq!(r.status, 503);
                let sets: Vec<&str> = set_cookies(&r);
                assert_eq!(sets, lines.iter().map(String::as_str).collect::<Vec<_>>());
                // An API client's in JSON (found in review).
                assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
            }
            other => panic!("{valid}: {other:?}"),
        }
        // B's next request with the old cookie starts no refresh: the new cookie's to make.
        match b.request(&Req::api("/z").cookies(&jar)) {
            Step::Forward(f) if valid => assert_eq!(f.set_cookies, lines),
            Step::Respond(r) if !valid => {
                assert_eq!(r.status, 503);
                assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
            }
            other => panic!("{valid}: {other:?}"),
        }
    }
}

/// Found by mutation testing: a cookie whose renewal was handed on (a new cookie holds only a new refresh
/// token) leaves renewing to the new cookie for the grace period after its token expired, and no longer:
/// a client that never takes the new cookie renews from then on, with the new refresh token.
#[test]
fn a_cookie_whose_renewal_was_handed_on_renews_itself_once_the_grace_period_is_over() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    let sealed = sealed_in(&jar);
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let unknown_key = mint_with_kid(&refreshed_claims(a.now), "rotated-1");
    let (_, pending) = call(a.reply(
        pending,
        Some((200, &token_body(Some(&unknown_key), Some("rt-2")))),
    ));
    forward(a.reply(pending, None));
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let now = b.now;
    forward(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    let grace = oidc_filter::renewal::GRACE;
    b.now = NOW + 3600 + grace - 1;
    let r = respond(b.request(&Req::api("/z").cookies(&jar)));
    assert_eq!(r.status, 503, "{r:?}");
    b.now = NOW + 3600 + grace;
    let (c, _) = call(b.request(&Req::api("/z").cookies(&jar)));
    assert_eq!(form(c.body.as_deref().unwrap())["refresh_token"], "rt-2");
}

/// Found in review: a renewal kept for the session's next request (its request had stopped waiting), adopted
/// once its token had expired (the user back after the token's life), answered a browser's page with a
/// `503`. A browser's navigation is sent round again with the new cookie (to the same address, never
/// another site's); an API client still gets the `503` with it.
#[test]
fn an_adopted_renewal_expired_meanwhile_sends_a_browser_round_again() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    let sealed = sealed_in(&jar);
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let (step, _) = refreshed(&mut a, pending, "rt-2");
    forward(step);
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    // Hours later, on worker B: the renewed token has expired too.
    let later = NOW + 3 * 3600;
    for (target, location) in [("/reports?q=1", "/reports?q=1"), ("//evil.example/x", "/")] {
        let mut b = Filter::ready(config(serde_json::json!({})));
        b.now = later;
        let job = refresh_job(b.request(&Req::browser(target).cookies(&jar)));
        let r = respond(flow::adopt_renewal(
            &b.cfg,
            &mut b.state,
            job,
            &lines,
            later,
        ));
        assert_eq!(r.status, 302, "{r:?}");
        assert_eq!(header(&r.headers, "location"), Some(location));
        assert_eq!(r.metric, None, "not a failed refresh");
        let sets: Vec<&str> = set_cookies(&r);
        assert_eq!(sets, lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let mut b = Filter::ready(config(serde_json::json!({})));
    b.now = later;
    let job = refresh_job(b.request(&Req::api("/x").cookies(&jar)));
    let r = respond(flow::adopt_renewal(
        &b.cfg,
        &mut b.state,
        job,
        &lines,
        later,
    ));
    assert_eq!(r.status, 503);
    assert_eq!(set_cookies(&r).len(), lines.len());
}

/// Found in review: with `forward_token: access_token`, a renewal that brought a new access token but no
/// ID token (OIDC Core 12.2) kept the old ID token, and the worker that adopted it took it for one that
/// only handed on a new refresh token: its later requests with the old cookie never renewed the new
/// access token, and got 503 once it expired. They renew it when it is due, with the new refresh token.
#[test]
fn an_adopted_renewal_without_an_id_token_is_renewed_again_when_due() {
    let extra = serde_json::json!({"forward_token": "access_token"});
    let mut a = Filter::ready(config(extra.clone()));
    let mut b = Filter::ready(config(extra));
    let (jar, _) = access_token_due(&mut a, &mut b);
    let sealed = sealed_in(&jar);
    let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
    let body = serde_json::json!({"access_token": "access-2", "token_type": "Bearer",
                                  "expires_in": 300, "refresh_token": "rt-2"});
    let fwd = forward(a.reply(pending, Some((200, body.to_string().as_bytes()))));
    assert_eq!(bearer(&fwd), "Bearer access-2");
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();

    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let now = b.now;
    let adopted = forward(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    assert_eq!(bearer(&adopted), "Bearer access-2");

    // access-2 due in turn: B's request with the old cookie renews it with rt-2, and, once it has
    // expired too, still renews rather than answering 503.
    for later in [250, 300] {
        b.now = now + later;
        let (c, _) = call(b.request(&Req::api("/z").cookies(&jar)));
        assert_eq!(form(&c.body.unwrap())["refresh_token"], "rt-2", "{later}");
    }
}

#[test]
fn while_another_request_renews_a_valid_token_goes_up_and_an_expired_one_waits() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, id_token) = due(&mut a, &mut b);

    let job = refresh_job(b.request(&Req::browser("/page").cookies(&jar)));
    let fwd = forward(flow::renewal_busy(&b.cfg, job, b.now).unwrap());
    assert_eq!(bearer(&fwd), format!("Bearer {id_token}"));
    assert!(fwd.set_cookies.is_empty());
    assert_eq!(fwd.metric, Some(Metric::SessionForwarded));

    // Expired: the job comes back to wait; if the renewal then fails, so does this request, but it
    // keeps its cookie (the failure may be an outage; its next request finds out).
    b.now = NOW + 3600;
    let job = refresh_job(b.request(&Req::browser("/page").cookies(&jar)));
    let now = b.now;
    let job = flow::renewal_busy(&b.cfg, job, now).unwrap_err();
    let r = respond(flow::renewal_failed(&b.cfg, &mut b.state, job, now));
    assert_eq!(r.status, 503);
    assert!(header(&r.headers, "location").is_none());
    assert!(header(&r.headers, "set-cookie").is_none());
    assert_eq!(r.metric, Some(Metric::RefreshFailed));
}

#[test]
fn claim_rules_hold_while_the_idp_cannot_renew() {
    let cfg = || {
        config(serde_json::json!({
            "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
        }))
    };
    let mut a = Filter::ready(cfg());
    let mut b = Filter::ready(cfg());
    let (jar, _) = due(&mut a, &mut b);
    // The IdP does not answer; the token is still valid, but this user may not see /admin.
    let (_, pending) = call(a.request(&Req::browser("/admin").cookies(&jar)));
    assert_eq!(respond(a.reply(pending, None)).status, 403);
    // Nor while another request renews the session.
    let job = refresh_job(b.request(&Req::browser("/admin/x").cookies(&jar)));
    assert_eq!(
        respond(flow::renewal_busy(&b.cfg, job, b.now).unwrap()).status,
        403
    );
}

/// Found by mutation testing: a renewal the IdP grants is judged by the claim rules too: the request that
/// renewed the session of a user a rule refuses gets the 403 (and the new cookie), not the path.
#[test]
fn claim_rules_hold_for_the_request_that_renewed_the_session() {
    let cfg = || {
        config(serde_json::json!({
            "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
        }))
    };
    let mut a = Filter::ready(cfg());
    let mut b = Filter::ready(cfg());
    let (jar, _) = due(&mut a, &mut b);
    let (_, pending) = call(a.request(&Req::browser("/admin").cookies(&jar)));
    let (step, _) = refreshed(&mut a, pending, "rt-2");
    let r = respond(step);
    assert_eq!(r.status, 403, "{r:?}");
    // Review (do the counters tell the truth): a renewal and a refusal, `refreshes` and `forbidden`.
    assert_eq!(r.metric, Some(Metric::RenewedForbidden));
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("_oidc_session=") && !c.contains("Max-Age=0")),
        "{r:?}"
    );
    // Nor through a renewal another worker made (adopted), or another request on this one made while
    // this one waited (its own refresh then refused, the token having rotated).
    let (mut a, mut b) = (Filter::ready(cfg()), Filter::ready(cfg()));
    let (jar, _) = due(&mut a, &mut b);
    let sealed = sealed_in(&jar);
    let (_, first) = call(a.request(&Req::browser("/x").cookies(&jar)));
    let (_, second) = call(a.request(&Req::browser("/admin").cookies(&jar)));
    let (step, _) = refreshed(&mut a, first, "rt-2");
    forward(step);
    let refused = br#"{"error":"invalid_grant"}"#;
    let r = respond(a.reply(second, Some((400, refused))));
    assert_eq!(
        (r.status, r.metric),
        (403, Some(Metric::Forbidden)),
        "{r:?}"
    );
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    let job = refresh_job(b.request(&Req::browser("/admin").cookies(&jar)));
    let now = b.now;
    let r = respond(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    assert_eq!(
        (r.status, r.metric),
        (403, Some(Metric::Forbidden)),
        "{r:?}"
    );
}

/// A renewal that met an outage pauses the site's renewals on its worker for 5 s (the 503's
/// `Retry-After`), and while they keep failing one renewal at a time asks the IdP, the others waiting
/// for its answer or its timeout: an IdP that is down is not asked once per request, and requests do
/// not each wait out its timeout. Meanwhile a valid token goes up, an expired session gets the 503 at
/// once. An answer from the IdP (a renewal, or a refusal) ends the pause.
#[test]
fn a_renewal_that_meets_an_outage_pauses_the_workers_renewals() {
    let mut a = Filter::ready(config(serde_json::json!({"callout_timeout": "30s"})));
    let (jar, id_token) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in(&mut a, Some("rt-2"));
    a.now = NOW + 3600 - 30;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    let r = a.reply(Box::new(Pending::Refresh(job)), None);
    assert_eq!(bearer(&forward(r)), format!("Bearer {id_token}"));
    // For 5 s: the valid token goes up without a call, an expired session gets the 503 at once.
    for dt in [0, 4] {
        a.now = NOW + 3600 - 30 + dt;
        let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
        let fwd = forward(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap_err());
        assert_eq!(bearer(&fwd), format!("Bearer {id_token}"), "+{dt} s");
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded));
    }
    // Past the pause: one probe goes out...
    a.now = NOW + 3600 - 25;
    let probe = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let probe = flow::renewal_claim(&a.cfg, &mut a.state, probe, a.now).unwrap();
    // ...and until its answer (at most its 30 s timeout and the pause) the others do not.
    a.now = NOW + 3600 + 5;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
    let r = respond(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap_err());
    assert_eq!(r.status, 503);
    assert!(header(&r.headers, "retry-after").is_some());
    assert!(set_cookies(&r).iter().all(|c| !c.contains("Max-Age=0")));
    // The probe's answer: the IdP is back; the pause ends at once.
    let new_token = mint(&refreshed_claims(a.now));
    let fwd = forward(a.reply(
        Box::new(Pending::Refresh(probe)),
        Some((200, &token_body(Some(&new_token), None))),
    ));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
    assert!(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).is_ok());
}

/// Found by a black-box test: a page's poll that was renewing the session when the user logged out put the
/// session back: the renewal's answer came after `/logout` and set a new cookie. A `/logout` now ends the
/// session's tokens of its IdP session (`sid`) on every worker: the renewal's request is answered as one
/// without a session, its cookie cleared, and so is the old cookie, kept or stolen; a worker that adopts
/// that renewal does the same. A later login with the same `sid` (the IdP's session outlives a logout
/// the user cancelled there) stands.
#[test]
fn a_renewal_still_on_its_way_at_logout_does_not_bring_the_session_back() {
    let with_sid = |n: &str| {
        let mut c = claims(Some(n));
        c["sid"] = "idp-session-1".into();
        mint(&c)
    };
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in_with(&mut a, Some("rt-1"), with_sid);
    a.now = NOW + 3600 - 30;
    b.now = a.now;
    // The poll's renewal goes out...
    let (_, pending) = call(a.request(&Req::api("/poll").cookies(&jar)));
    // ...the user logs out (the page's own navigation)...
    let r = respond(a.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    // ...and the renewal's answer comes.
    let mut renewed = refreshed_claims(a.now);
    renewed["sid"] = "idp-session-1".into();
    let r = respond(a.reply(
        pending,
        Some((200, &token_body(Some(&mint(&renewed)), Some("rt-2")))),
    ));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        set_cookies(&r)
            .iter()
            .all(|c| !c.starts_with("_oidc_session=1")),
        "{r:?}"
    );
    // The old cookie opens no session here, nor on a worker that learned of the logout.
    let r = respond(a.request(&Req::api("/x").cookies(&jar)));
    assert_eq!(r.status, 401);
    b.state.revoked.merge(&a.state.revoked);
    let r = respond(b.request(&Req::api("/x").cookies(&jar)));
    assert_eq!(r.status, 401);
    // A new login with the same IdP session stands, also one whose ID token bears the same second as
    // the logged-out one's (found in review: dated alone, it was ended too, and the browser looped
    // through the login).
    for iat in [NOW, a.now] {
        let (again, _) = log_in_with(&mut a, None, |n| {
            let mut c = claims(Some(n));
            c["iat"] = iat.into();
            c["exp"] = (NOW + 7200).into();
            c["sid"] = "idp-session-1".into();
            mint(&c)
        });
        assert!(
            matches!(a.request(&Req::api("/x").cookies(&again)), Step::Forward(_)),
            "{iat}"
        );
    }
}

/// A worker with two expired sessions (`callout_timeout` as given) whose first renewal just met an outage:
/// the IdP did not answer, `503`.
fn after_an_outage(callout_timeout: &str) -> (Filter, Jar, Jar) {
    let mut a = Filter::ready(config(
        serde_json::json!({"callout_timeout": callout_timeout}),
    ));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in(&mut a, Some("rt-2"));
    a.now = NOW + 3600 + 1;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    let r = respond(a.reply(Box::new(Pending::Refresh(job)), None));
    assert_eq!(r.status, 503);
    (a, jar, other)
}

/// Found by a black-box test: one account whose renewals the IdP fails (a `500` for that user alone),
/// behind a dashboard tab that polls, took the probe each time the pause ended, and every other user's
/// renewal answered 503 for as long as the tab was open. That session's renewal now waits 10 s before it
/// asks again (another's probes when the pause ends), and once the IdP has answered another renewal
/// since its run of failures began, its failing again pauses nobody.
#[test]
fn one_session_the_idp_keeps_failing_does_not_hold_the_others_renewals() {
    let (mut a, jar, other) = after_an_outage("30s");
    // The pause: neither asks.
    a.now += 2;
    assert!(claim_of(&mut a, &jar).is_err());
    assert!(claim_of(&mut a, &other).is_err());
    // Past it, the failing session's poll waits, as another session's renewal waited: that one probes,
    // and the IdP answers it.
    a.now += 4;
    assert_eq!(respond(claim_of(&mut a, &jar).unwrap_err()).status, 503);
    let job = claim_of(&mut a, &other).expect("another session's renewal probes");
    let new_token = mint(&refreshed_claims(a.now));
    let fwd = forward(a.reply(
        Box::new(Pending::Refresh(job)),
        Some((200, &token_body(Some(&new_token), None))),
    ));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
    // The failing session asks again, and fails again: its own failure, no pause.
    let job = claim_of(&mut a, &jar).unwrap();
    let r = respond(a.reply(Box::new(Pending::Refresh(job)), Some((500, b"{}"))));
    assert_eq!(r.status, 503);
    assert!(set_cookies(&r).iter().all(|c| !c.contains("Max-Age=0")));
    assert!(!a.state.renewals_paused(a.now) && !a.state.renewals_failing);
    // It asks at most every 5 s, and its log line says why.
    a.now += 4;
    let r = respond(claim_of(&mut a, &jar).unwrap_err());
    assert!(
        r.detail
            .as_deref()
            .unwrap_or_default()
            .contains("this session's renewal"),
        "{r:?}"
    );
    a.now += 1;
    assert!(claim_of(&mut a, &jar).is_ok());
}

/// Found in review of the fix above: its first version took a session's second outage for its own
/// whatever else failed meanwhile, and ended the pause: a renewal given up at `callout_timeout`, whose
/// call then timed out too, ended the hold of another session's probe (two probes out at once), and in
/// a real outage every failing session asked every 5 s. A session's failure is its own only once the
/// IdP has answered another renewal since its failures began.
#[test]
fn in_an_outage_the_idp_is_asked_once_per_pause_however_many_sessions_poll() {
    let mut a = Filter::ready(config(serde_json::json!({"callout_timeout": "10s"})));
    let jars: Vec<Jar> = (0..4)
        .map(|i| log_in(&mut a, Some(&format!("rt-{i}"))).0)
        .collect();
    a.now = NOW + 3600 + 1;
    let start = a.now;
    let mut asked = 0;
    while a.now < start + 40 {
        for j in &jars {
            if let Ok(job) = claim_of(&mut a, j) {
                asked += 1;
                // A down IdP: the connection refused at once.
                let _ = a.reply(Box::new(Pending::Refresh(job)), None);
            }
        }
        a.now += 1;
    }
    // Once, then once per pause (5 s, and the probe's second).
    assert!(asked <= 8, "the IdP was asked {asked} times in 40 s");
    // A renewal given up at callout_timeout whose call then times out too, while another session's
    // probe is out: no second probe.
    let (s1, s2, s3) = (&jars[0], &jars[1], &jars[2]);
    a.now += 60;
    let t = a.now;
    let job = claim_of(&mut a, s1).unwrap();
    let pending = Box::new(Pending::Refresh(job));
    a.now = t + 10;
    let _ = flow::renewal_given_up(&a.cfg, &mut a.state, &pending, a.now).unwrap();
    a.now = t + 15;
    let _probe = claim_of(&mut a, s2).expect("the probe");
    assert!(claim_of(&mut a, s3).is_err(), "waits for the probe");
    a.now = t + 20;
    let _ = a.reply(pending, None);
    assert!(claim_of(&mut a, s3).is_err(), "a second probe went out");
}

/// Found by a black-box test: an IdP that renews with the login's own ID token (against OIDC Core 12.2),
/// or caps the renewed one at the end of its own session, gives a token that expires no later than the
/// one it renews: once that has expired, the session ends, and the log line said the gateway's and the
/// IdP's clocks differ. It says what the IdP did now; a renewed token that expired only by the clocks
/// still says so.
#[test]
fn a_renewal_that_does_not_extend_the_token_ends_the_session_saying_so() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, id_token) = log_in(&mut a, Some("rt-1"));
    a.now = NOW + 3600;
    let renew = |a: &mut Filter, token: &str| {
        let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
        let step = a.reply(pending, Some((200, &token_body(Some(token), Some("rt-2")))));
        respond(step).detail.unwrap_or_default()
    };
    let why = renew(&mut a, &id_token);
    assert!(why.contains("without extending it"), "{why}");
    // A new token that outlives the old one but has expired by the gateway's clock: the clocks (on
    // another worker: this one knows the session is over, and does not ask again).
    let r = respond(a.request(&Req::api("/page").cookies(&jar)));
    assert_eq!(r.status, 401);
    let mut a = Filter::ready(config(serde_json::json!({})));
    a.now = NOW + 3600 + 30;
    let mut behind = refreshed_claims(a.now - 100);
    behind["exp"] = (a.now - 1).into();
    let why = renew(&mut a, &mint(&behind));
    assert!(why.contains("clocks differ"), "{why}");
}

/// Found in review: a renewal within the margin that brings the same ID token again (or one capped at the
/// IdP's session end) leaves the token due: every later request asked the IdP again until it expired. The
/// session now waits for the token's expiry, on every worker (the mark is in the cookie), then renews once.
#[test]
fn a_renewal_that_does_not_extend_the_token_is_not_asked_again_before_it_expires() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (mut jar, id_token) = due(&mut a, &mut b);
    let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
    let f = forward(a.reply(
        pending,
        Some((200, &token_body(Some(&id_token), Some("rt-2")))),
    ));
    assert_eq!(bearer(&f), format!("Bearer {id_token}"));
    jar.apply(f.set_cookies.iter().map(String::as_str));
    assert!(a.open_session(&jar).renew_at_expiry);
    for (on_b, at) in [
        (false, NOW + 3600 - 29),
        (true, NOW + 3600 - 1),
        (false, NOW + 3600 - 1),
    ] {
        let w = if on_b { &mut b } else { &mut a };
        w.now = at;
        let f = forward(w.request(&Req::api("/page").cookies(&jar)));
        assert_eq!(bearer(&f), format!("Bearer {id_token}"), "at {at}");
    }
    // Once it has expired the session renews; a new token ends the mark.
    b.now = NOW + 3600;
    let (_, pending) = call(b.request(&Req::api("/page").cookies(&jar)));
    let (step, new_token) = refreshed(&mut b, pending, "rt-3");
    let f = forward(step);
    assert_eq!(bearer(&f), format!("Bearer {new_token}"));
    jar.apply(f.set_cookies.iter().map(String::as_str));
    assert!(!b.open_session(&jar).renew_at_expiry);
}

/// Found by a black-box test: once the IdP refused a session's renewal, each request that still carried its
/// cookie (a client that ignores `Set-Cookie`) asked the IdP again, and the requests of a page that waited
/// for the refused renewal got `503` "try again" instead of the login. The worker keeps the cookie marked
/// over, and tells the others through the renewal table: as without a session, at once.
#[test]
fn a_session_whose_renewal_was_refused_is_over_on_every_worker_without_asking_again() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    a.now = NOW + 3600 + 1;
    b.now = a.now;
    let waiting = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
    let r = respond(a.reply(pending, Some((400, br#"{"error":"invalid_grant"}"#))));
    assert_eq!(r.status, 401);
    // Again on this worker: no call.
    let r = respond(a.request(&Req::browser("/page").cookies(&jar)));
    assert_eq!(r.status, 302, "{r:?}");
    assert!(location(&r).starts_with("/login"), "{r:?}");
    // A browser's request that waited for that renewal goes to log in.
    let r = respond(flow::renewal_failed(&a.cfg, &mut a.state, waiting, a.now));
    assert_eq!(r.status, 302, "{r:?}");
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("_oidc_session=;"))
    );
    // What the renewal table gets: no cookie lines, which another worker takes for the session's end.
    let lines = flow::renewed_cookies(&a.state, &sealed_in(&jar)).unwrap();
    assert!(lines.is_empty());
    let job = refresh_job(b.request(&Req::browser("/page").cookies(&jar)));
    let r = respond(flow::adopt_renewal(
        &b.cfg,
        &mut b.state,
        job,
        &lines,
        b.now,
    ));
    assert_eq!(r.status, 302, "{r:?}");
    assert!(r.detail.unwrap().contains("found it over"));
    let r = respond(b.request(&Req::api("/page").cookies(&jar)));
    assert_eq!(r.status, 401, "and no call from that worker either: {r:?}");
}

/// Found by mutation testing: a request that waited for another worker's renewal, which the IdP refused,
/// leaves a renewal made meanwhile by another request on its own worker: that worker's later requests with
/// the old cookie go up with the new token, not as logged out.
#[test]
fn a_session_found_over_elsewhere_keeps_a_renewal_made_here_meanwhile() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    let waiting = refresh_job(b.request(&Req::api("/page").cookies(&jar)));
    let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
    let r = respond(a.reply(pending, Some((400, br#"{"error":"invalid_grant"}"#))));
    assert_eq!(r.status, 401);
    let lines = flow::renewed_cookies(&a.state, &sealed_in(&jar)).unwrap();
    assert!(lines.is_empty());
    // Meanwhile B renews the session itself.
    let (_, pending) = call(b.request(&Req::api("/page").cookies(&jar)));
    let (step, new_token) = refreshed(&mut b, pending, "rt-2");
    forward(step);
    let now = b.now;
    let r = respond(flow::adopt_renewal(
        &b.cfg,
        &mut b.state,
        waiting,
        &lines,
        now,
    ));
    assert_eq!(r.status, 401, "{r:?}");
    let again = forward(b.request(&Req::api("/page").cookies(&jar)));
    assert_eq!(bearer(&again), format!("Bearer {new_token}"));
}

/// Found by a black-box test: a renewed ID token signed with a key the worker cannot fetch yet (a new `kid`
/// published late, within the 30 s between fetches) was answered as an outage for its request, but the
/// token endpoint's success counted as the IdP answering: every request asked the token endpoint again.
/// The worker's renewals wait until it may fetch the keys again; not the other workers' (found in review:
/// as a shared pause, they waited too, though they might have the key).
#[test]
fn a_renewal_whose_id_token_key_cannot_be_had_holds_the_workers_renewals_until_it_may_fetch() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in(&mut a, Some("rt-2"));
    let fetched = NOW + 3600 + 1;
    a.now = fetched;
    let rotated = mint_with_kid(&refreshed_claims(a.now), "rotated-1");
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    let (c, pending) = call(a.reply(
        Box::new(Pending::Refresh(job)),
        Some((200, &token_body(Some(&rotated), None))),
    ));
    assert_eq!(header(&c.headers, ":path"), Some("/oauth2/keys"));
    // The keys come without it.
    let r = respond(a.reply(pending, Some((200, JWKS))));
    assert_eq!(r.status, 503);
    assert!(!a.state.renewals_failing, "no pause for the other workers");
    for (dt, jar) in [(0, &other), (10, &jar), (29, &other)] {
        a.now = fetched + dt;
        let r = respond(claim_of(&mut a, jar).unwrap_err());
        assert_eq!(r.status, 503, "+{dt} s");
        assert!(r.detail.unwrap().contains("IdP's keys"));
    }
    a.now = fetched + 30;
    assert!(claim_of(&mut a, &other).is_ok(), "then it asks");
}

/// Found in review: sessions found over stayed in the worker's cache for their lifetime, and once it was
/// full it was emptied whole: a renewal this worker had made, which requests still carrying the old
/// cookie take in, went with them (they would renew again with a refresh token an IdP that rotates them
/// has retired). Those found over go first.
#[test]
fn sessions_found_over_leave_the_cache_first() {
    let mut f = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    let sealed = sealed_in(&jar);
    let dead = f.open_session(&jar);
    f.now = NOW + 3600 - 30;
    let (_, pending) = call(f.request(&Req::api("/x").cookies(&jar)));
    let (step, _) = refreshed(&mut f, pending, "rt-2");
    forward(step);
    assert!(flow::renewed_cookies(&f.state, &sealed).is_some());
    // 1,100 other sessions, expired, whose renewals the IdP refuses.
    f.now = NOW + 3600 + 1;
    for i in 0..1100u32 {
        let mut nonce = [0u8; 24];
        nonce[..4].copy_from_slice(&i.to_le_bytes());
        let name = f.cfg.cookie_name.clone();
        let sealed = f.cfg.keys.seal(&name, &dead.encode(), nonce);
        let cookie = Jar(oidc_filter::session::split(&name, &sealed).unwrap());
        let (_, pending) = call(f.request(&Req::api("/x").cookies(&cookie)));
        let r = respond(f.reply(pending, Some((400, br#"{"error":"invalid_grant"}"#))));
        assert_eq!(r.status, 401);
    }
    assert!(
        flow::renewed_cookies(&f.state, &sealed).is_some(),
        "the renewal is still there for the old cookie"
    );
}

/// Found by mutation testing (the tests above meet an outage only while the token is valid): a renewal of an
/// expired session that meets an outage pauses the worker's renewals too, so the next expired session
/// gets its 503 at once instead of asking a down IdP and waiting out the timeout.
#[test]
fn an_outage_met_by_an_expired_session_pauses_the_workers_renewals() {
    let (mut a, _, other) = after_an_outage("30s");
    a.now += 4;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
    let r = respond(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap_err());
    assert_eq!(r.status, 503);
    assert!(header(&r.headers, "retry-after").is_some());
}

/// Found by mutation testing: a pause further off than any pause can be (the clock stepped back after the
/// outage) is none: the next renewal goes out as the probe, instead of every renewal on the worker
/// getting 503 until the clock catches up.
#[test]
fn a_pause_the_clock_stepped_back_from_is_none() {
    let mut a = Filter::ready(config(
        serde_json::json!({"callout_timeout": "30s", "refresh_margin": "30m"}),
    ));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    a.now = NOW + 3600 - 30;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    let _ = forward(a.reply(Box::new(Pending::Refresh(job)), None));
    // Within the pause, no renewal; 100 s back, the pause lies 105 s ahead: none.
    a.now += 2;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    assert!(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).is_err());
    a.now -= 102;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    assert!(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).is_ok());
}

/// Found in review: a renewal that completed after the session's end (its `session_lifetime` ran out, or
/// the IdP logged the user out over the back channel while the request waited) still forwarded the
/// request it was made for, and handed the browser a new cookie. Each way a renewal completes now asks
/// again whether the session is over: the request is answered as one without a session, its cookie
/// cleared.
#[test]
fn a_renewal_that_completes_after_the_session_ended_forwards_nothing() {
    let cfg = || config(serde_json::json!({"backchannel_logout_path": "/bcl"}));
    let ends = NOW + 8 * 3600;
    let ended_as_anonymous = |r: &oidc_filter::flow::Reply, what: &str| {
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert!(
            set_cookies(r)
                .iter()
                .any(|c| c.starts_with("_oidc_session=;")),
            "{what}: the session cookie is cleared: {r:?}"
        );
        assert!(
            set_cookies(r)
                .iter()
                .all(|c| !c.starts_with("_oidc_session=1")),
            "{what}: no renewed cookie: {r:?}"
        );
    };
    // A session whose token is due one second before its lifetime ends.
    let start = |f: &mut Filter| -> (Jar, Box<Pending>) {
        let (jar, _) = log_in(f, Some("rt-1"));
        f.now = ends - 1;
        let (_, pending) = call(f.request(&Req::api("/x").cookies(&jar)));
        assert!(matches!(*pending, Pending::Refresh(_)));
        (jar, pending)
    };

    // The IdP answers the refresh, with a new ID token, at `at`.
    let answered_at = |at: u64| {
        let mut f = Filter::ready(cfg());
        let (_, pending) = start(&mut f);
        f.now = at;
        refreshed(&mut f, pending, "rt-2")
    };
    let (step, _) = answered_at(ends);
    let r = respond(step);
    ended_as_anonymous(&r, "a refresh answered after session_lifetime");
    // Before it ran out, the same answer goes up: the control.
    let (step, new_token) = answered_at(ends - 1);
    let fwd = forward(step);
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));

    // The IdP logs the user out over the back channel while the refresh is on its way.
    let mut f = Filter::ready(cfg());
    let (_, pending) = start(&mut f);
    let logout = user_logout("user-1", f.now);
    assert_eq!(respond(f.backchannel(&logout)).status, 200);
    // Still within the session's lifetime.
    let (step, _) = refreshed(&mut f, pending, "rt-2");
    let r = respond(step);
    ended_as_anonymous(&r, "a refresh answered after a back-channel logout");

    // A request that waited for another worker's renewal, which comes (or fails) after the lifetime ran
    // out.
    let mut a = Filter::ready(cfg());
    let (jar, pending) = start(&mut a);
    let (step, new_token) = refreshed(&mut a, pending, "rt-2");
    forward(step);
    let sealed = sealed_in(&jar);
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    let mut b = Filter::ready(cfg());
    b.now = ends - 1;
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let adopted = forward(flow::adopt_renewal(
        &b.cfg,
        &mut b.state,
        job,
        &lines,
        ends - 1,
    ));
    assert_eq!(
        bearer(&adopted),
        format!("Bearer {new_token}"),
        "the control"
    );
    let mut b = Filter::ready(cfg());
    b.now = ends - 1;
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let r = respond(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, ends));
    ended_as_anonymous(
        &r,
        "another worker's renewal adopted after session_lifetime",
    );
    // On a worker that has not seen it end (this one has: its next request is answered at once).
    let r = respond(b.request(&Req::api("/y").cookies(&jar)));
    ended_as_anonymous(
        &r,
        "the cookie sent again to a worker that saw its session end",
    );
    let mut b = Filter::ready(cfg());
    b.now = ends - 1;
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let r = respond(flow::renewal_failed(&b.cfg, &mut b.state, job, ends));
    ended_as_anonymous(&r, "another worker's renewal failed after session_lifetime");
}

/// `pending` answered by the IdP: a new ID token issued at the worker's time, and refresh token `rt`.
/// The step, and the new ID token.
fn refreshed(f: &mut Filter, pending: Box<Pending>, rt: &str) -> (Step, String) {
    let new_token = mint(&refreshed_claims(f.now));
    let step = f.reply(
        pending,
        Some((200, &token_body(Some(&new_token), Some(rt)))),
    );
    (step, new_token)
}

/// A back-channel logout's form body, its token for this client with `claims` besides.
fn logout_body(claims: serde_json::Value) -> Vec<u8> {
    let mut c = serde_json::json!({
        "iss": ISSUER, "aud": CLIENT_ID,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    format!("logout_token={}", mint(&c)).into_bytes()
}

/// A logout token that names the user `sub`, issued at `iat`.
fn user_logout(sub: &str, iat: u64) -> Vec<u8> {
    logout_body(
        serde_json::json!({"iat": iat, "exp": iat + 120, "jti": format!("j-{sub}-{iat}"), "sub": sub}),
    )
}

/// A logout token that names only the IdP session `sid` (no `sub`), issued at `iat`.
fn sid_logout(sid: &str, iat: u64) -> Vec<u8> {
    logout_body(
        serde_json::json!({"iat": iat, "exp": iat + 120, "jti": format!("j-{sid}-{iat}"), "sid": sid}),
    )
}

/// A worker of `cfg` on which a user logged in with an ID token of IdP session `s-1` and refresh token
/// `rt-1`, its clock in the refresh margin, and two refreshes of that session under way (two requests
/// of it at once): the worker, the cookies, and the two callouts.
fn two_refreshes_of_session_s1(
    cfg: oidc_filter::config::Config,
) -> (Filter, Jar, Box<Pending>, Box<Pending>) {
    let mut a = Filter::ready(cfg);
    let (jar, _) = log_in_with(&mut a, Some("rt-1"), |nonce| {
        let mut c = claims(Some(nonce));
        c["sid"] = "s-1".into();
        mint(&c)
    });
    a.now = NOW + 3600 - 30;
    let (_, first) = call(a.request(&Req::api("/x").cookies(&jar)));
    let (_, second) = call(a.request(&Req::api("/x").cookies(&jar)));
    (a, jar, first, second)
}

/// Found in review: some IdPs (Ory Hydra, Spring Authorization Server) leave `sid` out of the ID tokens a
/// refresh brings. The session then no longer knew its IdP session, and a back-channel logout that named
/// it by `sid` ended nothing, on any worker. The login's `sid` is kept in the session while its ID token
/// has none; and a request whose renewal completes after such a logout is not forwarded with another
/// request's renewal of the same session.
#[test]
fn a_logout_by_the_logins_sid_ends_a_session_whose_refreshed_id_token_has_none() {
    let cfg = || config(serde_json::json!({"backchannel_logout_path": "/bcl"}));
    // Two requests of the session start a refresh each; the first is answered with an ID token
    // without `sid`.
    let (mut a, jar, first, second) = two_refreshes_of_session_s1(cfg());
    let new_token = mint(&refreshed_claims(a.now));
    let fwd = forward(a.reply(
        first,
        Some((200, &token_body(Some(&new_token), Some("rt-2")))),
    ));
    let mut renewed = jar.clone();
    renewed.apply(fwd.set_cookies.iter().map(String::as_str));
    assert_eq!(a.open_session(&renewed).login_sid.as_deref(), Some("s-1"));
    // Another worker, which opens the renewed cookie afresh: the control, before the logout.
    let mut b = Filter::ready(cfg());
    b.now = a.now;
    let fwd = forward(b.request(&Req::api("/y").cookies(&renewed)));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
    // The IdP ends session s-1. The second refresh's answer comes after it: not forwarded, not even
    // with the first one's renewal.
    for f in [&mut a, &mut b] {
        assert_eq!(
            respond(f.backchannel(&sid_logout("s-1", f.now))).status,
            200
        );
    }
    let r = respond(a.reply(
        second,
        Some((200, &token_body(Some(&new_token), Some("rt-3")))),
    ));
    assert_eq!(r.status, 401, "{r:?}");
    // The renewed cookie is over on both workers.
    for f in [&mut a, &mut b] {
        let r = respond(f.request(&Req::api("/y").cookies(&renewed)));
        assert_eq!(r.status, 401, "{r:?}");
    }
}

/// Found in review: a refresh answered after its session ended went unrecorded as the IdP's answer, so
/// when it was the probe of an outage the worker's renewals stayed paused, every expired session getting
/// `503`, until the probe's timeout.
#[test]
fn the_answer_to_a_probe_whose_session_ended_meanwhile_still_ends_the_pause() {
    let mut a = Filter::ready(config(
        serde_json::json!({"callout_timeout": "30s", "backchannel_logout_path": "/bcl"}),
    ));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in_with(&mut a, Some("rt-2"), |nonce| {
        let mut c = claims(Some(nonce));
        c["sub"] = "user-2".into();
        mint(&c)
    });
    a.now = NOW + 3600 - 30;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    forward(a.reply(Box::new(Pending::Refresh(job)), None));
    // Past the 5 s pause a probe goes out; user-1 is logged out while it waits.
    a.now = NOW + 3600 - 25;
    let probe = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let probe = flow::renewal_claim(&a.cfg, &mut a.state, probe, a.now).unwrap();
    let logout = user_logout("user-1", a.now);
    assert_eq!(respond(a.backchannel(&logout)).status, 200);
    a.now = NOW + 3600 + 5;
    let new_token = mint(&refreshed_claims(a.now));
    let r = respond(a.reply(
        Box::new(Pending::Refresh(probe)),
        Some((200, &token_body(Some(&new_token), None))),
    ));
    assert_eq!(r.status, 302, "user-1's session is over: {r:?}");
    // The IdP answered: user-2's renewal goes ahead.
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
    assert!(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).is_ok());
}

/// Found in review: a refresh may bring an ID token of another IdP session (`sid` s-2 for a login of
/// s-1). When the IdP then logs s-2 out, a request of the same session whose own renewal failed, or that
/// adopts another worker's renewal, went up with the renewal of the session that had ended.
#[test]
fn a_renewal_of_a_session_logged_out_since_is_not_handed_on() {
    let cfg = || config(serde_json::json!({"backchannel_logout_path": "/bcl"}));
    let (mut a, jar, first, second) = two_refreshes_of_session_s1(cfg());
    let mut c = refreshed_claims(a.now);
    c["sid"] = "s-2".into();
    let new_token = mint(&c);
    let fwd = forward(a.reply(
        first,
        Some((200, &token_body(Some(&new_token), Some("rt-2")))),
    ));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
    let sealed = sealed_in(&jar);
    let lines = flow::renewed_cookies(&a.state, &sealed).unwrap();
    // Another worker, and the control: before the logout it adopts the renewal.
    let mut b = Filter::ready(cfg());
    b.now = a.now;
    let job = refresh_job(b.request(&Req::api("/y").cookies(&jar)));
    let now = b.now;
    let adopted = forward(flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, now));
    assert_eq!(bearer(&adopted), format!("Bearer {new_token}"));
    // The IdP ends s-2.
    let mut c = Filter::ready(cfg());
    c.now = a.now;
    for f in [&mut a, &mut c] {
        assert_eq!(
            respond(f.backchannel(&sid_logout("s-2", f.now))).status,
            200
        );
    }
    // The second refresh is refused (the refresh token was rotated): not forwarded with the first's.
    let r = respond(a.reply(second, Some((400, &br#"{"error":"invalid_grant"}"#[..]))));
    assert_eq!(r.status, 401, "{r:?}");
    // Nor is the renewal adopted on another worker that knows of the logout.
    let job = refresh_job(c.request(&Req::api("/y").cookies(&jar)));
    let now = c.now;
    let r = respond(flow::adopt_renewal(&c.cfg, &mut c.state, job, &lines, now));
    assert_eq!(r.status, 401, "{r:?}");
}

/// Found in review: a `/logout` ended the ID token of the cookie it came with, and that token's `sid` up
/// to its `iat`. A renewal done just before it (a page's poll on worker A, whose answer with the new cookie
/// the browser had not stored yet when the user pressed "Log out", which worker B served with the old
/// cookie) has a later token: the new cookie stayed a session on every worker, and so did the old one on
/// A, whose cache hands it the renewal. Now the logout ends the login, which every renewal keeps.
/// Found in review: a `/logout` records nothing for a login already logged out (a cookie sent again), but
/// took a session ended only up to a date (another login of its IdP session logged out: its `sid` dated by
/// that login's `iat`) for one: its own `/logout` then did not end its login, and a renewal of that login
/// made after the date (as in `a_logout_with_the_cookie_before_a_renewal_ends_the_renewal_too`: the
/// browser had not stored the renewed cookie yet) stayed a session after the user pressed "Log out".
#[test]
fn a_logout_of_a_session_ended_only_up_to_a_date_still_ends_its_login() {
    let with_sid = |n: Option<&str>, iat: u64| {
        let mut c = claims(n);
        c["sid"] = "idp-session-1".into();
        c["iat"] = iat.into();
        c["exp"] = (iat + 3600).into();
        mint(&c)
    };
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    // The user's login (its cookie `jar`), and half an hour later another login of the same IdP
    // session (another site of this client, or the same browser again).
    let (jar, _) = log_in_with(&mut a, Some("rt-1"), |n| with_sid(Some(n), NOW));
    a.now = NOW + 1800;
    let (other, _) = log_in_with(&mut a, Some("rt-2"), |n| with_sid(Some(n), NOW + 1800));
    // `jar`'s login renews (a page's poll); the browser has not stored the new cookie yet.
    a.now = NOW + 3600 - 30;
    let (_, pending) = call(a.request(&Req::api("/poll").cookies(&jar)));
    let new_token = with_sid(None, a.now);
    let fwd = forward(a.reply(
        pending,
        Some((200, &token_body(Some(&new_token), Some("rt-3")))),
    ));
    let mut renewed = jar.clone();
    renewed.apply(fwd.set_cookies.iter().map(String::as_str));
    // The other login logs out (on worker `b`): `sid` ended up to its `iat` (NOW + 1800): `jar`'s old
    // token with it, not the renewal (issued later).
    b.now = a.now;
    let r = respond(b.request(&Req::browser("/logout").cookies(&other)));
    assert_eq!(r.metric, Some(Metric::Logout));
    assert_eq!(
        respond(b.request(&Req::api("/x").cookies(&jar))).status,
        401
    );
    let ended = b.state.revoked.clone();
    a.state.revoked.merge(&ended);
    let fwd = forward(a.request(&Req::api("/x").cookies(&renewed)));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
    // Now the user presses "Log out" with the cookie the browser holds (the old one), served by `b`;
    // every worker learns of it (the adapter's tick).
    let r = respond(b.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    let ended = b.state.revoked.clone();
    a.state.revoked.merge(&ended);
    // On the worker of the logout too.
    let r = b.request(&Req::api("/x").cookies(&renewed));
    match r {
        oidc_filter::flow::Step::Respond(r) => assert_eq!(r.status, 401, "on b: {r:?}"),
        other => panic!(
            "on the worker of the logout, the renewed cookie of a logged-out login still opens a session: {other:?}"
        ),
    }
    // The renewed cookie, stored by the browser a moment later, must be no session: the user's login
    // was logged out. (Without the `is_revoked` skip, `end_login` records the login's key and this is
    // 401.)
    let r = a.request(&Req::api("/x").cookies(&renewed));
    match r {
        oidc_filter::flow::Step::Respond(r) => assert_eq!(r.status, 401, "{r:?}"),
        other => {
            panic!("the renewed cookie of a logged-out login still opens a session: {other:?}")
        }
    }
}

#[test]
fn a_logout_with_the_cookie_before_a_renewal_ends_the_renewal_too() {
    for sid in [Some("idp-session-1"), None] {
        let minted = |c: &mut serde_json::Value| {
            if let Some(sid) = sid {
                c["sid"] = sid.into();
            }
            mint(c)
        };
        let mut a = Filter::ready(config(serde_json::json!({})));
        let mut b = Filter::ready(config(serde_json::json!({})));
        let (jar, _) = log_in_with(&mut a, Some("rt-1"), |n| minted(&mut claims(Some(n))));
        // A copy of the cookie, taken before the renewal.
        let copy = jar.clone();
        a.now = NOW + 3600 - 30;
        b.now = a.now;
        let (_, pending) = call(a.request(&Req::api("/poll").cookies(&jar)));
        let new_token = minted(&mut refreshed_claims(a.now));
        let body = token_body(Some(&new_token), Some("rt-2"));
        let fwd = forward(a.reply(pending, Some((200, &body))));
        assert_eq!(bearer(&fwd), format!("Bearer {new_token}"), "{sid:?}");
        let mut renewed = jar.clone();
        renewed.apply(fwd.set_cookies.iter().map(String::as_str));
        // The control: before the logout, the renewed cookie is a session on both workers.
        for f in [&mut a, &mut b] {
            let fwd = forward(f.request(&Req::api("/x").cookies(&renewed)));
            assert_eq!(bearer(&fwd), format!("Bearer {new_token}"), "{sid:?}");
        }
        let r = respond(b.request(&Req::browser("/logout").cookies(&jar)));
        assert_eq!(r.metric, Some(Metric::Logout), "{sid:?}");
        // Every worker learns of it (the adapter's tick).
        let ended = b.state.revoked.clone();
        a.state.revoked.merge(&ended);
        for (on_a, cookies, what) in [
            (
                true,
                &renewed,
                "the renewed cookie on the worker that renewed it",
            ),
            (
                false,
                &renewed,
                "the renewed cookie on the worker of the logout",
            ),
            (
                true,
                &copy,
                "a copy of the old cookie on the worker that renewed it",
            ),
        ] {
            let f = if on_a { &mut a } else { &mut b };
            let r = respond(f.request(&Req::api("/x").cookies(cookies)));
            assert_eq!(r.status, 401, "{what}, {sid:?}: {r:?}");
        }
        // For as long as the session would have lived, not a grace period (found by mutation testing).
        a.state.revoked.prune(a.now + 3600);
        let r = respond(a.request(&Req::api("/x").cookies(&copy)));
        assert_eq!(r.status, 401, "an hour later, {sid:?}: {r:?}");
        // A later login of the same user stands.
        a.now += 1;
        let now = a.now;
        let (again, _) = log_in_with(&mut a, Some("rt-3"), |n| {
            let mut c = claims(Some(n));
            c["iat"] = now.into();
            c["exp"] = (now + 3600).into();
            minted(&mut c)
        });
        let fwd = forward(a.request(&Req::api("/x").cookies(&again)));
        assert!(bearer(&fwd).starts_with("Bearer "), "{sid:?}");
    }
}

/// Found by mutation testing: two logins of one user within the same second, in two browsers, are two
/// logins (each its own id): a `/logout` in one leaves the other's session.
#[test]
fn a_logout_leaves_the_users_login_of_the_same_second_in_another_browser() {
    let mut f = Filter::ready(config(serde_json::json!({})));
    let (first, _) = log_in(&mut f, Some("rt-1"));
    let (second, _) = log_in(&mut f, Some("rt-2"));
    let r = respond(f.request(&Req::browser("/logout").cookies(&first)));
    assert_eq!(r.metric, Some(Metric::Logout));
    assert_eq!(
        respond(f.request(&Req::api("/x").cookies(&first))).status,
        401
    );
    let fwd = forward(f.request(&Req::api("/x").cookies(&second)));
    assert_eq!(fwd.metric, Some(Metric::SessionForwarded));
}

/// Found by mutation testing: a `/logout` of a session whose renewed ID token names no `sid` (the login's
/// kept as its `login_sid`) ends that IdP session's earlier tokens too, as it does when the token names
/// it: here another browser's session of the same IdP session.
#[test]
fn a_logout_by_a_session_whose_renewed_token_has_no_sid_ends_its_idp_sessions_earlier_tokens() {
    let with_sid = |n: &str, iat: u64| {
        let mut c = claims(Some(n));
        c["sid"] = "idp-session-1".into();
        c["iat"] = iat.into();
        c["exp"] = (iat + 3600).into();
        mint(&c)
    };
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in_with(&mut a, Some("rt-1"), |n| with_sid(n, NOW));
    // The other browser logs in to the same IdP session half an hour later.
    a.now = NOW + 1800;
    let (other, _) = log_in_with(&mut a, Some("rt-2"), |n| with_sid(n, NOW + 1800));
    a.now = NOW + 3600 - 30;
    let (_, pending) = call(a.request(&Req::api("/poll").cookies(&jar)));
    let new_token = mint(&refreshed_claims(a.now));
    let fwd = forward(a.reply(
        pending,
        Some((200, &token_body(Some(&new_token), Some("rt-3")))),
    ));
    let mut renewed = jar.clone();
    renewed.apply(fwd.set_cookies.iter().map(String::as_str));
    assert_eq!(
        a.open_session(&renewed).login_sid.as_deref(),
        Some("idp-session-1")
    );
    // The control: before the logout, the other browser's session goes on.
    let fwd = forward(a.request(&Req::api("/x").cookies(&other)));
    assert_eq!(fwd.metric, Some(Metric::SessionForwarded));
    let r = respond(a.request(&Req::browser("/logout").cookies(&renewed)));
    assert_eq!(r.metric, Some(Metric::Logout));
    let r = respond(a.request(&Req::api("/x").cookies(&other)));
    assert_eq!(r.status, 401, "{r:?}");
}

/// Found by mutation testing: a session sealed by a build before login ids (through a rolling upgrade)
/// is ended by `/logout` too: by its ID token, as those builds name it (they end it too), so that a copy
/// of the cookie opens nothing; and, for one that can renew, by its user and its end, so that a renewal of
/// it done before the logout ends with it.
#[test]
fn a_logout_ends_a_session_of_the_builds_before_login_ids() {
    for refresh_token in [None, Some("rt-1")] {
        let mut a = Filter::ready(config(serde_json::json!({})));
        let mut b = Filter::ready(config(serde_json::json!({})));
        let (jar, id_token) = log_in(&mut a, refresh_token);
        let old = a.sealed_before_login_ids(&jar);
        a.now = NOW + 3600 - 30;
        b.now = a.now;
        let mut renewed = old.clone();
        if refresh_token.is_some() {
            let (_, pending) = call(a.request(&Req::api("/poll").cookies(&old)));
            let new_token = mint(&refreshed_claims(a.now));
            let body = token_body(Some(&new_token), Some("rt-2"));
            let fwd = forward(a.reply(pending, Some((200, &body))));
            renewed.apply(fwd.set_cookies.iter().map(String::as_str));
            assert_eq!(a.open_session(&renewed).login_id, None);
        }
        // The control: before the logout, both are a session.
        for cookies in [&old, &renewed] {
            let fwd = forward(a.request(&Req::api("/x").cookies(cookies)));
            assert_eq!(fwd.metric, Some(Metric::SessionForwarded));
        }
        let r = respond(b.request(&Req::browser("/logout").cookies(&old)));
        assert_eq!(r.metric, Some(Metric::Logout));
        let token = oidc_filter::revocation::token_key(&id_token);
        assert!(
            b.state.revoked.is_revoked(None, "-", 0, &[token]),
            "named as the builds before name it, {refresh_token:?}"
        );
        a.state.revoked.merge(&b.state.revoked);
        for (cookies, what) in [(&old, "a copy of the cookie"), (&renewed, "its renewal")] {
            let r = respond(a.request(&Req::api("/x").cookies(cookies)));
            assert_eq!(r.status, 401, "{what}, {refresh_token:?}: {r:?}");
        }
    }
}

/// Found by mutation testing: the 503 of a request that would wait for a renewal when too many wait already
/// is JSON for an API client too, as its other answers from the filter; text for a browser's page and for
/// its form POST.
#[test]
fn too_many_waiting_is_a_503_in_json_for_an_api_client_and_text_for_a_browser() {
    let mut f = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    f.now = NOW + 3600 + 5;
    let job = refresh_job(f.request(&Req::api("/x").cookies(&jar)));
    let r = respond(flow::renewal_crowded(&job));
    assert_eq!((r.status, r.metric), (503, Some(Metric::RefreshFailed)));
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "renewal_unavailable", "{}", r.body);
    for req in [
        Req::browser("/app"),
        Req::browser("/form").with(":method", "POST"),
    ] {
        let job = refresh_job(f.request(&req.cookies(&jar)));
        let r = respond(flow::renewal_crowded(&job));
        assert_eq!(r.status, 503);
        assert!(
            header(&r.headers, "content-type")
                .unwrap()
                .starts_with("text/plain"),
            "{r:?}"
        );
    }
}

/// Found by mutation testing: a probe's pause lasts its whole timeout and the pause after it also under
/// the longest `callout_timeout` (60 s): the other expired sessions on the worker get their 503 at once
/// until its answer, instead of asking a down IdP too.
#[test]
fn a_probe_under_the_longest_timeout_pauses_the_other_renewals_until_its_answer() {
    let (mut a, jar, other) = after_an_outage("60s");
    // Past the pause: one probe goes out...
    a.now += 5;
    let probe = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    assert!(flow::renewal_claim(&a.cfg, &mut a.state, probe, a.now).is_ok());
    // ...and from then until its timeout and the pause, the others do not.
    for dt in [0, 64] {
        let now = a.now + dt;
        let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
        let r = respond(flow::renewal_claim(&a.cfg, &mut a.state, job, now).unwrap_err());
        assert_eq!(r.status, 503, "+{dt} s");
    }
}

/// Found by mutation testing: what a request waiting for a renewal holds counts its path, the part a
/// client chooses (60 KB paths made the bound on waiting requests' bytes miss most of what they held).
#[test]
fn a_waiting_request_counts_its_path_among_the_bytes_it_holds() {
    let mut f = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    f.now = NOW + 3600 + 5;
    let short = refresh_job(f.request(&Req::api("/x").cookies(&jar))).held_bytes();
    let long_path = format!("/{}", "a".repeat(60_000));
    let long = refresh_job(f.request(&Req::api(&long_path).cookies(&jar))).held_bytes();
    assert!(long >= short + 59_000, "{short} then {long}");
}

/// Found in review: a `/logout` the list keeps by its user (the user's 32 earlier logouts fill their
/// share, or the list has 9,000) was dated by the gateway's clock; a renewal done just before it, on
/// another worker, whose ID token the IdP, its clock 30 s ahead (within `clock_leeway`), dated later,
/// stayed a session on every worker. The logout is now dated by the IdP's clock as the workers saw it.
#[test]
fn a_logout_kept_by_its_user_ends_a_renewal_the_idp_dated_ahead() {
    const SKEW: u64 = 30;
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    a.now = NOW + 3600 - 30;
    b.now = a.now;
    // The user's 32 earlier logouts, as every worker has them.
    for f in [&mut a, &mut b] {
        fill_users_share(&mut f.state.revoked, NOW, 36_000);
    }
    // A poll renews on worker A; the IdP's clock runs 30 s ahead.
    let (_, pending) = call(a.request(&Req::api("/poll").cookies(&jar)));
    let new_token = mint(&refreshed_claims(a.now + SKEW));
    let body = token_body(Some(&new_token), Some("rt-2"));
    let fwd = forward(a.reply(pending, Some((200, &body))));
    assert_eq!(a.state.idp_ahead.secs, 30);
    let mut renewed = jar.clone();
    renewed.apply(fwd.set_cookies.iter().map(String::as_str));
    // Worker B learns how far ahead (the adapter shares it), then the user logs out there with the
    // cookie from before the renewal; every worker learns of the logout.
    b.state.idp_ahead = a.state.idp_ahead;
    let r = respond(b.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    let ended = b.state.revoked.clone();
    a.state.revoked.merge(&ended);
    for (on_a, cookies, what) in [
        (false, &jar, "the logged-out cookie"),
        (true, &renewed, "the renewal, on the worker that renewed it"),
        (false, &renewed, "the renewal, on the worker of the logout"),
    ] {
        let f = if on_a { &mut a } else { &mut b };
        let r = respond(f.request(&Req::api("/x").cookies(cookies)));
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    // A login a second after the logout, by the IdP's clock too, stands.
    b.now += 1;
    let iat = b.now + SKEW;
    let (again, _) = log_in_with(&mut b, Some("rt-3"), |n| {
        let mut c = claims(Some(n));
        c["iat"] = iat.into();
        c["exp"] = (iat + 3600).into();
        mint(&c)
    });
    let fwd = forward(b.request(&Req::api("/x").cookies(&again)));
    assert!(bearer(&fwd).starts_with("Bearer "));
}

/// How far ahead the IdP's clock runs is taken from the tokens it issues, at most `clock_leeway` (beyond
/// it, they are refused): the most a token showed within the hour, then what the tokens since show.
#[test]
fn the_idp_clock_ahead_is_the_most_its_tokens_showed_within_the_hour() {
    let mut f = Filter::ready(config(serde_json::json!({"clock_leeway": "45s"})));
    let (mut jar, _) = log_in(&mut f, Some("rt-1"));
    assert_eq!(
        f.state.idp_ahead.secs, 0,
        "the login's token is dated by the gateway's clock"
    );
    // (seconds since the last, how far ahead the token is dated, what stands)
    for (i, (wait, skew, expected)) in [
        (3600, 20i64, 20),
        (600, -10, 20),
        (600, 40, 40),
        (3000, 5, 40),
        (3700, 5, 5),
        // Behind, as far as `MAX_BEHIND` (30 minutes).
        (3700, -300, -300),
        (600, -200, -200),
        (600, -400, -200),
        (3600, -5000, -1800),
    ]
    .into_iter()
    .enumerate()
    {
        f.now += wait;
        let (_, pending) = call(f.request(&Req::api("/x").cookies(&jar)));
        let iat = f.now.checked_add_signed(skew).unwrap();
        let mut claims = refreshed_claims(iat);
        claims["exp"] = (f.now + 600).into();
        let body = token_body(Some(&mint(&claims)), Some(&format!("rt-{}", i + 2)));
        let fwd = forward(f.reply(pending, Some((200, &body))));
        jar.apply(fwd.set_cookies.iter().map(String::as_str));
        assert_eq!(
            f.state.idp_ahead.secs, expected,
            "after a token {skew} s ahead"
        );
    }
}

/// Found in review: a renewal the IdP did not answer, whose session ended while it waited (a logout, its
/// lifetime), was not recorded as an outage: the adapter, taking the reply for the IdP's answer, then
/// ended the pause the other workers shared, and every worker's renewals went back to the hanging IdP.
#[test]
fn an_unanswered_renewal_of_a_session_ended_meanwhile_is_an_outage() {
    for logout in [false, true] {
        let mut a = Filter::ready(config(serde_json::json!({})));
        let mut b = Filter::ready(config(serde_json::json!({})));
        let (jar, _) = due(&mut a, &mut b);
        // Expired: no old token to fall back on.
        a.now = NOW + 3600 + 5;
        b.now = a.now;
        let (_, pending) = call(a.request(&Req::api("/x").cookies(&jar)));
        if logout {
            respond(b.request(&Req::browser("/logout").cookies(&jar)));
            let ended = b.state.revoked.clone();
            a.state.revoked.merge(&ended);
        }
        let r = respond(a.reply(pending, None));
        assert_eq!(r.status, if logout { 401 } else { 503 }, "logout={logout}");
        assert!(a.state.renewals_failing, "logout={logout}");
        assert!(a.state.renewals_paused(a.now), "logout={logout}");
    }
}

/// Found in review: a `/logout` kept the IdP session's (`sid`) earlier tokens ended only until the
/// logged-out session's own end; another site of the same IdP client, whose sessions live longer (its
/// `session_lifetime`), then saw its sessions of that IdP session open again. They stay ended as long as
/// any session of the client can live (`logout_lifetime`, the longest of those sites').
#[test]
fn a_logout_ends_the_idp_session_for_the_longest_lifetime_of_its_client() {
    let mut f = Filter::ready(config(serde_json::json!({"session_lifetime": "1h"})));
    // A sibling `hosts` entry of the client keeps sessions a day.
    f.cfg.logout_lifetime = 24 * 3600;
    let (jar, _) = log_in_with(&mut f, Some("rt-1"), |n| {
        let mut c = claims(Some(n));
        c["sid"] = "idp-session-1".into();
        mint(&c)
    });
    let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    // The other site's session of that IdP session, issued before the logout, two hours later.
    let mut list = f.state.revoked.clone();
    list.prune(NOW + 2 * 3600);
    assert!(list.is_revoked(Some("idp-session-1"), "user-1", NOW - 10, &["-"]));
    // (And the minute of slack for other gateways' clocks, `flow::LIFETIME_SLACK`: found by mutation
    // testing, a `/logout` kept it for `logout_lifetime` alone.)
    list.prune(NOW + 24 * 3600 + 59);
    assert!(list.is_revoked(Some("idp-session-1"), "user-1", NOW - 10, &["-"]));
    list.prune(NOW + 24 * 3600 + oidc_filter::flow::LIFETIME_SLACK + 1);
    assert!(!list.is_revoked(Some("idp-session-1"), "user-1", NOW - 10, &["-"]));
}

/// Found by mutation testing: a `/logout` the list keeps by its user (the user's share of 32 is full) ends
/// that user's sessions begun before it for as long as any session of the client can live
/// (`logout_lifetime`), as it does the IdP session's: another site's longer session of the user does not
/// open again once the logged-out one would have ended.
#[test]
fn a_logout_kept_by_its_user_ends_its_earlier_sessions_for_the_clients_longest_lifetime() {
    let mut f = Filter::ready(config(serde_json::json!({"session_lifetime": "1h"})));
    // A sibling `hosts` entry of the client keeps sessions a day.
    f.cfg.logout_lifetime = 24 * 3600;
    fill_users_share(&mut f.state.revoked, NOW - 100, 48 * 3600);
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    // The other site's session of the user, issued before the logout, two hours later.
    let mut list = f.state.revoked.clone();
    list.prune(NOW + 2 * 3600);
    assert!(list.is_revoked(None, "user-1", NOW - 10, &["-"]));
}

/// Found by mutation testing: after a new configuration shortens `session_lifetime`, a session made before
/// it keeps its own end; its `/logout` keeps its IdP session's earlier tokens ended until then at least,
/// not only for the new, shorter lifetime: another browser's session of that IdP session, made before the
/// change too, does not open again meanwhile.
#[test]
fn a_logout_ends_the_idp_session_at_least_as_long_as_the_logged_out_session_lives() {
    let mut f = Filter::ready(config(serde_json::json!({"session_lifetime": "24h"})));
    let with_sid = |n: &str| {
        let mut c = claims(Some(n));
        c["sid"] = "idp-session-1".into();
        mint(&c)
    };
    let (jar, _) = log_in_with(&mut f, Some("rt-1"), with_sid);
    // The new configuration: sessions of an hour.
    f.cfg.session_lifetime = 3600;
    f.cfg.logout_lifetime = 3600;
    f.now = NOW + 10;
    let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    // Two hours later, the other browser's session of that IdP session, issued before the logout.
    let mut list = f.state.revoked.clone();
    list.prune(NOW + 2 * 3600);
    assert!(list.is_revoked(Some("idp-session-1"), "user-2", NOW - 10, &["-"]));
}

/// Found by a black-box test: after a new configuration lowered `session_lifetime` (8 h to 60 s), a session
/// made before it lived on for its 8 hours, and one a back-channel logout had ended opened again once the
/// list let the logout go, 60 s later. The lifetime configured now bounds every session: one with more
/// left (and a minute of slack for other gateways' clocks) is over; one made under it goes on.
#[test]
fn a_lowered_session_lifetime_ends_the_sessions_made_under_the_longer_one() {
    let mut f = Filter::ready(config(serde_json::json!({"session_lifetime": "8h"})));
    let (old, _) = log_in(&mut f, Some("rt-1"));
    forward(f.request(&Req::api("/x").cookies(&old)));
    f.cfg.session_lifetime = 60;
    f.cfg.logout_lifetime = 60;
    // Within the new lifetime and its minute of slack (for other gateways' clocks) from the login: it
    // stands.
    f.now = NOW + 60 + oidc_filter::flow::LIFETIME_SLACK - 1;
    forward(f.request(&Req::api("/x").cookies(&old)));
    // Past them: over, and it stays over to its own end (its token due for renewal there: no renewal),
    // however little of its own life is left (the review of the first version of this fix: one bounded
    // by its time left opened again in its last minutes).
    for at in [
        NOW + 60 + oidc_filter::flow::LIFETIME_SLACK,
        NOW + 3600,
        NOW + 8 * 3600 - 100,
    ] {
        f.now = at;
        let r = respond(f.request(&Req::api("/x").cookies(&old)));
        assert_eq!(r.status, 401, "{at}: {r:?}");
    }
    // A login under the new lifetime goes on.
    f.now = NOW + 3600;
    let new = log_in_at(&mut f, Some("rt-2"), NOW + 3600);
    forward(f.request(&Req::api("/x").cookies(&new)));
}

/// Found by mutation testing: the slack the lowered `session_lifetime` leaves for other gateways' clocks
/// is the minute documented: a session made at `NOW` under 8 h, the lifetime now 60 s, stands until
/// `NOW + 119` and is over at `NOW + 120`.
#[test]
fn a_lowered_session_lifetime_leaves_a_minute_of_slack() {
    let mut f = Filter::ready(config(serde_json::json!({"session_lifetime": "8h"})));
    let (old, _) = log_in(&mut f, Some("rt-1"));
    f.cfg.session_lifetime = 60;
    f.now = NOW + 119;
    forward(f.request(&Req::api("/x").cookies(&old)));
    f.now = NOW + 120;
    let r = respond(f.request(&Req::api("/x").cookies(&old)));
    assert_eq!(r.status, 401, "{r:?}");
}

/// A login at `iat` (the IdP's clock), with refresh token `rt` (or none), its token for an hour.
fn log_in_at(f: &mut Filter, rt: Option<&str>, iat: u64) -> Jar {
    log_in_with(f, rt, |n| {
        let mut c = claims(Some(n));
        c["iat"] = iat.into();
        c["exp"] = (iat + 3600).into();
        mint(&c)
    })
    .0
}

/// Whether `jar`'s session still goes upstream on `f`.
fn stands(f: &mut Filter, jar: &Jar) -> bool {
    matches!(f.request(&Req::api("/x").cookies(jar)), Step::Forward(_))
}

/// Found in review: with the IdP's clock behind the gateway's, a `/logout` kept by its user (the user's 32
/// earlier logouts fill their share, or the list has 9,000) was dated by the gateway's clock, as if the
/// IdP's ran no later: the user's login again, whose token the IdP dated before that, was ended at once,
/// and the user could not log in again for as long as the IdP's clock ran behind (10 minutes here). Dated
/// by the IdP's clock, the logout still ends a renewal done just before it.
#[test]
fn a_logout_kept_by_its_user_with_the_idp_clock_behind_lets_the_next_login_in() {
    const BEHIND: u64 = 600;
    let mut f = Filter::ready(config(serde_json::json!({})));
    f.now = NOW + 100;
    fill_users_share(&mut f.state.revoked, NOW - 100, 36_000);
    let t = f.now;
    let jar = log_in_at(&mut f, Some("rt-1"), t - BEHIND);
    assert_eq!(f.state.idp_ahead.secs, -600);
    // A renewal just before the logout; the cookie it set not stored yet.
    f.now = t + 3000;
    let (_, pending) = call(f.request(&Req::api("/poll").cookies(&jar)));
    let body = token_body(Some(&mint(&refreshed_claims(f.now - BEHIND))), Some("rt-2"));
    let fwd = forward(f.reply(pending, Some((200, &body))));
    let mut renewed = jar.clone();
    renewed.apply(fwd.set_cookies.iter().map(String::as_str));
    let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    assert!(!stands(&mut f, &jar), "the logged-out cookie");
    assert!(!stands(&mut f, &renewed), "the renewal done just before");
    // A second later, by both clocks, the user logs in again.
    f.now += 1;
    let iat = f.now - BEHIND;
    let again = log_in_at(&mut f, Some("rt-3"), iat);
    assert!(
        stands(&mut f, &again),
        "a login after the logout was ended: the IdP's clock runs {BEHIND} s behind"
    );
}

/// Found in review: read against a token's arrival, an IdP whose clock is in step with the gateway's read
/// a second behind when its answer came in the second after it issued the token; a `/logout` kept by its
/// user on that worker was dated a second early, and a renewal another worker did in that second outlived
/// it. Read against the time the IdP was asked, the reading is never below the IdP's true offset.
#[test]
fn a_slow_answer_does_not_read_an_idp_in_step_as_behind() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let t = NOW + 100;
    a.now = t;
    let jar = log_in_at(&mut a, Some("rt-1"), t);
    // On B, a login asked in second t - 1, its token issued in that second, the answer in second t.
    b.now = t - 1;
    let login = start_login(&mut b, "?rd=/app");
    let (_, pending) = call(b.request(&login.callback("code-1", &Jar::default())));
    b.now = t;
    let mut c = claims(Some(&login.nonce));
    c["iat"] = (t - 1).into();
    c["exp"] = (t + 3599).into();
    let body = token_body(Some(&mint(&c)), Some("rt-x"));
    let _ = respond(b.reply(pending, Some((200, &body))));
    assert_eq!(b.state.idp_ahead.secs, 0);
    for f in [&mut a, &mut b] {
        fill_users_share(&mut f.state.revoked, NOW - 100, 36_000);
        f.now = t + 3545;
    }
    // A renews in second T (its token dated T); in that second, before B takes in A's reading, the user
    // logs out on B with the cookie from before the renewal.
    let (_, pending) = call(a.request(&Req::api("/poll").cookies(&jar)));
    let body = token_body(Some(&mint(&refreshed_claims(a.now))), Some("rt-2"));
    let fwd = forward(a.reply(pending, Some((200, &body))));
    let mut renewed = jar.clone();
    renewed.apply(fwd.set_cookies.iter().map(String::as_str));
    let r = respond(b.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    let ended = b.state.revoked.clone();
    a.state.revoked.merge(&ended);
    assert!(
        !stands(&mut a, &renewed),
        "the renewal of the logout's second"
    );
    assert!(!stands(&mut a, &jar), "the logged-out cookie");

    // A renewal's answer, the same (an hour after the login's reading, which then no longer stands).
    let mut f = Filter::ready(config(serde_json::json!({})));
    f.now = t;
    let (jar, _) = log_in_with(&mut f, Some("rt-1"), |n| {
        let mut c = claims(Some(n));
        c["iat"] = t.into();
        c["exp"] = (t + 3650).into();
        mint(&c)
    });
    f.now = t + 3600;
    let (_, pending) = call(f.request(&Req::api("/poll").cookies(&jar)));
    f.now += 1;
    let body = token_body(Some(&mint(&refreshed_claims(t + 3600))), Some("rt-2"));
    let _ = forward(f.reply(pending, Some((200, &body))));
    assert_eq!(
        f.state.idp_ahead,
        flow::Ahead {
            secs: 0,
            seen: t + 3601
        }
    );
}

/// Found in review: how far the IdP's clock runs ahead was a maximum kept for ever (in the workers'
/// shared data too, which outlives a VM): an IdP whose clock once ran 60 s ahead and was set right left
/// every later `/logout` kept by its user dated 60 s late, and the user's login again within that minute
/// (or on another device) was ended at once. A reading stands an hour unless a token shows as much.
#[test]
fn a_clock_set_right_again_dates_logouts_by_the_tokens_since() {
    let mut f = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    // Once, a renewal the IdP dated 60 s ahead (within the default leeway).
    f.now = NOW + 3600 - 30;
    let (_, pending) = call(f.request(&Req::api("/poll").cookies(&jar)));
    let body = token_body(Some(&mint(&refreshed_claims(f.now + 60))), Some("rt-2"));
    forward(f.reply(pending, Some((200, &body))));
    assert_eq!(f.state.idp_ahead.secs, 60);
    // A day later the IdP's clock is right again. The user's 32 earlier logouts fill the share.
    f.now += 24 * 3600;
    fill_users_share(&mut f.state.revoked, f.now - 100, 36_000);
    let t = f.now;
    let jar = log_in_at(&mut f, Some("rt-3"), t);
    let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    // 20 s later, by both clocks, the user logs in again.
    f.now = t + 20;
    let again = log_in_at(&mut f, Some("rt-4"), t + 20);
    assert!(
        stands(&mut f, &again),
        "a login 20 s after the logout was ended: the logout is dated {} s ahead, a day after the IdP's clock was right",
        f.state.idp_ahead.secs
    );
}

/// Found in review: a `/logout`'s login keys lasted `logout_lifetime` (the longest `session_lifetime` of
/// the client's sites), though that login's tokens live no longer than its session: a user's ended logins
/// counted against the user's share (32) far longer, and one who logs in and out every 10 minutes without
/// refresh tokens, or twice a day where a sibling site keeps sessions 30 days, reached the fallback by
/// user: a `/logout` then ended that user's sessions on every device.
#[test]
fn a_logins_keys_last_as_long_as_its_sessions_not_the_clients_longest() {
    // (session_lifetime, logout_lifetime, refresh token, step between login/logout cycles)
    for (lifetime, logout_lifetime, rt, step) in [
        (8 * 3600, 8 * 3600, None, 600),
        (3600, 30 * 24 * 3600, Some("rt"), 12 * 3600),
    ] {
        let mut f = Filter::ready(config(serde_json::json!({"session_lifetime": lifetime})));
        f.cfg.logout_lifetime = logout_lifetime;
        for _ in 0..32 {
            f.now += step;
            // As the adapter's tick does, every second.
            f.state.revoked.prune(f.now);
            let t = f.now;
            let jar = log_in_at(&mut f, rt, t);
            let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
            assert_eq!(r.metric, Some(Metric::Logout));
        }
        // The user's phone logs in; a minute later the laptop logs in and out once more.
        f.now += 60;
        let t = f.now;
        let phone = log_in_at(&mut f, rt, t);
        f.now += 60;
        f.state.revoked.prune(f.now);
        let t = f.now;
        let laptop = log_in_at(&mut f, rt, t);
        respond(f.request(&Req::browser("/logout").cookies(&laptop)));
        assert!(
            stands(&mut f, &phone),
            "lifetime {lifetime}, logout_lifetime {logout_lifetime}: the laptop's logout ended the phone's session (its ended logins, each {} s old at most, counted as 32)",
            32 * step
        );
    }
}

/// Found by a black-box test: a `/logout` on a worker that had not reached the IdP yet (Envoy started while
/// the IdP was down) went to `/`, as if the IdP had no end-session endpoint: the IdP's session lived on,
/// and the next visit logged the user in again without a password, on a shared computer the next person
/// too. The session ends here all the same, and the answer says the IdP's may live on (`503`, which the
/// adapter holds for the IdP's documents first, as a login's).
#[test]
fn a_logout_before_the_idp_is_reached_ends_the_session_here_and_says_so() {
    let mut f = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    let mut g = Filter::new(config(serde_json::json!({})));
    g.now = f.now;
    let r = respond(g.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.metric, Some(Metric::NotReady));
    assert!(
        r.body.contains("may still be logged in there"),
        "{}",
        r.body
    );
    assert_eq!(header(&r.headers, "location"), None);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("_oidc_session=;") && c.contains("Max-Age=0")),
        "{r:?}"
    );
    // Ended on every worker (the adapter shares the list).
    let ended = g.state.revoked.clone();
    f.state.revoked.merge(&ended);
    assert_eq!(
        respond(f.request(&Req::api("/x").cookies(&jar))).status,
        401
    );
    // Once the IdP is reached, a logout goes there.
    let r = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    assert!(
        location(&r).starts_with("https://idp.example.com/"),
        "{r:?}"
    );
}

/// Found by mutation testing: a `/logout` the list keeps by its user, on a worker that has not seen how far
/// ahead the IdP's clock runs (no token of it came there yet), still ends the logged-out session, whose
/// token the IdP dated ahead: the entry is dated by that token at the least.
#[test]
fn a_logout_kept_by_its_user_ends_its_own_session_dated_ahead_on_a_worker_that_saw_no_token() {
    const SKEW: u64 = 30;
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let jar = log_in_at(&mut a, Some("rt-1"), NOW + SKEW);
    assert_eq!(b.state.idp_ahead.secs, 0);
    // The user's 32 earlier logouts, as every worker has them.
    fill_users_share(&mut b.state.revoked, NOW, 36_000);
    let r = respond(b.request(&Req::browser("/logout").cookies(&jar)));
    assert_eq!(r.metric, Some(Metric::Logout));
    assert!(!stands(&mut b, &jar), "the logged-out session goes on");
}

/// Found by mutation testing: the IdP's own refusal of one user's refresh token (`invalid_grant`), and a
/// success in JSON that cannot be used, are no outage: the other users' renewals on the worker still ask
/// the IdP, instead of each getting a 503 for the next 5 s.
#[test]
fn a_refused_or_unusable_renewal_pauses_no_other_users_renewal() {
    for (status, body) in [
        (400, &br#"{"error":"invalid_grant"}"#[..]),
        (200, &br#"{"access_token":"at-2"}"#[..]),
    ] {
        let mut a = Filter::ready(config(serde_json::json!({})));
        let (jar, _) = log_in(&mut a, Some("rt-1"));
        let (other, _) = log_in(&mut a, Some("rt-2"));
        a.now = NOW + 3600 + 1;
        let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
        let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
        let r = respond(a.reply(Box::new(Pending::Refresh(job)), Some((status, body))));
        assert_eq!(r.metric, Some(Metric::RefreshFailed), "{status}: {r:?}");
        let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
        assert!(
            flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).is_ok(),
            "{status}: the other user's renewal was paused"
        );
    }
}

/// Found by mutation testing: after an outage, a probe answered with a success in JSON that cannot be used
/// (what a proxy in the IdP's place may send) does not end the outage: the worker's renewals still ask the
/// IdP one at a time, rather than all at once.
#[test]
fn an_unusable_answer_to_a_probe_does_not_end_the_outage() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    a.now = NOW + 3600 + 1;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    assert_eq!(
        respond(a.reply(Box::new(Pending::Refresh(job)), None)).status,
        503
    );
    // Past the pause, the probe.
    a.now += 5;
    let probe = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let probe = flow::renewal_claim(&a.cfg, &mut a.state, probe, a.now).unwrap();
    let body = br#"{"access_token":"at-2"}"#;
    let r = respond(a.reply(Box::new(Pending::Refresh(probe)), Some((200, body))));
    assert_eq!(r.metric, Some(Metric::RefreshFailed), "{r:?}");
    assert!(a.state.renewals_failing, "the outage ended");
}

/// Found by mutation testing: after an outage, a probe the IdP answers by refusing that user's refresh
/// token (`invalid_grant`) ends the outage all the same: the IdP answers, and the other users' renewals
/// ask it again at once instead of one at a time.
#[test]
fn a_refusal_answering_a_probe_ends_the_outage() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in(&mut a, Some("rt-2"));
    a.now = NOW + 3600 + 1;
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let job = flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).unwrap();
    assert_eq!(
        respond(a.reply(Box::new(Pending::Refresh(job)), None)).status,
        503
    );
    // Past the pause, the probe: the IdP refuses that user's refresh token.
    a.now += 5;
    let probe = refresh_job(a.request(&Req::browser("/page").cookies(&jar)));
    let probe = flow::renewal_claim(&a.cfg, &mut a.state, probe, a.now).unwrap();
    let body = br#"{"error":"invalid_grant"}"#;
    let r = respond(a.reply(Box::new(Pending::Refresh(probe)), Some((400, body))));
    assert_eq!(r.metric, Some(Metric::RefreshFailed), "{r:?}");
    assert!(!a.state.renewals_failing, "the outage goes on");
    let job = refresh_job(a.request(&Req::browser("/page").cookies(&other)));
    assert!(flow::renewal_claim(&a.cfg, &mut a.state, job, a.now).is_ok());
}

/// Found in review: the adapter took any reply to a renewal for the IdP's answer, and ended the pause the
/// other workers shared with it; an unusable success is no answer that ends an outage. Only a success or
/// a refusal says the IdP answered (`State::idp_answered`, which the adapter takes).
#[test]
fn only_a_success_or_a_refusal_says_the_idp_answered() {
    for (reply, answered) in [
        (Some((200, b"{}".to_vec())), false),
        (None, false),
        (Some((400, br#"{"error":"invalid_grant"}"#.to_vec())), true),
        (
            Some((
                200,
                token_body(Some(&mint(&refreshed_claims(NOW + 3600 + 5))), Some("rt-2")),
            )),
            true,
        ),
    ] {
        let mut f = Filter::ready(config(serde_json::json!({})));
        let (jar, _) = log_in(&mut f, Some("rt-1"));
        f.now = NOW + 3600 + 5;
        let (_, pending) = call(f.request(&Req::api("/x").cookies(&jar)));
        f.reply(pending, reply.as_ref().map(|(s, b)| (*s, b.as_slice())));
        assert_eq!(f.state.idp_answered, answered, "{reply:?}");
    }
}

/// `j`'s renewal, claimed as the adapter does: `Ok` when it may ask the IdP, else the answer held.
fn claim_of(a: &mut Filter, j: &Jar) -> Result<RefreshJob, Step> {
    let job = refresh_job(a.request(&Req::api("/poll").cookies(j)));
    flow::renewal_claim(&a.cfg, &mut a.state, job, a.now)
}

/// `j`'s renewal asks the IdP, which fails it (a `500`): the expired session gets a 503.
fn fails(a: &mut Filter, j: &Jar) {
    let job = claim_of(a, j).expect("the renewal asks the IdP");
    let r = respond(a.reply(Box::new(Pending::Refresh(job)), Some((500, b"{}"))));
    assert_eq!(r.status, 503, "{r:?}");
}

/// `j`'s renewal asks the IdP, which renews it.
fn renews(a: &mut Filter, j: &Jar) {
    let job = claim_of(a, j).expect("the renewal asks the IdP");
    let new_token = mint(&refreshed_claims(a.now));
    let body = token_body(Some(&new_token), None);
    let fwd = forward(a.reply(Box::new(Pending::Refresh(job)), Some((200, &body))));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
}

/// `n` expired sessions on one worker (`callout_timeout` 30 s), the first of which just met an outage
/// (its renewal failed: a pause).
fn outage_with(n: usize) -> (Filter, Vec<Jar>) {
    let mut a = Filter::ready(config(serde_json::json!({"callout_timeout": "30s"})));
    let s: Vec<Jar> = (0..n)
        .map(|i| log_in(&mut a, Some(&format!("rt-{i}"))).0)
        .collect();
    a.now = NOW + 3600 + 1;
    fails(&mut a, &s[0]);
    assert!(a.state.renewals_failing && a.state.renewals_paused(a.now));
    (a, s)
}

/// After [`outage_with`]: the second session's renewal waits out the pause, then probes and the IdP
/// renews it; the first asks again and fails again, its own failure now (no pause). Returns when.
fn own_failure(n: usize) -> (Filter, Vec<Jar>, u64) {
    let (mut a, s) = outage_with(n);
    a.now += 2;
    assert!(claim_of(&mut a, &s[1]).is_err());
    a.now += 4;
    assert!(claim_of(&mut a, &s[0]).is_err());
    renews(&mut a, &s[1]);
    fails(&mut a, &s[0]);
    assert!(!a.state.renewals_failing && !a.state.renewals_paused(a.now));
    let t = a.now;
    (a, s, t)
}

/// Found by mutation testing: while another session's renewal waits, the session whose renewal met the
/// outage waits 10 s, and no longer (its own waiting claims do not undo the other's wait).
#[test]
fn a_session_that_met_the_outage_waits_ten_seconds_while_another_waits() {
    let (mut a, s) = outage_with(2);
    let t0 = a.now;
    a.now = t0 + 2;
    assert!(claim_of(&mut a, &s[1]).is_err());
    assert!(claim_of(&mut a, &s[0]).is_err());
    a.now = t0 + 9;
    let r = respond(claim_of(&mut a, &s[0]).unwrap_err());
    assert!(
        r.detail
            .as_deref()
            .unwrap_or_default()
            .contains("this session's renewal"),
        "{r:?}"
    );
    a.now = t0 + 10;
    assert!(claim_of(&mut a, &s[0]).is_ok(), "held past 10 s");
}

/// Review (do the answers tell the truth): a renewal's `503` said `Retry-After: 5` whatever the wait, and
/// a session that met the outage, retrying after 5 s while another waited to probe, met another `503` (its
/// own wait is 10 s); so did the others while a probe under a long `callout_timeout` was out. It says when
/// that session's renewal may ask the IdP again.
#[test]
fn a_renewals_503_says_when_that_session_may_renew_again() {
    fn retry(step: Step) -> String {
        let r = respond(step);
        assert_eq!(r.status, 503, "{r:?}");
        header(&r.headers, "retry-after").unwrap().to_string()
    }
    let (mut a, s) = outage_with(3);
    let t0 = a.now;
    // The failure itself: the pause, 5 s.
    let job = claim_of(&mut a, &s[2]).unwrap_err();
    assert_eq!(retry(job), "5");
    a.now = t0 + 2;
    assert_eq!(
        retry(claim_of(&mut a, &s[1]).unwrap_err()),
        "3",
        "the pause's end"
    );
    // Another waits: the session that met the outage waits 10 s from it.
    assert_eq!(retry(claim_of(&mut a, &s[0]).unwrap_err()), "8");
    a.now = t0 + 9;
    assert_eq!(retry(claim_of(&mut a, &s[0]).unwrap_err()), "1");
    // The probe (30 s `callout_timeout`) pauses the others until its answer could come, and 5 s.
    a.now = t0 + 5;
    let probe = claim_of(&mut a, &s[1]).expect("the probe");
    a.now = t0 + 6;
    assert_eq!(retry(claim_of(&mut a, &s[2]).unwrap_err()), "34");
    // The probe meets the outage too: a pause of 5 s, the probe's session 10 s (another waits).
    a.now = t0 + 7;
    assert_eq!(
        retry(a.reply(Box::new(Pending::Refresh(probe)), None)),
        "10"
    );
    a.now = t0 + 8;
    assert_eq!(retry(claim_of(&mut a, &s[2]).unwrap_err()), "4");
}

/// The `Retry-After` of a renewal's `503`.
fn retry_after_of(step: Step) -> String {
    let r = respond(step);
    assert_eq!(r.status, 503, "{r:?}");
    header(&r.headers, "retry-after").unwrap().to_string()
}

/// Mutation testing of the thirtieth review's change: while no other session waits, the session that met
/// the outage waits 5 s, not 10, and its `Retry-After` says so; its own failure again (no pause) counts
/// from that failure, the last of its run, not from the first.
#[test]
fn a_sessions_own_wait_while_none_waits_is_told_from_its_last_failure() {
    let (mut a, s) = outage_with(2);
    a.now += 1;
    assert_eq!(retry_after_of(claim_of(&mut a, &s[0]).unwrap_err()), "4");
    let (mut a, s, t) = own_failure(2);
    assert!(!a.state.renewals_paused(t));
    a.now = t + 1;
    assert_eq!(retry_after_of(claim_of(&mut a, &s[0]).unwrap_err()), "4");
    a.now = t + 4;
    assert_eq!(retry_after_of(claim_of(&mut a, &s[0]).unwrap_err()), "1");
    a.now = t + 5;
    assert!(claim_of(&mut a, &s[0]).is_ok());
}

/// Mutation testing of the thirtieth review's change: renewals that wait for the IdP's keys (30 s from
/// the fetch) say how long is left of that wait, whichever session asks.
#[test]
fn a_renewal_waiting_for_the_keys_says_how_long_is_left() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in(&mut a, Some("rt-2"));
    let fetched = NOW + 3600 + 1;
    a.now = fetched;
    let rotated = mint_with_kid(&refreshed_claims(a.now), "rotated-1");
    let job = claim_of(&mut a, &jar).unwrap();
    let (_, pending) = call(a.reply(
        Box::new(Pending::Refresh(job)),
        Some((200, &token_body(Some(&rotated), None))),
    ));
    assert_eq!(respond(a.reply(pending, Some((200, JWKS)))).status, 503);
    for (dt, jar, left) in [(0, &other, "30"), (10, &jar, "20"), (29, &other, "1")] {
        a.now = fetched + dt;
        assert_eq!(
            retry_after_of(claim_of(&mut a, jar).unwrap_err()),
            left,
            "+{dt} s"
        );
    }
}

/// Mutation testing of the thirtieth review's change: a wait further off than any can be (left from
/// before the clock stepped back) is none, and the `Retry-After` leaves it out too.
#[test]
fn a_wait_further_off_than_any_can_be_is_not_in_retry_after() {
    let (mut a, s) = outage_with(2);
    a.state.keys_wait_until = a.now + 130;
    a.now += 1;
    assert_eq!(retry_after_of(claim_of(&mut a, &s[1]).unwrap_err()), "4");
}

/// Mutation testing of the thirtieth review's change: the answer the adapter gives a renewal another
/// request holds while this worker's renewals are paused (`flow::renewal_paused`) says when that session
/// may renew: the pause's end, or the session's own longer wait.
#[test]
fn a_renewal_held_elsewhere_while_paused_says_when_that_session_may_renew() {
    let (mut a, s) = outage_with(3);
    a.now += 2;
    // Another session waits: the one that met the outage waits 10 s from it.
    assert!(claim_of(&mut a, &s[1]).is_err());
    for (j, left) in [(&s[2], "3"), (&s[0], "8")] {
        let job = refresh_job(a.request(&Req::api("/poll").cookies(j)));
        let step = flow::renewal_paused(&a.cfg, &a.state, job, a.now);
        assert_eq!(retry_after_of(step), left);
    }
}

/// Found by mutation testing: a session's failures are its own while each comes within 300 s of the one
/// before (the run going on past 300 s from its first); 300 s after the last, its failure starts a new
/// run, and pauses the site's renewals as any outage does.
#[test]
fn a_sessions_failures_are_its_own_while_each_comes_within_five_minutes_of_the_last() {
    let (mut a, s, t) = own_failure(2);
    for at in [t + 250, t + 500, t + 799] {
        a.now = at;
        fails(&mut a, &s[0]);
        assert!(
            !a.state.renewals_failing && !a.state.renewals_paused(a.now),
            "+{}",
            at - t
        );
    }
    a.now = t + 799 + 300;
    fails(&mut a, &s[0]);
    assert!(a.state.renewals_failing && a.state.renewals_paused(a.now));
}

/// Found by mutation testing: a session whose own renewal failed moments ago is held (the adapter claims
/// no renewal for it) though the site's renewals are not paused; another session is not.
#[test]
fn a_session_whose_own_renewal_just_failed_is_held_and_no_other() {
    let (mut a, s, t) = own_failure(3);
    a.now = t + 1;
    let own = refresh_job(a.request(&Req::api("/poll").cookies(&s[0])));
    let other = refresh_job(a.request(&Req::api("/poll").cookies(&s[2])));
    assert!(!a.state.renewals_paused(a.now));
    assert!(flow::renewal_held(&a.state, &own, a.now));
    assert!(!flow::renewal_held(&a.state, &other, a.now));
}

/// Found by mutation testing: another session's outage is recorded beside a session's run of failures,
/// not over it (the oldest of the four records goes): the first session's next failure is still its own.
#[test]
fn a_sessions_run_of_failures_outlasts_another_sessions_outage() {
    let (mut a, s) = outage_with(4);
    let t0 = a.now;
    a.now = t0 + 5;
    renews(&mut a, &s[1]);
    a.now = t0 + 6;
    fails(&mut a, &s[2]);
    assert!(
        a.state.renewals_failing,
        "another session's first failure pauses"
    );
    a.now = t0 + 11;
    renews(&mut a, &s[3]);
    a.now = t0 + 20;
    fails(&mut a, &s[0]);
    assert!(
        !a.state.renewals_failing && !a.state.renewals_paused(a.now),
        "the first session's failure was taken for a new outage"
    );
}

/// Found by mutation testing: the IdP's answer to the probe ends the wait of the sessions that waited
/// (one that came while the probe was out too): the session that met the outage asks again 5 s after it.
#[test]
fn once_the_idp_answers_the_probe_the_session_that_met_the_outage_asks_after_five_seconds() {
    let (mut a, s) = outage_with(3);
    let t0 = a.now;
    a.now = t0 + 2;
    assert!(claim_of(&mut a, &s[1]).is_err());
    a.now = t0 + 6;
    let probe = claim_of(&mut a, &s[1]).expect("the probe");
    assert!(claim_of(&mut a, &s[2]).is_err(), "waits for the probe");
    let new_token = mint(&refreshed_claims(a.now));
    let body = token_body(Some(&new_token), None);
    forward(a.reply(Box::new(Pending::Refresh(probe)), Some((200, &body))));
    assert!(
        claim_of(&mut a, &s[0]).is_ok(),
        "held after the IdP answered"
    );
}

/// Found by mutation testing: a session still within 10 s of its own failure, held by another session's
/// outage, is none of the others that wait: the session whose failure paused asks again as soon as the
/// pause is over.
#[test]
fn a_session_waiting_out_its_own_failure_is_no_other_that_waits() {
    let (mut a, s, t) = own_failure(3);
    a.now = t + 1;
    fails(&mut a, &s[2]);
    assert!(a.state.renewals_paused(a.now));
    a.now = t + 5;
    assert!(claim_of(&mut a, &s[0]).is_err());
    a.now = t + 6;
    assert!(claim_of(&mut a, &s[2]).is_ok(), "held past the pause");
}

/// Found by mutation testing: a failure recorded ahead of the clock (it stepped back) holds a session
/// only for as long as it would have behind it.
#[test]
fn a_failure_the_clock_stepped_back_from_holds_a_session_only_seconds() {
    let (mut a, s, t) = own_failure(2);
    a.now = t + 100;
    fails(&mut a, &s[0]);
    a.now = t + 97;
    assert!(claim_of(&mut a, &s[0]).is_err(), "3 s ahead");
    a.now = t + 80;
    assert!(claim_of(&mut a, &s[0]).is_ok(), "20 s ahead");
}

/// Found by mutation testing: a session's first failure pauses the site's renewals even when the IdP's
/// last answer reads later than now (the clock stepped back).
#[test]
fn a_first_failure_after_the_clock_stepped_back_still_pauses() {
    let (mut a, s, t) = own_failure(3);
    a.now = t - 3;
    fails(&mut a, &s[2]);
    assert!(a.state.renewals_failing && a.state.renewals_paused(a.now));
}

/// Found by mutation testing: while the IdP keeps failing, a session's failure is never its own: one
/// whose renewal was out when another's met the outage pauses 5 s from its own failure. (It no longer
/// takes the probe: `a_session_failing_alone_does_not_probe_for_the_others`.)
#[test]
fn a_failure_while_the_idp_keeps_failing_pauses_five_seconds_even_from_a_session_that_failed_alone()
{
    let (mut a, s, t) = own_failure(4);
    a.now = t + 5;
    let out = claim_of(&mut a, &s[0]).expect("its own wait is over");
    a.now = t + 6;
    fails(&mut a, &s[2]);
    a.now = t + 8;
    let r = respond(a.reply(Box::new(Pending::Refresh(out)), Some((500, b"{}"))));
    assert_eq!(r.status, 503, "{r:?}");
    a.now = t + 12;
    assert!(
        claim_of(&mut a, &s[3]).is_err(),
        "the pause ended 5 s after the other session's failure"
    );
    a.now = t + 13;
    assert!(claim_of(&mut a, &s[3]).is_ok(), "still paused 5 s after");
}

/// Found by mutation testing: the answer to a renewal that was on its way before a session's first
/// failure, coming in the same second, is no answer since that failure: the session's next failure is
/// still taken for the site's outage.
#[test]
fn an_answer_of_the_same_second_as_a_sessions_first_failure_does_not_make_it_its_own() {
    let mut a = Filter::ready(config(serde_json::json!({"callout_timeout": "30s"})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    let (other, _) = log_in(&mut a, Some("rt-2"));
    a.now = NOW + 3600 + 1;
    let early = claim_of(&mut a, &other).unwrap();
    fails(&mut a, &jar);
    let new_token = mint(&refreshed_claims(a.now));
    let body = token_body(Some(&new_token), None);
    forward(a.reply(Box::new(Pending::Refresh(early)), Some((200, &body))));
    assert!(!a.state.renewals_failing);
    a.now += 5;
    fails(&mut a, &jar);
    assert!(a.state.renewals_failing && a.state.renewals_paused(a.now));
}

/// Found by mutation testing: a renewed token capped earlier than the one it renews (at the end of the
/// IdP's own session), expired by then, is said to be that, not the clocks.
#[test]
fn a_renewal_capped_before_the_token_it_renews_ends_the_session_saying_so() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    a.now = NOW + 3600;
    let mut capped = refreshed_claims(a.now);
    capped["exp"] = (NOW + 3600 - 1).into();
    let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
    let body = token_body(Some(&mint(&capped)), Some("rt-2"));
    let why = respond(a.reply(pending, Some((200, &body))))
        .detail
        .unwrap_or_default();
    assert!(why.contains("without extending it"), "{why}");
}

/// Found by mutation testing: a renewal that extends the token, by as little as a second, is no
/// renewal that did not: the session renews within the margin again, as any.
#[test]
fn a_renewal_that_extends_the_token_by_a_second_is_not_marked() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (mut jar, _) = due(&mut a, &mut b);
    let mut later = refreshed_claims(a.now);
    later["exp"] = (NOW + 3600 + 1).into();
    let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
    let body = token_body(Some(&mint(&later)), Some("rt-2"));
    let f = forward(a.reply(pending, Some((200, &body))));
    jar.apply(f.set_cookies.iter().map(String::as_str));
    assert!(!a.open_session(&jar).renew_at_expiry);
}

/// Found by mutation testing: the probe's claim ends the others' wait (the session that waited is the
/// one asking): when another worker's shared pause then ends sooner (its probe met the outage at once),
/// the session that met the outage here asks again 5 s after its failure, not 10.
#[test]
fn once_another_session_probes_the_session_that_met_the_outage_waits_five_seconds() {
    let (mut a, s) = outage_with(2);
    let t0 = a.now;
    a.now = t0 + 2;
    assert!(claim_of(&mut a, &s[1]).is_err());
    a.now = t0 + 6;
    let _probe = claim_of(&mut a, &s[1]).expect("the probe");
    workers::take_pause(&mut a.state, &(t0 + 7).to_le_bytes(), Some(1), a.now);
    a.now = t0 + 8;
    assert!(claim_of(&mut a, &s[0]).is_ok(), "held past 5 s");
}

/// Found by a flaky black-box test (`faults.rs`, one user the IdP fails to renew): that session's first
/// failure on another worker, just after the IdP renewed another session here, paused both workers; when
/// that pause ended its renewal here took the probe, failed again, and paused them all once more (14 s of
/// `503`s for everybody instead of 10). A session whose failures are its own probes for nobody: another's
/// renewal does, and the IdP answering it ends the pause.
#[test]
fn a_session_failing_alone_does_not_probe_for_the_others() {
    let (mut a, s, t) = own_failure(3);
    assert_eq!(t, NOW + 3600 + 1 + 6);
    // Its first failure on the other worker: a pause shared with this one.
    oidc_filter::workers::take_pause(&mut a.state, &(t + 5).to_le_bytes(), Some(1), t);
    a.now = t + 5;
    let r = respond(claim_of(&mut a, &s[0]).unwrap_err());
    assert_eq!(r.status, 503, "{r:?}");
    renews(&mut a, &s[2]);
    // The IdP answered: the session asks again (and its failure pauses nobody).
    fails(&mut a, &s[0]);
    assert!(!a.state.renewals_failing && !a.state.renewals_paused(a.now));
}

/// Review of the fix above: a session failing alone, held while the site's renewals fail, is no other
/// session waiting to probe: the session that met the outage asks again when the pause ends (5 s), not
/// after 10 s as while another's renewal waits.
#[test]
fn a_session_failing_alone_held_is_not_another_waiting_to_probe() {
    let (mut a, s, t) = own_failure(3);
    a.now = t + 11;
    fails(&mut a, &s[2]);
    a.now = t + 13;
    assert!(claim_of(&mut a, &s[0]).is_err());
    a.now = t + 16;
    assert!(claim_of(&mut a, &s[2]).is_ok(), "held past the pause");
}

/// Two workers (`callout_timeout` 30 s) and two expired sessions, X and Y; on worker b, X's renewal
/// failed at the time returned: the pause b shares, naming X, and worker a, which has not taken it in.
fn failed_on_the_other_worker() -> (Filter, Jar, Jar, [u8; 16], u64) {
    let cfg = || config(serde_json::json!({"callout_timeout": "30s"}));
    let mut a = Filter::ready(cfg());
    let mut b = Filter::ready(cfg());
    let (x, _) = log_in(&mut a, Some("rt-x"));
    let (y, _) = log_in(&mut a, Some("rt-y"));
    let t = NOW + 3600 + 1;
    b.now = t;
    fails(&mut b, &x);
    let shared = workers::pause_to_share(&b.state, (0, false), false, || None).unwrap();
    (a, x, y, shared, t)
}

/// A session's failure on another worker, taken in with that worker's pause, counts as one here
/// (`State::record_outage`, found by `pause_schedules.rs`): it leaves the probe to a session that
/// waited out the pause. Taken in after a later failure of its own here, it does not shorten the wait
/// that one began.
#[test]
fn a_failure_on_another_worker_taken_in_with_its_pause_holds_the_session_here_too() {
    let (mut a, x, y, shared, t) = failed_on_the_other_worker();
    // Worker a takes it in; Y waits out the pause there; when it ends, X does not probe, Y does.
    a.now = t + 1;
    workers::take_pause(&mut a.state, &shared, Some(1), a.now);
    assert!(claim_of(&mut a, &y).is_err());
    a.now = t + 5;
    assert!(
        claim_of(&mut a, &x).is_err(),
        "X probed on the other worker"
    );
    assert!(claim_of(&mut a, &y).is_ok());
    // Taken in after X's own later failure here: X's wait runs from that one.
    let mut a = Filter::ready(config(serde_json::json!({"callout_timeout": "30s"})));
    a.now = t + 3;
    fails(&mut a, &x);
    assert!(claim_of(&mut a, &y).is_err());
    a.now = t + 4;
    workers::take_pause(&mut a.state, &shared, Some(1), a.now);
    a.now = t + 12;
    assert!(
        claim_of(&mut a, &x).is_err(),
        "X's wait counted from its failure on the other worker"
    );
}

/// Found by mutation testing: a session's failure on another worker, taken in with its pause here, is
/// dated by when it failed, not by when this worker took it in: its wait here ends as it does there.
#[test]
fn a_failure_taken_in_from_another_worker_is_waited_from_when_it_failed() {
    let (mut a, x, _, shared, t) = failed_on_the_other_worker();
    a.now = t + 4;
    workers::take_pause(&mut a.state, &shared, Some(1), a.now);
    a.now = t + 6;
    assert!(
        claim_of(&mut a, &x).is_ok(),
        "held for 5 s from when the pause was taken in"
    );
}

/// Found by mutation testing: a session's failures are its own for five minutes from the last of them
/// (`OWN_REPEAT`), no longer: in an outage that begins later, it takes the probe like any other session.
/// Held to the end of the outage instead, it left renewals paused for as long as it was the only one
/// asking.
#[test]
fn a_session_that_failed_alone_five_minutes_ago_probes_in_a_later_outage() {
    let (mut a, s, t) = own_failure(3);
    a.now = t + 290;
    fails(&mut a, &s[2]);
    assert!(a.state.renewals_failing);
    a.now = t + 299;
    assert!(claim_of(&mut a, &s[0]).is_err());
    a.now = t + 300;
    assert!(
        claim_of(&mut a, &s[0]).is_ok(),
        "still held as failing alone"
    );
}

/// Found by mutation testing: an answer in the same second as a session's first failure does not make
/// its failures its own (as `an_answer_of_the_same_second_as_a_sessions_first_failure_does_not_make_it_its_own`
/// for the pause): that session, which met the outage, probes when the pause ends.
#[test]
fn a_session_whose_first_failure_came_with_an_answer_probes_when_the_pause_ends() {
    let mut a = Filter::ready(config(serde_json::json!({"callout_timeout": "30s"})));
    let (x, _) = log_in(&mut a, Some("rt-1"));
    let (y, _) = log_in(&mut a, Some("rt-2"));
    a.now = NOW + 3600 + 1;
    renews(&mut a, &y);
    fails(&mut a, &x);
    assert!(a.state.renewals_failing);
    a.now += 5;
    assert!(claim_of(&mut a, &x).is_ok(), "held as failing alone");
}

/// Found by mutation testing: a session held within 10 s (`OWN_WAIT`) of meeting the outage is no
/// other session waiting to probe, even 5 s after: the session that met the outage last asks again
/// when its pause ends (5 s), not after 10.
#[test]
fn a_session_held_within_ten_seconds_of_its_failure_is_not_another_waiting() {
    let (mut a, s) = outage_with(2);
    let t0 = a.now;
    a.now = t0 + 5;
    fails(&mut a, &s[1]);
    a.now = t0 + 7;
    assert!(claim_of(&mut a, &s[0]).is_err());
    a.now = t0 + 11;
    assert!(claim_of(&mut a, &s[1]).is_ok(), "waited 10 s");
}

/// Found by mutation testing: the pause a probe lengthens names no session: the session whose failure
/// made the pause before is not recorded again by every worker that takes it in.
#[test]
fn a_probes_pause_names_no_session() {
    let (mut a, s) = outage_with(2);
    a.now += 5;
    let before = (a.state.renewals_paused_until, a.state.renewals_failing);
    let _probe = claim_of(&mut a, &s[1]).expect("the probe");
    let shared = workers::pause_to_share(&a.state, before, false, || None).unwrap();
    assert_ne!(&shared[..8], &[0u8; 8]);
    assert_eq!(&shared[8..], &[0u8; 8]);
}

/// Found by mutation testing: the IdP's refusal of another user's refresh token (`invalid_grant`) is an
/// answer since a session's failures began, as a renewal is: that session's next failure is its own.
#[test]
fn a_refusal_of_another_user_makes_a_sessions_next_failure_its_own() {
    let (mut a, s) = outage_with(2);
    a.now += 6;
    let probe = claim_of(&mut a, &s[1]).expect("the probe");
    let body = br#"{"error":"invalid_grant"}"#;
    let r = respond(a.reply(Box::new(Pending::Refresh(probe)), Some((400, body))));
    assert_eq!(r.metric, Some(Metric::RefreshFailed), "{r:?}");
    fails(&mut a, &s[0]);
    assert!(!a.state.renewals_failing && !a.state.renewals_paused(a.now));
}

/// Found by a black-box test: `forward_token` changed to `access_token`, or `access_token_header` added,
/// while users were logged in: their sessions, sealed where no access token went on, hold none, and sent
/// the ID token up in its place (or left the header out) until they renewed, up to a token's life later.
/// Such a session renews at once; the IdP down, it is answered as expired (`503`), never with the ID token.
#[test]
fn a_session_without_the_access_token_a_new_configuration_forwards_renews_at_once() {
    {
        let extra = serde_json::json!({"forward_token": "access_token"});
        let mut before = Filter::ready(config(serde_json::json!({})));
        let (jar, _) = log_in(&mut before, Some("rt-1"));
        assert!(before.open_session(&jar).access_token.is_none(), "{extra}");
        let mut f = Filter::ready(config(extra.clone()));
        f.now = NOW + 5;
        let (c, pending) = call(f.request(&Req::api("/x").cookies(&jar)));
        assert_eq!(
            header(&c.headers, ":path"),
            Some("/oauth2/token"),
            "{extra}"
        );
        let r = respond(f.reply(pending, None));
        assert_eq!(r.status, 503, "{extra}: {r:?}");
        // Once the outage's pause is over, the IdP answers: the access token goes on.
        f.now = NOW + 20;
        let (_, pending) = call(f.request(&Req::api("/x").cookies(&jar)));
        let (step, _) = refreshed(&mut f, pending, "rt-2");
        assert_eq!(bearer(&forward(step)), "Bearer access-1");
    }
}

/// Found in review of the fix above, which first took `access_token_header` in too: an IdP may answer
/// without an access token for good (Azure AD B2C asked for no API scope), and then every request of
/// such a session renewed, and got `503` while the IdP was down though its ID token had most of its hour
/// left. With `access_token_header`, a session without an access token goes on with its ID token, the
/// header left out, until that expires.
#[test]
fn a_session_the_idp_gave_no_access_token_goes_on_without_the_header() {
    let mut f = Filter::ready(config(
        serde_json::json!({"access_token_header": "x-access-token"}),
    ));
    let login = start_login(&mut f, "?rd=/app");
    let (_, pending) = call(f.request(&login.callback("code-1", &Jar::default())));
    let body = serde_json::json!({
        "id_token": mint(&claims(Some(&login.nonce))),
        "token_type": "Bearer",
        "refresh_token": "rt-1",
        "scope": "openid",
    });
    let r = respond(f.reply(pending, Some((200, body.to_string().as_bytes()))));
    assert_eq!(r.status, 302, "{r:?}");
    let mut jar = Jar::default();
    jar.apply(set_cookies(&r));
    assert!(f.open_session(&jar).access_token.is_none());
    for dt in [5, 300, 1800] {
        f.now = NOW + dt;
        let fwd = forward(f.request(&Req::api("/x").cookies(&jar)));
        assert!(bearer(&fwd).starts_with("Bearer ey"), "{dt}");
        let identity = fwd.identity.as_ref().expect("identity headers");
        let found = identity.iter().find(|(n, _)| n == "x-access-token");
        assert!(found.is_none_or(|(_, v)| v.is_none()), "{dt}: {fwd:?}");
    }
}

/// Found in review: during a change to `forward_token: access_token`, a worker on the new configuration
/// adopted the renewal a worker still on the old one made without an access token, judged its expiry
/// as sealed, and sent the ID token up in the access token's place. It is judged as this configuration
/// reads it: expired, so the request is answered as one whose renewal came too late.
#[test]
fn an_adopted_renewal_without_the_access_token_now_forwarded_is_not_forwarded() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({"forward_token": "access_token"})));
    let (jar, _) = log_in(&mut a, Some("rt-1"));
    a.now = NOW + 3600 - 30;
    b.now = a.now;
    let job = refresh_job(b.request(&Req::api("/page").cookies(&jar)));
    let (_, pending) = call(a.request(&Req::api("/page").cookies(&jar)));
    let (step, new_id) = refreshed(&mut a, pending, "rt-2");
    forward(step);
    let lines = flow::renewed_cookies(&a.state, &sealed_in(&jar)).unwrap();
    let step = flow::adopt_renewal(&b.cfg, &mut b.state, job, &lines, b.now);
    if let Step::Forward(f) = &step {
        let bearer = f.authorization.as_ref().unwrap().expose().to_string();
        assert_ne!(
            bearer,
            format!("Bearer {new_id}"),
            "the ID token went up as the access token"
        );
    }
    // The new cookie, whose next request renews (an API client's `503`: try again).
    let r = respond(step);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(!set_cookies(&r).is_empty(), "{r:?}");
}

/// Found by a black-box test: after a change from `forward_token: access_token` back to the ID token, a
/// session sealed before it held the access token's expiry, later than its ID token's (kept from the
/// login): the expired ID token went up (jwt_authn answered `401 Jwt is expired`) and the session did
/// not renew until the access token's expiry. Where the ID token goes up, it is the token that expires.
#[test]
fn a_session_sealed_where_the_access_token_went_up_renews_when_its_id_token_expires() {
    let mut before = Filter::ready(config(serde_json::json!({"forward_token": "access_token"})));
    let (jar, id_token) = log_in_with(&mut before, Some("rt-1"), |nonce| {
        let mut c = claims(Some(nonce));
        c["exp"] = (NOW + 100).into();
        mint(&c)
    });
    // The access token (300 s) outlives the ID token (100 s).
    assert_eq!(before.open_session(&jar).token_expires_at, NOW + 300);
    for extra in [
        serde_json::json!({}),
        serde_json::json!({"access_token_header": "x-access-token"}),
    ] {
        let mut f = Filter::ready(config(extra.clone()));
        f.now = NOW + 20;
        let fwd = forward(f.request(&Req::api("/x").cookies(&jar)));
        assert_eq!(bearer(&fwd), format!("Bearer {id_token}"), "{extra}");
        // Due within the margin of the ID token's expiry (half its life: 50 s), not the access token's.
        f.now = NOW + 60;
        let (c, _) = call(f.request(&Req::api("/x").cookies(&jar)));
        assert_eq!(
            header(&c.headers, ":path"),
            Some("/oauth2/token"),
            "{extra}"
        );
    }
}

/// Found by a coverage-guided review (no native test reached it): a request that waited for another
/// worker's renewal, which failed (no answer from the IdP), goes up with the renewal another request on
/// its own worker made meanwhile, not with a `503` for a token that has expired.
#[test]
fn a_renewal_failed_elsewhere_forwards_a_renewal_made_here_meanwhile() {
    let mut a = Filter::ready(config(serde_json::json!({})));
    let mut b = Filter::ready(config(serde_json::json!({})));
    let (jar, _) = due(&mut a, &mut b);
    // The token has expired: nothing old to fall back on.
    a.now = NOW + 3600 + 10;
    b.now = a.now;
    let waiting = refresh_job(b.request(&Req::api("/page").cookies(&jar)));
    let now = b.now;
    // Without a renewal here, the failure elsewhere is an outage for the request that waited.
    let alone = refresh_job(b.request(&Req::api("/page").cookies(&jar)));
    let r = respond(flow::renewal_failed(&b.cfg, &mut b.state, alone, now));
    assert_eq!(r.status, 503, "{r:?}");
    // B renews the session itself meanwhile.
    let (_, pending) = call(b.request(&Req::api("/page").cookies(&jar)));
    let (step, new_token) = refreshed(&mut b, pending, "rt-2");
    forward(step);
    let fwd = forward(flow::renewal_failed(&b.cfg, &mut b.state, waiting, now));
    assert_eq!(bearer(&fwd), format!("Bearer {new_token}"));
    assert!(
        fwd.set_cookies
            .iter()
            .any(|c| c.starts_with("_oidc_session=") && !c.contains("Max-Age=0")),
        "the renewed cookie for the browser: {fwd:?}"
    );
}

/// Found by a coverage-guided review (every native test of it was a browser's): an API client's request
/// that renewed the session of a user a claim rule refuses gets the `403` in JSON, with the new cookie.
#[test]
fn an_api_clients_renewal_refused_by_a_claim_rule_is_a_json_403() {
    let cfg = || {
        config(serde_json::json!({
            "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
        }))
    };
    let mut a = Filter::ready(cfg());
    let mut b = Filter::ready(cfg());
    let (jar, _) = due(&mut a, &mut b);
    let (_, pending) = call(a.request(&Req::api("/admin/users").cookies(&jar)));
    let (step, _) = refreshed(&mut a, pending, "rt-2");
    let r = respond(step);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.metric, Some(Metric::RenewedForbidden));
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("_oidc_session=") && !c.contains("Max-Age=0")),
        "{r:?}"
    );
}
