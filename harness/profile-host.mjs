// A proxy-wasm host in JavaScript, just enough to run oidc-filter's per-request callbacks in Node's V8 for
// `harness bench --profile`: it loads the module, configures one root context, then plays N requests that
// carry the given Cookie header (context create, request headers, response headers) and prints how many
// the filter forwarded and how many it answered itself.
//
//   node profile-host.mjs MODULE INPUT.json N
//
// With REFUSE_HEADER_WRITES=1 in its environment the host refuses every change to a header map (status
// BadArgument), a fault Envoy does not produce on request: `harness/tests/host_faults.rs` checks that
// the filter then answers 500 rather than forward a request it could not clean.
//
// With "replies" in INPUT.json the host answers the filter's callouts whose `:path` it names (discovery,
// keys), once the plugin is configured; with REFUSE_CALLS=1 it refuses every other callout (status
// BadArgument, what Envoy answers for a cluster it does not have): `host_faults.rs` checks that a refresh
// the host will not send leaves the session working while its token lasts.
//
// With LOGIN_FLOW=1 it plays a login instead of the N requests: `/login`, then the IdP's redirect back
// to the callback with the state and login cookie the first answer gave; it prints both answers' statuses
// and the counters the filter incremented.
//
// With ORPHAN_LOGOUT=1 it plays a back-channel logout whose token is signed with a key the IdP publishes
// only after the filter first fetched its keys: the filter fetches them again for that `kid`, and the
// request ends (its client, or an app that answered first, went away) before they come. Then the same
// token is posted again. It prints both answers' statuses, the callouts made and the counters.
//
// INPUT.json: {"config": "<the plugin configuration>", "env": {"NAME": "value"}, "cookie": "<Cookie or empty>",
//              "replies": {"<path>": {"status": 200, "body": "<text>"}} (optional)}
import { generateKeyPairSync, sign } from 'node:crypto';
import fs from 'node:fs';

const [wasmPath, inputPath, nStr] = process.argv.slice(2);
const N = parseInt(nStr, 10);
const input = JSON.parse(fs.readFileSync(inputPath, 'utf8'));
const enc = new TextEncoder(), dec = new TextDecoder();
let inst, buf = null, u8v = null, dvv = null;
function refresh() {
  const b = inst.exports.memory.buffer;
  if (b !== buf) { buf = b; u8v = new Uint8Array(b); dvv = new DataView(b); }
}
function u8() { refresh(); return u8v; }
function dv() { refresh(); return dvv; }
// Hands `bytes` to the module the way a host does: memory from proxy_on_memory_allocate, then the
// pointer and size written where the module asked.
function give(bytes, pp, ps) {
  const p = inst.exports.proxy_on_memory_allocate(bytes.length);
  u8().set(bytes, p);
  dv().setUint32(pp, p, true);
  dv().setUint32(ps, bytes.length, true);
  return 0;
}
function encodePairs(pairs) {
  const parts = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
  let size = 4 + parts.length * 8;
  for (const [k, v] of parts) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const d = new DataView(out.buffer);
  d.setUint32(0, parts.length, true);
  let o = 4;
  for (const [k, v] of parts) { d.setUint32(o, k.length, true); d.setUint32(o + 4, v.length, true); o += 8; }
  for (const [k, v] of parts) { out.set(k, o); o += k.length + 1; out.set(v, o); o += v.length + 1; }
  return out;
}
// What wrk sends in the benchmark, plus what Envoy adds.
function request(path, cookie) {
  return encodePairs([
    [':authority', '127.0.0.1:10000'], [':path', path], [':method', 'GET'], [':scheme', 'http'],
    ['accept', 'text/html'], ...(cookie ? [['cookie', cookie]] : []),
    ['x-forwarded-proto', 'http'], ['x-request-id', '2a3b8f7c-1d2e-4f5a-9b8c-7d6e5f4a3b2c'],
    ['x-envoy-expected-rq-timeout-ms', '15000']]);
}
let requestHeaders = request('/', input.cookie);
// The request body the filter reads (a back-channel logout's), and the contexts that have ended.
let requestBody = new Uint8Array(0);
const ended = new Set();
let calls = 0;
const config = enc.encode(input.config);
let forwarded = 0, local = 0, setAuthorization = 0, localStatus = 0, refusedCalls = 0, localBody = '';
// Each `authorization` value the filter set, once.
const authorizations = new Set();
const warnings = [];
// Callouts answered after the callback that made them returns: [token, status, body bytes].
const answers = [];
let reply = null, nextToken = 7;
// The last local reply's headers, and the counters by name.
let localHeaders = [];
const metricNames = [], counters = {};
function decodePairs(p) {
  const d = dv(), n = d.getUint32(p, true), out = [];
  let o = p + 4 + n * 8;
  for (let i = 0; i < n; i++) {
    const kl = d.getUint32(p + 4 + i * 8, true), vl = d.getUint32(p + 8 + i * 8, true);
    const k = dec.decode(u8().slice(o, o + kl)); o += kl + 1;
    const v = dec.decode(u8().slice(o, o + vl)); o += vl + 1;
    out.push([k, v]);
  }
  return out;
}
// proxy-wasm's BadArgument.
const refused = process.env.REFUSE_HEADER_WRITES === '1' ? 2 : 0;
const env = {
  proxy_log: (level, p, s) => {
    const text = dec.decode(u8().slice(p, p + s));
    if (process.env.PROFILE_LOG) console.error('log', level, text);
    // proxy-wasm's levels: 3 warn, 4 error, 5 critical.
    if (level >= 3) warnings.push(text);
    return 0;
  },
  proxy_get_buffer_bytes: (type, start, max, pp, ps) => {
    if (type === 7) return give(config, pp, ps);
    if (type === 0) return give(requestBody.slice(start, start + max), pp, ps);
    // The body of the callout reply being handed over.
    if (type === 4 && reply) return give(reply[2].slice(start, start + max), pp, ps);
    return 1;
  },
  proxy_get_header_map_pairs: (map, pp, ps) => give(map === 0 ? requestHeaders : encodePairs([]), pp, ps),
  proxy_get_header_map_value: (map, kp, ks, vp, vs) => {
    if (map === 6 && reply && dec.decode(u8().slice(kp, kp + ks)) === ':status') {
      return give(enc.encode(String(reply[1])), vp, vs);
    }
    return 1;
  },
  proxy_replace_header_map_value: (map, kp, ks, vp, vs) => {
    if (refused) return refused;
    if (map === 0 && dec.decode(u8().slice(kp, kp + ks)) === 'authorization') {
      setAuthorization++;
      authorizations.add(dec.decode(u8().slice(vp, vp + vs)));
    }
    return 0;
  },
  proxy_add_header_map_value: () => refused,
  proxy_remove_header_map_value: () => refused,
  proxy_send_local_response: (status, dp, ds, bp, bs, hp, hs) => {
    local++; localStatus = status; localHeaders = decodePairs(hp);
    localBody = dec.decode(u8().slice(bp, bp + bs));
    return 0;
  },
  proxy_continue_stream: () => 0,
  proxy_get_shared_data: () => 1,
  proxy_set_shared_data: () => 0,
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_define_metric: (kind, np, ns, idp) => {
    metricNames.push(dec.decode(u8().slice(np, np + ns)));
    dv().setUint32(idp, metricNames.length, true);
    return 0;
  },
  proxy_increment_metric: (id, offset) => {
    const name = metricNames[id - 1];
    counters[name] = (counters[name] || 0) + Number(offset);
    return 0;
  },
  // An ended context is gone for the host (Envoy's answer: BadArgument).
  proxy_set_effective_context: (id) => (ended.has(id) ? 2 : 0),
  // The real clock: the session `bench` logged in with is valid for hours from now.
  proxy_get_current_time_nanoseconds: (p) => {
    dv().setBigUint64(p, BigInt(Date.now()) * 1000000n, true);
    return 0;
  },
  // Without "replies", callouts (discovery, keys) are accepted and never answered: the logged-in path
  // needs neither.
  proxy_http_call: (cp, cs, hp, hs, bp, bs, tp, ts, timeout, tokp) => {
    const path = (decodePairs(hp).find(([k]) => k === ':path') || [])[1];
    calls++;
    // A list: each fetch of the path takes the next answer, the last one stays.
    let canned = input.replies && input.replies[path];
    if (Array.isArray(canned)) canned = canned.length > 1 ? canned.shift() : canned[0];
    if (!canned && process.env.REFUSE_CALLS === '1') { refusedCalls++; return 2; }
    const token = nextToken++;
    if (canned) answers.push([token, canned.status, enc.encode(canned.body)]);
    dv().setUint32(tokp, token, true);
    return 0;
  },
};
const envList = Object.entries(input.env).map(([k, v]) => enc.encode(`${k}=${v}\0`));
const wasi = {
  random_get: (p, n) => {
    const b = u8();
    for (let i = 0; i < n; i++) b[p + i] = (Math.random() * 256) | 0;
    return 0;
  },
  environ_sizes_get: (cp, sp) => {
    dv().setUint32(cp, envList.length, true);
    dv().setUint32(sp, envList.reduce((a, e) => a + e.length, 0), true);
    return 0;
  },
  environ_get: (pp, bp) => {
    let o = bp;
    envList.forEach((e, i) => { dv().setUint32(pp + 4 * i, o, true); u8().set(e, o); o += e.length; });
    return 0;
  },
  fd_write: () => 0,
  proc_exit: (code) => { throw new Error(`exit ${code}`); },
};
inst = new WebAssembly.Instance(new WebAssembly.Module(fs.readFileSync(wasmPath)),
  {env, wasi_snapshot_preview1: wasi});
const x = inst.exports;
if (x._initialize) x._initialize();
x.proxy_on_context_create(1, 0);
if (!x.proxy_on_configure(1, config.length)) throw new Error('the module refused its configuration');
// Answers the callouts made so far, and those the answers lead to (discovery, then keys).
for (let round = 0; input.replies && round < 10; round++) {
  x.proxy_on_tick(1);
  while (answers.length) {
    reply = answers.shift();
    x.proxy_on_http_call_response(1, reply[0], 1, reply[2].length, 0);
    reply = null;
  }
}
if (process.env.ORPHAN_LOGOUT === '1') {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'rotated-1', alg: 'ES256', use: 'sig' };
  // The keys the IdP publishes from now on: those of before, and the new one.
  const before = JSON.parse(input.replies['/oauth2/keys'][0].body);
  input.replies['/oauth2/keys'] = [{ status: 200, body: JSON.stringify({ keys: [...before.keys, jwk] }) }];
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const signingInput = `${b64({ alg: 'ES256', kid: 'rotated-1', typ: 'logout+jwt' })}.${b64({
    iss: input.logout.iss, aud: input.logout.aud, iat: now, exp: now + 120, jti: 'j-1', sid: 'sid-1',
    events: { 'http://schemas.openid.net/event/backchannel-logout': {} } })}`;
  const signature = sign('sha256', Buffer.from(signingInput), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  requestBody = enc.encode(`logout_token=${signingInput}.${signature.toString('base64url')}`);
  const post = (id) => {
    requestHeaders = encodePairs([
      [':authority', 'app.example.com'], [':path', '/oauth2/backchannel-logout'], [':method', 'POST'],
      [':scheme', 'https'], ['content-type', 'application/x-www-form-urlencoded'],
      ['content-length', String(requestBody.length)]]);
    localStatus = 0;
    x.proxy_on_context_create(id, 1);
    x.proxy_on_request_headers(id, 6, 0);
    x.proxy_on_request_body(id, requestBody.length, 1);
  };
  post(200);
  const callsBefore = calls;
  // It waits for the keys; its request ends before they come, and a tick passes.
  ended.add(200);
  x.proxy_on_tick(1);
  while (answers.length) {
    reply = answers.shift();
    x.proxy_on_http_call_response(1, reply[0], 1, reply[2].length, 0);
    reply = null;
  }
  const first = localStatus;
  post(201);
  console.log(JSON.stringify({ statuses: [first, localStatus], refetches: callsBefore, calls, counters, warnings }));
  process.exit(0);
}
if (process.env.LOGIN_FLOW === '1') {
  const play = (id, path, cookie) => {
    requestHeaders = request(path, cookie);
    x.proxy_on_context_create(id, 1);
    x.proxy_on_request_headers(id, 10, 1);
    return localStatus;
  };
  const started = play(100, '/login?rd=%2F');
  const header = (name) => (localHeaders.find(([k]) => k === name) || [])[1] || '';
  const state = new URL(header('location'), 'http://x').searchParams.get('state');
  const loginCookie = header('set-cookie').split(';')[0];
  const callback = play(101, `/oauth2/callback?code=c&state=${state}`, loginCookie);
  console.log(JSON.stringify({statuses: [started, callback], body: localBody, counters, refusedCalls, warnings}));
  process.exit(0);
}
for (let i = 0; i < N; i++) {
  const id = 100 + i;
  x.proxy_on_context_create(id, 1);
  // The action: 0 = continue (forwarded), 1 = pause (a local reply, or waiting).
  if (x.proxy_on_request_headers(id, 10, 1) === 0) forwarded++;
  x.proxy_on_response_headers(id, 3, 0);
}
console.log(JSON.stringify({requests: N, forwarded, local, setAuthorization,
  authorizations: [...authorizations], localStatus, refusedCalls, warnings}));
