//! Several replicas of the gateway, as an ingress gateway's Deployment runs them: two Envoys with the same
//! configuration, cookie keys and client secrets, each with its own memory (revocations, cached sessions,
//! renewals), behind a layer-4 load balancer that sends each new TCP connection to the next replica in
//! turn (a cloud's network load balancer in front of the pods). What README's Limits say of replicas,
//! tested: a browser over HTTP/2 stays on one replica; over HTTP/1.1 its requests spread over both, and
//! its login and session hold whichever replica answers; two replicas that renew one session both ask the
//! IdP, which an IdP that rotates refresh tokens and revokes a reused one answers by ending the session.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use harness::{Browser, Envoy, RoundRobin, SiteSpec, Stack, StackSpec, WebDriver};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);
/// The site behind the load balancer, over HTTPS.
const SHOP: &str = "shop";
/// Plain-HTTP sites whose ID tokens live 6 s and renew in their last 3: one at an IdP client that
/// rotates refresh tokens, one at a client that does not.
const ROTATING: &str = "rotating";
const STEADY: &str = "steady";

struct Replicas {
    stack: Stack,
    second: Envoy,
    /// The load balancer's port: the shop's public address.
    port: u16,
    _balancer: RoundRobin,
}

fn replicas() -> &'static Replicas {
    static R: OnceLock<Replicas> = OnceLock::new();
    R.get_or_init(|| {
        // The public address is the load balancer's: the IdP sends the browser back there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let public = format!("https://localhost:{port}");
        let shop = SiteSpec {
            tls: true,
            ..SiteSpec::new(SHOP)
                .filter(json!({
                    "redirect_uri": format!("{public}/oauth2/callback"),
                    "post_logout_redirect_uri": format!("{public}/"),
                }))
                .idp_client(json!({"post_logout_redirect_uris": [format!("{public}/")]}))
        };
        let renewing = |name: &str, rotate: bool| {
            SiteSpec::new(name)
                .filter(json!({"refresh_margin": "3s"}))
                .idp_client(json!({"id_token_ttl": 6, "rotate_refresh_token": rotate}))
        };
        let stack = Stack::start(StackSpec::new(
            "replicas",
            vec![shop, renewing(ROTATING, true), renewing(STEADY, false)],
        ))
        .unwrap();
        let second = stack.start_replica("second").unwrap();
        let first_port = stack.site(SHOP).unwrap().port;
        let second_port = second.listener_port(SHOP).unwrap();
        let balancer = RoundRobin::bind(
            SocketAddr::from(([127, 0, 0, 1], port)),
            vec![
                SocketAddr::from(([127, 0, 0, 1], first_port)),
                SocketAddr::from(([127, 0, 0, 1], second_port)),
            ],
        )
        .unwrap();
        stack.wait_keys_loaded(Duration::from_secs(75)).unwrap();
        let r = Replicas {
            stack,
            second,
            port,
            _balancer: balancer,
        };
        // The second replica's keys too.
        harness::process::poll(Duration::from_secs(75), || {
            let log = r.second.log()?;
            let loaded = |site: &str| {
                let by = format!("{}: oidc-filter: ", harness::envoy::ecds_name(site));
                log.lines()
                    .filter(|l| l.contains(&by) && l.contains(" signing keys loaded ("))
                    .count()
            };
            // On the main thread and each of the two workers.
            Ok([SHOP, ROTATING, STEADY]
                .iter()
                .all(|s| loaded(s) >= 3)
                .then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e:#}: {}", r.second.log().unwrap_or_default()));
        r
    })
}

impl Replicas {
    /// The shop's public URL (the load balancer's) for `path`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The access logs of the two replicas.
    fn logs(&self) -> [PathBuf; 2] {
        [
            self.stack.dir().join("access.log"),
            self.stack.dir().join("second").join("access.log"),
        ]
    }

    /// For each replica, the paths starting with `prefix` it answered `200`.
    fn served(&self, prefix: &str) -> [BTreeSet<String>; 2] {
        self.logs().map(|log| served_in(&log, prefix))
    }

    /// `url` of site `site` on the second replica.
    fn second_url(&self, site: &str, path: &str) -> String {
        format!(
            "http://localhost:{}{path}",
            self.second.listener_port(site).unwrap()
        )
    }
}

/// The paths starting with `prefix` that the access log at `log` shows answered `200`.
fn served_in(log: &Path, prefix: &str) -> BTreeSet<String> {
    harness::served_requests(log)
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(prefix) && r.status == 200)
        .map(|r| r.path)
        .collect()
}

/// A Chromium that trusts the stack's certificate, with more `args`.
fn chromium(args: &[&str]) -> WebDriver {
    let r = replicas();
    WebDriver::start_with_args(
        r.stack.dir(),
        r.stack.tls().unwrap(),
        &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    )
    .unwrap()
}

/// Logs `driver` in as alice at the shop's `path`, through the load balancer.
fn log_in(driver: &WebDriver, path: &str) -> String {
    let r = replicas();
    let page = r.url(path);
    driver.goto(&page).unwrap();
    driver.log_in_and_land_on("alice", &page, WAIT).unwrap();
    assert_eq!(
        driver.text(&driver.find("h1").unwrap()).unwrap(),
        "Hello, alice@example.com"
    );
    page
}

/// Over HTTP/2, which browsers speak to a TLS gateway, a browser's requests all go over one connection,
/// so to one replica (README, Limits): its login, its pages and a page's many parallel calls.
#[test]
fn a_browser_over_http2_stays_on_one_replica() {
    let r = replicas();
    let driver = chromium(&[]);
    log_in(&driver, "/h2/home");
    let statuses = driver
        .execute(
            "return Promise.all([...Array(12).keys()].map((i) => \
               fetch('/h2/call/' + i, {headers: {accept: 'application/json'}}).then((r) => r.status)));",
            json!([]),
        )
        .unwrap();
    assert_eq!(statuses, json!(vec![200; 12]));
    let served = harness::process::poll(WAIT, || {
        let s = r.served("/h2/");
        Ok((s[0].len() + s[1].len() >= 13).then_some(s))
    })
    .unwrap();
    assert!(
        served.iter().any(BTreeSet::is_empty),
        "both replicas served this browser: {served:?}"
    );
    driver.quit().unwrap();
}

/// Over HTTP/1.1 a browser opens several connections, which the load balancer spreads over the replicas:
/// the login started on one may come back to the other, the session opens on either (one cookie key),
/// and a page's parallel calls all get through as the user.
#[test]
fn a_browser_over_http1_spreads_over_the_replicas_and_its_login_holds() {
    let r = replicas();
    let driver = chromium(&["--disable-http2"]);
    log_in(&driver, "/h1/home");
    let calls = driver
        .execute(
            "return Promise.all([...Array(24).keys()].map((i) => \
               fetch('/h1/call/' + i, {headers: {accept: 'application/json'}}) \
                 .then((r) => r.json()).then((j) => [j.path, j.headers['x-auth-request-user']])));",
            json!([]),
        )
        .unwrap();
    for (i, call) in calls.as_array().unwrap().iter().enumerate() {
        assert_eq!(call, &json!([format!("/h1/call/{i}"), "alice"]), "{calls}");
    }
    let served = harness::process::poll(WAIT, || {
        let s = r.served("/h1/");
        Ok((s[0].len() + s[1].len() >= 25).then_some(s))
    })
    .unwrap();
    assert!(
        served.iter().all(|s| !s.is_empty()),
        "one replica served all of this browser's requests: {served:?}"
    );
    driver.quit().unwrap();
}

/// What a user's session meets when two replicas renew it: `old` (the cookie before), renewed by the
/// first replica, then sent to the second (a browser's other connection that had not taken the renewed
/// cookie yet); then the first's renewed session, when its token is due again. The statuses of the three
/// answers.
fn renewed_on_both_replicas(site: &str) -> [u16; 3] {
    let r = replicas();
    let first = r.stack.site(site).unwrap();
    let b = Browser::logged_in(&first.url("/"), "alice").unwrap();
    let old = b.cookie("localhost", "_oidc_session").unwrap();
    let json = [("accept", "application/json")];
    // Into the last 3 s of the token's 6.
    std::thread::sleep(Duration::from_millis(3500));
    let renewed = b.get_with(&first.url("/renew/1"), &json).unwrap();
    assert!(
        renewed
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("_oidc_session=") && !c.contains("Max-Age=0")),
        "{site}: not renewed: {renewed:?}"
    );
    let other = Browser::new();
    other.set_cookie("localhost", "_oidc_session", &old);
    let second = other
        .get_with(&r.second_url(site, "/renew/2"), &json)
        .unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    let again = b.get_with(&first.url("/renew/3"), &json).unwrap();
    [renewed.status, second.status, again.status]
}

/// An IdP that rotates refresh tokens and revokes the whole grant when an old one comes again (the real
/// oidc-provider does, with no grace): the second replica's renewal is refused, the grant is revoked, and
/// the session the first replica renewed ends at its next renewal: the user logs in again (README, Limits:
/// give such an IdP a grace for reuse, or leave rotation off). Without rotation both replicas renew, and
/// the session goes on.
#[test]
fn two_replicas_renewing_one_session_end_it_where_the_idp_rotates_refresh_tokens() {
    let _ = replicas();
    let (rotating, steady) = std::thread::scope(|s| {
        let rotating = s.spawn(|| renewed_on_both_replicas(ROTATING));
        let steady = renewed_on_both_replicas(STEADY);
        (rotating.join().unwrap(), steady)
    });
    assert_eq!(rotating, [200, 401, 401]);
    assert_eq!(steady, [200, 200, 200]);
}
