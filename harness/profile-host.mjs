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
// INPUT.json: {"config": "<the plugin configuration>", "env": {"NAME": "value"}, "cookie": "<Cookie or empty>"}
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
const requestHeaders = encodePairs([
  [':authority', '127.0.0.1:10000'], [':path', '/'], [':method', 'GET'], [':scheme', 'http'],
  ['accept', 'text/html'], ...(input.cookie ? [['cookie', input.cookie]] : []),
  ['x-forwarded-proto', 'http'], ['x-request-id', '2a3b8f7c-1d2e-4f5a-9b8c-7d6e5f4a3b2c'],
  ['x-envoy-expected-rq-timeout-ms', '15000']]);
const config = enc.encode(input.config);
let forwarded = 0, local = 0, setAuthorization = 0, localStatus = 0;
// proxy-wasm's BadArgument.
const refused = process.env.REFUSE_HEADER_WRITES === '1' ? 2 : 0;
const env = {
  proxy_log: (level, p, s) => {
    if (process.env.PROFILE_LOG) console.error('log', level, dec.decode(u8().slice(p, p + s)));
    return 0;
  },
  proxy_get_buffer_bytes: (type, start, max, pp, ps) => (type === 7 ? give(config, pp, ps) : 1),
  proxy_get_header_map_pairs: (map, pp, ps) => give(map === 0 ? requestHeaders : encodePairs([]), pp, ps),
  proxy_get_header_map_value: () => 1,
  proxy_replace_header_map_value: (map, kp, ks) => {
    if (refused) return refused;
    if (map === 0 && dec.decode(u8().slice(kp, kp + ks)) === 'authorization') setAuthorization++;
    return 0;
  },
  proxy_add_header_map_value: () => refused,
  proxy_remove_header_map_value: () => refused,
  proxy_send_local_response: (status) => { local++; localStatus = status; return 0; },
  proxy_continue_stream: () => 0,
  proxy_get_shared_data: () => 1,
  proxy_set_shared_data: () => 0,
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_define_metric: (kind, np, ns, idp) => { dv().setUint32(idp, 1, true); return 0; },
  proxy_increment_metric: () => 0,
  proxy_set_effective_context: () => 0,
  // The real clock: the session `bench` logged in with is valid for hours from now.
  proxy_get_current_time_nanoseconds: (p) => {
    dv().setBigUint64(p, BigInt(Date.now()) * 1000000n, true);
    return 0;
  },
  // Callouts (discovery, keys) are accepted and never answered: the logged-in path needs neither.
  proxy_http_call: (a, b, c, d, e, f, g, h, timeout, tokp) => { dv().setUint32(tokp, 7, true); return 0; },
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
for (let i = 0; i < N; i++) {
  const id = 100 + i;
  x.proxy_on_context_create(id, 1);
  // The action: 0 = continue (forwarded), 1 = pause (a local reply, or waiting).
  if (x.proxy_on_request_headers(id, 10, 1) === 0) forwarded++;
  x.proxy_on_response_headers(id, 3, 0);
}
console.log(JSON.stringify({requests: N, forwarded, local, setAuthorization, localStatus}));
