// Generates the OIDC test data: a JWKS, its (test-only) private keys, and ID tokens good and bad.
//
// Run from anywhere with Node 20+: `node testdata/gen/gen.mjs`. Only node's built-in `crypto` is used, so
// it needs no npm install. Private keys are reused when present, so a rerun keeps the keys (and the
// deterministic RS256/EdDSA signatures) stable; PS256/ECDSA signatures are randomized and will change.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const jwksDir = path.join(root, "jwks");
const privDir = path.join(jwksDir, "private");
const tokensDir = path.join(root, "tokens");
fs.mkdirSync(privDir, { recursive: true });
fs.mkdirSync(tokensDir, { recursive: true });

// The values the Rust tests expect (filter/src/oidc/id_token.rs).
const ISSUER = "https://idp.example.com";
const CLIENT_ID = "oidc-filter-test";
const NONCE = "n-0S6_WzA2Mj";
const NOW = 1_900_000_000;

const b64url = (buf) => Buffer.from(buf).toString("base64url");

// Loads a private key from `private/<name>.pem`, or generates and saves one.
function key(name, type, options) {
  const file = path.join(privDir, `${name}.pem`);
  if (fs.existsSync(file)) {
    return crypto.createPrivateKey(fs.readFileSync(file));
  }
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  fs.writeFileSync(file, privateKey.export({ type: "pkcs8", format: "pem" }));
  return privateKey;
}

const keys = {
  rs256: key("rs256-1", "rsa", { modulusLength: 2048 }),
  ps256: key("ps256-1", "rsa", { modulusLength: 2048 }),
  es256: key("es256-1", "ec", { namedCurve: "P-256" }),
  es384: key("es384-1", "ec", { namedCurve: "P-384" }),
  eddsa: key("eddsa-1", "ed25519"),
  noalg: key("rsa-noalg", "rsa", { modulusLength: 2048 }),
  enc: key("enc-1", "rsa", { modulusLength: 2048 }),
};

const pub = (k) => crypto.createPublicKey(k).export({ format: "jwk" });

const jwks = {
  keys: [
    { ...pub(keys.rs256), kid: "rs256-1", use: "sig", alg: "RS256" },
    { ...pub(keys.ps256), kid: "ps256-1", use: "sig", alg: "PS256" },
    { ...pub(keys.es256), kid: "es256-1", use: "sig", alg: "ES256" },
    { ...pub(keys.es384), kid: "es384-1", use: "sig", alg: "ES384" },
    { ...pub(keys.eddsa), kid: "eddsa-1", use: "sig", alg: "EdDSA" },
    // No `alg`: usable for every RSA signature algorithm.
    { ...pub(keys.noalg), kid: "rsa-noalg" },
    // An encryption key: must never verify a signature.
    { ...pub(keys.enc), kid: "enc-1", use: "enc", alg: "RSA-OAEP" },
    // A symmetric key: must be skipped, or HS256 tokens could be forged with it.
    { kty: "oct", kid: "hmac-1", k: b64url(Buffer.from("not-a-secret-test-hmac-key-32byte")) },
    // A key type from the future: must be skipped, not fail the whole set.
    { kty: "AKP", kid: "future-1", alg: "ML-DSA-44", pub: "AAAA" },
  ],
};
fs.writeFileSync(path.join(jwksDir, "keys.json"), JSON.stringify(jwks, null, 2) + "\n");

// Signs `header.payload` for a JWS alg.
function sign(alg, privateKey, input) {
  const data = Buffer.from(input);
  switch (alg) {
    case "RS256":
    case "RS384":
    case "RS512":
      return crypto.sign(`sha${alg.slice(2)}`, data, privateKey);
    case "PS256":
      return crypto.sign("sha256", data, {
        key: privateKey,
        padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
        saltLength: 32,
      });
    case "ES256":
      return crypto.sign("sha256", data, { key: privateKey, dsaEncoding: "ieee-p1363" });
    case "ES384":
      return crypto.sign("sha384", data, { key: privateKey, dsaEncoding: "ieee-p1363" });
    case "EdDSA":
      return crypto.sign(null, data, privateKey);
    default:
      throw new Error(`no signer for ${alg}`);
  }
}

function jwt(header, claims, signer) {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(signer(input))}`;
}

const claims = (overrides = {}) => {
  const c = {
    iss: ISSUER,
    sub: "user-1",
    aud: CLIENT_ID,
    iat: NOW,
    exp: NOW + 3600,
    nonce: NONCE,
    sid: "sid-1",
    email: "user-1@example.com",
    ...overrides,
  };
  for (const [k, v] of Object.entries(c)) {
    if (v === undefined) delete c[k];
  }
  return c;
};

const signed = (alg, kid, privateKey, overrides) =>
  jwt({ alg, typ: "JWT", ...(kid ? { kid } : {}) }, claims(overrides), (i) => sign(alg, privateKey, i));
const rs256 = (overrides) => signed("RS256", "rs256-1", keys.rs256, overrides);

// name -> [token, what the verifier must say]
const tokens = {
  "valid-rs256": [rs256(), "ok"],
  "valid-ps256": [signed("PS256", "ps256-1", keys.ps256), "ok"],
  "valid-es256": [signed("ES256", "es256-1", keys.es256), "ok"],
  "valid-es384": [signed("ES384", "es384-1", keys.es384), "ok"],
  "valid-eddsa": [signed("EdDSA", "eddsa-1", keys.eddsa), "ok"],
  "valid-noalg-key-rs512": [signed("RS512", "rsa-noalg", keys.noalg), "ok (JWK without alg)"],
  "valid-no-kid": [signed("ES256", null, keys.es256), "ok (no kid: keys of the alg are tried)"],
  "valid-multi-aud-azp": [rs256({ aud: [CLIENT_ID, "other-api"], azp: CLIENT_ID }), "ok"],
  // Long expired by any real clock: proves only the caller's `now` judges time.
  "valid-in-2001": [
    rs256({ iat: 1_000_000_000, exp: 1_000_003_600 }),
    "ok with `now` = 1000000000, Expired with the usual `now`",
  ],
  "alg-none": [
    `${b64url(JSON.stringify({ alg: "none", typ: "JWT" }))}.${b64url(JSON.stringify(claims()))}.`,
    "UnsupportedAlg",
  ],
  // The classic confusion: HMAC keyed with the RSA public key a naive verifier would hand to HS256.
  "hs256-rsa-pubkey": [
    jwt({ alg: "HS256", typ: "JWT", kid: "rs256-1" }, claims(), (i) =>
      crypto
        .createHmac("sha256", crypto.createPublicKey(keys.rs256).export({ type: "spki", format: "pem" }))
        .update(i)
        .digest(),
    ),
    "UnsupportedAlg",
  ],
  "wrong-iss": [rs256({ iss: "https://evil.example.com" }), "WrongIssuer"],
  "wrong-aud": [rs256({ aud: "someone-else" }), "WrongAudience"],
  "multi-aud-no-azp": [rs256({ aud: [CLIENT_ID, "other-api"] }), "AzpMismatch"],
  "azp-mismatch": [rs256({ azp: "someone-else" }), "AzpMismatch"],
  expired: [rs256({ iat: NOW - 7200, exp: NOW - 3600 }), "Expired"],
  "nbf-future": [rs256({ nbf: NOW + 3600 }), "NotYetValid"],
  "iat-future": [rs256({ iat: NOW + 3600, exp: NOW + 7200 }), "IssuedInFuture"],
  "missing-exp": [rs256({ exp: undefined }), "MissingExp"],
  "missing-iat": [rs256({ iat: undefined }), "MissingIat"],
  "missing-sub": [rs256({ sub: undefined }), "MissingSub"],
  "missing-nonce": [rs256({ nonce: undefined }), "MissingNonce (ok on refresh, where no nonce is expected)"],
  "wrong-nonce": [rs256({ nonce: "another-nonce" }), "NonceMismatch"],
  "unknown-kid": [signed("RS256", "rs256-2", keys.rs256), "UnknownKid"],
  "enc-key-kid": [signed("RS256", "enc-1", keys.enc), "UnknownKid (the enc key is not usable)"],
  "alg-kid-mismatch": [signed("ES256", "rs256-1", keys.es256), "UnknownKid (no ES256 key has that kid)"],
};

// A flipped byte in the middle of the signature (base64url 'A' <-> 'B' keeps the encoding valid).
{
  const [h, p, s] = rs256().split(".");
  const i = Math.floor(s.length / 2);
  const flipped = s[i] === "A" ? "B" : "A";
  tokens["bad-signature"] = [`${h}.${p}.${s.slice(0, i)}${flipped}${s.slice(i + 1)}`, "BadSignature"];
}
// Cut off in the middle of the payload: no signature segment left.
{
  const [h, p] = rs256().split(".");
  tokens["truncated"] = [`${h}.${p.slice(0, Math.floor(p.length / 2))}`, "Malformed"];
}

for (const [name, [token]] of Object.entries(tokens)) {
  fs.writeFileSync(path.join(tokensDir, `${name}.jwt`), token + "\n");
}

const readme = [
  "# Test ID tokens",
  "",
  "Generated by `node testdata/gen/gen.mjs`; signed with the TEST keys in `../jwks/private/`, verifiable",
  "with `../jwks/keys.json`. Do not edit by hand.",
  "",
  `Unless a row says otherwise: \`iss\` = \`${ISSUER}\`, \`aud\` = \`${CLIENT_ID}\`, \`nonce\` = \`${NONCE}\`,`,
  `\`sub\` = \`user-1\`, \`sid\` = \`sid-1\`, \`iat\` = ${NOW}, \`exp\` = ${NOW + 3600}, header \`kid\` = \`rs256-1\`, alg RS256.`,
  `Tests verify with \`now\` = ${NOW}.`,
  "",
  "| file | expected result |",
  "|---|---|",
  ...Object.entries(tokens).map(([name, [, expect]]) => `| \`${name}.jwt\` | ${expect} |`),
  "",
];
fs.writeFileSync(path.join(tokensDir, "README.md"), readme.join("\n"));

console.log(`wrote ${jwks.keys.length} JWKs and ${Object.keys(tokens).length} tokens`);
