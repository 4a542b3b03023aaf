//! Image upgrades. A platform team bumps the `WasmPlugin`'s image tag: istiod sends the same filter
//! configuration and VM settings (the same `vm_id`) with other code. Envoy's VM key hashes the code, so
//! it builds new VMs (one per thread) next to the old ones, which serve the requests that began under
//! them and are let go once those end. A new VM starts from nothing: it fetches the IdP's discovery
//! document and keys; it shares with the old one only Envoy's shared data, which Envoy keys by
//! `vm_id` (the ended sessions, the renewal table).

use super::*;

/// The threads that run a site's filter, each with a VM of its own per module: Envoy's main thread and
/// the stack's two workers.
const THREADS: usize = 3;
/// How long the IdP takes to answer each request in the slow-IdP measurement: a remote IdP.
const REMOTE_IDP: Duration = Duration::from_millis(300);

/// Another release of the filter, new to Envoy: the shipped module with a release tag no earlier
/// upgrade used (same code, other bytes, so a VM key of its own).
fn new_release(site: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let tag = format!("{site}-r{}", NEXT.fetch_add(1, Ordering::Relaxed));
    harness::module::with_release_tag(
        &harness::wasm_path().unwrap(),
        &tag,
        &stack().dir().join("modules"),
    )
    .unwrap()
}

/// How many of `site`'s root contexts have loaded the IdP's discovery document from nothing, by the
/// log: one per thread of each new VM. (A root context for a new configuration in the same VM starts
/// from the documents of the one before and says so instead; a VM that is ready never logs it again.)
fn fresh_starts(site: &str) -> usize {
    logged(site, |l| l.ends_with(": discovery document loaded"))
}

/// How many of `site`'s root contexts have loaded the IdP's signing keys, by the log: one per thread
/// of each new VM, after its discovery document (and again only for a key it does not know, or on
/// `jwks_refresh_interval`, an hour here).
fn keys_loaded(site: &str) -> usize {
    stack().keys_loaded(site, stack().issuer()).unwrap()
}

/// The lines `site`'s filter logged that `what` picks.
fn logged(site: &str, what: impl Fn(&str) -> bool) -> usize {
    let prefix = format!("{}: ", harness::envoy::ecds_name(site));
    stack()
        .envoy_log()
        .unwrap()
        .lines()
        .filter(|l| l.contains(&prefix) && what(l))
        .count()
}

/// An image upgrade Envoy has applied.
struct Upgrade {
    site: &'static str,
    /// [`fresh_starts`] before it.
    fresh_before: usize,
    /// [`keys_loaded`] before it.
    keys_before: usize,
    /// When the new ECDS version was written.
    written: Instant,
    /// When Envoy's `config_reload` counted it.
    applied: Instant,
}

/// Points `site`'s filter at `module` through ECDS, its configuration and `vm_id` unchanged; waits
/// until Envoy has applied or refused it, and returns which, with when the update was written and
/// when Envoy counted it.
fn swap_module(site: &str, module: &Path) -> (Update, Instant, Instant) {
    let before = ecds_counts(site);
    stack().update_filter_module(site, module).unwrap();
    let written = Instant::now();
    let update = applied_or_refused(site, before, "new module");
    (update, written, Instant::now())
}

/// Gives `site` a new release of the module, as istiod does when the image tag is bumped, and waits
/// until Envoy has applied it. Checks that Envoy built new VMs for it
/// (`wasm.envoy.wasm.runtime.v8.created`: at least one per thread).
fn upgrade(site: &'static str) -> Upgrade {
    let module = new_release(site);
    let fresh_before = fresh_starts(site);
    let keys_before = keys_loaded(site);
    let created = stack().wasm_vm_stats().unwrap().created;
    let (update, written, applied) = swap_module(site, &module);
    assert_eq!(
        update,
        Update::Applied,
        "{site}: the new module was refused"
    );
    // The workers build theirs when Envoy hands them the new filter, just after it counted the update.
    poll(Duration::from_secs(15), || {
        Ok((stack().wasm_vm_stats()?.created >= created + THREADS as u64).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{site}: envoy applied the new module without new VMs: {created} VMs created before, \
             {} after: {e:#}",
            stack().wasm_vm_stats().unwrap().created
        )
    });
    Upgrade {
        site,
        fresh_before,
        keys_before,
        written,
        applied,
    }
}

/// Waits until the new VM of every thread has loaded the IdP's discovery document (from then on the
/// new VMs take every new request, and the old ones only finish what they had), then its keys (from
/// then on `/login` redirects on every worker). By the log, one line per VM: probes may be running,
/// so the answers alone cannot show that every worker gave one. Returns when.
fn until_new_vms_ready(up: &Upgrade) -> Instant {
    for (what, count, before) in [
        (
            "discovery document",
            fresh_starts as fn(&str) -> usize,
            up.fresh_before,
        ),
        ("signing keys", keys_loaded, up.keys_before),
    ] {
        poll(Duration::from_secs(15), || {
            Ok((count(up.site) >= before + THREADS).then_some(()))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: the new VMs never loaded the {what} ({} of {THREADS} did): {e:#}",
                up.site,
                count(up.site) - before
            )
        });
    }
    Instant::now()
}

/// A probe run on another thread again and again, until [`Probes::finish`] (or until dropped: a test that
/// failed midway leaves no probe running into the next test of its site).
struct Probes<T> {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<Vec<(Instant, T)>>>,
}

impl<T> Drop for Probes<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl<T: Send + 'static> Probes<T> {
    fn start(mut probe: impl FnMut() -> T + Send + 'static) -> Probes<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = probe();
                    out.push((Instant::now(), answer));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                out
            })
        };
        Probes {
            stop,
            answered,
            thread: Some(thread),
        }
    }

    /// Polls until the probe has answered `n` more times.
    fn until_more(&self, n: usize) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        poll(Duration::from_secs(10), || {
            Ok((self.answered.load(Ordering::Relaxed) >= target).then_some(()))
        })
        .unwrap_or_else(|e| panic!("the probe answered too slowly: {e:#}"));
    }

    /// Stops the probe; returns each answer with when it came.
    fn finish(mut self) -> Vec<(Instant, T)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// How many answers of each status.
fn by_status<'a>(statuses: impl Iterator<Item = &'a u16>) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for s in statuses {
        *out.entry(*s).or_insert(0) += 1;
    }
    out
}

/// What a logged-in API client and a logged-in browser got on one probe.
#[derive(Debug)]
struct SessionProbe {
    api: u16,
    forwarded_with_token: bool,
    page: u16,
    greeted: bool,
    cleared: bool,
}

fn probe_session(site: &str, cookie: &str) -> SessionProbe {
    let call = api(site, "/x", cookie);
    let page = navigate(site, "/", cookie);
    SessionProbe {
        api: call.status,
        forwarded_with_token: bearer(&call).is_some_and(|b| b.starts_with("Bearer ")),
        page: page.status,
        greeted: page.body.contains("Hello, alice@example.com"),
        cleared: clears_session(&call) || clears_session(&page),
    }
}

#[test]
fn an_image_upgrade_keeps_a_logged_in_browser_logged_in() {
    let _idp = idp_hold::shared();
    let b = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&b);

    // The browser goes on working while the gateway takes the new module: before, during, after. Each
    // probe on new connections, so both workers answer.
    let probes = {
        let cookie = cookie.clone();
        Probes::start(move || probe_session(UPGRADE, &cookie))
    };
    probes.until_more(5);
    let up = upgrade(UPGRADE);
    let ready = until_new_vms_ready(&up);
    probes.until_more(20);
    let answers = probes.finish();

    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, p)| {
            p.api != 200 || !p.forwarded_with_token || p.page != 200 || !p.greeted || p.cleared
        })
        .map(|(t, p)| (t.saturating_duration_since(up.written), p))
        .collect();
    let served_new = answers.iter().filter(|(t, _)| *t > ready).count();
    assert!(
        bad.is_empty(),
        "of {} probes across the upgrade, {} were not served as logged in (times since the new \
         module was written): API statuses {:?}, page statuses {:?}; first {:?}",
        answers.len(),
        bad.len(),
        by_status(bad.iter().map(|(_, p)| &p.api)),
        by_status(bad.iter().map(|(_, p)| &p.page)),
        bad.first()
    );
    assert!(
        served_new >= 20,
        "{served_new} probes after the new VMs were ready"
    );
    eprintln!(
        "upgrade: {} probes of a logged-in session across the upgrade, all 200 ({served_new} after \
         the new VMs were ready; applied {:?} after the new module was written)",
        answers.len(),
        up.applied - up.written
    );
}

#[test]
fn a_login_started_before_an_image_upgrade_completes_on_the_new_vm() {
    let _idp = idp_hold::shared();
    let b = Browser::new();
    // At the IdP's login form when the module changes: the old VM sealed the login's state, nonce and
    // verifier into the login cookie.
    let (form, login_cookie) = at_login_form(&b, UPGRADE_LOGIN);

    let up = upgrade(UPGRADE_LOGIN);
    until_new_vms_ready(&up);

    // Every new request now meets a new VM: the callback completes the login the old one began.
    completes_login(&b, UPGRADE_LOGIN, &form, &login_cookie);
    for _ in 0..6 {
        let r = api(UPGRADE_LOGIN, "/x", &session_cookies(&b));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).unwrap().starts_with("Bearer "));
    }
}

#[test]
fn a_backchannel_logout_stays_in_force_across_an_image_upgrade() {
    let _idp = idp_hold::shared();
    let b = logged_in(UPGRADE_REVOKE, "erin");
    let cookie = session_cookies(&b);
    // Another session of hers, in another browser: not logged out.
    let other = logged_in(UPGRADE_REVOKE, "erin");
    let other_cookie = session_cookies(&other);
    log_out_at_idp(&b, UPGRADE_REVOKE, &cookie);

    // Both cookies, again and again, from before the new module until well after: the new VMs'
    // first requests are among these.
    let probes = {
        let cookie = cookie.clone();
        Probes::start(move || {
            let ended = api(UPGRADE_REVOKE, "/x", &cookie);
            let kept = api(UPGRADE_REVOKE, "/x", &other_cookie);
            (
                (
                    ended.status,
                    bearer(&ended).is_some(),
                    ended.header("retry-after").is_some(),
                ),
                (kept.status, bearer(&kept).is_some()),
            )
        })
    };
    probes.until_more(5);
    let up = upgrade(UPGRADE_REVOKE);
    let ready = until_new_vms_ready(&up);
    probes.until_more(20);
    let answers = probes.finish();

    let since = |t: &Instant| t.saturating_duration_since(up.written);
    // The ended session: never through. A 401 as before, or (while a new VM has no keys yet) a 503
    // with Retry-After, which forwards nothing either.
    let let_in: Vec<_> = answers
        .iter()
        .filter(|(_, ((status, fwd, retry), _))| {
            *fwd || !(*status == 401 || (*status == 503 && *retry))
        })
        .map(|(t, (ended, _))| (since(t), ended))
        .collect();
    assert!(
        let_in.is_empty(),
        "the logged-out session was answered otherwise than 401 (or 503 with Retry-After) {} times \
         of {} across the upgrade (time since the new module was written, (status, forwarded with \
         a token, Retry-After)): {:?}",
        let_in.len(),
        answers.len(),
        &let_in[..let_in.len().min(5)]
    );
    // The other session: served all along.
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, (_, (status, fwd)))| *status != 200 || !*fwd)
        .map(|(t, (_, kept))| (since(t), kept))
        .collect();
    assert!(
        refused.is_empty(),
        "her other session was refused {} times: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let served_new = answers.iter().filter(|(t, _)| *t > ready).count();
    assert!(
        served_new >= 20,
        "{served_new} probes after the new VMs were ready"
    );
    eprintln!(
        "upgrade-revoke: the ended session across the upgrade: {:?} of {} probes",
        by_status(answers.iter().map(|(_, ((s, _, _), _))| s)),
        answers.len()
    );
}

/// What one anonymous request got while the module changed.
#[derive(Debug)]
struct Anonymous {
    at: Instant,
    took: Duration,
    status: u16,
    location: Option<String>,
}

/// `r`, answered after `took`.
fn anonymous(r: &Response, took: Duration) -> Anonymous {
    Anonymous {
        at: Instant::now(),
        took,
        status: r.status,
        location: r.location(),
    }
}

/// The new VMs fetch the IdP's discovery document, then its keys, before they can send anyone to
/// log in; the old VMs had both, but a VM cannot lend another anything but shared data. Meanwhile a
/// new VM holds every anonymous navigation, `/login` and callback that needs them, and carries each
/// on once the keys are in: the user waits about two IdP round trips (measured here with an IdP
/// 300 ms away, every answer held that long) instead of meeting a `503`. Before this hold, about a
/// quarter of these requests got `503` with `Retry-After` (645 to 725 of about 2,700 in three runs).
#[test]
fn an_image_upgrade_holds_visitors_while_the_new_vm_fetches_from_the_idp() {
    let _idp = idp_hold::exclusive();
    until_ready(UPGRADE);
    let issuer = format!("{}/", stack().issuer());
    // A login back from the IdP's form, its callback not yet visited.
    let b = Browser::new();
    let (form, login_cookie) = at_login_form(&b, UPGRADE);
    let callback = log_in_at_idp(&b, UPGRADE, &form, "carol");

    let slow = stack().idp_fault(Mode::Delay(REMOTE_IDP));
    // Two clients hammer `/login` (without Fetch Metadata: straight to the IdP), a third navigates
    // anonymously to a page, all across the upgrade, each request on a new connection.
    let probes: Vec<_> = ["/login", "/login", "/x"]
        .into_iter()
        .map(|path| {
            Probes::start(move || {
                let t = Instant::now();
                let r = if path == "/login" {
                    Browser::new().get(&url(UPGRADE, path)).unwrap()
                } else {
                    navigate(UPGRADE, path, "")
                };
                (path, anonymous(&r, t.elapsed()))
            })
        })
        .collect();
    for p in &probes {
        p.until_more(10);
    }
    let up = upgrade(UPGRADE);
    // The user's callback arrives right after the gateway took the new module.
    let t = Instant::now();
    let first = b.get(&callback).unwrap();
    let first_try = anonymous(&first, t.elapsed());
    let ready = until_new_vms_ready(&up);
    let done = b.follow(first, 10).unwrap();
    for p in &probes {
        p.until_more(20);
    }
    let answers: Vec<(&str, Anonymous)> = probes
        .into_iter()
        .flat_map(Probes::finish)
        .map(|(_, a)| a)
        .collect();
    drop(slow);

    let since = |t: Instant| t.saturating_duration_since(up.written);
    let expected = |path: &str, a: &Anonymous| match a.status {
        302 if path == "/login" => a.location.as_ref().is_some_and(|l| l.starts_with(&issuer)),
        302 => a
            .location
            .as_ref()
            .is_some_and(|l| l.contains("/login?rd=")),
        _ => false,
    };
    let unexpected: Vec<_> = answers
        .iter()
        .filter(|(p, a)| !expected(p, a))
        .map(|(p, a)| (p, a.status, since(a.at), &a.location))
        .collect();
    // Neither `/login` nor a navigation waits on the IdP once a VM has its documents: what took
    // longer than one IdP round trip was held by a new VM.
    let held: Vec<&Anonymous> = answers
        .iter()
        .filter(|(_, a)| a.took >= REMOTE_IDP)
        .map(|(_, a)| a)
        .collect();
    let longest = held.iter().map(|a| a.took).max().unwrap_or_default();
    let before = answers.iter().filter(|(_, a)| a.at < up.written).count();
    let of = |path: &str| {
        by_status(
            answers
                .iter()
                .filter(|(p, _)| *p == path)
                .map(|(_, a)| &a.status),
        )
    };
    eprintln!(
        "upgrade with the IdP {REMOTE_IDP:?} away: {} anonymous requests ({before} before the new \
         module): /login {:?}, navigations {:?}; {} held by a new VM, the longest {longest:?} \
         (new module applied after {:?}, new VMs ready after {:?}); the callback right after: {} \
         in {:?}, then: {:?}",
        answers.len(),
        of("/login"),
        of("/x"),
        held.len(),
        up.applied - up.written,
        ready - up.written,
        first_try.status,
        first_try.took,
        done.chain
    );
    // Nobody is turned away: the login redirect, every time.
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    // The new VMs did start without the documents, and held requests meanwhile, only while they
    // fetched them: about two IdP round trips.
    assert!(
        !held.is_empty(),
        "no request was held: the new VMs never waited"
    );
    assert!(
        held.iter().all(|a| a.at > up.written && a.at <= ready),
        "requests held outside the new VMs' start: {:?}",
        held.iter()
            .map(|a| (since(a.at), a.took))
            .collect::<Vec<_>>()
    );
    assert!(
        longest <= 4 * REMOTE_IDP + Duration::from_millis(800),
        "a request was held {longest:?}"
    );
    assert!(
        answers.iter().filter(|(_, a)| a.at > ready).count() >= 60,
        "too few answers after the new VMs were ready"
    );
    // The callback: handled at once by the old VM, or held by a new one until it has the keys;
    // either way the login completes at the first try, its login cookie spent.
    assert_eq!(first_try.status, 302, "{first_try:?}");
    assert!(
        first_try
            .location
            .as_ref()
            .is_some_and(|l| l.ends_with("/after")),
        "{first_try:?}"
    );
    assert!(b.cookie(HOST, &login_cookie).is_none(), "login cookie kept");
    assert_eq!(done.response.status, 200, "{:?}", done.chain);
    assert!(done.response.url.ends_with("/after"), "{:?}", done.chain);
    assert!(
        done.response.body.contains("Hello, carol@example.com"),
        "{}",
        done.response.body
    );
}

/// A new VM whose first fetch gets no answer holds a visitor no longer than that fetch may take
/// (`callout_timeout`, 4 s here) and a few seconds (the hold's own deadline is `callout_timeout` and
/// 2 s, counted in whole seconds and checked on the 1 s tick), then answers `503` with
/// `Retry-After`: fail closed, and never a request left hanging. It holds at most 128 requests per
/// VM: a crowd beyond that (600 at once, on two workers) is answered `503` at once rather than piling
/// up in the gateway. Once the IdP answers again, the next attempt lets logins through.
#[test]
fn an_image_upgrade_while_the_idp_hangs_holds_logins_no_longer_than_a_fetch_may_take() {
    const CROWD: usize = 600;
    let _idp = idp_hold::exclusive();
    until_ready(UPGRADE);
    let hang = stack().idp_fault(Mode::Hang);
    let up = upgrade(UPGRADE);
    let answers = harness::at_once(CROWD, |_| {
        let t = Instant::now();
        let answer = Browser::new()
            .get(&url(UPGRADE, "/login"))
            .map(|login| {
                (
                    login.status,
                    login.header("retry-after").is_some(),
                    login.location(),
                )
            })
            .map_err(|e| format!("{e:#}"));
        (answer, t.elapsed())
    });
    // What the operator reads (README, Troubleshooting, "The IdP cannot be reached"): a fetch that gets
    // no answer within `callout_timeout` ends with Envoy's own 504 (found in review: the README gave
    // `no answer from the IdP cluster`, which no hanging IdP logs).
    const TIMED_OUT: &str = ") failed: HTTP 504; retrying";
    stack()
        .wait_for_envoy_log(TIMED_OUT, CALLOUT_TIMEOUT)
        .unwrap();
    let readme = fs::read_to_string(harness::workspace_root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("`…{}` (no answer within", &TIMED_OUT[1..])),
        "README's \"The IdP cannot be reached\" does not quote {TIMED_OUT:?}"
    );
    drop(hang);
    let back = Instant::now();
    until_new_vms_ready(&up);
    let held = answers
        .iter()
        .filter(|(_, took)| *took >= Duration::from_secs(2))
        .count();
    let longest = answers.iter().map(|(_, took)| *took).max().unwrap();
    eprintln!(
        "upgrade with the IdP hanging: {CROWD} logins at once, {held} held (the longest \
         {longest:?}), the others answered at once; logins back {:?} after the IdP",
        back.elapsed()
    );
    // Fail closed: each a 503 with Retry-After, none sent to the IdP.
    let other: Vec<_> = answers
        .iter()
        .filter(|(answer, _)| {
            !matches!(answer, Ok((status, retry, location))
                if *status == 503 && *retry && location.is_none())
        })
        .collect();
    assert!(
        other.is_empty(),
        "{} of {CROWD} otherwise, e.g. {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    // Held while the first fetch was under way, never beyond `callout_timeout` and the deadline's
    // slack, and never more than 128 per worker.
    assert!(held > 0, "none held");
    assert!(held <= 2 * 128, "{held} held");
    assert!(
        longest <= CALLOUT_TIMEOUT + Duration::from_secs(4),
        "held {longest:?}"
    );
}

/// A new VM's first fetches are two, one after the other: the discovery document, then the keys, each
/// given `callout_timeout` (4 s here). An IdP that takes 3.4 s over each answers both in time, and the
/// visitors a new VM holds meanwhile go on to log in once the keys are in, about 7 s later. (The hold
/// ended after one `callout_timeout` and 2 s before, the keys still on their way: `503` for those who
/// came first.)
#[test]
fn an_image_upgrade_with_a_slow_idp_holds_logins_through_both_fetches() {
    const SLOW_IDP: Duration = Duration::from_millis(3400);
    let _idp = idp_hold::exclusive();
    until_ready(UPGRADE);
    let issuer = format!("{}/", stack().issuer());
    let slow = stack().idp_fault(Mode::Delay(SLOW_IDP));
    // `/login` (without Fetch Metadata: straight to the IdP) again and again from two clients, each
    // request on a new connection; the old VMs answer at once (they have the documents).
    let probes: Vec<_> = (0..2)
        .map(|_| {
            Probes::start(|| {
                let t = Instant::now();
                let r = Browser::new().get(&url(UPGRADE, "/login")).unwrap();
                anonymous(&r, t.elapsed())
            })
        })
        .collect();
    for p in &probes {
        p.until_more(5);
    }
    let up = upgrade(UPGRADE);
    let ready = until_new_vms_ready(&up);
    for p in &probes {
        p.until_more(5);
    }
    let answers: Vec<Anonymous> = probes
        .into_iter()
        .flat_map(Probes::finish)
        .map(|(_, a)| a)
        .collect();
    drop(slow);
    let held: Vec<&Anonymous> = answers.iter().filter(|a| a.took >= SLOW_IDP).collect();
    let longest = held.iter().map(|a| a.took).max().unwrap_or_default();
    eprintln!(
        "upgrade with the IdP {SLOW_IDP:?} slow: {} logins {:?}, {} held by a new VM, the longest \
         {longest:?} (new VMs ready after {:?})",
        answers.len(),
        by_status(answers.iter().map(|a| &a.status)),
        held.len(),
        ready - up.written
    );
    let turned_away: Vec<_> = answers
        .iter()
        .filter(|a| {
            !(a.status == 302 && a.location.as_ref().is_some_and(|l| l.starts_with(&issuer)))
        })
        .collect();
    assert!(
        turned_away.is_empty(),
        "not sent to the IdP: {turned_away:?}"
    );
    // Held through both fetches (more than one slow answer), and no longer than both may take.
    assert!(
        longest > SLOW_IDP + Duration::from_secs(1),
        "no request waited for both fetches: {held:?}"
    );
    assert!(
        longest <= 2 * CALLOUT_TIMEOUT + Duration::from_secs(3),
        "held {longest:?}"
    );
}

/// The same start with the IdP unreachable at that moment: the old VMs went on sending visitors to
/// log in (they had the documents); the new ones answer `503` with `Retry-After` until the IdP is
/// back and their next attempt (backoff from 1 s) succeeds. Logged-in sessions are not affected.
#[test]
fn an_image_upgrade_while_the_idp_is_down_fails_logins_closed_until_it_is_back() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&alice);
    until_ready(UPGRADE);
    // jwt_authn (after the filter) fetches the IdP's keys on a worker's first request and keeps them
    // for 300 s: let every worker have them before the IdP goes.
    until_every_worker(UPGRADE, "jwt_authn has the keys", || {
        api(UPGRADE, "/x", &cookie).status == 200
    });

    let down = stack().idp_fault(Mode::Refuse);
    let up = upgrade(UPGRADE);
    // The new VMs have tried the IdP on every thread and failed.
    let tried = || {
        let log = stack().envoy_log().unwrap();
        let prefix = format!("{}: ", harness::envoy::ecds_name(UPGRADE));
        log.lines()
            .filter(|l| l.contains(&prefix) && l.contains("fetching the discovery document"))
            .count()
    };
    let tried_before = tried();
    poll(Duration::from_secs(5), || {
        Ok((tried() >= tried_before + THREADS).then_some(()))
    })
    .unwrap();
    for _ in 0..10 {
        let login = Browser::new().get(&url(UPGRADE, "/login")).unwrap();
        assert_eq!(login.status, 503, "{}", login.body);
        assert!(login.header("retry-after").is_some(), "{:?}", login.headers);
        let r = api(UPGRADE, "/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).is_some());
    }
    drop(down);
    let back = Instant::now();
    until_new_vms_ready(&up);
    let (recovered, outage) = (back.elapsed(), up.written.elapsed());
    eprintln!(
        "upgrade with the IdP down: logins refused until {recovered:?} after the IdP was back, \
         {outage:?} after the new module was written"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "logins came back {recovered:?} after the IdP"
    );
}

/// A broken image (here the module cut short, as an interrupted copy might leave it): Envoy refuses
/// the update, and the old module goes on serving, logged-in browsers and logins alike; the next
/// good release is taken.
#[test]
fn a_broken_image_is_refused_and_the_old_module_keeps_serving() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&alice);
    until_ready(UPGRADE);
    let wasm = fs::read(harness::wasm_path().unwrap()).unwrap();
    let broken = stack().dir().join("modules/oidc_filter.broken.wasm");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(&broken, &wasm[..wasm.len() / 2]).unwrap();
    let fresh_before = fresh_starts(UPGRADE);

    let (update, _, _) = swap_module(UPGRADE, &broken);
    assert_eq!(update, Update::Rejected, "envoy took a broken module");
    // The gateway's log says why.
    stack()
        .wait_for_envoy_log(
            &format!(
                "config update rejected: Unable to create Wasm plugin {}",
                harness::envoy::ecds_name(UPGRADE)
            ),
            Duration::from_secs(5),
        )
        .unwrap();
    for _ in 0..10 {
        let r = api(UPGRADE, "/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(bearer(&r).is_some());
        let login = Browser::new().get(&url(UPGRADE, "/login")).unwrap();
        assert_eq!(login.status, 302, "{}", login.body);
    }
    assert_eq!(fresh_starts(UPGRADE), fresh_before, "a VM started anew");

    let up = upgrade(UPGRADE);
    until_new_vms_ready(&up);
    assert_eq!(api(UPGRADE, "/x", &cookie).status, 200);
}

/// Polls until the filter's `sessions_forwarded` has stood still for longer than a tick (the
/// per-request counters reach Envoy on a root context's 1 s tick); returns it.
fn forwarded_settled() -> u64 {
    harness::process::settled(
        Duration::from_secs(10),
        Duration::from_millis(1300),
        || Ok(stat("sessions_forwarded")),
        |n| *n,
    )
    .unwrap()
}

/// A VM hands Envoy its per-request counts on its tick (1 s); what an old VM counted after its last
/// tick is lost if it is let go before its next one. The module does not export `proxy_on_done`, which
/// would let it hand them over then but costs a VM entry on every request (bench/README.md). So across an
/// image upgrade the per-request counters lose at most the old VM's last second, and count every request
/// the new VM serves (README, "7. Change the configuration").
#[test]
fn counters_lose_at_most_the_old_vms_last_second_at_an_image_upgrade() {
    let _idp = idp_hold::exclusive();
    let b = logged_in(UPGRADE, "alice");
    let cookie = session_cookies(&b);
    let before = forwarded_settled();
    // Logged-in requests all along: counted by the old VMs up to the upgrade, then by the new ones.
    let probes = {
        let cookie = cookie.clone();
        Probes::start(move || api(UPGRADE, "/x", &cookie).status)
    };
    probes.until_more(50);
    let up = upgrade(UPGRADE);
    until_new_vms_ready(&up);
    probes.until_more(50);
    let answers = probes.finish();
    assert!(
        answers.iter().all(|(_, s)| *s == 200),
        "{:?}",
        by_status(answers.iter().map(|(_, s)| s))
    );
    let sent = answers.len() as u64;
    let counted = forwarded_settled() - before;
    // What the old VMs may have counted after their last tick: the requests of the second before
    // Envoy applied the new module (and of the moment it took the stats to show it).
    let last_second = answers
        .iter()
        .filter(|(t, _)| {
            (*t <= up.applied && up.applied - *t <= Duration::from_millis(1100))
                || (*t > up.applied && *t - up.applied <= Duration::from_millis(200))
        })
        .count() as u64;
    assert!(
        counted <= sent && counted + last_second >= sent,
        "sessions_forwarded: {sent} requests forwarded across the upgrade, {counted} counted; \
         {last_second} were answered in the old VMs' last second"
    );
}

/// Requests of one session that find it due for renewal at once agree on one refresh through Envoy's
/// shared data, which Envoy keys by `vm_id`, and an image upgrade keeps the `vm_id`: a refresh the old
/// VM sent is adopted by a request the new VM serves, and the session is refreshed once (the IdP
/// rotates this client's refresh tokens: a second use of the old one would end it). The old VM lives
/// while that request does, and is let go after it.
#[test]
fn a_refresh_the_old_vm_began_is_adopted_by_the_new_vm_and_the_old_vm_is_let_go() {
    let _idp = idp_hold::exclusive();
    let alice = logged_in(UPGRADE, "alice");
    let expired = expired_session(&alice);
    let old_bearer = bearer(&api(UPGRADE, "/x", &session_cookies(&alice))).unwrap();
    until_ready(UPGRADE);
    let vms_before = stack().wasm_vm_stats().unwrap().active;
    let refreshes = stat("refreshes");

    // The token endpoint is slow (discovery and keys are not): the old VM's refresh is still at the
    // IdP when the new VMs are ready.
    let slow = stack().idp_fault(Mode::delay_for("/token", Duration::from_millis(2500)));
    let first = refresh_in_flight(UPGRADE, expired.clone());
    let up = upgrade(UPGRADE);
    until_new_vms_ready(&up);
    let vms_during = stack().wasm_vm_stats().unwrap().active;
    // The same expired session on the new VM, while the old VM's refresh is under way.
    let second = {
        let target = url(UPGRADE, "/x");
        let expired = expired.clone();
        thread::spawn(move || {
            let t = Instant::now();
            let r = Browser::new()
                .get_with(
                    &target,
                    &[("cookie", &expired), ("accept", "application/json")],
                )
                .unwrap();
            (r, t.elapsed())
        })
    };
    let (r1, took1) = first.join().unwrap();
    let (r2, took2) = second.join().unwrap();
    drop(slow);
    eprintln!(
        "upgrade during a refresh: the old VM's refresh answered {} after {took1:?}, the new VM's \
         request for the same session {} after {took2:?}; V8 VMs alive: {vms_before} before, \
         {vms_during} during",
        r1.status, r2.status
    );

    assert_eq!(r1.status, 200, "the old VM's refresh: {}", r1.body);
    assert!(took1 < CALLOUT_TIMEOUT, "took {took1:?}");
    let renewed = bearer(&r1).unwrap();
    assert_ne!(renewed, old_bearer, "not refreshed");
    assert!(!session_set_by(&r1).is_empty(), "{:?}", r1.set_cookies());
    assert_eq!(
        r2.status, 200,
        "the same session on the new VM, after {took2:?}: {}",
        r2.body
    );
    assert_eq!(
        bearer(&r2).as_deref(),
        Some(renewed.as_str()),
        "the new VM did not adopt the old VM's refresh"
    );
    assert_eq!(
        stat("refreshes"),
        refreshes + 1,
        "the session was refreshed more than once"
    );
    // The renewed session goes on, with no further refresh.
    let r = api(UPGRADE, "/x", &session_set_by(&r1));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stat("refreshes"), refreshes + 1);

    // The old VM lived while it had a request; now it is gone (no VM kept per upgrade).
    assert!(
        vms_during > vms_before,
        "no old VM alive during its request: {vms_before} VMs before, {vms_during} during"
    );
    poll(Duration::from_secs(10), || {
        Ok((stack().wasm_vm_stats()?.active <= vms_before).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "the old VMs were not let go: {vms_before} VMs before, {} now: {e:#}",
            stack().wasm_vm_stats().unwrap().active
        )
    });
}
