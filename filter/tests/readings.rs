//! Paths as other servers read them: every path the filter takes for a bypass path, and every path it
//! forwards past a claim rule, is read the same way by the readings of other servers modelled here
//! (randomized, with a fixed seed; found sound in review, kept as a regression check).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
mod common;

use common::*;

fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).map(|d| d as u8)
}

/// A xorshift generator from `seed`: each call a number below `n`, the same run after run.
fn numbers(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

/// Percent-decodes the escapes whose byte `pick` takes, as one server or another does.
fn dec(s: &str, pick: impl Fn(u8) -> bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
            && pick(h << 4 | l)
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
/// Resolves dot segments (RFC 3986 5.2.4), keeping empty segments or not.
fn resolve(p: &str, keep_empty: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = p.split('/').skip(1).collect();
    let n = segs.len();
    let mut trailing = false;
    for (i, s) in segs.into_iter().enumerate() {
        trailing = false;
        match s {
            "." => trailing = i + 1 == n,
            ".." => {
                out.pop();
                trailing = i + 1 == n;
            }
            "" if !keep_empty => {}
            s => out.push(s),
        }
    }
    let mut r = String::new();
    for s in &out {
        r.push('/');
        r.push_str(s);
    }
    if r.is_empty() || trailing {
        r.push('/');
    }
    r
}
/// Cuts each segment's `;` parameters, as servlet containers do.
fn cut(p: &str) -> String {
    p.split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}
/// Merges runs of slashes.
fn merge(p: &str) -> String {
    let mut o = String::new();
    for c in p.chars() {
        if !(c == '/' && o.ends_with('/')) {
            o.push(c);
        }
    }
    o
}

/// A randomized check that every path `is_bypass` takes for `/healthz` is under
/// `/healthz` to several servers' readings (a WHATWG-style parser: `%2e` is a dot, `\` a slash; Envoy's
/// normalizer: unreserved escapes decoded, `%2F` and `%5C` kept, slashes merged or not; a full decoder
/// that cuts `;` parameters; Tomcat: parameters cut before decoding), and that none of the path functions
/// of the request path panics on such input.
#[test]
fn bypass_paths_hold_under_other_servers_readings() {
    use oidc_filter::paths;
    let toks = [
        "/",
        "\\",
        "healthz",
        "admin",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%2e",
        "%2E",
        ".",
        "..",
        ";",
        ";x",
        "%3b",
        "a",
        "?",
        "#",
        "%25",
        "%",
        "\u{130}",
        "//",
        "%2e%2e",
        ".%2e",
        "%252e",
        "live",
        "%68ealthz",
    ];
    let b = vec!["/healthz".to_string()];
    let mut next = numbers(0x2545_f491_4f6c_dd1d_u64);
    let mut taken = 0;
    for _ in 0..100_000 {
        let mut t = String::from(if next(4) == 0 { "/" } else { "/healthz" });
        for _ in 0..next(7) {
            t.push_str(toks[next(toks.len() as u64) as usize]);
        }
        // None of these may panic.
        let r = paths::readings(&t);
        if let Some(r) = &r {
            let _ = r.dotted();
            let _ = r.unresolved();
            let _ = r.iter().count();
            if let Some(d) = r.decoded() {
                let _ = paths::past_authority(d, true);
                let _ = paths::past_authority(d, false);
            }
        }
        let _ = paths::past_authority(paths::path_only(&t), true);
        let _ = paths::safe_redirect(&t);
        let _ = paths::normalize(&t);
        let _ = paths::bypass_in_text_only(&b, &mut paths::Target::new(&t));
        let _ = paths::fold_ascii_lookalikes(&t);
        if !paths::is_bypass(&b, &mut paths::Target::new(&t)) {
            continue;
        }
        taken += 1;
        let p = paths::path_only(&t);
        let whatwg = resolve(&dec(p, |v| v == b'.').replace('\\', "/"), true);
        let unreserved = |v: u8| v.is_ascii_alphanumeric() || b"-._~".contains(&v);
        let envoy = resolve(&dec(p, unreserved), true);
        let envoy_merged = resolve(&merge(&dec(p, unreserved)), true);
        let full = resolve(&cut(&dec(p, |_| true).replace('\\', "/")), false);
        let tomcat = resolve(&dec(&cut(p), |v| v != b'/'), true);
        for (who, got) in [
            ("whatwg", whatwg),
            ("envoy", envoy),
            ("envoy merged", envoy_merged),
            ("full", full),
            ("tomcat", tomcat),
        ] {
            assert!(
                paths::prefix_matches("/healthz", &got),
                "{t:?} is a bypass path, but {who} reads it as {got:?}"
            );
        }
    }
    assert!(taken > 1000, "{taken}");
}

/// A randomized check through the whole request path that a session a rule on
/// `/admin` refuses is forwarded only with paths that no server reads as under `/admin` (in any case):
/// fully decoded and resolved, with or without `;` cut, `\` as `/`, slashes merged or kept, decoded and
/// left unresolved, a WHATWG/`urlsplit` parser that takes `//host` for an authority.
#[test]
fn a_rule_on_admin_holds_under_other_servers_readings() {
    use oidc_filter::flow::Step;
    use oidc_filter::paths;
    let mut f = Filter::ready(config(serde_json::json!({
        "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
        "bypass_paths": ["/healthz"],
    })));
    let (jar, _) = log_in_with(&mut f, None, |nonce| {
        let mut c = claims(Some(nonce));
        c["groups"] = serde_json::json!(["users"]);
        mint(&c)
    });
    let authority = |p: &str| -> String {
        let q = p.replace('\\', "/");
        match q.strip_prefix("//") {
            Some(rest) => {
                let rest = rest.trim_start_matches('/');
                match rest.find('/') {
                    Some(i) => rest[i..].to_string(),
                    None => "/".to_string(),
                }
            }
            None => q,
        }
    };
    let toks = [
        "/",
        "\\",
        "admin",
        "ADMIN",
        "Admin",
        "x",
        "%2f",
        "%2F",
        "%5c",
        "%2e",
        ".",
        "..",
        ";",
        ";x",
        "%3b",
        "%61dmin",
        "%2fadmin",
        "//",
        "healthz",
        "adm\u{130}n",
        "?",
        "%3f",
    ];
    let mut next = numbers(0x9e37_79b9_7f4a_7c15_u64);
    let mut passed = 0;
    for _ in 0..15_000 {
        let starts = ["/", "//", "/x", "/healthz", "/\\"];
        let mut t = String::from(starts[next(starts.len() as u64) as usize]);
        for _ in 0..next(6) {
            t.push_str(toks[next(toks.len() as u64) as usize]);
        }
        let step = f.request(&Req::api(&t).cookies(&jar));
        let Step::Forward(_) = step else { continue };
        passed += 1;
        let p = paths::path_only(&t);
        let d = dec(p, |_| true);
        let ds = d.replace('\\', "/");
        let mut reads = vec![
            resolve(&ds, false),
            resolve(&ds, true),
            resolve(&cut(&ds), false),
            resolve(&cut(&ds), true),
            merge(&ds),
            ds.clone(),
            resolve(&authority(p), true),
            resolve(&dec(&authority(p), |_| true), true),
            resolve(&authority(&d), true),
            merge(&cut(&ds)),
        ];
        reads.extend(
            reads
                .clone()
                .into_iter()
                .map(|r| paths::fold_ascii_lookalikes(&r).into_owned()),
        );
        for r in &reads {
            assert!(
                !paths::prefix_matches_as("/admin", r, true),
                "{t:?} went to the app, which may read it as {r:?}"
            );
        }
    }
    assert!(passed > 1000, "{passed}");
}
