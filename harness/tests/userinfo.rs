//! A black-box test of `userinfo_path` (README: the configuration reference, "What each request gets",
//! "Coming from oauth2-proxy"): what a page's script, a browser, an API client and an attacker get at
//! the path where the filter answers who is logged in, in a real Envoy with the real IdP.
//!
//! One stack: `plain` (the path set, `groups` asked for, CORS preflights passed), `rules` (a claim rule
//! on the path), `inherit` (`hosts` entries inheriting the top level's path or setting their own) and
//! `entries` (no top-level path: one entry sets it, one does not). The counters are Envoy-wide, so the
//! tests take turns ([`serial`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use harness::browser::HTML_ACCEPT;
use harness::sealed;
use harness::{Browser, HostSpec, Response, SiteSpec, Stack, StackSpec, WebDriver, unix_now};
use oidc_filter::secret::Secret;
use oidc_filter::session::Session;
use serde_json::{Value, json};

const PLAIN: &str = "plain";
const RULES: &str = "rules";
const INHERIT: &str = "inherit";
const ENTRIES: &str = "entries";
const USERINFO: &str = "/oauth2/userinfo";
const HOST: &str = "localhost";
const WIKI: &str = "wiki.localhost";
const ME: &str = "me.localhost";
const ON: &str = "on.localhost";
const OFF: &str = "off.localhost";
const SCOPES: [&str; 4] = ["openid", "email", "profile", "groups"];

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let plain = SiteSpec::new(PLAIN).filter(json!({
            "userinfo_path": USERINFO,
            "scopes": SCOPES,
            "pass_cors_preflight": true,
        }));
        let rules = SiteSpec::new(RULES).filter(json!({
            "userinfo_path": USERINFO,
            "scopes": SCOPES,
            "cookie_name": "_rules",
            "claim_rules": [
                {"path_prefix": USERINFO, "rule": {"claim": "groups", "contains_any": ["admins"]}},
                {"path_prefix": "/admin", "rule": {"claim": "email", "equals": "nobody@example.com"}},
            ],
        }));
        let inherit = SiteSpec::new(INHERIT)
            .filter(json!({
                "issuer": null,
                "userinfo_path": USERINFO,
                "scopes": SCOPES,
                "cookie_name": "_inherit",
            }))
            .host(HostSpec::new("inherit-wiki", 0, &[WIKI]))
            .host(HostSpec::new("inherit-me", 0, &[ME]).filter(json!({
                "userinfo_path": "/me",
                "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "email", "equals": "nobody@example.com"}}],
            })));
        // Through ECDS, to be given a configuration with a `null` in an entry (the harness's patches
        // drop a `null`).
        let entries = SiteSpec {
            ecds: true,
            ..SiteSpec::new(ENTRIES)
        }
        .filter(json!({"issuer": null, "scopes": SCOPES, "cookie_name": "_entries"}))
        .host(HostSpec::new("entries-on", 0, &[ON]).filter(json!({"userinfo_path": USERINFO})))
        .host(HostSpec::new("entries-off", 0, &[OFF]));
        let stack = Stack::start(StackSpec::new(
            "userinfo_blackbox",
            vec![plain, rules, inherit, entries],
        ))
        .unwrap();
        stack.wait_keys_loaded(Duration::from_secs(75)).unwrap();
        for site in [PLAIN, RULES] {
            stack.wait_ready(site).unwrap();
        }
        stack
    })
}

/// The tests take turns: the counters they compare are Envoy-wide.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn url(site: &str, path: &str) -> String {
    stack().site(site).unwrap().url(path)
}

fn port(site: &str) -> u16 {
    stack().site(site).unwrap().port
}

fn settled() -> HashMap<String, u64> {
    stack().settled_counters().unwrap()
}

/// Runs `f`, then asserts that the counters moved by exactly `expected` (names without the prefix) and
/// no other one moved. Returns what `f` returned.
fn counts<T>(what: &str, expected: &[(&str, u64)], f: impl FnOnce() -> T) -> T {
    let expected: BTreeMap<String, u64> =
        expected.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    let (out, got) = stack().counted(&expected, f).unwrap();
    assert_eq!(
        got, expected,
        "{what}: counted {got:?}, expected {expected:?}"
    );
    out
}

/// A page's script: `fetch`/XHR, JSON accepted.
const SCRIPT: [(&str, &str); 3] = [
    ("accept", "application/json"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-dest", "empty"),
];

/// A browser's navigation.
const NAVIGATION: [(&str, &str); 3] = [
    ("accept", HTML_ACCEPT),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];

fn alice(site: &str) -> Browser {
    Browser::logged_in(&url(site, "/"), "alice").unwrap()
}

fn alice_json() -> Value {
    json!({"user": "alice", "email": "alice@example.com", "groups": ["admins", "users"], "preferredUsername": "alice"})
}

/// The answer is the filter's identity JSON, with nothing of the session or the token in its headers.
fn assert_identity(r: &Response, expected: &Value) {
    assert_eq!(r.status, 200, "{} {}: {}", r.method, r.url, r.body);
    assert_eq!(&r.json().unwrap(), expected, "{}", r.body);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{:?}",
        r.headers
    );
    assert_no_identity_headers(r);
}

fn assert_no_identity_headers(r: &Response) {
    for (name, value) in &r.headers {
        assert!(
            !name.starts_with("x-auth-request") && name != "authorization",
            "{name}: {value} in the answer"
        );
        assert!(
            !value.contains("eyJ"),
            "a token in the answer's {name}: {value}"
        );
    }
    assert!(!r.body.contains("eyJ"), "a token in the body: {}", r.body);
}

/// The `Cookie` header value `s` sealed, stored in a fresh browser's jar for `localhost`.
fn browser_with(s: &Session) -> Browser {
    let b = Browser::new();
    for pair in sealed::seal(s).unwrap().split("; ") {
        let (n, v) = pair.split_once('=').unwrap();
        b.set_cookie(HOST, n, v);
    }
    b
}

fn session_of(b: &Browser) -> Session {
    sealed::open_session(&sealed::session_cookies(b, HOST)).unwrap()
}

/// One HTTP/1.1 request written as is (no client between the test and Envoy reads or rewrites the path):
/// status, and the raw head and body.
fn raw(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nhost: localhost:{port}\r\nconnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status: {text:?}"));
    (status, text)
}

/// Who answered a raw request: `Filter` (the identity JSON), `App(path)` (the echo app, with the path it
/// was shown), or `Other(status)`.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Filter,
    App(String),
    Other(u16),
}

fn answered(status: u16, text: &str) -> Answer {
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .and_then(|(a, b)| serde_json::from_str::<Value>(&body[a..=b]).ok());
    match json {
        Some(v) if status == 200 && v.get("user").is_some() && v.get("path").is_none() => {
            Answer::Filter
        }
        Some(v) if status == 200 && v.get("path").is_some() => {
            Answer::App(v["path"].as_str().unwrap().to_string())
        }
        _ => Answer::Other(status),
    }
}

// 1. What a page's script, a browser and an HTTP/2 client get.

#[test]
fn a_logged_in_user_gets_the_identity_by_get_head_query_and_http2_counted_as_a_session() {
    let _turn = serial();
    let b = alice(PLAIN);
    // A script's GET: the identity, counted as a forwarded session, never shown to the app.
    let r = counts("a script's GET", &[("sessions_forwarded", 1)], || {
        let mut h = SCRIPT.to_vec();
        h.push(("x-echo-record", "userinfo-get"));
        b.get_with(&url(PLAIN, USERINFO), &h).unwrap()
    });
    assert_identity(&r, &alice_json());
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    assert!(
        stack()
            .app_record("userinfo-get", Duration::from_secs(2))
            .is_err(),
        "the app was shown the request"
    );
    // A navigation (the user opens the address): the same JSON, as oauth2-proxy shows it.
    let r = b.get_with(&url(PLAIN, USERINFO), &NAVIGATION).unwrap();
    assert_identity(&r, &alice_json());
    // With a query string (a cache-buster): the same.
    let r = b
        .get_with(&url(PLAIN, "/oauth2/userinfo?_=1712345678"), &SCRIPT)
        .unwrap();
    assert_identity(&r, &alice_json());
    // HEAD: the status and headers, no body.
    let r = counts("a HEAD", &[("sessions_forwarded", 1)], || {
        b.request("HEAD", &url(PLAIN, USERINFO), &SCRIPT, None)
            .unwrap()
    });
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.body, "");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{:?}",
        r.headers
    );
    assert_no_identity_headers(&r);
    // HTTP/2 (nghttp, prior knowledge): the same JSON.
    let cookie = sealed::session_cookies(&b, HOST);
    let out = std::process::Command::new("nghttp")
        .args([
            "-v",
            "-H",
            &format!("cookie: {cookie}"),
            "-H",
            "accept: application/json",
            &url(PLAIN, USERINFO),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let statuses = harness::nghttp_statuses(&out);
    assert_eq!(statuses.len(), 1, "{out}");
    assert!(statuses[0].ends_with(":status: 200"), "{out}");
    let start = out.find("{\"user\"").unwrap_or_else(|| panic!("{out}"));
    let end = out[start..].find('}').unwrap() + start + 1;
    let body: Value = serde_json::from_str(&out[start..end]).unwrap();
    assert_eq!(body, alice_json(), "{out}");
    assert!(!out.contains("x-auth-request"), "{out}");
    // Every other path of the site is the app's, with the identity headers and the token.
    let r = b.get_with(&url(PLAIN, "/oauth2/other"), &SCRIPT).unwrap();
    let echo = r.json().unwrap();
    assert_eq!(echo["path"], "/oauth2/other", "{}", r.body);
    assert_eq!(
        echo["headers"]["x-auth-request-user"], "alice",
        "{}",
        r.body
    );
    // A POST (a script that posts to ask): the identity as well, as oauth2-proxy answers any method.
    let r = b
        .request("POST", &url(PLAIN, USERINFO), &SCRIPT, Some(b"{}"))
        .unwrap();
    assert_identity(&r, &alice_json());
}

// 2. Paths that look like it: the app's, and what an attacker gains there.

#[test]
fn only_the_exact_path_is_the_filters_and_its_look_alikes_are_the_apps_with_the_same_session() {
    let _turn = serial();
    let b = alice(PLAIN);
    let cookie = sealed::session_cookies(&b, HOST);
    let headers = [("cookie", cookie.as_str()), ("accept", "application/json")];
    let p = port(PLAIN);
    let mut seen = Vec::new();
    for target in [
        "/oauth2/userinfo",
        "/oauth2/userinfo?x=1",
        "/oauth2/userinfo/",
        "/OAUTH2/userinfo",
        "/oauth2/USERINFO",
        "/oauth2/%75serinfo",
        "/oauth2%2Fuserinfo",
        "/oauth2/userinfo%2F",
        "//oauth2/userinfo",
        "/oauth2//userinfo",
        "/oauth2/userinfo;x=1",
        "/oauth2/userinfo/.",
        "/oauth2/x/../userinfo",
        "/oauth2/./userinfo",
        "/oauth2/userinfo/..",
        "/oauth2/userinfo%00",
        "/oauth2/userinfo%20",
        "/oauth2/userinfo\\",
    ] {
        let (status, text) = raw(p, "GET", target, &headers);
        seen.push((target, answered(status, &text)));
    }
    eprintln!("{seen:#?}");
    let filter: Vec<&str> = seen
        .iter()
        .filter(|(_, a)| *a == Answer::Filter)
        .map(|(t, _)| *t)
        .collect();
    // The filter answers the path, and what Envoy's `normalize_path` makes of it before the filter
    // reads it (dot segments resolved, `%75` decoded): the address a browser would send anyway.
    assert_eq!(
        filter,
        [
            "/oauth2/userinfo",
            "/oauth2/userinfo?x=1",
            "/oauth2/%75serinfo",
            "/oauth2/x/../userinfo",
            "/oauth2/./userinfo",
        ],
        "{seen:#?}"
    );
    // The look-alikes go to the app as a logged-in request goes: nothing an attacker gains there that
    // the session's user does not have at any path (the app gets the token with every request).
    for (target, answer) in &seen {
        if let Answer::App(path) = answer {
            assert_ne!(
                path, USERINFO,
                "{target} reached the app as the path itself"
            );
        }
    }
}

// 3. Renewal first.

#[test]
fn a_due_or_expired_session_is_renewed_first_and_the_browser_keeps_the_renewed_cookie() {
    let _turn = serial();
    let b = alice(PLAIN);
    for (what, expires) in [
        ("due", unix_now() + 30),
        ("expired", unix_now().saturating_sub(5)),
    ] {
        let mut s = session_of(&b);
        s.token_expires_at = expires;
        let tab = browser_with(&s);
        let r = counts(what, &[("refreshes", 1)], || {
            tab.get_with(&url(PLAIN, USERINFO), &SCRIPT).unwrap()
        });
        assert_identity(&r, &alice_json());
        assert!(
            r.set_cookies()
                .iter()
                .any(|c| c.starts_with("_oidc_session=")),
            "{what}: {:?}",
            r.set_cookies()
        );
        // The browser keeps it: its session now holds a token good for the IdP's hour.
        let renewed = session_of(&tab);
        assert!(
            renewed.token_expires_at > unix_now() + 600,
            "{what}: {} left",
            renewed.token_expires_at.saturating_sub(unix_now())
        );
        // The next call of the page's script uses it, without a renewal.
        let r = counts(what, &[("sessions_forwarded", 1)], || {
            tab.get_with(&url(PLAIN, USERINFO), &SCRIPT).unwrap()
        });
        assert_identity(&r, &alice_json());
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    }
}

#[test]
fn a_pages_parallel_calls_with_an_expired_token_share_one_renewal_and_all_get_the_identity() {
    let _turn = serial();
    let b = alice(PLAIN);
    let mut s = session_of(&b);
    s.token_expires_at = unix_now().saturating_sub(5);
    let cookie = sealed::seal(&s).unwrap();
    let before = settled();
    let out = harness::at_once(6, |_| {
        let mut h = SCRIPT.to_vec();
        h.push(("cookie", cookie.as_str()));
        Browser::new().get_with(&url(PLAIN, USERINFO), &h).unwrap()
    });
    for r in &out {
        assert_identity(r, &alice_json());
        assert!(
            r.set_cookies()
                .iter()
                .any(|c| c.starts_with("_oidc_session=")),
            "{:?}",
            r.set_cookies()
        );
    }
    let d = harness::counter_delta(&before, &settled());
    let refreshes = d.get("refreshes").copied().unwrap_or(0);
    let forwarded = d.get("sessions_forwarded").copied().unwrap_or(0);
    assert!(refreshes >= 1 && refreshes + forwarded == 6, "{d:?}");
    assert_eq!(d.len(), if forwarded > 0 { 2 } else { 1 }, "{d:?}");
}

#[test]
fn an_idp_outage_at_renewal_gives_503_once_the_token_has_expired_and_the_identity_before() {
    let _turn = serial();
    let b = alice(PLAIN);
    // Past any pause an earlier outage set.
    std::thread::sleep(Duration::from_secs(6));
    let mut s = session_of(&b);
    s.token_expires_at = unix_now().saturating_sub(5);
    let expired = sealed::seal(&s).unwrap();
    s.token_expires_at = unix_now() + 30;
    let due = sealed::seal(&s).unwrap();
    // The third comes while the site's renewals are paused after the failures (README: a token due but
    // still valid then asks nothing and counts as a forwarded session).
    counts(
        "renewals the IdP did not answer",
        &[("refresh_failures", 2), ("sessions_forwarded", 1)],
        || {
            let _f = stack().idp_fault(harness::Mode::Refuse);
            let mut h = SCRIPT.to_vec();
            h.push(("cookie", expired.as_str()));
            let r = Browser::new().get_with(&url(PLAIN, USERINFO), &h).unwrap();
            assert_eq!(r.status, 503, "{}", r.body);
            assert_eq!(
                r.json().unwrap()["error"],
                "renewal_unavailable",
                "{}",
                r.body
            );
            assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
            assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
            let mut h = NAVIGATION.to_vec();
            h.push(("cookie", expired.as_str()));
            let r = Browser::new().get_with(&url(PLAIN, USERINFO), &h).unwrap();
            assert_eq!(r.status, 503, "{}", r.body);
            assert!(r.body.contains("could not be renewed"), "{}", r.body);
            // The token still valid: the identity, the cookie as it was.
            let mut h = SCRIPT.to_vec();
            h.push(("cookie", due.as_str()));
            let r = Browser::new().get_with(&url(PLAIN, USERINFO), &h).unwrap();
            assert_identity(&r, &alice_json());
            assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        },
    );
    // The outage's pause over before the next test renews.
    std::thread::sleep(Duration::from_secs(6));
}

#[test]
fn a_session_the_idp_will_not_renew_is_logged_out_a_script_told_401_a_browser_sent_to_log_in() {
    let _turn = serial();
    let b = alice(PLAIN);
    let mut s = session_of(&b);
    s.refresh_token = Some(Secret::new("a-refresh-token-the-idp-never-issued"));
    for (what, expires) in [
        ("expired", unix_now().saturating_sub(5)),
        ("due", unix_now() + 30),
    ] {
        s.token_expires_at = expires;
        // A script: 401 JSON, the dead cookie cleared.
        let tab = browser_with(&s);
        let r = counts(what, &[("refresh_failures", 1)], || {
            tab.get_with(&url(PLAIN, USERINFO), &SCRIPT).unwrap()
        });
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(
            r.json().unwrap()["error"],
            "unauthenticated",
            "{what}: {}",
            r.body
        );
        assert!(
            tab.cookie(HOST, "_oidc_session").is_none(),
            "{what}: the cookie stayed: {:?}",
            r.set_cookies()
        );
        assert_no_identity_headers(&r);
        // A browser's navigation: to log in, coming back to the path.
        let tab = browser_with(&s);
        let r = counts(what, &[("refresh_failures", 1)], || {
            tab.get_with(&url(PLAIN, USERINFO), &NAVIGATION).unwrap()
        });
        assert_eq!(r.status, 302, "{what}: {}", r.body);
        let to = r.location().unwrap();
        assert!(
            to.starts_with(&url(PLAIN, "/login?rd=%2Foauth2%2Fuserinfo")),
            "{what}: {to}"
        );
    }
    // Without any session: 401 to a script, the login to a browser, the app never shown the request.
    let r = counts("anonymous script", &[("unauthorized", 1)], || {
        let mut h = SCRIPT.to_vec();
        h.push(("x-echo-record", "userinfo-anonymous"));
        Browser::new().get_with(&url(PLAIN, USERINFO), &h).unwrap()
    });
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = counts("anonymous browser", &[("login_redirects", 1)], || {
        Browser::new()
            .get_with(&url(PLAIN, USERINFO), &NAVIGATION)
            .unwrap()
    });
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        stack()
            .app_record("userinfo-anonymous", Duration::from_secs(1))
            .is_err()
    );
}

// 4. Claim rules.

#[test]
fn claim_rules_of_the_path_decide_and_its_look_alikes_are_judged_alike() {
    let _turn = serial();
    let a = alice(RULES);
    let bob = Browser::new();
    let done = bob.login(&url(RULES, "/"), "bob").unwrap();
    assert_eq!(done.response.status, 200, "{}", done.response.body);
    // Alice is in `admins`: her identity. Bob is not: 403, counted in `forbidden`.
    let r = a.get_with(&url(RULES, USERINFO), &SCRIPT).unwrap();
    assert_identity(&r, &alice_json());
    let r = counts("bob refused", &[("forbidden", 1)], || {
        bob.get_with(&url(RULES, USERINFO), &SCRIPT).unwrap()
    });
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.contains("bob@example.com"), "{}", r.body);
    assert_no_identity_headers(&r);
    // Bob tries the path's look-alikes: each is refused, or is the app's under no rule of the path.
    let cookie = bob
        .cookies(HOST)
        .into_iter()
        .filter(|(n, _)| n.starts_with("_rules"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let headers = [("cookie", cookie.as_str()), ("accept", "application/json")];
    for target in [
        "/oauth2/userinfo/",
        "/oauth2/userinfo/x",
        "/oauth2/%75serinfo",
        "/oauth2/userinfo;x=1",
        "/oauth2/userinfo%2F",
        "//oauth2/userinfo",
        "/oauth2/x/../userinfo",
    ] {
        let (status, text) = raw(port(RULES), "GET", target, &headers);
        assert_eq!(status, 403, "{target}: {text}");
    }
    // A path no rule covers: his own, at the app.
    let r = bob.get_with(&url(RULES, "/elsewhere"), &SCRIPT).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

// 5. `hosts` entries.

#[test]
fn hosts_entries_inherit_the_path_or_set_their_own_or_have_none() {
    let _turn = serial();
    let site = |name: &str| stack().site(name).unwrap().clone();
    let (inherit, entries) = (site(INHERIT), site(ENTRIES));
    let user = |s: &harness::Site, host: &str| {
        let b = Browser::new();
        let done = b.login(&s.host_url(host, "/"), "bob").unwrap();
        assert_eq!(done.response.status, 200, "{host}: {}", done.response.body);
        assert!(done.response.body.contains("Hello, bob@example.com"));
        b
    };
    let bob_json = json!({"user": "bob", "email": "bob@example.com", "groups": ["users"], "preferredUsername": "bob"});
    // wiki.localhost inherits `/oauth2/userinfo`.
    let b = user(&inherit, WIKI);
    let r = b
        .get_with(&inherit.host_url(WIKI, USERINFO), &SCRIPT)
        .unwrap();
    assert_identity(&r, &bob_json);
    let r = b.get_with(&inherit.host_url(WIKI, "/me"), &SCRIPT).unwrap();
    assert_eq!(r.json().unwrap()["path"], "/me", "{}", r.body);
    // me.localhost sets `/me`: the top level's path is the app's there; its claim rule on /admin does
    // not cover /me.
    let b = user(&inherit, ME);
    let r = b.get_with(&inherit.host_url(ME, "/me"), &SCRIPT).unwrap();
    assert_identity(&r, &bob_json);
    let r = b
        .get_with(&inherit.host_url(ME, USERINFO), &SCRIPT)
        .unwrap();
    assert_eq!(r.json().unwrap()["path"], USERINFO, "{}", r.body);
    assert_eq!(
        b.get_with(&inherit.host_url(ME, "/admin"), &SCRIPT)
            .unwrap()
            .status,
        403
    );
    // Without a top-level path: on.localhost sets one, off.localhost has none (the app's path).
    let b = user(&entries, ON);
    let r = b
        .get_with(&entries.host_url(ON, USERINFO), &SCRIPT)
        .unwrap();
    assert_identity(&r, &bob_json);
    let b = user(&entries, OFF);
    let r = b
        .get_with(&entries.host_url(OFF, USERINFO), &SCRIPT)
        .unwrap();
    assert_eq!(r.json().unwrap()["path"], USERINFO, "{}", r.body);
    // README: in an entry `null` unsets a field (its default, here none). The top level sets `/whoami`
    // now: on.localhost, which no longer sets its own, inherits it; off.localhost unsets it.
    let mut config = entries.filter_config.clone();
    config["userinfo_path"] = json!("/whoami");
    config["hosts"][0]
        .as_object_mut()
        .unwrap()
        .remove("userinfo_path");
    config["hosts"][1]["userinfo_path"] = Value::Null;
    let before = stack().ecds_counts(ENTRIES).unwrap();
    stack().update_filter_config(ENTRIES, config).unwrap();
    assert_eq!(
        stack().ecds_outcome(ENTRIES, before).unwrap(),
        harness::EcdsUpdate::Applied
    );
    // The new VMs of the new configuration: until they answer, the old ones do.
    let on = user(&entries, ON);
    let r = harness::process::poll(Duration::from_secs(30), || {
        let r = on.get_with(&entries.host_url(ON, "/whoami"), &SCRIPT)?;
        Ok(r.json().ok().filter(|v| v["user"] == "bob").map(|_| r))
    })
    .unwrap();
    assert_identity(&r, &bob_json);
    let r = on
        .get_with(&entries.host_url(ON, USERINFO), &SCRIPT)
        .unwrap();
    assert_eq!(r.json().unwrap()["path"], USERINFO, "{}", r.body);
    let r = b
        .get_with(&entries.host_url(OFF, "/whoami"), &SCRIPT)
        .unwrap();
    assert_eq!(r.json().unwrap()["path"], "/whoami", "{}", r.body);
    // The session of one host is not read at another: wiki's cookie sent to me.localhost is no session
    // there.
    let wiki = user(&inherit, WIKI);
    let cookies: Vec<String> = wiki
        .cookies(WIKI)
        .into_iter()
        .filter(|(n, _)| n.starts_with("_inherit"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let cookie = cookies.join("; ");
    let r = Browser::new()
        .get_with(
            &inherit.host_url(ME, "/me"),
            &[("cookie", cookie.as_str()), ("accept", "application/json")],
        )
        .unwrap();
    assert_eq!(r.status, 401, "{cookie}: {}", r.body);
}

// 6. Without a session: a bearer token, a CORS preflight.

#[test]
fn a_bearer_token_without_a_session_goes_to_the_app_and_a_preflight_is_passed_or_refused() {
    let _turn = serial();
    let b = alice(PLAIN);
    let token = session_of(&b).id_token.expose().to_string();
    let bearer = format!("Bearer {token}");
    // The filter does not answer a bearer: the request goes up as any bearer request does, and the app
    // answers the path (here the echo app).
    let r = counts("a bearer", &[("bearer_passthrough", 1)], || {
        Browser::new()
            .get_with(
                &url(PLAIN, USERINFO),
                &[
                    ("authorization", bearer.as_str()),
                    ("accept", "application/json"),
                ],
            )
            .unwrap()
    });
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["path"], USERINFO, "{}", r.body);
    // A forged bearer: jwt_authn refuses it.
    let r = Browser::new()
        .get_with(
            &url(PLAIN, USERINFO),
            &[
                ("authorization", "Bearer a.b.c"),
                ("accept", "application/json"),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    // A CORS preflight carries no cookie: with `pass_cors_preflight` the app (or Istio's CORS policy)
    // answers it; without it, 401.
    let preflight = [
        ("origin", "https://spa.example.com"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "content-type"),
        ("accept", "*/*"),
    ];
    let r = Browser::new()
        .request("OPTIONS", &url(PLAIN, USERINFO), &preflight, None)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["method"], "OPTIONS", "{}", r.body);
    let r = Browser::new()
        .request("OPTIONS", &url(RULES, USERINFO), &preflight, None)
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    // The answer a logged-in cross-origin request gets carries no CORS headers of its own.
    let r = b
        .get_with(
            &url(PLAIN, USERINFO),
            &[
                ("origin", "https://spa.example.com"),
                ("accept", "application/json"),
            ],
        )
        .unwrap();
    assert_identity(&r, &alice_json());
    assert!(
        r.headers
            .iter()
            .all(|(n, _)| !n.starts_with("access-control-")),
        "{:?}",
        r.headers
    );
}

// 7. Odd claim values.

#[test]
fn odd_claim_values_come_back_as_valid_json_with_the_same_text() {
    let _turn = serial();
    // The test IdP takes any login name as `sub` and builds `email` and `preferred_username` from it.
    let odd = "o\"d\\d</script><b>&'é😀\u{7f}";
    let b = Browser::new();
    let done = b.login(&url(PLAIN, "/"), odd).unwrap();
    assert_eq!(done.response.status, 200, "{}", done.response.body);
    let r = b.get_with(&url(PLAIN, USERINFO), &SCRIPT).unwrap();
    assert_identity(
        &r,
        &json!({"user": odd, "email": format!("{odd}@example.com"), "groups": ["users"], "preferredUsername": odd}),
    );
}

// 8. A real browser: the page's own script reads it, another origin's cannot.

#[test]
fn chromium_reads_it_from_the_sites_own_page_and_another_origin_cannot() {
    let _turn = serial();
    let site = stack().site(PLAIN).unwrap();
    let driver = WebDriver::start(stack().dir()).unwrap();
    let app = site.url("/page");
    driver.goto(&app).unwrap();
    driver
        .log_in_and_land("alice", &app, Duration::from_secs(20))
        .unwrap();
    let fetch = |target: &str, mode: &str| {
        driver
            .execute(
                "const [u, m] = arguments; \
                 const x = new XMLHttpRequest(); \
                 try { x.open('GET', u, false); x.withCredentials = m === 'include'; x.send(); \
                   return ['ok', x.status, x.responseText]; } \
                 catch (e) { return ['error', 0, String(e.name)]; }",
                json!([target, mode]),
            )
            .unwrap()
    };
    // The site's own page: the identity.
    let own = fetch(&site.url(USERINFO), "include");
    assert_eq!(own[0], "ok", "{own}");
    assert_eq!(own[1], 200, "{own}");
    let body: Value = serde_json::from_str(own[2].as_str().unwrap()).unwrap();
    assert_eq!(body, alice_json());
    // Another origin of the same site (another port of localhost: the Lax cookie goes along): the
    // request is made with the session, but the page cannot read the answer.
    let echo_port = stack().echo_url().rsplit(':').next().unwrap().to_string();
    for other in [
        format!("http://localhost:{echo_port}/elsewhere"),
        format!("http://127.0.0.1:{echo_port}/elsewhere"),
    ] {
        driver.goto(&other).unwrap();
        let got = fetch(&site.url(USERINFO), "include");
        assert_eq!(got[0], "error", "{other}: {got}");
        assert_eq!(got[2], "NetworkError", "{other}: {got}");
        // `fetch` with `no-cors`: an opaque answer, nothing to read.
        driver
            .execute(
                "window.__opaque = null; \
                 fetch(arguments[0], {mode: 'no-cors', credentials: 'include'}) \
                   .then(r => r.text().then(t => { window.__opaque = [r.type, r.status, t]; })) \
                   .catch(e => { window.__opaque = ['error', 0, String(e)]; });",
                json!([site.url(USERINFO)]),
            )
            .unwrap();
        let opaque = harness::process::poll(Duration::from_secs(10), || {
            let v = driver.execute("return window.__opaque;", json!([]))?;
            Ok((!v.is_null()).then_some(v))
        })
        .unwrap();
        assert_eq!(opaque, json!(["opaque", 0, ""]), "{other}");
        eprintln!("{other}: no-cors {opaque}");
        assert!(
            !opaque.to_string().contains("alice@example.com"),
            "{other}: {opaque}"
        );
    }
    driver.quit().unwrap();
}

// 9. The gateway's own policy.

/// Finding 1 (report.md): `userinfo_path` is answered before `jwt_authn` and `rbac` (Istio's
/// RequestAuthentication and AuthorizationPolicy), so a user the policy refuses on every path still gets
/// `200` and the identity there. Here the harness's policy (as `oidc-filter-require-login`: a principal
/// `ISSUER/<any sub>`, RE2 `.+`) refuses a `sub` with a line break; so would any `AuthorizationPolicy`
/// that restricts a site to a group (README, "Coming from oauth2-proxy": "keep such rules in an
/// `AuthorizationPolicy`, which sees every request after the filter"). The test asserts what happens
/// now; the control characters come back escaped.
#[test]
fn a_user_the_gateways_policy_refuses_everywhere_still_gets_the_identity_at_userinfo_path() {
    let _turn = serial();
    let odd = "ctl\u{1}\n\tx\u{1f}";
    let b = Browser::new();
    let done = b.login(&url(PLAIN, "/"), odd).unwrap();
    assert_eq!(done.response.status, 403, "{}", done.response.body);
    assert_eq!(done.response.body, "RBAC: access denied");
    let r = b.get_with(&url(PLAIN, "/x"), &SCRIPT).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = counts(
        "userinfo for a refused user",
        &[("sessions_forwarded", 1)],
        || b.get_with(&url(PLAIN, USERINFO), &SCRIPT).unwrap(),
    );
    assert_identity(
        &r,
        &json!({"user": odd, "email": format!("{odd}@example.com"), "groups": ["users"], "preferredUsername": odd}),
    );
    assert!(r.body.contains("\\u0001\\n\\tx\\u001f"), "{}", r.body);
}

/// A body on the request the filter answers (POST with `Content-Length`, or chunked) holding another
/// request: Envoy closes the connection after the answer, so the app never reads the body as a request.
#[test]
fn a_request_hidden_in_the_body_of_an_answered_request_never_reaches_the_app() {
    let _turn = serial();
    let b = alice(PLAIN);
    let cookie = sealed::session_cookies(&b, HOST);
    let p = port(PLAIN);
    let inner = "GET /smuggled HTTP/1.1\r\nhost: localhost\r\nx-echo-record: smuggled\r\n\r\n";
    for (framing, body) in [
        (
            format!("content-length: {}", inner.len()),
            inner.to_string(),
        ),
        (
            "transfer-encoding: chunked".to_string(),
            format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len()),
        ),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "POST {USERINFO} HTTP/1.1\r\nhost: localhost:{p}\r\ncookie: {cookie}\r\n\
             accept: application/json\r\ncontent-type: text/plain\r\n{framing}\r\n\r\n{body}"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(answered(200, &text), Answer::Filter, "{framing}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{framing}: {text}");
    }
    assert!(
        stack()
            .app_record("smuggled", Duration::from_secs(2))
            .is_err()
    );
}
