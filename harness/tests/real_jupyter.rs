//! A second real app behind the gateway (the thirty-fifth review): Jupyter Server 2.x with a real
//! ipykernel (`harness/jupyter-requirements.txt`, installed by `harness/setup.sh` in a virtualenv of its
//! own under `.cache/jupyter`), under `/jupyter/` (`--ServerApp.base_url`), its own login off as platform
//! teams run it when the gateway does the login, behind a real Envoy with the filter and Istio's
//! `jwt_authn` + RBAC, driven in a real Chromium: a deep link logs in, the page's script creates a kernel
//! through the REST API with Jupyter's `_xsrf` check on, runs code over the kernel's WebSocket, keeps
//! running it across renewals of an 8 s token and reconnects; once the session has ended in another tab
//! the reconnect and the REST calls are refused, and a reload brings back the same kernel, its variables
//! kept. Besides: the contents API's large JSON upload on a renewal, the download, a terminal, and a
//! link to a file followed after the session ended (Jupyter serves files only to its own pages, by
//! `Referer`: the login in between keeps it), and a route that caps a stream's life closing the kernel's
//! socket, so that its reconnect is judged again (refused after a logout elsewhere).

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

const STACK: &str = "real-jupyter";
const SITE: &str = "jupyter";
const PREFIX: &str = "/jupyter";
/// The ID token's life; the filter renews it in its second half.
const TTL: u64 = 8;
const HOST: &str = "localhost";
/// The life of a stream on the capped route, in seconds.
const CAP: u64 = 3;

/// The virtualenv `harness/setup.sh` makes from `harness/jupyter-requirements.txt`.
fn jupyter_bin() -> PathBuf {
    harness::workspace_root().join(".cache/jupyter/bin/jupyter")
}

struct World {
    stack: Stack,
    _jupyter: Process,
}

/// Jupyter Server on an OS-picked port, under `PREFIX/`, its own token and password off, its files in
/// `dir/root` (and its configuration, data and runtime directories in `dir`, none of the user's).
fn start_jupyter(dir: &Path) -> (Process, SocketAddr) {
    let bin = jupyter_bin();
    assert!(
        bin.exists(),
        "{} is missing: run harness/setup.sh",
        bin.display()
    );
    let port = harness::webdriver::free_port().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("notes.txt"), "the user's notes\n").unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("server")
        .arg("--no-browser")
        .arg("--allow-root")
        .arg("--ip=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--port-retries=0")
        .arg(format!("--ServerApp.base_url={PREFIX}/"))
        .arg("--IdentityProvider.token=")
        .arg("--ServerApp.password=")
        .arg(format!("--ServerApp.root_dir={}", root.display()));
    for (var, sub) in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
    ] {
        cmd.env(var, dir.join(sub));
    }
    cmd.env("JUPYTER_PLATFORM_DIRS", "1")
        .env("SHELL", "/bin/sh");
    let process = Process::spawn("jupyter", cmd, &dir.join("jupyter.log")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = harness::local_agent(Duration::from_secs(2));
    harness::process::poll(Duration::from_secs(30), || {
        Ok(agent
            .get(&format!("http://{addr}{PREFIX}/api/status"))
            .call()
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", process.log().unwrap_or_default()));
    (process, addr)
}

/// Envoy's access log: what went upstream.
fn access_log_path() -> PathBuf {
    harness::target_dir()
        .join("e2e")
        .join(STACK)
        .join("requests.log")
}

fn site(addr: SocketAddr) -> SiteSpec {
    let cluster = format!("outbound|{}||{SITE}.local", addr.port());
    let log = harness::json_access_log(
        &access_log_path(),
        json!({
            "path": "%REQ(:PATH)%",
            "status": "%RESPONSE_CODE%",
            "upstream": "%UPSTREAM_HOST%",
            "user": "%REQ(X-AUTH-REQUEST-USER)%",
            "cookie": "%REQ(COOKIE)%",
        }),
    );
    // A VirtualService's route: no timeout (a kernel's WebSocket lives for hours).
    let route = json!({ "cluster": cluster, "timeout": "0s" });
    // A route that caps a stream's life, as a gateway may cap its WebSockets' (here by a marker in the
    // query, which Jupyter ignores).
    let capped = json!({ "cluster": cluster, "timeout": "0s",
        "max_stream_duration": { "max_stream_duration": format!("{CAP}s") } });
    let routes = json!([
        { "match": { "prefix": format!("{PREFIX}/"), "query_parameters": [{ "name": "capped", "present_match": true }] },
          "route": capped },
        { "match": { "prefix": format!("{PREFIX}/") }, "route": route },
        { "match": { "prefix": "/" }, "direct_response": { "status": 404, "body": { "inline_string": "not here\n" } } },
    ]);
    SiteSpec {
        clusters: vec![(cluster, addr)],
        hcm_overrides: json!({
            "access_log": log,
            "route_config": { "name": SITE, "virtual_hosts": [{ "name": SITE, "domains": ["*"], "routes": routes }] },
        }),
        ..SiteSpec::new(SITE)
    }
    .filter(json!({ "refresh_margin": format!("{}s", TTL / 2) }))
    .idp_client(json!({ "id_token_ttl": TTL }))
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // Beside the stack's directory, which the stack empties when it starts.
        let dir = harness::target_dir()
            .join("e2e")
            .join(format!("{STACK}-app"));
        let (jupyter, addr) = start_jupyter(&dir);
        let stack = Stack::start(StackSpec::new(STACK, vec![site(addr)])).unwrap();
        stack.wait_keys_loaded(Duration::from_secs(75)).unwrap();
        World {
            stack,
            _jupyter: jupyter,
        }
    })
}

fn url(path: &str) -> String {
    world().stack.site(SITE).unwrap().url(path)
}

/// What the page's scripts use, defined once per document: Jupyter's REST API as JupyterLab calls it
/// (`X-XSRFToken` from the `_xsrf` cookie) and its kernel protocol over the WebSocket (JSON messages,
/// no subprotocol, as the classic notebook and older JupyterLabs speak it).
const LIB: &str = r#"
if (!window.jt) {
  const xsrf = () => (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
  const api = async (method, path, body, noXsrf) => {
    const headers = { 'Content-Type': 'application/json' };
    if (!noXsrf) headers['X-XSRFToken'] = xsrf();
    const r = await fetch('/jupyter/api/' + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.status, type: r.headers.get('content-type'), text: await r.text() };
  };
  const socket = (path, onmessage) => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}/jupyter/${path}`);
    const events = [];
    ws.onmessage = onmessage;
    ws.onerror = () => events.push('error');
    ws.onopen = () => { events.push('open'); resolve({ ok: true, ws, events }); };
    ws.onclose = (e) => {
      events.push(`close ${e.code} ${JSON.stringify(e.reason)} clean=${e.wasClean}`);
      resolve({ ok: false, events });
    };
  });
  const connect = async (kernel, extra) => {
    const replies = {};
    const c = await socket(`api/kernels/${kernel}/channels?session_id=r53d-${Math.random()}${extra || ''}`, (e) => {
      const m = JSON.parse(e.data);
      const p = m.parent_header && m.parent_header.msg_id;
      if (p) (replies[p] ||= []).push(m);
    });
    c.replies = replies;
    return c;
  };
  const execute = (c, code) => new Promise((resolve) => {
    const id = 'r53d-' + Math.random();
    c.ws.send(JSON.stringify({
      header: { msg_id: id, username: '', session: 'r53d', msg_type: 'execute_request', version: '5.3',
                date: new Date().toISOString() },
      parent_header: {}, metadata: {}, channel: 'shell', buffers: [],
      content: { code, silent: false, store_history: false, user_expressions: {}, allow_stdin: false,
                 stop_on_error: true } }));
    const t0 = Date.now();
    const tick = () => {
      const ms = c.replies[id] || [];
      const out = ms.find((m) => m.msg_type === 'execute_result' || m.msg_type === 'stream' ||
                                 m.msg_type === 'error');
      const idle = ms.find((m) => m.msg_type === 'status' && m.content.execution_state === 'idle');
      if (out && idle) {
        return resolve(out.msg_type === 'execute_result' ? out.content.data['text/plain']
          : out.msg_type === 'stream' ? out.content.text : 'error: ' + out.content.evalue);
      }
      if (c.ws.readyState > 1) return resolve('socket closed: ' + c.events.join(', '));
      if (Date.now() - t0 > 15000) return resolve('no answer: ' + ms.map((m) => m.msg_type));
      setTimeout(tick, 50);
    };
    tick();
  });
  window.jt = { xsrf, api, socket, connect, execute };
}
"#;

/// Runs `body` (the body of an async function, with `jt` defined) in the page, retrying while a
/// navigation in progress fails it; its result.
fn run(driver: &WebDriver, body: &str) -> Value {
    let script = format!("{LIB}\nreturn (async () => {{ {body} }})();");
    harness::process::poll(Duration::from_secs(20), || {
        Ok(driver.execute(&script, json!([])).ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}: {body}"))
}

/// The access log's requests whose path starts with `path`.
fn requests(path: &str) -> Vec<Value> {
    harness::logged_requests(&access_log_path(), path)
}

/// A Chromium that opened `link`, logged in at the IdP as alice and landed back on it.
fn logged_in_at(w: &World, link: &str) -> WebDriver {
    let driver = WebDriver::start(w.stack.dir()).unwrap();
    driver.goto(link).unwrap();
    driver
        .log_in_and_land_on("alice", link, Duration::from_secs(15))
        .unwrap();
    driver
}

/// The whole journey of a notebook user in Chromium.
#[test]
fn a_kernel_runs_code_through_login_renewals_reconnects_and_a_logout_elsewhere() {
    let w = world();
    // 1. A deep link logs in at the IdP and lands on the same address, its fragment kept.
    let link = url(&format!("{PREFIX}/?from=r53d#work"));
    let driver = logged_in_at(w, &link);
    let h1 = run(&driver, "return document.querySelector('h1').textContent;");
    assert_eq!(h1, "A Jupyter Server is running.");
    // Jupyter's own cookies sit beside the filter's.
    let names: Vec<String> = driver
        .cookies()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "_xsrf"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("username-")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == sealed::COOKIE), "{names:?}");

    // 2. Jupyter's XSRF check is on and sees its cookie: a POST without the header is refused by
    // Jupyter, with it a kernel starts; its WebSocket runs code.
    let refused = run(&driver, "return await jt.api('POST', 'kernels', {}, true);");
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(
        refused["text"].as_str().unwrap().contains("_xsrf"),
        "{refused}"
    );
    let kernel = run(
        &driver,
        "const r = await jt.api('POST', 'kernels', { name: 'python3' }); \
         if (r.status !== 201) return r; window.jtKernel = JSON.parse(r.text).id; \
         window.jtConn = await jt.connect(window.jtKernel); \
         if (!window.jtConn.ok) return window.jtConn.events; \
         return [window.jtKernel, await jt.execute(window.jtConn, 'a = 6 * 7\\na')];",
    );
    assert_eq!(kernel[1], "42", "{kernel}");
    let id = kernel[0].as_str().unwrap().to_string();
    // Jupyter's own (anonymous) identity of this browser, in its `username-…` cookie.
    let me = || {
        let r = run(&driver, "return await jt.api('GET', 'me');");
        assert_eq!(r["status"], 200, "{r}");
        let v: Value = serde_json::from_str(r["text"].as_str().unwrap()).unwrap();
        v["identity"]["username"].as_str().unwrap().to_string()
    };
    let identity = me();
    // 3. Renewals while the kernel's socket stays open: the socket goes on; the page's next REST call
    // renews the session.
    let before = driver.cookie_value(sealed::COOKIE).unwrap().unwrap();
    std::thread::sleep(Duration::from_secs(TTL / 2 + 1));
    let r = run(&driver, "return await jt.execute(window.jtConn, 'a + 1');");
    assert_eq!(r, "43");
    let r = run(
        &driver,
        "return await jt.api('GET', 'kernels/' + window.jtKernel);",
    );
    assert_eq!(r["status"], 200, "{r}");
    let renewed = driver.cookie_value(sealed::COOKIE).unwrap().unwrap();
    assert_ne!(before, renewed, "the REST call did not renew the session");
    assert_eq!(
        me(),
        identity,
        "Jupyter's identity cookie did not survive the renewal"
    );
    // Past the renewed token's whole life with only the socket in use: it still runs code, and a
    // reconnect (JupyterLab's after a network blip) renews the session on its handshake.
    std::thread::sleep(Duration::from_secs(TTL + 1));
    let r = run(
        &driver,
        "const old = await jt.execute(window.jtConn, 'a + 2'); window.jtConn.ws.close(); \
         window.jtConn = await jt.connect(window.jtKernel); \
         if (!window.jtConn.ok) return [old, window.jtConn.events]; \
         return [old, await jt.execute(window.jtConn, 'a + 3')];",
    );
    assert_eq!(
        r,
        json!(["44", "45"]),
        "the reconnect after the token expired failed"
    );
    let after = driver.cookie_value(sealed::COOKIE).unwrap().unwrap();
    assert_ne!(
        renewed, after,
        "the WebSocket's handshake did not renew the session"
    );

    // The first socket's handshake went up as the user (Envoy logs a WebSocket once it has closed, and
    // writes its log every second).
    let channels = format!("{PREFIX}/api/kernels/{id}/channels");
    harness::process::poll(Duration::from_secs(5), || {
        Ok(requests(&channels)
            .iter()
            .any(|r| r["status"] == 101 && r["user"] == "alice")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:#?}", requests(&channels)));
    // With Jupyter's cookies, none of the filter's.
    for r in requests(&channels) {
        let cookie = r["cookie"].as_str().unwrap_or_default();
        assert!(
            cookie.contains("_xsrf=") && cookie.contains("username-"),
            "{r}"
        );
        assert!(
            !cookie.contains(sealed::COOKIE),
            "the session cookie went upstream: {r}"
        );
    }

    // 4. The user logs out in another tab.
    run(&driver, "window.open('/logout'); return true;");
    harness::process::poll(Duration::from_secs(10), || {
        Ok(driver
            .cookie_value(sealed::COOKIE)
            .unwrap()
            .is_none()
            .then_some(()))
    })
    .unwrap();
    // The open socket is the app's (README, Limits): it still runs code.
    let r = run(&driver, "return await jt.execute(window.jtConn, 'a');");
    assert_eq!(r, "42", "the socket opened before the logout");
    // A reconnect is refused: the page sees its socket fail without an answer of the app's.
    let r = run(
        &driver,
        "window.jtConn.ws.close(); const c = await jt.connect(window.jtKernel); \
         return [c.ok, c.events];",
    );
    assert_eq!(r[0], false, "a reconnect after the logout opened: {r}");
    assert_eq!(r[1], json!(["error", "close 1006 \"\" clean=false"]), "{r}");
    // REST calls get the filter's 401 JSON, before Jupyter's XSRF check.
    for call in [
        "jt.api('GET', 'kernels/' + window.jtKernel)",
        "jt.api('POST', 'kernels', { name: 'python3' })",
        "jt.api('PUT', 'contents/lost.txt', { type: 'file', format: 'text', content: 'work' })",
        // JupyterLab's upload of a 4 MiB file: answered before its body is read.
        "jt.api('PUT', 'contents/lost.txt', { type: 'file', format: 'text', content: 'x'.repeat(4 << 20) })",
    ] {
        let r = run(&driver, &format!("return await {call};"));
        assert_eq!(r["status"], 401, "{call}: {r}");
        assert_eq!(r["type"], "application/json", "{call}: {r}");
        let body: Value = serde_json::from_str(r["text"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"], "unauthenticated", "{call}: {r}");
    }
    // None of them reached Jupyter: nothing was saved.
    assert!(!w_root().join("lost.txt").exists());
    // The user opens the site in another tab, which logs in again (the IdP's session still stands:
    // its logout asks to confirm); this page's unsaved work saves then, and its kernel's socket opens.
    run(&driver, "window.open('/jupyter/?again'); return true;");
    harness::process::poll(Duration::from_secs(15), || {
        Ok(driver.cookie_value(sealed::COOKIE).unwrap().map(|_| ()))
    })
    .unwrap();
    let r = run(
        &driver,
        "return await jt.api('PUT', 'contents/kept.txt', { type: 'file', format: 'text', content: 'work' });",
    );
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(
        std::fs::read_to_string(w_root().join("kept.txt")).unwrap(),
        "work"
    );
    assert_eq!(me(), identity);

    // 5. A reload lands on the same page; the kernel is still there, its variables kept: nothing of the
    // user's work was lost with the session.
    let here = driver.current_url().unwrap();
    run(
        &driver,
        "window.harnessOldPage = true; location.reload(); return true;",
    );
    driver
        .log_in_and_land_on("alice", &here, Duration::from_secs(15))
        .unwrap();
    let r = run(
        &driver,
        &format!(
            "window.jtConn = await jt.connect('{id}'); \
             if (!window.jtConn.ok) return window.jtConn.events; \
             return await jt.execute(window.jtConn, 'a');"
        ),
    );
    assert_eq!(r, "42", "the kernel after logging in again");
    driver.quit().unwrap();
}

/// Jupyter's files.
fn w_root() -> PathBuf {
    harness::target_dir()
        .join("e2e")
        .join(format!("{STACK}-app"))
        .join("root")
}

/// A terminal (jupyter_server_terminals) in the page: created through the REST API, its WebSocket
/// runs a shell command as the user types it.
#[test]
fn a_terminal_runs_a_command_over_its_websocket() {
    let w = world();
    let link = url(&format!("{PREFIX}/"));
    let driver = logged_in_at(w, &link);
    let r = run(
        &driver,
        "const r = await jt.api('POST', 'terminals'); if (r.status !== 200) return r; \
         const name = JSON.parse(r.text).name; let out = ''; \
         const c = await jt.socket(`terminals/websocket/${name}`, (e) => { \
           const m = JSON.parse(e.data); if (m[0] === 'stdout') out += m[1]; }); \
         if (!c.ok) return c.events; \
         c.ws.send(JSON.stringify(['stdin', 'echo r53d$((6*7))\\r'])); \
         for (let i = 0; i < 100 && !out.includes('r53d42'); i++) await new Promise((f) => setTimeout(f, 50)); \
         c.ws.close(); return out.includes('r53d42') ? 'ran' : out;",
    );
    assert_eq!(r, "ran", "{r}");

    // Jupyter's own logout page says it cannot log out (its login is off), rather than pretending to:
    // the gateway's session stands, and the next page is logged in without the IdP.
    driver.goto(&url(&format!("{PREFIX}/logout"))).unwrap();
    let text = run(&driver, "return document.body.innerText;");
    assert!(
        text.as_str()
            .unwrap()
            .contains("Cannot log out. Jupyter Server authentication is disabled."),
        "{text}"
    );
    assert!(driver.cookie_value(sealed::COOKIE).unwrap().is_some());
    let link = url(&format!("{PREFIX}/?after-logout"));
    driver.goto(&link).unwrap();
    driver
        .log_in_and_land_on("alice", &link, Duration::from_secs(15))
        .unwrap();
    driver.quit().unwrap();
}

/// A browser's contents-API upload (JupyterLab's: one JSON `PUT` up to 15 MB) on a session due for
/// renewal reaches Jupyter whole and renews the session; the file downloads again through
/// `/files/`; without a session an upload gets `401` JSON and saves nothing.
#[test]
fn a_large_upload_on_a_renewal_saves_whole_and_downloads() {
    let _ = world();
    let b = Browser::new();
    b.login(&url(&format!("{PREFIX}/")), "bob").unwrap();
    let xsrf = b.cookie(HOST, "_xsrf").expect("Jupyter's _xsrf cookie");
    // 4 MiB of text, in the JSON body.
    let content: String = (0..4 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = json!({ "type": "file", "format": "text", "content": content }).to_string();
    let old = sealed::session_cookies(&b, HOST);
    // Jupyter's identity cookie gone (a browser that dropped it): Jupyter sets a new one on the answer
    // that renews the session, beside the filter's.
    let username = b
        .cookies(HOST)
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.starts_with("username-"))
        .expect("Jupyter's identity cookie");
    b.remove_cookie(HOST, &username);
    std::thread::sleep(Duration::from_secs(TTL / 2 + 1));
    let headers = [
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-xsrftoken", xsrf.as_str()),
        ("sec-fetch-mode", "cors"),
    ];
    let r = b
        .request(
            "PUT",
            &url(&format!("{PREFIX}/api/contents/upload.txt")),
            &headers,
            Some(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{}=", sealed::COOKIE))),
        "the upload did not renew the session: {:?}",
        r.set_cookies()
    );
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{username}="))),
        "{:?}",
        r.set_cookies()
    );
    assert_ne!(old, sealed::session_cookies(&b, HOST));
    let v: Value = r.json().unwrap();
    assert_eq!(v["size"], 4 << 20, "{v}");
    assert_eq!(
        std::fs::read_to_string(w_root().join("upload.txt")).unwrap(),
        content
    );
    // The download, as a link with `download=1` (Jupyter's "Download"): the same bytes, as an attachment.
    // (Jupyter without its own login serves files only to a request from its own pages: a `Referer`.)
    let referer = url(&format!("{PREFIX}/"));
    let page = [("referer", referer.as_str())];
    let r = b
        .get_with(
            &url(&format!("{PREFIX}/files/upload.txt?download=1")),
            &page,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-disposition")
            .unwrap_or_default()
            .starts_with("attachment"),
        "{:?}",
        r.headers
    );
    assert!(r.body == content, "the download differs");
    let r = b
        .get_with(&url(&format!("{PREFIX}/files/notes.txt")), &page)
        .unwrap();
    assert_eq!(r.body, "the user's notes\n");

    // Without a session: the filter's 401, Jupyter never sees the upload.
    let anonymous = Browser::new();
    let r = anonymous
        .request(
            "PUT",
            &url(&format!("{PREFIX}/api/contents/anonymous.txt")),
            &headers,
            Some(br#"{"type":"file","format":"text","content":"x"}"#),
        )
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json().unwrap()["error"], "unauthenticated");
    assert!(!w_root().join("anonymous.txt").exists());
}

/// A link in a Jupyter page to one of its files, followed once the session has ended: the login in
/// between lands on the file, which Jupyter (its own login off) serves only to a same-host `Referer`.
#[test]
fn a_files_link_followed_after_the_session_ended_lands_on_the_file() {
    let w = world();
    let link = url(&format!("{PREFIX}/"));
    let driver = logged_in_at(w, &link);
    let click = "const a = document.createElement('a'); a.href = '/jupyter/files/notes.txt'; \
         a.textContent = 'notes'; document.body.append(a); window.harnessOldPage = true; a.click(); return true;";
    // With the session: the file.
    run(&driver, click);
    let file = url(&format!("{PREFIX}/files/notes.txt"));
    driver
        .log_in_and_land_on("alice", &file, Duration::from_secs(15))
        .unwrap();
    let text = run(&driver, "return document.body.innerText;");
    assert_eq!(text, "the user's notes\n");
    // The session gone (its cookies dropped; the IdP's session stands): the same click.
    driver.goto(&link).unwrap();
    driver
        .log_in_and_land_on("alice", &link, Duration::from_secs(15))
        .unwrap();
    driver.delete_cookies().unwrap();
    run(&driver, click);
    driver
        .log_in_and_land_on("alice", &file, Duration::from_secs(15))
        .unwrap();
    let text = run(&driver, "return document.body.innerText;");
    assert_eq!(
        text,
        "the user's notes\n",
        "after the login, at {:?}",
        driver.current_url()
    );
    assert!(
        driver.cookie_value(sealed::COOKIE).unwrap().is_some(),
        "no login on the way"
    );
    driver.quit().unwrap();
}

/// A gateway that caps its streams' life (a route's `max_stream_duration`) closes a kernel's socket on
/// schedule: the page sees it close and reconnects, and the reconnect is judged by the session; after a
/// logout elsewhere it is refused, so the socket does not outlive the logout by more than the cap.
#[test]
fn a_capped_kernel_socket_closes_and_its_reconnect_is_judged_again() {
    let w = world();
    let link = url(&format!("{PREFIX}/"));
    let driver = logged_in_at(w, &link);
    let r = run(
        &driver,
        "const r = await jt.api('POST', 'kernels', { name: 'python3' }); \
         if (r.status !== 201) return r; window.jtKernel = JSON.parse(r.text).id; \
         window.jtConn = await jt.connect(window.jtKernel, '&capped'); \
         if (!window.jtConn.ok) return window.jtConn.events; \
         return await jt.execute(window.jtConn, 'b = 7\\nb');",
    );
    assert_eq!(r, "7", "{r}");
    std::thread::sleep(Duration::from_secs(CAP + 1));
    let r = run(&driver, "return window.jtConn.events;");
    assert_eq!(
        r,
        json!(["open", "close 1006 \"\" clean=false"]),
        "the capped socket: {r}"
    );
    // The page reconnects (as JupyterLab does): the same kernel, its variables kept.
    let r = run(
        &driver,
        "window.jtConn = await jt.connect(window.jtKernel, '&capped'); \
         if (!window.jtConn.ok) return window.jtConn.events; \
         return await jt.execute(window.jtConn, 'b + 1');",
    );
    assert_eq!(r, "8", "{r}");
    // A logout in another tab: the open socket closes within the cap, and its reconnect is refused.
    run(&driver, "window.open('/logout'); return true;");
    harness::process::poll(Duration::from_secs(10), || {
        Ok(driver
            .cookie_value(sealed::COOKIE)
            .unwrap()
            .is_none()
            .then_some(()))
    })
    .unwrap();
    harness::process::poll(Duration::from_secs(CAP + 2), || {
        Ok((run(&driver, "return window.jtConn.ws.readyState;") == 3).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: the socket outlived the cap after the logout"));
    let r = run(
        &driver,
        "const c = await jt.connect(window.jtKernel, '&capped'); return [c.ok, c.events];",
    );
    assert_eq!(r[0], false, "a reconnect after the logout opened: {r}");
    driver.quit().unwrap();
}
