//! The renewal table the workers share (`renewal.rs`, the adapter's `claim_renewal`, `end_renewal`,
//! `resume_parked`, `give_up` and `update_renewals`), explored over many schedules: two `Filter`s stand
//! for two of Envoy's worker threads, and slots (bytes and a version, `cas`, that each write moves on)
//! for the keys of Envoy's shared data the adapter keeps the renewal buckets and the renewal pause under.
//! Each step is carried out as the adapter does it:
//! - a request whose session is due: the core's decision (`flow::on_request`), then `claim_renewal`: the
//!   shared pause taken in, the session's bucket read, changed and written with the version read (a
//!   claim, or nothing: a claim or a renewal found), read again when another worker wrote in between (8
//!   times at most, `update_renewals`); then the request asks the IdP, adopts the renewal found (and
//!   `Table::taken`, a second read and write), goes up with its token, or is parked. The read and the
//!   write are two steps of the schedule, 0 to 2 ms apart, and the other worker's steps (its own writes
//!   among them) may come between them; the worker itself takes nothing else meanwhile (one thread);
//! - the IdP's answer (`reply_step`, then `end_renewal`: the renewal published, or the claim let go, by
//!   the same read and write, before the request's answer goes out); an answer to a request that stopped
//!   waiting is taken in as `on_orphaned_call_response` does, and published for the session's next
//!   request (`undelivered`);
//! - each worker's tick (1 s, each its own phase; 100 ms while requests are parked, as `pace` and the
//!   parking's `set_tick_period` make it): the requests that have waited `callout_timeout` for their
//!   renewal stop waiting (`give_up`), then the parked requests whose renewal ended are resumed
//!   (`resume_parked`: adopted, or failed once the claim is gone or their wait is over).
//!
//! The IdP rotates refresh tokens as oidc-provider does: a refresh token used a second time is refused
//! (`invalid_grant`) and the whole grant revoked, its successors refused too. It answers within 0 to
//! 1.5 s, one renewal in eight after `callout_timeout` (2 s here) but within the call's own timeout
//! (twice that: `flow::with_session`); it handles each refresh when its answer leaves (so the access
//! token's life counts from the same second as the filter's). Its access tokens are opaque and short
//! (4 to 12 s, so a schedule renews each session many times over), and it sends no ID token
//! (`forward_token: access_token`): checking an ES256 signature in a debug build would take more time
//! than the rest of a schedule, and nothing here depends on it.
//!
//! Not modelled: requests whose client goes away (`Drop` lets their claim go; a renewal lost that way
//! ends no session, its refresh token unspent), more than 512 parked requests (`MAX_PARKED`: 503), and
//! the IdP's keys (no ID token). `update_renewals` giving up after 8 lost writes is modelled, and never
//! happened.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other whole-flow tests, which use more of it.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use oidc_filter::config::Config;
use oidc_filter::flow::{self, Callout, Pending, RefreshJob, State, Step};
use oidc_filter::renewal::{self, Renewal, Table};
use oidc_filter::workers;

/// The schedules' zero: 300 s after the logins.
const START: u64 = NOW + 300;
/// `callout_timeout` (ms).
const TIMEOUT: u64 = 2_000;
/// The adapter's ticks (ms): `TICK`, and `FAST_TICK` while requests are parked.
const TICK: u64 = 1_000;
const FAST_TICK: u64 = 100;
/// `update_renewals`'s tries.
const TRIES: u32 = 8;
/// Parked requests a tick resumes at most (`adapter::FINISH_PER_CALL`).
const FINISH_PER_CALL: usize = 32;
/// The users send their bursts until then (ms).
const BURSTS: u64 = 20_000;
/// The users come back then (ms): every claim and every grace period has lapsed.
const LATER: u64 = BURSTS + 60_000;
/// And again, their tokens long expired (ms).
const MUCH_LATER: u64 = BURSTS + 200_000;
/// What the 503 of a request that adopts a renewal whose token has expired says (`flow::replaced`).
const NEW_COOKIE: &str = "the session has a new cookie, not yet sent by the browser";

/// The schedules explored: 300, or `RENEWAL_SCHEDULES` to explore more.
fn seeds() -> std::ops::Range<u64> {
    let n = std::env::var("RENEWAL_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok());
    let from = std::env::var("RENEWAL_FROM")
        .ok()
        .and_then(|n| n.parse().ok());
    from.unwrap_or(0)..n.unwrap_or(300)
}

fn cfg() -> Config {
    config(serde_json::json!({"forward_token": "access_token", "callout_timeout": "2s"}))
}

/// An IdP that rotates refresh tokens (oidc-provider's `rotateRefreshToken`, and its reuse detection).
#[derive(Default)]
struct Idp {
    /// Each refresh token issued: its user, and whether it was used.
    refresh: HashMap<String, (usize, bool)>,
    /// Per user: the grant revoked (a refresh token used twice).
    revoked: Vec<bool>,
    /// Each access token issued: when it expires.
    access: HashMap<String, u64>,
    issued: u64,
    /// Refresh tokens it saw a second time: (ms, token).
    reused: Vec<(u64, String)>,
    /// The access tokens' life (s).
    life: u64,
    renewed: u32,
}

impl Idp {
    fn token(&mut self, rt: &str, now: u64, ms: u64) -> (u16, Vec<u8>) {
        let refused = (400, br#"{"error":"invalid_grant"}"#.to_vec());
        let Some(&(u, used)) = self.refresh.get(rt) else {
            return refused;
        };
        if used {
            self.reused.push((ms, rt.to_string()));
            self.revoked[u] = true;
        }
        if self.revoked[u] {
            return refused;
        }
        self.refresh.get_mut(rt).unwrap().1 = true;
        self.issued += 1;
        self.renewed += 1;
        let at = format!("at-{u}-{}", self.issued);
        let next = format!("rt-{u}-{}", self.issued);
        self.access.insert(at.clone(), now + self.life);
        self.refresh.insert(next.clone(), (u, false));
        let body = serde_json::json!({
            "access_token": at,
            "token_type": "Bearer",
            "expires_in": self.life,
            "refresh_token": next,
        });
        (200, body.to_string().into_bytes())
    }
}

/// The logins' access tokens' lives (s): at the schedules' zero, expired 10 s ago, or valid 2 s and
/// 5 s more (first seen then, opaque: due from 1 s and 2 s on, half of what is left).
const LIVES: [u64; 3] = [290, 302, 305];

/// User `u` logged in at `NOW` with an access token for `life` s and refresh token `rt-u-0`.
fn log_in_user(f: &mut Filter, u: usize, life: u64) -> Jar {
    let login = start_login(f, "?rd=/app");
    let (_, pending) = call(f.request(&login.callback("code-1", &Jar::default())));
    let body = serde_json::json!({
        "access_token": format!("at-{u}-0"),
        "token_type": "Bearer",
        "expires_in": life,
        "refresh_token": format!("rt-{u}-0"),
        "id_token": mint(&claims(Some(&login.nonce))),
    })
    .to_string();
    let r = respond(f.reply(pending, Some((200, body.as_bytes()))));
    let mut jar = Jar::default();
    jar.apply(set_cookies(&r));
    jar
}

/// One key of Envoy's shared data: its bytes, and its version, moved on by each write.
#[derive(Default)]
struct Slot {
    bytes: Option<Vec<u8>>,
    cas: u32,
}

/// A request: user `u`'s, on worker `k`, with the cookies the browser had when it sent it.
struct Request {
    u: usize,
    k: usize,
    jar: Jar,
    nav: bool,
    sent: u64,
    arrived: u64,
    /// When it was answered, and how.
    answered: Option<(u64, String)>,
    parked: bool,
    /// Its cookie is older than the browser's when it arrived (sent before an answer brought a new one).
    old: bool,
}

/// A renewal this request claimed (the adapter's `Claim`).
struct Claim {
    key: String,
    sealed: String,
    until: u64,
    before: Option<Vec<String>>,
}

/// A request's call to the token endpoint, under way.
struct CallState {
    pending: Option<Box<Pending>>,
    rt: String,
    claim: Option<Claim>,
    gives_up_at: Option<u64>,
    gives_up_at_first: u64,
    given_up: bool,
}

struct Parked {
    r: usize,
    key: String,
    job: RefreshJob,
    until: u64,
}

/// A read, change and write of a bucket (`update_renewals`), and what the adapter does with its outcome.
enum Op {
    Claim {
        r: usize,
        job: RefreshJob,
        call: Callout,
        now: u64,
        held: bool,
        paused: bool,
        before: (u64, bool),
        until: u64,
        claim_until: u64,
    },
    Taken {
        r: usize,
        job: RefreshJob,
        lines: Vec<String>,
        now: u64,
        before: (u64, bool),
    },
    End {
        r: usize,
        renewed: Option<Vec<String>>,
        until: u64,
        undelivered: bool,
        now: u64,
        step: Option<Step>,
    },
}

impl Op {
    fn now(&self) -> u64 {
        match self {
            Op::Claim { now, .. } | Op::Taken { now, .. } | Op::End { now, .. } => *now,
        }
    }
}

struct Cas {
    op: Op,
    key: String,
    tries: u32,
    write: Option<(Vec<u8>, u32)>,
}

/// What `claim_renewal` ends in.
enum Claimed {
    Answer(Step),
    Park(RefreshJob, String, u64),
    Ask(RefreshJob, Callout, Option<Claim>),
}

enum Ev {
    /// User `u` sends a request to worker `k`, arriving `flight` ms later.
    Send {
        u: usize,
        k: usize,
        nav: bool,
        flight: u64,
    },
    Arrive(usize),
    Answer(usize),
    Write(usize),
    Tick(usize, u64),
}

struct Worker {
    f: Filter,
    parked: Vec<Parked>,
    op: Option<Cas>,
    busy: bool,
    backlog: Vec<(u64, Ev)>,
    tick_gen: u64,
    /// When a parking request started the tick's timer again (ms).
    rearmed: Vec<u64>,
}

/// What a schedule did.
#[derive(Default)]
struct Outcome {
    /// Requests whose session was cleared, sent to log in, or refused.
    logged_out: Vec<String>,
    /// Requests forwarded with a token the IdP did not issue or that had expired.
    bad_token: Vec<String>,
    /// The longest wait of a request that was not parked, and of a parked one (ms).
    wait: u64,
    /// Requests that stopped waiting later than `callout_timeout` and a tick after they asked: their
    /// wait, and whether a parking request had started the tick's timer again meanwhile.
    late: Vec<(usize, u64, bool)>,
    parked_wait: u64,
    /// Writes of a bucket lost to another worker's write, and of those, claims that then found the
    /// other worker's claim.
    lost: u32,
    lost_claims: u32,
    gave_up_updates: u32,
    parked: u32,
    /// Adopted from the table: at once (another worker's renewal, found by the claim), and parked.
    adopted: u32,
    adopted_parked: u32,
    /// Requests that stopped waiting, and renewals published for the session's next request.
    given_up: u32,
    undelivered: u32,
    /// Requests with an old cookie, and of those forwarded.
    old: u32,
    old_forwarded: u32,
    /// 503s, by what they say.
    unavailable: BTreeMap<String, u32>,
    log: Vec<String>,
}

struct Sim {
    w: [Worker; 2],
    /// The renewal buckets, as `on_configure` creates them, and the pause.
    buckets: HashMap<String, Slot>,
    pause: Slot,
    idp: Idp,
    jars: Vec<Jar>,
    reqs: Vec<Request>,
    calls: BTreeMap<usize, CallState>,
    queue: BTreeMap<(u64, u64), Ev>,
    phase: u64,
    /// The IdP's answer times (ms) for the requests a replay names; the others' are drawn.
    delays: HashMap<usize, u64>,
    out: Outcome,
}

fn anew(f: &mut Filter) {
    let provider = std::mem::take(&mut f.state.provider);
    f.state = State {
        provider,
        ..State::default()
    };
}

fn bearer(fwd: &flow::Forward) -> String {
    fwd.authorization.as_ref().unwrap().expose().to_string()
}

impl Sim {
    fn now(&self, ms: u64) -> u64 {
        START + (self.phase + ms) / 1000
    }

    fn push(&mut self, ms: u64, ev: Ev, rng: &mut Rng) {
        self.queue.insert((ms, rng.next()), ev);
    }

    fn note(&mut self, ms: u64, k: usize, what: String) {
        let line = format!("{ms:>7} ms s{:<3} w{k} {what}", self.now(ms) - START);
        self.out.log.push(line);
    }

    fn bucket(&mut self, key: &str) -> &mut Slot {
        let name = format!("bucket-{}", renewal::bucket(key));
        self.buckets.entry(name).or_insert_with(|| Slot {
            bytes: Some(Table::default().encode()),
            cas: 1,
        })
    }

    /// `share_pause`.
    fn share_pause(&mut self, k: usize, before: (u64, bool), answered: bool) {
        let shared = self.pause.bytes.clone();
        if let Some(b) = workers::pause_to_share(&self.w[k].f.state, before, answered, || shared) {
            self.pause.bytes = Some(b.to_vec());
            self.pause.cas += 1;
        }
    }

    fn step(&mut self, ms: u64, ev: Ev, rng: &mut Rng) {
        let k = match &ev {
            Ev::Send { .. } => None,
            Ev::Arrive(r) | Ev::Answer(r) => Some(self.reqs[*r].k),
            Ev::Write(k) | Ev::Tick(k, _) => Some(*k),
        };
        if let Some(k) = k {
            if self.w[k].busy && !matches!(ev, Ev::Write(_)) {
                self.w[k].backlog.push((ms, ev));
                return;
            }
            // A write goes on with the callback's clock, read once when it began.
            if !matches!(ev, Ev::Write(_)) {
                self.w[k].f.now = self.now(ms);
            }
        }
        match ev {
            Ev::Send { u, k, nav, flight } => {
                let r = self.reqs.len();
                self.reqs.push(Request {
                    u,
                    k,
                    jar: self.jars[u].clone(),
                    nav,
                    sent: ms,
                    arrived: ms + flight,
                    answered: None,
                    parked: false,
                    old: false,
                });
                self.push(ms + flight, Ev::Arrive(r), rng);
            }
            Ev::Arrive(r) => self.arrive(ms, r, rng),
            Ev::Answer(r) => self.answer(ms, r, rng),
            Ev::Write(k) => self.write(k, ms, rng),
            Ev::Tick(k, g) if g == self.w[k].tick_gen => self.tick(k, ms, rng),
            Ev::Tick(..) => {}
        }
    }

    fn arrive(&mut self, ms: u64, r: usize, rng: &mut Rng) {
        let (u, k, nav) = (self.reqs[r].u, self.reqs[r].k, self.reqs[r].nav);
        let name = self.w[k].f.cfg.cookie_name.clone();
        let old = self.reqs[r].jar.get(&name) != self.jars[u].get(&name);
        self.reqs[r].old = old;
        self.out.old += u32::from(old);
        let req = if nav {
            Req::browser("/app")
        } else {
            Req::api("/api/x")
        }
        .cookies(&self.reqs[r].jar);
        let step = self.w[k].f.request(&req);
        match step {
            Step::Call(call, p) => match *p {
                Pending::Refresh(job) => self.claim(k, ms, r, job, call, rng),
                other => panic!("not a renewal: {other:?}"),
            },
            step => self.deliver(ms, r, step, rng),
        }
    }

    /// `claim_renewal`, up to its bucket's read.
    fn claim(
        &mut self,
        k: usize,
        ms: u64,
        r: usize,
        job: RefreshJob,
        call: Callout,
        rng: &mut Rng,
    ) {
        let now = self.now(ms);
        let key = renewal::key(job.sealed());
        let secs = TIMEOUT / 1000;
        let until = now + 2 * secs + 2;
        let claim_until = until + secs;
        let state = &mut self.w[k].f.state;
        if let Some(b) = &self.pause.bytes {
            workers::take_pause(state, b, Some(self.pause.cas), now);
        }
        let before = (state.renewals_paused_until, state.renewals_failing);
        let paused = state.renewals_paused(now);
        let held = flow::renewal_held(state, &job, now);
        self.w[k].busy = true;
        let op = Op::Claim {
            r,
            job,
            call,
            now,
            held,
            paused,
            before,
            until,
            claim_until,
        };
        self.read(
            k,
            ms,
            Cas {
                op,
                key,
                tries: 0,
                write: None,
            },
            rng,
        );
    }

    /// `update_renewals`'s read, and its change: done when nothing is to be written, else the write
    /// comes as a step of its own.
    fn read(&mut self, k: usize, ms: u64, mut cas: Cas, rng: &mut Rng) {
        let now = cas.op.now();
        let lifetime = self.w[k].f.cfg.session_lifetime;
        let slot = self.bucket(&cas.key);
        let mut t = Table::for_update(slot.bytes.as_deref()).unwrap();
        let read = slot.cas;
        t.prune(now);
        let key = cas.key.clone();
        let found = match &cas.op {
            Op::Claim {
                held, claim_until, ..
            } => match t.get(&key, now) {
                Renewal::Free if *held => Some(Renewal::Free),
                Renewal::Free => {
                    t.claim(&key, *claim_until);
                    None
                }
                other => Some(other),
            },
            Op::Taken { .. } => (!t.taken(&key, now)).then_some(Renewal::Free),
            Op::End {
                renewed,
                until,
                undelivered,
                ..
            } => {
                match renewed {
                    Some(lines) => {
                        t.complete(&key, lines.clone(), now, undelivered.then_some(lifetime))
                    }
                    None => t.release(&key, *until),
                }
                None
            }
        };
        if let Some(found) = found {
            if cas.tries > 0 && matches!(cas.op, Op::Claim { .. }) && found == Renewal::Claimed {
                self.out.lost_claims += 1;
            }
            return self.updated(k, ms, cas, Ok(Some(found)), rng);
        }
        cas.write = Some((t.encode(), read));
        self.w[k].op = Some(cas);
        let at = ms + rng.within(0, 3);
        self.push(at, Ev::Write(k), rng);
    }

    /// `update_renewals`'s write, with the version read; or read again.
    fn write(&mut self, k: usize, ms: u64, rng: &mut Rng) {
        let mut cas = self.w[k].op.take().unwrap();
        let (bytes, read) = cas.write.take().unwrap();
        let slot = self.bucket(&cas.key);
        if slot.cas == read {
            slot.bytes = Some(bytes);
            slot.cas += 1;
            return self.updated(k, ms, cas, Ok(None), rng);
        }
        self.out.lost += 1;
        cas.tries += 1;
        if cas.tries == TRIES {
            self.out.gave_up_updates += 1;
            return self.updated(k, ms, cas, Err(()), rng);
        }
        self.read(k, ms, cas, rng);
    }

    /// What the adapter does with an update's outcome.
    fn updated(
        &mut self,
        k: usize,
        ms: u64,
        cas: Cas,
        found: Result<Option<Renewal>, ()>,
        rng: &mut Rng,
    ) {
        let key = cas.key;
        let f = &mut self.w[k].f;
        match cas.op {
            Op::Claim {
                r,
                job,
                call,
                now,
                paused,
                before,
                until,
                ..
            } => {
                let (cfg, state) = (&f.cfg, &mut f.state);
                let ask = |job, claim| Claimed::Ask(job, call, claim);
                let claimed = match found {
                    Ok(Some(Renewal::Done(lines))) => {
                        let op = Op::Taken {
                            r,
                            job,
                            lines,
                            now,
                            before,
                        };
                        let cas = Cas {
                            op,
                            key,
                            tries: 0,
                            write: None,
                        };
                        return self.read(k, ms, cas, rng);
                    }
                    Ok(Some(Renewal::Claimed)) if paused => {
                        Claimed::Answer(flow::renewal_paused(cfg, state, job, now))
                    }
                    Ok(Some(Renewal::Claimed)) => match flow::renewal_busy(cfg, job, now) {
                        Ok(step) => Claimed::Answer(step),
                        Err(job) => Claimed::Park(job, key, until),
                    },
                    Ok(None) => match flow::renewal_claim(cfg, state, job, now) {
                        Ok(job) => {
                            let claim = Claim {
                                key,
                                sealed: job.sealed().to_string(),
                                until: until + TIMEOUT / 1000,
                                before: flow::renewed_cookies(state, job.sealed()),
                            };
                            ask(job, Some(claim))
                        }
                        Err(step) => Claimed::Answer(step),
                    },
                    // Free while held, or the table unusable: no claim of ours.
                    Ok(Some(Renewal::Free)) | Err(()) => {
                        match flow::renewal_claim(cfg, state, job, now) {
                            Ok(job) => ask(job, None),
                            Err(step) => Claimed::Answer(step),
                        }
                    }
                };
                self.claimed(k, ms, r, before, claimed, rng);
            }
            Op::Taken {
                r,
                job,
                lines,
                now,
                before,
            } => {
                let step = flow::adopt_renewal(&f.cfg, &mut f.state, job, &lines, now);
                self.out.adopted += 1;
                self.claimed(k, ms, r, before, Claimed::Answer(step), rng);
            }
            Op::End { r, step, .. } => {
                if let Some(step) = step {
                    self.deliver(ms, r, step, rng);
                }
                self.idle(k, ms, rng);
            }
        }
    }

    /// The end of `claim_renewal`: the pause shared if a probe goes out, and the request answered, parked
    /// or sent to the IdP.
    fn claimed(
        &mut self,
        k: usize,
        ms: u64,
        r: usize,
        before: (u64, bool),
        claimed: Claimed,
        rng: &mut Rng,
    ) {
        self.share_pause(k, before, false);
        match claimed {
            Claimed::Answer(step) => self.deliver(ms, r, step, rng),
            Claimed::Park(job, key, until) => {
                self.reqs[r].parked = true;
                self.out.parked += 1;
                // The first to park sets the fast tick (`set_tick_period(FAST_TICK)`: the timer starts
                // again, 100 ms from then); the others find it set.
                if self.w[k].parked.is_empty() {
                    self.w[k].tick_gen += 1;
                    self.w[k].rearmed.push(ms);
                    let g = self.w[k].tick_gen;
                    self.push(ms + FAST_TICK, Ev::Tick(k, g), rng);
                }
                self.w[k].parked.push(Parked { r, key, job, until });
                let u = self.reqs[r].u;
                self.note(ms, k, format!("u{u} r{r} parked"));
            }
            Claimed::Ask(job, call, claim) => {
                let body = call.body.as_deref().unwrap();
                let rt = form(body)["refresh_token"].clone();
                // (Half the call's timeout, `call_out`.)
                let gives_up_at = ms + call.timeout.as_secs() * 500;
                assert_eq!(gives_up_at, ms + TIMEOUT);
                let u = self.reqs[r].u;
                let claimed = if claim.is_some() {
                    "claims"
                } else {
                    "no claim"
                };
                self.note(ms, k, format!("u{u} r{r} {claimed}, asks with {rt}"));
                self.calls.insert(
                    r,
                    CallState {
                        pending: Some(Box::new(Pending::Refresh(job))),
                        rt,
                        claim,
                        gives_up_at: Some(gives_up_at),
                        gives_up_at_first: gives_up_at,
                        given_up: false,
                    },
                );
                // (Promptly when the users come back: what they find is the cookie's doing alone.)
                let delay = if let Some(&d) = self.delays.get(&r) {
                    d
                } else if ms < BURSTS + 5_000 && rng.one_in(8) {
                    rng.within(TIMEOUT, 2 * TIMEOUT - 100)
                } else {
                    rng.within(0, 1_500)
                };
                self.push(ms + delay, Ev::Answer(r), rng);
            }
        }
        self.idle(k, ms, rng);
    }

    /// The worker's callback is over: what came meanwhile is taken in order.
    fn idle(&mut self, k: usize, _ms: u64, rng: &mut Rng) {
        if self.w[k].op.is_some() {
            return;
        }
        self.w[k].busy = false;
        for (at, ev) in std::mem::take(&mut self.w[k].backlog) {
            self.push(at, ev, rng);
        }
    }

    /// The IdP's answer to request `r`'s renewal: `reply_step`, then `end_renewal`, then the answer
    /// (`resume_unsent`); or, for a request that stopped waiting, `on_orphaned_call_response`.
    fn answer(&mut self, ms: u64, r: usize, rng: &mut Rng) {
        let k = self.reqs[r].k;
        let now = self.now(ms);
        let mut c = self.calls.remove(&r).unwrap();
        let (status, body) = self.idp.token(&c.rt, now, ms);
        let u = self.reqs[r].u;
        self.note(
            ms,
            k,
            format!("u{u} r{r} the IdP answers {status} to {}", c.rt),
        );
        if c.given_up && c.claim.is_none() {
            // Not a renewal it claimed: dropped.
            return;
        }
        let f = &mut self.w[k].f;
        let before = (f.state.renewals_paused_until, f.state.renewals_failing);
        let step = f.reply(c.pending.take().unwrap(), Some((status, &body)));
        let answered = std::mem::take(&mut f.state.idp_answered);
        let renewed = match (&step, &c.claim) {
            (Step::Call(..), _) | (_, None) => None,
            (_, Some(cl)) => Some(
                flow::renewed_cookies(&f.state, &cl.sealed)
                    .filter(|lines| Some(lines) != cl.before.as_ref()),
            ),
        };
        self.share_pause(k, before, answered);
        let step = (!c.given_up).then_some(step);
        match (renewed, c.claim) {
            (Some(renewed), Some(cl)) => {
                if c.given_up && renewed.is_some() {
                    self.out.undelivered += 1;
                }
                self.w[k].busy = true;
                let op = Op::End {
                    r,
                    renewed,
                    until: cl.until,
                    undelivered: c.given_up,
                    now,
                    step,
                };
                let cas = Cas {
                    op,
                    key: cl.key,
                    tries: 0,
                    write: None,
                };
                self.read(k, ms, cas, rng);
            }
            _ => {
                if let Some(step) = step {
                    self.deliver(ms, r, step, rng);
                }
            }
        }
    }

    /// A tick: `give_up_waits`, then `resume_parked`, then the next tick.
    fn tick(&mut self, k: usize, ms: u64, rng: &mut Rng) {
        let now = self.now(ms);
        let due: Vec<usize> = self
            .calls
            .iter()
            .filter(|(r, c)| self.reqs[**r].k == k && c.gives_up_at.is_some_and(|t| ms >= t))
            .map(|(r, _)| *r)
            .collect();
        for r in due {
            let f = &mut self.w[k].f;
            let c = self.calls.get_mut(&r).unwrap();
            c.gives_up_at = None;
            let before = (f.state.renewals_paused_until, f.state.renewals_failing);
            let pending = c.pending.as_deref().unwrap();
            let step = flow::renewal_given_up(&f.cfg, &mut f.state, pending, now).unwrap();
            c.given_up = true;
            let asked = c.gives_up_at_first;
            self.share_pause(k, before, false);
            let waited = ms - self.reqs[r].arrived;
            if waited > TIMEOUT + TICK + 50 {
                let rearmed = self.w[k]
                    .rearmed
                    .iter()
                    .any(|&t| t + TICK > asked && t <= ms);
                self.out.late.push((r, waited, rearmed));
            }
            self.out.given_up += 1;
            let u = self.reqs[r].u;
            self.note(ms, k, format!("u{u} r{r} stops waiting"));
            self.deliver(ms, r, step, rng);
        }
        let mut resumed = 0;
        for p in std::mem::take(&mut self.w[k].parked) {
            // At most `FINISH_PER_CALL` a tick; the others at the next (fast) tick.
            if resumed == FINISH_PER_CALL {
                self.w[k].parked.push(p);
                continue;
            }
            let slot = self.bucket(&p.key);
            let found = Table::decode(slot.bytes.as_deref().unwrap()).get(&p.key, now);
            let f = &mut self.w[k].f;
            let step = match found {
                Renewal::Done(lines) => {
                    self.out.adopted_parked += 1;
                    flow::adopt_renewal(&f.cfg, &mut f.state, p.job, &lines, now)
                }
                Renewal::Claimed if now < p.until => {
                    self.w[k].parked.push(p);
                    continue;
                }
                _ => flow::renewal_failed(&f.cfg, &mut f.state, p.job, now),
            };
            resumed += 1;
            self.deliver(ms, p.r, step, rng);
        }
        let next = if self.w[k].parked.is_empty() {
            TICK
        } else {
            FAST_TICK
        };
        let g = self.w[k].tick_gen;
        if ms < MUCH_LATER + 10_000 {
            self.push(ms + next, Ev::Tick(k, g), rng);
        }
    }

    /// Request `r` is answered with `step`: its browser takes the cookies it brings.
    fn deliver(&mut self, ms: u64, r: usize, step: Step, rng: &mut Rng) {
        let (u, k) = (self.reqs[r].u, self.reqs[r].k);
        // The clock the worker read when it decided.
        let now = self.w[k].f.now;
        assert!(self.reqs[r].answered.is_none(), "r{r} answered twice");
        let name = self.w[k].f.cfg.cookie_name.clone();
        let mut jar = self.jars[u].clone();
        let what = match &step {
            Step::Forward(fwd) => {
                let b = bearer(fwd);
                let token = b.trim_start_matches("Bearer ");
                if self.idp.access.get(token).is_none_or(|&exp| now >= exp) {
                    let line = format!("r{r} u{u} at {ms} ms forwarded with {token}");
                    self.out.bad_token.push(line);
                }
                self.out.old_forwarded += u32::from(self.reqs[r].old);
                jar.apply(fwd.set_cookies.iter().map(String::as_str));
                format!("forwarded with {token}")
            }
            Step::Respond(reply) => {
                jar.apply(set_cookies(reply));
                let sent_round = reply.status == 302 && location(reply) == "/app";
                match reply.status {
                    503 => {
                        let detail = reply.detail.clone().unwrap_or_default();
                        *self.out.unavailable.entry(detail.clone()).or_default() += 1;
                        format!("503 ({detail})")
                    }
                    302 if sent_round => {
                        // The browser follows it, with the cookie it brings.
                        let k = (rng.next() % 2) as usize;
                        let ev = Ev::Send {
                            u,
                            k,
                            nav: true,
                            flight: rng.within(0, 30),
                        };
                        self.push(ms + 1, ev, rng);
                        "302 sent round".into()
                    }
                    s => {
                        let line = format!("r{r} u{u} at {ms} ms: {s} {:?}", reply.detail);
                        self.out.logged_out.push(line);
                        format!("{s} ({:?})", reply.detail)
                    }
                }
            }
            other => panic!("{other:?}"),
        };
        if jar.get(&name).is_none() {
            let line = format!("r{r} u{u} at {ms} ms: the session cookie cleared ({what})");
            self.out.logged_out.push(line);
        }
        self.jars[u] = jar;
        let waited = ms - self.reqs[r].arrived;
        if self.reqs[r].parked {
            self.out.parked_wait = self.out.parked_wait.max(waited);
        } else {
            self.out.wait = self.out.wait.max(waited);
        }
        let old = if self.reqs[r].old {
            " (old cookie)"
        } else {
            ""
        };
        self.note(ms, k, format!("u{u} r{r}{old} {what}"));
        self.reqs[r].answered = Some((ms, what));
    }
}

impl Sim {
    /// Two workers (their providers kept, their states new), `jars[u]` user `u`'s login of life
    /// `lives[u]` (s), the IdP's tokens of `life` s, the clock `phase` ms into its second, the first
    /// ticks at `ticks` ms.
    fn new(
        fs: [Filter; 2],
        jars: Vec<Jar>,
        lives: &[u64],
        life: u64,
        phase: u64,
        ticks: [u64; 2],
        rng: &mut Rng,
    ) -> Sim {
        let w = fs.map(|mut f| {
            anew(&mut f);
            Worker {
                f,
                parked: Vec::new(),
                op: None,
                busy: false,
                backlog: Vec::new(),
                tick_gen: 0,
                rearmed: Vec::new(),
            }
        });
        let mut idp = Idp {
            revoked: vec![false; jars.len()],
            life,
            ..Idp::default()
        };
        for (u, &l) in lives.iter().enumerate() {
            idp.refresh.insert(format!("rt-{u}-0"), (u, false));
            idp.access.insert(format!("at-{u}-0"), NOW + l);
        }
        let mut sim = Sim {
            w,
            buckets: HashMap::new(),
            pause: Slot::default(),
            idp,
            jars,
            reqs: Vec::new(),
            calls: BTreeMap::new(),
            queue: BTreeMap::new(),
            phase,
            delays: HashMap::new(),
            out: Outcome::default(),
        };
        for (k, at) in ticks.into_iter().enumerate() {
            sim.push(at, Ev::Tick(k, 0), rng);
        }
        sim
    }

    fn drive(&mut self, rng: &mut Rng) {
        while let Some(((ms, _), ev)) = self.queue.pop_first() {
            self.step(ms, ev, rng);
        }
    }
}

/// One schedule: `users` (each its login, of `LIVES`), bursts of requests on random workers until
/// `BURSTS`, then each user back at `LATER` and `MUCH_LATER` on both workers in turn.
fn run(fs: [Filter; 2], logins: &[Vec<Jar>], seed: u64) -> (Sim, Outcome) {
    let mut rng = Rng(seed ^ 0x7e4e_3a15);
    let n = 1 + (rng.next() % 3) as usize;
    let life = rng.within(4, 13);
    let (mut jars, mut lives) = (Vec::new(), Vec::new());
    for logins in logins.iter().take(n) {
        let v = (rng.next() % LIVES.len() as u64) as usize;
        jars.push(logins[v].clone());
        lives.push(LIVES[v]);
    }
    let phase = rng.within(0, 1000);
    let ticks = [rng.within(0, TICK), rng.within(0, TICK)];
    let mut sim = Sim::new(fs, jars, &lives, life, phase, ticks, &mut rng);
    for u in 0..n {
        let mut t = rng.within(0, 500);
        while t < BURSTS {
            let count = rng.within(1, 7);
            // Half the bursts: the page's calls all at once (a script's `Promise.all`), within 3 ms of
            // each other on both workers, so that their claims race.
            let tight = rng.one_in(2);
            for i in 0..count {
                let at = match (i, tight) {
                    (0, _) => t,
                    (_, true) => t + rng.within(0, 3),
                    (_, false) => t + rng.within(20, 400),
                };
                // One request in five is slow on its way (sent before an answer brought a new cookie,
                // arriving after it).
                let flight = if rng.one_in(5) {
                    rng.within(200, 1_500)
                } else if tight {
                    rng.within(0, 3)
                } else {
                    rng.within(0, 30)
                };
                let ev = Ev::Send {
                    u,
                    k: (rng.next() % 2) as usize,
                    nav: i == 0,
                    flight,
                };
                sim.push(at, ev, &mut rng);
            }
            t += rng.within(300, 4_000);
        }
        for (i, at) in [LATER, LATER + 1_000, MUCH_LATER, MUCH_LATER + 1_000]
            .into_iter()
            .enumerate()
        {
            let ev = Ev::Send {
                u,
                k: (i + u) % 2,
                nav: false,
                flight: 0,
            };
            sim.push(at, ev, &mut rng);
        }
    }
    sim.drive(&mut rng);
    let out = std::mem::take(&mut sim.out);
    (sim, out)
}

/// Over 300 schedules (seeds 0 to 299; `RENEWAL_SCHEDULES=3000` explores more), one to three users, each
/// with one session whose token has expired or is about to be due, sending bursts of 1 to 6 parallel
/// requests (a page and its calls; half the bursts all within 3 ms, so that their claims race on the two
/// workers; one request in five slow on its way, so that it carries the cookie from before the burst's
/// answers) to random workers every 0.3 to 4 s for 20 s, then coming back after a minute and after four,
/// the IdP rotating refresh tokens, renewing tokens of 4 to 12 s (many renewals of each session, old
/// cookies of several generations in flight) and answering within 0 to 1.5 s, one renewal in eight
/// after `callout_timeout` (2 s):
/// 1. no user is logged out: no request gets its session cleared, a redirect to log in or a 401, and
///    the IdP never sees a refresh token twice (what would revoke the grant);
/// 2. every request is answered: forwarded with a token the IdP issued and that has not expired, or a
///    documented 503 (README, the `token refresh failed, answered 503` line: a request that stopped
///    waiting with an expired token; renewals paused after that, 5 s; an old cookie whose answer brings
///    the new one), or a browser's navigation sent round with the new cookie. A request that asks the
///    IdP within `callout_timeout` and a tick (3 s: it stops waiting at its worker's first tick after
///    `callout_timeout`), or a fast tick later when the first request to park put that tick off; a
///    parked one (its token expired, another request renewing it) within the renewal's call (twice
///    `callout_timeout`, 4 s: README, "Limits": its wait is not cut at `callout_timeout`) and a fast
///    tick (100 ms);
/// 3. the browser ends up with a cookie that keeps working: after every request, the cookie it holds
///    carries the refresh token the IdP would renew next (its grant alive), and its requests a minute
///    and four minutes later, on each worker, go through (the first a minute later may get the 503 that
///    brings the new cookie: it adopts a renewal no browser got, whose token has expired since).
///
/// All three held over 3,000 schedules (232,000 requests, 32,000 renewals): 1,700 claims lost their
/// write to the other worker's and then found its claim, none of the bucket's updates gave up; 23,000
/// requests parked and adopted the renewal when resumed, 3,000 adopted the other worker's at once;
/// 2,100 requests stopped waiting and their renewals were published for the next; 8,200 requests
/// carried an old cookie, all forwarded but one (a 503 with the new cookie). Longest waits: 3.09 s
/// (asked), 4.0 s (parked); two requests stopped waiting 79 and 90 ms late, their tick put off by a
/// request that parked just before it. With the fix below (only the first to park on a worker sets the
/// fast tick, which starts Envoy's timer again: at most a fast tick late), over the same 3,000: one,
/// 89 ms late; longest parked wait 3.9 s.
#[test]
fn a_session_renewed_by_parallel_requests_on_both_workers_never_spends_a_refresh_token_twice() {
    let mut login = Filter::ready(cfg());
    let logins: Vec<Vec<Jar>> = (0..3)
        .map(|u| {
            LIVES
                .iter()
                .map(|&life| log_in_user(&mut login, u, life))
                .collect()
        })
        .collect();
    let mut fs = Some([Filter::ready(cfg()), Filter::ready(cfg())]);
    let mut total = Outcome::default();
    let mut late = Vec::new();
    let (mut orders, mut requests, mut renewals, mut replaced_later) = (0, 0, 0, 0);
    for seed in seeds() {
        let (sim, out) = run(fs.take().unwrap(), &logins, seed);
        orders += 1;
        requests += sim.reqs.len();
        renewals += sim.idp.renewed;
        let log = || out.log.join("\n");
        // 1.
        assert!(
            sim.idp.reused.is_empty() && out.logged_out.is_empty(),
            "seed {seed}: refresh tokens used twice {:?}; logged out: {:?}\n{}",
            sim.idp.reused,
            out.logged_out,
            log()
        );
        // 2.
        assert!(
            out.bad_token.is_empty(),
            "seed {seed}: {:?}\n{}",
            out.bad_token,
            log()
        );
        for (r, q) in sim.reqs.iter().enumerate() {
            assert!(
                q.answered.is_some(),
                "seed {seed}: r{r} (u{}, sent at {} ms) never answered\n{}",
                q.u,
                q.sent,
                log()
            );
        }
        for &(r, waited, rearmed) in &out.late {
            assert!(
                rearmed && waited <= TIMEOUT + TICK + FAST_TICK + 50,
                "seed {seed}: r{r} waited {waited} ms, its tick not put off\n{}",
                log()
            );
            late.push((seed, r, waited));
        }
        assert!(
            out.parked_wait <= 2 * TIMEOUT + FAST_TICK + 50,
            "seed {seed}: parked {} ms\n{}",
            out.parked_wait,
            log()
        );
        // 3.
        let name = cfg().cookie_name;
        for (u, jar) in sim.jars.iter().enumerate() {
            let s = sim.w[0].f.open_session(jar);
            let rt = s.refresh_token.as_ref().unwrap().expose().to_string();
            let live = sim.idp.refresh.get(&rt).is_some_and(|&(_, used)| !used);
            assert!(
                live && !sim.idp.revoked[u] && jar.get(&name).is_some(),
                "seed {seed}: u{u}'s cookie holds {rt}\n{}",
                log()
            );
            // A minute later, the first may adopt a renewal no browser got (its request had stopped
            // waiting), its token expired since: a 503 that brings the new cookie, whose next request
            // renews (`flow::adopt_renewal`). Then each goes through.
            let later: Vec<&str> = sim
                .reqs
                .iter()
                .filter(|q| q.u == u && q.sent >= LATER)
                .filter_map(|q| q.answered.as_ref().map(|(_, how)| how.as_str()))
                .collect();
            let forwarded = |how: &&str| how.starts_with("forwarded");
            assert!(
                later.len() == 4
                    && (forwarded(&later[0]) || later[0].contains(NEW_COOKIE))
                    && later[1..].iter().all(forwarded),
                "seed {seed}: u{u} later: {later:?}\n{}",
                log()
            );
            replaced_later += usize::from(!forwarded(&later[0]));
        }
        total.wait = total.wait.max(out.wait);
        total.parked_wait = total.parked_wait.max(out.parked_wait);
        total.lost += out.lost;
        total.lost_claims += out.lost_claims;
        total.gave_up_updates += out.gave_up_updates;
        total.parked += out.parked;
        total.adopted += out.adopted;
        total.adopted_parked += out.adopted_parked;
        total.given_up += out.given_up;
        total.undelivered += out.undelivered;
        total.old += out.old;
        total.old_forwarded += out.old_forwarded;
        for (why, n) in out.unavailable {
            *total.unavailable.entry(why).or_default() += n;
        }
        fs = Some(sim.w.map(|w| w.f));
    }
    eprintln!(
        "{orders} orders, {requests} requests, {renewals} renewals; {replaced_later} users back after a \
         minute got the new cookie with a 503; {} bucket writes lost and retried \
         ({} claims that then found the other worker's), {} updates given up; {} parked ({} adopted \
         the renewal when resumed); {} adopted another worker's renewal at once; {} stopped waiting, \
         {} renewals published undelivered; {} requests with an old cookie ({} forwarded); longest \
         wait {} ms, parked {} ms; 503s: {:?}",
        total.lost,
        total.lost_claims,
        total.gave_up_updates,
        total.parked,
        total.adopted_parked,
        total.adopted,
        total.given_up,
        total.undelivered,
        total.old,
        total.old_forwarded,
        total.wait,
        total.parked_wait,
        total.unavailable
    );
    eprintln!("stopped waiting late, a tick put off by a park: {late:?}");
    // What the schedules are for: claims that raced, requests parked behind another's claim and
    // adopting its renewal, renewals adopted from the other worker, requests that stopped waiting and
    // whose renewal was published for the next, and old cookies in flight.
    assert!(total.lost_claims > 0 && total.parked > 0 && total.adopted_parked > 0);
    assert!(total.adopted > 0 && total.given_up > 0 && total.undelivered > 0);
    assert!(total.old_forwarded > 0);
}

/// Found by the schedules above (seeds 2184 and 2651 of 3,000: a request that stopped waiting 3.09 s
/// after it asked, a tick later than it should), and made plain here: each request that parks starts the
/// worker's tick timer again (`claim_renewal` calls `set_tick_period(FAST_TICK)` whenever it parks one,
/// and Envoy's `Wasm::setTimerPeriod` disables the timer and enables it anew, 100 ms from then). While
/// requests park less than 100 ms apart on a worker, its tick never comes: no parked request is resumed
/// (`resume_parked` runs only on the tick), even one whose renewal ended long before, and no request
/// stops waiting at `callout_timeout` (`give_up_waits` too). Here user A's page polls worker 0 every
/// 80 ms while A's renewal is under way (answered after 3.9 s, after `callout_timeout`); user B's
/// request, parked at 20 ms behind B's own renewal, which the IdP answers at 300 ms, should be answered
/// at the next fast tick (by 0.45 s); it is answered at 4 s, once A's renewal has ended and A's requests
/// no longer park. A's own request should stop waiting at 2 s and a tick (3 s); it waits for its answer,
/// 3.9 s. With more sessions renewing on a busy worker, the wait has no bound but a 100 ms lull.
///
/// Fixed: only the first request to park on a worker sets the fast tick (the others find it set); the
/// model parks as the adapter now does, and this order fails with the model's park as it was
/// (`harness/tests/faults.rs`
/// `requests_that_keep_parking_do_not_hold_off_the_tick_that_lets_a_renewal_stop_waiting` shows it in a
/// real Envoy, with the filter before the fix and after).
#[test]
fn a_parked_request_is_resumed_at_the_next_fast_tick_however_many_others_park() {
    let mut login = Filter::ready(cfg());
    let jars = vec![
        log_in_user(&mut login, 0, 290),
        log_in_user(&mut login, 1, 290),
    ];
    let mut rng = Rng(1);
    let fs = [Filter::ready(cfg()), Filter::ready(cfg())];
    // Both tokens expired; each worker ticks at 900 ms, then each second.
    let mut sim = Sim::new(fs, jars, &[290, 290], 60, 0, [900, 900], &mut rng);
    // r0, A's, asks the IdP at 0 ms (answered at 3.9 s); r1, B's, at 10 ms (answered at 300 ms); r2, B's,
    // parks at 20 ms; A's polls from 100 ms on, every 80 ms, park.
    sim.delays = HashMap::from([(0, 3_900), (1, 290)]);
    let send = |u: usize| Ev::Send {
        u,
        k: 0,
        nav: false,
        flight: 0,
    };
    sim.push(0, send(0), &mut rng);
    sim.push(10, send(1), &mut rng);
    sim.push(20, send(1), &mut rng);
    for ms in (100..4_000).step_by(80) {
        sim.push(ms, send(0), &mut rng);
    }
    sim.drive(&mut rng);
    let log = sim.out.log.join("\n");
    let answered = |r: usize| sim.reqs[r].answered.as_ref().unwrap().0;
    assert!(sim.idp.reused.is_empty() && sim.out.logged_out.is_empty());
    assert!(
        answered(2) <= 300 + FAST_TICK + 50,
        "B's parked request answered at {} ms\n{log}",
        answered(2)
    );
    assert!(
        answered(0) <= TIMEOUT + TICK,
        "A's request answered at {} ms\n{log}",
        answered(0)
    );
}
