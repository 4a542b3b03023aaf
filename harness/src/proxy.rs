//! A TCP proxy in front of the IdP whose behaviour tests switch at runtime to inject faults.
//!
//! It listens before the IdP exists (so the issuer URL and Envoy's IdP cluster can name it) and
//! forwards to a target set later. Switching the mode closes every open connection: Envoy pools
//! upstream connections, and a pooled connection must not keep the old behaviour.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// What the proxy does with each new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways to the target (closes the connection if there is no target).
    Forward,
    /// Accept, then close at once.
    Refuse,
    /// Accept and read, never answer.
    Hang,
    /// Answer every HTTP request with this response (then close the connection).
    Respond {
        /// Status code.
        status: u16,
        /// Content-Type header.
        content_type: String,
        /// Body.
        body: String,
    },
    /// Answer every HTTP request with `301 Moved Permanently` to `location` (then close the connection).
    Redirect {
        /// The Location header.
        location: String,
    },
    /// Forward, holding each request the client sends for this long (a request that arrives in several
    /// reads is held once: a chunk is held when it is the first, or the first since an answer).
    Delay(Duration),
    /// Forward, holding requests whose path starts with `path_prefix` for `delay` and the others not
    /// at all (one request per connection, `connection: close` both ways): e.g. a token endpoint
    /// that is slow while discovery and JWKS answer at once.
    DelayFor {
        /// Request paths (query included) starting with this are held.
        path_prefix: String,
        /// For this long.
        delay: Duration,
    },
    /// Answer requests whose path starts with `path_prefix` with this response, forward the
    /// others (one request per connection, `connection: close` both ways): e.g. a token endpoint
    /// that returns a forged token while discovery and JWKS stay real.
    RespondFor {
        /// Request paths (query included) starting with this get the canned response.
        path_prefix: String,
        /// And, when set, only those that contain this (in their head or body): e.g. a token endpoint
        /// that fails one user's refresh token.
        containing: Option<String>,
        /// Status code.
        status: u16,
        /// Content-Type header.
        content_type: String,
        /// Body.
        body: String,
    },
}

impl Mode {
    /// A canned response.
    pub fn respond(status: u16, content_type: &str, body: &str) -> Mode {
        Mode::Respond {
            status,
            content_type: content_type.to_string(),
            body: body.to_string(),
        }
    }

    /// A delay for paths under `path_prefix` only.
    pub fn delay_for(path_prefix: &str, delay: Duration) -> Mode {
        Mode::DelayFor {
            path_prefix: path_prefix.to_string(),
            delay,
        }
    }

    /// A canned response for paths under `path_prefix` only.
    pub fn respond_for(path_prefix: &str, status: u16, content_type: &str, body: &str) -> Mode {
        Mode::respond_where(path_prefix, None, status, content_type, body)
    }

    /// A canned response for requests that contain `needle` (in their head or body) only.
    pub fn respond_if_contains(needle: &str, status: u16, content_type: &str, body: &str) -> Mode {
        Mode::respond_where("", Some(needle), status, content_type, body)
    }

    fn respond_where(
        path_prefix: &str,
        containing: Option<&str>,
        status: u16,
        content_type: &str,
        body: &str,
    ) -> Mode {
        Mode::RespondFor {
            path_prefix: path_prefix.to_string(),
            containing: containing.map(str::to_string),
            status,
            content_type: content_type.to_string(),
            body: body.to_string(),
        }
    }
}

/// The fault-injecting proxy. Stops (and closes its connections) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mutex<Mode>,
    target: Mutex<Option<SocketAddr>>,
    open: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    stopped: AtomicBool,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 on a port the OS picks, in [`Mode::Forward`] without a target.
    pub fn start() -> Result<FaultProxy> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind(addr).with_context(|| format!("proxy: binding {addr}"))?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            mode: Mutex::new(Mode::Forward),
            target: Mutex::new(None),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let shared = Arc::clone(&inner);
        thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, shared))?;
        Ok(FaultProxy { addr, inner })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where [`Mode::Forward`] and [`Mode::Delay`] connect to. Closes open connections.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        *lock(&self.inner.target) = target;
        self.close_connections();
    }

    /// The current target.
    pub fn target(&self) -> Option<SocketAddr> {
        *lock(&self.inner.target)
    }

    /// Switches the mode for new connections and closes the open ones.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.inner.mode) = mode;
        self.close_connections();
    }

    /// Switches to `mode` until the guard is dropped (a test's panic included), then back to
    /// forwarding.
    pub fn fault(&self, mode: Mode) -> Fault<'_> {
        self.set_mode(mode);
        Fault(self)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        lock(&self.inner.mode).clone()
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.inner.open).len()
    }

    /// Closes every open connection (both sides).
    pub fn close_connections(&self) {
        let open = std::mem::take(&mut *lock(&self.inner.open));
        for stream in open.values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A mode in force until dropped ([`FaultProxy::fault`]).
#[must_use = "the mode ends when the guard is dropped"]
pub struct Fault<'a>(&'a FaultProxy);

impl Drop for Fault<'_> {
    fn drop(&mut self) {
        self.0.set_mode(Mode::Forward);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        self.close_connections();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(&inner);
        let _ = thread::Builder::new()
            .name(format!("proxy-conn-{id}"))
            .spawn(move || {
                handle(&shared, id, stream);
                lock(&shared.open).remove(&id);
            });
    }
}

fn track(inner: &Inner, id: u64, stream: &TcpStream) {
    if let Ok(clone) = stream.try_clone() {
        lock(&inner.open).entry(id).or_default().push(clone);
    }
}

fn handle(inner: &Inner, id: u64, client: TcpStream) {
    let _ = client.set_nodelay(true);
    // Track before reading the mode: a switch in between then closes this connection.
    track(inner, id, &client);
    let mode = lock(&inner.mode).clone();
    match mode {
        Mode::Refuse => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Mode::Hang => {
            let _ = io::copy(&mut &client, &mut io::sink());
        }
        Mode::Respond {
            status,
            content_type,
            body,
        } => respond(client, status, &content_type, &body),
        Mode::Redirect { location } => {
            let mut client = client;
            if read_request(&mut client).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            send(
                client,
                301,
                "text/plain",
                &format!("location: {location}\r\n"),
                "",
            );
        }
        Mode::Forward => forward(inner, id, client, None),
        Mode::Delay(delay) => forward(inner, id, client, Some(delay)),
        Mode::DelayFor { path_prefix, delay } => delay_for(inner, id, client, &path_prefix, delay),
        Mode::RespondFor {
            path_prefix,
            containing,
            status,
            content_type,
            body,
        } => respond_for(
            inner,
            id,
            client,
            &|r| {
                request_path(r).starts_with(&path_prefix)
                    && containing
                        .as_deref()
                        .is_none_or(|n| !n.is_empty() && find(r, n.as_bytes()).is_some())
            },
            status,
            &content_type,
            &body,
        ),
    }
}

fn respond_for(
    inner: &Inner,
    id: u64,
    mut client: TcpStream,
    matches: &dyn Fn(&[u8]) -> bool,
    status: u16,
    content_type: &str,
    body: &str,
) {
    let Ok(request) = read_request(&mut client) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if matches(&request) {
        send_response(client, status, content_type, body);
        return;
    }
    forward_one(inner, id, client, &request);
}

fn delay_for(inner: &Inner, id: u64, mut client: TcpStream, prefix: &str, delay: Duration) {
    let Ok(request) = read_request(&mut client) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if request_path(&request).starts_with(prefix) {
        thread::sleep(delay);
    }
    forward_one(inner, id, client, &request);
}

/// The path (and query) of an HTTP/1.1 request.
fn request_path(request: &[u8]) -> String {
    request
        .split(|&b| b == b' ')
        .nth(1)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}

/// Sends `request` to the target on a connection of its own and copies the answer back.
fn forward_one(inner: &Inner, id: u64, mut client: TcpStream, request: &[u8]) {
    let target = *lock(&inner.target);
    let upstream = target.and_then(|t| TcpStream::connect_timeout(&t, Duration::from_secs(2)).ok());
    let Some(mut upstream) = upstream else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    track(inner, id, &upstream);
    // One request per connection, so the next one on a pooled connection is judged again.
    if upstream.write_all(&with_connection_close(request)).is_err() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let _ = upstream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = io::copy(&mut upstream, &mut client);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// `request` with its `connection` headers replaced by `connection: close`.
fn with_connection_close(request: &[u8]) -> Vec<u8> {
    let Some(head_end) = find(request, b"\r\n\r\n") else {
        return request.to_vec();
    };
    let mut out = Vec::with_capacity(request.len() + 20);
    for (i, line) in request[..head_end].split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if i > 0 && line.to_ascii_lowercase().starts_with(b"connection:") {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&request[head_end + 4..]);
    out
}

fn forward(inner: &Inner, id: u64, client: TcpStream, delay: Option<Duration>) {
    let target = *lock(&inner.target);
    let upstream = target.and_then(|t| TcpStream::connect_timeout(&t, Duration::from_secs(2)).ok());
    let Some(upstream) = upstream else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = upstream.set_nodelay(true);
    track(inner, id, &upstream);
    let (Ok(client_read), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    };
    // Answers sent back so far: a chunk from the client is held only when it starts a request, the
    // first one or the first after an answer, not when it is the rest of one (a body sent after its
    // headers, a request split across reads under load).
    let answers = Arc::new(AtomicU64::new(0));
    let counted = answers.clone();
    let back = thread::Builder::new()
        .name(format!("proxy-back-{id}"))
        .spawn(move || pump(upstream, client, None, Some(&counted)));
    pump(
        client_read,
        upstream_write,
        delay.map(|d| (d, &*answers)),
        None,
    );
    if let Ok(back) = back {
        let _ = back.join();
    }
}

/// Copies `from` to `to` until either side ends, then closes both. With `delay`, holds each chunk that
/// starts a request (the first, or the first after the answer count changed) that long; `sent` counts
/// the chunks copied.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Option<(Duration, &AtomicU64)>,
    sent: Option<&AtomicU64>,
) {
    let mut buf = [0u8; 16 * 1024];
    let mut answers_seen = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((d, answers)) = delay {
            let now = answers.load(Ordering::SeqCst);
            if answers_seen != Some(now) {
                answers_seen = Some(now);
                thread::sleep(d);
            }
        }
        // Counted before it is written: once the client has the answer, its next request must see it.
        if let Some(sent) = sent {
            sent.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn respond(mut client: TcpStream, status: u16, content_type: &str, body: &str) {
    if read_request(&mut client).is_err() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    send_response(client, status, content_type, body);
}

fn send_response(client: TcpStream, status: u16, content_type: &str, body: &str) {
    send(client, status, content_type, "", body);
}

/// A response with `headers` (whole lines, each ending `\r\n`) besides the content type and length.
fn send(mut client: TcpStream, status: u16, content_type: &str, headers: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason(status),
        body.len(),
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Write);
    // Let the peer read the response before the socket goes away.
    let _ = client.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = io::copy(&mut client, &mut io::sink());
}

/// Reads one HTTP/1.1 request (head, and a body by Content-Length or chunked encoding).
fn read_request(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = find(&data, b"\r\n\r\n") {
            break pos + 4;
        }
        if data.len() > 64 * 1024 {
            return Err(io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    loop {
        let body = &data[head_end..];
        let complete = if chunked {
            find(body, b"0\r\n\r\n").is_some()
        } else {
            body.len() >= length
        };
        if complete {
            return Ok(data);
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A layer-4 load balancer in front of gateway replicas, as a cloud's network load balancer in front of
/// an Istio ingress gateway's pods: each new TCP connection goes to the next of its targets in turn, and
/// its bytes (TLS included) pass both ways untouched. Stops accepting when dropped.
pub struct RoundRobin {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl RoundRobin {
    /// Listens on `addr` (port 0: the OS picks) and spreads connections over `targets`.
    pub fn bind(addr: SocketAddr, targets: Vec<SocketAddr>) -> Result<RoundRobin> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("balancer: binding {addr}"))?;
        let addr = listener.local_addr()?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopped);
        thread::Builder::new()
            .name(format!("balancer-{}", addr.port()))
            .spawn(move || {
                let mut next = 0usize;
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (Ok(client), Some(&target)) =
                        (client, targets.get(next % targets.len().max(1)))
                    else {
                        continue;
                    };
                    next += 1;
                    let _ = thread::Builder::new().spawn(move || {
                        let Ok(upstream) = TcpStream::connect(target) else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone())
                        else {
                            return;
                        };
                        let (mut c, mut u) = (client, upstream);
                        let up = thread::spawn(move || {
                            let _ = io::copy(&mut c2, &mut u2);
                            let _ = u2.shutdown(Shutdown::Write);
                        });
                        let _ = io::copy(&mut u, &mut c);
                        let _ = c.shutdown(Shutdown::Write);
                        let _ = up.join();
                    });
                }
            })?;
        Ok(RoundRobin { addr, stopped })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop to see it.
        let _ = TcpStream::connect(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr) -> io::Result<String> {
        get_within(addr, Duration::from_secs(2))
    }

    fn get_path(addr: SocketAddr, path: &str) -> io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n").as_bytes(),
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    fn get_within(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// A one-shot upstream that answers every connection with "upstream".
    fn upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                thread::spawn(move || {
                    let _ = read_request(&mut s);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream",
                    );
                });
            }
        });
        addr
    }

    #[test]
    fn modes() {
        let proxy = FaultProxy::start().unwrap();
        // Forward without a target closes.
        assert_eq!(get(proxy.addr()).unwrap(), "");
        proxy.set_target(Some(upstream()));
        assert!(get(proxy.addr()).unwrap().ends_with("upstream"));

        proxy.set_mode(Mode::Refuse);
        assert_eq!(get(proxy.addr()).unwrap_or_default(), "");

        proxy.set_mode(Mode::respond(503, "text/plain", "down"));
        let out = get(proxy.addr()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\ndown"));

        proxy.set_mode(Mode::Delay(Duration::from_millis(300)));
        let t = std::time::Instant::now();
        assert!(get(proxy.addr()).unwrap().ends_with("upstream"));
        assert!(t.elapsed() >= Duration::from_millis(300));

        proxy.set_mode(Mode::respond_for("/token", 200, "application/json", "{}"));
        let out = get_path(proxy.addr(), "/token?x").unwrap();
        assert!(out.ends_with("\r\n\r\n{}"), "{out}");
        assert!(get(proxy.addr()).unwrap().ends_with("upstream"));

        // 1 s: wide enough that a loaded machine's round trip does not look delayed.
        proxy.set_mode(Mode::delay_for("/token", Duration::from_millis(1000)));
        let t = std::time::Instant::now();
        assert!(get(proxy.addr()).unwrap().ends_with("upstream"));
        assert!(t.elapsed() < Duration::from_millis(1000));
        let out = get_path(proxy.addr(), "/token").unwrap();
        assert!(out.ends_with("upstream"), "{out}");
        assert!(t.elapsed() >= Duration::from_millis(1000));

        proxy.set_mode(Mode::Hang);
        let err = get_within(proxy.addr(), Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        assert!(proxy.accepted() >= 8);
    }

    /// An upstream that keeps its connections open and answers each request (head and body) with "ok".
    fn keep_alive_upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let Some(head) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        };
                        let text = String::from_utf8_lossy(&got[..head]).to_ascii_lowercase();
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if got.len() < head + 4 + len {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        }
                        got.drain(..head + 4 + len);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn delay_holds_each_request_once_however_it_arrives() {
        let proxy = FaultProxy::start().unwrap();
        proxy.set_target(Some(keep_alive_upstream()));
        // 1 s: held twice would take 2 s, far from once on a loaded machine.
        proxy.set_mode(Mode::Delay(Duration::from_millis(1000)));
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let answer = |s: &mut TcpStream| {
            let mut out = Vec::new();
            let mut buf = [0u8; 256];
            while !out.ends_with(b"\r\n\r\nok") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
                out.extend_from_slice(&buf[..n]);
            }
        };
        // A request whose body comes in a read of its own is held once, not once per read.
        let t = std::time::Instant::now();
        s.write_all(b"POST /token HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(100));
        s.write_all(b"body").unwrap();
        answer(&mut s);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(1900),
            "{took:?}"
        );
        // The next request on the same connection is held again.
        let t = std::time::Instant::now();
        s.write_all(b"GET /keys HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        answer(&mut s);
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn switching_mode_closes_open_connections() {
        let proxy = FaultProxy::start().unwrap();
        proxy.set_mode(Mode::Hang);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Wait until the proxy has registered the connection.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while proxy.open_connections() == 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        proxy.set_mode(Mode::Forward);
        let mut out = Vec::new();
        assert_eq!(s.read_to_end(&mut out).unwrap(), 0);
    }
}
