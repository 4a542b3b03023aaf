// A second, independent OpenID Provider for interoperability tests: `oauth2-mock-server` (pinned in
// package.json), which approves every authorization request at once (no login form, any client, any
// secret) and signs its tokens with real keys.
//
// Usage: node mock-op.mjs '{"algs": ["RS256"], "token_ttl": 3600, "id_token_claims": {...}}'
// Prints exactly one line `{"port": N, "issuer": "..."}` on stdout once listening on 127.0.0.1 (port
// picked by the OS); logs one line per request to stderr. Settings, all optional:
// - `algs`: signing keys to generate, in order (default ["RS256"]); the library signs with them in turn;
// - `trailing_slash`: the issuer ends with `/` (as Auth0's does);
// - `token_ttl`: lifetime of ID and access tokens, and `expires_in`, in seconds (library: 3600);
// - `id_token_claims`: claims added to every ID token (the library puts only iss, sub, aud, iat, exp, nbf
//   and the nonce the authorization request carried);
// - `access_token_claims`: claims added to every access token (e.g. an `aud`, which it has none of);
// - `clock_offset`: seconds added to the `iat`, `nbf` and `exp` of every token (a negative one: an IdP
//   whose clock lags);
// - `conformant`: undo two of the library's departures from the specs that its API can reach: its
//   discovery document then lists the client authentication it takes (it says `["none"]`), the
//   algorithms it signs with (it says `["RS256"]`) and the refresh grant; and a client id sent in HTTP
//   Basic is form-decoded (RFC 6749 2.3.1) before it becomes the ID token's `aud`.

import { createServer } from 'node:http';

import { Events, OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const settings = JSON.parse(process.argv[2] || '{}');
const issuer = new OAuth2Issuer();
for (const alg of settings.algs || ['RS256']) {
  await issuer.keys.generate(alg, alg === 'EdDSA' ? { crv: 'Ed25519' } : undefined);
}
const service = new OAuth2Service(issuer);

// The library gives both tokens the same lifetime hook; an access token is the one with a `scope`.
service.on(Events.BeforeTokenSigning, (token, req) => {
  const access = 'scope' in token.payload;
  if (settings.token_ttl !== undefined) token.payload.exp = token.payload.iat + settings.token_ttl;
  for (const claim of settings.clock_offset ? ['iat', 'nbf', 'exp'] : []) {
    if (typeof token.payload[claim] === 'number') token.payload[claim] += settings.clock_offset;
  }
  Object.assign(token.payload, access ? settings.access_token_claims : settings.id_token_claims);
  const basic = /^basic /i.test(req.headers.authorization ?? '');
  if (settings.conformant && !access && basic && typeof token.payload.aud === 'string') {
    token.payload.aud = decodeURIComponent(token.payload.aud.replace(/\+/g, ' '));
  }
});
if (settings.conformant) {
  service.on(Events.BeforeWellKnownOpenIdConfiguration, (response) => {
    Object.assign(response.body, {
      token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'none'],
      id_token_signing_alg_values_supported: settings.algs || ['RS256'],
      grant_types_supported: [...response.body.grant_types_supported, 'refresh_token'],
    });
  });
}
service.on(Events.BeforeResponse, (response) => {
  if (settings.token_ttl !== undefined && response.statusCode === 200) {
    response.body.expires_in = settings.token_ttl;
  }
});

const handler = service.requestHandler;
const server = createServer((req, res) => {
  const start = Date.now();
  res.on('finish', () => {
    process.stderr.write(`${req.method} ${req.url} ${res.statusCode} ${Date.now() - start}ms\n`);
  });
  handler(req, res);
});
// Longer than Envoy's upstream idle timeout, so Envoy never reuses a connection we are closing.
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  // Not the library's default (`http://localhost:PORT` for a loopback address): 127.0.0.1 keeps a
  // browser's cookies for the IdP apart from those of the sites on `localhost`.
  issuer.url = `http://127.0.0.1:${port}${settings.trailing_slash ? '/' : ''}`;
  process.stdout.write(`${JSON.stringify({ port, issuer: issuer.url })}\n`);
  process.stderr.write(`oauth2-mock-server listening on 127.0.0.1:${port}, issuer ${issuer.url}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
