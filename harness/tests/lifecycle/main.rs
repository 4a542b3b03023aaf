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
//!
//! The tests: `changes` (configuration edits) and `upgrades` (image upgrades) on one stack, whose
//! sites and helpers are here; `shared_vm` (two plugins in one VM) on a stack of its own.

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
use harness::{
    Browser, EcdsUpdate as Update, Mode, Response, SiteSpec, Stack, StackSpec, merge_json, sealed,
    unix_now,
};
use oidc_filter::session::{self, Keys};
use serde_json::{Value, json};

/// Claim rules and identity headers change under a logged-in browser.
const RULES: &str = "rules";
/// A login spans a change.
const LOGIN: &str = "login";
/// A change to forward the access token (no jwt_authn behind it: the app sees what goes up).
const FORWARD: &str = "forward";
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
            ecds(SiteSpec {
                istio_authn: false,
                ..SiteSpec::new(FORWARD)
            }),
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
            FORWARD,
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

/// Gives `site` the configuration `config` and waits until Envoy has applied or refused it.
fn change(site: &str, config: Value) -> Update {
    let before = ecds_counts(site);
    stack().update_filter_config(site, config).unwrap();
    applied_or_refused(site, before, "update")
}

/// `site`'s ECDS updates applied and refused so far.
fn ecds_counts(site: &str) -> (u64, u64) {
    stack().ecds_counts(site).unwrap()
}

/// Waits until Envoy has applied or refused the ECDS update of `site` written after it counted
/// `before` ([`ecds_counts`]).
fn applied_or_refused(site: &str, before: (u64, u64), what: &str) -> Update {
    stack()
        .ecds_outcome(site, before)
        .unwrap_or_else(|e| panic!("{site}: envoy neither applied nor refused the {what}: {e:#}"))
}

/// Polls until `probe` holds for ten requests to `site` in a row, each on a new connection, that between
/// them reached every worker ([`Stack::until_every_worker`]): what was changed has reached every worker.
fn until_every_worker(site: &str, what: &str, probe: impl FnMut() -> bool) {
    stack()
        .until_every_worker(site, Duration::from_secs(15), probe)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// Every worker's root context for the current configuration has its IdP's discovery and keys
/// (`/login` redirects rather than answering 503).
fn until_ready(site: &str) {
    stack()
        .wait_ready(site)
        .unwrap_or_else(|e| panic!("{site} ready: {e:#}"));
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

/// `b`'s session re-sealed with its token already expired: the next request refreshes it with the
/// IdP's real refresh token.
fn expired_session(b: &Browser) -> String {
    let mut s = sealed::open_session(&session_cookies(b)).unwrap();
    s.token_expires_at = unix_now() - 1;
    sealed::seal(&s).unwrap()
}

/// Requests to the IdP (the token endpoint, for a refresh) Envoy has open now.
fn idp_requests_active() -> u64 {
    stack().idp_cluster_stat("upstream_rq_active").unwrap()
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

/// Logs `b` out at the IdP, which posts a logout token to the site; waits until every worker refuses
/// `cookie`. The worker the POST reaches records the logout at once, the others on their next 1 s tick
/// (README, Back-channel logout).
fn log_out_at_idp(b: &Browser, site: &str, cookie: &str) {
    let confirmed = b.end_idp_session(&stack().idp_url("/session/end")).unwrap();
    assert!(confirmed.status < 400, "{}", confirmed.body);
    until_every_worker(site, "the logout on every worker", || {
        api(site, "/x", cookie).status == 401
    });
}

mod changes;
mod shared_vm;
mod upgrades;
