//! A fault Envoy does not produce on request: the host refuses to change a request header. The real
//! module runs in Node's V8 under a small proxy-wasm host (`harness/profile-host.mjs`) that can refuse
//! every such change; the filter must then answer 500 itself, never forward a request it could not
//! clean (a client's own `Authorization` or identity headers would stand for a user, and the session
//! cookie would reach the app).

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use harness::sealed::seal;
use oidc_filter::secret::Secret;
use oidc_filter::session::Session;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example.com";
const CLIENT: &str = "app";
const REQUESTS: u64 = 5;

/// What the host saw of `REQUESTS` logged-in requests, with header changes refused or not.
fn play(refuse: bool) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A session as the filter seals it after a login: its ID token was checked then, so only its
    // claims matter now (issuer, audience, times).
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let id_token = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "kid": "k"})),
        b64(&json!({"iss": ISSUER, "aud": CLIENT, "sub": "alice", "iat": now, "exp": now + 3600}))
    );
    let session = Session {
        id_token: Secret::new(id_token),
        access_token: None,
        refresh_token: None,
        token_expires_at: now + 3600,
        expires_at: now + 3600,
        sub: "alice".into(),
    };
    let dir = harness::target_dir().join("host-faults");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("input-{refuse}.json"));
    let config = json!({
        "issuer": ISSUER, "client_id": CLIENT, "client_secret": "s",
        "cookie_keys": [harness::DEFAULT_COOKIE_KEYS],
    });
    std::fs::write(
        &input,
        json!({"config": config.to_string(), "env": {}, "cookie": seal(&session).unwrap()})
            .to_string(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(harness::workspace_root().join("harness/profile-host.mjs"))
        .arg(harness::wasm_path().unwrap())
        .arg(&input)
        .arg(REQUESTS.to_string())
        .env("REFUSE_HEADER_WRITES", if refuse { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_request_whose_headers_the_host_will_not_change_is_answered_500_not_forwarded() {
    // The session is good: with a willing host every request goes up with its bearer token.
    let willing = play(false);
    assert_eq!(willing["forwarded"], REQUESTS, "{willing}");
    assert_eq!(willing["setAuthorization"], REQUESTS, "{willing}");
    assert_eq!(willing["local"], 0, "{willing}");

    let refusing = play(true);
    assert_eq!(refusing["forwarded"], 0, "{refusing}");
    assert_eq!(refusing["local"], REQUESTS, "{refusing}");
    assert_eq!(refusing["localStatus"], 500, "{refusing}");
}
