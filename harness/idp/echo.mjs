// The sample app behind the filter: echoes each request back.
//
// Usage: node echo.mjs [PORT]   (0 or absent: the OS picks)
// Prints exactly one line `{"port": N}` on stdout once listening.
// Answers 200 with JSON {method, path, headers, body}; to a browser (Accept includes text/html), a
// page greeting the user named by the Bearer JWT's `email` claim (decoded, not verified) and the
// same JSON in <pre id="echo">. A path under /cacheable is answered with
// `Cache-Control: public, max-age=60, s-maxage=600`, as an app marks a page for shared caches.

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

// Text content only needs these three; quotes stay readable in the echoed JSON.
function escapeHtml(s) {
  return s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
}

const server = createServer((req, res) => {
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
    if (req.url.startsWith('/cacheable')) res.setHeader('cache-control', 'public, max-age=60, s-maxage=600');
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

server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
