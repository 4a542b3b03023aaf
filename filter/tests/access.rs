//! Claim rules after login: what a user who fails them still reaches, and how the 403 names them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other whole-flow tests, which use more of it.
#[allow(dead_code)]
mod common;

use common::*;
use oidc_filter::flow::Metric;

/// A user without the `admins` group, logged in on a site whose every page wants that group.
fn refused_everywhere(extra: serde_json::Value) -> (Filter, Jar) {
    let mut json = serde_json::json!({
        "claim_rules": [{"rule": {"claim": "groups", "contains_any": ["admins"]}}],
        "bypass_paths": ["/healthz", "/static/"],
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            json[k] = v;
        }
    }
    let mut f = Filter::ready(config(json));
    let (jar, _) = log_in_with(&mut f, None, |nonce| {
        let mut c = claims(Some(nonce));
        c["preferred_username"] = "bob".into();
        c["groups"] = serde_json::json!(["users"]);
        mint(&c)
    });
    (f, jar)
}

#[test]
fn bypass_paths_stay_open_to_a_user_the_rules_refuse() {
    let (mut f, jar) = refused_everywhere(serde_json::json!({}));
    assert_eq!(
        respond(f.request(&Req::browser("/").cookies(&jar))).status,
        403
    );
    // Anyone may open these without a session; the session does not take that away.
    for path in ["/healthz", "/healthz/live", "/static/app.css"] {
        let fwd = forward(f.request(&Req::browser(path).cookies(&jar)));
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded), "{path}");
    }
    // Only what really is below a bypass prefix, in every reading of the path.
    for path in [
        "/healthzx",
        "/static/..%2Fadmin",
        "/static/../admin",
        "/x/healthz",
    ] {
        assert_eq!(
            respond(f.request(&Req::browser(path).cookies(&jar))).status,
            403,
            "{path}"
        );
    }
}

/// Found by a black-box test: the README sends an app's own `Basic` login to `bypass_paths`, but a
/// logged-in browser sends the session cookie there too, and its `Authorization` was replaced with the
/// session's token: the app never saw its users' credentials. On a bypass path a client's own
/// `Authorization` now stays, as without a session (no identity headers, the filter's cookies out);
/// elsewhere the session's token replaces it, as before.
#[test]
fn a_clients_own_authorization_on_a_bypass_path_stays_with_a_session() {
    let (mut f, jar) = refused_everywhere(serde_json::json!({
        "identity_headers": {"x-user": "preferred_username"},
    }));
    for own in ["Basic dXNlcjpwdw==", "Bearer its.own.token"] {
        for path in ["/healthz", "/static/app.css"] {
            let req = Req::browser(path).cookies(&jar).with("authorization", own);
            let fwd = forward(f.request(&req));
            assert!(fwd.authorization.is_none(), "{own} {path}: {fwd:?}");
            assert_eq!(fwd.metric, Some(Metric::Bypass), "{own} {path}");
            let identity = fwd.identity.as_ref().expect("identity headers removed");
            assert!(identity.iter().all(|(_, v)| v.is_none()), "{own} {path}");
            assert_eq!(
                fwd.cookie,
                Some(None),
                "{own} {path}: the session cookie goes"
            );
        }
        // Not below a bypass prefix: the session decides (this user fails the rules).
        let req = Req::browser("/healthzx")
            .cookies(&jar)
            .with("authorization", own);
        assert_eq!(respond(f.request(&req)).status, 403, "{own}");
    }
    // Without its own `Authorization`, the session's token and identity go up there, as before.
    let fwd = forward(f.request(&Req::browser("/healthz").cookies(&jar)));
    assert_eq!(fwd.metric, Some(Metric::SessionForwarded));
    assert!(fwd.authorization.is_some());
}

#[test]
fn the_403_names_the_user_even_when_no_header_or_rule_reads_their_name() {
    let (mut f, jar) = refused_everywhere(serde_json::json!({"identity_headers": {}}));
    let r = respond(f.request(&Req::browser("/").cookies(&jar)));
    assert_eq!(r.status, 403);
    assert!(r.body.contains("<b>bob</b>"), "{}", r.body);
    let r = respond(f.request(&Req::api("/").cookies(&jar)));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
        serde_json::json!({"error": "forbidden", "user": "bob", "logout": "/logout"})
    );
}

/// A user without the `admins` group, logged in on a site where only `prefix` wants that group.
fn a_user_outside_admins(prefix: &str) -> (Filter, Jar) {
    let mut f = Filter::ready(config(serde_json::json!({
        "claim_rules": [{"path_prefix": prefix, "rule": {"claim": "groups", "contains_any": ["admins"]}}],
    })));
    let (jar, _) = log_in_with(&mut f, None, |nonce| {
        let mut c = claims(Some(nonce));
        c["groups"] = serde_json::json!(["users"]);
        mint(&c)
    });
    (f, jar)
}

#[test]
fn a_path_that_does_not_decode_is_judged_by_every_rule() {
    // Only `/admin` wants the group; bob may read everything else.
    let (mut f, jar) = a_user_outside_admins("/admin");
    for path in [
        "/",
        "/reports",
        "/administrator",
        "/.well-known/x",
        "/reports/..x",
        "//x/reports",
    ] {
        let fwd = forward(f.request(&Req::browser(path).cookies(&jar)));
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded), "{path}");
    }
    // An app that keeps a bad escape, resolves `..` and routes without regard to case serves `/admin/settings`
    // for the first; one that decodes leniently serves `/admin/x/%zz` for the second.
    for path in [
        "/Admin/%zz/../settings",
        "/admin%2Fx/%zz",
        "/ADMIN/settings",
        "/reports/%zz",
        // Found in review: an app that decodes `%2F` and leaves `..` to its catch-all `/admin/<path>`
        // handler (gunicorn's PATH_INFO, Gin) serves these under `/admin`.
        "/admin%2Fx%2F..%2F..%2Freports",
        "/admin%5Cx%5C..%5C..%5Creports",
        "/Admin%2F..%2Freports",
        "/%2Fadmin%2Fx%2F..%2F..%2Freports",
        // Found by a black-box test: a path with a dot segment reads in more ways than the readings
        // foresee, so every rule judges it: `\` as `/` with `;` kept (WHATWG, Envoy's normalizer),
        // `;` cut with `\` kept (Jetty), `%2e` decoded with `%2F` kept (WHATWG, Envoy's normalizer).
        "/x%5c..%5c/admin/;/..%2fsettings",
        "/x\\..\\admin/..;/../settings",
        "/x/..;/admin/a\\..\\..\\/settings",
        "/x/%2e%2e/admin/s%2f..%2f..%2fy",
        "/reports/%2e%2e",
        "/reports/./x",
        // Found by a black-box test: `/admin/settings` to a URL parser that takes the segment after two
        // slashes for a host (WHATWG's `new URL(path, base)`, Python's `urlsplit`, Java's `URI`).
        "//x/admin/settings",
        "/\\x/admin/settings",
        "//x@y/admin/settings",
        "///x/admin",
        "/%2F%2Fx/admin",
        "/%5Cx/admin",
        // Found by mutation testing: a host that ends at a `\`, which such a parser takes for a `/`.
        "//x\\admin/settings",
        "//x%5Cadmin/settings",
        // Found by mutation testing: a host holding a `\`, which Python's `urlsplit` keeps in the host
        // (it ends one at `/`, `?` or `#` only): `/admin/settings` to an app that decodes its
        // `PATH_INFO` and parses it so.
        "//h\\x/admin/settings",
        "/%2Fh%5Cx/admin/settings",
        "/%2Fh\\x/admin",
    ] {
        assert_eq!(
            respond(f.request(&Req::browser(path).cookies(&jar))).status,
            403,
            "{path}"
        );
    }
}

#[test]
fn an_unverified_email_names_no_one_and_passes_no_rule() {
    let rules = serde_json::json!({
        "claim_rules": [{"path_prefix": "/staff", "rule": {"claim": "email", "matches": "*@example.com"}}],
    });
    for (verified, named) in [
        (Some(("email_verified", serde_json::json!(false))), false),
        (Some(("email_verified", serde_json::json!("false"))), false),
        (Some(("email_verified", serde_json::json!(true))), true),
        // As a string only `"true"` vouches (found by mutation testing: any string but `"false"` did).
        (Some(("email_verified", serde_json::json!("true"))), true),
        (Some(("email_verified", serde_json::json!("no"))), false),
        (Some(("email_verified", serde_json::json!(""))), false),
        // As a number (found by a black-box test: `0` counted as verified).
        (Some(("email_verified", serde_json::json!(0))), false),
        (Some(("email_verified", serde_json::json!(1))), true),
        // Nor `null`, a list or an object (found by a black-box test: taken as absent, so vouched for).
        (Some(("email_verified", serde_json::json!(null))), false),
        (Some(("email_verified", serde_json::json!([true]))), false),
        (Some(("email_verified", serde_json::json!({}))), false),
        // Found by mutation testing: any other number vouches for nothing either.
        (Some(("email_verified", serde_json::json!(2))), false),
        (Some(("email_verified", serde_json::json!(-1))), false),
        // Nor a number that is only about 1 (found by mutation testing: `1.5` read as `1`).
        (Some(("email_verified", serde_json::json!(1.5))), false),
        // Entra ID sends no `email_verified`: its addresses stand, unless its optional claim
        // `xms_edov` says the address's domain is not the tenant's (found in review).
        (None, true),
        (Some(("xms_edov", serde_json::json!(false))), false),
        (Some(("xms_edov", serde_json::json!("0"))), false),
        (Some(("xms_edov", serde_json::json!("false"))), false),
        (Some(("xms_edov", serde_json::json!(true))), true),
        (Some(("xms_edov", serde_json::json!("1"))), true),
        (Some(("xms_edov", serde_json::json!("true"))), true),
    ] {
        let mut f = Filter::ready(config(rules.clone()));
        let (jar, _) = log_in_with(&mut f, None, |nonce| {
            let mut c = claims(Some(nonce));
            c["email"] = "ceo@example.com".into();
            if let Some((claim, v)) = &verified {
                c[*claim] = v.clone();
            }
            mint(&c)
        });
        let fwd = forward(f.request(&Req::browser("/").cookies(&jar)));
        let email = fwd
            .identity
            .as_ref()
            .unwrap()
            .iter()
            .find(|(n, _)| n == "x-auth-request-email")
            .and_then(|(_, v)| v.as_ref().map(|v| v.expose().to_string()));
        let staff = f.request(&Req::browser("/staff").cookies(&jar));
        if named {
            assert_eq!(email.as_deref(), Some("ceo@example.com"), "{verified:?}");
            assert!(
                matches!(staff, oidc_filter::flow::Step::Forward(_)),
                "{verified:?}"
            );
        } else {
            assert_eq!(email, None, "{verified:?}");
            assert_eq!(respond(staff).status, 403, "{verified:?}");
        }
        // The same token as a bearer, without the session: judged alike (found in review: it passed).
        let mut c = claims(None);
        c["email"] = "ceo@example.com".into();
        if let Some((claim, v)) = &verified {
            c[*claim] = v.clone();
        }
        let token = format!("Bearer {}", mint(&c));
        let staff = f.request(&Req::api("/staff").with("authorization", &token));
        if named {
            assert_eq!(forward(staff).metric, Some(Metric::BearerPassthrough));
        } else {
            assert_eq!(respond(staff).status, 403, "{verified:?}");
        }
    }
}

/// A rule written with capitals covers the path in any case (a case-insensitive app serves `/Admin` for
/// `/admin` and `/ADMIN`), and what is not below it stays open.
#[test]
fn a_rule_written_with_capitals_covers_the_path_in_any_case() {
    let (mut f, jar) = a_user_outside_admins("/Admin");
    for path in [
        "/Admin",
        "/admin",
        "/ADMIN/settings",
        "/aDmIn/",
        "/x/../admin",
        "/admin%2Fx",
    ] {
        assert_eq!(
            respond(f.request(&Req::browser(path).cookies(&jar))).status,
            403,
            "{path}"
        );
    }
    for path in ["/", "/administrator", "/reports/admin"] {
        let fwd = forward(f.request(&Req::browser(path).cookies(&jar)));
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded), "{path}");
    }
}

/// Found in review: a request with a client's own bearer token went on unjudged by the claim rules, and
/// jwt_authn and the policy check only issuer and audience, so a user the rules refuse reached the path
/// with their own ID token (which `/logout` hands back in its redirect). On a path a rule covers, the
/// token is now checked and judged as the session would be.
#[test]
fn a_bearer_token_on_a_path_a_rule_covers_is_judged_by_the_rules() {
    let (mut f, jar) = a_user_outside_admins("/admin");
    let logout = respond(f.request(&Req::browser("/logout").cookies(&jar)));
    let own = query(location(&logout))["id_token_hint"].clone();
    let with_bearer = |f: &mut Filter, path: &str, token: &str| {
        f.request(&Req::api(path).with("authorization", &format!("Bearer {token}")))
    };
    let r = respond(with_bearer(&mut f, "/admin/users", &own));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.metric, Some(Metric::Forbidden));
    // RFC 6750 3.1: the challenge names the error (found in a conformance review: none).
    assert_eq!(
        header(&r.headers, "www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );
    // Where no rule reaches, the token goes on to jwt_authn as before, unchecked here.
    for (path, token) in [("/reports", own.as_str()), ("/reports", "not-a-jwt")] {
        let fwd = forward(with_bearer(&mut f, path, token));
        assert_eq!(fwd.metric, Some(Metric::BearerPassthrough), "{path}");
    }
    // A member of the group passes, whatever the token's audience (jwt_authn judges that next: an API's
    // access token has another); one that does not check out is 401.
    let mut admin = claims(None);
    admin["groups"] = serde_json::json!(["admins"]);
    for aud in ["oidc-filter-test", "https://api.example.com"] {
        admin["aud"] = aud.into();
        let fwd = forward(with_bearer(&mut f, "/admin/users", &mint(&admin)));
        assert_eq!(fwd.metric, Some(Metric::BearerPassthrough), "{aud}");
    }
    let mut expired = admin.clone();
    expired["exp"] = (f.now - 3600).into();
    let mut elsewhere = admin.clone();
    elsewhere["iss"] = "https://other.example.com".into();
    // Well formed, with a signature of the right size for its key, but another token's: the admin
    // claims on the refused user's signature.
    let forged = {
        let (ours, theirs) = (mint(&admin), own.clone());
        let (o, t): (Vec<_>, Vec<_>) = (ours.split('.').collect(), theirs.split('.').collect());
        format!("{}.{}.{}", t[0], o[1], t[2])
    };
    for token in [
        "not-a-jwt".to_string(),
        mint(&expired),
        mint(&elsewhere),
        forged,
    ] {
        let r = respond(with_bearer(&mut f, "/admin/users", &token));
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.metric, Some(Metric::Unauthorized));
    }
}

/// Found in review: readings were matched without regard to ASCII case only. Java's `equalsIgnoreCase`
/// (Spring's case-insensitive path matching) also folds U+0130 `İ` to `i`, U+212A `K` (Kelvin) to `k`
/// and U+017F `ſ` to `s`, and .NET's `OrdinalIgnoreCase` (ASP.NET Core's routing, case-insensitive by
/// default) U+0131 `ı` to `I`: `/admİn` and `/admın` are `/admin` there, and passed a rule on `/admin`.
#[test]
fn letters_an_app_may_fold_to_ascii_are_read_so() {
    let (mut f, jar) = a_user_outside_admins("/admin");
    assert_eq!(
        respond(f.request(&Req::browser("/ADMIN").cookies(&jar))).status,
        403
    );
    let (mut g, jar_g) = a_user_outside_admins("/desk");
    for path in ["/de%C5%BFk", "/des%E2%84%AA/x", "/DE\u{17f}K"] {
        let r = respond(g.request(&Req::browser(path).cookies(&jar_g)));
        assert_eq!(r.status, 403, "{path}");
    }
    // A rule whose prefix holds such a letter covers the path in any case, and with it folded.
    let (mut h, jar_h) = a_user_outside_admins("/\u{130}stanbul");
    for path in [
        "/%C4%B0STANBUL",
        "/%C4%B0stanbul/x",
        "/istanbul",
        "/ISTANBUL",
    ] {
        let r = respond(h.request(&Req::browser(path).cookies(&jar_h)));
        assert_eq!(r.status, 403, "{path}");
    }
    // Other non-ASCII letters are other paths.
    assert!(matches!(
        g.request(&Req::browser("/d%C3%A9sk").cookies(&jar_g)),
        oidc_filter::flow::Step::Forward(_)
    ));
    let mut passed = Vec::new();
    for path in [
        "/adm%C4%B0n",
        "/adm%C4%B1n",
        "/adm%C4%B0n/settings",
        "/adm\u{130}n",
    ] {
        if let oidc_filter::flow::Step::Forward(_) = f.request(&Req::browser(path).cookies(&jar)) {
            passed.push(path);
        }
    }
    assert!(passed.is_empty(), "passed a rule on /admin: {passed:?}");
    // A prefix with other letters beyond ASCII covers them in any case (found by mutation testing: a
    // rule on `/über` did not cover `/ÜBER`, which such apps serve as `/über`); without Unicode's case
    // tables each stands for any other such letter in that reading (`/äber` too): more refusals, never
    // fewer. As written, `/über` is still only itself.
    let (mut u, jar_u) = a_user_outside_admins("/\u{fc}ber");
    for path in ["/%C3%9CBER", "/%C3%9Cber/x", "/%C3%BCBER", "/%C3%A4ber"] {
        let r = respond(u.request(&Req::browser(path).cookies(&jar_u)));
        assert_eq!(r.status, 403, "{path}");
    }
    for path in ["/uber", "/%C3%BCbers", "/x/%C3%BCber"] {
        let r = forward(u.request(&Req::browser(path).cookies(&jar_u)));
        assert_eq!(r.metric, Some(Metric::SessionForwarded), "{path}");
    }
}

/// Found by mutation testing: each reading is judged as written too, not only without regard to case. A
/// longer rule in other capitals (`/ADMIN/public`, open to users) covers `/admin/public` for an app that
/// ignores case only; one that does not serves it under `/admin`, whose rule still applies. So with a
/// prefix that holds a letter such an app folds to ASCII (`/İstanbul`).
#[test]
fn a_longer_rule_in_other_capitals_leaves_the_path_to_the_rule_written_as_it() {
    for (refusing, open, refused, passed) in [
        ("/admin", "/ADMIN/public", "/admin/public", "/ADMIN/public"),
        (
            "/\u{130}stanbul",
            "/ISTANBUL/public",
            "/%C4%B0stanbul/public",
            "/ISTANBUL/public",
        ),
    ] {
        let mut f = Filter::ready(config(serde_json::json!({
            "claim_rules": [
                {"path_prefix": refusing, "rule": {"claim": "groups", "contains_any": ["admins"]}},
                {"path_prefix": open, "rule": {"claim": "groups", "contains_any": ["users"]}},
            ],
        })));
        let (jar, _) = log_in_with(&mut f, None, |nonce| {
            let mut c = claims(Some(nonce));
            c["groups"] = serde_json::json!(["users"]);
            mint(&c)
        });
        let r = respond(f.request(&Req::browser(refused).cookies(&jar)));
        assert_eq!(r.status, 403, "{refused}");
        let fwd = forward(f.request(&Req::browser(passed).cookies(&jar)));
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded), "{passed}");
    }
}

/// Found by mutation testing: a client's bearer token is an access or an ID token, so one typed as an
/// access token (`at+jwt`, RFC 9068) is judged by the rules as any; one typed as a logout token is no
/// bearer token (401).
#[test]
fn a_bearer_token_typed_as_an_access_token_is_judged_as_any() {
    let (mut f, _) = a_user_outside_admins("/admin");
    let mut admin = claims(None);
    admin["groups"] = serde_json::json!(["admins"]);
    let typed = |typ: &str| mint_as(&admin, "es256-1", Some(typ));
    let with_bearer = |f: &mut Filter, token: &str| {
        f.request(&Req::api("/admin/users").with("authorization", &format!("Bearer {token}")))
    };
    for typ in ["at+jwt", "application/at+jwt", "JWT"] {
        let fwd = forward(with_bearer(&mut f, &typed(typ)));
        assert_eq!(fwd.metric, Some(Metric::BearerPassthrough), "{typ}");
    }
    let r = respond(with_bearer(&mut f, &typed("logout+jwt")));
    assert_eq!(r.status, 401, "{r:?}");
}

/// Found by mutation testing: a header another site sets, which this one only removes (its claim the
/// marker `config::STRIPPED`, a NUL), is never set from a claim, not even from one a rule here reads
/// under that name (a claim may be named by a rule, and the ID token is the IdP's to fill).
#[test]
fn a_header_another_site_sets_is_never_set_from_a_claim() {
    let json = serde_json::json!({
        "issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "cookie_keys": [KEY_A],
        "claim_rules": [{"path_prefix": "/", "rule": {"claim": "\u{0}", "equals": "yes"}}],
        "hosts": [{"hosts": ["b.example.com"], "identity_headers": {"x-b": "sub"}}],
    });
    let mut plugin =
        oidc_filter::config::Plugin::parse(json.to_string().as_bytes(), &|_| None).unwrap();
    let top = plugin
        .sites
        .iter()
        .position(|s| s.hosts.is_empty())
        .unwrap();
    let mut f = Filter::ready(plugin.sites.remove(top));
    let (jar, _) = log_in_with(&mut f, None, |nonce| {
        let mut c = claims(Some(nonce));
        c["\u{0}"] = "yes".into();
        mint(&c)
    });
    let fwd = forward(f.request(&Req::browser("/").cookies(&jar)));
    assert_eq!(fwd.metric, Some(Metric::SessionForwarded));
    let identity = fwd.identity.as_ref().unwrap();
    let b = identity.iter().find(|(n, _)| n == "x-b");
    assert!(matches!(b, Some((_, None))), "{identity:?}");
}

/// Found by mutation testing: on a bypass path with the client's own `Authorization`, a request that still
/// carries the cookie a renewal on this worker replaced gets the new cookie all the same (its
/// `Authorization` stays), as elsewhere.
#[test]
fn a_bypass_request_with_its_own_authorization_gets_the_renewed_cookie() {
    let mut f = Filter::ready(config(serde_json::json!({"bypass_paths": ["/healthz"]})));
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    f.now = NOW + 3600 - 30;
    let (_, pending) = call(f.request(&Req::browser("/page").cookies(&jar)));
    let new_token = mint(&refreshed_claims(f.now));
    let body = token_body(Some(&new_token), Some("rt-2"));
    let renewed = forward(f.reply(pending, Some((200, &body))));
    assert!(!renewed.set_cookies.is_empty());
    let req = Req::browser("/healthz")
        .cookies(&jar)
        .with("authorization", "Basic dXNlcjpwdw==");
    let fwd = forward(f.request(&req));
    assert!(fwd.authorization.is_none(), "{fwd:?}");
    assert_eq!(fwd.metric, Some(Metric::Bypass));
    assert_eq!(fwd.set_cookies, renewed.set_cookies);
}

/// Found by mutation testing: on a bypass path with the client's own `Authorization`, the app's own
/// cookies go up with it; only the filter's are taken out.
#[test]
fn a_bypass_request_with_its_own_authorization_keeps_the_apps_cookies() {
    let (mut f, jar) = refused_everywhere(serde_json::json!({}));
    let req = Req::browser("/healthz")
        .with("cookie", &format!("{}; app=1", jar.header()))
        .with("authorization", "Basic dXNlcjpwdw==");
    let fwd = forward(f.request(&req));
    assert_eq!(fwd.metric, Some(Metric::Bypass));
    assert_eq!(fwd.cookie, Some(Some("app=1".to_string())), "{fwd:?}");
}

/// Found by mutation testing: each of the four ways of reading what follows a host (as the path came or
/// decoded, a `\` ending the host or not) is judged, the one that alone reads `/admin` included; the
/// same paths with another segment there pass.
#[test]
fn each_way_of_reading_past_a_host_is_judged() {
    let (mut f, jar) = a_user_outside_admins("/admin");
    for (path, only) in [
        // As it came, the host ended at the `\`: `\admin` (decoded, the host ends at the `%2F`).
        ("//a%2Fb\\admin", "as it came, a `\\` ending the host"),
        // As it came, the host holding the `\`: `/admin` (decoded, past it: `/y/admin`).
        ("//a\\x%2Fy/admin", "as it came, the host holding a `\\`"),
        // Decoded, the host holding the `\`: `/admin` (as it came, no host).
        ("/%2Fa\\x/admin", "decoded, the host holding a `\\`"),
        // Decoded, the host ended at the `\`: `\admin`.
        ("/%2Fa\\admin", "decoded, a `\\` ending the host"),
    ] {
        let r = respond(f.request(&Req::browser(path).cookies(&jar)));
        assert_eq!(r.status, 403, "{path}: {only}");
        let open = path.replace("admin", "public");
        let fwd = forward(f.request(&Req::browser(&open).cookies(&jar)));
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded), "{open}");
    }
}

/// Found by mutation testing: what follows a host that does not decode in turn (`/%2Fh/x%25zz` decodes to
/// `//h/x%zz`, past the host `/x%zz`) is judged by every rule, as a whole path that does not decode: an
/// app that decodes once more reads it its own way. One that decodes is judged by the rules that cover it.
#[test]
fn what_follows_a_host_that_does_not_decode_is_judged_by_every_rule() {
    let (mut f, jar) = a_user_outside_admins("/admin");
    for path in ["/%2Fh/x%25zz", "/%2Fh/reports%25zz/y", "/%5Ch/x%25"] {
        let r = respond(f.request(&Req::browser(path).cookies(&jar)));
        assert_eq!(r.status, 403, "{path}");
    }
    for path in ["/%2Fh/x%2541", "/%2Fh/reports%2520y", "/%5Ch/x"] {
        let fwd = forward(f.request(&Req::browser(path).cookies(&jar)));
        assert_eq!(fwd.metric, Some(Metric::SessionForwarded), "{path}");
    }
}

/// Found by a coverage-guided review (no native test read a nested rule through a session): the claims a
/// rule inside `all_of` or `any_of` reads are kept in the session as a top-level rule's are, so a user
/// who meets the nested rule passes it, and one who does not is refused.
#[test]
fn nested_rules_read_the_claims_they_name() {
    let cfg = || {
        config(serde_json::json!({
            "claim_rules": [{"path_prefix": "/ops", "rule": {"all_of": [
                {"claim": "department", "equals": "ops"},
                {"any_of": [
                    {"claim": "clearance", "contains_any": ["secret"]},
                    {"claim": "on_call", "equals": true},
                ]},
            ]}}],
        }))
    };
    let user = |department: &str, clearance: &[&str], on_call: bool| {
        let mut f = Filter::ready(cfg());
        let (jar, _) = log_in_with(&mut f, None, |nonce| {
            let mut c = claims(Some(nonce));
            c["department"] = department.into();
            c["clearance"] = serde_json::json!(clearance);
            c["on_call"] = on_call.into();
            mint(&c)
        });
        (f, jar)
    };
    for (department, clearance, on_call, passes) in [
        ("ops", &["secret"][..], false, true),
        ("ops", &[][..], true, true),
        ("ops", &["public"][..], false, false),
        ("sales", &["secret"][..], true, false),
    ] {
        let (mut f, jar) = user(department, clearance, on_call);
        let step = f.request(&Req::browser("/ops/board").cookies(&jar));
        let what = format!("{department} {clearance:?} {on_call}");
        if passes {
            assert_eq!(
                forward(step).metric,
                Some(Metric::SessionForwarded),
                "{what}"
            );
        } else {
            assert_eq!(respond(step).status, 403, "{what}");
        }
    }
}

/// Found by a coverage-guided review: claim rules the filter cannot read are refused at start, naming
/// the entry, rather than read as some other rule (a rule read as open would let everyone through).
#[test]
fn claim_rules_that_do_not_read_as_rules_are_refused() {
    let parse = |rules: serde_json::Value| {
        let json = serde_json::json!({
            "issuer": ISSUER,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "cookie_keys": [KEY_A],
            "claim_rules": rules,
        });
        oidc_filter::config::Config::parse(json.to_string().as_bytes(), &|_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let admins = serde_json::json!({"claim": "groups", "contains_any": ["admins"]});
    for (rules, says) in [
        (serde_json::json!(["/admin"]), "entry 0 is not an object"),
        (
            serde_json::json!([{"path_prefix": "/admin"}]),
            "entry 0: `rule` is required",
        ),
        (
            serde_json::json!([{"rule": {"any_of": [admins], "claim": "x"}}]),
            "entry 0: ",
        ),
        (
            serde_json::json!([{"rule": {"all_of": [admins, {"claim": "groups"}]}}]),
            "entry 0: claim rule on `groups` needs",
        ),
        (
            serde_json::json!([{"rule": {"any_of": "admins"}}]),
            "entry 0: `any_of` takes a list of rules",
        ),
        (
            serde_json::json!([{"rule": {"claim": "groups", "contains_any": ["admins", 5]}}]),
            "entry 0: `contains_any` takes a non-empty list of strings",
        ),
        (
            serde_json::json!([{"rule": {"claim": "groups", "contains_any": "admins"}}]),
            "entry 0: `contains_any` takes a non-empty list of strings",
        ),
        (
            serde_json::json!([{"rule": {"claim": "email", "matches": ["*@example.com"]}}]),
            "entry 0: `matches` takes a glob pattern string",
        ),
    ] {
        let e = parse(rules.clone());
        assert!(
            e.contains("field `claim_rules`") && e.contains(says),
            "{rules}: {e}"
        );
    }
    assert_eq!(parse(serde_json::json!([{"rule": admins}])), "");
}
