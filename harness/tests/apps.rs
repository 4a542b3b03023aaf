//! What the apps behind the gateway answer themselves, which the filter must live with (a black-box test
//! of the thirty-third review): an app's own cookies and caching on the answer that renews the session,
//! its own `401` and redirects, an app that sends every page to its own `/login` (the filter's), and a
//! page's live stream (Grafana Live's `EventSource`) that reconnects across renewals and stops once the
//! session has ended. The echo app's `/mimic` answers with the status and header lines a test asks for,
//! its `mimic_login` cookie makes it send every page to a login page, `/events?retry=MS` sets the
//! stream's reconnection delay.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::idp::jwt_payload;
use harness::{Browser, SiteSpec, Stack, StackSpec, WebDriver, idp_hold, sealed};
use serde_json::json;

/// A site of the default configuration.
const APP: &str = "apps";
/// A site whose tokens live `LIVE_TTL` seconds and renew in their second half.
const LIVE: &str = "live";
const LIVE_TTL: u64 = 8;
/// A site of the default configuration for the one test that counts its logins.
const LOOP: &str = "loop";
/// Another, for the one test that counts the logins of a single-page app's loop.
const SPA: &str = "spa";
const HOST: &str = "localhost";
/// A site of the default configuration whose Envoy access log names who made each request, in the two
/// ways README's "Logs" offers an operator.
const WHO: &str = "who";

/// Site `WHO`'s access log, one JSON object a request.
fn who_log_path() -> std::path::PathBuf {
    harness::target_dir()
        .join("e2e")
        .join("apps")
        .join("who.log")
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let sites = vec![
            SiteSpec::new(APP),
            SiteSpec::new(LIVE)
                .filter(json!({"refresh_margin": format!("{}s", LIVE_TTL / 2)}))
                .idp_client(json!({"id_token_ttl": LIVE_TTL})),
            SiteSpec::new(LOOP),
            SiteSpec::new(SPA),
            SiteSpec {
                hcm_overrides: json!({"access_log": harness::json_access_log(&who_log_path(), json!({
                            "path": "%REQ(:PATH)%",
                            "status": "%RESPONSE_CODE%",
                            "sub": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:sub)%",
                            "email": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:email)%",
                            "header": "%REQ(X-AUTH-REQUEST-EMAIL)%",
                        }))}),
                ..SiteSpec::new(WHO)
            },
        ];
        let stack = Stack::start(StackSpec::new("apps", sites)).unwrap();
        for site in [APP, LIVE, LOOP, SPA, WHO] {
            stack.wait_ready(site).unwrap();
        }
        stack
    })
}

fn url(site: &str, path: &str) -> String {
    stack().site(site).unwrap().url(path)
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// `/mimic` answering with `status` and each of `lines` (`name:value`) as a header line.
fn mimic(status: u16, lines: &[&str]) -> String {
    let mut q = format!("/mimic?status={status}");
    for l in lines {
        q.push_str("&h=");
        q.push_str(&harness::browser::form_urlencode(&[("", l)])[1..]);
    }
    q
}

/// `b`'s session re-sealed with its token due for renewal (inside the default 60 s margin), put back in
/// its jar; returns the old session's cookie header.
fn make_due(b: &Browser) -> String {
    let before = sealed::session_cookies(b, HOST);
    let mut s = sealed::open_session(&before).unwrap();
    let iat = jwt_payload(s.id_token.expose()).unwrap()["iat"]
        .as_u64()
        .unwrap();
    // Within the second the ID token was issued, the IdP hands out the same one again.
    while unix_ms() / 1000 <= iat {
        std::thread::sleep(Duration::from_millis(50));
    }
    s.token_expires_at = unix_ms() / 1000 + 30;
    for pair in sealed::seal(&s).unwrap().split("; ") {
        let (n, v) = pair.split_once('=').unwrap();
        b.set_cookie(HOST, n, v);
    }
    sealed::session_cookies(b, HOST)
}

/// The app's own `Set-Cookie` lines (one named with the session cookie's name as a prefix, one that
/// clears a cookie of its own, one of 3 KB), its validators and `Vary` go out beside the filter's renewed
/// cookie, on the answer that renewed the session; the app's cookies come back to it, the filter's never.
#[test]
fn an_apps_own_cookies_go_out_beside_the_renewal_and_come_back_to_it() {
    let _idp = idp_hold::shared();
    let b = Browser::logged_in(&url(APP, "/"), "alice").unwrap();
    b.set_cookie(HOST, "legacy", "1");
    let old = make_due(&b);
    let big = "b".repeat(3000);
    let app_cookies = [
        "set-cookie:_oidc_session_theme=dark; Path=/; SameSite=Lax".to_string(),
        "set-cookie:legacy=; Path=/; Max-Age=0".to_string(),
        format!("set-cookie:big={big}; Path=/"),
    ];
    let mut lines: Vec<&str> = app_cookies.iter().map(String::as_str).collect();
    lines.extend([
        "cache-control:public, max-age=600",
        "etag:\"v1\"",
        "vary:Accept-Encoding",
    ]);
    let r = b
        .get_with(
            &url(APP, &mimic(200, &lines)),
            &[("accept", "application/json")],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let set = r.header_all("set-cookie");
    for line in &app_cookies {
        let line = line.strip_prefix("set-cookie:").unwrap();
        assert!(
            set.contains(&line),
            "the app's {line:.40} is missing: {set:?}"
        );
    }
    assert!(
        set.iter().any(|c| c.starts_with("_oidc_session=")),
        "not renewed: {set:?}"
    );
    assert_ne!(sealed::session_cookies(&b, HOST), old);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));

    let r = b
        .get_with(&url(APP, "/mimic"), &[("accept", "application/json")])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.json().unwrap()["headers"]["cookie"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let names: Vec<&str> = cookie
        .split("; ")
        .filter_map(|c| c.split_once('=').map(|(n, _)| n))
        .collect();
    assert!(names.contains(&"_oidc_session_theme"), "{names:?}");
    assert!(names.contains(&"big"), "{names:?}");
    assert!(!names.contains(&"legacy"), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| sealed::COOKIE == *n || n.starts_with("_oidc_session.")),
        "the session cookie reached the app: {names:?}"
    );
}

/// The app's own `401` (with its `WWW-Authenticate`), `403` and redirects (to its own login page, to an
/// absolute address of its internal host) reach a logged-in browser as the app sent them, and end
/// nothing: the session's cookie is neither cleared nor replaced, the app's caching is left as it is,
/// and the next page is served.
#[test]
fn an_apps_own_refusals_and_redirects_reach_the_user_and_end_no_session() {
    let _idp = idp_hold::shared();
    let b = Browser::logged_in(&url(APP, "/"), "alice").unwrap();
    let session = sealed::session_cookies(&b, HOST);
    let page = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];
    for (status, lines) in [
        (401, vec!["www-authenticate:Basic realm=\"prometheus\""]),
        (
            403,
            vec![
                "content-type:text/plain",
                "cache-control:private, max-age=60",
            ],
        ),
        (302, vec!["location:/grafana/login"]),
        (302, vec!["location:http://10.0.0.7:3000/d/x"]),
    ] {
        let r = b
            .get_with(&url(APP, &mimic(status, &lines)), &page)
            .unwrap();
        assert_eq!(r.status, status, "{lines:?}: {}", r.body);
        for l in &lines {
            let (n, v) = l.split_once(':').unwrap();
            assert_eq!(r.header(n), Some(v), "{:?}", r.headers);
        }
        assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
        assert!(r.body.contains("\"path\": \"/mimic") || r.body.contains("\"path\":\"/mimic"));
    }
    assert_eq!(sealed::session_cookies(&b, HOST), session);
    let r = b.get_with(&url(APP, "/after"), &page).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Hello, alice@example.com"), "{}", r.body);
}

/// The live updates of a page (Grafana Live's `EventSource`): the app ends each stream after two events
/// and the browser reconnects; the reconnects go through the session's renewals (each renewed cookie
/// taken from the stream's answer), so the page keeps its updates for longer than a token lives. Once
/// the session has ended (a script's `POST` to `/logout`), the next reconnect gets `401` and the browser
/// gives up: the stream stays closed (README: the page shows no more updates until reloaded).
#[test]
fn a_pages_live_stream_reconnects_across_renewals_and_stops_once_the_session_ends() {
    let _idp = idp_hold::shared();
    let s = stack();
    let driver = WebDriver::start(s.dir()).unwrap();
    let page = url(LIVE, "/dashboard");
    driver.goto(&page).unwrap();
    let h1 = driver
        .log_in_and_land("alice", &page, Duration::from_secs(15))
        .unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
    let cookie_before = session_in(&driver);
    driver
        .execute(
            "window.live = {bearers: [], errors: 0}; \
             const es = new EventSource('/events/live?n=2&ms=100&retry=300'); window.es = es; \
             es.onmessage = (e) => { const d = JSON.parse(e.data); \
               if (d.headers) window.live.bearers.push(d.headers.authorization || ''); }; \
             es.onerror = () => { window.live.errors += 1; }; return 1;",
            json!([]),
        )
        .unwrap();
    let live = |driver: &WebDriver| -> (Vec<String>, u64, u64) {
        let v = driver
            .execute(
                "return [window.live.bearers, window.live.errors, window.es.readyState];",
                json!([]),
            )
            .unwrap();
        let bearers = v[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        (bearers, v[1].as_u64().unwrap(), v[2].as_u64().unwrap())
    };
    // Longer than a token lives: at least two renewals' worth of reconnects.
    let until = unix_ms() + (LIVE_TTL + LIVE_TTL / 2) * 1000;
    while unix_ms() < until {
        std::thread::sleep(Duration::from_millis(500));
        let (bearers, errors, state) = live(&driver);
        assert_ne!(
            state,
            2,
            "the stream gave up while logged in, after {} connections and {errors} errors",
            bearers.len()
        );
    }
    let (bearers, _, _) = live(&driver);
    assert!(bearers.len() >= 4, "{} connections", bearers.len());
    assert!(
        bearers.iter().all(|b| b.starts_with("Bearer ")),
        "a reconnect reached the app without the session"
    );
    let mut tokens: Vec<&String> = bearers.iter().collect();
    tokens.dedup();
    assert!(
        tokens.len() >= 2,
        "no reconnect renewed the session: {} connections with one token",
        bearers.len()
    );
    // Chromium took each renewed cookie from the stream's answer.
    assert_ne!(
        session_in(&driver),
        cookie_before,
        "Chromium kept the login's cookie"
    );
    // The latest connection carried an unexpired token.
    let last = jwt_payload(bearers.last().unwrap().strip_prefix("Bearer ").unwrap()).unwrap();
    assert!(
        last["exp"].as_u64().unwrap() * 1000 > unix_ms() - 2000,
        "{last}"
    );

    // The session ends under the page: the stream's next reconnect gets 401 and the browser stops.
    driver
        .execute(
            "fetch('/logout', {method: 'POST', redirect: 'manual'}).catch(() => {}); return 1;",
            json!([]),
        )
        .unwrap();
    let (seen, _, state) = harness::process::poll(Duration::from_secs(10), || {
        let l = live(&driver);
        Ok((l.2 == 2).then_some(l))
    })
    .unwrap_or_else(|e| panic!("{e:#}: the stream kept reconnecting: {:?}", live(&driver)));
    assert_eq!(state, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let (after, _, _) = live(&driver);
    assert_eq!(
        after.len(),
        seen.len(),
        "the app saw a connection after the logout"
    );
    driver.quit().unwrap();
}

/// Chromium's session cookie.
fn session_in(driver: &WebDriver) -> String {
    let cookies = driver.cookies().unwrap();
    cookies
        .iter()
        .find(|c| c["name"] == sealed::COOKIE)
        .and_then(|c| c["value"].as_str())
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"))
        .to_string()
}

/// Callbacks the site `site`'s listener has answered so far (Envoy's access log, which names the host).
fn callbacks(site: &str) -> usize {
    requests(site, "/oauth2/callback?")
}

/// Requests for paths starting with `prefix` that the site `site`'s listener has answered so far.
fn requests(site: &str, prefix: &str) -> usize {
    let host = format!("localhost:{}", stack().site(site).unwrap().port);
    harness::served_requests(&stack().dir().join("access.log"))
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(prefix) && r.authority == host)
        .count()
}

/// An app that does not take the gateway's login (Grafana's auth proxy with a user it will not sign up,
/// Argo CD without its own token) sends every page to its own `/login`, which is the filter's. Found by
/// this test: each such `/login` started another login, which the IdP's session let through at once and
/// which ended on a page the app sent back to `/login`: one tab logged in about 15 times a second
/// through the IdP (400 logins in 30 s), without end, and showed nothing (the page at `/login` is a
/// `200` whose script moves on, so the browser's cap on redirects never applied). Then a session made
/// moments ago went on to `rd` from `/login` without the IdP, and the browser stopped the loop at its
/// cap, on its page for "too many redirects"; now `/login` answers such a browser with a page that says
/// it logged in moments ago and links back, and the loop ends there.
#[test]
fn an_app_that_sends_every_page_to_its_own_login_does_not_loop_through_the_idp() {
    let _idp = idp_hold::shared();
    let (driver, logins) = logins_once_the_app_sends_to_login(
        LOOP,
        "/d/x",
        "mimic_login",
        "/login?redirectTo=%2Fd%2Fx",
    );
    assert!(
        logins <= 1,
        "{logins} logins through the IdP in 4 s from one tab whose app sends it to /login"
    );
    assert_ends_on_the_logged_in_page(&driver, LOOP);
    driver.quit().unwrap();
}

/// What the user sees once the app sent a browser that logged in moments ago to `/login`: the filter's
/// page that says so, with a link back, after one `/login` (no loop goes on).
fn assert_ends_on_the_logged_in_page(driver: &WebDriver, site: &str) {
    let text = driver.text(&driver.find("body").unwrap()).unwrap();
    assert!(
        text.contains("You logged in moments ago and were sent to log in again"),
        "{text:.2000}"
    );
    assert_eq!(driver.title().unwrap(), "Logged in");
    let asked = requests(site, "/login?");
    assert!(asked >= 1, "no /login in the access log");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(requests(site, "/login?"), asked, "the loop goes on");
}

/// Logs a Chromium in at `path` of `site`, then sets the app mimic's `cookie` to `login`, from which on
/// the app sends each page there, and goes to `path` again: the logins through the IdP in the next 4 s.
fn logins_once_the_app_sends_to_login(
    site: &str,
    path: &str,
    cookie: &str,
    login: &str,
) -> (WebDriver, usize) {
    let driver = WebDriver::start(stack().dir()).unwrap();
    let page = url(site, path);
    driver.goto(&page).unwrap();
    let h1 = driver
        .log_in_and_land("alice", &page, Duration::from_secs(15))
        .unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
    driver
        .execute(
            "document.cookie = arguments[0] + '=' + encodeURIComponent(arguments[1]) + '; path=/'; \
             const to = arguments[2]; setTimeout(() => { location.href = to; }, 50); return 1;",
            json!([cookie, login, page]),
        )
        .unwrap();
    let before = callbacks(site);
    std::thread::sleep(Duration::from_secs(4));
    let logins = callbacks(site) - before;
    (driver, logins)
}

/// What a page's own scripts get once the session has ended under it (a script's `POST` to `/logout`): a
/// `fetch` for JSON, one for an HTML fragment (htmx, Turbo), a jQuery-style `XMLHttpRequest` and a `POST`
/// that saves a form's data each get a `401` they can read (same origin, JSON, not a redirect to the IdP
/// that the browser would stop as a cross-origin request: a `TypeError` with nothing to go on), so the
/// app can tell the user to log in again and keep what was typed (the filter's answer: the app's would
/// be `200`).
#[test]
fn a_pages_scripts_get_a_401_they_can_read_once_the_session_has_ended() {
    let _idp = idp_hold::shared();
    let driver = WebDriver::start(stack().dir()).unwrap();
    let page = url(APP, "/board");
    driver.goto(&page).unwrap();
    let h1 = driver
        .log_in_and_land("alice", &page, Duration::from_secs(15))
        .unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
    let got = driver
        .execute(
            "const read = async (p) => { try { const r = await p; \
               return {status: r.status, redirected: r.redirected, type: r.headers.get('content-type'), \
                       body: await r.text()}; } catch (e) { return {error: String(e)}; } }; \
             const xhr = () => new Promise((done) => { const x = new XMLHttpRequest(); \
               x.open('GET', '/mimic/xhr'); x.setRequestHeader('X-Requested-With', 'XMLHttpRequest'); \
               x.setRequestHeader('Accept', 'text/html, */*; q=0.01'); \
               x.onload = () => done({status: x.status, redirected: x.responseURL !== location.origin + '/mimic/xhr', \
                 type: x.getResponseHeader('content-type'), body: x.responseText}); \
               x.onerror = () => done({error: 'network'}); x.send(); }); \
             return fetch('/logout', {method: 'POST', redirect: 'manual'}).then(async () => [ \
               await read(fetch('/mimic/json', {headers: {accept: 'application/json'}})), \
               await read(fetch('/mimic/fragment', {headers: {accept: 'text/html, application/xhtml+xml'}})), \
               await xhr(), \
               await read(fetch('/mimic/save', {method: 'POST', headers: {'content-type': 'application/json'}, \
                 body: JSON.stringify({note: 'typed for an hour'})})), \
             ]);",
            json!([]),
        )
        .unwrap();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 4, "{got:?}");
    for (what, r) in ["fetch JSON", "fetch HTML", "XHR", "POST"].iter().zip(got) {
        assert_eq!(r["status"], 401, "{what}: {r}");
        assert_eq!(r["redirected"], false, "{what}: {r}");
        assert!(
            r["type"]
                .as_str()
                .unwrap_or_default()
                .starts_with("application/json"),
            "{what}: {r}"
        );
        let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"], "unauthenticated", "{what}: {r}");
    }
    driver.quit().unwrap();
}

/// The same with a single-page app (Argo CD's UI): each page is a `200` whose script, told `401` by the
/// app's API, goes to `/login`. No browser cap stops a loop of navigations: before the first fix every
/// turn was another login through the IdP, then it went on between the gateway and the app, about ten
/// pages a second, without the IdP; now it ends on the filter's page.
#[test]
fn a_single_page_app_that_sends_its_user_to_its_own_login_does_not_loop_through_the_idp() {
    let _idp = idp_hold::shared();
    let (driver, logins) = logins_once_the_app_sends_to_login(
        SPA,
        "/applications",
        "mimic_spa_login",
        "/login?return_url=%2Fapplications",
    );
    assert!(
        logins <= 1,
        "{logins} logins through the IdP in 4 s from one tab whose app's script sends it to /login"
    );
    assert_ends_on_the_logged_in_page(&driver, SPA);
    driver.quit().unwrap();
}

/// The access-log line of the request to `path` on site `WHO`.
fn who_logged(path: &str) -> serde_json::Value {
    harness::process::poll(Duration::from_secs(10), || {
        Ok(harness::logged_requests(&who_log_path(), path)
            .into_iter()
            .find(|v| v["path"] == path))
    })
    .unwrap_or_else(|e| panic!("{e:#}: no access-log line for {path}"))
}

/// Who made each request, as an operator's Envoy access log can say it (README, "Logs"): jwt_authn's
/// verified payload names the logged-in user and nobody else, whatever a client sends; the identity header
/// as the request left the filter names the logged-in user too (the filter's value, not a client's copy),
/// but on an answer the filter gave itself it is what the client sent: not a record of anyone.
#[test]
fn the_access_log_can_name_who_made_each_request() {
    let _idp = idp_hold::shared();
    let mallory = ("x-auth-request-email", "mallory@example.com");
    let b = Browser::logged_in(&url(WHO, "/"), "alice").unwrap();
    let r = b
        .get_with(
            &url(WHO, "/who/alice"),
            &[mallory, ("accept", "application/json")],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let line = who_logged("/who/alice");
    assert_eq!(line["sub"], "alice", "{line}");
    assert_eq!(line["email"], "alice@example.com", "{line}");
    assert_eq!(line["header"], "alice@example.com", "{line}");

    let anon = Browser::new();
    for (path, accept, status) in [
        ("/who/script", "application/json", 401),
        ("/who/page", "text/html", 302),
        ("/healthz", "application/json", 200),
    ] {
        let r = anon
            .get_with(&url(WHO, path), &[mallory, ("accept", accept)])
            .unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.body);
        let line = who_logged(path);
        assert!(line["sub"].is_null(), "{path}: {line}");
        assert!(line["email"].is_null(), "{path}: {line}");
        // On to the app, the client's copy is gone; answered by the filter, it is logged as it came.
        if status == 200 {
            assert!(line["header"].is_null(), "{path}: {line}");
        } else {
            assert_eq!(line["header"], "mallory@example.com", "{path}: {line}");
        }
    }
    // A token of the client's own that jwt_authn refuses names nobody either.
    let r = anon
        .get_with(
            &url(WHO, "/who/forged"),
            &[mallory, ("authorization", "Bearer e30.e30.AAAA")],
        )
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let line = who_logged("/who/forged");
    assert!(line["sub"].is_null() && line["email"].is_null(), "{line}");
}
