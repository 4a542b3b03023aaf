//! What one request costs a worker, counted rather than timed: the bytes the filter allocates for it
//! (every pass that copies or splits the request's text allocates), against the size of what the client
//! sent. A cost that grows far faster than the request lets one client take a worker's time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other whole-flow tests, which use more of it.
#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use oidc_filter::flow;

/// The system allocator, counting what each thread allocates (the tests of this binary run in threads of
/// their own).
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call goes on to the system allocator with the layout it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: a thread's last frees and allocations may come after its counter is gone.
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        // SAFETY: as the caller asks.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The bytes the filter allocates to answer `req` (a second time: the first may fill caches).
fn allocated(f: &mut Filter, req: &Req) -> usize {
    let _ = f.request(req);
    ALLOCATED.with(|a| a.set(0));
    let _ = f.request(req);
    ALLOCATED.with(Cell::get)
}

/// A filter whose claim rule on `/admin` refuses `user-1` (no `groups`), logged in as that user.
fn ruled() -> (Filter, Jar) {
    let mut f = Filter::ready(config(serde_json::json!({
        "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
    })));
    let (jar, _) = log_in(&mut f, None);
    (f, jar)
}

/// What a browser of `jar` gets at `path`: `200` when sent on.
fn status_of(f: &mut Filter, jar: &Jar, path: &str) -> u16 {
    match f.request(&Req::browser(path).cookies(jar)) {
        flow::Step::Forward(_) => 200,
        step => respond(step).status,
    }
}

/// A path that is not plain costs its readings (`paths::readings`): each a copy of the path with its
/// segments resolved, eight of them, worked out again for each question a request asks of its path (a
/// bypass path? a client's own token on a bypass path? a claim rule?) and again for what follows `//`.
/// Found in review: a path of 48 KB of `/` (which Envoy's path normalization, Istio's `BASE`, leaves as
/// it is) made an anonymous request allocate 8.8 MB and cost a worker 20 ms in Envoy, against 0.6 ms for
/// 48 KB of a plain path and 57 µs for `/`; `//a` repeated with a bearer token, 27 MB and 66 ms; a
/// logged-in user's, 21 MB and 53 ms. A few requests a second took a worker. Now a path that no app's
/// links make (over 8 KiB, or over 256 segments, and not plain) is read as one that does not decode: no
/// bypass path, every claim rule.
#[test]
fn a_long_path_costs_a_request_a_few_times_its_length() {
    let (mut f, jar) = ruled();
    for unit in ["a", "/", ";/", "a;/", "a%2F", "%2F", "./", "a\\", "//a"] {
        let path = format!("/{}", unit.repeat(48_000 / unit.len()));
        for (who, req) in [
            ("anonymous", Req::api(&path)),
            ("logged in", Req::browser(&path).cookies(&jar)),
            (
                "with a bearer token",
                Req::api(&path).with("authorization", "Bearer x.y.z"),
            ),
        ] {
            let bytes = allocated(&mut f, &req);
            assert!(
                bytes <= 4 * path.len() + 16 * 1024,
                "{who}, a path of {} bytes of {unit:?}: {bytes} bytes allocated",
                path.len()
            );
        }
    }
}

/// What such a path is, once its readings are not worked out: no bypass path, and under every claim
/// rule (as a path that does not decode), for anonymous requests and logged-in ones alike. A path of
/// that many segments within the bound still has its readings.
#[test]
fn a_path_of_too_many_segments_is_no_bypass_path_and_meets_every_rule() {
    let mut f = Filter::ready(config(serde_json::json!({
        "bypass_paths": ["/healthz"],
        "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
    })));
    let (jar, _) = log_in(&mut f, None);
    // `paths::MAX_READ_SEGMENTS`.
    let segments = 256;
    let within = format!("/healthz{}", "/x;".repeat(segments - 1));
    let over = format!("/healthz{}", "/x;".repeat(segments));
    assert!(matches!(
        f.request(&Req::api(&within)),
        flow::Step::Forward(_)
    ));
    assert_eq!(respond(f.request(&Req::api(&over))).status, 401);
    // `user-1` has no `groups`: the rule on `/admin` refuses it, on such a path too.
    let within = format!("/public{}", "/x;".repeat(segments - 1));
    let over = format!("/public{}", "/x;".repeat(segments));
    assert!(matches!(
        f.request(&Req::browser(&within).cookies(&jar)),
        flow::Step::Forward(_)
    ));
    assert_eq!(
        respond(f.request(&Req::browser(&over).cookies(&jar))).status,
        403
    );
    let long = format!("/public/{}%41", "a".repeat(8192));
    assert_eq!(
        respond(f.request(&Req::browser(&long).cookies(&jar))).status,
        403
    );
}

/// Found by mutation testing: the bounds hold to the byte and to the segment, also for segments a request
/// writes as `\` or as `%2F` (which the bound counts once decoded). A path of `MAX_READ_PATH` bytes (not
/// plain) has its readings and goes up; one of a byte more meets every claim rule; and so a path within the
/// length of more than `MAX_READ_SEGMENTS` segments of either kind.
#[test]
fn the_bounds_count_bytes_as_written_and_segments_as_decoded() {
    let (mut f, jar) = ruled();
    let status = |f: &mut Filter, path: &str| status_of(f, &jar, path);
    // `paths::MAX_READ_PATH`, with an escape: not plain.
    let bytes = 8192;
    let at = |n: usize| format!("/public/{}%41", "a".repeat(n - "/public/%41".len()));
    assert_eq!(at(bytes).len(), bytes);
    assert_eq!(status(&mut f, &at(bytes)), 200);
    assert_eq!(status(&mut f, &at(bytes + 1)), 403);
    // `paths::MAX_READ_SEGMENTS`: a `\` is a segment, and a `%2F` one once decoded.
    let segments = 256;
    for unit in ["\\x", "%2Fx", "%5Cx"] {
        let within = format!("/public{}", unit.repeat(segments - 1));
        let over = format!("/public{}", unit.repeat(segments));
        assert!(over.len() < bytes, "{unit}");
        assert_eq!(status(&mut f, &within), 200, "{unit}");
        assert_eq!(status(&mut f, &over), 403, "{unit}");
    }
}

/// Within the bounds a path's readings are worked out once a request, and those of what follows a host
/// in it (the claim rules read `//host/admin` as `/admin` too) within a quarter of the bounds: found in
/// review, each question a request asked of its path worked them out again (a client's made-up bearer
/// token's request twice), and each of the four ways of reading past a host once more (a logged-in
/// request on a path of 8 KiB that starts with `//` cost a worker 1 ms natively, five times an anonymous
/// one's).
#[test]
fn a_path_within_the_bounds_is_read_about_once_a_request() {
    let mut f = Filter::ready(config(serde_json::json!({
        "bypass_paths": ["/healthz"],
        "claim_rules": [{"path_prefix": "/admin", "rule": {"claim": "groups", "contains_any": ["admins"]}}],
    })));
    let (jar, _) = log_in(&mut f, None);
    // At the bounds, `paths::MAX_READ_PATH` (8 KiB) and `paths::MAX_READ_SEGMENTS` (256): under a claim
    // rule's eyes, and under a bypass prefix only as written (a bearer request there is asked both). Then
    // paths in which a parser finds a host: at the whole bounds, and at a quarter of them, the same past
    // the host in each of the four ways of reading it (as it came or decoded, a `\` ending the host or
    // not) or different in each.
    let segment = |n: usize| format!("/{};", "y".repeat(n));
    let paths = [
        format!("/public/{}%41", "a".repeat(8192 - "/public/%41".len())),
        format!("/public{}", segment(30).repeat(255)),
        format!(
            "/healthz/..%2F{}",
            "a".repeat(8192 - "/healthz/..%2F".len())
        ),
        format!("//h{}", segment(30).repeat(254)),
        format!("//h{}", segment(30).repeat(62)),
        format!("//h\\a%41{}", segment(30).repeat(61)),
    ];
    let mut costs = Vec::new();
    for path in &paths {
        let mut cost = |req: Req| allocated(&mut f, &req);
        costs.push((
            path,
            cost(Req::api(path)),
            cost(Req::browser(path).cookies(&jar)),
            cost(Req::api(path).with("authorization", "Bearer x.y.z")),
        ));
    }
    // The most an anonymous request on one of them costs: its readings, once.
    let most = costs.iter().map(|c| c.1).max().unwrap();
    for (path, anonymous, logged_in, bearer) in costs {
        let at = &path[..16];
        assert!(
            bearer <= logged_in.max(anonymous) + 1024,
            "{at}…, {} bytes: a bearer request allocated {bearer}, a logged-in one {logged_in}",
            path.len()
        );
        assert!(
            logged_in.max(bearer) <= most + most / 4,
            "{at}…, {} bytes: {logged_in} logged in, {bearer} with a bearer token, against {most}",
            path.len()
        );
    }
}

/// A path in which a URL parser finds a host is read within a quarter of the bounds, to the byte and the
/// segment: 2 KiB and 64 segments (`/` or `\`, once decoded), as it came or decoded (`/%2F…`); a path of
/// more meets every claim rule, as one that does not decode.
#[test]
fn a_path_that_names_a_host_is_read_within_a_quarter_of_the_bounds() {
    let (mut f, jar) = ruled();
    let status = |f: &mut Filter, path: &str| status_of(f, &jar, path);
    for start in ["//h/public", "/%2Fh/public", "/\\h/public"] {
        let at = |n: usize| format!("{start}/{}", "a".repeat(n - start.len() - 1));
        assert_eq!(status(&mut f, &at(2048)), 200, "{start}");
        assert_eq!(status(&mut f, &at(2049)), 403, "{start}");
        // Two slashes at the start, and one before each `x`: 64 and 65.
        let within = format!("{start}{}", "/x".repeat(61));
        let over = format!("{start}{}", "/x".repeat(62));
        assert_eq!(status(&mut f, &within), 200, "{start}");
        assert_eq!(status(&mut f, &over), 403, "{start}");
    }
    // A path that names no host keeps the whole bounds.
    assert_eq!(
        status(&mut f, &format!("/public/{}%41", "a".repeat(4000))),
        200
    );
}
