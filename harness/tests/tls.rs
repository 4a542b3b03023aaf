//! HTTPS at the gateway, as an Istio `Gateway` server with `tls.mode: SIMPLE` terminates it (and
//! `PILOT_ENABLE_QUIC_LISTENERS` adds HTTP/3 on the same port): a real Chromium, trusting the stack's
//! certificate, logs in over HTTP/2 and over HTTP/3, with WebSockets over TLS, API clients over TLS,
//! and what Back shows after a logout over HTTPS.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harness::{Site, SiteSpec, Stack, StackSpec, WebDriver};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// One stack, its IdP over HTTPS too (as every real one: the filter's calls to it and `jwt_authn`'s key
/// fetch go over TLS, checking its certificate): `secure`, the defaults over HTTPS; `big`, an IdP client
/// whose ID tokens carry 6 KB more claims (a session in three cookies); `plain`, the defaults over plain
/// HTTP; `short`, over HTTPS with ID tokens of 6 s.
fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let secure = SiteSpec {
            tls: true,
            ..SiteSpec::new("secure")
        };
        let big = SiteSpec {
            tls: true,
            ..SiteSpec::new("big").idp_client(json!({"extra_claims_bytes": 6000}))
        };
        let plain = SiteSpec::new("plain");
        // ID tokens of 6 s, renewed in their last 3.
        let short = SiteSpec {
            tls: true,
            ..SiteSpec::new("short")
                .filter(json!({"refresh_margin": "3s"}))
                .idp_client(json!({"id_token_ttl": 6}))
        };
        let spec = StackSpec {
            idp_tls: true,
            ..StackSpec::new("tls", vec![secure, big, plain, short])
        };
        let stack = Stack::start(spec).unwrap();
        stack.wait_keys_loaded(Duration::from_secs(75)).unwrap();
        stack
    })
}

/// A Chromium that trusts the stack's certificate; over HTTP/3 to `quic` sites.
fn browser(quic: &[&Site]) -> WebDriver {
    let stack = stack();
    let origins: Vec<String> = quic
        .iter()
        .map(|s| format!("localhost:{}", s.port))
        .collect();
    WebDriver::start_trusting(stack.dir(), stack.tls().unwrap(), &origins).unwrap()
}

/// The protocol the current page's document came over (`h2`, `h3`, `http/1.1`).
fn page_protocol(driver: &WebDriver) -> String {
    driver
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;",
            json!([]),
        )
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What the app was shown of the current page's request (the echo app's page prints it).
fn app_saw(driver: &WebDriver) -> Value {
    let pre = driver.wait_for("#echo", WAIT).unwrap();
    serde_json::from_str(&driver.text(&pre).unwrap()).unwrap()
}

/// Goes to `app`, logs in as alice at the IdP and lands back there, logged in.
fn log_in(driver: &WebDriver, stack: &Stack, app: &str) {
    driver.goto(app).unwrap();
    let at = driver.current_url().unwrap();
    assert!(at.starts_with(stack.issuer()), "not sent to log in: {at}");
    let h1 = driver.log_in_and_land("alice", app, WAIT).unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
}

/// The names of the cookies the browser holds for the current page's site.
fn cookie_names(driver: &WebDriver) -> Vec<String> {
    driver
        .cookies()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// Waits for Envoy's access log to have a line of `request` (`METHOD PATH PROTOCOL`) answered `status`.
fn served(stack: &Stack, request: &str, status: u16) {
    harness::process::poll(Duration::from_secs(5), || {
        let log = harness::served_requests(&stack.dir().join("access.log"));
        Ok(log
            .iter()
            .any(|r| r.request_line() == request && r.status == status)
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", stack.access_log().unwrap_or_default()));
}

/// The session's cookie or one of its chunks (`_oidc_session`, `_oidc_session.1`, …), as the filter
/// names them.
fn is_session_cookie(name: &str) -> bool {
    oidc_filter::session::is_session_cookie("_oidc_session", name)
}

/// Logs out with a link on the site, and waits for the IdP's end-session page.
fn log_out(driver: &WebDriver, stack: &Stack, site: &Site) {
    driver.click_link_to(&site.url("/logout")).unwrap();
    let at = driver
        .wait_for_url(|u| u.starts_with(stack.issuer()), WAIT)
        .unwrap();
    assert!(at.contains("/session/end"), "{at}");
}

/// `curl` over TLS to a site, trusting nothing but skipping the certificate check (`-k`), with
/// `args`; returns the status line's code, the headers and the body.
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sk", "-D", "-", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    (code, head.to_string(), body.to_string())
}

/// Over HTTPS with HTTP/2 (ALPN), the gateway's usual set-up: the login goes through the IdP with an
/// `https` redirect URI (the IdP checks it against the one registered), the session cookie is
/// `Secure`, the app gets the user and `x-forwarded-proto: https` and none of the filter's cookies, a
/// WebSocket over TLS carries the user, API clients over TLS get the filter's answers, and a logout
/// ends the session.
#[test]
fn chromium_logs_in_over_https_with_http2() {
    let stack = stack();
    let site = stack.site("secure").unwrap();
    let driver = browser(&[]);
    let app = site.url("/dashboard?tab=1");
    log_in(&driver, stack, &app);
    assert_eq!(page_protocol(&driver), "h2");
    let seen = app_saw(&driver);
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    assert!(
        !seen["headers"]["cookie"]
            .as_str()
            .unwrap_or_default()
            .contains("_oidc"),
        "{seen}"
    );
    let bearer = seen["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(bearer.starts_with("Bearer "), "{seen}");
    let cookies = driver.cookies().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "_oidc_session")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(
        (&session["secure"], &session["httpOnly"]),
        (&json!(true), &json!(true))
    );

    // A WebSocket over TLS (`wss:`, HTTP/1.1 Upgrade on a connection of its own) reaches the app
    // with the user's token and without the filter's cookie.
    let first = driver
        .execute(
            "return new Promise((done) => { \
               const ws = new WebSocket(`wss://${location.host}/ws/live`); \
               ws.onmessage = (e) => { done(e.data); ws.close(); }; \
               ws.onerror = () => done('error'); ws.onclose = (e) => done(`closed ${e.code}`); });",
            json!([]),
        )
        .unwrap();
    let first: Value =
        serde_json::from_str(first.as_str().unwrap()).unwrap_or_else(|e| panic!("{first}: {e}"));
    assert_eq!(first["headers"]["authorization"], json!(bearer), "{first}");
    assert!(
        !first["headers"]["cookie"]
            .as_str()
            .unwrap_or_default()
            .contains("_oidc"),
        "{first}"
    );

    // API clients over TLS, by HTTP/1.1 and HTTP/2: the token goes through, no token is refused,
    // and a browser-like request without a session is sent to log in on this site over https.
    let url = site.url("/api/items");
    for version in ["--http1.1", "--http2"] {
        let auth = format!("authorization: {bearer}");
        let (code, head, body) = curl(&[version, "-H", &auth, &url]);
        assert_eq!(code, 200, "{version} {head}{body}");
        let (code, head, body) = curl(&[version, "-H", "accept: application/json", &url]);
        assert_eq!(code, 401, "{version} {head}{body}");
        let (code, head, _) = curl(&[version, "-H", "accept: text/html", &url]);
        assert_eq!(code, 302, "{version} {head}");
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_else(|| panic!("{head}"));
        let login = harness::browser::resolve(&url, location.trim());
        assert!(
            login.starts_with(&site.url("/login?")),
            "{version}: {location}"
        );
        // The login it starts sends the IdP this site's https callback.
        let (code, head, _) = curl(&[version, "-H", "accept: text/html", &login]);
        let to_idp = head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_else(|| panic!("{code} {head}"));
        assert_eq!(
            harness::browser::query_param(to_idp.trim(), "redirect_uri").as_deref(),
            Some(site.url("/oauth2/callback").as_str()),
            "{version}: {to_idp}"
        );
    }

    log_out(&driver, stack, site);
    driver.goto(&site.url("/healthz")).unwrap();
    let names = cookie_names(&driver);
    assert!(!names.iter().any(|c| is_session_cookie(c)), "{names:?}");
    driver.quit().unwrap();
}

/// Over HTTP/3 (QUIC), with a session in three cookies: Chromium sends the `Cookie` header over
/// HTTP/3 as HTTP/2 does, the filter joins the chunks, the app gets the user, its own cookie, and
/// none of the filter's; a reload stays logged in without the IdP; the logout ends every chunk.
#[test]
fn chromium_logs_in_over_http3_with_a_session_in_several_cookies() {
    let stack = stack();
    let site = stack.site("big").unwrap();
    let driver = browser(&[site]);
    // The app's own cookie, set by its page before the login.
    driver.goto(&site.url("/healthz")).unwrap();
    assert_eq!(page_protocol(&driver), "h3");
    driver
        .execute("document.cookie = 'app_theme=dark; path=/';", json!([]))
        .unwrap();
    let app = site.url("/reports/7");
    log_in(&driver, stack, &app);
    assert_eq!(page_protocol(&driver), "h3");
    let names = cookie_names(&driver);
    assert!(
        names.iter().filter(|n| is_session_cookie(n)).count() >= 3,
        "{names:?}"
    );
    let seen = app_saw(&driver);
    assert_eq!(seen["headers"]["cookie"], "app_theme=dark", "{seen}");
    assert!(
        seen["headers"]["authorization"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Bearer "),
        "{seen}"
    );
    // Envoy served the page over HTTP/3.
    served(stack, "GET /reports/7 HTTP/3", 200);

    // (The other tests log in beside this one: only this site's logins count.)
    let logins = || {
        let log = stack.idp_log().unwrap();
        log.lines()
            .filter(|l| l.starts_with("GET /auth?") && l.contains("client_id=big&"))
            .count()
    };
    let logins_before = logins();
    assert!(logins_before > 0);
    driver.reload(WAIT).unwrap();
    assert_eq!(driver.current_url().unwrap(), app);
    assert_eq!(
        driver.text(&driver.find("h1").unwrap()).unwrap(),
        "Hello, alice@example.com"
    );
    assert_eq!(logins(), logins_before, "the reload went to the IdP");

    log_out(&driver, stack, site);
    driver.goto(&site.url("/healthz")).unwrap();
    assert_eq!(page_protocol(&driver), "h3");
    let names = cookie_names(&driver);
    assert!(!names.iter().any(|c| is_session_cookie(c)), "{names:?}");
    assert!(names.iter().any(|n| n == "app_theme"), "{names:?}");
    driver.quit().unwrap();
}

/// What Back shows after a logout over HTTPS, for an app page marked `Cache-Control: no-store` and for
/// one without: README's Limits say what a user meets.
#[test]
fn back_after_a_logout_over_https() {
    let stack = stack();
    let driver = browser(&[]);
    let mut restored = Vec::new();
    for (site, page) in [
        ("secure", "/nostore/account"),
        ("secure", "/kept/account"),
        ("plain", "/nostore/account"),
    ] {
        let site = stack.site(site).unwrap();
        let url = site.url(page);
        driver.goto(&url).unwrap();
        driver.log_in_and_land_on("alice", &url, WAIT).unwrap();
        assert_eq!(
            driver.text(&driver.find("h1").unwrap()).unwrap(),
            "Hello, alice@example.com"
        );
        driver
            .execute("window.harnessOldPage = true;", json!([]))
            .unwrap();
        log_out(&driver, stack, site);
        driver.go_back_to(&url).unwrap();
        // The page as it was (from the back/forward cache), or the page fetched again, which the
        // gateway answers by sending the browser to log in (the IdP's session still stands: it logs
        // straight back in, and the page comes back new).
        let old = harness::process::poll(WAIT, || {
            let at = driver
                .execute(
                    "return document.readyState === 'complete' ? [location.href, !!window.harnessOldPage] : null;",
                    json!([]),
                )
                .unwrap_or_default();
            if at[0] != url.as_str() && driver.find("input[name=login]").is_ok() {
                let _ = driver.log_in_at_idp("alice", Duration::from_secs(1));
            }
            Ok((at[0] == url.as_str()).then(|| at[1] == true))
        })
        .unwrap();
        restored.push((site.scheme, page, old));
    }
    assert_eq!(
        restored,
        [
            ("https", "/nostore/account", false),
            ("https", "/kept/account", true),
            ("http", "/nostore/account", false),
        ],
        "which pages Back showed as they were after the logout"
    );
    driver.quit().unwrap();
}

/// Over HTTP/3, a page's `POST` of 256 KB that comes while the session is due for renewal: the filter
/// holds the request for the IdP's answer, and the app gets it whole, with the new token, and the browser
/// the new cookie.
#[test]
fn a_renewal_over_http3_holds_a_post_and_its_body_reaches_the_app() {
    let stack = stack();
    let site = stack.site("short").unwrap();
    let driver = browser(&[site]);
    let app = site.url("/notes");
    log_in(&driver, stack, &app);
    assert_eq!(page_protocol(&driver), "h3");
    let before = driver.cookie_value("_oidc_session").unwrap().unwrap();
    let token_before = app_saw(&driver)["headers"]["authorization"].clone();
    // Into the last 3 s of the token's 6 (it was made before the page landed).
    std::thread::sleep(Duration::from_millis(3500));
    let answer = driver
        .execute(
            "const body = 'x'.repeat(262144); \
             return fetch('/notes/save', { method: 'POST', body, headers: { 'content-type': 'text/plain' } }) \
               .then((r) => r.json().then((j) => [r.status, j.body.length, j.body === body, j.headers.authorization]));",
            json!([]),
        )
        .unwrap();
    assert_eq!(answer[0], 200, "{answer}");
    assert_eq!(
        (answer[1].as_u64(), &answer[2]),
        (Some(262_144), &json!(true))
    );
    assert_ne!(answer[3], token_before, "the app got the old token");
    let after = driver.cookie_value("_oidc_session").unwrap().unwrap();
    assert_ne!(after, before, "the session was not renewed");
    served(stack, "POST /notes/save HTTP/3", 200);
    driver.quit().unwrap();
}
