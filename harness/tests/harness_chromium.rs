//! The WebDriver client drives headless Chromium through the IdP's login page, no Envoy involved.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use harness::browser::{form_urlencode, query_param};
use harness::idp::{EchoApp, Idp, IdpConfig, pkce_pair};
use harness::{FaultProxy, WebDriver, target_dir};
use serde_json::json;

#[test]
fn chromium_logs_in_at_the_idp() {
    let dir = target_dir().join("e2e/harness_chromium");
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = Instant::now();
    let echo = EchoApp::start(0, &dir).unwrap();
    let proxy = FaultProxy::start().unwrap();
    let callback = format!("http://localhost:{}/callback", echo.port());
    let config = IdpConfig {
        issuer: proxy.url(),
        port: 0,
        clients: vec![json!({
            "client_id": "web", "client_secret": "s", "redirect_uris": [callback],
            "token_endpoint_auth_method": "client_secret_basic", "refresh": true,
        })],
        jwks_file: None,
        ..Default::default()
    };
    let idp = Idp::start(&config, &dir).unwrap();
    proxy.set_target(Some(idp.addr()));
    let driver = WebDriver::start(&dir).unwrap();
    eprintln!("IdP, app and chromium up in {:?}", t0.elapsed());

    let (_, challenge) = pkce_pair().unwrap();
    let authorize = format!(
        "{}/auth?{}",
        proxy.url(),
        form_urlencode(&[
            ("client_id", "web"),
            ("response_type", "code"),
            ("scope", "openid email"),
            ("redirect_uri", &callback),
            ("state", "xyz"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    driver.goto(&authorize).unwrap();
    assert!(driver.current_url().unwrap().contains("/interaction/"));
    assert_eq!(driver.title().unwrap(), "Sign-in");
    let login = driver
        .wait_for("input[name=login]", Duration::from_secs(5))
        .unwrap();
    driver.send_keys(&login, "alice").unwrap();
    let password = driver.find("input[name=password]").unwrap();
    driver.send_keys(&password, "whatever").unwrap();
    driver
        .click(&driver.find("button[type=submit]").unwrap())
        .unwrap();

    let url = driver
        .wait_for_url(|u| u.starts_with(&callback), Duration::from_secs(10))
        .unwrap();
    assert_eq!(query_param(&url, "state").as_deref(), Some("xyz"));
    assert!(query_param(&url, "code").is_some());
    // The echo app saw the callback from a real browser.
    let echoed = driver.text(&driver.find("pre#echo").unwrap()).unwrap();
    assert!(echoed.contains("\"path\": \"/callback?code="), "{echoed}");
    assert!(echoed.contains("Chrome/"), "{echoed}");
    let h1 = driver.text(&driver.find("h1").unwrap()).unwrap();
    assert_eq!(h1, "Hello, anonymous");
    driver.screenshot(&dir.join("callback.png")).unwrap();
    driver.quit().unwrap();
    eprintln!("whole test {:?}", t0.elapsed());
}
