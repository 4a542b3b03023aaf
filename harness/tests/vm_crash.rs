//! A worker's Wasm VM lost while serving. No bug of the filter's is known to do it (it never panics on
//! purpose, and bounds what could overflow V8's stack), but a deployment must not depend on that: a VM
//! that traps is gone, and with `failure_policy: FAIL_CLOSED` Envoy answers every later request on that
//! worker with 503 until the proxy restarts. The manifests (`failStrategy: FAIL_RELOAD`) and the local
//! Envoy config (`failure_policy: FAIL_RELOAD`) make Envoy build a new VM instead, for a later request:
//! at once, or after a backoff of 1 to 1.5 s when the lost VM was made less than that before. This test
//! puts a trap into the shipped module, in front of its request-headers callback, taken only by a
//! request with at least [`TRAP_AT`] headers, and checks what a user notices: the request that traps
//! and those before the new VM are answered by Envoy itself, never passed to the app; then the new VM
//! serves, and logged-in browsers stay logged in.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use harness::process::poll;
use harness::{Browser, Response, SiteSpec, Stack, StackSpec, sealed};
use serde_json::{Value, json};

const BACKCHANNEL: &str = "/oauth2/backchannel-logout";

/// Requests with this many headers or more trap (Envoy refuses more than 100).
const TRAP_AT: u32 = 60;

/// Whether the echo app answered `r` (it answers JSON describing the request it got).
fn from_app(r: &Response) -> bool {
    r.json().is_ok_and(|v| v.get("path").is_some())
}

/// A request of `b`'s as an API client sends it: the echo app answers JSON.
fn api(b: &Browser, url: &str) -> Response {
    b.get_with(url, &[("accept", "application/json")]).unwrap()
}

/// A request the filter must stop: an identity header of the client's own, no session. (Not a bearer
/// token: the filter lets that pass to jwt_authn, which refuses it whether or not the filter ran.)
fn forged(b: &Browser, url: &str) -> Response {
    b.get_with(
        url,
        &[
            ("accept", "application/json"),
            ("x-auth-request-email", "admin@example.com"),
        ],
    )
    .unwrap()
}

/// The filter's own answer to a request without a session: not RBAC's 403 for a request it let through,
/// nor the app's.
fn refused_by_the_filter(r: &Response) -> bool {
    r.status == 401 && r.body.contains(r#""error":"unauthenticated""#)
}

/// A stack of one site, `app` (its filter configuration patched with `filter`), on one worker, so that
/// every request meets the one VM that traps; ready, with when it was (its first VM was made before).
fn trapping_stack(name: &str, filter: Value) -> (Stack, Instant) {
    // Next to the stack's directory, which the stack empties when it starts.
    let dir = harness::target_dir().join(format!("e2e/{name}-module"));
    let module =
        harness::module::with_trap_file(&harness::wasm_path().unwrap(), TRAP_AT, &dir).unwrap();
    let stack = Stack::start(StackSpec {
        concurrency: 1,
        wasm: Some(module),
        ..StackSpec::new(name, vec![SiteSpec::new("app").filter(filter)])
    })
    .unwrap();
    let started = Instant::now();
    stack.wait_ready("app").unwrap();
    (stack, started)
}

/// A request that trips the trap: [`TRAP_AT`] headers of its own.
fn trap_headers() -> Vec<(String, String)> {
    (0..TRAP_AT)
        .map(|i| (format!("x-filler-{i}"), "1".to_string()))
        .collect()
}

#[test]
fn a_lost_vm_answers_closed_then_is_replaced_and_sessions_carry_on() {
    let (stack, started) =
        trapping_stack("vm_crash", json!({"backchannel_logout_path": BACKCHANNEL}));
    let s = stack.site("app").unwrap();
    let page = s.url("/reports");

    let bob = Browser::logged_in(&page, "bob").unwrap();
    let before = api(&bob, &page);
    assert_eq!(before.status, 200, "{}", before.body);
    let token = before.upstream_authorization().unwrap();
    let anonymous = Browser::new();
    let r = forged(&anonymous, &page);
    assert!(refused_by_the_filter(&r), "{} {}", r.status, r.body);
    // Carol logged out at the IdP, which told the filter (back-channel logout): her session is over,
    // and must stay over in a new VM.
    let carol = Browser::logged_in(&page, "carol").unwrap();
    assert_eq!(api(&carol, &page).status, 200);
    let confirmed = carol
        .end_idp_session(&stack.idp_url("/session/end"))
        .unwrap();
    assert!(confirmed.status < 400, "{}", confirmed.body);
    poll(Duration::from_secs(5), || {
        Ok((api(&carol, &page).status == 401).then_some(()))
    })
    .unwrap();
    let vms_before = stack.wasm_vm_stats().unwrap();
    let stat = |name: &str| stack.plugin_stat("app", name).unwrap();
    let many = trap_headers();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let trap = || {
        let trapped = bob.get_with(&page, &many).unwrap();
        assert!(
            trapped.status == 503 && !from_app(&trapped),
            "the request that trapped: {} {}",
            trapped.status,
            trapped.body
        );
    };
    // Envoy's log line for each trap (it writes its log out within a second).
    let traps_logged = |n: usize| {
        poll(Duration::from_secs(5), || {
            let log = stack.envoy_log()?;
            let found = log
                .matches("proxy_on_request_headers failed: Uncaught RuntimeError: unreachable")
                .count();
            Ok((found >= n).then_some(found))
        })
        .unwrap()
    };

    // Until a new VM serves, each request is answered 503 by Envoy itself or, once a new VM is there,
    // by the filter as before: nothing unchecked reaches the app, not a forgery, not the logged-in
    // browser without its token. Returns how many requests Envoy answered, when the first request the
    // new VM served was sent (Envoy made the VM while serving it), and when both were served again.
    let until_served = || {
        let lost = Instant::now();
        let mut closed = 0;
        let mut first_served: Option<Instant> = None;
        loop {
            let mut served = 0;
            for expected in [401, 200] {
                let sent = Instant::now();
                let r = if expected == 401 {
                    forged(&anonymous, &page)
                } else {
                    api(&bob, &page)
                };
                if r.status == 503 && !from_app(&r) {
                    closed += 1;
                    continue;
                }
                assert_eq!(r.status, expected, "{} {}", r.url, r.body);
                if expected == 401 {
                    assert!(refused_by_the_filter(&r), "{} {}", r.url, r.body);
                }
                if expected == 200 {
                    assert_eq!(r.upstream_authorization().unwrap(), token);
                }
                first_served.get_or_insert(sent);
                served += 1;
            }
            if served == 2 {
                return (closed, first_served.unwrap(), Instant::now());
            }
            assert!(
                lost.elapsed() < Duration::from_secs(10),
                "no new VM after {:?}",
                lost.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A VM lost after it has served a while: Envoy makes a new one for the very next request. (Its
    // backoff, 1 to 1.5 s, counts from when the lost VM was made, at Envoy's start.)
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(started.elapsed()));
    trap();
    let (closed, made, _) = until_served();
    assert_eq!(
        closed, 0,
        "requests answered by Envoy after a VM that had served 1.6 s was lost"
    );

    // A VM lost right after it was made (a request that kills every VM, sent again and again): Envoy
    // makes the next one 1 to 1.5 s after the one before, answering every request 503 meanwhile.
    trap();
    let (closed, made_again, served) = until_served();
    let interval = served.duration_since(made);
    eprintln!(
        "second trap: {closed} requests answered by Envoy; a new VM {interval:?} after the one before"
    );
    assert!(closed > 0, "no request met the lost VM");
    assert!(interval >= Duration::from_secs(1), "{interval:?}");
    assert!(
        // 1 to 1.5 s, with room for a loaded machine.
        made_again.duration_since(made) < Duration::from_millis(4000),
        "{:?}",
        made_again.duration_since(made)
    );
    assert_eq!(traps_logged(2), 2);
    assert_eq!(stat("vm_reload_success"), 2);
    assert!(stat("vm_reload_backoff") >= 1);
    assert!(
        stack.wasm_vm_stats().unwrap().created >= vms_before.created + 2,
        "Envoy made no new VMs (wasm.envoy.wasm.runtime.v8.created)"
    );
    // The lost VMs are let go: as many alive as before.
    poll(Duration::from_secs(5), || {
        Ok((stack.wasm_vm_stats()?.active == vms_before.active).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{} VMs alive before, {} now: {e:#}",
            vms_before.active,
            stack.wasm_vm_stats().unwrap().active
        )
    });

    let ended = api(&carol, &page);
    assert_eq!(
        ended.status, 401,
        "a session logged out before: {}",
        ended.body
    );

    // The new VM: bob's session carries on with the same token; a visitor is sent to log in; a new
    // login completes.
    let after = api(&bob, &page);
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.upstream_authorization().unwrap(), token);
    let visitor = anonymous.get(&page).unwrap();
    assert_eq!(visitor.status, 302, "{}", visitor.body);
    assert!(visitor.location().unwrap().contains("/login"));
    Browser::logged_in(&page, "alice").unwrap();
}

#[test]
fn a_refresh_lost_with_its_vm_is_made_again_once_its_claim_lapses() {
    // A renewal's claim lapses after three times the callout timeout and 2 s: 8 s here.
    let (stack, _) = trapping_stack("vm_crash_refresh", json!({"callout_timeout": "2s"}));
    let s = stack.site("app").unwrap();
    let page = s.url("/reports");
    let dave = Browser::logged_in(&page, "dave").unwrap();
    let old_token = api(&dave, &page).upstream_authorization().unwrap();
    let mut session = sealed::open_session(&sealed::session_cookies(&dave, "localhost")).unwrap();
    session.token_expires_at = harness::unix_now() - 1;
    let expired = sealed::seal(&session).unwrap();
    let with_expired = || {
        Browser::new()
            .get_with(
                &page,
                &[("cookie", expired.as_str()), ("accept", "application/json")],
            )
            .unwrap()
    };

    // The VM is lost while a request of the expired session waits for its refresh at the IdP, holding
    // the session's renewal claim (in Envoy's shared data, which outlives the VM).
    let slow = stack.idp_proxy().fault(harness::Mode::delay_for(
        "/token",
        Duration::from_millis(1500),
    ));
    let claimed = Instant::now();
    let (in_flight, waited_for) = std::thread::scope(|scope| {
        // Its answer, if any within 2.5 s (status and body), and how long it waited.
        let waiting = scope.spawn(|| {
            let sent = Instant::now();
            let answer = harness::local_agent(Duration::from_millis(2500))
                .get(&page)
                .header("cookie", expired.as_str())
                .header("accept", "application/json")
                .call()
                .ok()
                .map(|mut r| {
                    let status = r.status().as_u16();
                    (status, r.body_mut().read_to_string().unwrap_or_default())
                });
            (answer, sent.elapsed())
        });
        poll(Duration::from_secs(5), || {
            Ok((stack.idp_cluster_stat("upstream_rq_active")? > 0).then_some(()))
        })
        .unwrap();
        let many = trap_headers();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let trapped = dave.get_with(&page, &many).unwrap();
        assert!(trapped.status == 503 && !from_app(&trapped));
        waiting.join().unwrap()
    });
    drop(slow);
    // Nothing of the filter's is left to answer it, and Envoy keeps it (until its stream idle timeout,
    // 5 minutes by default): the client gives up.
    assert!(
        in_flight.is_none() && waited_for >= Duration::from_millis(2400),
        "the request whose refresh was in flight: {in_flight:?} after {waited_for:?}"
    );

    // The new VM finds the session claimed by a request that no longer exists: its requests wait for
    // the claim to lapse (until 8 s after it was made, counted in whole seconds) and are answered 503
    // with Retry-After, the cookie left alone; then one renews the session.
    let mut waited = Vec::new();
    let renewed = loop {
        let started = Instant::now();
        let r = with_expired();
        if r.status == 200 {
            break r;
        }
        assert!(
            r.status == 503 && r.header("retry-after").is_some() && !from_app(&r),
            "{} {:?} {}",
            r.status,
            r.header("retry-after"),
            r.body
        );
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        waited.push(started.elapsed());
        assert!(
            claimed.elapsed() < Duration::from_secs(20),
            "not renewed after {:?}: {waited:?}",
            claimed.elapsed()
        );
    };
    let renewed_after = claimed.elapsed();
    eprintln!(
        "renewed {renewed_after:?} after the lost request claimed it; waits before: {waited:?}"
    );
    assert!(!waited.is_empty(), "the claim was not waited for");
    assert!(
        renewed_after >= Duration::from_secs(7) && renewed_after < Duration::from_secs(11),
        "{renewed_after:?}"
    );
    let token = renewed.upstream_authorization().unwrap();
    assert_ne!(token, old_token, "not a new token");
    assert!(
        renewed
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("_oidc_session=") && !c.starts_with("_oidc_session=;")),
        "no renewed cookie: {:?}",
        renewed.set_cookies()
    );
    assert_eq!(stack.plugin_stat("app", "vm_reload_success").unwrap(), 1);
}
