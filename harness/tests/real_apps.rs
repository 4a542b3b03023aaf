//! A real app behind the gateway, not a mimic (the thirty-fourth review): Debian's Prometheus 2.42 (its
//! classic web UI: jQuery pages whose graph page queries `/api/v1/query` by XHR), installed by
//! `harness/setup.sh` under `.cache/prometheus`, behind a real Envoy with the filter and Istio's
//! `jwt_authn` + RBAC, driven in a real Chromium: the first visit logs in and the graph page runs its
//! query, the page's queries go on across renewals of an 8 s token, what the page shows once the session
//! has ended in another tab and that a reload comes back to the same query, the probes' bypass paths and
//! an API client's bearer token; at the site's root and under `/prometheus/` (`--web.external-url`).

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harness::process::Process;
use harness::{Browser, SiteSpec, Stack, StackSpec, WebDriver, sealed};
use serde_json::{Value, json};

const STACK: &str = "real-apps";
/// Prometheus at the site's root.
const ROOT: &str = "prom";
/// Prometheus under `PREFIX` (`--web.external-url=…/prometheus/`), the gateway routing only that.
const SUB: &str = "promsub";
const PREFIX: &str = "/prometheus";
/// The ID token's life; the filter renews it in its second half.
const TTL: u64 = 8;
const HOST: &str = "localhost";
/// A query whose address holds what a form encoding escapes (`+`, `&`, `=`, `%`) and what it leaves.
const EXPR: &str = r#"label_replace(up{job=~"prom.*|x"}, "r53c", "a+b&c=d%e f", "job", ".*") + 0"#;
/// What its result shows of the label it makes.
const SHOWN: &str = r#"r53c="a+b&c=d%e f""#;

/// The binary `harness/setup.sh` unpacks from Debian's package, with the web assets beside it.
fn prometheus_bin() -> PathBuf {
    harness::workspace_root().join(".cache/prometheus/usr/bin/prometheus")
}

struct World {
    stack: Stack,
    _prometheus: Vec<Process>,
}

/// A Prometheus on an OS-picked port that scrapes itself every second, its routes under `prefix`.
fn start_prometheus(dir: &Path, name: &str, prefix: &str) -> (Process, SocketAddr) {
    let bin = prometheus_bin();
    assert!(
        bin.exists(),
        "{} is missing: run harness/setup.sh",
        bin.display()
    );
    let root = bin.parent().unwrap().parent().unwrap().parent().unwrap();
    let port = harness::webdriver::free_port().unwrap();
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: prometheus\n    \
             metrics_path: {prefix}/metrics\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!(
            "--web.local-assets={}/",
            root.join("usr/share/prometheus/web").display()
        ))
        .arg(format!("--web.console.templates={}", dir.display()))
        .arg(format!("--web.console.libraries={}", dir.display()));
    if !prefix.is_empty() {
        // As a platform team serves it under a shared host: the routes move with the external URL.
        cmd.arg(format!("--web.external-url=http://{HOST}{prefix}/"));
    }
    let process = Process::spawn(name, cmd, &dir.join("prometheus.log")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = harness::local_agent(Duration::from_secs(2));
    // Ready, and with its first scrape of itself in: `up` has a result.
    harness::process::poll(Duration::from_secs(20), || {
        Ok(agent
            .get(&format!("http://{addr}{prefix}/api/v1/query?query=up"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .filter(|b| b.contains("\"job\":\"prometheus\""))
            .map(|_| ()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", process.log().unwrap_or_default()));
    (process, addr)
}

/// Envoy's access log of both sites: what went upstream.
fn access_log_path() -> PathBuf {
    harness::target_dir()
        .join("e2e")
        .join(STACK)
        .join("requests.log")
}

/// A site whose every route leads to the Prometheus at `addr` (only `PREFIX/` for `SUB`).
fn site(name: &str, addr: SocketAddr, prefix: &str) -> SiteSpec {
    let cluster = format!("outbound|{}||{name}.local", addr.port());
    let log = harness::json_access_log(
        &access_log_path(),
        json!({
            "site": name,
            "path": "%REQ(:PATH)%",
            "status": "%RESPONSE_CODE%",
            "user": "%REQ(X-AUTH-REQUEST-USER)%",
            "bearer": "%REQ(AUTHORIZATION):7%",
        }),
    );
    let route = json!({ "cluster": cluster, "timeout": "15s" });
    let routes = if prefix.is_empty() {
        json!([{ "match": { "prefix": "/" }, "route": route }])
    } else {
        // Another app (here: none) has the rest of the host.
        json!([
            { "match": { "prefix": format!("{prefix}/") }, "route": route },
            { "match": { "prefix": "/" }, "direct_response": { "status": 404, "body": { "inline_string": "not here\n" } } },
        ])
    };
    SiteSpec {
        clusters: vec![(cluster, addr)],
        hcm_overrides: json!({
            "access_log": log,
            "route_config": { "name": name, "virtual_hosts": [{ "name": name, "domains": ["*"], "routes": routes }] },
        }),
        ..SiteSpec::new(name)
    }
    .filter(json!({
        "refresh_margin": format!("{}s", TTL / 2),
        // What a platform engineer sets for the probes.
        "bypass_paths": ["/healthz", format!("{prefix}/-/healthy"), format!("{prefix}/-/ready")],
    }))
    .idp_client(json!({ "id_token_ttl": TTL }))
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // Beside the stack's directory, which the stack empties when it starts.
        let dir = harness::target_dir()
            .join("e2e")
            .join(format!("{STACK}-prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let (root, root_addr) = start_prometheus(&dir, "prometheus-root", "");
        let (sub, sub_addr) = start_prometheus(&dir, "prometheus-sub", PREFIX);
        let sites = vec![site(ROOT, root_addr, ""), site(SUB, sub_addr, PREFIX)];
        let stack = Stack::start(StackSpec::new(STACK, sites)).unwrap();
        stack.wait_keys_loaded(Duration::from_secs(75)).unwrap();
        World {
            stack,
            _prometheus: vec![root, sub],
        }
    })
}

fn url(site: &str, path: &str) -> String {
    world().stack.site(site).unwrap().url(path)
}

/// The prefix of `site`'s Prometheus.
fn prefix(site: &str) -> &'static str {
    if site == SUB { PREFIX } else { "" }
}

/// A deep link to the classic graph page's console tab with `expr`, and a fragment of the user's.
fn graph_link(site: &str, expr: &str) -> String {
    let q = harness::browser::form_urlencode(&[("g0.expr", expr)]);
    url(
        site,
        &format!(
            "{}/classic/graph?{}&g0.tab=1#r53c",
            prefix(site),
            q.trim_start_matches('?')
        ),
    )
}

/// Runs `script` in the page, retrying while a navigation in progress fails it.
fn run(driver: &WebDriver, script: &str, args: Value) -> Value {
    harness::process::poll(Duration::from_secs(10), || {
        Ok(driver.execute(script, args.clone()).ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}: {script}"))
}

/// What the graph page shows of its query: its error box's text, else the console table's.
#[derive(Debug)]
enum Shown {
    Error(String),
    Rows(String),
}

/// Waits until the graph page shows an error or a result row.
fn shown(driver: &WebDriver) -> Shown {
    let script = "const e = document.querySelector('.error'); \
         if (e && e.offsetParent !== null && e.textContent) return ['error', e.textContent]; \
         const t = document.querySelector('.console_table tbody'); \
         if (t && t.innerText.includes('{')) return ['rows', t.innerText]; return null;";
    let v = harness::process::poll(Duration::from_secs(15), || {
        Ok(driver
            .execute(script, json!([]))
            .ok()
            .filter(|v| !v.is_null()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: the page shows neither a result nor an error at {:?}: {}",
            driver.current_url().unwrap_or_default(),
            driver
                .execute("return document.body.innerHTML", json!([]))
                .unwrap_or_default()
        )
    });
    let text = v[1].as_str().unwrap().to_string();
    if v[0] == "error" {
        Shown::Error(text)
    } else {
        Shown::Rows(text)
    }
}

/// The user presses Execute again (the table emptied first, so what shows next is this query's).
fn execute_again(driver: &WebDriver) -> Shown {
    run(
        driver,
        "document.querySelectorAll('.console_table tbody').forEach((t) => t.innerHTML = ''); \
         document.querySelector('.execute_btn').click(); return true;",
        json!([]),
    );
    shown(driver)
}

/// The result rows of a query, or a panic naming what the page shows instead.
fn rows(s: Shown) -> String {
    match s {
        Shown::Rows(r) => r,
        Shown::Error(e) => panic!("the page shows an error instead of results: {e:?}"),
    }
}

/// Marks the page, so that `WebDriver::log_in_and_land_on` waits for another.
fn mark_page(driver: &WebDriver) {
    run(
        driver,
        "window.harnessOldPage = true; return true;",
        json!([]),
    );
}

/// The access log's requests of `site` whose path starts with `path`.
fn requests(site: &str, path: &str) -> Vec<Value> {
    harness::logged_requests(&access_log_path(), path)
        .into_iter()
        .filter(|v| v["site"] == site)
        .collect()
}

/// The whole journey in Chromium: a deep link logs in and lands on the same query, fragment kept;
/// the page's assets and its query XHR go through with the user's identity; its queries keep working
/// across renewals; once the session has ended in another tab, the next query shows an error that
/// says so; a reload logs in again and lands on the same query.
fn journey(site: &str) {
    let w = world();
    let driver = WebDriver::start(w.stack.dir()).unwrap();
    // PromQL in the query: `+`, `&`, `=`, `%`, quotes, braces, `|` (as the page itself writes them).
    let link = graph_link(site, EXPR);
    driver.goto(&link).unwrap();
    driver
        .log_in_and_land_on("alice", &link, Duration::from_secs(15))
        .unwrap();
    // The page ran its query through its XHR: the series of Prometheus's own target, with its label.
    let r = rows(shown(&driver));
    assert!(r.contains(SHOWN), "{r}");
    // Envoy writes its access log out every second.
    let xhr = format!("{}/api/v1/query?query=label_replace", prefix(site));
    harness::process::poll(Duration::from_secs(5), || {
        Ok(requests(site, &xhr)
            .iter()
            .any(|x| x["status"] == 200 && x["user"] == "alice" && x["bearer"] == "Bearer ")
            .then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: the query went upstream without the user: {:#?}",
            requests(site, &xhr)
        )
    });

    // Renewals while the page is open: each of its next queries renews the token when due.
    for _ in 0..2 {
        let before = driver.cookie_value(sealed::COOKIE).unwrap().unwrap();
        std::thread::sleep(Duration::from_secs(TTL / 2 + 1));
        let r = rows(execute_again(&driver));
        assert!(r.contains(SHOWN), "{r}");
        let after = driver.cookie_value(sealed::COOKIE).unwrap().unwrap();
        assert_ne!(before, after, "the page's query did not renew the session");
    }

    // The user logs out in another tab; this page's next query shows why it failed.
    run(&driver, "window.open('/logout'); return true;", json!([]));
    harness::process::poll(Duration::from_secs(10), || {
        Ok(driver
            .cookie_value(sealed::COOKIE)
            .unwrap()
            .is_none()
            .then_some(()))
    })
    .unwrap();
    match execute_again(&driver) {
        // Prometheus shows the `error` of a JSON answer (else the status text, and its spinner then
        // spins on: it reads the JSON's `data` when the request completes).
        Shown::Error(e) => assert_eq!(
            e, "Error executing query: unauthenticated",
            "the page's error does not say the session is gone"
        ),
        Shown::Rows(r) => panic!("results without a session: {r}"),
    }
    let spinning = run(
        &driver,
        "return document.querySelector('.spinner').style.display !== 'none';",
        json!([]),
    );
    assert_eq!(spinning, false, "the page still spins");
    // A reload logs in again and lands on the same query: the address the page was at.
    let here = driver.current_url().unwrap();
    assert!(here.contains("g0.expr=label_replace"), "{here}");
    mark_page(&driver);
    run(&driver, "location.reload(); return true;", json!([]));
    driver
        .log_in_and_land_on("alice", &here, Duration::from_secs(15))
        .unwrap();
    let r = rows(shown(&driver));
    assert!(r.contains(SHOWN), "{r}");
    driver.quit().unwrap();
}

#[test]
fn prometheus_at_the_root_through_login_renewals_and_logout() {
    journey(ROOT);
}

#[test]
fn prometheus_under_a_sub_path_through_login_renewals_and_logout() {
    journey(SUB);
}

/// The probes' bypass paths answer without a session; the API without one answers `401` JSON, with an
/// ID token of the client as a bearer token (an API client, Grafana's datasource given the user's ID
/// token) the query's result, and with an opaque access token jwt_authn's `401`.
fn api_clients(site: &str) {
    let p = prefix(site);
    let anonymous = Browser::new();
    for probe in ["/-/healthy", "/-/ready"] {
        let r = anonymous
            .get_with(&url(site, &format!("{p}{probe}")), &[("accept", "*/*")])
            .unwrap();
        assert_eq!(r.status, 200, "{probe}: {}", r.body);
        assert!(r.body.contains("Prometheus"), "{probe}: {}", r.body);
    }
    let query = url(site, &format!("{p}/api/v1/query?query=up"));
    let r = anonymous
        .get_with(&query, &[("accept", "application/json")])
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.body.contains("\"success\""), "{}", r.body);

    let b = Browser::new();
    b.login(&url(site, &format!("{p}/classic/graph")), "bob")
        .unwrap();
    let s = sealed::open_session(&sealed::session_cookies(&b, HOST)).unwrap();
    let bearer = format!("Bearer {}", s.id_token.expose());
    let api = Browser::new();
    let r = api
        .get_with(
            &query,
            &[("accept", "application/json"), ("authorization", &bearer)],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "success", "{v}");
    // Grafana's datasource queries by POST.
    let r = api
        .request(
            "POST",
            &url(site, &format!("{p}/api/v1/query")),
            &[
                ("accept", "application/json"),
                ("authorization", &bearer),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(b"query=up"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // Grafana's "Forward OAuth Identity" forwards its own access token, which this IdP (as many) makes
    // opaque: jwt_authn refuses it, in plain text (`Jwt is not in the form of …`), and Prometheus is
    // not reached.
    let site_of = world().stack.site(site).unwrap();
    let (status, grant) = harness::idp::token_request(
        world().stack.issuer(),
        &site_of.client_id,
        &site_of.client_secret,
        harness::idp::ClientAuth::Basic,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", s.refresh_token.as_ref().unwrap().expose()),
        ],
    )
    .unwrap();
    assert_eq!(status, 200, "{grant}");
    let access = format!("Bearer {}", grant["access_token"].as_str().unwrap());
    let r = api
        .get_with(
            &query,
            &[("accept", "application/json"), ("authorization", &access)],
        )
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.starts_with("Jwt "), "{}", r.body);
}

#[test]
fn prometheus_probes_and_api_clients_at_the_root() {
    api_clients(ROOT);
}

#[test]
fn prometheus_probes_and_api_clients_under_a_sub_path() {
    api_clients(SUB);
}

/// The classic UI's bookmarks of before 2.x name their graphs as JSON in the fragment
/// (`/graph#[{"expr":…}]`), which the page turns into its query once loaded: such a bookmark survives the
/// login (quotes and brackets in the fragment included) and shows its query's result.
#[test]
fn an_old_prometheus_bookmark_with_its_graphs_in_the_fragment_survives_the_login() {
    let w = world();
    let driver = WebDriver::start(w.stack.dir()).unwrap();
    let link = url(ROOT, "/classic/graph#[{\"expr\":\"up\",\"tab\":1}]");
    driver.goto(&link).unwrap();
    driver
        .log_in_and_land_on(
            "alice",
            &url(ROOT, "/classic/graph?g0.expr=up&g0.tab=1"),
            Duration::from_secs(15),
        )
        .unwrap();
    let r = rows(shown(&driver));
    assert!(r.contains("job=\"prometheus\""), "{r}");
    driver.quit().unwrap();
}

/// Paths that start with a probe's bypass path and lead, in some reading, to the API: none reaches
/// Prometheus's API without a session (seen: `401` JSON from the filter for each, and Prometheus's own
/// `404` for the doubly encoded dot segments, which it does not decode twice).
#[test]
fn no_way_from_a_probes_bypass_path_into_the_api() {
    let anonymous = Browser::new();
    for site in [ROOT, SUB] {
        let p = prefix(site);
        for tail in [
            "/-/healthy/../../api/v1/query?query=up",
            "/-/healthy/..%2F..%2Fapi%2Fv1%2Fquery?query=up",
            "/-/healthy%2F..%2F..%2Fapi%2Fv1%2Fquery?query=up",
            "/-/ready/%2e%2e/%2e%2e/api/v1/query?query=up",
            "/-/ready/..;/..;/api/v1/query?query=up",
            "/-/ready/..%5C..%5Capi%5Cv1%5Cquery?query=up",
            "/-/healthy/%252e%252e/%252e%252e/api/v1/query?query=up",
            "/-/HEALTHY/../../api/v1/query?query=up",
            "/-//healthy/../../api/v1/query?query=up",
        ] {
            let target = url(site, &format!("{p}{tail}"));
            let r = anonymous
                .request("GET", &target, &[("accept", "application/json")], None)
                .unwrap();
            assert!(
                !r.body.contains("\"success\""),
                "{target}: {} {}",
                r.status,
                r.body
            );
        }
    }
}
