//! The renewal pause across two workers (`workers.rs`, `flow::renewal_claim`), explored over many
//! schedules: two `Filter`s stand for two of Envoy's worker threads, and a slot (bytes and a version that
//! each write moves on) for the shared data the adapter keeps the pause in. Each request and each answer
//! of the IdP is carried out as the adapter does (`claim_renewal`, `reply_step`), at whole seconds of
//! the clock, in an order a seeded generator picks: which worker takes each request, when in the second
//! the schedule starts, and whether an answer comes at once or within the second (so in the claim's
//! second or the next, with another worker's claim between them or not).
//!
//! The sessions forward the access token (`forward_token: access_token`) and the IdP renews them without
//! an ID token: the pause is decided before any ID token is read (`flow::refresh_outcome`), and checking
//! an ES256 signature in a debug build would take more time than the rest of a schedule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other whole-flow tests, which use more of it.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;

use common::*;
use oidc_filter::flow::{self, Pending, RefreshJob, State, Step};
use oidc_filter::session::Session;
use oidc_filter::workers;

/// The schedules' zero: every session's token has expired.
const START: u64 = NOW + 3600 + 1;

fn cfg() -> oidc_filter::config::Config {
    config(serde_json::json!({"forward_token": "access_token"}))
}

/// The shared data the workers keep the pause in: its bytes, and its version (`cas`), moved on by each
/// write (the adapter writes without a version: `share_pause`).
#[derive(Default)]
struct Slot {
    bytes: Option<Vec<u8>>,
    cas: u32,
}

/// A user's browser or script: one session sealed once (`fresh: false`), or sealed anew for each request,
/// each request another session to renew (as the black-box test's second user).
struct Client {
    name: &'static str,
    session: Session,
    jar: Jar,
    fresh: bool,
    /// The gap between an answer and the next request: `lo..hi` ms.
    gap: (u64, u64),
    /// Sends no more requests once renewed (its token then lives on).
    stops: bool,
}

/// One request: at `ms` from the schedule's zero, client `c` on worker `k`; its renewal, if it asks the
/// IdP, answered `delay` ms later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Arrival {
    ms: u64,
    c: usize,
    k: usize,
    delay: u64,
}

/// What happened in a schedule.
#[derive(Default)]
struct Outcome {
    /// Per client, the ms of each renewal held (`503` at once, the IdP not asked).
    held: Vec<Vec<u64>>,
    /// Per client, the ms of each renewal the IdP made.
    renewed: Vec<Vec<u64>>,
    /// Each ask of the IdP: (claim ms, client).
    asked: Vec<(u64, usize)>,
    /// The requests as they came, to replay a schedule found with [`Sim::replay`].
    arrivals: Vec<Arrival>,
    /// What each step did, for the report of a schedule that breaks a property.
    log: Vec<String>,
}

/// Two workers and the slot they share, driven as the adapter drives the core.
struct Sim {
    w: [Filter; 2],
    slot: Slot,
    clients: Vec<Client>,
    /// When in its second the schedule starts (ms).
    phase: u64,
    /// Whether the IdP fails (`500`) client `c`'s renewal asked at `ms`; else it renews it.
    fails: Box<dyn Fn(usize, u64) -> bool>,
    nonce: u64,
    /// Half the IdP's answers come within the second, not at once.
    slow: bool,
    out: Outcome,
}

enum Ev {
    Arrive(usize),
    Answer(Arrival, Box<RefreshJob>),
}

/// The workers: each a `Filter` whose provider is ready, kept from schedule to schedule (the keys' parse
/// is most of a `Filter::ready`), its state otherwise new.
fn workers() -> [Filter; 2] {
    [Filter::ready(cfg()), Filter::ready(cfg())]
}

fn anew(f: &mut Filter) {
    let provider = std::mem::take(&mut f.state.provider);
    f.state = State {
        provider,
        ..State::default()
    };
}

/// A session logged in, its token expired at the schedules' zero.
fn expired_session() -> Session {
    let mut f = Filter::ready(cfg());
    let (jar, _) = log_in(&mut f, Some("rt-1"));
    let mut s = f.open_session(&jar);
    s.token_expires_at = START - 1;
    s
}

/// `s` sealed with `nonce`.
fn sealed(s: &Session, nonce: u64) -> Jar {
    let cfg = cfg();
    let mut n = [0x3c; 24];
    n[..8].copy_from_slice(&nonce.to_le_bytes());
    let sealed = cfg.keys.seal(&cfg.cookie_name, &s.encode(), n);
    Jar(oidc_filter::session::split(&cfg.cookie_name, &sealed).unwrap())
}

impl Sim {
    fn new(
        w: [Filter; 2],
        clients: Vec<Client>,
        phase: u64,
        fails: Box<dyn Fn(usize, u64) -> bool>,
    ) -> Sim {
        let n = clients.len();
        let mut sim = Sim {
            w,
            slot: Slot::default(),
            clients,
            phase,
            fails,
            nonce: 1 << 40,
            slow: false,
            out: Outcome {
                held: vec![Vec::new(); n],
                renewed: vec![Vec::new(); n],
                ..Outcome::default()
            },
        };
        for f in &mut sim.w {
            anew(f);
        }
        sim
    }

    fn now(&self, ms: u64) -> u64 {
        START + (self.phase + ms) / 1000
    }

    fn pause(&self) -> String {
        match self.slot.bytes.as_deref() {
            None => "none".into(),
            Some(b) => match u64::from_le_bytes(b[..8].try_into().unwrap()) {
                0 => "ended".into(),
                u => format!("until s{}", u.saturating_sub(START)),
            },
        }
    }

    fn note(&mut self, ms: u64, k: usize, c: usize, what: &str) {
        let line = format!(
            "{ms:>6} ms s{:<3} w{k} {}: {what}; shared: {}",
            self.now(ms) - START,
            self.clients[c].name,
            self.pause()
        );
        self.out.log.push(line);
    }

    /// A request of client `c` on worker `k` that renews its session, claimed as `claim_renewal` does:
    /// the shared pause taken in, `flow::renewal_claim` (held as `flow::renewal_held` says), and the pause
    /// shared if the claim changed it. The renewal, when it may ask the IdP.
    fn arrive(&mut self, a: Arrival) -> Option<Box<RefreshJob>> {
        self.out.arrivals.push(a);
        let jar = if self.clients[a.c].fresh {
            self.nonce += 1;
            sealed(&self.clients[a.c].session, self.nonce)
        } else {
            Jar(self.clients[a.c].jar.0.clone())
        };
        let now = self.now(a.ms);
        let f = &mut self.w[a.k];
        f.now = now;
        let job = match f.request(&Req::api("/poll").cookies(&jar)) {
            Step::Call(_, p) => match *p {
                Pending::Refresh(job) => job,
                other => panic!("not a renewal: {other:?}"),
            },
            other => panic!("not a renewal: {other:?}"),
        };
        let state = &mut f.state;
        let bytes = self.slot.bytes.clone().unwrap_or_default();
        if self.slot.bytes.is_some() {
            workers::take_pause(state, &bytes, Some(self.slot.cas), now);
        }
        let before = (state.renewals_paused_until, state.renewals_failing);
        let held = flow::renewal_held(state, &job, now);
        let claimed = flow::renewal_claim(&f.cfg, state, job, now);
        assert_eq!(held, claimed.is_err(), "held as the adapter reads it");
        let shared = self.slot.bytes.clone();
        if let Some(b) = workers::pause_to_share(state, before, false, || shared) {
            self.slot.bytes = Some(b.to_vec());
            self.slot.cas += 1;
        }
        match claimed {
            Ok(job) => {
                self.out.asked.push((a.ms, a.c));
                self.note(a.ms, a.k, a.c, "asks the IdP");
                Some(Box::new(job))
            }
            Err(step) => {
                let status = match step {
                    Step::Respond(r) => r.status,
                    other => panic!("an expired session held: {other:?}"),
                };
                assert_eq!(status, 503);
                self.out.held[a.c].push(a.ms);
                self.note(a.ms, a.k, a.c, "held: 503");
                None
            }
        }
    }

    /// The IdP's answer to the renewal `a` asked, `a.delay` ms later, carried out as `reply_step` does:
    /// the pause shared if the answer changed it, its end if the IdP answered and another's is shared.
    fn answer(&mut self, a: Arrival, job: RefreshJob) {
        let ms = a.ms + a.delay;
        let fails = (self.fails)(a.c, a.ms);
        let now = self.now(ms);
        let f = &mut self.w[a.k];
        f.now = now;
        let body = token_body(None, None);
        let reply = if fails {
            (500, &b"{}"[..])
        } else {
            (200, &body[..])
        };
        let before = (f.state.renewals_paused_until, f.state.renewals_failing);
        let step = f.reply(Box::new(Pending::Refresh(job)), Some(reply));
        let answered = std::mem::take(&mut f.state.idp_answered);
        let shared = self.slot.bytes.clone();
        if let Some(b) = workers::pause_to_share(&f.state, before, answered, || shared) {
            self.slot.bytes = Some(b.to_vec());
            self.slot.cas += 1;
        }
        match step {
            Step::Forward(_) => {
                assert!(!fails);
                self.out.renewed[a.c].push(ms);
                self.note(ms, a.k, a.c, "renewed");
            }
            Step::Respond(r) => {
                assert!(fails, "{r:?}");
                assert_eq!(r.status, 503);
                self.note(ms, a.k, a.c, "the IdP fails it: 503");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The clients until `end` ms, each sending its next request a gap after its answer (as the
    /// black-box test's loops do), each request on a worker picked at random, each answer of the IdP at
    /// once or within the second.
    fn run(mut self, rng: &mut Rng, end: u64) -> ([Filter; 2], Outcome) {
        let mut queue: BTreeMap<(u64, u64), Ev> = BTreeMap::new();
        for c in 0..self.clients.len() {
            queue.insert((rng.within(0, 300), rng.next()), Ev::Arrive(c));
        }
        while let Some(((ms, _), ev)) = queue.pop_first() {
            if ms >= end {
                break;
            }
            let c = match ev {
                Ev::Arrive(c) => {
                    let delay = if !self.slow || rng.next().is_multiple_of(2) {
                        rng.within(0, 20)
                    } else {
                        rng.within(0, 1000)
                    };
                    let k = (rng.next() % 2) as usize;
                    let a = Arrival { ms, c, k, delay };
                    if let Some(job) = self.arrive(a) {
                        queue.insert((ms + delay, rng.next()), Ev::Answer(a, job));
                        continue;
                    }
                    c
                }
                Ev::Answer(a, job) => {
                    self.answer(a, *job);
                    if self.clients[a.c].stops && !self.out.renewed[a.c].is_empty() {
                        continue;
                    }
                    a.c
                }
            };
            let (lo, hi) = self.clients[c].gap;
            queue.insert((ms + rng.within(lo, hi), rng.next()), Ev::Arrive(c));
        }
        (self.w, self.out)
    }

    /// The requests `arrivals` (in order of `ms`), each answered `delay` ms later; an answer of the same
    /// ms comes after the requests of that ms.
    fn replay(mut self, arrivals: &[Arrival]) -> ([Filter; 2], Outcome) {
        let mut queue: BTreeMap<(u64, u64), Ev> = BTreeMap::new();
        for (i, a) in arrivals.iter().enumerate() {
            queue.insert((a.ms, i as u64), Ev::Arrive(i));
        }
        let mut seq = arrivals.len() as u64;
        while let Some(((_, _), ev)) = queue.pop_first() {
            match ev {
                Ev::Arrive(i) => {
                    let a = arrivals[i];
                    if let Some(job) = self.arrive(a) {
                        seq += 1;
                        queue.insert((a.ms + a.delay, seq), Ev::Answer(a, job));
                    }
                }
                Ev::Answer(a, job) => self.answer(a, *job),
            }
        }
        (self.w, self.out)
    }
}

fn client(name: &'static str, s: &Session, seal: u64, fresh: bool, gap: (u64, u64)) -> Client {
    Client {
        name,
        session: s.clone(),
        jar: sealed(s, seal),
        fresh,
        gap,
        stops: false,
    }
}

/// The black-box test's two users (`faults.rs`,
/// `one_user_the_idp_fails_to_renew_does_not_hold_the_others_renewals`): X's tab polls every 200 ms on
/// the one session, Y's script every 250 ms, each request on a session sealed anew.
fn x_and_y(s: &Session) -> Vec<Client> {
    vec![
        client("X", s, 1, false, (200, 230)),
        client("Y", s, 2, true, (250, 280)),
    ]
}

/// A schedule's set-up: its clients, what the IdP fails, when the IdP changes its mind (ms), how long
/// it runs (ms).
type Setup = (Vec<Client>, Box<dyn Fn(usize, u64) -> bool>, u64, u64);

/// Runs `seeds` schedules, each set up by `schedule` from its generator; the workers are reused. Each
/// schedule's outcome goes to `check`, with the seed and when the IdP changed its mind.
fn explore(
    seeds: std::ops::Range<u64>,
    salt: u64,
    schedule: impl Fn(&mut Rng) -> Setup,
    mut check: impl FnMut(u64, u64, &Outcome),
) {
    let mut w = Some(workers());
    for seed in seeds {
        let mut rng = Rng(seed ^ salt);
        let (clients, fails, change, end) = schedule(&mut rng);
        let phase = rng.within(0, 1000);
        let mut sim = Sim::new(w.take().unwrap(), clients, phase, fails);
        // Half the schedules: half the IdP's answers within the second rather than at once.
        sim.slow = seed % 2 == 1;
        let (back, out) = sim.run(&mut rng, end);
        w = Some(back);
        check(seed, change, &out);
    }
}

/// A renewal that met an outage pauses the site's renewals on every worker (the shared pause), and a
/// probe going out holds the other workers' renewals too: through an outage of the IdP, with four
/// sessions polling and a fifth user whose every request is another session, spread at random over both
/// workers, the IdP is asked once per pause across both workers. Once at the start, by each session
/// whose request came before the first answer (nothing tells yet that the IdP is down); after that the
/// asks are at least 4 s apart: a pause is 5 whole seconds of the clock, so at least 4 s. This is the
/// bound `renewal.rs` `in_an_outage_the_idp_is_asked_once_per_pause_however_many_sessions_poll` holds
/// on one worker, kept by two workers together. And once the IdP answers again, each session renews
/// within 12 s: the probe after the pause, whose answer ends the pause on both workers, then each
/// session's own wait from its last failure (10 s at most, while another waits to probe), a second of
/// rounding and the gap to the session's next request. (Over the 40 schedules: asks at least 4.7 s
/// apart after the first second, up to five in it, and every session renewed within 6.5 s.)
#[test]
fn in_an_outage_the_workers_ask_the_idp_once_per_pause_and_renew_once_it_answers() {
    let s = expired_session();
    explore(
        0..40,
        0x5eed,
        |rng| {
            let mut clients: Vec<Client> = ["S0", "S1", "S2", "S3"]
                .into_iter()
                .zip(10..)
                .map(|(name, seal)| {
                    let lo = rng.within(100, 500);
                    let mut c = client(name, &s, seal, false, (lo, lo + 200));
                    c.stops = true;
                    c
                })
                .collect();
            clients.push(client("Y", &s, 20, true, (250, 280)));
            let back = rng.within(15_000, 35_000);
            (
                clients,
                Box::new(move |_, ms| ms < back),
                back,
                back + 20_000,
            )
        },
        |seed, back, out| {
            let log = || out.log.join("\n");
            let first = out.asked[0].0;
            let outage: Vec<u64> = out
                .asked
                .iter()
                .map(|&(ms, _)| ms)
                .filter(|&ms| ms >= first + 1000 && ms < back)
                .collect();
            for two in outage.windows(2) {
                assert!(
                    two[1] - two[0] >= 4000,
                    "seed {seed}: asked at {} ms and {} ms\n{}",
                    two[0],
                    two[1],
                    log()
                );
            }
            for (c, renewed) in out.renewed.iter().enumerate().take(4) {
                let at = renewed.first().copied().unwrap_or(u64::MAX);
                assert!(
                    at <= back + 12_000,
                    "seed {seed}: S{c} renewed at {at} ms, the IdP back at {back} ms\n{}",
                    log()
                );
            }
        },
    );
}

/// A session the IdP fails alone is held only for its own wait: once the IdP renews it again, it
/// renews within 11 s, its own wait after its last failure (10 s at most, while another session waits
/// to probe) and a second of rounding; never held for good by a pause it keeps making itself or by the
/// others'. X's tab and Y's script as the black-box test has them, the IdP failing X until some time
/// between 8 s and 30 s. (Over the 60 schedules: X renewed within 5 s.)
#[test]
fn a_session_the_idp_stops_failing_renews_within_its_own_wait() {
    let s = expired_session();
    explore(
        0..40,
        0xf00d,
        |rng| {
            let mut clients = x_and_y(&s);
            clients[0].stops = true;
            let fixed = rng.within(8_000, 30_000);
            let fails = Box::new(move |c, ms| c == 0 && ms < fixed);
            (clients, fails, fixed, fixed + 30_000)
        },
        |seed, fixed, out| {
            let at = out.renewed[0].first().copied().unwrap_or(u64::MAX);
            assert!(
                at <= fixed + 11_000,
                "seed {seed}: X renewed at {at} ms, the IdP fixed at {fixed} ms\n{}",
                out.log.join("\n")
            );
        },
    );
}

/// The black-box test's property, over 300 schedules of its two users (X's renewals failed by the IdP
/// alone, Y renewing a new session with each request): from 13 s on, every renewal of Y's asks the IdP
/// and is renewed. Each worker pauses for X's first failure there (5 s each, one after the other at most,
/// and whole seconds of the clock: the second pause is over by 11 s, and Y's next request within the
/// 13 s).
///
/// Found failing by this test, before each worker took the session whose failure made a shared pause for
/// one that met the outage there too (`State::record_outage`): in about one schedule in eight (37 of
/// 300, some with Y held to the end, 20 s), in the two ways of the two tests below. Since, Y was held at
/// most until 7.2 s in the 300.
#[test]
fn one_user_the_idp_fails_alone_leaves_the_others_renewing_after_each_workers_first_pause() {
    let s = expired_session();
    let mut broken = Vec::new();
    explore(
        0..300,
        0,
        |_| (x_and_y(&s), Box::new(|c, _| c == 0), 0, 20_000),
        |seed, _, out| {
            if let Some(ms) = out.held[1].iter().find(|&&ms| ms >= 13_000) {
                let log: Vec<&String> = out.log.iter().filter(|l| !l.contains("Y: held")).collect();
                broken.push(format!(
                    "seed {seed}: Y held at {ms} ms; all but Y's 503s:\n{log:#?}"
                ));
            }
        },
    );
    assert!(
        broken.is_empty(),
        "{} of 300 schedules; the first:\n{}",
        broken.len(),
        broken[0]
    );
}

/// At `ms`, client `c` (0: X, 1: Y) on worker `k`, its renewal (if asked) answered 5 ms later.
fn at(ms: u64, c: usize, k: usize) -> Arrival {
    Arrival { ms, c, k, delay: 5 }
}

/// Y's requests every 250 ms from `from` until `to` ms, on the workers in turn (`on`: all on that one).
fn y_polls(from: u64, to: u64, on: Option<usize>) -> Vec<Arrival> {
    (from..to)
        .step_by(250)
        .map(|ms| at(ms, 1, on.unwrap_or((ms / 250 % 2) as usize)))
        .collect()
}

fn replayed(mut arrivals: Vec<Arrival>) -> Outcome {
    arrivals.sort_by_key(|a| a.ms);
    let s = expired_session();
    let sim = Sim::new(workers(), x_and_y(&s), 0, Box::new(|c, _| c == 0));
    sim.replay(&arrivals).1
}

/// The first way, a schedule the exploration above found, made minimal (every other request of X's
/// taken out; Y asks every 250 ms throughout). No renewal comes in between, so nothing tells either
/// worker that X's failures are its own:
/// - 0.1 s, worker 0: X's renewal fails: worker 0 pauses until 5 s and shares it; Y waits, on both.
/// - 5.05 s, worker 1: X's request comes first in the second the pause ends. Worker 1 has no record of
///   X's failure (they are each worker's), so X is no session that met the outage there: it probes, fails,
///   and its first failure there pauses until 10 s, shared.
/// - 10.05 s, worker 0: X's request comes first again. Its own wait there (10 s, as Y waited) counts
///   from its failure at 0 s, so it ends just as worker 1's pause does: X probes, fails, and as the
///   site's renewals were failing (worker 1's pause, taken in) that pauses everybody a third time.
///   Y gets `503` until 15 s. The same again at 15 s on worker 1 (X's failure there at 5 s), and so
///   on, while X's request comes first at each pause's end.
///
/// Fails without `State::record_outage`: worker 1 takes in X's failure on worker 0 with its pause,
/// and X waits its own wait there from it, so Y probes at 5 s.
#[test]
fn a_session_failing_alone_on_each_worker_in_turn_does_not_take_the_probe_from_the_others() {
    let mut arrivals = vec![at(100, 0, 0), at(5_050, 0, 1), at(10_050, 0, 0)];
    arrivals.extend(y_polls(360, 14_000, None));
    let out = replayed(arrivals);
    let late: Vec<&u64> = out.held[1].iter().filter(|&&ms| ms >= 10_000).collect();
    assert!(
        late.is_empty(),
        "Y held at {late:?} ms\n{}",
        out.log.join("\n")
    );
}

/// The second way: an answer to another renewal came, but one worker never read it. The end of the
/// pause worker 1 shared when the IdP renewed Y's session (5.02 s) was written over, 30 ms later, by
/// the pause of X's first failure there, before worker 0 took it in (no request there between): worker 0
/// never learns that the IdP answered since X's failure there, takes X's failures for the site's, and
/// X's renewal there probes when worker 1's pause ends (10.05 s): a third pause.
/// (Fails without `State::record_outage`: worker 0 takes in X's failure on worker 1 with its pause, and
/// X waits its own wait there from it, so Y probes.)
#[test]
fn an_answer_written_over_before_the_other_worker_reads_it_still_makes_a_sessions_failures_its_own()
{
    let mut arrivals = vec![
        at(100, 0, 0),
        at(5_020, 1, 1),
        at(5_050, 0, 1),
        at(10_050, 0, 0),
    ];
    arrivals.extend(y_polls(310, 4_900, None));
    arrivals.extend(y_polls(5_310, 10_000, Some(0)));
    arrivals.extend(y_polls(10_310, 14_000, None));
    let out = replayed(arrivals);
    assert!(out.renewed[1].first().is_some_and(|&ms| ms < 5_100));
    let late: Vec<&u64> = out.held[1].iter().filter(|&&ms| ms >= 10_000).collect();
    assert!(
        late.is_empty(),
        "Y held at {late:?} ms\n{}",
        out.log.join("\n")
    );
}
