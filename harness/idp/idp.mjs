// Test IdP for the oidc-filter harness: oidc-provider with the built-in login form.
//
// Usage: node idp.mjs CONFIG.json
// Prints exactly one line `{"port": N}` on stdout once listening; everything else goes to stderr.
// CONFIG: { issuer, port, clients: [...], jwks?, jwks_file?, cookie_keys?, clock_ahead? }, see README.md.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { lookup as dnsLookup } from 'node:dns';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

// oidc-provider prints its development notices with console.info, i.e. on stdout, which belongs to
// the `{"port": N}` handshake. Send them to stderr, and drop the ones that only say "this is a dev
// setup" (we know): they would bury the request log.
const DEV_NOTICES = [
  'you SHOULD change it',
  'quick start development-only',
  'Unsupported runtime',
];
const toStderr = (...args) => {
  const line = args.join(' ');
  if (!DEV_NOTICES.some((n) => line.includes(n))) process.stderr.write(`${line}\n`);
};
console.log = toStderr;
console.info = toStderr;
console.warn = toStderr;

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// A clock `clock_ahead` seconds ahead of the machine's, as an IdP whose clock is off: oidc-provider dates
// everything (tokens' `iat` and `exp`, their expiry checks) by `Date.now`, set before it is imported.
if (config.clock_ahead) {
  const machineNow = Date.now;
  const ahead = config.clock_ahead * 1000;
  Date.now = () => machineNow() + ahead;
}

// Imported after console is redirected: the module warns about the runtime when it loads.
const { default: Provider } = await import('oidc-provider');

const issuer = new URL(config.issuer);

// Per-client settings that are ours, not OIDC client metadata; stripped before registration.
const HARNESS_FIELDS = [
  'id_token_ttl', 'access_token_ttl', 'refresh_token_ttl', 'refresh', 'rotate_refresh_token', 'require_pkce',
  'extra_claims_bytes', 'login_hint', 'tokens_end_after_login',
];
const settings = new Map();
const clients = (config.clients || []).map((c) => {
  const own = Object.fromEntries(HARNESS_FIELDS.map((k) => [k, c[k]]));
  settings.set(c.client_id, own);
  const metadata = Object.fromEntries(Object.entries(c).filter(([k]) => !HARNESS_FIELDS.includes(k)));
  metadata.grant_types ??= own.refresh ? ['authorization_code', 'refresh_token'] : ['authorization_code'];
  metadata.response_types ??= ['code'];
  return metadata;
});
const own = (client) => settings.get(client?.clientId) || {};

// `tokens_end_after_login: N`: ID and refresh tokens end N seconds after the login, however late they
// are issued, as IdPs cap them at the end of their own session (Keycloak's SSO Session Max): a renewal
// gives an ID token that expires when the one it renews does.
function endsAfterLogin(client, authTime, ttl) {
  const n = own(client).tokens_end_after_login;
  if (n === undefined || typeof authTime !== 'number') return ttl;
  return Math.max(1, Math.min(ttl, authTime + n - Math.floor(Date.now() / 1000)));
}

function signingKeys() {
  if (config.jwks) return config.jwks;
  if (config.jwks_file && existsSync(config.jwks_file)) {
    return JSON.parse(readFileSync(config.jwks_file, 'utf8'));
  }
  const suffix = randomBytes(6).toString('hex');
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  // RS256 first: oidc-provider signs with the first key that fits the client's algorithm.
  const jwks = {
    keys: [
      { ...rsa, kid: `rsa-${suffix}`, use: 'sig', alg: 'RS256' },
      { ...ec, kid: `ec-${suffix}`, use: 'sig', alg: 'ES256' },
    ],
  };
  if (config.jwks_file) writeFileSync(config.jwks_file, JSON.stringify(jwks), { mode: 0o600 });
  return jwks;
}

const GROUPS = { alice: ['admins', 'users'] };
const ZITADEL_ROLES = 'urn:zitadel:iam:org:project:roles';

async function findAccount(ctx, sub) {
  // Random, so a token (and the session sealing it) cannot be made smaller by compression.
  const fillerBytes = own(ctx?.oidc?.client).extra_claims_bytes || 0;
  // Entra ID's optional claim, an opaque name of the account that its end-session endpoint takes back
  // as `logout_hint`.
  const loginHint = own(ctx?.oidc?.client).login_hint === true ? `O.${Buffer.from(sub).toString('base64url')}` : undefined;
  const filler = fillerBytes > 0 ? randomBytes(fillerBytes).toString('base64url').slice(0, fillerBytes) : undefined;
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        ...(filler && { filler }),
        ...(loginHint && { login_hint: loginHint }),
        email: `${sub}@example.com`,
        email_verified: true,
        name: sub.charAt(0).toUpperCase() + sub.slice(1),
        preferred_username: sub,
        groups: GROUPS[sub] || ['users'],
        // Zitadel's shape of roles: an object, each role mapped to the organizations granting it.
        [ZITADEL_ROLES]: Object.fromEntries((GROUPS[sub] || ['users']).map((g) => [g, { 1000: 'example.com' }])),
      };
    },
  };
}

// All clients are first-party: grant whatever they ask for, so the consent screen never shows.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant) {
    grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  }
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  if (oidc.requestParamClaims.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

const provider = new Provider(config.issuer, {
  clients,
  jwks: signingKeys(),
  findAccount,
  loadExistingGrant,
  claims: {
    openid: ['sub', 'login_hint'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'filler'],
    groups: ['groups'],
    roles: [ZITADEL_ROLES],
  },
  // Put the scope's claims into the ID token too (not only /userinfo): the filter forwards the ID
  // token, and the app reads `email` from it.
  conformIdTokenClaims: false,
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token') && own(client).refresh === true,
  rotateRefreshToken: (ctx) => own(ctx.oidc.entities.Client).rotate_refresh_token === true,
  pkce: { required: (_ctx, client) => own(client).require_pkce !== false },
  ttl: {
    AccessToken: (_ctx, _token, client) => own(client).access_token_ttl ?? 3600,
    AuthorizationCode: 60,
    IdToken: (_ctx, token, client) => endsAfterLogin(client, token.available.auth_time, own(client).id_token_ttl ?? 3600),
    RefreshToken: (_ctx, token, client) => endsAfterLogin(client, token.authTime, own(client).refresh_token_ttl ?? 14 * 24 * 3600),
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  cookies: { keys: config.cookie_keys || ['oidc-filter-harness-cookie-key-1'] },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    // Logout tokens go to clients registered with a `backchannel_logout_uri` when a session ends.
    backchannelLogout: { enabled: true },
    // The `claims` request parameter (OIDC Core 5.5): a client without back-channel logout asks for `sid`
    // in its ID tokens with it.
    claimsParameter: { enabled: true },
  },
  fetch: loopbackFetch,
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    const rows = Object.entries(out).map(([k, v]) => `<pre><strong>${k}</strong>: ${escapeHtml(String(v))}</pre>`);
    ctx.body = `<!DOCTYPE html><html><head><title>IdP error</title></head><body><h1>IdP error</h1>${rows.join('')}</body></html>`;
  },
});

// URLs must come from the issuer, never from the request: clients reach us through a proxy on
// another port, and Envoy's callouts may carry any :authority.
provider.proxy = true;
const forwarded = { host: issuer.host, proto: issuer.protocol.replace(':', '') };

provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('backchannel.success', (_ctx, client, sub) => console.error(`backchannel logout ${client.clientId} ${sub}: delivered`));
provider.on('backchannel.error', (_ctx, err, client, sub) => console.error(`backchannel logout ${client.clientId} ${sub}: ${err.message}`));
provider.use(async (ctx, next) => {
  const start = Date.now();
  await next();
  // The built-in pages import a web font; everything here stays on 127.0.0.1.
  if (typeof ctx.body === 'string' && ctx.response.is('html')) {
    ctx.body = ctx.body.replace(/@import url\(https?:[^)]*\);?/g, '');
  }
  console.error(`${ctx.method} ${ctx.originalUrl} ${ctx.status} ${Date.now() - start}ms`);
});

// The token endpoint takes a client's credentials one way per request, as Okta does (RFC 6749 2.3): one
// that names the client both in `Authorization` and in the form body (`client_id` or `client_secret`) is
// refused `400 invalid_request`, "Cannot supply multiple client credentials". oidc-provider itself lets a
// matching `client_id` through; every login and refresh of the harness goes through this check. The body,
// read here, is handed to oidc-provider as `req.body`, which it reads when the stream is spent.
function oneClientAuth(req, res, next) {
  const path = (req.url || '').split('?')[0];
  if (req.method !== 'POST' || !path.endsWith('/token') || !req.headers.authorization) return next();
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    req.body = Buffer.concat(chunks);
    const form = new URLSearchParams(req.body.toString('latin1'));
    if (form.has('client_id') || form.has('client_secret')) {
      console.error(`POST ${req.url} 400 client named in Authorization and in the body`);
      res.writeHead(400, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify({
        error: 'invalid_request',
        error_description: 'Cannot supply multiple client credentials. Use one of the following: credentials in the Authorization header, credentials in the post body, or a client_assertion in the post body.',
      }));
      return;
    }
    next();
  });
}

const callback = provider.callback();
const server = createServer((req, res) => {
  req.headers['x-forwarded-host'] = forwarded.host;
  req.headers['x-forwarded-proto'] = forwarded.proto;
  oneClientAuth(req, res, () => callback(req, res));
});
// Longer than Envoy's upstream idle timeout, so Envoy never reuses a connection we are closing.
server.keepAliveTimeout = 60_000;
server.listen(config.port || 0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
  console.error(`oidc-provider listening on 127.0.0.1:${server.address().port}, issuer ${config.issuer}`);
});

// The IdP's own requests (back-channel logout) go to the harness's sites: `*.localhost` names
// (RFC 6761), which the system resolver may not know, on 127.0.0.1, which oidc-provider's guard
// against server-side request forgery refuses. Everything here is on loopback by design, so both
// are undone: a dispatcher without the guard, resolving `localhost` names itself.
let loopbackDispatcher;
function loopbackFetch(url, options) {
  if (loopbackDispatcher === undefined) {
    // undici's Agent, as oidc-provider finds it: Node's fetch is undici, loaded on first use.
    void Response;
    const Agent = (globalThis[Symbol.for('undici.globalDispatcher.2')]
      ?? globalThis[Symbol.for('undici.globalDispatcher.1')])?.constructor;
    const lookup = (host, opts, cb) => {
      if (host === 'localhost' || host.endsWith('.localhost')) {
        return opts.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4);
      }
      return dnsLookup(host, opts, cb);
    };
    loopbackDispatcher = Agent ? new Agent({ connect: { lookup } }) : null;
  }
  const { dispatcher: _guarded, ...rest } = options;
  return globalThis.fetch(url, loopbackDispatcher ? { ...rest, dispatcher: loopbackDispatcher } : rest);
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
