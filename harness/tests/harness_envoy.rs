//! The generated Envoy configuration: the checked-in demo files are current and valid, and a
//! whole stack runs with a pass-through module in place of the filter, so the Istio-shaped
//! jwt_authn and rbac filters are exercised against the real IdP behind the fault proxy.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

use harness::browser::query_param;
use harness::idp::{ClientAuth, Forge, forge_id_token, jwt_payload, token_request};
use harness::idp_hold;
use harness::{
    Browser, Mode, SiteSpec, Stack, StackSpec, demo, envoy, passthrough_wasm, workspace_root,
};
use serde_json::json;

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let t0 = std::time::Instant::now();
        let spec = StackSpec {
            wasm: Some(passthrough_wasm().unwrap()),
            ..StackSpec::new(
                "harness_envoy",
                vec![
                    SiteSpec::new("site-a")
                        .filter(json!({"bypass_paths": ["/healthz", "/public/"]})),
                    SiteSpec::new("site-b"),
                ],
            )
        };
        let stack = Stack::start(spec).unwrap();
        eprintln!("stack up in {:?}", t0.elapsed());
        stack
    })
}

/// An ID token for `site` from a real login (the callback itself is refused by RBAC: the
/// pass-through module does not handle it).
fn id_token(site: &str, user: &str) -> String {
    let s = stack().site(site).unwrap();
    let (verifier, challenge) = harness::idp::pkce_pair().unwrap();
    let redirect_uri = s.url("/oauth2/callback");
    let authorize = format!(
        "{}?{}",
        stack().idp_url("/auth"),
        harness::browser::form_urlencode(&[
            ("client_id", s.client_id.as_str()),
            ("response_type", "code"),
            ("scope", "openid email profile"),
            ("redirect_uri", &redirect_uri),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    let b = Browser::new();
    let done = b.login(&authorize, user).unwrap();
    assert_eq!(done.response.status, 403, "{:?}", done.chain);
    let code = query_param(&done.response.url, "code").unwrap();
    let (status, tokens) = token_request(
        stack().issuer(),
        &s.client_id,
        &s.client_secret,
        ClientAuth::Basic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
        ],
    )
    .unwrap();
    assert_eq!(status, 200, "{tokens}");
    tokens["id_token"].as_str().unwrap().to_string()
}

#[test]
fn checked_in_demo_files_are_current() {
    let root = workspace_root();
    let yaml = fs::read_to_string(root.join("wasmplugin/envoy.yaml")).unwrap_or_default();
    assert!(
        yaml == demo::envoy_yaml().unwrap(),
        "wasmplugin/envoy.yaml is stale: cargo run -p harness -- envoy-config > wasmplugin/envoy.yaml"
    );
    let idp = fs::read_to_string(root.join("harness/idp/demo.json")).unwrap_or_default();
    assert!(
        idp == format!(
            "{}\n",
            serde_json::to_string_pretty(&demo::idp_config()).unwrap()
        ),
        "harness/idp/demo.json is stale: cargo run -p harness -- idp-config > harness/idp/demo.json"
    );
}

#[test]
fn checked_in_envoy_yaml_validates() {
    let root = workspace_root();
    let bin = envoy::envoy_bin();
    let real = root.join("target/wasm32-wasip1/release/oidc_filter.wasm");
    if real.exists() {
        // As a user would run it: from the workspace root, with the release module.
        envoy::validate(&bin, &root.join("wasmplugin/envoy.yaml"), &root).unwrap();
    } else {
        eprintln!(
            "{} missing: validating with the pass-through module",
            real.display()
        );
    }
    // With the pass-through module, so the configuration itself is checked whatever the filter's state.
    let yaml = fs::read_to_string(root.join("wasmplugin/envoy.yaml")).unwrap();
    let stub = passthrough_wasm().unwrap();
    let yaml = yaml.replace(
        "target/wasm32-wasip1/release/oidc_filter.wasm",
        &stub.to_string_lossy(),
    );
    let dir = harness::target_dir().join("e2e/harness_envoy_validate");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("envoy.yaml"), yaml).unwrap();
    envoy::validate(&bin, &dir.join("envoy.yaml"), &dir).unwrap();
}

#[test]
fn sites_get_their_own_listeners() {
    let a = stack().site("site-a").unwrap();
    let b = stack().site("site-b").unwrap();
    assert_ne!(a.port, b.port);
    assert!(a.port != 0 && b.port != 0);
    assert!(stack().site("nope").is_err());
    assert_eq!(
        a.filter_config["client_secret_env"],
        "OIDC_CLIENT_SECRET_SITE_A"
    );
    assert_eq!(
        a.filter_config["idp_cluster"],
        json!(format!(
            "outbound|{}||127.0.0.1",
            stack().idp_proxy().port()
        ))
    );
    assert_eq!(
        a.idp_client["redirect_uris"],
        json!([format!("http://localhost:{}/oauth2/callback", a.port)])
    );
    let bootstrap: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(stack().dir().join("envoy.json")).unwrap())
            .unwrap();
    let filters = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let names: Vec<&str> = filters
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.wasm",
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    let vm = &filters[0]["typed_config"]["config"]["vm_config"];
    let mut keys: Vec<&str> = vm["environment_variables"]["host_env_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["OIDC_CLIENT_SECRET_SITE_A", "OIDC_COOKIE_KEYS"]);
}

#[test]
fn rbac_lets_bypass_paths_through_and_denies_the_rest() {
    let b = Browser::new();
    let a = stack().site("site-a").unwrap();
    let resp = b
        .get_with(&a.url("/healthz"), &[("accept", "application/json")])
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json().unwrap()["path"], "/healthz");
    assert_eq!(b.get(&a.url("/public/x")).unwrap().status, 200);
    let denied = b.get(&a.url("/private")).unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "RBAC: access denied");
    // site-b has only the default bypass paths.
    assert_eq!(
        b.get(&stack().site("site-b").unwrap().url("/public/x"))
            .unwrap()
            .status,
        403
    );
    stack()
        .wait_for_stat("http.site-b.rbac.denied", 1, Duration::from_secs(2))
        .unwrap();
}

#[test]
fn jwt_authn_accepts_the_idps_id_tokens_for_its_own_audience() {
    let _idp = idp_hold::exclusive();
    let token = id_token("site-a", "alice");
    assert_eq!(jwt_payload(&token).unwrap()["aud"], "site-a");
    let b = Browser::new();
    let a = stack().site("site-a").unwrap();
    let bearer = format!("Bearer {token}");
    let page = b
        .get_with(&a.url("/"), &[("authorization", &bearer)])
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<h1>Hello, alice@example.com</h1>"),
        "{}",
        page.body
    );
    // jwt_authn forwards the header (forward: true).
    assert!(page.body.contains("Bearer "), "{}", page.body);

    // Another site's audience is refused.
    let other = b
        .get_with(
            &stack().site("site-b").unwrap().url("/"),
            &[("authorization", &bearer)],
        )
        .unwrap();
    assert_eq!(other.status, 403, "{}", other.body);
    assert!(
        other.body.contains("Audiences in Jwt are not allowed"),
        "{}",
        other.body
    );

    // An `aud` list passes the RBAC policy when it holds the client, as Istio's
    // `request.auth.audiences` does (the string `aud` above is the other shape).
    let now = harness::unix_now();
    let forged = |aud: serde_json::Value| {
        let claims = json!({
            "iss": stack().issuer(), "sub": "alice", "aud": aud, "iat": now, "exp": now + 300,
        });
        let jwks = stack().idp_jwks_file().unwrap();
        let token = forge_id_token(jwks, Forge::Rs256, &json!({}), &claims).unwrap();
        b.get_with(
            &a.url("/private"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .unwrap()
    };
    let listed = forged(json!(["another-client", "site-a"]));
    assert_eq!(listed.status, 200, "{}", listed.body);
    let absent = forged(json!(["another-client", "site-b"]));
    assert_eq!(absent.status, 403, "{}", absent.body);

    // A tampered token fails verification.
    let tampered = format!("{}x", &bearer);
    let bad = b
        .get_with(&a.url("/"), &[("authorization", &tampered)])
        .unwrap();
    assert_eq!(bad.status, 401, "{}", bad.body);

    let stats = stack().envoy_stats().unwrap();
    assert!(
        stats
            .get("http.site-a.rbac.denied")
            .is_some_and(|&n| n >= 1),
        "{stats:?}"
    );
    assert!(
        stats
            .get("http.site-a.jwt_authn.allowed")
            .is_some_and(|&n| n >= 1),
        "{:?}",
        stats
            .keys()
            .filter(|k| k.contains("jwt"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn fault_proxy_switches_between_a_fault_and_forwarding() {
    let _idp = idp_hold::exclusive();
    let proxy = stack().idp_proxy();
    let b = Browser::new();
    let discovery = stack().idp_url("/.well-known/openid-configuration");
    assert_eq!(b.get(&discovery).unwrap().status, 200);
    proxy.set_mode(Mode::respond(503, "text/plain", "down for a test"));
    let resp = b.get(&discovery).unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (503, "down for a test"));
    proxy.set_mode(Mode::Forward);
    assert_eq!(b.get(&discovery).unwrap().status, 200);
}

#[test]
fn idp_restarts_keep_keys_and_rotation_replaces_them() {
    let _idp = idp_hold::exclusive();
    let b = Browser::new();
    let kids = || -> Vec<String> {
        let jwks = b.get(&stack().idp_url("/jwks")).unwrap().json().unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let before = kids();
    let old_addr = stack().idp_addr().unwrap();
    stack().restart_idp().unwrap();
    assert_ne!(stack().idp_addr().unwrap(), old_addr);
    assert_eq!(kids(), before);
    stack().stop_idp();
    let down = b.get(&stack().idp_url("/jwks"));
    assert!(down.is_err(), "{down:?}");
    stack().rotate_idp_keys().unwrap();
    let after = kids();
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|k| !before.contains(k)),
        "{before:?} {after:?}"
    );
}

#[test]
fn a_broken_module_fails_the_start_with_envoys_log() {
    let dir = harness::target_dir().join("e2e/harness_envoy_broken");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.wasm");
    fs::write(&bad, b"not a wasm module").unwrap();
    let config = harness::EnvoyConfig {
        wasm_path: bad,
        issuer: "http://127.0.0.1:9".into(),
        jwks_uri: "http://127.0.0.1:9/jwks".into(),
        app_port: 9,
        admin_port: 0,
        access_log: harness::AccessLog::Off,
        sites: vec![harness::EnvoySite::new("x", 0, "x", json!({}))],
        idp_front: None,
    };
    let err = harness::Envoy::start(&config.render().unwrap(), &harness::EnvoyOptions::new(&dir))
        .err()
        .expect("envoy must not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("envoy exited"), "{msg}");
    assert!(msg.contains("Wasm"), "{msg}");
}
