//! The benchmark machinery on one configuration and its baseline for about a second each: it logs in
//! for real, starts pinned Envoys with and without the filter, runs wrk on each in turn and reads the
//! results back. No timing assertions: only that the rows are sane, paired, and that the load really
//! went through as a logged-in user.

// Test code (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use harness::bench::{self, Instructions, Options};

#[test]
fn one_configuration_gives_a_sane_row_and_instruction_counts() {
    let opts = Options {
        quick: true,
        only: vec!["none".into(), "oidc-session".into()],
        duration: Some(Duration::from_secs(1)),
        rounds: Some(1),
        // The release build as it is: wasm-opt would take longer than the run.
        wasm: Some(harness::wasm_path().unwrap()),
        ..Options::default()
    };
    let report = bench::run(&opts).unwrap();
    assert_eq!(
        report.rows.len(),
        2,
        "only the configurations asked for run"
    );
    let row = report.row("oidc-session").unwrap();
    assert_eq!(row.problem, None);
    let [s] = row.samples.as_slice() else {
        panic!("one run expected, got {}", row.samples.len());
    };
    assert!(s.requests > 0 && s.wrk_requests > 0, "{s:?}");
    // Logged in: the route's 200, not the login redirect, and the filter counted each as a session.
    assert_eq!(s.status_3xx, 0, "{s:?}");
    assert_eq!(s.status_other, 0, "{s:?}");
    assert_eq!(s.status_2xx, s.requests, "{s:?}");
    assert!(
        row.run_logged_in >= row.run_requests && row.run_requests >= s.requests,
        "{row:?}"
    );
    assert!(
        s.rps > 0.0 && s.p50_us > 0.0 && s.p99_us >= s.p50_us,
        "{s:?}"
    );
    assert!(
        s.cpu_us_per_req > 0.0 && s.cpu_us_per_req.is_finite(),
        "{s:?}"
    );
    assert!(row.rss_loaded_kib > 0);
    // The run was paired with a run of its baseline, which counted no logged-in request.
    let [(mine, base)] = row.pairs.as_slice() else {
        panic!("one pair expected, got {}", row.pairs.len());
    };
    assert_eq!(mine.requests, s.requests);
    assert!(
        base.requests > 0 && base.status_2xx == base.requests,
        "{base:?}"
    );
    let none = report.row("none").unwrap();
    assert_eq!((none.problem.as_deref(), none.run_logged_in), (None, 0));
    assert_eq!(none.samples.len(), 1);
    let over = report.overhead(row).unwrap();
    assert_eq!((over.pairs, over.interval), (1, None), "{over:?}");
    assert!(over.diff_us.is_finite(), "{over:?}");
    // The report renders.
    assert!(report.markdown().contains("`oidc-session`"));
    assert!(report.svg().starts_with("<svg"));

    instruction_counts_come_from_checked_runs();
}

/// The callgrind pass: Envoy under valgrind, instructions counted over a fixed number of requests.
/// The figures are deterministic, so the filter must cost more than no filter at all, and every
/// counted request must have gone through as logged in. (Called from the test above: two benchmark
/// runs at once would share the bench stack's directory.)
fn instruction_counts_come_from_checked_runs() {
    let opts = Options {
        only: vec!["none".into(), "oidc-session".into()],
        instructions: Instructions::Only,
        wasm: Some(harness::wasm_path().unwrap()),
        ..Options::default()
    };
    let report = bench::run(&opts).unwrap();
    assert!(report.rows.is_empty(), "no timed runs with --instructions");
    let row = |name: &str| {
        report
            .instructions
            .iter()
            .find(|r| r.variant.name == name)
            .unwrap_or_else(|| panic!("no {name} row"))
    };
    let (none, oidc) = (row("none"), row("oidc-session"));
    for r in [none, oidc] {
        assert_eq!(r.problem, None, "{}", r.variant.name);
        assert!(
            r.requests >= 2000,
            "{}: {} requests",
            r.variant.name,
            r.requests
        );
        assert!(
            r.per_request.is_finite() && r.per_request > 10_000.0,
            "{r:?}"
        );
    }
    // The cache and branch simulation ran too; the filter's code adds instruction-cache misses.
    for r in [none, oidc] {
        assert!(
            r.i1_misses > 0.0 && r.d1_misses > 0.0 && r.mispredicts > 0.0,
            "{r:?}"
        );
    }
    assert!(oidc.i1_misses > none.i1_misses, "{oidc:?} {none:?}");
    let over = report.instructions_over("oidc-session").unwrap();
    assert!(over > 0.0 && over < oidc.per_request, "{over}");
    assert!(
        report
            .markdown()
            .contains("## Instructions per request (callgrind)")
    );
}
