//! A bounded soak: mixed traffic (logged-in, anonymous browsers and API clients, bypass paths, API
//! clients with their own token, a new sealed cookie on every request so the per-worker session
//! cache keeps filling and evicting, forged cookies) through the real chain for `SOAK_SECS`
//! (default 24) seconds.
//! Envoy's memory stays flat after warm-up, nothing answers 5xx, and the filter's counters add up to
//! the requests sent. The figures go to `target/e2e/soak/figures.json` (for the README's Security section).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{Browser, SiteSpec, Stack, StackSpec, local_agent};
use oidc_filter::session;
use serde_json::json;

const SITE: &str = "app";
const COOKIE: &str = "_oidc_session";
const STAT: &str = "wasmcustom.oidc_filter.";
const THREADS: usize = 6;

/// One kind of request in the mix: what is sent, the status it must get, and the filter counter
/// it must move (one per request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    LoggedIn,
    /// A valid session sealed anew for this request: never a cache hit.
    FreshSeal,
    AnonymousBrowser,
    AnonymousApi,
    Forged,
    Bypass,
    OwnBearer,
}

const KINDS: [Kind; 7] = [
    Kind::LoggedIn,
    Kind::FreshSeal,
    Kind::AnonymousBrowser,
    Kind::AnonymousApi,
    Kind::Forged,
    Kind::Bypass,
    Kind::OwnBearer,
];

impl Kind {
    /// In every 20: 9 logged-in, 3 freshly sealed, 3 anonymous browser, 1 anonymous API, 1 forged,
    /// 2 bypass, 1 own token.
    fn nth(i: usize) -> Kind {
        match i % 20 {
            0..=8 => Kind::LoggedIn,
            9..=11 => Kind::FreshSeal,
            12..=14 => Kind::AnonymousBrowser,
            15 => Kind::AnonymousApi,
            16 => Kind::Forged,
            17..=18 => Kind::Bypass,
            _ => Kind::OwnBearer,
        }
    }

    fn status(self) -> u16 {
        match self {
            Kind::AnonymousBrowser => 302,
            Kind::AnonymousApi | Kind::Forged => 401,
            _ => 200,
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Kind::LoggedIn | Kind::FreshSeal => "sessions_forwarded",
            Kind::AnonymousBrowser => "login_redirects",
            Kind::AnonymousApi | Kind::Forged => "unauthorized",
            Kind::Bypass => "bypassed",
            Kind::OwnBearer => "bearer_passthrough",
        }
    }
}

/// Envoy's stats once the filter's counters have settled: unchanged for 1.5 s, longer than the 1 s
/// tick on which each worker hands Envoy its per-request counts.
fn settled_stats(stack: &Stack) -> HashMap<String, u64> {
    let ours = |stats: &HashMap<String, u64>| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = stats
            .iter()
            .filter(|(k, _)| k.starts_with(STAT))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    };
    let read = || stack.envoy_stats();
    harness::process::settled(
        Duration::from_secs(20),
        Duration::from_millis(1500),
        read,
        ours,
    )
    .expect("the filter's counters settle")
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn mixed_traffic_keeps_memory_flat_no_5xx_and_counters_add_up() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let stack = Stack::start(StackSpec::new("soak", vec![SiteSpec::new(SITE)])).unwrap();
    // Every worker ready, not only the first to answer (a 503 of one still fetching would count).
    stack.wait_ready(SITE).unwrap();
    let site = stack.site(SITE).unwrap().clone();
    let pid = stack.envoy().pid();
    let rss_idle = vm_rss_kb(pid);

    // Four users; the first one's ID token doubles as an API client's own bearer token.
    let t0 = Instant::now();
    let mut sessions = Vec::new();
    while sessions.len() < 4 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no logins");
        let b = Browser::new();
        match b.login(&site.url("/"), &format!("soak{}", sessions.len())) {
            Ok(done) if done.response.status == 200 => {}
            _ => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let cookie: Vec<String> = b
            .cookies("localhost")
            .into_iter()
            .filter(|(n, _)| session::is_session_cookie(COOKIE, n))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        sessions.push(cookie.join("; "));
    }
    let own_token = {
        let r = Browser::new()
            .get_with(
                &site.url("/whoami"),
                &[("accept", "application/json"), ("cookie", &sessions[0])],
            )
            .unwrap();
        r.json().unwrap()["headers"]["authorization"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let keys = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(harness::DEFAULT_COOKIE_KEYS)
            .unwrap();
        session::Keys::new(&[raw]).unwrap()
    };
    let sealed = session::join(&sessions[1], COOKIE).unwrap().unwrap();
    let plain = keys.open(COOKIE, &sealed).unwrap();

    // oidc-filter adds logged-in requests to `sessions_forwarded` on its 1 s tick: let the logins'
    // requests land before the first reading, and the soak's before the last.
    let stats_before = settled_stats(&stack);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let run = Duration::from_secs(secs);
    let mut rss: Vec<(Duration, u64)> = Vec::new();
    let results: Vec<(HashMap<Kind, u64>, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (site, sessions, own_token, stop) = (&site, &sessions, &own_token, &stop);
                let (keys, plain) = (&keys, &plain);
                scope.spawn(move || {
                    let agent = local_agent(Duration::from_secs(10));
                    let mut sent: HashMap<Kind, u64> = HashMap::new();
                    let mut wrong = Vec::new();
                    let mut i = t * 7;
                    while !stop.load(Ordering::Relaxed) {
                        let kind = Kind::nth(i);
                        let path = format!("/soak/{t}/{i}");
                        let cookie = match kind {
                            Kind::FreshSeal => {
                                let mut nonce = [0u8; 24];
                                nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
                                nonce[8] = t as u8;
                                let v = keys.seal(COOKIE, plain, nonce);
                                session::split(COOKIE, &v)
                                    .unwrap()
                                    .into_iter()
                                    .map(|(n, v)| format!("{n}={v}"))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            }
                            Kind::Forged => format!("{COOKIE}=1.AQ{i:0>60}"),
                            _ => sessions[i % sessions.len()].clone(),
                        };
                        let req = match kind {
                            Kind::LoggedIn | Kind::FreshSeal | Kind::Forged => agent
                                .get(site.url(&path))
                                .header("accept", "application/json")
                                .header("cookie", &cookie),
                            Kind::AnonymousBrowser => agent
                                .get(site.url(&path))
                                .header("accept", harness::browser::HTML_ACCEPT),
                            Kind::AnonymousApi => agent
                                .get(site.url(&path))
                                .header("accept", "application/json"),
                            Kind::Bypass => agent
                                .get(site.url("/healthz"))
                                .header("accept", "application/json"),
                            Kind::OwnBearer => agent
                                .get(site.url(&path))
                                .header("accept", "application/json")
                                .header("authorization", own_token),
                        };
                        let status = match req.call() {
                            Ok(mut r) => {
                                let _ = r.body_mut().read_to_vec();
                                r.status().as_u16()
                            }
                            Err(e) => {
                                wrong.push(format!("{kind:?}: {e}"));
                                0
                            }
                        };
                        if status != kind.status() && wrong.len() < 20 {
                            wrong.push(format!("{kind:?} {path}: {status}"));
                        }
                        *sent.entry(kind).or_default() += 1;
                        i += 1;
                    }
                    (sent, wrong)
                })
            })
            .collect();
        while started.elapsed() < run {
            std::thread::sleep(Duration::from_millis(500));
            rss.push((started.elapsed(), vm_rss_kb(pid)));
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();

    let mut sent: HashMap<Kind, u64> = HashMap::new();
    let mut wrong = Vec::new();
    for (s, w) in results {
        for (k, n) in s {
            *sent.entry(k).or_default() += n;
        }
        wrong.extend(w);
    }
    let total: u64 = sent.values().sum();
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    let mut by_counter: HashMap<&str, u64> = HashMap::new();
    for kind in KINDS {
        let n = sent.get(&kind).copied().unwrap_or(0);
        assert!(n > 0, "{kind:?} never sent");
        *by_counter.entry(kind.counter()).or_default() += n;
    }
    // Every request counted: wait until each counter has caught up with what was sent (the batched
    // ones arrive on each worker's next tick), then they must be equal, not more.
    let mut expected: Vec<(String, u64)> = by_counter
        .iter()
        .map(|(counter, n)| (format!("{STAT}{counter}"), *n))
        .collect();
    expected.push((format!("http.{SITE}.downstream_rq_completed"), total));
    let delta_in = |stats: &HashMap<String, u64>, name: &str| {
        stats.get(name).copied().unwrap_or(0) - stats_before.get(name).copied().unwrap_or(0)
    };
    let stats_after = harness::process::poll(Duration::from_secs(10), || {
        let stats = stack.envoy_stats()?;
        let caught_up = expected
            .iter()
            .all(|(name, n)| delta_in(&stats, name) >= *n);
        Ok(caught_up.then_some(stats))
    })
    .unwrap_or_else(|e| {
        let stats = stack.envoy_stats().unwrap();
        let got: Vec<(&String, u64, u64)> = expected
            .iter()
            .map(|(name, n)| (name, delta_in(&stats, name), *n))
            .collect();
        panic!("{e}: counted, expected: {got:?}")
    });
    let delta = |name: &str| delta_in(&stats_after, name);
    for (name, n) in &expected {
        assert_eq!(delta(name), *n, "{name}");
    }
    assert_eq!(delta(&format!("http.{SITE}.downstream_rq_5xx")), 0);
    assert_eq!(delta(&format!("{STAT}refreshes")), 0);

    // Memory: flat after warm-up (the first third), judged on the average of the last samples
    // against the average around the one-third mark.
    let third = rss.len() / 3;
    let avg = |s: &[(Duration, u64)]| s.iter().map(|(_, kb)| kb).sum::<u64>() / s.len() as u64;
    let at_third = avg(&rss[third.saturating_sub(2)..=third]);
    let at_end = avg(&rss[rss.len() - 3..]);
    let first = rss[0].1;
    let figures = json!({
        "seconds": elapsed.as_secs_f64(),
        "requests": total,
        "requests_per_second": total as f64 / elapsed.as_secs_f64(),
        "mix": sent.iter().map(|(k, n)| (format!("{k:?}"), *n)).collect::<HashMap<_, _>>(),
        "envoy_rss_kb": { "idle": rss_idle, "first": first, "at_one_third": at_third, "at_end": at_end },
        "rss_samples_kb": rss.iter().map(|(t, kb)| json!([t.as_secs_f64(), kb])).collect::<Vec<_>>(),
    });
    std::fs::write(
        stack.dir().join("figures.json"),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
    eprintln!(
        "soak: {total} requests in {elapsed:?} ({:.0}/s); Envoy RSS {rss_idle} kB idle, {first} kB at start, {at_third} kB at 1/3, {at_end} kB at the end",
        total as f64 / elapsed.as_secs_f64()
    );
    assert!(
        at_end * 100 <= at_third * 110,
        "Envoy RSS grew from {at_third} kB to {at_end} kB: {rss:?}"
    );
}
