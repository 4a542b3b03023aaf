//! The configuration lifecycle in a running gateway: the filter delivered through ECDS, as istiod
//! delivers a `WasmPlugin`, and its `pluginConfig` edited while browsers are logged in, logging in
//! and waiting on the IdP. Envoy then builds the new filter configuration in the same Wasm VM (same
//! VM configuration and code), a second root context next to the old one, which keeps serving the
//! streams that began under it and is let go once they end.
//!
//! Each site is its own VM (two workers). A change is a new ECDS file moved over the old one
//! ([`Stack::update_filter_config`]); Envoy's `extension_config_discovery` counters say whether it
//! was applied (`config_reload`) or refused (`config_fail`).
//!
//! An image upgrade (the `WasmPlugin`'s tag bumped) is the same configuration with other code
//! ([`Stack::update_filter_module`], a module with a release tag of its own): Envoy builds new VMs
//! for it, one per thread, next to the old ones (`wasm.envoy.wasm.runtime.v8.created`).

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use harness::browser::{Form, HTML_ACCEPT, forms, query_param};
use harness::idp_hold;
use harness::process::poll;
use harness::{Browser, Mode, Response, SiteSpec, Stack, StackSpec, merge_json, sealed, unix_now};
use oidc_filter::session::{self, Keys};
use serde_json::{Value, json};

/// Claim rules and identity headers change under a logged-in browser.
const RULES: &str = "rules";
/// A login spans a change.
const LOGIN: &str = "login";
/// An invalid change is refused.
const GUARD: &str = "guard";
/// Cookie key rotation through `pluginConfig`.
const KEYS: &str = "keys";
/// Requests in flight across a change, the counters, a slow IdP during a change.
const INFLIGHT: &str = "inflight";
/// Back-channel logouts across a change.
const REVOKE: &str = "revoke";
/// Image upgrades (a new module under the same configuration and `vm_id`): a session across one, and
/// the tests that hold the IdP exclusively (a slow or absent IdP, the counters, a refresh).
const UPGRADE: &str = "upgrade";
/// A login spans an image upgrade.
const UPGRADE_LOGIN: &str = "upgrade-login";
/// Back-channel logouts across an image upgrade.
const UPGRADE_REVOKE: &str = "upgrade-revoke";
const BACKCHANNEL: &str = "/oauth2/backchannel-logout";

const HOST: &str = "localhost";
const COOKIE: &str = "_oidc_session";
/// A second cookie key (base64url of 32 bytes), for the rotation.
const KEY_B: &str = "bGlmZWN5Y2xlLXJvdGF0aW9uLWtleS1iLTAwMDAwMDA";
/// 16 bytes: refused (`cookie_keys` needs at least 32).
const SHORT_KEY: &str = "c2hvcnQta2V5LTE2Ynl0ZQ";
/// The token endpoint's callout timeout on [`INFLIGHT`].
const CALLOUT_TIMEOUT: Duration = Duration::from_secs(4);

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let t0 = Instant::now();
        let ecds = |s: SiteSpec| SiteSpec { ecds: true, ..s };
        let sites = vec![
            ecds(SiteSpec::new(RULES)),
            ecds(SiteSpec::new(LOGIN)),
            ecds(SiteSpec::new(GUARD)),
            ecds(SiteSpec::new(KEYS).filter(json!({
                "cookie_keys_env": null,
                "cookie_keys": [harness::DEFAULT_COOKIE_KEYS],
            }))),
            ecds(SiteSpec::new(INFLIGHT).filter(json!({"callout_timeout": "4s"}))),
            ecds(SiteSpec::new(REVOKE).filter(json!({"backchannel_logout_path": BACKCHANNEL}))),
            // The IdP rotates this client's refresh tokens: a second refresh of one session, by
            // either VM, would end that session.
            ecds(
                SiteSpec::new(UPGRADE)
                    .filter(json!({"callout_timeout": "4s"}))
                    .idp_client(json!({"rotate_refresh_token": true})),
            ),
            ecds(SiteSpec::new(UPGRADE_LOGIN)),
            ecds(
                SiteSpec::new(UPGRADE_REVOKE)
                    .filter(json!({"backchannel_logout_path": BACKCHANNEL})),
            ),
        ];
        let stack = Stack::start(StackSpec::new("lifecycle", sites)).unwrap();
        for s in [
            RULES,
            LOGIN,
            GUARD,
            KEYS,
            INFLIGHT,
            REVOKE,
            UPGRADE,
            UPGRADE_LOGIN,
            UPGRADE_REVOKE,
        ] {
            stack.wait_ready(s).unwrap();
        }
        eprintln!("stack up in {:?}", t0.elapsed());
        stack
    })
}

/// Puts the IdP's proxy in `mode` until dropped, then back to forwarding.
struct Fault;

impl Fault {
    fn set(mode: Mode) -> Fault {
        stack().idp_proxy().set_mode(mode);
        // Switching closes the proxy's connections: wait until Envoy has seen them close, so that no
        // callout meets a pooled connection that is already gone (a 503 of its own).
        let active = format!(
            "cluster.{}.upstream_cx_active",
            harness::envoy::cluster_name(stack().issuer()).unwrap()
        );
        poll(Duration::from_secs(5), || {
            Ok((stack().envoy_stats()?.get(&active).copied().unwrap_or(0) == 0).then_some(()))
        })
        .unwrap();
        Fault
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        stack().idp_proxy().set_mode(Mode::Forward);
    }
}

fn url(site: &str, path: &str) -> String {
    stack().site(site).unwrap().url(path)
}

fn stat(name: &str) -> u64 {
    stack().filter_stat(name).unwrap()
}

/// The site's configuration at start with `patch` merged in.
fn config(site: &str, patch: Value) -> Value {
    let mut c = stack().site(site).unwrap().filter_config.clone();
    merge_json(&mut c, &patch);
    c
}

/// What Envoy made of an ECDS update.
#[derive(Debug, PartialEq, Eq)]
enum Update {
    Applied,
    Rejected,
}

/// Gives `site` the configuration `config` and waits until Envoy has applied or refused it.
fn change(site: &str, config: Value) -> Update {
    let before = ecds_counts(site);
    stack().update_filter_config(site, config).unwrap();
    applied_or_refused(site, before, "update")
}

/// `site`'s ECDS updates applied and refused so far.
fn ecds_counts(site: &str) -> (u64, u64) {
    let s = stack();
    (
        s.ecds_stat(site, "config_reload").unwrap(),
        s.ecds_stat(site, "config_fail").unwrap(),
    )
}

/// Waits until Envoy has applied or refused the ECDS update of `site` written after it counted
/// `before` ([`ecds_counts`]).
fn applied_or_refused(site: &str, (reload, fail): (u64, u64), what: &str) -> Update {
    let s = stack();
    // A bound on the wait only: on a loaded machine Envoy has taken over 10 s to pick up the file.
    poll(Duration::from_secs(30), || {
        if s.ecds_stat(site, "config_fail")? > fail {
            return Ok(Some(Update::Rejected));
        }
        Ok((s.ecds_stat(site, "config_reload")? > reload).then_some(Update::Applied))
    })
    .unwrap_or_else(|e| panic!("{site}: envoy neither applied nor refused the {what}: {e:#}"))
}

/// Polls until `probe` holds for ten requests in a row, each on a new connection (so both workers
/// answer): the new configuration has reached every worker.
fn until_every_worker(what: &str, mut probe: impl FnMut() -> bool) {
    let mut in_a_row = 0;
    poll(Duration::from_secs(15), || {
        in_a_row = if probe() { in_a_row + 1 } else { 0 };
        Ok((in_a_row >= 10).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// Every worker's root context for the current configuration has its IdP's discovery and keys
/// (`/login` redirects rather than answering 503).
fn until_ready(site: &str) {
    until_every_worker(&format!("{site} ready"), || {
        Browser::new().get(&url(site, "/login")).unwrap().status == 302
    });
}

/// Follows `resp` through the IdP (its consent form too, if it shows one) up to its redirect back to
/// `site`'s callback, and returns that URL, not yet visited.
fn through_idp(b: &Browser, site: &str, mut resp: Response) -> String {
    let callback = url(site, "/oauth2/callback?");
    for _ in 0..20 {
        if let Some(next) = resp.location() {
            if next.starts_with(&callback) {
                return next;
            }
            resp = b.get(&next).unwrap();
            continue;
        }
        let consent = forms(&resp)
            .into_iter()
            .find(|f| {
                f.fields
                    .iter()
                    .any(|(n, v)| n == "prompt" && v == "consent")
            })
            .unwrap_or_else(|| panic!("stuck at the IdP: {} {}", resp.status, resp.body));
        resp = b.submit(&consent, &[]).unwrap();
    }
    panic!("no way back from the IdP");
}

/// Logs alice in through the IdP's login `form` (from [`at_login_form`]) and follows the callback: she
/// lands on `/after` at the app, and the login attempt's cookie is gone.
fn completes_login(b: &Browser, site: &str, form: &Form, login_cookie: &str) {
    let callback = log_in_at_idp(b, site, form, "alice");
    let done = b.follow(b.get(&callback).unwrap(), 10).unwrap();
    assert_eq!(done.response.status, 200, "{:?}", done.chain);
    assert!(done.response.url.ends_with("/after"), "{:?}", done.chain);
    assert!(
        done.response.body.contains("Hello, alice@example.com"),
        "{}",
        done.response.body
    );
    assert!(
        b.cookie(HOST, login_cookie).is_none(),
        "the login cookie stayed"
    );
}

/// Starts a login at `site` (to land on `/after`) and follows it to the IdP's login form; returns
/// the form and the name of the login attempt's cookie, which the browser now holds.
fn at_login_form(b: &Browser, site: &str) -> (Form, String) {
    let start = b.get(&url(site, "/login?rd=/after")).unwrap();
    assert_eq!(start.status, 302, "{}", start.body);
    let state = query_param(&start.location().unwrap(), "state").unwrap();
    let login_cookie = format!("{COOKIE}_login_{}", &state[..12]);
    assert!(
        b.cookie(HOST, &login_cookie).is_some(),
        "{:?}",
        start.set_cookies()
    );
    let page = b.follow(start, 10).unwrap().response;
    let form = forms(&page)
        .into_iter()
        .find(|f| f.fields.iter().any(|(n, v)| n == "prompt" && v == "login"))
        .unwrap_or_else(|| panic!("no login form: {}", page.body));
    (form, login_cookie)
}

/// Fills in the IdP's login form as `user` and follows the IdP up to its redirect back to `site`'s
/// callback; returns the callback URL, not yet visited.
fn log_in_at_idp(b: &Browser, site: &str, form: &Form, user: &str) -> String {
    let submitted = b
        .submit(form, &[("login", user), ("password", "any-password")])
        .unwrap();
    through_idp(b, site, submitted)
}

fn logged_in(site: &str, user: &str) -> Browser {
    Browser::logged_in(&url(site, "/"), user).unwrap()
}

fn session_cookies(b: &Browser) -> String {
    sealed::session_cookies(b, HOST)
}

/// A request with these cookies, as an API client: the echo app answers with JSON.
fn api(site: &str, path: &str, cookie: &str) -> Response {
    Browser::new()
        .get_with(
            &url(site, path),
            &[("cookie", cookie), ("accept", "application/json")],
        )
        .unwrap()
}

/// A navigation with these cookies, as a browser.
fn navigate(site: &str, path: &str, cookie: &str) -> Response {
    Browser::new()
        .get_with(
            &url(site, path),
            &[("cookie", cookie), ("accept", HTML_ACCEPT)],
        )
        .unwrap()
}

/// The headers the echo app received, if the request reached it.
fn upstream_headers(r: &Response) -> Option<Value> {
    Some(r.json().ok()?["headers"].clone())
}

/// The `authorization` the echo app received, if the request reached it.
fn bearer(r: &Response) -> Option<String> {
    upstream_headers(r)?["authorization"]
        .as_str()
        .map(str::to_string)
}

/// `Set-Cookie` lines that clear one of the session's cookies.
fn clears_session(r: &Response) -> bool {
    r.set_cookies().iter().any(|c| {
        let (name, rest) = c.split_once('=').unwrap_or((c, ""));
        session::is_session_cookie(COOKIE, name) && rest.starts_with(';')
    })
}

/// The session cookies a response sets, as a `Cookie` header value.
fn session_set_by(r: &Response) -> String {
    r.set_cookies()
        .iter()
        .filter_map(|c| c.split(';').next())
        .filter(|nv| {
            let (name, value) = nv.split_once('=').unwrap_or((nv, ""));
            session::is_session_cookie(COOKIE, name.trim()) && !value.is_empty()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An anonymous browser navigation is sent to log in, and an anonymous API call refused: never
/// through to the app.
fn assert_anonymous_kept_out(site: &str) {
    let nav = navigate(site, "/x", "");
    assert_eq!(nav.status, 302, "{}", nav.body);
    assert!(
        nav.location().unwrap().contains("/login?rd="),
        "{:?}",
        nav.location()
    );
    let call = api(site, "/x", "");
    assert_eq!(call.status, 401, "{}", call.body);
    assert!(bearer(&call).is_none());
}

#[test]
fn a_logged_in_browser_stays_logged_in_and_meets_the_new_rules_and_headers() {
    let _idp = idp_hold::shared();
    let b = logged_in(RULES, "alice");
    let cookie = session_cookies(&b);
    let before = api(RULES, "/admin/x", &cookie);
    assert_eq!(before.status, 200, "{}", before.body);
    let h = upstream_headers(&before).unwrap();
    assert_eq!(h["x-auth-request-email"], "alice@example.com", "{h}");

    // The operator adds a rule for /admin (alice is not carol) and trades the identity headers for one.
    // This site's lines (the others change their configurations too).
    let kept = || -> anyhow::Result<usize> {
        let log = stack().envoy_log()?;
        Ok(log
            .lines()
            .filter(|l| {
                l.contains("oidc-filter-rules: ")
                    && l.contains("new configuration, discovery document and")
            })
            .count())
    };
    let kept_before = kept().unwrap();
    let applied = change(
        RULES,
        config(
            RULES,
            json!({
                "claim_rules": [{"path_prefix": "/admin",
                                 "rule": {"claim": "preferred_username", "equals": "carol"}}],
                "identity_headers": {"x-user": "preferred_username"},
            }),
        ),
    );
    assert_eq!(applied, Update::Applied);
    until_every_worker("the new identity headers", || {
        upstream_headers(&api(RULES, "/x", &cookie)).is_some_and(|h| h["x-user"] == "alice")
    });
    // Each worker says that the change took, though it fetches nothing.
    poll(Duration::from_secs(5), || {
        Ok((kept()? >= kept_before + 2).then_some(()))
    })
    .unwrap();

    // Same cookie, same session: still logged in, on both workers, nothing cleared, no new login.
    for _ in 0..6 {
        let page = navigate(RULES, "/", &cookie);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.contains("Hello, alice@example.com"),
            "{}",
            page.body
        );
        assert!(!clears_session(&page), "{:?}", page.set_cookies());
        let h = upstream_headers(&api(RULES, "/x", &cookie)).unwrap();
        assert_eq!(h["x-user"], "alice", "{h}");
        assert!(h.get("x-auth-request-email").is_none(), "{h}");
        assert!(h["authorization"].as_str().unwrap().starts_with("Bearer "));
        // The new rule now answers for the same session: 403 naming her, the session kept.
        let admin = navigate(RULES, "/admin/x", &cookie);
        assert_eq!(admin.status, 403, "{}", admin.body);
        assert!(admin.body.contains("<b>alice</b>"), "{}", admin.body);
        assert!(!clears_session(&admin), "{:?}", admin.set_cookies());
        let admin = api(RULES, "/admin/x", &cookie);
        assert_eq!(admin.status, 403, "{}", admin.body);
        assert_eq!(admin.json().unwrap()["user"], "alice", "{}", admin.body);
    }
}

#[test]
fn a_login_started_before_a_change_completes_after_it() {
    let _idp = idp_hold::shared();
    let b = Browser::new();
    // At the IdP's login form when the configuration changes.
    let (form, login_cookie) = at_login_form(&b, LOGIN);

    let applied = change(
        LOGIN,
        config(
            LOGIN,
            json!({"identity_headers": {"x-user": "preferred_username"}}),
        ),
    );
    assert_eq!(applied, Update::Applied);
    until_ready(LOGIN);

    // The user types her name: the callback lands on the new configuration, and the login that the
    // old one began (its state, nonce, verifier, sealed in the login cookie) completes.
    completes_login(&b, LOGIN, &form, &login_cookie);
    // The session is the new configuration's: its header mapping.
    let h = upstream_headers(&api(LOGIN, "/x", &session_cookies(&b))).unwrap();
    assert_eq!(h["x-user"], "alice", "{h}");
}

#[test]
fn an_invalid_change_is_refused_and_the_old_configuration_keeps_serving() {
    let _idp = idp_hold::shared();
    let b = logged_in(GUARD, "alice");
    let cookie = session_cookies(&b);
    let rejected = (
        stack().ecds_stat(GUARD, "update_rejected").unwrap(),
        stack().ecds_stat(GUARD, "config_fail").unwrap(),
    );

    let bad = config(
        GUARD,
        json!({"cookie_keys_env": null, "cookie_keys": [SHORT_KEY]}),
    );
    assert_eq!(change(GUARD, bad), Update::Rejected);
    // The rejection shows in stats, and the log names the field.
    assert_eq!(
        stack().ecds_stat(GUARD, "update_rejected").unwrap(),
        rejected.0 + 1
    );
    assert_eq!(
        stack().ecds_stat(GUARD, "config_fail").unwrap(),
        rejected.1 + 1
    );
    stack()
        .wait_for_envoy_log(
            "oidc-filter-guard: oidc-filter: invalid configuration: field `cookie_keys`: cookie key 0 \
             has 16 bytes, at least 32 are required",
            Duration::from_secs(5),
        )
        .unwrap();

    // The old configuration serves on, on both workers: the session opens, strangers are kept out.
    for _ in 0..6 {
        let r = api(GUARD, "/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).unwrap().starts_with("Bearer "));
        assert_anonymous_kept_out(GUARD);
    }
    // New logins work.
    let other = logged_in(GUARD, "bob");
    assert_eq!(api(GUARD, "/x", &session_cookies(&other)).status, 200);

    // And the next valid change is applied (the refused one left nothing behind).
    let good = config(
        GUARD,
        json!({"identity_headers": {"x-user": "preferred_username"}}),
    );
    assert_eq!(change(GUARD, good), Update::Applied);
    until_every_worker("the change after the refused one", || {
        upstream_headers(&api(GUARD, "/x", &cookie)).is_some_and(|h| h["x-user"] == "alice")
    });
    until_ready(GUARD);
    assert_anonymous_kept_out(GUARD);
}

#[test]
fn cookie_keys_rotate_through_plugin_config() {
    let _idp = idp_hold::shared();
    let key_a = harness::DEFAULT_COOKIE_KEYS;
    let old = logged_in(KEYS, "alice");
    let old_cookie = session_cookies(&old);
    assert!(
        sealed::open_session(&old_cookie).is_ok(),
        "not sealed with key A"
    );

    // Step 1: prepend B. Old sessions open; new ones are sealed with B.
    assert_eq!(
        change(KEYS, config(KEYS, json!({"cookie_keys": [KEY_B, key_a]}))),
        Update::Applied
    );
    until_ready(KEYS);
    let new = logged_in(KEYS, "bob");
    let new_cookie = session_cookies(&new);
    let keys_b = Keys::new(&[b64url(KEY_B)]).unwrap();
    let sealed_b = session::join(&new_cookie, COOKIE).unwrap().unwrap();
    assert!(
        keys_b.open(COOKIE, &sealed_b).is_ok(),
        "the new session is not sealed with the new first key"
    );
    for _ in 0..6 {
        let r = api(KEYS, "/x", &old_cookie);
        assert_eq!(r.status, 200, "old session after prepending: {}", r.body);
        let r = api(KEYS, "/x", &new_cookie);
        assert_eq!(r.status, 200, "new session: {}", r.body);
    }

    // Step 2: drop A. The old session no longer opens: to the login (cookie cleared), never through,
    // never a 5xx. The new one carries on.
    assert_eq!(
        change(KEYS, config(KEYS, json!({"cookie_keys": [KEY_B]}))),
        Update::Applied
    );
    until_every_worker("key A dropped", || {
        api(KEYS, "/x", &old_cookie).status == 401
    });
    until_ready(KEYS);
    for _ in 0..6 {
        let nav = navigate(KEYS, "/x", &old_cookie);
        assert_eq!(nav.status, 302, "{}", nav.body);
        assert!(
            nav.location().unwrap().contains("/login?rd="),
            "{:?}",
            nav.location()
        );
        assert!(clears_session(&nav), "{:?}", nav.set_cookies());
        let r = api(KEYS, "/x", &old_cookie);
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(bearer(&r).is_none());
        let r = api(KEYS, "/x", &new_cookie);
        assert_eq!(r.status, 200, "new session after dropping A: {}", r.body);
    }
    // The browser with the dead session just logs in again (the IdP remembers it: no form).
    let again = old.login(&url(KEYS, "/"), "alice").unwrap();
    assert_eq!(again.response.status, 200, "{:?}", again.chain);
    assert_eq!(api(KEYS, "/x", &session_cookies(&old)).status, 200);
}

fn b64url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// `b`'s session re-sealed with its token already expired: the next request refreshes it with the
/// IdP's real refresh token.
fn expired_session(b: &Browser) -> String {
    let mut s = sealed::open_session(&session_cookies(b)).unwrap();
    s.token_expires_at = unix_now() - 1;
    sealed::seal(&s).unwrap()
}

/// Requests to the IdP (the token endpoint, for a refresh) Envoy has open now.
fn idp_requests_active() -> u64 {
    let name = format!(
        "cluster.{}.upstream_rq_active",
        harness::envoy::cluster_name(stack().issuer()).unwrap()
    );
    stack()
        .envoy_stats()
        .unwrap()
        .get(&name)
        .copied()
        .unwrap_or(0)
}

/// Sends an API request with `cookie` to `site` on another thread, and waits until its refresh is at
/// the IdP.
fn refresh_in_flight(site: &str, cookie: String) -> thread::JoinHandle<(Response, Duration)> {
    let target = url(site, "/x");
    let waiting = idp_requests_active();
    let h = thread::spawn(move || {
        let t = Instant::now();
        let r = Browser::new()
            .get_with(
                &target,
                &[("cookie", &cookie), ("accept", "application/json")],
            )
            .unwrap();
        (r, t.elapsed())
    });
    poll(Duration::from_secs(5), || {
        Ok((idp_requests_active() > waiting).then_some(()))
    })
    .unwrap_or_else(|e| panic!("the refresh never reached the IdP: {e:#}"));
    h
}

#[test]
fn a_refresh_waiting_on_the_idp_across_a_change_completes_and_new_requests_meet_the_new_config() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(INFLIGHT, "alice");
    let bob = logged_in(INFLIGHT, "bob");
    let expired = expired_session(&alice);
    let old_bearer = bearer(&api(INFLIGHT, "/x", &session_cookies(&alice))).unwrap();

    // The IdP answers, but slowly: the refresh is still waiting when the new configuration arrives.
    let slow = Fault::set(Mode::Delay(Duration::from_millis(2500)));
    let waiting = refresh_in_flight(INFLIGHT, expired);
    let applied = change(
        INFLIGHT,
        config(
            INFLIGHT,
            json!({"identity_headers": {"x-user": "preferred_username"}}),
        ),
    );
    assert_eq!(applied, Update::Applied);
    // A new request on the worker is served at once, under the new configuration.
    until_every_worker("the new configuration", || {
        upstream_headers(&api(INFLIGHT, "/x", &session_cookies(&bob)))
            .is_some_and(|h| h["x-user"] == "bob")
    });

    let (r, took) = waiting.join().unwrap();
    drop(slow);
    assert_eq!(r.status, 200, "the refresh across the change: {}", r.body);
    assert!(took < CALLOUT_TIMEOUT, "took {took:?}");
    let renewed = bearer(&r).unwrap();
    assert_ne!(renewed, old_bearer, "not refreshed");
    let cookie = session_set_by(&r);
    assert!(
        !cookie.is_empty(),
        "no renewed cookie: {:?}",
        r.set_cookies()
    );
    // The renewed session opens under the new configuration, without another refresh.
    let refreshes = stat("refreshes");
    let h = upstream_headers(&api(INFLIGHT, "/x", &cookie)).unwrap();
    assert_eq!(h["x-user"], "alice", "{h}");
    assert_eq!(h["authorization"].as_str(), Some(renewed.as_str()));
    assert_eq!(stat("refreshes"), refreshes);
    until_ready(INFLIGHT);
}

#[test]
fn a_refresh_the_idp_never_answers_across_a_change_fails_closed() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(INFLIGHT, "alice");
    let expired = expired_session(&alice);

    let hang = Fault::set(Mode::Hang);
    let waiting = refresh_in_flight(INFLIGHT, expired.clone());
    let applied = change(
        INFLIGHT,
        config(
            INFLIGHT,
            json!({"identity_headers": {"x-hung": "preferred_username"}}),
        ),
    );
    assert_eq!(applied, Update::Applied);
    let (r, took) = waiting.join().unwrap();
    // An outage, answered as one when the callout times out: 503 with Retry-After, the cookie kept,
    // nothing forwarded.
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(bearer(&r).is_none());
    assert!(!clears_session(&r), "{:?}", r.set_cookies());
    assert!(
        // Envoy's timer may fire a millisecond early (3.9989 s seen once): the slack e2e.rs and
        // faults.rs give theirs.
        took >= CALLOUT_TIMEOUT - Duration::from_millis(100)
            && took < CALLOUT_TIMEOUT + Duration::from_secs(3),
        "answered after {took:?}"
    );
    drop(hang);
    // With the IdP back, the same session renews under the new configuration.
    until_ready(INFLIGHT);
    let r = api(INFLIGHT, "/x", &expired);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_headers(&r).unwrap()["x-hung"], "alice");
}

#[test]
fn counters_keep_counting_across_a_change() {
    let _idp = idp_hold::exclusive();
    let b = logged_in(INFLIGHT, "alice");
    let cookie = session_cookies(&b);
    // The per-request counters reach Envoy on a root context's tick (1 s): let the login's settle.
    let settled = || {
        let mut last = stat("sessions_forwarded");
        poll(Duration::from_secs(5), || {
            thread::sleep(Duration::from_millis(1100));
            let now = stat("sessions_forwarded");
            let same = now == last;
            last = now;
            Ok(same.then_some(now))
        })
        .unwrap()
    };
    let before = settled();
    // Requests counted by the old root context just before it is replaced, and by the new one after.
    for _ in 0..20 {
        assert_eq!(api(INFLIGHT, "/x", &cookie).status, 200);
    }
    let applied = change(
        INFLIGHT,
        config(
            INFLIGHT,
            json!({"identity_headers": {"x-counted": "preferred_username"}}),
        ),
    );
    assert_eq!(applied, Update::Applied);
    // Every probe is forwarded, under one configuration or the other.
    let mut probes = 0;
    until_every_worker("the new configuration", || {
        probes += 1;
        upstream_headers(&api(INFLIGHT, "/x", &cookie)).is_some_and(|h| h["x-counted"] == "alice")
    });
    let mut sent = 20;
    for _ in 0..30 {
        assert_eq!(api(INFLIGHT, "/x", &cookie).status, 200);
        sent += 1;
    }
    let after = settled();
    // Every forwarded request counted once: none lost with the old root context, none twice.
    assert_eq!(after - before, sent + probes, "sessions_forwarded");
}

/// Found in review: a change threw away what each worker knew of its IdP. The new root context
/// started without the discovery document and keys and fetched them again, one after the other, and
/// until then answered every visitor without a session, and every login callback, 503 - though the
/// old configuration had them and the IdP (issuer, cluster) did not change. With an IdP
/// 1 s away, that is seconds of 503s after each edit of the `WasmPlugin`; with the IdP down at that
/// moment, until it is back, where the old configuration went on sending visitors to log in.
#[test]
fn a_change_keeps_visitors_and_logins_going_while_the_idp_is_slow() {
    let _idp = idp_hold::exclusive();
    until_ready(INFLIGHT);
    // A login back from the IdP's form just as the configuration changes.
    let b = Browser::new();
    let (form, _) = at_login_form(&b, INFLIGHT);
    let callback = log_in_at_idp(&b, INFLIGHT, &form, "carol");

    let slow = Fault::set(Mode::Delay(Duration::from_millis(1000)));
    let applied = change(
        INFLIGHT,
        config(
            INFLIGHT,
            json!({"identity_headers": {"x-slow": "preferred_username"}}),
        ),
    );
    assert_eq!(applied, Update::Applied);
    let t = Instant::now();
    // The code exchange meets the slow IdP too, well inside the callout timeout.
    let done = b.follow(b.get(&callback).unwrap(), 10).unwrap();
    let mut answers: Vec<(u16, Duration)> = Vec::new();
    while t.elapsed() < Duration::from_secs(3) {
        answers.push((navigate(INFLIGHT, "/x", "").status, t.elapsed()));
        thread::sleep(Duration::from_millis(100));
    }
    drop(slow);
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 302).collect();
    assert!(
        done.response.status == 200 && refused.is_empty(),
        "after the change: the login's callback went {:?} ({}); anonymous navigations got {} \
         answers other than the login redirect, of {} in 3 s: {refused:?}",
        done.chain,
        done.response.body.lines().next().unwrap_or_default(),
        refused.len(),
        answers.len(),
    );
}

/// Found in review: a session ended by back-channel logout opened again for up to a second after each
/// change. The new root context started with an empty list of ended sessions and read the shared one
/// only on its first tick, a second after it was configured; meanwhile the logged-out cookie was
/// forwarded upstream as logged in, on every worker.
#[test]
fn a_backchannel_logout_stays_in_force_across_a_change() {
    let _idp = idp_hold::shared();
    let b = logged_in(REVOKE, "erin");
    let cookie = session_cookies(&b);
    let other = logged_in(REVOKE, "erin");
    let other_cookie = session_cookies(&other);
    for _ in 0..6 {
        assert_eq!(api(REVOKE, "/x", &cookie).status, 200);
    }
    // Logged out at the IdP, which posts a logout token to the site.
    log_out_at_idp(&b, REVOKE, &cookie);

    let applied = change(
        REVOKE,
        config(
            REVOKE,
            json!({"identity_headers": {"x-user": "preferred_username"}}),
        ),
    );
    assert_eq!(applied, Update::Applied);
    let t = Instant::now();
    let mut let_in: Vec<Duration> = Vec::new();
    let mut new_config_seen = false;
    while t.elapsed() < Duration::from_millis(2500) {
        let r = api(REVOKE, "/x", &cookie);
        if r.status == 200 {
            assert!(bearer(&r).is_some(), "{}", r.body);
            let_in.push(t.elapsed());
        } else {
            assert_eq!(r.status, 401, "{}", r.body);
        }
        let h = upstream_headers(&api(REVOKE, "/x", &other_cookie)).unwrap();
        new_config_seen |= h["x-user"] == "erin";
    }
    assert!(new_config_seen, "the new configuration never served");
    assert!(
        let_in.is_empty(),
        "the logged-out session was forwarded to the app, with its token, {} times after the \
         change, from {:?} to {:?}",
        let_in.len(),
        let_in.first().unwrap(),
        let_in.last().unwrap()
    );
}

// Image upgrades. A platform team bumps the `WasmPlugin`'s image tag: istiod sends the same filter
// configuration and VM settings (the same `vm_id`) with other code. Envoy's VM key hashes the code, so
// it builds new VMs (one per thread) next to the old ones, which serve the requests that began under
// them and are let go once those end. A new VM starts from nothing: it fetches the IdP's discovery
// document and keys; it shares with the old one only Envoy's shared data, which Envoy keys by
// `vm_id` (the ended sessions, the renewal table).

/// The threads that run a site's filter, each with a VM of its own per module: Envoy's main thread and
/// the stack's two workers.
const THREADS: usize = 3;
/// How long the IdP takes to answer each request in the slow-IdP measurement: a remote IdP.
const REMOTE_IDP: Duration = Duration::from_millis(300);

/// Another release of the filter, new to Envoy: the shipped module with a release tag no earlier
/// upgrade used (same code, other bytes, so a VM key of its own).
fn new_release(site: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let tag = format!("{site}-r{}", NEXT.fetch_add(1, Ordering::Relaxed));
    harness::module::with_release_tag(
        &harness::wasm_path().unwrap(),
        &tag,
        &stack().dir().join("modules"),
    )
    .unwrap()
}

/// How many of `site`'s root contexts have loaded the IdP's discovery document from nothing, by the
/// log: one per thread of each new VM. (A root context for a new configuration in the same VM starts
/// from the documents of the one before and says so instead; a VM that is ready never logs it again.)
fn fresh_starts(site: &str) -> usize {
    let prefix = format!("{}: ", harness::envoy::ecds_name(site));
    stack()
        .envoy_log()
        .unwrap()
        .lines()
        .filter(|l| l.contains(&prefix) && l.ends_with(": discovery document loaded"))
        .count()
}

/// An image upgrade Envoy has applied.
struct Upgrade {
    site: &'static str,
    /// [`fresh_starts`] before it.
    fresh_before: usize,
    /// When the new ECDS version was written.
    written: Instant,
    /// When Envoy's `config_reload` counted it.
    applied: Instant,
}

/// Points `site`'s filter at `module` through ECDS, its configuration and `vm_id` unchanged; waits
/// until Envoy has applied or refused it, and returns which, with when the update was written and
/// when Envoy counted it.
fn swap_module(site: &str, module: &Path) -> (Update, Instant, Instant) {
    let before = ecds_counts(site);
    stack().update_filter_module(site, module).unwrap();
    let written = Instant::now();
    let update = applied_or_refused(site, before, "new module");
    (update, written, Instant::now())
}

/// Gives `site` a new release of the module, as istiod does when the image tag is bumped, and waits
/// until Envoy has applied it. Checks that Envoy built new VMs for it
/// (`wasm.envoy.wasm.runtime.v8.created`: at least one per thread).
fn upgrade(site: &'static str) -> Upgrade {
    let module = new_release(site);
    let fresh_before = fresh_starts(site);
    let created = stack().wasm_vm_stats().unwrap().created;
    let (update, written, applied) = swap_module(site, &module);
    assert_eq!(
        update,
        Update::Applied,
        "{site}: the new module was refused"
    );
    // The workers build theirs when Envoy hands them the new filter, just after it counted the update.
    poll(Duration::from_secs(15), || {
        Ok((stack().wasm_vm_stats()?.created >= created + THREADS as u64).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{site}: envoy applied the new module without new VMs: {created} VMs created before, \
             {} after: {e:#}",
            stack().wasm_vm_stats().unwrap().created
        )
    });
    Upgrade {
        site,
        fresh_before,
        written,
        applied,
    }
}

/// Waits until the new VM of every thread has loaded the IdP's discovery document (from then on the
/// new VMs take every new request, and the old ones only finish what they had), then until `/login`
/// redirects on every worker (the keys loaded too). Returns when.
fn until_new_vms_ready(up: &Upgrade) -> Instant {
    poll(Duration::from_secs(15), || {
        Ok((fresh_starts(up.site) >= up.fresh_before + THREADS).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{}: the new VMs never loaded the discovery document ({} of {THREADS} did): {e:#}",
            up.site,
            fresh_starts(up.site) - up.fresh_before
        )
    });
    until_ready(up.site);
    Instant::now()
}

/// A probe run on another thread again and again, until [`Probes::finish`].
struct Probes<T> {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: thread::JoinHandle<Vec<(Instant, T)>>,
}

impl<T: Send + 'static> Probes<T> {
    fn start(mut probe: impl FnMut() -> T + Send + 'static) -> Probes<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = probe();
                    out.push((Instant::now(), answer));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                out
            })
        };
        Probes {
            stop,
            answered,
            thread,
        }
    }

    /// Polls until the probe has answered `n` more times.
    fn until_more(&self, n: usize) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        poll(Duration::from_secs(10), || {
            Ok((self.answered.load(Ordering::Relaxed) >= target).then_some(()))
        })
        .unwrap_or_else(|e| panic!("the probe answered too slowly: {e:#}"));
    }

    /// Stops the probe; returns each answer with when it came.
    fn finish(self) -> Vec<(Instant, T)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// How many answers of each status.
fn by_status<'a>(statuses: impl Iterator<Item = &'a u16>) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for s in statuses {
        *out.entry(*s).or_insert(0) += 1;
    }
    out
}

/// What a logged-in API client and a logged-in browser got on one probe.
#[derive(Debug)]
struct SessionProbe {
    api: u16,
    forwarded_with_token: bool,
    page: u16,
    greeted: bool,
    cleared: bool,
}

fn probe_session(site: &str, cookie: &str) -> SessionProbe {
    let call = api(site, "/x", cookie);
    let page = navigate(site, "/", cookie);
    SessionProbe {
        api: call.status,
        forwarded_with_token: bearer(&call).is_some_and(|b| b.starts_with("Bearer ")),
        page: page.status,
        greeted: page.body.contains("Hello, alice@example.com"),
        cleared: clears_session(&call) || clears_session(&page),
    }
}

#[test]
fn an_image_upgrade_keeps_a_logged_in_browser_logged_in() {
    let _idp = idp_hold::shared();
    let b = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&b);

    // The browser goes on working while the gateway takes the new module: before, during, after. Each
    // probe on new connections, so both workers answer.
    let probes = {
        let cookie = cookie.clone();
        Probes::start(move || probe_session(UPGRADE, &cookie))
    };
    probes.until_more(5);
    let up = upgrade(UPGRADE);
    let ready = until_new_vms_ready(&up);
    probes.until_more(20);
    let answers = probes.finish();

    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, p)| {
            p.api != 200 || !p.forwarded_with_token || p.page != 200 || !p.greeted || p.cleared
        })
        .map(|(t, p)| (t.saturating_duration_since(up.written), p))
        .collect();
    let served_new = answers.iter().filter(|(t, _)| *t > ready).count();
    assert!(
        bad.is_empty(),
        "of {} probes across the upgrade, {} were not served as logged in (times since the new \
         module was written): API statuses {:?}, page statuses {:?}; first {:?}",
        answers.len(),
        bad.len(),
        by_status(bad.iter().map(|(_, p)| &p.api)),
        by_status(bad.iter().map(|(_, p)| &p.page)),
        bad.first()
    );
    assert!(
        served_new >= 20,
        "{served_new} probes after the new VMs were ready"
    );
    eprintln!(
        "upgrade: {} probes of a logged-in session across the upgrade, all 200 ({served_new} after \
         the new VMs were ready; applied {:?} after the new module was written)",
        answers.len(),
        up.applied - up.written
    );
}

#[test]
fn a_login_started_before_an_image_upgrade_completes_on_the_new_vm() {
    let _idp = idp_hold::shared();
    let b = Browser::new();
    // At the IdP's login form when the module changes: the old VM sealed the login's state, nonce and
    // verifier into the login cookie.
    let (form, login_cookie) = at_login_form(&b, UPGRADE_LOGIN);

    let up = upgrade(UPGRADE_LOGIN);
    until_new_vms_ready(&up);

    // Every new request now meets a new VM: the callback completes the login the old one began.
    completes_login(&b, UPGRADE_LOGIN, &form, &login_cookie);
    for _ in 0..6 {
        let r = api(UPGRADE_LOGIN, "/x", &session_cookies(&b));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).unwrap().starts_with("Bearer "));
    }
}

/// Logs `b` out at the IdP, which posts a logout token to the site; waits until every worker refuses
/// `cookie`.
fn log_out_at_idp(b: &Browser, site: &str, cookie: &str) {
    let confirmed = b.end_idp_session(&stack().idp_url("/session/end")).unwrap();
    assert!(confirmed.status < 400, "{}", confirmed.body);
    until_every_worker("the logout on every worker", || {
        api(site, "/x", cookie).status == 401
    });
}

#[test]
fn a_backchannel_logout_stays_in_force_across_an_image_upgrade() {
    let _idp = idp_hold::shared();
    let b = logged_in(UPGRADE_REVOKE, "erin");
    let cookie = session_cookies(&b);
    // Another session of hers, in another browser: not logged out.
    let other = logged_in(UPGRADE_REVOKE, "erin");
    let other_cookie = session_cookies(&other);
    log_out_at_idp(&b, UPGRADE_REVOKE, &cookie);

    // Both cookies, again and again, from before the new module until well after: the new VMs'
    // first requests are among these.
    let probes = {
        let cookie = cookie.clone();
        Probes::start(move || {
            let ended = api(UPGRADE_REVOKE, "/x", &cookie);
            let kept = api(UPGRADE_REVOKE, "/x", &other_cookie);
            (
                (
                    ended.status,
                    bearer(&ended).is_some(),
                    ended.header("retry-after").is_some(),
                ),
                (kept.status, bearer(&kept).is_some()),
            )
        })
    };
    probes.until_more(5);
    let up = upgrade(UPGRADE_REVOKE);
    let ready = until_new_vms_ready(&up);
    probes.until_more(20);
    let answers = probes.finish();

    let since = |t: &Instant| t.saturating_duration_since(up.written);
    // The ended session: never through. A 401 as before, or (while a new VM has no keys yet) a 503
    // with Retry-After, which forwards nothing either.
    let let_in: Vec<_> = answers
        .iter()
        .filter(|(_, ((status, fwd, retry), _))| {
            *fwd || !(*status == 401 || (*status == 503 && *retry))
        })
        .map(|(t, (ended, _))| (since(t), ended))
        .collect();
    assert!(
        let_in.is_empty(),
        "the logged-out session was answered otherwise than 401 (or 503 with Retry-After) {} times \
         of {} across the upgrade (time since the new module was written, (status, forwarded with \
         a token, Retry-After)): {:?}",
        let_in.len(),
        answers.len(),
        &let_in[..let_in.len().min(5)]
    );
    // The other session: served all along.
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, (_, (status, fwd)))| *status != 200 || !*fwd)
        .map(|(t, (_, kept))| (since(t), kept))
        .collect();
    assert!(
        refused.is_empty(),
        "her other session was refused {} times: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let served_new = answers.iter().filter(|(t, _)| *t > ready).count();
    assert!(
        served_new >= 20,
        "{served_new} probes after the new VMs were ready"
    );
    eprintln!(
        "upgrade-revoke: the ended session across the upgrade: {:?} of {} probes",
        by_status(answers.iter().map(|(_, ((s, _, _), _))| s)),
        answers.len()
    );
}

/// What one anonymous request got while the module changed.
#[derive(Debug)]
struct Anonymous {
    at: Instant,
    took: Duration,
    status: u16,
    location: Option<String>,
}

/// `r`, answered after `took`.
fn anonymous(r: &Response, took: Duration) -> Anonymous {
    Anonymous {
        at: Instant::now(),
        took,
        status: r.status,
        location: r.location(),
    }
}

/// The new VMs fetch the IdP's discovery document, then its keys, before they can send anyone to
/// log in; the old VMs had both, but a VM cannot lend another anything but shared data. Meanwhile a
/// new VM holds every anonymous navigation, `/login` and callback that needs them, and carries each
/// on once the keys are in: the user waits about two IdP round trips (measured here with an IdP
/// 300 ms away, every answer held that long) instead of meeting a `503`. Before this hold, about a
/// quarter of these requests got `503` with `Retry-After` (645 to 725 of about 2,700 in three runs).
#[test]
fn an_image_upgrade_holds_visitors_while_the_new_vm_fetches_from_the_idp() {
    let _idp = idp_hold::exclusive();
    until_ready(UPGRADE);
    let issuer = format!("{}/", stack().issuer());
    // A login back from the IdP's form, its callback not yet visited.
    let b = Browser::new();
    let (form, login_cookie) = at_login_form(&b, UPGRADE);
    let callback = log_in_at_idp(&b, UPGRADE, &form, "carol");

    let slow = Fault::set(Mode::Delay(REMOTE_IDP));
    // Two clients hammer `/login` (without Fetch Metadata: straight to the IdP), a third navigates
    // anonymously to a page, all across the upgrade, each request on a new connection.
    let probes: Vec<_> = ["/login", "/login", "/x"]
        .into_iter()
        .map(|path| {
            Probes::start(move || {
                let t = Instant::now();
                let r = if path == "/login" {
                    Browser::new().get(&url(UPGRADE, path)).unwrap()
                } else {
                    navigate(UPGRADE, path, "")
                };
                (path, anonymous(&r, t.elapsed()))
            })
        })
        .collect();
    for p in &probes {
        p.until_more(10);
    }
    let up = upgrade(UPGRADE);
    // The user's callback arrives right after the gateway took the new module.
    let t = Instant::now();
    let first = b.get(&callback).unwrap();
    let first_try = anonymous(&first, t.elapsed());
    let ready = until_new_vms_ready(&up);
    let done = b.follow(first, 10).unwrap();
    for p in &probes {
        p.until_more(20);
    }
    let answers: Vec<(&str, Anonymous)> = probes
        .into_iter()
        .flat_map(Probes::finish)
        .map(|(_, a)| a)
        .collect();
    drop(slow);

    let since = |t: Instant| t.saturating_duration_since(up.written);
    let expected = |path: &str, a: &Anonymous| match a.status {
        302 if path == "/login" => a.location.as_ref().is_some_and(|l| l.starts_with(&issuer)),
        302 => a
            .location
            .as_ref()
            .is_some_and(|l| l.contains("/login?rd=")),
        _ => false,
    };
    let unexpected: Vec<_> = answers
        .iter()
        .filter(|(p, a)| !expected(p, a))
        .map(|(p, a)| (p, a.status, since(a.at), &a.location))
        .collect();
    // Neither `/login` nor a navigation waits on the IdP once a VM has its documents: what took
    // longer than one IdP round trip was held by a new VM.
    let held: Vec<&Anonymous> = answers
        .iter()
        .filter(|(_, a)| a.took >= REMOTE_IDP)
        .map(|(_, a)| a)
        .collect();
    let longest = held.iter().map(|a| a.took).max().unwrap_or_default();
    let before = answers.iter().filter(|(_, a)| a.at < up.written).count();
    let of = |path: &str| {
        by_status(
            answers
                .iter()
                .filter(|(p, _)| *p == path)
                .map(|(_, a)| &a.status),
        )
    };
    eprintln!(
        "upgrade with the IdP {REMOTE_IDP:?} away: {} anonymous requests ({before} before the new \
         module): /login {:?}, navigations {:?}; {} held by a new VM, the longest {longest:?} \
         (new module applied after {:?}, new VMs ready after {:?}); the callback right after: {} \
         in {:?}, then: {:?}",
        answers.len(),
        of("/login"),
        of("/x"),
        held.len(),
        up.applied - up.written,
        ready - up.written,
        first_try.status,
        first_try.took,
        done.chain
    );
    // Nobody is turned away: the login redirect, every time.
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    // The new VMs did start without the documents, and held requests meanwhile, only while they
    // fetched them: about two IdP round trips.
    assert!(
        !held.is_empty(),
        "no request was held: the new VMs never waited"
    );
    assert!(
        held.iter().all(|a| a.at > up.written && a.at <= ready),
        "requests held outside the new VMs' start: {:?}",
        held.iter()
            .map(|a| (since(a.at), a.took))
            .collect::<Vec<_>>()
    );
    assert!(
        longest <= 4 * REMOTE_IDP + Duration::from_millis(800),
        "a request was held {longest:?}"
    );
    assert!(
        answers.iter().filter(|(_, a)| a.at > ready).count() >= 60,
        "too few answers after the new VMs were ready"
    );
    // The callback: handled at once by the old VM, or held by a new one until it has the keys;
    // either way the login completes at the first try, its login cookie spent.
    assert_eq!(first_try.status, 302, "{first_try:?}");
    assert!(
        first_try
            .location
            .as_ref()
            .is_some_and(|l| l.ends_with("/after")),
        "{first_try:?}"
    );
    assert!(b.cookie(HOST, &login_cookie).is_none(), "login cookie kept");
    assert_eq!(done.response.status, 200, "{:?}", done.chain);
    assert!(done.response.url.ends_with("/after"), "{:?}", done.chain);
    assert!(
        done.response.body.contains("Hello, carol@example.com"),
        "{}",
        done.response.body
    );
}

/// A new VM whose first fetch gets no answer holds a visitor no longer than that fetch may take
/// (`callout_timeout`, 4 s here) and a few seconds (the hold's own deadline is `callout_timeout` and
/// 2 s, counted in whole seconds and checked on the 1 s tick), then answers `503` with
/// `Retry-After`: fail closed, and never a request left hanging. It holds at most 128 requests per
/// VM: a crowd beyond that (600 at once, on two workers) is answered `503` at once rather than piling
/// up in the gateway. Once the IdP answers again, the next attempt lets logins through.
#[test]
fn an_image_upgrade_while_the_idp_hangs_holds_logins_no_longer_than_a_fetch_may_take() {
    const CROWD: usize = 600;
    let _idp = idp_hold::exclusive();
    until_ready(UPGRADE);
    let hang = Fault::set(Mode::Hang);
    let up = upgrade(UPGRADE);
    let answers = harness::at_once(CROWD, |_| {
        let t = Instant::now();
        let answer = Browser::new()
            .get(&url(UPGRADE, "/login"))
            .map(|login| {
                (
                    login.status,
                    login.header("retry-after").is_some(),
                    login.location(),
                )
            })
            .map_err(|e| format!("{e:#}"));
        (answer, t.elapsed())
    });
    drop(hang);
    let back = Instant::now();
    until_new_vms_ready(&up);
    let held = answers
        .iter()
        .filter(|(_, took)| *took >= Duration::from_secs(1))
        .count();
    let longest = answers.iter().map(|(_, took)| *took).max().unwrap();
    eprintln!(
        "upgrade with the IdP hanging: {CROWD} logins at once, {held} held (the longest \
         {longest:?}), the others answered at once; logins back {:?} after the IdP",
        back.elapsed()
    );
    // Fail closed: each a 503 with Retry-After, none sent to the IdP.
    let other: Vec<_> = answers
        .iter()
        .filter(|(answer, _)| {
            !matches!(answer, Ok((status, retry, location))
                if *status == 503 && *retry && location.is_none())
        })
        .collect();
    assert!(
        other.is_empty(),
        "{} of {CROWD} otherwise, e.g. {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    // Held while the first fetch was under way, never beyond `callout_timeout` and the deadline's
    // slack, and never more than 128 per worker.
    assert!(held > 0, "none held");
    assert!(held <= 2 * 128, "{held} held");
    assert!(
        longest <= CALLOUT_TIMEOUT + Duration::from_secs(4),
        "held {longest:?}"
    );
}

/// The same start with the IdP unreachable at that moment: the old VMs went on sending visitors to
/// log in (they had the documents); the new ones answer `503` with `Retry-After` until the IdP is
/// back and their next attempt (backoff from 1 s) succeeds. Logged-in sessions are not affected.
#[test]
fn an_image_upgrade_while_the_idp_is_down_fails_logins_closed_until_it_is_back() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&alice);
    until_ready(UPGRADE);
    // jwt_authn (after the filter) fetches the IdP's keys on a worker's first request and keeps them
    // for 300 s: let every worker have them before the IdP goes.
    until_every_worker("jwt_authn has the keys", || {
        api(UPGRADE, "/x", &cookie).status == 200
    });

    let down = Fault::set(Mode::Refuse);
    let up = upgrade(UPGRADE);
    // The new VMs have tried the IdP on every thread and failed.
    let tried = || {
        let log = stack().envoy_log().unwrap();
        let prefix = format!("{}: ", harness::envoy::ecds_name(UPGRADE));
        log.lines()
            .filter(|l| l.contains(&prefix) && l.contains("fetching the discovery document"))
            .count()
    };
    let tried_before = tried();
    poll(Duration::from_secs(5), || {
        Ok((tried() >= tried_before + THREADS).then_some(()))
    })
    .unwrap();
    for _ in 0..10 {
        let login = Browser::new().get(&url(UPGRADE, "/login")).unwrap();
        assert_eq!(login.status, 503, "{}", login.body);
        assert!(login.header("retry-after").is_some(), "{:?}", login.headers);
        let r = api(UPGRADE, "/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).is_some());
    }
    drop(down);
    let back = Instant::now();
    until_new_vms_ready(&up);
    let (recovered, outage) = (back.elapsed(), up.written.elapsed());
    eprintln!(
        "upgrade with the IdP down: logins refused until {recovered:?} after the IdP was back, \
         {outage:?} after the new module was written"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "logins came back {recovered:?} after the IdP"
    );
}

/// A broken image (here the module cut short, as an interrupted copy might leave it): Envoy refuses
/// the update, and the old module goes on serving, logged-in browsers and logins alike; the next
/// good release is taken.
#[test]
fn a_broken_image_is_refused_and_the_old_module_keeps_serving() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&alice);
    until_ready(UPGRADE);
    let wasm = fs::read(harness::wasm_path().unwrap()).unwrap();
    let broken = stack().dir().join("modules/oidc_filter.broken.wasm");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(&broken, &wasm[..wasm.len() / 2]).unwrap();
    let fresh_before = fresh_starts(UPGRADE);

    let (update, _, _) = swap_module(UPGRADE, &broken);
    assert_eq!(update, Update::Rejected, "envoy took a broken module");
    // The gateway's log says why.
    stack()
        .wait_for_envoy_log(
            &format!(
                "config update rejected: Unable to create Wasm plugin {}",
                harness::envoy::ecds_name(UPGRADE)
            ),
            Duration::from_secs(5),
        )
        .unwrap();
    for _ in 0..10 {
        let r = api(UPGRADE, "/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).is_some());
        let login = Browser::new().get(&url(UPGRADE, "/login")).unwrap();
        assert_eq!(login.status, 302, "{}", login.body);
    }
    assert_eq!(fresh_starts(UPGRADE), fresh_before, "a VM started anew");

    let up = upgrade(UPGRADE);
    until_new_vms_ready(&up);
    assert_eq!(api(UPGRADE, "/x", &cookie).status, 200);
}

/// Polls until the filter's `sessions_forwarded` has stood still for longer than a tick (the
/// per-request counters reach Envoy on a root context's 1 s tick); returns it.
fn forwarded_settled() -> u64 {
    harness::process::settled(
        Duration::from_secs(10),
        Duration::from_millis(1300),
        || Ok(stat("sessions_forwarded")),
        |n| *n,
    )
    .unwrap()
}

/// A VM hands Envoy its per-request counts on its tick (1 s); what an old VM counted after its last
/// tick is lost if it is let go before its next one. The module does not export `proxy_on_done`, which
/// would let it hand them over then but costs a VM entry on every request (bench/README.md). So across an
/// image upgrade the per-request counters lose at most the old VM's last second, and count every request
/// the new VM serves (README, "7. Change the configuration").
#[test]
fn counters_lose_at_most_the_old_vms_last_second_at_an_image_upgrade() {
    let _idp = idp_hold::exclusive();
    let b = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&b);
    let before = forwarded_settled();
    // Logged-in requests all along: counted by the old VMs up to the upgrade, then by the new ones.
    let probes = {
        let cookie = cookie.clone();
        Probes::start(move || api(UPGRADE, "/x", &cookie).status)
    };
    probes.until_more(50);
    let up = upgrade(UPGRADE);
    until_new_vms_ready(&up);
    probes.until_more(50);
    let answers = probes.finish();
    assert!(
        answers.iter().all(|(_, s)| *s == 200),
        "{:?}",
        by_status(answers.iter().map(|(_, s)| s))
    );
    let sent = answers.len() as u64;
    let counted = forwarded_settled() - before;
    // What the old VMs may have counted after their last tick: the requests of the second before
    // Envoy applied the new module (and of the moment it took the stats to show it).
    let last_second = answers
        .iter()
        .filter(|(t, _)| {
            (*t <= up.applied && up.applied - *t <= Duration::from_millis(1100))
                || (*t > up.applied && *t - up.applied <= Duration::from_millis(200))
        })
        .count() as u64;
    assert!(
        counted <= sent && counted + last_second >= sent,
        "sessions_forwarded: {sent} requests forwarded across the upgrade, {counted} counted; \
         {last_second} were answered in the old VMs' last second"
    );
}

/// Requests of one session that find it due for renewal at once agree on one refresh through Envoy's
/// shared data, which Envoy keys by `vm_id`, and an image upgrade keeps the `vm_id`: a refresh the old
/// VM sent is adopted by a request the new VM serves, and the session is refreshed once (the IdP
/// rotates this client's refresh tokens: a second use of the old one would end it). The old VM lives
/// while that request does, and is let go after it.
#[test]
fn a_refresh_the_old_vm_began_is_adopted_by_the_new_vm_and_the_old_vm_is_let_go() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(UPGRADE, "alice");
    let expired = expired_session(&alice);
    let old_bearer = bearer(&api(UPGRADE, "/x", &session_cookies(&alice))).unwrap();
    until_ready(UPGRADE);
    let vms_before = stack().wasm_vm_stats().unwrap().active;
    let refreshes = stat("refreshes");

    // The token endpoint is slow (discovery and keys are not): the old VM's refresh is still at the
    // IdP when the new VMs are ready.
    let slow = Fault::set(Mode::delay_for("/token", Duration::from_millis(2500)));
    let first = refresh_in_flight(UPGRADE, expired.clone());
    let up = upgrade(UPGRADE);
    until_new_vms_ready(&up);
    let vms_during = stack().wasm_vm_stats().unwrap().active;
    // The same expired session on the new VM, while the old VM's refresh is under way.
    let second = {
        let target = url(UPGRADE, "/x");
        let expired = expired.clone();
        thread::spawn(move || {
            let t = Instant::now();
            let r = Browser::new()
                .get_with(
                    &target,
                    &[("cookie", &expired), ("accept", "application/json")],
                )
                .unwrap();
            (r, t.elapsed())
        })
    };
    let (r1, took1) = first.join().unwrap();
    let (r2, took2) = second.join().unwrap();
    drop(slow);
    eprintln!(
        "upgrade during a refresh: the old VM's refresh answered {} after {took1:?}, the new VM's \
         request for the same session {} after {took2:?}; V8 VMs alive: {vms_before} before, \
         {vms_during} during",
        r1.status, r2.status
    );

    assert_eq!(r1.status, 200, "the old VM's refresh: {}", r1.body);
    assert!(took1 < CALLOUT_TIMEOUT, "took {took1:?}");
    let renewed = bearer(&r1).unwrap();
    assert_ne!(renewed, old_bearer, "not refreshed");
    assert!(!session_set_by(&r1).is_empty(), "{:?}", r1.set_cookies());
    assert_eq!(
        r2.status, 200,
        "the same session on the new VM, after {took2:?}: {}",
        r2.body
    );
    assert_eq!(
        bearer(&r2).as_deref(),
        Some(renewed.as_str()),
        "the new VM did not adopt the old VM's refresh"
    );
    assert_eq!(
        stat("refreshes"),
        refreshes + 1,
        "the session was refreshed more than once"
    );
    // The renewed session goes on, with no further refresh.
    let r = api(UPGRADE, "/x", &session_set_by(&r1));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stat("refreshes"), refreshes + 1);

    // The old VM lived while it had a request; now it is gone (no VM kept per upgrade).
    assert!(
        vms_during > vms_before,
        "no old VM alive during its request: {vms_before} VMs before, {vms_during} during"
    );
    poll(Duration::from_secs(10), || {
        Ok((stack().wasm_vm_stats()?.active <= vms_before).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "the old VMs were not let go: {vms_before} VMs before, {} now: {e:#}",
            stack().wasm_vm_stats().unwrap().active
        )
    });
}

/// The victim's plugin in [`shared_stack`]: delivered through ECDS, changed by the test.
const VICTIM: &str = "victim";
/// Another plugin in the same VM (same image and VM settings: Envoy shares the VM, as it does for
/// two `WasmPlugin`s of one image on one gateway), configured for the same issuer but through a
/// cluster of its own, [`ROGUE`], which answers with documents of its choosing.
const TENANT: &str = "tenant";
const ROGUE: &str = "rogue";
/// Where the rogue documents send a login.
const PHISH: &str = "https://phish.example/authorize";

/// Two plugins sharing one VM: [`VICTIM`] with the IdP, [`TENANT`] with the same issuer through
/// [`ROGUE`]; and the rogue server, which serves, for any path, one JSON document that is both a
/// discovery document for the stack's issuer (its endpoints elsewhere) and a JWKS.
fn shared_stack() -> &'static (Stack, harness::FaultProxy) {
    static STACK: OnceLock<(Stack, harness::FaultProxy)> = OnceLock::new();
    STACK.get_or_init(|| {
        let rogue = harness::FaultProxy::bind(([127, 0, 0, 1], 0).into()).unwrap();
        rogue.set_mode(Mode::Refuse);
        let shared = |s: SiteSpec| SiteSpec {
            shared_vm: Some("gateway".into()),
            ..s
        };
        let tenant = SiteSpec {
            clusters: vec![(ROGUE.into(), rogue.addr())],
            ..shared(SiteSpec::new(TENANT).filter(json!({"idp_cluster": ROGUE})))
        };
        let victim = SiteSpec {
            ecds: true,
            ..shared(SiteSpec::new(VICTIM))
        };
        let stack = Stack::start(StackSpec::new("lifecycle-shared", vec![tenant, victim])).unwrap();
        let mut doc: Value =
            serde_json::from_str(include_str!("../../testdata/jwks/keys.json")).unwrap();
        doc["issuer"] = json!(stack.issuer());
        doc["authorization_endpoint"] = json!(PHISH);
        doc["token_endpoint"] = json!("https://phish.example/token");
        doc["jwks_uri"] = json!("https://phish.example/jwks");
        rogue.set_mode(Mode::respond(200, "application/json", &doc.to_string()));
        stack.wait_ready(VICTIM).unwrap();
        (stack, rogue)
    })
}

/// Where `site`'s `/login` sends a client without Fetch Metadata (straight to the authorization
/// endpoint), or its status when it does not redirect.
fn login_goes_to(stack: &Stack, site: &str) -> String {
    let r = Browser::new()
        .get(&stack.site(site).unwrap().url("/login"))
        .unwrap();
    r.location().unwrap_or_else(|| r.status.to_string())
}

/// Found in review (of the fix above): a new configuration started from whatever root context in the
/// VM had documents for the same issuer string, though that root may belong to another plugin, and
/// fetch through another cluster. Here another plugin in the shared VM names the same issuer through a
/// cluster that serves forged documents (discovery accepts them: it checks only the `issuer` field);
/// after the victim's own configuration changed (its issuer and cluster unchanged), its logins went to
/// the forged authorization endpoint and its ID tokens were checked against the forged keys. Only a
/// site of the same issuer and the same cluster now lends its documents.
#[test]
fn a_change_never_takes_another_plugins_documents() {
    let (stack, _rogue) = shared_stack();
    // The tenant's root context has loaded the forged documents through its cluster.
    poll(Duration::from_secs(45), || {
        Ok((0..6)
            .all(|_| login_goes_to(stack, TENANT).starts_with(PHISH))
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("the tenant never loaded the rogue documents: {e:#}"));
    let genuine = format!("{}/", stack.issuer());
    assert!(login_goes_to(stack, VICTIM).starts_with(&genuine));

    // The victim's operator edits its configuration a few times (its issuer and cluster unchanged).
    // Which root a new one copies depends on their order in the VM: after the first change, the
    // victim's oldest root context is let go, and the tenant's comes first.
    let mut seen = Vec::new();
    for n in 0..3 {
        let s = stack;
        let reload = s.ecds_stat(VICTIM, "config_reload").unwrap();
        let mut c = s.site(VICTIM).unwrap().filter_config.clone();
        merge_json(
            &mut c,
            &json!({"identity_headers": {"x-change": n.to_string()}}),
        );
        s.update_filter_config(VICTIM, c).unwrap();
        poll(Duration::from_secs(10), || {
            Ok((s.ecds_stat(VICTIM, "config_reload")? > reload).then_some(()))
        })
        .unwrap();
        // Both workers on the new configuration, then a few more ticks for old roots to be let go.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            seen.push(login_goes_to(stack, VICTIM));
            thread::sleep(Duration::from_millis(100));
        }
    }
    let forged: Vec<_> = seen.iter().filter(|l| !l.starts_with(&genuine)).collect();
    assert!(
        forged.is_empty(),
        "after its own configuration changed, the victim sent {} of {} logins elsewhere than its \
         IdP: {:?}",
        forged.len(),
        seen.len(),
        forged.first()
    );
}
