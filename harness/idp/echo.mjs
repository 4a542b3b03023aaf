// The sample app behind the filter: echoes each request back.
//
// Usage: node echo.mjs [PORT]   (0 or absent: the OS picks)
// Prints exactly one line `{"port": N}` on stdout once listening.
// Answers 200 with JSON {method, path, headers, body}; to a browser (Accept includes text/html), a
// page greeting the user named by the Bearer JWT's `email` claim (decoded, not verified) and the
// same JSON in <pre id="echo">. A path under /cacheable is answered with
// `Cache-Control: public, max-age=60, s-maxage=600`, as an app marks a page for shared caches, and with
// the CDNs' own caching fields (CDN_CACHE_HEADERS).
//
// Three more paths, for the protocols apps behind a gateway speak besides plain request/response:
// - `/ws…`, a WebSocket upgrade (RFC 6455): the first message is the JSON {path, headers} of the
//   handshake, then each text or binary message comes back as it was sent; each handshake is logged
//   as a line `{"websocket": PATH}` on stdout. Any other upgrade is answered 404.
// - `/events…`, server-sent events: `?n=N&ms=MS` events (default 5 and 300), one every MS ms, each
//   `data: {"i", "sent_at"}` (Unix ms), the first also with the request's `headers`.
// - `/upload…`: reads the body as it comes and answers JSON {method, path, headers, bytes, sha256,
//   headers_at, first_byte_at, end_at} (Unix ms) instead of echoing it.
//
// For the tests of what a browser does on a page's behalf (harness/tests/browser_background.rs):
// - `/sw.js?mode=MODE`: a service worker script (scope `/`) that takes control at once. `pass` answers
//   each request with `fetch(event.request)`, navigations included; `url` with
//   `fetch(event.request.url)` (a new request: no longer a navigation); `shell` caches `/app/shell`
//   (asked for as HTML) at install and answers every navigation from that cache (an offline-first app
//   shell), other requests from the network.

// For the tests of what apps behind the gateway answer themselves (harness/tests/apps.rs):
// - `/mimic?status=N&h=NAME:VALUE&h=…`: answered with status N (default 200) and each `h` as a response
//   header line, repeats kept (several `set-cookie`), and the JSON echo as the body (with the request's
//   trailers, as an app that reads them sees them).
// - a request with the cookie `mimic_login=PATH` (URL-encoded) is answered `302` to PATH, whatever its path:
//   an app that does not take the gateway's login (Grafana's auth proxy with an unknown user, Argo CD
//   without its own token) and sends every page to its own login page; with `mimic_spa_login=PATH`
//   instead, every page is a `200` whose script goes there (a single-page app that found its API's `401`).
// - `/events…?retry=MS`: the stream first sets the `EventSource`'s reconnection delay to MS.

// A request carrying `x-echo-early` is answered at once with JSON {early, method, path, headers}, without
// waiting for its body, as an app that ignores a request's body does.
//
// A request carrying `x-echo-record: ID` is logged as its headers arrive, before any body, as a line
// `{"record": ID, "method", "path", "headers"}` on stdout: what the app was shown of a request the
// gateway then answered itself.

import { createHash } from 'node:crypto';
import { createServer } from 'node:http';

function bearerEmail(authorization) {
  const m = /^Bearer\s+([^.\s]+)\.([^.\s]+)\.[^.\s]*$/i.exec(authorization || '');
  if (!m) return undefined;
  try {
    const payload = JSON.parse(Buffer.from(m[2], 'base64url').toString('utf8'));
    return typeof payload.email === 'string' ? payload.email : undefined;
  } catch {
    return undefined;
  }
}

// What `/cacheable` also says to the caches in front of a gateway that read fields of their own (RFC 9213's
// `CDN-Cache-Control` and a CDN's own, Fastly's and Varnish's `Surrogate-Control`, Akamai's
// `Edge-Control`, nginx's `X-Accel-Expires`) and to those that read only `Expires`.
const CDN_CACHE_HEADERS = [
  ['cdn-cache-control', 'max-age=600'],
  ['cloudflare-cdn-cache-control', 'max-age=600'],
  ['surrogate-control', 'max-age=600'],
  ['edge-control', 'cache-maxage=600s'],
  ['x-accel-expires', '600'],
  ['expires', 'Fri, 31 Dec 2099 23:59:59 GMT'],
];

// Text content only needs these three; quotes stay readable in the echoed JSON.
function escapeHtml(s) {
  return s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
}

const server = createServer((req, res) => {
  const record = req.headers['x-echo-record'];
  if (record) {
    console.log(JSON.stringify({ record, method: req.method, path: req.url, headers: req.headers }));
  }
  // `x-echo-early`: answered at once, before the body comes, as an app that ignores a request's body.
  if (req.headers['x-echo-early']) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(`${JSON.stringify({ early: true, method: req.method, path: req.url, headers: req.headers })}\n`);
  }
  const ownLogin = /(?:^|;\s*)mimic_login=([^;]*)/.exec(req.headers.cookie || '');
  if (ownLogin) {
    res.writeHead(302, { location: decodeURIComponent(ownLogin[1]), 'content-length': '0' });
    return res.end();
  }
  const spaLogin = /(?:^|;\s*)mimic_spa_login=([^;]*)/.exec(req.headers.cookie || '');
  if (spaLogin) {
    // A page whose script finds the user not logged in (its API said 401) and goes to the login page.
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(
      `<!DOCTYPE html><title>app</title><script>setTimeout(() => location.assign(${JSON.stringify(
        decodeURIComponent(spaLogin[1]),
      ).replace(/</g, '\\u003c')}), 50)</script>\n`,
    );
  }
  if (req.url.startsWith('/events')) return events(req, res);
  if (req.url.startsWith('/sw.js')) return serviceWorker(req, res);
  if (req.url.startsWith('/upload')) return upload(req, res);
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const echo = {
      method: req.method,
      path: req.url,
      headers: req.headers,
      body: Buffer.concat(chunks).toString('utf8'),
    };
    const json = JSON.stringify(echo, null, 2);
    if (req.url.startsWith('/mimic')) return mimic(req, res, echo);
    // A per-user page an app marks not to be stored (the back/forward cache's rules differ for it).
    if (req.url.startsWith('/nostore')) res.setHeader('cache-control', 'no-store');
    if (req.url.startsWith('/cacheable')) {
      res.setHeader('cache-control', 'public, max-age=60, s-maxage=600');
      for (const [name, value] of CDN_CACHE_HEADERS) res.setHeader(name, value);
    }
    if ((req.headers.accept || '').includes('text/html')) {
      const who = bearerEmail(req.headers.authorization) || 'anonymous';
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>echo</title></head>
<body><h1>Hello, ${escapeHtml(who)}</h1>
<pre id="echo">${escapeHtml(json)}</pre>
</body></html>
`);
    } else {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${json}\n`);
    }
  });
});

// The service workers of `/sw.js?mode=…`, text fixed per mode.
const SERVICE_WORKERS = {
  pass: "self.addEventListener('fetch', (e) => e.respondWith(fetch(e.request)));",
  url: "self.addEventListener('fetch', (e) => e.respondWith(fetch(e.request.url)));",
  shell: `self.addEventListener('install', (e) => e.waitUntil(caches.open('shell').then((c) => c.add(new Request('/app/shell', { headers: { accept: 'text/html' } })))));
self.addEventListener('fetch', (e) => {
  if (e.request.mode === 'navigate') {
    e.respondWith(caches.match('/app/shell').then((r) => r || fetch(e.request)));
  } else {
    e.respondWith(fetch(e.request));
  }
});`,
};

function serviceWorker(req, res) {
  const mode = new URL(req.url, 'http://x').searchParams.get('mode') || 'pass';
  const body = SERVICE_WORKERS[mode];
  if (!body) {
    res.writeHead(404);
    return res.end();
  }
  res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-cache' });
  res.end(`self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
${body}
`);
}

function mimic(req, res, echo) {
  const query = new URL(req.url, 'http://x').searchParams;
  const lines = [];
  for (const h of query.getAll('h')) {
    const i = h.indexOf(':');
    lines.push(h.slice(0, i).trim(), h.slice(i + 1).trim());
  }
  if (!query.getAll('h').some((h) => /^content-type:/i.test(h))) lines.push('content-type', 'application/json');
  res.writeHead(Number(query.get('status') || 200), lines);
  res.end(`${JSON.stringify({ ...echo, trailers: req.trailers })}\n`);
}

function events(req, res) {
  const query = new URL(req.url, 'http://x').searchParams;
  const n = Number(query.get('n') || 5);
  const ms = Number(query.get('ms') || 300);
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  if (query.get('retry')) res.write(`retry: ${Number(query.get('retry'))}\n\n`);
  let i = 0;
  const next = () => {
    const event = { i, sent_at: Date.now() };
    if (i === 0) event.headers = req.headers;
    res.write(`id: ${i}\ndata: ${JSON.stringify(event)}\n\n`);
    i += 1;
    if (i < n) setTimeout(next, ms);
    else res.end();
  };
  next();
}

function upload(req, res) {
  const headersAt = Date.now();
  const hash = createHash('sha256');
  let bytes = 0;
  let firstByteAt = null;
  req.on('data', (c) => {
    if (firstByteAt === null) firstByteAt = Date.now();
    bytes += c.length;
    hash.update(c);
  });
  req.on('end', () => {
    const answer = {
      method: req.method,
      path: req.url,
      headers: req.headers,
      bytes,
      sha256: hash.digest('hex'),
      headers_at: headersAt,
      first_byte_at: firstByteAt,
      end_at: Date.now(),
    };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(answer)}\n`);
  });
}

// RFC 6455 §1.3: the accept key is the SHA-1 of the client's key and this GUID.
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

function wsFrame(opcode, payload) {
  const len = payload.length;
  let head;
  if (len < 126) {
    head = Buffer.from([0x80 | opcode, len]);
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([head, payload]);
}

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  const key = req.headers['sec-websocket-key'];
  if (!req.url.startsWith('/ws') || (req.headers.upgrade || '').toLowerCase() !== 'websocket' || !key) {
    socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    return;
  }
  process.stdout.write(`${JSON.stringify({ websocket: req.url })}\n`);
  const accept = createHash('sha1').update(key + WS_GUID).digest('base64');
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`,
  );
  socket.write(wsFrame(1, Buffer.from(JSON.stringify({ path: req.url, headers: req.headers }))));
  let buf = Buffer.from(head);
  let parts = [];
  let partOpcode = 1;
  socket.on('data', (data) => {
    buf = Buffer.concat([buf, data]);
    for (;;) {
      if (buf.length < 2) return;
      const fin = (buf[0] & 0x80) !== 0;
      const opcode = buf[0] & 0x0f;
      const masked = (buf[1] & 0x80) !== 0;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      const maskLen = masked ? 4 : 0;
      if (buf.length < off + maskLen + len) return;
      const mask = buf.subarray(off, off + maskLen);
      const payload = Buffer.from(buf.subarray(off + maskLen, off + maskLen + len));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
      buf = buf.subarray(off + maskLen + len);
      if (opcode === 8) {
        socket.end(wsFrame(8, payload.subarray(0, 2)));
        return;
      }
      if (opcode === 9) {
        socket.write(wsFrame(10, payload));
      } else if (opcode <= 2) {
        if (opcode !== 0) partOpcode = opcode;
        parts.push(payload);
        if (fin) {
          socket.write(wsFrame(partOpcode, Buffer.concat(parts)));
          parts = [];
        }
      }
    }
  });
});

server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
