//! The callback: a fuzzed query and `Cookie` header at the callback path (with or without this
//! browser's real login cookie and state), then a fuzzed token endpoint answer to the code exchange.
//!
//! Input: one flags byte, then `query \n cookie \n reply body` (missing parts are empty).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use oidc_filter::flow::Step;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let cookie = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();

    let mut state = common::ready_state();
    // A real login attempt of this browser: its cookie and state, which the fuzzer may use.
    let login = common::on_request(&mut state, &common::H::request("/login?rd=/app", "", true));
    let Step::Respond(r) = login else {
        panic!("login did not redirect")
    };
    let header = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    let location = header("location");
    let state_param = location
        .split("state=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap_or_default()
        .to_string();
    let login_cookie = header("set-cookie")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();

    let mut q = String::new();
    if flags & 1 != 0 {
        q.push_str("state=");
        q.push_str(&state_param);
        q.push('&');
    }
    q.push_str(&query);
    let mut c = String::new();
    if flags & 2 != 0 {
        c.push_str(&login_cookie);
        c.push_str("; ");
    }
    c.push_str(&cookie);

    let step = common::on_request(
        &mut state,
        &common::H::request(&format!("/oauth2/callback?{q}"), &c, true),
    );
    common::check_step(&step);
    let Step::Call(_, pending) = step else { return };
    let status = [200, 200, 200, 400, 401, 500, 504, 0][usize::from(flags >> 5)];
    let reply = (status != 0).then_some((status, body));
    let step = common::on_reply(&mut state, *pending, reply);
    common::check_step(&step);
    // An unknown kid fetches the JWKS: answer with the fuzzed body too.
    if let Step::Call(_, pending) = step {
        common::check_step(&common::on_reply(&mut state, *pending, reply));
    }
});
