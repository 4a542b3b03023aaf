//! A real browser (headless Chromium over WebDriver) logs in through the filter: what a user does
//! and sees, with Chromium's own cookie rules (`Secure`, `HttpOnly`, `SameSite`, `Path`).

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use harness::{SiteSpec, Stack, StackSpec, WebDriver};
use serde_json::json;

#[test]
fn chromium_logs_in_through_the_filter_and_stays_logged_in() {
    let t0 = Instant::now();
    // `strict` sets its cookies `SameSite=Strict`: the IdP's redirect back comes from another site
    // (127.0.0.1, the apps are on localhost), and Chromium withholds such cookies from it.
    let strict = SiteSpec::new("strict")
        .filter(json!({"cookie_same_site": "Strict", "cookie_name": "_strict"}));
    // `web` answers a page's script that asks who is logged in, as oauth2-proxy does.
    let web = SiteSpec::new("web").filter(json!({"userinfo_path": "/oauth2/userinfo"}));
    let stack = Stack::start(StackSpec::new("browser", vec![web, strict])).unwrap();
    let site = stack.site("web").unwrap();
    let driver = WebDriver::start(stack.dir()).unwrap();
    // With a fragment, as a dashboard's deep link has one: the browser never sends it, and the IdP's
    // login form drops it, so the filter's page at /login puts it in `rd`.
    let app = site.url("/dashboard?tab=1#/panel/2?from=now-1h");
    // The filter answers 503 until it has the IdP's keys.
    stack.wait_keys_loaded(Duration::from_secs(75)).unwrap();
    eprintln!("stack and chromium up in {:?}", t0.elapsed());

    driver.goto(&app).unwrap();
    let url = driver.current_url().unwrap();
    assert!(url.starts_with(stack.issuer()), "{url}");
    log_in_as_alice(&driver, &app);

    // Chromium kept the session cookie (Secure is fine on localhost) and hides it from scripts.
    let cookies = driver.cookies().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "_oidc_session")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");
    let seen_by_script = driver
        .execute("return document.cookie;", json!([]))
        .unwrap();
    assert!(
        !seen_by_script
            .as_str()
            .unwrap_or_default()
            .contains("_oidc"),
        "{seen_by_script}"
    );

    // A reload stays logged in, without going back to the IdP.
    let idp_requests = stack.idp_log().unwrap().lines().count();
    driver.reload(Duration::from_secs(10)).unwrap();
    assert_eq!(driver.current_url().unwrap(), app);
    let h1 = driver.text(&driver.find("h1").unwrap()).unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
    assert_eq!(
        stack.idp_log().unwrap().lines().count(),
        idp_requests,
        "the reload went to the IdP"
    );
    driver
        .screenshot(&stack.dir().join("logged-in.png"))
        .unwrap();
    // The page's script reads who is logged in from `userinfo_path`, as from oauth2-proxy's.
    let (status, body) = who_is_logged_in(&driver);
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"user": "alice", "email": "alice@example.com", "preferredUsername": "alice"})
    );
    logout_from_another_site_asks_first(&stack, &driver, &app);
    // Logged out, a script on the site's own page (a bypass path) is told so.
    driver.goto(&site.url("/healthz")).unwrap();
    let (status, body) = who_is_logged_in(&driver);
    assert_eq!(status, 401, "{body}");
    driver.quit().unwrap();

    // With `SameSite=Strict` the login ends at the app too, logged in, in a browser of its own.
    let driver = WebDriver::start(stack.dir()).unwrap();
    let app = stack.site("strict").unwrap().url("/reports?x=1#top");
    driver.goto(&app).unwrap();
    log_in_as_alice(&driver, &app);
    let cookies = driver.cookies().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "_strict")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(session["sameSite"], "Strict", "{session}");
    driver.quit().unwrap();
    eprintln!("whole test {:?}", t0.elapsed());
}

/// What the site's `userinfo_path` answers a script on the current page: status and body.
fn who_is_logged_in(driver: &WebDriver) -> (u64, String) {
    let r = driver
        .execute(
            "const x = new XMLHttpRequest(); x.open('GET', '/oauth2/userinfo', false); x.send(); \
             return [x.status, x.responseText];",
            json!([]),
        )
        .unwrap();
    (r[0].as_u64().unwrap(), r[1].as_str().unwrap().to_string())
}

/// A page of another site (the echo app's own address, 127.0.0.1: the apps are on localhost) links to
/// `/logout`: Chromium says so in `Sec-Fetch-Site`, and the filter asks before it ends anything. The
/// page's button then logs out; a link on the site itself logs out at once.
fn logout_from_another_site_asks_first(stack: &Stack, driver: &WebDriver, app: &str) {
    let site = stack.site("web").unwrap();
    let logout = site.url("/logout");
    let click_logout_on = |page: &str| click_link_on(driver, page, &logout);
    let elsewhere = format!("{}/elsewhere", stack.echo_url());
    let session_cookie = || {
        // The bypass path shows the site's cookies without a login.
        driver.goto(&site.url("/healthz")).unwrap();
        let cookies = driver.cookies().unwrap();
        cookies.iter().any(|c| c["name"] == "_oidc_session")
    };

    click_logout_on(&elsewhere);
    assert_eq!(heading_at(driver, &logout), "Log out?");
    // Nothing ended: the app still greets alice.
    driver.goto(app).unwrap();
    let h1 = driver.text(&driver.find("h1").unwrap()).unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
    assert!(session_cookie());

    // The button logs out: the cookie is gone and the browser is at the IdP's end-session page.
    click_logout_on(&elsewhere);
    driver
        .wait_for_url(|u| u == logout, Duration::from_secs(10))
        .unwrap();
    let button = driver
        .wait_for("button[type=submit]", Duration::from_secs(5))
        .unwrap();
    driver.click(&button).unwrap();
    let at = driver
        .wait_for_url(|u| u.starts_with(stack.issuer()), Duration::from_secs(10))
        .unwrap();
    assert!(at.contains("/session/end"), "{at}");
    assert!(!session_cookie(), "the session cookie survived the logout");

    // Logged in again (the IdP's session was not ended: its own page asks to confirm), a link on the
    // site itself goes straight to the IdP.
    driver.goto(app).unwrap();
    let url = driver
        .wait_for_url(
            |u| u == app || u.starts_with(stack.issuer()),
            Duration::from_secs(10),
        )
        .unwrap();
    if url != app {
        log_in_as_alice(driver, app);
    }
    assert!(session_cookie());
    click_logout_on(&site.url("/somewhere"));
    let at = driver
        .wait_for_url(|u| u.starts_with(stack.issuer()), Duration::from_secs(10))
        .unwrap();
    assert!(at.contains("/session/end"), "{at}");
    assert!(!session_cookie(), "the session cookie survived the logout");
}

/// At the IdP's login form (where the app sent the browser), logs in as alice; asserts the browser
/// lands back on `app`, logged in.
fn log_in_as_alice(driver: &WebDriver, app: &str) {
    let h1 = driver
        .log_in_and_land("alice", app, Duration::from_secs(10))
        .unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
}

/// Opens `page` and follows a link on it to `href`, as a user's click would (the request then says
/// which site it came from).
fn click_link_on(driver: &WebDriver, page: &str, href: &str) {
    driver.goto(page).unwrap();
    driver.click_link_to(href).unwrap();
}

/// Waits for the browser to be at `url`, and returns the page's `h1`.
fn heading_at(driver: &WebDriver, url: &str) -> String {
    driver
        .wait_for_url(|u| u == url, Duration::from_secs(10))
        .unwrap();
    driver
        .wait_for("h1", Duration::from_secs(5))
        .and_then(|h| driver.text(&h))
        .unwrap()
}

/// One stack for the checks of the two pages the filter answers itself (`/login`'s page that reads
/// the fragment, `/logout`'s confirmation), behind a gateway configured as istiod renders
/// `meshConfig.pathNormalization: DECODE_AND_MERGE_SLASHES`.
fn pages_stack() -> &'static Stack {
    static STACK: std::sync::OnceLock<Stack> = std::sync::OnceLock::new();
    STACK.get_or_init(|| {
        let decoding = SiteSpec {
            hcm_overrides: harness::envoy::decode_and_merge_slashes(),
            ..SiteSpec::new("decoding")
        };
        let host_prefix = SiteSpec::new("hostprefix").filter(json!({"cookie_name": "__Host-oidc"}));
        let stack =
            Stack::start(StackSpec::new("browser-pages", vec![decoding, host_prefix])).unwrap();
        stack.wait_ready("decoding").unwrap();
        stack.wait_ready("hostprefix").unwrap();
        stack
    })
}

/// A `__Host-` cookie name, the strictest an operator can pick: Chromium keeps such a cookie only
/// with `Secure`, without `Domain` and with `Path=/`, the login-attempt cookie included (its path is
/// otherwise the callback's, and Chromium dropped it: every login ended on "This login has expired").
#[test]
fn chromium_logs_in_under_a_host_prefixed_cookie_name() {
    let stack = pages_stack();
    let site = stack.site("hostprefix").unwrap();
    let driver = WebDriver::start(stack.dir()).unwrap();
    let app = site.url("/dashboard");
    driver.goto(&app).unwrap();
    log_in_as_alice(&driver, &app);
    let cookies = driver.cookies().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "__Host-oidc")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(
        (&session["path"], &session["secure"]),
        (&json!("/"), &json!(true)),
        "{session}"
    );
    // The login-attempt cookie went with the callback.
    assert!(
        cookies
            .iter()
            .all(|c| !c["name"].as_str().unwrap_or_default().contains("_login_")),
        "{cookies:?}"
    );
}

/// Found in review: the page at `/login` went on to `location.pathname + "?" + …`, the path in the
/// address bar, which is not always the path the filter matched. A gateway that decodes `%2F` and
/// merges slashes (Istio's `DECODE_AND_MERGE_SLASHES`) hands the filter `/login` for
/// `//OTHER-HOST/..%2Flogin`; the page then runs `location.replace("//OTHER-HOST/..%2Flogin?…")`, a
/// scheme-relative URL: a link on the site's own address sends the browser to any host. (Here the
/// echo app at 127.0.0.1 stands for that host.)
#[test]
fn the_page_at_login_keeps_the_browser_on_the_site() {
    let stack = pages_stack();
    let site = stack.site("decoding").unwrap();
    let other = format!("{}/", stack.echo_url());
    let idp = format!("{}/", stack.issuer());
    let other_authority = other.strip_prefix("http://").unwrap().trim_end_matches('/');
    let link = site.url(&format!("//{other_authority}/..%2Flogin"));
    // Envoy hands the filter `/login`: its page, not the app.
    let page = harness::Browser::new()
        .get_with(
            &link,
            &[
                ("accept", harness::browser::HTML_ACCEPT),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<title>Logging in</title>"),
        "{}",
        page.body
    );

    let driver = WebDriver::start(stack.dir()).unwrap();
    driver.goto(&link).unwrap();
    let at = driver
        .wait_for_url(
            |u| u.starts_with(&idp) || u.starts_with(&other),
            Duration::from_secs(10),
        )
        .unwrap();
    driver.quit().unwrap();
    assert!(
        at.starts_with(&idp),
        "a link to {link} took the browser to another host: {at}"
    );
}

/// With scripts off, the page at `/login` moves on to the IdP, and the login lands, without the fragment (README: What each
/// request gets).
#[test]
fn without_scripts_the_page_at_login_moves_on_without_the_fragment() {
    let stack = pages_stack();
    let site = stack.site("decoding").unwrap();
    let driver = WebDriver::start_without_scripts(stack.dir()).unwrap();
    driver.goto(&site.url("/app?x=1#/alerts")).unwrap();
    let at = driver
        .wait_for_url(
            |u| u.starts_with(&format!("{}/", stack.issuer())),
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        at.contains("/auth?") || at.contains("/interaction/"),
        "{at}"
    );
    // The login lands on the page without its fragment (the login attempt's `rd` is sealed in its
    // cookie; the callback's redirect is where a kept fragment would show).
    let app = site.url("/app?x=1");
    let landed = driver.log_in_and_land("alice", &app, Duration::from_secs(10));
    let now_at = driver.current_url();
    driver.quit().unwrap();
    landed.unwrap_or_else(|e| panic!("did not land on {app}: {e:#}; at {now_at:?}"));
}

/// Another site's frame cannot show the `/logout` confirmation (README: the page may not be framed).
#[test]
fn another_sites_frame_cannot_show_the_logout_confirmation() {
    let stack = pages_stack();
    let site = stack.site("decoding").unwrap();
    let logout = site.url("/logout");
    let driver = WebDriver::start(stack.dir()).unwrap();
    // A top-level visit first: the page itself shows (and has its button) when not framed.
    click_link_on(&driver, &format!("{}/elsewhere", stack.echo_url()), &logout);
    assert_eq!(heading_at(&driver, &logout), "Log out?");

    let inside = framed_by_another_site(stack, &driver, &logout);
    driver.switch_to_frame(0).unwrap();
    let buttons = driver.find_all("button").unwrap();
    driver.switch_to_top().unwrap();
    driver.quit().unwrap();
    assert!(
        buttons.is_empty(),
        "the framed page has its button ({inside})"
    );
    assert_ne!(inside, logout, "the frame shows the confirmation page");
}

/// Opens a page of another site (the echo app's own address, 127.0.0.1: the apps are on localhost) that
/// frames `url`, and waits for the frame to load (or be refused): the address it shows.
fn framed_by_another_site(stack: &Stack, driver: &WebDriver, url: &str) -> String {
    driver
        .goto(&format!("{}/elsewhere", stack.echo_url()))
        .unwrap();
    driver
        .execute(
            "const f = document.createElement('iframe'); f.src = arguments[0]; \
             document.body.append(f);",
            json!([url]),
        )
        .unwrap();
    let mut inside = String::new();
    harness::process::poll(Duration::from_secs(10), || {
        driver.switch_to_frame(0)?;
        inside = driver
            .execute("return location.href", json!([]))?
            .as_str()
            .unwrap_or_default()
            .to_string();
        driver.switch_to_top()?;
        Ok((!inside.is_empty() && inside != "about:blank").then_some(()))
    })
    .unwrap();
    inside
}

/// A page of the site framed by another site's page (an embedded dashboard panel), without a session:
/// Chromium says `Sec-Fetch-Dest: iframe`, and the frame shows the filter's page whose link logs in in
/// the whole window, not the IdP's login form (which refuses to be framed). Its link takes the whole
/// window to the IdP.
#[test]
fn a_framed_page_without_a_session_logs_in_at_the_top() {
    let stack = pages_stack();
    let panel = stack.site("decoding").unwrap().url("/d/panel");
    let driver = WebDriver::start(stack.dir()).unwrap();
    framed_by_another_site(stack, &driver, &panel);
    driver.switch_to_frame(0).unwrap();
    let a = driver
        .wait_for("a[target=_top]", Duration::from_secs(5))
        .unwrap();
    let link = driver.attribute(&a, "href").unwrap().unwrap_or_default();
    assert!(
        link.ends_with("/login?rd=%2Fd%2Fpanel"),
        "the frame's link: {link}"
    );
    driver.click(&a).unwrap();
    driver.switch_to_top().unwrap();
    let at = driver
        .wait_for_url(|u| u.starts_with(stack.issuer()), Duration::from_secs(10))
        .unwrap();
    driver.quit().unwrap();
    assert!(at.contains("/auth") || at.contains("/interaction"), "{at}");
}

/// Opens `page` of the site, frames `inner` (a page of the same site, as an app shell frames its own
/// pages), waits for the frame to load, and makes it the context of the following commands.
fn into_own_frame(driver: &WebDriver, page: &str, inner: &str) {
    driver.goto(page).unwrap();
    driver
        .execute(
            "const f = document.createElement('iframe'); f.src = arguments[0]; \
             f.width = 800; f.height = 400; document.body.append(f);",
            json!([inner]),
        )
        .unwrap();
    harness::process::poll(Duration::from_secs(10), || {
        driver.switch_to_frame(0)?;
        let ready = driver.execute(
            "return location.href === arguments[0] && document.readyState === 'complete'",
            json!([inner]),
        );
        if !matches!(ready.as_ref().ok().and_then(|v| v.as_bool()), Some(true)) {
            driver.switch_to_top()?;
            return Ok(None);
        }
        Ok(Some(()))
    })
    .unwrap();
}

/// Waits until the current frame (or page) has left `from`, and returns where it is (Chromium's own
/// error page, where a page refused to be framed, is `chrome-error://…`).
fn frame_left(driver: &WebDriver, from: &str) -> String {
    let mut at = String::new();
    harness::process::poll(Duration::from_secs(10), || {
        let here = driver.execute(
            "return document.readyState === 'complete' ? location.href : ''",
            json!([]),
        );
        at = here
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok((!at.is_empty() && at != from).then_some(()))
    })
    .unwrap();
    at
}

/// Black-box finding (r46b): a form posted inside a frame, without a session, gets the `401` page whose
/// link logs in *inside the frame* (no `target="_top"`), though a framed GET gets the link that logs in in
/// the whole window (README, What each request gets: "a browser's navigation inside a frame … `401` page
/// with a link that logs in in the whole window (`target="_top"`) … an IdP's login page refuses to be
/// framed"). A form submission in a frame is such a navigation (`Sec-Fetch-Dest: iframe`); behind
/// Keycloak (`X-Frame-Options: SAMEORIGIN`, `frame-ancestors 'self'`) or Entra ID (`DENY`) its link
/// leaves the frame blank. Here the app frames one of its own pages (same origin), whose form posts.
#[test]
fn a_form_posted_inside_a_frame_without_a_session_logs_in_at_the_top() {
    let stack = pages_stack();
    let site = stack.site("decoding").unwrap();
    let driver = WebDriver::start(stack.dir()).unwrap();
    // The bypass path serves the app's pages without a login: the shell and its framed panel.
    let panel = site.url("/healthz/panel");
    into_own_frame(&driver, &site.url("/healthz/dashboard"), &panel);
    driver
        .execute(
            "const f = document.createElement('form'); f.method = 'POST'; f.action = '/panel/save'; \
             const i = document.createElement('input'); i.name = 'q'; i.value = 'v'; f.append(i); \
             document.body.append(f); f.submit();",
            json!([]),
        )
        .unwrap();
    let at = frame_left(&driver, &panel);
    assert_eq!(at, site.url("/panel/save"));
    let a = driver.wait_for("a", Duration::from_secs(5)).unwrap();
    let target = driver.attribute(&a, "target").unwrap();
    let href = driver.attribute(&a, "href").unwrap().unwrap_or_default();
    driver.click(&a).unwrap();
    // Where the frame and the whole window are now.
    std::thread::sleep(Duration::from_secs(2));
    let frame_now = driver
        .execute("return location.href", json!([]))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    driver.switch_to_top().unwrap();
    let top_now = driver.current_url().unwrap();
    driver.quit().unwrap();
    assert_eq!(
        target.as_deref(),
        Some("_top"),
        "the framed form's 401 page links to {href} inside the frame: after the click the frame is at \
         {frame_now} and the window still at {top_now}"
    );
    assert!(top_now.starts_with(stack.issuer()), "{top_now}");
}

/// Black-box finding (r46b): the user clicks "Log out" in a page of the site that the site itself frames
/// (an app shell that shows its pages in a frame). The filter takes a frame's `/logout` for one the user
/// may not have opened and answers the confirmation page, which refused every frame (`X-Frame-Options:
/// DENY`, `frame-ancestors 'none'`): Chromium showed its "refused to connect" page in the frame, nothing
/// offered a way on, and the user stayed logged in. In the site's own frame the page shows now, and its
/// button logs out in the whole window.
#[test]
fn a_logout_link_in_the_sites_own_frame_is_not_a_dead_end() {
    let stack = pages_stack();
    let site = stack.site("decoding").unwrap();
    let driver = WebDriver::start(stack.dir()).unwrap();
    let shell = site.url("/shell");
    driver.goto(&shell).unwrap();
    log_in_as_alice(&driver, &shell);
    let content = site.url("/content");
    into_own_frame(&driver, &shell, &content);
    // The framed page's own "Log out" link, clicked by the user.
    driver
        .execute(
            "const a = document.createElement('a'); a.href = '/logout'; a.id = 'logout'; \
             a.textContent = 'Log out'; document.body.prepend(a);",
            json!([]),
        )
        .unwrap();
    let link = driver.find("#logout").unwrap();
    driver.click(&link).unwrap();
    let at = frame_left(&driver, &content);
    // The frame shows the page that asks (Chromium's error page for a refused frame has no button).
    assert_eq!(
        at,
        site.url("/logout"),
        "a logout link clicked in the site's own frame"
    );
    let button = driver.wait_for("button", Duration::from_secs(5)).unwrap();
    driver.click(&button).unwrap();
    // Its button logs out in the whole window: on to the IdP's end-session page, which no frame shows.
    driver.switch_to_top().unwrap();
    driver
        .wait_for_url(|u| u.starts_with(stack.issuer()), Duration::from_secs(10))
        .unwrap();
    driver.goto(&site.url("/healthz")).unwrap();
    let logged_in = driver
        .cookies()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "_oidc_session");
    driver.quit().unwrap();
    assert!(
        !logged_in,
        "the session outlived the logout pressed in the frame"
    );
}

/// Black-box finding (r46b): a page the site frames in one of its own (a portal showing a dashboard
/// panel) logged in at the top and came back to the panel's address alone, filling the window. It now
/// comes back to the page that frames it, which shows the panel again.
#[test]
fn a_page_framed_by_the_sites_own_comes_back_to_the_page_that_frames_it() {
    let stack = pages_stack();
    let site = stack.site("decoding").unwrap();
    let driver = WebDriver::start(stack.dir()).unwrap();
    // A bypass path serves the portal without a login; the panel it frames needs one.
    let portal = site.url("/healthz/portal");
    into_own_frame(&driver, &portal, &site.url("/d/panel"));
    let a = driver
        .wait_for("a[target=_top]", Duration::from_secs(5))
        .unwrap();
    let link = driver.attribute(&a, "href").unwrap().unwrap_or_default();
    assert!(
        link.ends_with("/login?rd=%2Fhealthz%2Fportal"),
        "the frame's link: {link}"
    );
    driver.click(&a).unwrap();
    driver.switch_to_top().unwrap();
    let h1 = driver
        .log_in_and_land("alice", &portal, Duration::from_secs(10))
        .unwrap();
    driver.quit().unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
}
