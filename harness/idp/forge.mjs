// Forges ID tokens for the attack tests: signed with the test IdP's own key (so that exactly one
// claim is wrong), with another key, with `alg: none`, or HS256 keyed with the RSA public key.
//
// Usage: node forge.mjs SPEC.json  (or the JSON itself as the argument)
// SPEC: { jwks_file, how: "rs256" | "other-key" | "none" | "hs256-pubkey", header?: {...}, payload: {...} }
// Prints the compact JWT on stdout.

import { createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';

const arg = process.argv[2];
const spec = JSON.parse(existsSync(arg) ? readFileSync(arg, 'utf8') : arg);
const jwks = JSON.parse(readFileSync(spec.jwks_file, 'utf8'));
const rsa = jwks.keys.find((k) => k.kty === 'RSA');
if (!rsa) throw new Error(`${spec.jwks_file} has no RSA key`);

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const alg = { rs256: 'RS256', 'other-key': 'RS256', none: 'none', 'hs256-pubkey': 'HS256' }[spec.how];
if (!alg) throw new Error(`unknown how: ${spec.how}`);
// A `null` in spec.header removes that member (e.g. `{"kid": null}` for a token without kid).
const header = Object.fromEntries(
  Object.entries({ alg, typ: 'JWT', ...(alg === 'none' ? {} : { kid: rsa.kid }), ...(spec.header || {}) })
    .filter(([, v]) => v !== null),
);
const input = `${b64(header)}.${b64(spec.payload)}`;

let signature;
switch (spec.how) {
  case 'rs256':
    signature = sign('sha256', Buffer.from(input), createPrivateKey({ key: rsa, format: 'jwk' }));
    break;
  case 'other-key':
    signature = sign('sha256', Buffer.from(input), generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey);
    break;
  case 'none':
    signature = Buffer.alloc(0);
    break;
  case 'hs256-pubkey': {
    // The classic algorithm confusion: the verifier's RSA public key, as PEM, used as an HMAC secret.
    const pem = createPublicKey({ key: rsa, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    signature = createHmac('sha256', pem).update(input).digest();
    break;
  }
}
process.stdout.write(`${input}.${signature.toString('base64url')}\n`);
