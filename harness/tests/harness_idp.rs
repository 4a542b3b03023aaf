//! The IdP and the sample app alone (no Envoy): the harness's browser logs in through the
//! dev-interaction form, codes are exchanged for tokens, refresh and logout behave as the e2e
//! tests expect. The IdP sits behind the fault proxy, as in a stack, so its issuer's port is not
//! the port it listens on.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use harness::browser::{Browser, query_param};
use harness::idp::{ClientAuth, EchoApp, Idp, IdpConfig, jwt_payload, pkce_pair, token_request};
use harness::{FaultProxy, target_dir};
use serde_json::{Value, json};

struct Fixture {
    proxy: FaultProxy,
    _idp: Idp,
    echo: EchoApp,
}

const REFRESH_CLIENT: &str = "app-refresh";
const POST_CLIENT: &str = "app-post";

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = target_dir().join("e2e/harness_idp");
        let _ = std::fs::remove_dir_all(&dir);
        let echo = EchoApp::start(0, &dir).unwrap();
        let proxy = FaultProxy::start().unwrap();
        let cb = format!("http://localhost:{}/callback", echo.port());
        let home = format!("http://localhost:{}/", echo.port());
        let config = IdpConfig {
            issuer: proxy.url(),
            port: 0,
            clients: vec![
                json!({
                    "client_id": REFRESH_CLIENT, "client_secret": "s1", "redirect_uris": [cb],
                    "post_logout_redirect_uris": [home], "token_endpoint_auth_method": "client_secret_basic",
                    "refresh": true, "id_token_ttl": 5, "access_token_ttl": 7,
                }),
                json!({
                    "client_id": POST_CLIENT, "client_secret": "s2", "redirect_uris": [cb],
                    "post_logout_redirect_uris": [home], "token_endpoint_auth_method": "client_secret_post",
                    "refresh": false,
                }),
            ],
            jwks_file: Some(dir.join("jwks.json")),
            ..Default::default()
        };
        let idp = Idp::start(&config, &dir).unwrap();
        proxy.set_target(Some(idp.addr()));
        Fixture { proxy, _idp: idp, echo }
    })
}

fn issuer() -> String {
    fixture().proxy.url()
}

fn callback() -> String {
    format!("http://localhost:{}/callback", fixture().echo.port())
}

/// Logs `user` in for `client_id`; returns the callback URL (with code and state) and the verifier.
fn login(browser: &Browser, client_id: &str, user: &str) -> (String, String) {
    let (verifier, challenge) = pkce_pair().unwrap();
    let url = format!(
        "{}/auth?{}",
        issuer(),
        harness::browser::form_urlencode(&[
            ("client_id", client_id),
            ("response_type", "code"),
            ("scope", "openid email profile groups"),
            ("redirect_uri", &callback()),
            ("state", "st-123"),
            ("nonce", "n-456"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    let done = browser.login(&url, user).unwrap();
    assert_eq!(done.response.status, 200, "{:?}", done.chain);
    // The app (echo) answered the callback.
    assert!(
        done.response.url.starts_with(&callback()),
        "{:?}",
        done.chain
    );
    (done.response.url.clone(), verifier)
}

fn exchange(
    client: &str,
    secret: &str,
    auth: ClientAuth,
    code: &str,
    verifier: &str,
) -> (u16, Value) {
    token_request(
        &issuer(),
        client,
        secret,
        auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &callback()),
            ("code_verifier", verifier),
        ],
    )
    .unwrap()
}

/// The refresh grant at the IdP for REFRESH_CLIENT with `tokens`' refresh token: status and body.
fn refresh_with(tokens: &Value) -> (u16, Value) {
    token_request(
        &issuer(),
        REFRESH_CLIENT,
        "s1",
        ClientAuth::Basic,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .unwrap()
}

/// [`refresh_with`]'s status and OAuth error code.
fn refresh(tokens: &Value) -> (u16, Option<String>) {
    let (status, body) = refresh_with(tokens);
    (status, body["error"].as_str().map(str::to_string))
}

#[test]
fn discovery_urls_come_from_the_issuer() {
    let b = Browser::new();
    let doc = b
        .get(&format!("{}/.well-known/openid-configuration", issuer()))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["issuer"], json!(issuer()));
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "end_session_endpoint",
    ] {
        assert!(
            doc[key].as_str().unwrap().starts_with(&issuer()),
            "{key}: {doc}"
        );
    }
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    // Straight to the IdP's own port, with another Host: still the issuer's URLs.
    let direct = format!("http://127.0.0.1:{}", fixture()._idp.port());
    let doc = b
        .get_with(
            &format!("{direct}/.well-known/openid-configuration"),
            &[("host", "elsewhere.example:1234")],
        )
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["token_endpoint"], json!(format!("{}/token", issuer())));
}

#[test]
fn login_ends_at_the_redirect_uri_with_code_and_state() {
    let b = Browser::new();
    let (cb, _) = login(&b, REFRESH_CLIENT, "alice");
    assert!(
        query_param(&cb, "code").is_some_and(|c| !c.is_empty()),
        "{cb}"
    );
    assert_eq!(query_param(&cb, "state").as_deref(), Some("st-123"));
    assert_eq!(query_param(&cb, "iss"), Some(issuer()));
    // IdP cookies stay with 127.0.0.1; the app at localhost has none.
    assert!(b.cookies("127.0.0.1").iter().any(|(n, _)| n == "_session"));
    assert!(b.cookies("localhost").is_empty());
}

#[test]
fn code_exchange_with_basic_auth_and_refresh() {
    let b = Browser::new();
    let (cb, verifier) = login(&b, REFRESH_CLIENT, "alice");
    let code = query_param(&cb, "code").unwrap();
    let (status, tokens) = exchange(REFRESH_CLIENT, "s1", ClientAuth::Basic, &code, &verifier);
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 7, "access_token_ttl");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let id = jwt_payload(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(id["iss"], json!(issuer()));
    assert_eq!(id["aud"], REFRESH_CLIENT);
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["name"], "Alice");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["groups"], json!(["admins", "users"]));
    assert_eq!(
        id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap(),
        5,
        "id_token_ttl"
    );

    let (status, refreshed) = refresh_with(&tokens);
    assert_eq!(status, 200, "{refreshed}");
    let id2 = jwt_payload(refreshed["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(id2["sub"], "alice");
    assert_eq!(id2["email"], "alice@example.com");

    // The code is single-use, and replaying it revokes what it gave (oidc-provider follows
    // RFC 6749 section 4.1.2 here): the refresh token is dead afterwards.
    let (status, err) = exchange(REFRESH_CLIENT, "s1", ClientAuth::Basic, &code, &verifier);
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(refresh(&tokens), (400, Some("invalid_grant".to_string())));
}

#[test]
fn client_secret_post_without_refresh() {
    let b = Browser::new();
    let (cb, verifier) = login(&b, POST_CLIENT, "bob");
    let code = query_param(&cb, "code").unwrap();
    let (status, tokens) = exchange(POST_CLIENT, "s2", ClientAuth::Post, &code, &verifier);
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let id = jwt_payload(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(id["groups"], json!(["users"]));
    assert_eq!(
        id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap(),
        3600
    );
}

/// As Okta does, the token endpoint refuses a client named both in `Authorization` and in the body:
/// the filter's requests pass only if they name it one way.
#[test]
fn a_client_named_in_the_header_and_the_body_is_refused_as_okta_does() {
    let b = Browser::new();
    let (cb, verifier) = login(&b, REFRESH_CLIENT, "dave");
    let code = query_param(&cb, "code").unwrap();
    let (status, err) = token_request(
        &issuer(),
        REFRESH_CLIENT,
        "s1",
        ClientAuth::Basic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &callback()),
            ("code_verifier", &verifier),
            ("client_id", REFRESH_CLIENT),
        ],
    )
    .unwrap();
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request")),
        "{err}"
    );
    assert!(
        err["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("multiple client credentials")),
        "{err}"
    );
    // The code is still good for a request that names the client once.
    let (status, tokens) = exchange(REFRESH_CLIENT, "s1", ClientAuth::Basic, &code, &verifier);
    assert_eq!(status, 200, "{tokens}");
}

#[test]
fn wrong_secret_and_wrong_verifier_are_rejected() {
    let b = Browser::new();
    let (cb, verifier) = login(&b, REFRESH_CLIENT, "carol");
    let code = query_param(&cb, "code").unwrap();
    let (status, err) = exchange(REFRESH_CLIENT, "wrong", ClientAuth::Basic, &code, &verifier);
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, err) = exchange(
        REFRESH_CLIENT,
        "s1",
        ClientAuth::Basic,
        &code,
        "x".repeat(43).as_str(),
    );
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[test]
fn pkce_is_required() {
    let b = Browser::new();
    let url = format!(
        "{}/auth?{}",
        issuer(),
        harness::browser::form_urlencode(&[
            ("client_id", REFRESH_CLIENT),
            ("response_type", "code"),
            ("scope", "openid"),
            ("redirect_uri", &callback()),
            ("state", "s"),
        ])
    );
    let resp = b.get(&url).unwrap();
    let location = resp.location().unwrap();
    assert!(location.starts_with(&callback()), "{location}");
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );
}

#[test]
fn rp_initiated_logout_ends_the_idp_session() {
    let b = Browser::new();
    let (cb, verifier) = login(&b, REFRESH_CLIENT, "dave");
    let code = query_param(&cb, "code").unwrap();
    let (_, tokens) = exchange(REFRESH_CLIENT, "s1", ClientAuth::Basic, &code, &verifier);
    let home = format!("http://localhost:{}/", fixture().echo.port());
    let end = format!(
        "{}/session/end?{}",
        issuer(),
        harness::browser::form_urlencode(&[
            ("id_token_hint", tokens["id_token"].as_str().unwrap()),
            ("post_logout_redirect_uri", &home),
            ("state", "bye"),
        ])
    );
    let page = b.get(&end).unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let form = page
        .forms()
        .into_iter()
        .find(|f| f.id.as_deref() == Some("op.logoutForm"))
        .unwrap();
    let done = b
        .follow(b.submit(&form, &[("logout", "yes")]).unwrap(), 5)
        .unwrap();
    assert_eq!(
        done.response.url,
        format!("{home}?state=bye"),
        "{:?}",
        done.chain
    );
    assert!(b.cookie("127.0.0.1", "_session").is_none());

    // The refresh token died with the session.
    assert_eq!(refresh(&tokens), (400, Some("invalid_grant".to_string())));
}

#[test]
fn echo_app_answers_json_and_html() {
    let b = Browser::new();
    let url = format!("http://localhost:{}/some/path?q=1", fixture().echo.port());
    let json = b
        .get_with(&url, &[("accept", "application/json"), ("x-test", "1")])
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/some/path?q=1");
    assert_eq!(json["headers"]["x-test"], "1");

    let page = b.get(&url).unwrap();
    assert!(
        page.body.contains("<h1>Hello, anonymous</h1>"),
        "{}",
        page.body
    );
    // header.payload.signature with payload {"email":"eve@example.com"}
    let token = "e30.eyJlbWFpbCI6ImV2ZUBleGFtcGxlLmNvbSJ9.c2ln";
    let page = b
        .get_with(&url, &[("authorization", &format!("Bearer {token}"))])
        .unwrap();
    assert!(
        page.body.contains("<h1>Hello, eve@example.com</h1>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<pre id=\"echo\">"), "{}", page.body);
}
