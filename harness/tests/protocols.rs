//! Protocols other than plain request/response, as apps behind a gateway use them: WebSocket (Grafana
//! Live, Jupyter, Argo CD terminals), gRPC from non-browser clients, streamed uploads and server-sent
//! events, and the HTTP corners around them (HEAD, `Expect: 100-continue`, HTTP/1.0, CONNECT). Each
//! test asserts what a user or client would notice.
//!
//! The harness's Envoy allows WebSocket upgrades as istiod configures every gateway
//! (`upgrade_configs: [{upgrade_type: websocket}]` on the HCM). The echo app (`harness/idp/echo.mjs`)
//! speaks WebSocket under `/ws`, streams events under `/events` and counts uploads under `/upload`.
//! Requests that must not reach the app are checked in Envoy's access log (no upstream host) or, for
//! WebSocket handshakes, in the app's own log of the handshakes it accepted.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::browser::HTML_ACCEPT;
use harness::idp::jwt_payload;
use harness::idp_hold;
use harness::{Browser, SiteSpec, Stack, StackSpec, WebDriver, sealed};
use serde_json::{Value, json};
use sha2::Digest as _;

const APP: &str = "app";
/// Site whose ID tokens live `REFRESH_TTL` (12 s) and are renewed in their last half.
const REFRESH: &str = "refresh";
/// The `refresh` site's token lifetime; its refresh margin is half of it, so a renewed token is due again
/// half of it later: 6 s for the page loads after a renewal on a loaded machine (4 s was within reach).
const REFRESH_TTL: u64 = 12;
/// Site whose plugin sets `allow_on_headers_stop_iteration` (plain Envoy 1.35 on; Istio's
/// `WasmPlugin` cannot): Envoy then hands a paused request's body to the filter, and a `Continue`
/// for it would send the request on.
const STOP_ITER: &str = "stopiter";
const HOST: &str = "localhost";

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let t0 = Instant::now();
        let sites = vec![
            SiteSpec::new(APP),
            SiteSpec::new(REFRESH)
                .filter(json!({"refresh_margin": format!("{}s", REFRESH_TTL / 2)}))
                .idp_client(json!({"id_token_ttl": REFRESH_TTL})),
            SiteSpec {
                plugin_overrides: json!({"allow_on_headers_stop_iteration": true}),
                ..SiteSpec::new(STOP_ITER)
            },
        ];
        let stack = Stack::start(StackSpec::new("protocols", sites)).unwrap();
        for site in [APP, REFRESH, STOP_ITER] {
            stack.wait_ready(site).unwrap();
        }
        eprintln!("stack up in {:?}", t0.elapsed());
        stack
    })
}

fn url(site: &str, path: &str) -> String {
    stack().site(site).unwrap().url(path)
}

fn port(site: &str) -> u16 {
    stack().site(site).unwrap().port
}

/// A path no other request uses, so that logs can be searched for it.
fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", unix_ms())
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

/// A browser logged in as alice at `site`.
fn logged_in(site: &str) -> Browser {
    let b = Browser::new();
    let done = b.login(&url(site, "/"), "alice").unwrap();
    assert_eq!(done.response.status, 200, "{}", done.response.body);
    b
}

/// The session cookies of `b`, as a `Cookie` header value.
fn session_cookie(b: &Browser) -> String {
    sealed::session_cookies(b, HOST)
}

/// The session of `b` re-sealed with its token due for refresh (inside the default 60 s margin); the
/// refresh token is the IdP's real one.
fn due_for_refresh(b: &Browser) -> String {
    let cookie = resealed_expiring_at(b, unix_ms() / 1000 + 30);
    past_the_login_second(b);
    cookie
}

/// Waits until the second in which `b`'s ID token was issued is over: within it the IdP hands out the
/// same ID token again, byte for byte, and a renewed token could not be told from the old one.
fn past_the_login_second(b: &Browser) {
    let s = sealed::open_session(&session_cookie(b)).unwrap();
    let iat = jwt_payload(s.id_token.expose()).unwrap()["iat"]
        .as_u64()
        .unwrap();
    while unix_ms() / 1000 <= iat {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The session of `b` re-sealed with its token expiring at `at` (Unix seconds).
fn resealed_expiring_at(b: &Browser, at: u64) -> String {
    let mut s = sealed::open_session(&session_cookie(b)).unwrap();
    s.token_expires_at = at;
    sealed::seal(&s).unwrap()
}

/// The ID token the app receives for `b`'s session.
fn bearer_of(b: &Browser, site: &str) -> String {
    let r = b
        .get_with(&url(site, "/token"), &[("accept", "application/json")])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().unwrap()["headers"]["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

/// The upstream host of the access-log line for a request to `path` (`-`: answered in Envoy, the app
/// never saw it). Polls: Envoy writes a line when the stream ends and flushes every 100 ms.
fn upstream_of(path: &str) -> String {
    let needle = format!(" {path} ");
    harness::process::poll(Duration::from_secs(10), || {
        let log = stack().access_log()?;
        Ok(log.lines().find(|l| l.contains(&needle)).map(|l| {
            let l = l.trim_end().trim_end_matches('"');
            l.rsplit('"').next().unwrap_or_default().to_string()
        }))
    })
    .unwrap_or_else(|e| panic!("no access-log line for {path}: {e:#}"))
}

/// Whether the echo app accepted a WebSocket handshake for `path`.
fn app_accepted_websocket(path: &str) -> bool {
    let log = harness::process::read_lossy(&stack().dir().join("echo.log")).unwrap();
    log.contains(&json!({ "websocket": path }).to_string())
}

// A raw HTTP/1.1 connection: what ureq cannot show (a response while the body is still being sent,
// chunks as they arrive, a 101 and the frames after it, several responses on one connection).

/// A response's status line and headers.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends a request head: `method path HTTP/1.1`, `Host`, then `headers`.
    fn send_head(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.send(head.as_bytes());
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more bytes; `false` at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "connection closed");
        }
        self.buf.drain(..n).collect()
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2);
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            assert!(self.fill(), "connection closed in a line");
        }
    }

    /// Reads a response head (status line and headers).
    fn head(&mut self) -> Head {
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Head { status, headers }
    }

    /// The next chunk of a chunked body (`None`: the last, empty one).
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size_line = self.line();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            // Trailers, if any, then the empty line.
            while !self.line().is_empty() {}
            return None;
        }
        let data = self.take(size);
        assert_eq!(self.take(2), b"\r\n");
        Some(data)
    }

    /// A response's body after `head`; none for a HEAD request.
    fn body(&mut self, head: &Head, method: &str) -> Vec<u8> {
        if method == "HEAD" || head.status == 204 || head.status == 304 {
            return Vec::new();
        }
        if head
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            let mut out = Vec::new();
            while let Some(c) = self.chunk() {
                out.extend(c);
            }
            return out;
        }
        match head.header("content-length") {
            Some(n) => self.take(n.parse().unwrap()),
            None => {
                while self.fill() {}
                std::mem::take(&mut self.buf)
            }
        }
    }

    /// Whether the server closed the connection (reads until the end, at most `timeout`).
    fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }

    /// Sends a masked WebSocket frame (FIN set).
    fn ws_send(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | u8::try_from(len).unwrap());
        } else if len < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&u64::try_from(len).unwrap().to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.send(&frame);
    }

    /// Receives one (unfragmented, unmasked) WebSocket frame: opcode and payload.
    fn ws_recv(&mut self) -> (u8, Vec<u8>) {
        let h = self.take(2);
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => usize::from(u16::from_be_bytes(self.take(2).try_into().unwrap())),
            127 => usize::try_from(u64::from_be_bytes(self.take(8).try_into().unwrap())).unwrap(),
            n => usize::from(n),
        };
        (opcode, self.take(len))
    }
}

/// A WebSocket handshake for `path` as Chromium sends it from a page of the site (no `Accept`, no
/// Fetch Metadata), with `extra` headers.
fn websocket_handshake(conn: &mut Conn, site: &str, path: &str, extra: &[(&str, &str)]) -> Head {
    let origin = stack().site(site).unwrap().origin();
    let mut headers = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        // RFC 6455's example key: its accept value is known.
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("origin", origin.as_str()),
        ("user-agent", "Mozilla/5.0 (oidc-filter harness)"),
        ("pragma", "no-cache"),
        ("cache-control", "no-cache"),
    ];
    headers.extend_from_slice(extra);
    conn.send_head("GET", path, &headers);
    conn.head()
}

// 1. WebSocket.

/// A logged-in user's page opens a WebSocket through the gateway (Chromium's own client: its handshake,
/// its cookie rules, its check of `Sec-WebSocket-Accept`) and talks over it; the app sees the user's
/// bearer token and the page's other cookies, never the filter's. Before logging in, the same page
/// cannot open one, and the app never sees the attempt.
#[test]
fn chromium_page_talks_over_a_websocket_once_logged_in() {
    let _idp = idp_hold::shared();
    let s = stack();
    let site = s.site(APP).unwrap();
    let driver = WebDriver::start(s.dir()).unwrap();

    // Anonymous: a page on a bypass path (served without a login) tries a socket.
    driver.goto(&site.url("/healthz/page")).unwrap();
    let anon = unique("/ws/anonymous");
    open_socket(&driver, &format!("ws://localhost:{}{anon}", site.port));
    let closed = wait_for_event(&driver, |e| e.get("close").is_some());
    // 1006: the handshake failed (Chromium does not say how to the page).
    assert_eq!(closed["close"], 1006, "{closed}");
    let events = socket_events(&driver);
    assert!(
        !events.iter().any(|e| e.get("open").is_some()),
        "{events:?}"
    );
    assert!(!app_accepted_websocket(&anon));
    assert_eq!(upstream_of(&anon), "-");

    // Logged in.
    let page = site.url("/live");
    driver.goto(&page).unwrap();
    log_in_as_alice(&driver, &page);
    // One cookie of the app's own, set by the page; it must reach the app as sent.
    driver
        .execute(
            "document.cookie = 'theme=dark; path=/'; return 1;",
            json!([]),
        )
        .unwrap();
    let path = unique("/ws/live");
    open_socket(&driver, &format!("ws://localhost:{}{path}", site.port));
    let first = wait_for_event(&driver, |e| e.get("data").is_some());
    let handshake: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    eprintln!("Chromium's handshake as the app saw it: {handshake}");
    let headers = &handshake["headers"];
    let bearer = headers["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer reached the app: {handshake}"));
    let claims = jwt_payload(bearer).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], APP);
    assert_eq!(headers["cookie"], "theme=dark", "{handshake}");
    assert_eq!(headers["x-auth-request-user"], "alice", "{handshake}");
    assert_eq!(headers["upgrade"], "websocket", "{handshake}");

    // Messages both ways, a large one too (a 64-bit length on the wire).
    let big = 70_000;
    driver
        .execute(
            "window.socket.send('hello'); window.socket.send('x'.repeat(arguments[0])); return 1;",
            json!([big]),
        )
        .unwrap();
    let events = harness::process::poll(Duration::from_secs(10), || {
        let e = socket_events(&driver);
        Ok((e.iter().filter(|e| e.get("data").is_some()).count() >= 3).then_some(e))
    })
    .unwrap();
    let data: Vec<&str> = events.iter().filter_map(|e| e["data"].as_str()).collect();
    assert_eq!(data[1], "hello");
    assert_eq!(data[2].len(), big);
    driver
        .execute("window.socket.close(1000); return 1;", json!([]))
        .unwrap();
    let closed = wait_for_event(&driver, |e| e.get("close").is_some());
    assert_eq!(closed["close"], 1000, "{closed}");
    assert!(app_accepted_websocket(&path));
    driver.quit().unwrap();
}

/// A WebSocket handshake without a session gets `401` with `WWW-Authenticate: Bearer`: a socket cannot
/// follow a redirect to the login, so one would only be a stranger error. It never reaches the app. A
/// session that has ended gets the same, and its cookie is cleared.
#[test]
fn anonymous_websocket_handshake_gets_401_and_never_reaches_the_app() {
    let _idp = idp_hold::shared();
    let path = unique("/ws/anonymous");
    let mut c = Conn::open(port(APP));
    let head = websocket_handshake(&mut c, APP, &path, &[]);
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(head.header("www-authenticate"), Some("Bearer"), "{head:?}");
    assert!(head.header("location").is_none(), "{head:?}");
    assert!(head.header("upgrade").is_none(), "{head:?}");
    let body = c.body(&head, "GET");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert!(json["error"].is_string(), "{json}");
    assert!(!app_accepted_websocket(&path));
    assert_eq!(upstream_of(&path), "-");

    // Firefox's handshake says `Accept: */*` and `Sec-Fetch-Mode: websocket`: no navigation either.
    let path = unique("/ws/firefox");
    let mut c = Conn::open(port(APP));
    let head = websocket_handshake(
        &mut c,
        APP,
        &path,
        &[
            ("accept", "*/*"),
            ("sec-fetch-mode", "websocket"),
            ("sec-fetch-dest", "empty"),
            ("sec-fetch-site", "same-origin"),
        ],
    );
    assert_eq!(head.status, 401, "{head:?}");
    assert!(head.header("location").is_none(), "{head:?}");
    assert!(!app_accepted_websocket(&path));

    // A session that has ended.
    let b = logged_in(APP);
    let mut s = sealed::open_session(&session_cookie(&b)).unwrap();
    s.expires_at = unix_ms() / 1000 - 1;
    let ended = sealed::seal(&s).unwrap();
    let path = unique("/ws/ended");
    let mut c = Conn::open(port(APP));
    let head = websocket_handshake(&mut c, APP, &path, &[("cookie", &ended)]);
    assert_eq!(head.status, 401, "{head:?}");
    let cleared = head.all("set-cookie");
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("_oidc_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert!(!app_accepted_websocket(&path));
}

/// Clients other than a browser (a CLI, a script) open sockets with a session cookie or with a bearer
/// token of their own: the handshake is answered `101` by the app, and frames flow both ways, control
/// frames included. With a session due for refresh, the `101` carries the renewed cookie.
#[test]
fn websocket_clients_with_a_session_or_a_token_talk_through_the_gateway() {
    let _idp = idp_hold::shared();
    let b = logged_in(APP);
    let token = bearer_of(&b, APP);
    let with_session = format!("{}; theme=dark", session_cookie(&b));
    let with_token = format!("Bearer {token}");
    for (what, header) in [
        ("cookie", with_session.as_str()),
        ("authorization", with_token.as_str()),
    ] {
        let path = unique("/ws/client");
        let mut c = Conn::open(port(APP));
        let head = websocket_handshake(&mut c, APP, &path, &[(what, header)]);
        assert_eq!(head.status, 101, "{what}: {head:?}");
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{what}: {head:?}"
        );
        assert!(head.all("set-cookie").is_empty(), "{what}: {head:?}");
        let (op, hello) = c.ws_recv();
        assert_eq!(op, 1);
        let hello: Value = serde_json::from_slice(&hello).unwrap();
        assert_eq!(hello["headers"]["authorization"], with_token, "{what}");
        if what == "cookie" {
            assert_eq!(hello["headers"]["cookie"], "theme=dark", "{hello}");
        }
        c.ws_send(1, b"ping over the gateway");
        assert_eq!(c.ws_recv(), (1, b"ping over the gateway".to_vec()));
        c.ws_send(9, b"are you there");
        assert_eq!(c.ws_recv(), (10, b"are you there".to_vec()));
        c.ws_send(8, &1000u16.to_be_bytes());
        assert_eq!(c.ws_recv(), (8, 1000u16.to_be_bytes().to_vec()));
        assert!(c.closed_within(Duration::from_secs(5)), "{what}");
    }

    // A session due for refresh: the `101` itself carries the renewed cookie (marked for no cache), and
    // the app got the renewed session's token.
    let path = unique("/ws/due");
    let old = sealed::open_session(&session_cookie(&b)).unwrap().id_token;
    let mut c = Conn::open(port(APP));
    let head = websocket_handshake(&mut c, APP, &path, &[("cookie", &due_for_refresh(&b))]);
    assert_eq!(head.status, 101, "{head:?}");
    let renewed = head
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("_oidc_session="))
        .unwrap_or_else(|| panic!("no renewed cookie on the 101: {head:?}"));
    assert_eq!(head.header("cache-control"), Some("no-store"), "{head:?}");
    let session = sealed::open_session(renewed.split(';').next().unwrap()).unwrap();
    assert_ne!(session.id_token.expose(), old.expose(), "not renewed");
    let (_, hello) = c.ws_recv();
    let hello: Value = serde_json::from_slice(&hello).unwrap();
    assert_eq!(
        hello["headers"]["authorization"],
        format!("Bearer {}", session.id_token.expose())
    );
    c.ws_send(1, b"renewed");
    assert_eq!(c.ws_recv(), (1, b"renewed".to_vec()));
}

/// A page opens a WebSocket when its session is due for refresh: the handshake is held while the filter
/// renews the session, the app sees the renewed token, the `101` carries the renewed cookie and
/// Chromium keeps it (the next page load shows the same renewed token: no second refresh), and the socket
/// works.
#[test]
fn websocket_handshake_renews_a_session_due_for_refresh() {
    let _idp = idp_hold::shared();
    let s = stack();
    let site = s.site(REFRESH).unwrap();
    let driver = WebDriver::start(s.dir()).unwrap();
    let page = site.url("/live");
    driver.goto(&page).unwrap();
    log_in_as_alice(&driver, &page);
    let first = page_bearer(&driver);
    let c1 = jwt_payload(&first).unwrap();
    let cookie_before = chromium_session(&driver);

    // Into the refresh margin (the token's last half).
    let due = c1["exp"].as_u64().unwrap() - REFRESH_TTL / 2;
    let wait = (due * 1000 + 200).saturating_sub(unix_ms());
    std::thread::sleep(Duration::from_millis(wait));
    let path = unique("/ws/renewed");
    open_socket(&driver, &format!("ws://localhost:{}{path}", site.port));
    let hello = wait_for_event(&driver, |e| {
        e.get("data").is_some() || e.get("close").is_some()
    });
    let handshake: Value = serde_json::from_str(
        hello["data"]
            .as_str()
            .unwrap_or_else(|| panic!("the socket did not open: {hello}")),
    )
    .unwrap();
    let renewed = handshake["headers"]["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer reached the app: {handshake}"))
        .to_string();
    let c2 = jwt_payload(&renewed).unwrap();
    assert!(c2["iat"].as_u64() > c1["iat"].as_u64(), "{c1} {c2}");
    assert_eq!(c2["sub"], "alice");

    // Chromium took the renewed cookie from the 101.
    let cookie_after = chromium_session(&driver);
    assert_ne!(
        cookie_after, cookie_before,
        "Chromium still has the old session cookie"
    );

    // The socket works.
    driver
        .execute("window.socket.send('after renewal'); return 1;", json!([]))
        .unwrap();
    let events = harness::process::poll(Duration::from_secs(5), || {
        let e = socket_events(&driver);
        Ok((e.iter().filter(|e| e.get("data").is_some()).count() >= 2).then_some(e))
    })
    .unwrap();
    assert_eq!(
        events.iter().filter_map(|e| e["data"].as_str()).nth(1),
        Some("after renewal")
    );

    // The next page load goes out with the renewed session: same token, no new refresh, same cookie.
    driver.goto(&site.url("/next")).unwrap();
    let next = page_bearer(&driver);
    assert_eq!(
        next, renewed,
        "the page load after the socket's renewal refreshed again"
    );
    assert_eq!(chromium_session(&driver), cookie_after);
    driver.quit().unwrap();
}

/// Opens `window.socket` to `url` in the current page; its events go to `window.socketEvents`.
fn open_socket(driver: &WebDriver, url: &str) {
    driver
        .execute(
            "window.socketEvents = []; const ws = new WebSocket(arguments[0]); window.socket = ws; \
             ws.onopen = () => window.socketEvents.push({open: true}); \
             ws.onmessage = (e) => window.socketEvents.push({data: e.data}); \
             ws.onerror = () => window.socketEvents.push({error: true}); \
             ws.onclose = (e) => window.socketEvents.push({close: e.code}); return 1;",
            json!([url]),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn socket_events(driver: &WebDriver) -> Vec<Value> {
    driver
        .execute("return window.socketEvents || [];", json!([]))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls the socket's events for the first that `pred` accepts.
fn wait_for_event(driver: &WebDriver, pred: impl Fn(&Value) -> bool) -> Value {
    harness::process::poll(Duration::from_secs(10), || {
        Ok(socket_events(driver).into_iter().find(|e| pred(e)))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", socket_events(driver)))
}

/// The bearer token the echo app's page shows it received.
fn page_bearer(driver: &WebDriver) -> String {
    let pre = driver
        .wait_for("pre#echo", Duration::from_secs(10))
        .unwrap();
    let echo: Value = serde_json::from_str(&driver.text(&pre).unwrap()).unwrap();
    echo["headers"]["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer: {echo}"))
        .to_string()
}

/// The value of Chromium's session cookie for the current page.
fn chromium_session(driver: &WebDriver) -> String {
    let cookies = driver.cookies().unwrap();
    cookies
        .iter()
        .find(|c| c["name"] == sealed::COOKIE)
        .and_then(|c| c["value"].as_str())
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"))
        .to_string()
}

/// At the IdP's login form, logs in as alice; asserts Chromium lands back on `app`, logged in.
fn log_in_as_alice(driver: &WebDriver, app: &str) {
    let h1 = driver
        .log_in_and_land("alice", app, Duration::from_secs(15))
        .unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
}

// 2. gRPC.

/// One gRPC call over HTTP/2 (`nghttp`), a length-prefixed message as its body; returns nghttp's
/// verbose output (headers and trailers as received).
fn grpc_call(site: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let message = b"\x0a\x05alice";
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    let file = stack().dir().join(format!("grpc-{}.bin", unique("msg")));
    std::fs::write(&file, &frame).unwrap();
    let mut args = vec![
        "-v".to_string(),
        "-H".into(),
        "content-type: application/grpc".into(),
        "-H".into(),
        "te: trailers".into(),
        "-H".into(),
        "user-agent: grpc-go/1.70.0".into(),
        "-d".into(),
        file.to_string_lossy().into_owned(),
    ];
    for (n, v) in headers {
        args.extend(["-H".into(), format!("{n}: {v}")]);
    }
    args.push(url(site, path));
    let out = std::process::Command::new("nghttp")
        .args(&args)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of a header or trailer `name` nghttp printed as received.
fn received(out: &str, name: &str) -> Vec<String> {
    let marker = format!(" {name}: ");
    out.lines()
        .filter(|l| l.contains("] recv (stream_id="))
        .filter_map(|l| l.split_once(&marker).map(|(_, v)| v.trim().to_string()))
        .collect()
}

/// The JSON the echo app answered in nghttp's output.
fn echoed_json(out: &str) -> Value {
    let start = out
        .find("\n{")
        .unwrap_or_else(|| panic!("no JSON body: {out}"));
    let end = out.rfind("\n}").unwrap() + 2;
    serde_json::from_str(&out[start..end]).unwrap()
}

/// A gRPC client without credentials gets what it understands: a trailers-only answer with
/// `grpc-status: 16` (UNAUTHENTICATED), which Envoy makes of the filter's `401` for a gRPC request; the
/// call never reaches the app. A token jwt_authn refuses gets the same from jwt_authn.
#[test]
fn grpc_call_without_credentials_is_unauthenticated() {
    let _idp = idp_hold::shared();
    let path = format!("{}/Greet", unique("/helloworld.Greeter"));
    let out = grpc_call(APP, &path, &[]);
    assert_eq!(received(&out, ":status"), ["200"], "{out}");
    assert_eq!(
        received(&out, "content-type"),
        ["application/grpc"],
        "{out}"
    );
    assert_eq!(received(&out, "grpc-status"), ["16"], "{out}");
    let message = received(&out, "grpc-message");
    assert!(message.iter().any(|m| m.contains("log in")), "{out}");
    assert!(!out.contains("recv DATA frame"), "not trailers-only: {out}");
    assert_eq!(upstream_of(&path), "-");

    let path = format!("{}/Greet", unique("/helloworld.Greeter"));
    let out = grpc_call(APP, &path, &[("authorization", "Bearer not.a.jwt")]);
    assert_eq!(received(&out, "grpc-status"), ["16"], "{out}");
    assert_eq!(upstream_of(&path), "-");
}

/// A gRPC call with a valid bearer token of its own, or with a session cookie, reaches the app: with the
/// token as sent, or with the session's token put there and the filter's cookie gone.
#[test]
fn grpc_call_with_a_token_or_a_session_reaches_the_app() {
    let _idp = idp_hold::shared();
    let b = logged_in(APP);
    let token = bearer_of(&b, APP);

    let out = grpc_call(
        APP,
        "/helloworld.Greeter/Greet",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(received(&out, ":status"), ["200"], "{out}");
    let e = echoed_json(&out);
    assert_eq!(e["headers"]["content-type"], "application/grpc", "{e}");
    assert_eq!(e["headers"]["authorization"], format!("Bearer {token}"));
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/helloworld.Greeter/Greet");

    let cookie = format!("{}; app=1", session_cookie(&b));
    let out = grpc_call(APP, "/helloworld.Greeter/Greet", &[("cookie", &cookie)]);
    assert_eq!(received(&out, ":status"), ["200"], "{out}");
    let e = echoed_json(&out);
    assert_eq!(e["headers"]["authorization"], format!("Bearer {token}"));
    assert_eq!(e["headers"]["cookie"], "app=1", "{e}");
    assert_eq!(e["headers"]["content-type"], "application/grpc", "{e}");
}

// 3. Streaming.

/// A large upload with a session, streamed in chunks of unknown total length, reaches the app as it is
/// sent (the app has its first bytes while the client still holds back the second half) and whole.
#[test]
fn large_streamed_upload_passes_unbuffered_and_whole() {
    let _idp = idp_hold::shared();
    let b = logged_in(APP);
    let cookie = session_cookie(&b);
    let path = unique("/upload/streamed");
    let answer = stream_upload(APP, &path, &cookie, 8 << 20, true);
    assert!(answer.renewed.is_none(), "{:?}", answer.head);
    assert_eq!(
        answer.echo["headers"]["authorization"],
        format!("Bearer {}", bearer_of(&b, APP))
    );
}

/// The same upload from a session due for refresh: the filter holds the request while it renews the
/// session, the body waits in Envoy meanwhile, and once renewed the whole body reaches the app with the
/// new token; the answer carries the renewed cookie.
#[test]
fn large_upload_that_starts_a_refresh_arrives_whole() {
    let _idp = idp_hold::shared();
    let b = logged_in(APP);
    let old = bearer_of(&b, APP);
    let cookie = due_for_refresh(&b);
    let path = unique("/upload/refresh");
    let answer = stream_upload(APP, &path, &cookie, 8 << 20, true);
    assert_renewed(&answer, &old);
}

/// The same, while the IdP takes a second over the refresh and the client sends as fast as it can: the
/// body piles up in Envoy, which stops reading from the client once its buffer is full (flow control, not
/// a `413`), and all of it goes on once the session is renewed.
#[test]
fn large_upload_held_by_a_slow_refresh_arrives_whole() {
    upload_held_by_a_slow_refresh(APP);
}

/// The same where Envoy hands the filter a paused request's body (`allow_on_headers_stop_iteration`):
/// the filter holds the body too, and the request goes up only once renewed, with the new token (it
/// went up at the first chunk, with the old token, when the filter let the body pass).
#[test]
fn large_upload_held_by_a_slow_refresh_arrives_whole_when_envoy_hands_over_paused_bodies() {
    upload_held_by_a_slow_refresh(STOP_ITER);
}

/// An HTTP/2 request with trailers on an expired session, where Envoy hands the filter a paused request's
/// frames (`allow_on_headers_stop_iteration`): the trailers wait with the request while the IdP takes its
/// time over the refresh, and the request goes up renewed, with the new token and without the filter's
/// cookie (it went up at its trailers, as the client sent it, when the filter let them pass).
#[test]
fn trailers_of_a_request_waiting_for_its_refresh_wait_with_it_when_envoy_hands_them_over() {
    let (old, cookie, _idp) = expired_with_idp_held(STOP_ITER);
    let file = stack().dir().join(format!("{}.txt", unique("trailers")));
    std::fs::write(&file, "hello").unwrap();
    let slow = stack().idp_proxy().fault(SLOW_IDP);
    let out = std::process::Command::new("nghttp")
        .args(["-v", "-H", "accept: application/json"])
        .args(["-H", &format!("cookie: {cookie}")])
        .args(["--trailer", "x-trailer: 1", "-d"])
        .arg(&file)
        .arg(url(STOP_ITER, &unique("/trailers")))
        .output()
        .unwrap();
    drop(slow);
    let _ = std::fs::remove_file(&file);
    let out = String::from_utf8_lossy(&out.stdout);
    // The request's headers, then its trailers.
    assert_eq!(
        out.matches("] send HEADERS frame").count(),
        2,
        "nghttp sent no trailers: {out}"
    );
    assert_eq!(received(&out, ":status"), ["200"], "{out}");
    // Renewed: the answer carries the new session, and the app got its token, not the old one.
    let renewed = received(&out, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{}=", harness::sealed::COOKIE)))
        .unwrap_or_else(|| panic!("no renewed session cookie: {out}"));
    let session = sealed::open_session(renewed.split(';').next().unwrap()).unwrap();
    let echo = echoed_json(&out);
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {}", session.id_token.expose()),
        "the app did not get the renewed session's token: {echo}"
    );
    assert_ne!(session.id_token.expose(), old, "not renewed: {session:?}");
    let cookies = echo["headers"]["cookie"].as_str().unwrap_or_default();
    assert!(
        !cookies.contains(harness::sealed::COOKIE),
        "the filter's cookie reached the app: {echo}"
    );
}

/// Two uploads on one expired session, where Envoy hands the filter a paused request's body: the
/// first renews the session (the IdP 1.5 s slow), the second waits for that renewal. Both bodies
/// wait with them, and both arrive whole with the renewed token (the second went up at its first
/// chunk, without its session's token, when the filter let a waiting request's body pass).
#[test]
fn two_uploads_on_an_expired_session_both_arrive_renewed_when_envoy_hands_over_paused_bodies() {
    let (old, cookie, _idp) = expired_with_idp_held(STOP_ITER);
    let slow = stack().idp_proxy().fault(SLOW_IDP);
    // The second starts once the first has claimed the renewal (its refresh is at the IdP).
    let answers = harness::at_once(2, |i| {
        if i == 1 {
            harness::process::poll(Duration::from_secs(5), || {
                Ok((stack().idp_cluster_stat("upstream_rq_active")? > 0).then_some(()))
            })
            .unwrap();
        }
        stream_upload(STOP_ITER, &unique("/upload/two"), &cookie, 4 << 20, false)
    });
    drop(slow);
    for answer in &answers {
        assert_renewed(answer, &old);
    }
}

/// A session of a fresh login on `site` re-sealed with its token expired, the ID token it had, and the
/// IdP held for this test alone, past the login's second (within it the IdP would hand out the same ID
/// token again).
fn expired_with_idp_held(site: &str) -> (String, String, std::sync::RwLockWriteGuard<'static, ()>) {
    let b = {
        let _idp = idp_hold::shared();
        logged_in(site)
    };
    let old = bearer_of(&b, site);
    let cookie = resealed_expiring_at(&b, unix_ms() / 1000 - 1);
    let idp = idp_hold::exclusive();
    std::thread::sleep(Duration::from_millis(1100));
    (old, cookie, idp)
}

/// An IdP that takes 1.5 s over each request.
const SLOW_IDP: harness::Mode = harness::Mode::Delay(Duration::from_millis(1500));

fn upload_held_by_a_slow_refresh(site: &'static str) {
    let b = {
        let _idp = idp_hold::shared();
        logged_in(site)
    };
    let old = bearer_of(&b, site);
    let cookie = due_for_refresh(&b);
    let path = unique("/upload/slow-refresh");
    let _idp = idp_hold::exclusive();
    let slow = stack().idp_proxy().fault(SLOW_IDP);
    let t = Instant::now();
    let answer = stream_upload(site, &path, &cookie, 16 << 20, false);
    let took = t.elapsed();
    drop(slow);
    assert!(
        took >= Duration::from_millis(1500),
        "no refresh held it: {took:?}"
    );
    assert_renewed(&answer, &old);
}

/// `answer` carries a renewed session cookie, whose token (not `old`'s expiry: the IdP's new one) is the
/// one the app got.
fn assert_renewed(answer: &Uploaded, old: &str) {
    let renewed = answer
        .renewed
        .as_deref()
        .unwrap_or_else(|| panic!("no renewed cookie: {:?}", answer.head));
    assert!(renewed.contains("Max-Age="), "{renewed}");
    // The renewed session holds the IdP's new token (its real expiry, not the forged one), and that is
    // what the app got. (The callers wait out the login's second, within which the IdP's new ID token
    // would be the old one, byte for byte.)
    let session = sealed::open_session(renewed.split(';').next().unwrap()).unwrap();
    let exp = jwt_payload(old).unwrap()["exp"].as_u64().unwrap();
    assert!(session.token_expires_at >= exp, "not renewed: {session:?}");
    assert_ne!(session.id_token.expose(), old, "not renewed: {session:?}");
    assert_eq!(
        answer.echo["headers"]["authorization"],
        format!("Bearer {}", session.id_token.expose()),
        "the app did not get the renewed session's token"
    );
}

struct Uploaded {
    head: Head,
    echo: Value,
    renewed: Option<String>,
}

/// POSTs `size` pseudo-random bytes to `path` with chunked transfer encoding, as fast as the gateway
/// takes them, or with `pause`: the first half, a pause of a second, the rest, and then asserts the app
/// had bytes before the pause ended (nothing held the body back until its end). Asserts the byte count
/// and the SHA-256 the app saw.
fn stream_upload(site: &str, path: &str, cookie: &str, size: usize, pause: bool) -> Uploaded {
    let body: Vec<u8> = (0..size)
        .map(|i| u8::try_from((i * 7919 + i / 4096) % 251).unwrap())
        .collect();
    let mut c = Conn::open(port(site));
    c.send_head(
        "POST",
        path,
        &[
            ("cookie", cookie),
            ("accept", "application/json"),
            ("content-type", "application/octet-stream"),
            ("transfer-encoding", "chunked"),
        ],
    );
    let mut send_chunks = |part: &[u8]| {
        for piece in part.chunks(256 << 10) {
            c.send(format!("{:x}\r\n", piece.len()).as_bytes());
            c.send(piece);
            c.send(b"\r\n");
        }
    };
    let (first, second) = body.split_at(size / 2);
    send_chunks(first);
    if pause {
        std::thread::sleep(Duration::from_secs(1));
    }
    let resumed_at = unix_ms();
    send_chunks(second);
    c.send(b"0\r\n\r\n");
    let head = c.head();
    let raw = c.body(&head, "POST");
    assert_eq!(
        head.status,
        200,
        "{head:?} {}",
        String::from_utf8_lossy(&raw)
    );
    let echo: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(echo["bytes"], size, "{echo}");
    assert_eq!(
        echo["sha256"],
        format!("{:x}", sha2::Sha256::digest(&body)),
        "the app got other bytes"
    );
    let first_byte_at = echo["first_byte_at"].as_u64().unwrap();
    assert!(
        !pause || first_byte_at < resumed_at,
        "the app got its first byte {} ms after the client sent the second half",
        first_byte_at.saturating_sub(resumed_at)
    );
    assert!(
        !echo["headers"]["cookie"]
            .as_str()
            .unwrap_or_default()
            .contains("_oidc"),
        "{echo}"
    );
    let renewed = head
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("_oidc_session="))
        .map(str::to_string);
    Uploaded {
        head,
        echo,
        renewed,
    }
}

/// Server-sent events reach a logged-in client as the app produces them, not when the response ends.
#[test]
fn server_sent_events_reach_a_logged_in_client_as_they_are_sent() {
    let _idp = idp_hold::shared();
    let b = logged_in(APP);
    let mut c = Conn::open(port(APP));
    // 1 s apart: each event must arrive before the app sends the last, a second of slack for a loaded
    // machine (400 ms was within reach of a stall).
    let n = 4;
    let interval = 1000;
    c.send_head(
        "GET",
        &format!("/events?n={n}&ms={interval}"),
        &[
            ("cookie", &session_cookie(&b)),
            ("accept", "text/event-stream"),
            ("sec-fetch-mode", "cors"),
        ],
    );
    let head = c.head();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut events: Vec<(Value, u64)> = Vec::new();
    let mut pending = String::new();
    while let Some(chunk) = c.chunk() {
        let at = unix_ms();
        pending.push_str(&String::from_utf8(chunk).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            events.push((serde_json::from_str(data).unwrap(), at));
        }
    }
    assert_eq!(events.len(), n, "{events:?}");
    let bearer = events[0].0["headers"]["authorization"].as_str().unwrap();
    assert_eq!(bearer, format!("Bearer {}", bearer_of(&b, APP)));
    // Each event arrived while the app was still producing the later ones.
    let last_sent = events[n - 1].0["sent_at"].as_u64().unwrap();
    for (event, at) in &events[..n - 1] {
        assert!(
            *at < last_sent,
            "event {} arrived at {at}, after the last was sent at {last_sent}: {events:?}",
            event["i"]
        );
    }
}

/// An anonymous API client posting a large body gets its `401` as soon as its headers are in: the
/// filter does not wait for (or make the client send) the body, and the app sees nothing.
#[test]
fn anonymous_large_post_gets_401_before_sending_its_body() {
    let _idp = idp_hold::shared();
    let path = unique("/upload/anonymous");
    let mut c = Conn::open(port(APP));
    c.send_head(
        "POST",
        &path,
        &[
            ("accept", "application/json"),
            ("content-type", "application/octet-stream"),
            ("content-length", &(64u64 << 20).to_string()),
        ],
    );
    // Nothing of the 64 MiB body is sent: an answer that waited for it would never come.
    let head = c.head();
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(head.header("www-authenticate"), Some("Bearer"));
    let body = c.body(&head, "POST");
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());
    // The rest of the body will never be read: Envoy closes the connection rather than keep it.
    assert!(c.closed_within(Duration::from_secs(5)), "{head:?}");
    assert_eq!(upstream_of(&path), "-");

    // With `Expect: 100-continue` (curl's default for large bodies), the client gets its final answer
    // without sending the body.
    let path = unique("/upload/expect");
    let mut c = Conn::open(port(APP));
    c.send_head(
        "POST",
        &path,
        &[
            ("accept", "application/json"),
            ("content-type", "application/octet-stream"),
            ("content-length", &(64u64 << 20).to_string()),
            ("expect", "100-continue"),
        ],
    );
    let mut head = c.head();
    let mut interim = Vec::new();
    while head.status == 100 {
        interim.push(head.status);
        head = c.head();
    }
    eprintln!("Expect: 100-continue, anonymous: interim {interim:?}, then {head:?}");
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(upstream_of(&path), "-");

    // Over HTTP/2 the 401 ends the stream while the client has sent no more than its first flow-control
    // window of the 32 MiB.
    let path = unique("/upload/h2");
    let file = stack()
        .dir()
        .join(format!("{}.bin", path.trim_start_matches("/upload/")));
    std::fs::write(&file, vec![0u8; 32 << 20]).unwrap();
    let out = std::process::Command::new("nghttp")
        .args(["-v", "-H", "accept: application/json", "-d"])
        .arg(&file)
        .arg(url(APP, &path))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let out = String::from_utf8(out.stdout).unwrap();
    assert_eq!(received(&out, ":status"), ["401"], "{out}");
    let sent: usize = out
        .lines()
        .filter(|l| l.contains("send DATA frame <length="))
        .filter_map(|l| {
            l.split("length=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        sent <= 1 << 20,
        "the client sent {sent} bytes of its body first"
    );
    assert_eq!(upstream_of(&path), "-");
}

/// `Expect: 100-continue` with a session: the client is told to go on, and the body reaches the app.
#[test]
fn expect_continue_with_a_session_delivers_the_body() {
    let _idp = idp_hold::shared();
    let b = logged_in(APP);
    let path = unique("/upload/expect-session");
    let mut c = Conn::open(port(APP));
    let body = vec![b'z'; 1 << 20];
    c.send_head(
        "POST",
        &path,
        &[
            ("cookie", &session_cookie(&b)),
            ("accept", "application/json"),
            ("content-length", &body.len().to_string()),
            ("expect", "100-continue"),
        ],
    );
    let interim = c.head();
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(&body);
    let head = c.head();
    let raw = c.body(&head, "POST");
    assert_eq!(head.status, 200, "{head:?}");
    let echo: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(echo["bytes"], body.len());
    assert!(echo["headers"]["expect"].is_null(), "{echo}");
}

// 4. HTTP corners.

/// `HEAD`: a browser's is sent to log in as its GET would be, an API client's gets a `401` without a
/// body (the connection stays usable for the next request), a logged-in one reaches the app.
#[test]
fn head_requests_are_answered_like_their_get_without_a_body() {
    let _idp = idp_hold::shared();
    let mut c = Conn::open(port(APP));
    c.send_head("HEAD", "/report?x=1", &[("accept", HTML_ACCEPT)]);
    let head = c.head();
    assert_eq!(head.status, 302, "{head:?}");
    assert_eq!(head.header("location"), Some("/login?rd=%2Freport%3Fx%3D1"));
    assert!(c.body(&head, "HEAD").is_empty());

    c.send_head("HEAD", "/api", &[("accept", "application/json")]);
    let head = c.head();
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(head.header("www-authenticate"), Some("Bearer"));
    // The next response on this connection starts right where the 401's head ended: no body was sent.
    c.send_head("GET", "/healthz", &[("accept", "application/json")]);
    let next = c.head();
    assert_eq!(next.status, 200, "{next:?}");
    let echo: Value = serde_json::from_slice(&c.body(&next, "GET")).unwrap();
    assert_eq!(echo["path"], "/healthz");

    let b = logged_in(APP);
    c.send_head(
        "HEAD",
        "/api",
        &[
            ("accept", "application/json"),
            ("cookie", &session_cookie(&b)),
        ],
    );
    // Through jwt_authn and an RBAC policy requiring a principal: the app's 200 means the bearer was there.
    let head = c.head();
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.all("set-cookie").is_empty(), "{head:?}");
    assert!(c.body(&head, "HEAD").is_empty());
}

/// HTTP/1.0 clients get Envoy's `426` before the filter, as on an Istio gateway (which takes HTTP/1.0
/// only with `PILOT_HTTP10`). A CONNECT (no gateway route takes one) reaches the filter, which answers
/// `400` (it has no path), logged in or not: it never becomes a tunnel to anywhere.
#[test]
fn http10_and_connect_never_reach_the_app() {
    let _idp = idp_hold::shared();
    let mut c = Conn::open(port(APP));
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let head = c.head();
    assert_eq!(head.status, 426, "{head:?}");

    let b = logged_in(APP);
    for cookie in [String::new(), session_cookie(&b)] {
        let mut c = Conn::open(port(APP));
        c.send(
            format!(
                "CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\ncookie: {cookie}\r\n\r\n"
            )
            .as_bytes(),
        );
        let head = c.head();
        assert_eq!(head.status, 400, "{head:?}");
        assert!(c.closed_within(Duration::from_secs(5)), "{head:?}");
    }
}
