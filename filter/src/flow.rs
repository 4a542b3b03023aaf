//! The decision core: a request (+ now, + randomness) -> `Step`; a callout reply (+ pending state) -> `Step`.
//! No host calls here, so every flow runs natively in tests with a fixed clock.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use alloc::borrow::Cow;
use alloc::rc::Rc;
use core::cell::Cell;
use core::fmt;
use core::time::Duration;

use crate::claims;
use crate::config::{Config, ForwardToken};
use crate::cookies::{self, CookieAttrs, SameSite};
use crate::form;
use crate::json;
use crate::oidc::id_token::{self, Expected, IdTokenError};
use crate::oidc::jwks::Jwks;
use crate::oidc::logout_token;
use crate::oidc::pkce;
use crate::oidc::token::{self, TokenError, TokenResponse};
use crate::paths;
use crate::provider::{Provider, ProviderState};
use crate::revocation::Revocations;
use crate::secret::Secret;
use crate::session::{self, LoginState, SealedMap, Session};
use crate::weburl::WebUrl;

/// A login attempt is good for this long: the time a user may spend at the IdP's login pages, which can
/// include enrolling a second factor or waiting for an emailed code (Keycloak's own login timeout is 30
/// minutes).
const LOGIN_TTL: u64 = 1800;
/// Longest callback query we read, and longest code: most are a few hundred bytes, but Entra ID's codes
/// pass 2 KB and Azure AD B2C's 4 KB.
const MAX_CALLBACK_QUERY: usize = 16384;
const MAX_CODE: usize = 8192;
/// A sealed session larger than this would not fit Envoy's default request-header limit with room to spare.
const MAX_SESSION_CHUNKS: usize = 4;
/// Opened sessions kept per worker; beyond that the expired ones go, then all.
const CACHE_CAP: usize = 1024;

/// A request's headers (lowercase names, as Envoy keeps them).
pub trait Headers {
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;

    /// `get(":path")`, which every request reads.
    fn path(&self) -> Option<Cow<'_, str>> {
        self.get(":path")
    }

    /// The `cookie` header, which every request reads: `get("cookie")` where the request carries one (a
    /// request's several are read joined as one: `HeaderBlock::cookie`).
    fn cookie(&self) -> Option<Cow<'_, str>> {
        self.get("cookie")
    }

    /// Whether a body follows the headers (they did not end the stream): of HTTP/2 and HTTP/3 requests,
    /// which carry no `content-length` or `transfer-encoding`, only the host knows.
    fn body_follows(&self) -> bool {
        false
    }
}

impl Headers for crate::headers::HeaderBlock {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        crate::headers::HeaderBlock::get(self, name)
    }

    fn path(&self) -> Option<Cow<'_, str>> {
        crate::headers::HeaderBlock::path(self)
    }

    fn cookie(&self) -> Option<Cow<'_, str>> {
        crate::headers::HeaderBlock::cookie(self)
    }

    fn body_follows(&self) -> bool {
        self.body_follows
    }
}

/// Time and randomness, the two inputs a test fixes.
pub struct Env<'a> {
    pub now: u64,
    /// 32 fresh random bytes, or `None` when the host has none (then the request fails closed).
    pub random: &'a mut dyn FnMut() -> Option<[u8; 32]>,
    /// Why the call a reply answers was never sent (no cluster for its URL), for the reply the adapter
    /// makes up for it: a renewal's log line then says so, not that the IdP did not answer in time
    /// (found by a review of what the logs say). `None` for every other call.
    pub unsent: Option<&'a str>,
}

/// What the adapter does next.
#[derive(Debug)]
pub enum Step {
    /// Continue upstream with these changes.
    Forward(Forward),
    /// Answer the client directly.
    Respond(Reply),
    /// Call the IdP, then resume with `on_reply`.
    Call(Callout, Box<Pending>),
    /// Read the request body, then resume with `on_backchannel_logout`.
    ReadBody,
}

/// Header changes for a request that goes upstream.
#[derive(Debug, Default)]
pub struct Forward {
    /// New `Authorization` value (`Bearer …`), replacing whatever the client sent.
    pub authorization: Option<Rc<Secret>>,
    /// `None`: leave `Cookie` alone; `Some(None)`: remove it; `Some(Some(v))`: replace it.
    pub cookie: Option<Option<String>>,
    /// `Set-Cookie` values to add to the upstream's response.
    pub set_cookies: Vec<String>,
    /// Identity headers to set (`Some`) or remove (`None`); client-sent copies never pass.
    pub identity: Option<IdentityHeaders>,
    pub metric: Option<Metric>,
}

/// Identity headers (and `access_token_header`) to set (`Some(value)`) or remove (`None`). Values never
/// print: one may be the access token.
pub type IdentityHeaders = Rc<Vec<(String, Option<Secret>)>>;

/// A local response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names are always ours, and most values too: neither costs an allocation then.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Cow<'static, str>,
    pub metric: Option<Metric>,
    /// Why, for the operator's log line with a failed login or refresh: our own words and codes (no
    /// token, code, secret or request data but the IdP's error and its cleaned description).
    pub detail: Option<String>,
    /// Log the line at warning whatever the status: the deployment's to mend, though the request is
    /// answered as its own fault. Once per site and worker, with a log budget of its own (for
    /// [`Metric::RefreshFailed`] and [`Metric::CallbackFailed`], the failures that set it).
    pub warn: bool,
}

/// An HTTP callout to the IdP through an Envoy cluster.
#[derive(Clone)]
pub struct Callout {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// What a paused request waits for.
pub enum Pending {
    /// The token endpoint's answer to a code exchange.
    Code(CodeExchange),
    /// The JWKS, fetched because the ID token named an unknown `kid`.
    CodeJwks(CodeExchange, TokenResponse),
    /// The token endpoint's answer to a refresh.
    Refresh(RefreshJob),
    /// The JWKS, fetched because the refreshed ID token named an unknown `kid`.
    RefreshJwks(RefreshJob, TokenResponse),
    /// The JWKS, fetched because a back-channel logout token named an unknown `kid`.
    LogoutJwks(String),
}

pub struct CodeExchange {
    login: LoginState,
    login_cookie: String,
    stale_chunks: Vec<String>,
    /// When the IdP was asked (see [`State::saw_idp_clock`]).
    asked_at: u64,
}

pub struct RefreshJob {
    cache_key: String,
    session: Rc<Cached>,
    /// How the request is answered if the IdP refuses the refresh: as it would be without a session
    /// (never [`Anonymous::Pass`]: such a request starts no refresh).
    anonymous: Anonymous,
    /// `Box<str>`, not `String`: the job stays small enough to be handed back by value (`renewal_busy`).
    target: Box<str>,
    /// [`Anonymous::holding_page`], if the request named one.
    holding_page: Option<Box<str>>,
    cookie: Option<Option<String>>,
    present_chunks: Vec<String>,
    /// When the IdP was asked, or before (see [`State::saw_idp_clock`]); 32 bits (until 2106), so the job
    /// stays as small.
    asked_at: u32,
}

/// A renewal whose request stops waiting (`callout_timeout` passed; its call goes on, see the adapter's
/// `give_up`): the request is answered as if the IdP had not answered (an outage: the token while it is
/// valid, else 503); `None` for another callout.
pub fn renewal_given_up(
    cfg: &Config,
    state: &mut State,
    pending: &Pending,
    now: u64,
) -> Option<Step> {
    match pending {
        Pending::Refresh(job) => refresh_outcome(cfg, state, job, (None, None), now).err(),
        // The token endpoint answered, late, and the keys for its new ID token are on their way: no
        // outage of renewals (none paused), but the request has waited its `callout_timeout`. The fetch
        // goes on, and its renewal is kept for the session's next request (found in review: the
        // request waited for it too, up to twice `callout_timeout`).
        Pending::RefreshJwks(job, _) => Some(match ended_meanwhile(cfg, state, job, now) {
            Some(step) => step,
            None if now < job.session.session.token_expires_at => {
                keep_old(cfg, job, Metric::RefreshFailed)
            }
            None => renewal_unavailable(
                job.api(),
                "the IdP's keys for the renewed ID token did not come within callout_timeout"
                    .into(),
                RENEWAL_PAUSE,
            ),
        }),
        _ => None,
    }
}

impl RefreshJob {
    /// Whether the request is a browser's navigation (a page, not JSON, for a refusal).
    fn browser(&self) -> bool {
        matches!(self.anonymous, Anonymous::Login | Anonymous::Frame)
    }

    /// Whether the request is an API client's (JSON for an answer of the filter's own).
    fn api(&self) -> bool {
        matches!(self.anonymous, Anonymous::Api)
    }
}

/// Counters a user can graph; the adapter maps each to an Envoy stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    SessionForwarded,
    LoginRedirect,
    LoginStarted,
    LoginCompleted,
    CallbackFailed(CallbackFailure),
    Refreshed,
    RefreshFailed,
    Logout,
    Unauthorized,
    NotReady,
    Bypass,
    BearerPassthrough,
    Forbidden,
    BackchannelLogout,
    /// A logout token refused (or not taken in just now): the sessions it names go on.
    BackchannelLogoutRefused,
    /// A host no site serves, with `unmatched_hosts: pass` (counted by the adapter, which decides it).
    UnmatchedHostPassed,
    /// A host no site serves, answered 403.
    UnmatchedHostDenied,
    /// A request carried a session cookie of this site that its cookie keys do not open (counted by the
    /// adapter from [`State::unopened`], besides the request's own answer).
    SessionUnopened,
    /// A renewal the IdP granted, for a request the claim rules then refuse: both a refresh and a
    /// forbidden (found in review: counted as forbidden only, and `refreshes` missed a renewal).
    RenewedForbidden,
}

/// Why a callback failed, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackFailure {
    IdpError,
    BadRequest,
    StateMismatch,
    InvalidGrant,
    TokenEndpoint,
    IdToken,
    Nonce,
    Timeout,
}

impl CallbackFailure {
    pub fn name(self) -> &'static str {
        match self {
            Self::IdpError => "idp_error",
            Self::BadRequest => "bad_request",
            Self::StateMismatch => "state_mismatch",
            Self::InvalidGrant => "invalid_grant",
            Self::TokenEndpoint => "token_endpoint",
            Self::IdToken => "id_token",
            Self::Nonce => "nonce",
            Self::Timeout => "timeout",
        }
    }
}

/// An opened session as kept in the per-worker cache, with the header value ready to set.
#[derive(Debug)]
pub struct Cached {
    pub session: Session,
    pub bearer: Rc<Secret>,
    /// Set when this entry stands for a session refreshed since the browser last sent its cookie.
    pub renewed_cookies: Vec<String>,
    /// Set when that refresh brought only a new refresh token (`keeping_new_refresh_token`): renewing is
    /// then the new cookie's to do.
    pub refresh_handed_on: bool,
    /// The identity headers for this user, computed once per opened cookie.
    pub identity: IdentityHeaders,
    /// The claims rules and identity headers read.
    pub claims: json::Object,
    /// The ID token's `sid` (else the session's `login_sid`) and its `iat`, for back-channel logout.
    pub sid: Option<String>,
    pub iat: u64,
    /// The ID token and its login as the list of ended sessions names them (`revocation::token_key`,
    /// `revocation::login_key`), for `/logout`.
    pub logout_keys: Vec<String>,
    /// How long before the forwarded token expires a request renews it.
    pub refresh_margin: u64,
    /// When the login was made, if its id says (`Session::made_at`).
    pub made_at: Option<u64>,
    /// The session is over (its renewal was refused, or it ended while renewed): kept in the cache so
    /// that a client that sends the cookie again (one that ignores `Set-Cookie`) is answered as without
    /// a session at once (found by a black-box test: each of its requests asked the IdP again).
    pub over: Cell<bool>,
}

/// Opened sessions keyed by the exact sealed cookie value: a hit costs a hash of the value's start
/// and one comparison (`SealedMap`), not a decryption; and the cached value's length saves the search
/// for the end of its cookies (`session::scan_cached`).
#[derive(Debug, Default)]
pub struct SessionCache {
    map: SealedMap<Rc<Cached>>,
}

impl SessionCache {
    fn get(&self, key: &str) -> Option<Rc<Cached>> {
        self.map.get(key).cloned()
    }

    fn insert(&mut self, key: String, value: Rc<Cached>, now: u64) {
        if self.map.len() >= CACHE_CAP {
            // Sessions found over go first (found in review: kept for their lifetime, they filled the
            // cache, and every session's was emptied with them).
            self.map
                .retain(|c| !c.over.get() && c.session.expires_at > now);
            if self.map.len() >= CACHE_CAP {
                self.map.clear();
            }
        }
        self.map.insert(key, value);
    }

    fn remove(&mut self, key: &str) {
        self.map.remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Per-worker mutable state the core reads and updates.
#[derive(Debug, Default)]
pub struct State {
    pub provider: ProviderState,
    pub cache: SessionCache,
    /// Sessions ended by back-channel logout or `/logout`; the adapter keeps it in step with the other
    /// workers.
    pub revoked: Revocations,
    /// The request just decided (a `/logout`, a back-channel logout) recorded an ended session: the adapter
    /// shares the list and clears this (found in review: every `/logout`, even one without a session, rewrote the shared
    /// list, and every worker decoded it again).
    pub ended_here: bool,
    /// Until then no renewal of this site calls the IdP from this worker (see `renewal_claim`).
    pub renewals_paused_until: u64,
    /// The last renewal met an outage: the next is a probe, and the others wait for its answer.
    pub renewals_failing: bool,
    /// Until then no renewal calls the IdP from this worker: a renewed ID token was signed with a key it
    /// may not fetch before then (see `finish_refresh`). This worker's alone, not shared: the others
    /// may have the key.
    pub keys_wait_until: u64,
    /// The sessions whose renewals met the last outages here: see [`State::session_outage`].
    pub outages_of: [SessionOutages; 4],
    /// The session whose renewal's failure set this worker's pause (0: a probe's, or none): shared with
    /// the pause, so that each worker takes that session for one that met the outage there too
    /// ([`State::record_outage`]).
    pub outage_who: u64,
    /// When the IdP last answered a renewal, here or on another worker (the shared pause's end).
    pub answered_at: u64,
    /// A renewal of another session than those that met the outage waited out the pause here: it
    /// probes before they ask again (see [`State::session_outage`]).
    pub others_wait: bool,
    /// The version of the workers' shared pause last taken in (see `workers::take_pause`).
    pub pause_seen: Option<u32>,
    /// The request just decided carried a session cookie the cookie keys do not open (another gateway's
    /// keys, a key dropped, a replica with other keys): the adapter counts it and clears this. Found in
    /// review: nothing told an operator why such users were sent to log in, over and over.
    pub unopened: bool,
    /// How far the IdP's clock runs ahead of this gateway's, as the `iat` of the ID tokens it issued
    /// showed (the adapter shares it with the other workers). A `/logout` the list keeps by its user is
    /// dated by it (found in review: dated by the gateway's clock, a renewal done just before it, whose
    /// ID token the IdP dated ahead, stayed a session).
    pub idp_ahead: Ahead,
    /// The reply just decided was the IdP's answer to a renewal (a success or a refusal): the adapter
    /// ends the pause the workers share with it and clears this (found in review: it took any reply to a
    /// renewal for one, and an unusable success ended another worker's pause).
    pub idp_answered: bool,
    /// A refresh answer without an ID token ended a session here, and the log said so at warning.
    pub told_no_id_token: bool,
    /// An error the IdP answered a login with, not the user's doing, and the log said so at warning.
    pub told_idp_error: bool,
}

/// A session whose renewals met outages on this worker: a hash of its cookie ([`RefreshJob::who`]), when
/// the first of a run of them came and when the last.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionOutages {
    pub who: u64,
    pub first: u64,
    pub last: u64,
}

/// How far ahead (seconds, within `clock_leeway`; behind, negative, within [`MAX_BEHIND`]) a token showed
/// the IdP's clock, and when it arrived.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    pub secs: i64,
    pub seen: u64,
}

/// The furthest behind the gateway's a reading takes the IdP's clock (found in review: read as never
/// behind, a `/logout` kept by its user, dated by the gateway's clock, ended the user's logins again for
/// as long as the IdP's clock ran behind). Well under [`AHEAD_KEPT`] less the longest `clock_leeway`: a
/// token the reading before last let through, over an hour ago, is still dated before such a `/logout`.
pub const MAX_BEHIND: u64 = 1800;

/// How long the most a token showed stands without another showing as much: a clock set right since is
/// then taken from the tokens that follow (found in review: a maximum kept for ever dated each later
/// logout kept by its user up to `clock_leeway` late, and a login again within that was ended).
const AHEAD_KEPT: u64 = 3600;

impl Ahead {
    /// `secs` ahead (`ahead`) or behind, within what a reading can be.
    pub fn within(secs: u64, ahead: bool, leeway: u64) -> i64 {
        let clamp = |s: u64, max: u64| i64::try_from(s.min(max)).unwrap_or(0);
        if ahead {
            clamp(secs, leeway)
        } else {
            -clamp(secs, MAX_BEHIND)
        }
    }

    /// Of two readings, the one that stands: the greater, unless the other is newer by [`AHEAD_KEPT`].
    pub fn and(self, other: Ahead) -> Ahead {
        let (new, old) = if self.seen >= other.seen {
            (self, other)
        } else {
            (other, self)
        };
        if new.secs >= old.secs || new.seen >= old.seen.saturating_add(AHEAD_KEPT) {
            new
        } else {
            old
        }
    }
}

/// How long a renewal that met an outage pauses the others on its worker (the `Retry-After` of a 503).
pub const RENEWAL_PAUSE: u64 = 5;
/// How long a session whose renewal met an outage does not ask again (longer than the pause), and how
/// far apart its outages may be to count as one run (see `State::session_outage`).
const OWN_WAIT: u64 = 2 * RENEWAL_PAUSE;
const OWN_REPEAT: u64 = 300;
/// The longest a pause can be: a probe under the longest `callout_timeout`, then the pause.
pub const MAX_PAUSE: u64 = 60 + RENEWAL_PAUSE;

/// Whether a wait until `until` is still on at `now`: one further off than any can be (the clock stepped
/// back, or was read wrong once) is none.
fn pending(until: u64, now: u64) -> bool {
    let left = until.saturating_sub(now);
    left > 0 && left <= MAX_PAUSE
}

impl State {
    /// Whether the site's renewals on this worker are paused (see `renewal_claim`), or wait for the keys.
    pub fn renewals_paused(&self, now: u64) -> bool {
        pending(self.renewals_paused_until, now) || self.keys_wait(now)
    }

    /// Whether this worker's renewals wait until it may fetch the IdP's keys again (`keys_wait_until`).
    fn keys_wait(&self, now: u64) -> bool {
        pending(self.keys_wait_until, now)
    }

    /// A renewal met an outage: pause, and probe from then on.
    fn renewal_outage(&mut self, now: u64) {
        self.renewals_failing = true;
        self.renewals_paused_until = now.saturating_add(RENEWAL_PAUSE);
    }

    /// A renewal of `who` (a hash of its cookie) met an outage. It pauses the site's renewals and starts
    /// the probing, unless none is failing and the IdP has answered another renewal since this session's
    /// run of outages began (each within [`OWN_REPEAT`] s of the one before): then the failure is the
    /// session's own (an account the IdP fails), and the others go on. Either way the session does not ask
    /// again for [`RENEWAL_PAUSE`] s, nor for [`OWN_WAIT`] s while another session's renewal waits, so
    /// that the other probes when the pause ends ([`State::own_outage`]). Found by a black-box test: one
    /// account the IdP failed, behind a dashboard that polls, took the probe each time the pause ended,
    /// and the other users' renewals answered 503 for as long as its tab was open.
    fn session_outage(&mut self, who: u64, now: u64) {
        if self.record_outage(who, now) {
            self.renewal_outage(now);
            self.outage_who = who;
        }
    }

    /// Records that `who`'s renewal met an outage at `at`, on this worker ([`State::session_outage`]) or
    /// on another; whether that is the site's. Called by itself, its failure on another worker, which
    /// paused the site's renewals (its pause taken in here): recorded as if here, so that it does not take
    /// the probe from a session that waited out that pause (found by a schedule test of two workers: a
    /// session the IdP fails alone, which worker 1 had no record of, probed there as the pause its failure
    /// on worker 0 made ended, failed, and paused every worker again; then on worker 0 as that pause
    /// ended, and so on, while its polls came first at each pause's end).
    pub fn record_outage(&mut self, who: u64, at: u64) -> bool {
        let found = self
            .outages_of
            .iter()
            .position(|o| o.who == who && at < o.last.saturating_add(OWN_REPEAT));
        let (first, last) = found.map_or((at, at), |i| {
            let o = self.outages_of[i];
            (o.first, o.last.max(at))
        });
        let slot = found.unwrap_or_else(|| {
            let mut oldest = 0;
            for (i, o) in self.outages_of.iter().enumerate() {
                if o.last < self.outages_of[oldest].last {
                    oldest = i;
                }
            }
            oldest
        });
        self.outages_of[slot] = SessionOutages { who, first, last };
        found.is_none() || self.renewals_failing || self.answered_at <= first
    }

    /// Whether `who`'s renewal met an outage here less than [`OWN_WAIT`] s ago (or, the clock stepped
    /// back, ahead of now) while another session waits to probe, or [`RENEWAL_PAUSE`] s ago: it does not
    /// ask the IdP again yet (with none waiting, a user alone renews as soon as the pause is over).
    /// Nor, while the site's renewals are failing, does a session whose run of failures here is its own
    /// (the IdP has answered another renewal since it began): its renewal would be the probe, and its
    /// failing again would pause the others once more (found by a flaky black-box test: its first failure
    /// on the other worker paused both, and its probe here when that ended paused them all again).
    fn own_outage(&self, who: u64, now: u64) -> bool {
        self.met_outage(who, now, self.own_wait())
            || self.renewals_failing && self.fails_alone(who, now)
    }

    /// Whether `who`'s run of failures here began before the IdP last answered a renewal.
    fn fails_alone(&self, who: u64, now: u64) -> bool {
        self.outages_of.iter().any(|o| {
            o.who == who && now < o.last.saturating_add(OWN_REPEAT) && self.answered_at > o.first
        })
    }

    /// How long a session whose renewal met an outage does not ask again: [`OWN_WAIT`] while another
    /// session's renewal waits to probe, else [`RENEWAL_PAUSE`].
    fn own_wait(&self) -> u64 {
        if self.others_wait {
            OWN_WAIT
        } else {
            RENEWAL_PAUSE
        }
    }

    /// How many seconds from `now` until `who`'s renewal may ask the IdP again (at least 1): the
    /// `Retry-After` of a `503` for a renewal held by the site's pause, the wait for keys, or the session's
    /// own wait, whichever ends last (found in review: it said 5 while the session's own wait was 10 s,
    /// and while a probe under a long `callout_timeout` paused the others for longer).
    fn held_for(&self, who: u64, now: u64) -> u64 {
        let left = |until: u64| if pending(until, now) { until - now } else { 0 };
        let within = self.own_wait();
        let mut secs = left(self.renewals_paused_until).max(left(self.keys_wait_until));
        for o in self.outages_of.iter().filter(|o| o.who == who) {
            secs = secs.max(left(o.last.saturating_add(within)));
        }
        secs.max(1)
    }

    /// Whether `who`'s renewal met an outage here less than `within` s ago (or ahead of now).
    fn met_outage(&self, who: u64, now: u64, within: u64) -> bool {
        self.outages_of
            .iter()
            .any(|o| o.who == who && now.abs_diff(o.last) < within)
    }

    /// The IdP answered a renewal: no pause, no probing.
    fn renewal_answered(&mut self, now: u64) {
        self.renewals_failing = false;
        self.renewals_paused_until = 0;
        self.idp_answered = true;
        self.answered_at = now;
        self.others_wait = false;
    }

    /// An ID token the IdP issued at `iat`, asked for at `asked` (or before), arrived at `now`: how far
    /// ahead its clock runs (see [`State::idp_ahead`]). Against the time of asking, as the IdP issued it
    /// no earlier: the reading is never less than how far ahead it runs, however long the answer took
    /// (found in review: against the arrival, a token issued at the end of a second read an IdP in step
    /// as a second behind, and a `/logout` dated by it missed a renewal of that second).
    fn saw_idp_clock(&mut self, iat: u64, asked: u64, now: u64, leeway: u64) {
        let secs = Ahead::within(iat.abs_diff(asked), iat >= asked, leeway);
        self.idp_ahead = self.idp_ahead.and(Ahead { secs, seen: now });
    }
}

/// Asked before a request claims the renewal of its session (no other request renews it, and none has):
/// `Ok` to go ahead, or the answer while the site's renewals on this worker are paused. A renewal that met
/// an outage pauses them for 5 s, and while they keep failing one renewal at a time asks the IdP (a probe;
/// the others wait until its answer, or its timeout): an IdP that is down is not asked once per request,
/// nor does each request wait out its timeout. Meanwhile the token goes up while valid, then 503.
pub fn renewal_claim(
    cfg: &Config,
    state: &mut State,
    job: RefreshJob,
    now: u64,
) -> Result<RefreshJob, Step> {
    let who = job.who();
    let paused = state.renewals_paused(now);
    if paused || state.own_outage(who, now) {
        // Another session than those that met the outage waits: it probes first when the pause ends.
        state.others_wait |= !state.met_outage(who, now, OWN_WAIT) && !state.fails_alone(who, now);
        // Not the site's pause (found in review: the log line said so): this session's own wait.
        let why = if state.keys_wait(now) {
            "renewals here wait until the IdP's keys may be fetched again (a renewed ID token's key is not among them)"
        } else if paused {
            PAUSED
        } else {
            "this session's renewal met an outage moments ago (the site's others go on)"
        };
        let secs = state.held_for(who, now);
        return Err(renewal_held_reply(cfg, job, now, why, secs));
    }
    if state.renewals_failing {
        let timeout = cfg.callout_timeout.as_secs();
        state.renewals_paused_until = now.saturating_add(timeout + RENEWAL_PAUSE);
        state.others_wait = false;
        state.outage_who = 0;
    }
    Ok(job)
}

/// Whether `job`'s renewal may not ask the IdP now: the site's renewals on this worker are paused, or
/// its own met an outage moments ago.
pub fn renewal_held(state: &State, job: &RefreshJob, now: u64) -> bool {
    state.renewals_paused(now) || state.own_outage(job.who(), now)
}

/// The answer while the site's renewals on this worker are paused: the token while it is valid, then 503.
pub fn renewal_paused(cfg: &Config, state: &State, job: RefreshJob, now: u64) -> Step {
    let secs = state.held_for(job.who(), now);
    renewal_held_reply(cfg, job, now, PAUSED, secs)
}

/// Why a renewal did not ask the IdP while the site's renewals pause.
const PAUSED: &str = "renewals paused after one met an outage";

/// The token while it is valid, then 503 saying `why` the renewal did not ask the IdP, and to retry in
/// `retry` seconds.
fn renewal_held_reply(cfg: &Config, job: RefreshJob, now: u64, why: &str, retry: u64) -> Step {
    let api = job.api();
    match renewal_busy(cfg, job, now) {
        Ok(step) => step,
        Err(_) => renewal_unavailable(api, why.into(), retry),
    }
}

// By hand: a callout's `Authorization` holds the client secret, its body a code, verifier, refresh token
// or the secret; what a request waits for holds its sealed session and its tokens.
impl fmt::Debug for Callout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let v = if n.starts_with(':') {
                    v.as_str()
                } else {
                    "[redacted]"
                };
                (n.as_str(), v)
            })
            .collect();
        f.debug_struct("Callout")
            .field("cluster", &self.cluster)
            .field("headers", &headers)
            .field("body_bytes", &self.body.as_ref().map(Vec::len))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for RefreshJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshJob([redacted])")
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Code(_) => "Pending::Code([redacted])",
            Self::CodeJwks(..) => "Pending::CodeJwks([redacted])",
            Self::Refresh(_) => "Pending::Refresh([redacted])",
            Self::RefreshJwks(..) => "Pending::RefreshJwks([redacted])",
            Self::LogoutJwks(_) => "Pending::LogoutJwks([redacted])",
        })
    }
}

impl Callout {
    /// A GET of an IdP document.
    pub fn get(cfg: &Config, url: &WebUrl) -> Callout {
        Callout {
            cluster: cfg.cluster_for(url),
            headers: request_line(
                "GET",
                url,
                vec![("accept".into(), "application/json".into())],
            ),
            body: None,
            timeout: cfg.callout_timeout,
        }
    }

    fn post_form(cfg: &Config, url: &WebUrl, form: token::FormRequest) -> Callout {
        Callout {
            cluster: cfg.cluster_for(url),
            headers: request_line("POST", url, form.headers),
            body: Some(form.body.into_bytes()),
            timeout: cfg.callout_timeout,
        }
    }
}

fn request_line(
    method: &str,
    url: &WebUrl,
    mut headers: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut out = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), url.path_and_query().to_string()),
        (":authority".to_string(), url.authority().to_string()),
        (":scheme".to_string(), url.scheme().to_string()),
    ];
    out.append(&mut headers);
    out
}

/// Decides what to do with a request.
pub fn on_request(cfg: &Config, state: &mut State, env: &mut Env, h: &dyn Headers) -> Step {
    let Some(target) = h.path() else {
        return text(400, "Bad request: no path.", None);
    };
    let path = paths::path_only(&target);
    if path == cfg.callback_path {
        return callback(cfg, state, env, h, &target);
    }
    if path == cfg.login_path {
        return login(cfg, state, env, h, &target);
    }
    if path == cfg.logout_path {
        return logout(cfg, state, h, env.now);
    }
    if cfg.backchannel_logout_path.as_deref() == Some(path) {
        return if h.get("upgrade").is_some() {
            // Its headers go on while the body is read, and an upgrade would hand the connection to the
            // app (found by a black-box test: a POST with `Upgrade: websocket` got the app's `101` and a
            // WebSocket, anonymously). No IdP asks for one.
            logout_refused(400, "invalid_request", "an upgrade request".into())
        } else if h.get(":method").as_deref() == Some("POST") {
            Step::ReadBody
        } else {
            method_not_allowed(
                "Method not allowed: the IdP posts logout tokens here.",
                "POST",
            )
        };
    }

    // Asked of in several ways below, its path's readings worked out once.
    let mut target = paths::Target::new(&target);
    let cookie = h.cookie();
    // The session's cookies in the header, to clear where its session does not open or is over.
    let mut present = 0;
    if let Some(header) = cookie.as_deref() {
        let (scan, hit) = scan_session(cfg, state, header);
        present = scan.names;
        if let Some((sealed, cached)) =
            open_scanned(cfg, state, header, scan.session, scan.more, hit, env.now)
            && let Some(step) = with_session(
                cfg,
                state,
                env,
                h,
                &mut target,
                header,
                cfg.strip_other_sites(None, Some(scan.stripped)).flatten(),
                &sealed,
                cached,
            )
        {
            return step;
        }
    }
    without_session(
        cfg,
        state,
        h,
        &mut target,
        cookie.as_deref(),
        present,
        env.now,
    )
}

/// The session `scan_session` found in `header` (`hit`: cached), opened, or one of this site's that comes
/// after it (`shadowed`), where the scan saw `more` cookies of its names than one session's.
#[inline(always)]
fn open_scanned<'a>(
    cfg: &Config,
    state: &mut State,
    header: &str,
    session: Result<Option<Cow<'a, str>>, session::ChunkError>,
    more: bool,
    hit: Option<Rc<Cached>>,
    now: u64,
) -> Option<(Cow<'a, str>, Rc<Cached>)> {
    let opened = match session {
        Ok(Some(sealed)) => match hit.or_else(|| open_fresh(cfg, state, &sealed, now)) {
            Some(cached) => Some((sealed, cached)),
            None => shadowed(cfg, state, header, more, now),
        },
        Ok(None) => None,
        Err(_) => shadowed(cfg, state, header, more, now),
    };
    // A session of this site came after one that did not open (another gateway's): nobody is sent to
    // log in, nothing to count (`State::unopened`).
    state.unopened &= opened.is_none();
    opened
}

/// Session `i` of `name` in `header`, for `i` up to `SHADOWED + 1`: the `i`th of the name (the first is the
/// 0th; see `session::join_shadowed`), and last the first with the last of each of its chunks.
#[inline(never)]
fn session_at(header: &str, name: &str, i: usize) -> Result<Option<String>, session::ChunkError> {
    let (skip, last) = if i > SHADOWED { (0, true) } else { (i, false) };
    session::join_shadowed(header, name, skip, last)
}

/// How many sessions of this site's name that come after one that does not open are tried.
const SHADOWED: usize = 3;

/// The next session of `name` in `header` from session `*i` on ([`session_at`]), as sealed, with `*i` moved
/// past it; `None` when none is left. A session whose chunks do not join is passed over. Where there is
/// no `i`th session there is no later one: only the reading by the last chunks is left, and without a
/// first session, not even that (found in review: a `/logout` with 57 KB of other cookies read them all
/// five times over, 3.8 ms of a worker's time; so did a request whose session did not open).
fn next_session(header: &str, name: &str, i: &mut usize) -> Option<String> {
    while *i <= SHADOWED + 1 {
        let at = *i;
        *i += 1;
        match session_at(header, name, at) {
            Ok(Some(sealed)) => return Some(sealed),
            Ok(None) if at == 0 => *i = SHADOWED + 2,
            Ok(None) => *i = (*i).max(SHADOWED + 1),
            Err(_) => {}
        }
    }
    None
}

/// A session of this site that comes after one of its name that does not open (see
/// [`session::join_shadowed`]). Found in review: with a session of another gateway's first (production's
/// `Domain` cookie of the default name, seen by staging), every request of a logged-in user was
/// refused, and each login ended in the same place: a login loop.
#[cold]
#[inline(never)]
fn shadowed<'a>(
    cfg: &Config,
    state: &mut State,
    header: &str,
    more: bool,
    now: u64,
) -> Option<(Cow<'a, str>, Rc<Cached>)> {
    // Only where more came: found in review, a cookie that did not open had the header read twice more
    // for sessions after it that could not be there (with 57 KB of other cookies, ten times a logged-in
    // request's work).
    if !more {
        return None;
    }
    let mut i = 1;
    while let Some(sealed) = next_session(header, &cfg.cookie_name, &mut i) {
        if let Some(cached) = state
            .cache
            .get(&sealed)
            .or_else(|| open_fresh(cfg, state, &sealed, now))
        {
            return Some((Cow::Owned(sealed), cached));
        }
    }
    None
}

/// This site's cookies in `header`, and the cached session the first of them names, if cached.
#[inline(always)]
fn scan_session<'a>(
    cfg: &Config,
    state: &State,
    header: &'a str,
) -> (session::CookieScan<'a>, Option<Rc<Cached>>) {
    let (scan, hit) = session::scan_cached(
        header,
        &cfg.cookie_name,
        |n| cfg.is_own_cookie(n),
        &state.cache.map,
    );
    (scan, hit.cloned())
}

/// The session of this site `cookie_header` carries, if it opens (valid or not: the request it is sent on
/// decides that).
#[inline(never)]
fn opened(cfg: &Config, state: &mut State, cookie_header: &str, now: u64) -> Option<Rc<Cached>> {
    let (scan, hit) = scan_session(cfg, state, cookie_header);
    open_scanned(cfg, state, cookie_header, scan.session, scan.more, hit, now).map(|(_, c)| c)
}

/// How long after a login a `/login` goes on to `rd` rather than log in again (see `login`).
const RELOGIN_AFTER: u64 = 30;

/// A cookie this worker has not seen: decrypted, decoded and cached. Out of line: the per-request function
/// stays small, and V8 compiles (and keeps the memory for) one function at a time.
#[inline(never)]
fn open_fresh(cfg: &Config, state: &mut State, sealed: &str, now: u64) -> Option<Rc<Cached>> {
    let Some(session) = cfg
        .keys
        .open(&cfg.cookie_name, sealed)
        .ok()
        .and_then(|plain| Session::decode(&plain).ok())
    else {
        state.unopened = true;
        return None;
    };
    // Another plugin (another IdP client) may share the cookie keys and name: its sessions are not ours.
    if !issued_to(cfg, &session.id_token) {
        return None;
    }
    let cached = Rc::new(cached_session(cfg, session, Vec::new(), now));
    state.cache.insert(sealed.to_string(), cached.clone(), now);
    Some(cached)
}

/// True when the ID token names this issuer and this client. It was verified before it was sealed, so the
/// payload is read without a signature check.
fn issued_to(cfg: &Config, id_token: &Secret) -> bool {
    let Some(claims) = token_payload(id_token) else {
        return false;
    };
    let ours = |v: &json::Value| v.as_str() == Some(cfg.client_id.as_str());
    let aud = match claims.get("aud") {
        Some(json::Value::Array(list)) => list.iter().any(ours),
        Some(v) => ours(v),
        None => false,
    };
    aud && claims.get("iss").and_then(|v| v.as_str()) == Some(cfg.issuer.as_str())
}

fn cached_session(
    cfg: &Config,
    mut session: Session,
    renewed_cookies: Vec<String>,
    now: u64,
) -> Cached {
    // A session sealed where the ID token went upstream may hold no access token (one went on only with
    // `access_token_header`): where the access token goes up now, it renews at once, as expired (no ID
    // token in its place while the IdP is down; without a refresh token, a new login). Found by a
    // black-box test: after such a change of the configuration the ID token went up as the access token
    // until the session renewed, up to a token's life later. (Not for `access_token_header`, which an
    // IdP may leave without a value for good: Azure AD B2C answers without an access token; found in
    // review, every request renewed.)
    if session.access_token.is_none() && cfg.forward_token == ForwardToken::AccessToken {
        session.token_expires_at = 0;
    }
    let (claims, sid, iat, exp) = token_facts(cfg, &session.id_token);
    // Where the ID token goes upstream, the session's token expires no later than it: a session sealed
    // where the access token went up holds that one's expiry, later than the ID token kept from its
    // login (found by a black-box test: after a change from `forward_token: access_token` the expired ID
    // token went up until the access token's expiry).
    if cfg.forward_token == ForwardToken::IdToken && exp > 0 {
        session.token_expires_at = session.token_expires_at.min(exp);
    }
    let token = match cfg.forward_token {
        ForwardToken::IdToken => &session.id_token,
        ForwardToken::AccessToken => session.access_token.as_ref().unwrap_or(&session.id_token),
    };
    let bearer = Rc::new(Secret::new(format!("Bearer {}", token.expose())));
    let sid = sid.or_else(|| session.login_sid.clone());
    // A margin as long as the token's life would renew on every request: at most half of that life (the
    // forwarded token's; with `access_token_header`, until the first of the two tokens is due; unknown
    // without an `iat`). When the ID token goes upstream, the session's expiry is that token's `exp`: the
    // later of the two counts, so a session sealed with an earlier expiry still has the token's life.
    let (due, issued) = match cfg.forward_token {
        ForwardToken::IdToken if !cfg.passes_access_token() => {
            (exp.max(session.token_expires_at), iat)
        }
        // The access token's life, from its own `iat` when it is a JWT that has one. Found in review: a
        // refresh that brings no new ID token keeps the login's, whose `iat` made the life grow with each
        // refresh until the margin was all of it, and every request renewed. An opaque one's is counted
        // from now at the latest (what is left of it when this worker first sees the cookie, which is
        // soon after it was made): the same with such tokens (found by a black-box test).
        _ => (
            session.token_expires_at,
            session
                .access_token
                .as_ref()
                .and_then(token_payload)
                .and_then(|c| c.get("iat").and_then(json::Value::as_number)?.floor_u64())
                .map_or(iat.max(now), |a| a.max(iat)),
        ),
    };
    let life = due.saturating_sub(issued);
    let refresh_margin = if session.renew_at_expiry {
        0
    } else {
        cfg.refresh_margin.min(life / 2)
    };
    let identity = Rc::new(
        cfg.identity_headers
            .iter()
            .map(|(h, c)| {
                let value = match c.as_str() {
                    crate::config::ACCESS_TOKEN => session.access_token.clone(),
                    crate::config::STRIPPED => None,
                    c => claims
                        .get(c)
                        .and_then(claims::header_value)
                        .map(Secret::new),
                };
                (h.clone(), value)
            })
            .collect(),
    );
    let logout_keys = logout_keys(&session);
    let made_at = session.made_at();
    Cached {
        made_at,
        session,
        bearer,
        renewed_cookies,
        refresh_handed_on: false,
        identity,
        claims,
        sid,
        iat,
        logout_keys,
        refresh_margin,
        over: Cell::new(false),
    }
}

/// The session's login, as the list of ended sessions names it; for a session of an earlier build, its
/// ID token too, as that build names it (and, when it cannot renew, that is its login).
fn logout_keys(session: &Session) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if session.login_id.is_none() {
        keys.push(crate::revocation::token_key(session.id_token.expose()));
    }
    if let Some(id) = session.login_id() {
        keys.push(crate::revocation::login_key(&session.sub, id));
    }
    keys
}

/// The logged-in path. `None` when the session has ended and the request is to be treated as anonymous.
#[allow(clippy::too_many_arguments)]
fn with_session(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    h: &dyn Headers,
    target: &mut paths::Target<'_>,
    header: &str,
    stripped: Option<String>,
    sealed: &str,
    cached: Rc<Cached>,
) -> Option<Step> {
    let now = env.now;
    let s = &cached.session;
    if cached.over.get() {
        return None;
    }
    if ended(cfg, state, &cached, now) {
        state.cache.remove(sealed);
        return None;
    }
    let cookie = Some(stripped);
    if now.saturating_add(cached.refresh_margin) < s.token_expires_at {
        return Some(forward_session(cfg, h, &cached, cookie, target));
    }
    let Some(refresh_token) = s.refresh_token.clone() else {
        // No way to renew: still good until the token itself expires, then anonymous.
        if now < s.token_expires_at {
            return Some(forward_session(cfg, h, &cached, cookie, target));
        }
        state.cache.remove(sealed);
        return None;
    };
    // A bypass path or a client's own bearer token passes without a session: no renewal for it (an
    // outage would answer it 503). The token goes on while valid, then the request passes as anonymous;
    // the next request that needs the session renews it.
    let anonymous = anonymous(cfg, h, target);
    if matches!(anonymous, Anonymous::Pass(_)) {
        return (now < s.token_expires_at)
            .then(|| forward_session(cfg, h, &cached, cookie, target));
    }
    // The new cookie holds this session's tokens and only a new refresh token: renewing here too would
    // spend that twice (an IdP that rotates them then ends the session). The token goes on while valid;
    // then, for requests that were on their way, 503 with the new cookie, whose next request renews. A
    // client that never takes the new cookie (a fixed `Cookie` header) renews as before after that.
    if cached.refresh_handed_on && now < s.token_expires_at.saturating_add(crate::renewal::GRACE) {
        if now < s.token_expires_at {
            return Some(forward_session(cfg, h, &cached, cookie, target));
        }
        // (Found by a review of what the pages say: a browser's navigation here got a `503` that said
        // the session "was renewed", where `adopt_renewal` sent it round again.)
        return Some(replaced(
            anonymous,
            target.text,
            cached.renewed_cookies.clone(),
        ));
    }
    let Some(provider) = state.provider.ready() else {
        if now < s.token_expires_at {
            return Some(forward_session(cfg, h, &cached, cookie, target));
        }
        return Some(not_ready(
            state,
            matches!(anonymous, Anonymous::Api),
            true,
            now,
        ));
    };
    let scope = cfg.scope_on_refresh.then_some(cfg.scopes.as_str());
    let form = token::refresh_request(
        refresh_token.expose(),
        scope,
        &cfg.client_id,
        &cfg.client_secret,
        cfg.client_auth,
    );
    let mut call = Callout::post_form(cfg, &provider.meta.token_endpoint, form);
    // The request waits `callout_timeout` (the adapter lets it go on then, `Http::give_up`); the call
    // goes on twice as long, still within the renewal's claim (twice and 2 s): an answer that comes late
    // is kept for the session's next request (found by a black-box test: Envoy gave the call up, the IdP
    // had made the renewal and, rotating refresh tokens, refused the session's next one).
    call.timeout = call.timeout.saturating_mul(2);
    Some(Step::Call(
        call,
        Box::new(Pending::Refresh(RefreshJob {
            cache_key: sealed.to_string(),
            session: cached,
            anonymous,
            target: target.text.into(),
            holding_page: anonymous.holding_page(h).map(String::into_boxed_str),
            cookie,
            present_chunks: session::chunk_names(&cfg.cookie_name, header),
            asked_at: u32::try_from(now).unwrap_or(u32::MAX),
        })),
    ))
}

/// True when the session is over: its `expires_at` passed (`session_lifetime`, or without a refresh token
/// the token's own expiry), or a logout (back-channel, or `/logout` on another worker) ended it. Asked when a request comes, when a renewal
/// it waited for completes, and of another request's renewal before it is handed on: found in review, a
/// renewal that completed after either still forwarded the request it was made for.
#[inline(always)]
fn ended(cfg: &Config, state: &State, s: &Cached, now: u64) -> bool {
    outlived(cfg, s, now)
        || (!state.revoked.is_empty()
            && state
                .revoked
                .is_revoked(s.sid.as_deref(), &s.session.sub, s.iat, &s.logout_keys))
}

/// Slack for the clocks of other gateways in [`outlived`].
pub const LIFETIME_SLACK: u64 = 60;

/// How long an ended login is kept: as long as the longest of its client's sessions may live
/// ([`outlived`]'s slack included), so that it outlasts every session it ends.
fn logout_kept(cfg: &Config) -> u64 {
    cfg.logout_lifetime + LIFETIME_SLACK
}

/// The session's lifetime has run out, or the `session_lifetime` configured now (and a minute for the
/// clocks of other gateways) has run out since its login was made: it was made under a longer one,
/// before a change lowered it or at a site of the same cookie name with a longer one. So the ended
/// logins, kept that long, outlast every session they end (found by a black-box test: after
/// `session_lifetime` went from 8 h to 60 s, a session made before lived on for hours, and one a
/// back-channel logout had ended opened again once the logout was forgotten, 60 s later). Sessions of
/// the builds before, whose login id does not say when it was made, keep their own end.
fn outlived(cfg: &Config, s: &Cached, now: u64) -> bool {
    now >= s.session.expires_at
        || s.made_at
            .is_some_and(|m| now >= m.saturating_add(cfg.session_lifetime + LIFETIME_SLACK))
}

/// The answer for a renewal's request whose session ended while it waited ([`ended`]): as without a
/// session, its cookie cleared. Out of line: for renewals, not the per-request path.
#[inline(never)]
fn ended_meanwhile(cfg: &Config, state: &mut State, job: &RefreshJob, now: u64) -> Option<Step> {
    ended(cfg, state, &job.session, now).then(|| {
        let why = if outlived(cfg, &job.session, now) {
            "the session's lifetime ran out while it was renewed"
        } else {
            "a logout ended the session while it was renewed"
        };
        session_over(cfg, state, job, now, why.into())
    })
}

/// A logged-in request goes upstream with its token and identity headers, if the claim rules let it.
fn forward_session(
    cfg: &Config,
    h: &dyn Headers,
    cached: &Cached,
    cookie: Option<Option<String>>,
    target: &mut paths::Target<'_>,
) -> Step {
    // A client's own `Authorization` on a bypass path (an app's `Basic` login there) stays, as without
    // a session: the cookie goes to every path, and replacing it locked the app's users out (found by a
    // black-box test). (Asked of the header first: its absence is a bit of the block, not a walk.)
    if h.get("authorization").is_some() && paths::is_bypass(&cfg.bypass_paths, target) {
        return Step::Forward(Forward {
            cookie,
            set_cookies: cached.renewed_cookies.clone(),
            identity: strip_identity(cfg),
            metric: Some(Metric::Bypass),
            ..Default::default()
        });
    }
    if denied(cfg, cached, target) {
        return forbidden(cfg, is_browser(h), cached);
    }
    let f = Forward {
        authorization: Some(cached.bearer.clone()),
        cookie,
        set_cookies: cached.renewed_cookies.clone(),
        identity: Some(cached.identity.clone()),
        metric: Some(Metric::SessionForwarded),
    };
    if cfg.userinfo_path.is_none() {
        return Step::Forward(f);
    }
    session_step(cfg, target.text, cached, f)
}

/// The JSON names `userinfo_path` answers with (oauth2-proxy's), the claims they are read from, and
/// whether the name is there without its claim (as an empty string: oauth2-proxy always sends `user` and
/// `email`, and a page's script may read them without a check).
pub const USERINFO_CLAIMS: [(&str, &str, bool); 4] = [
    ("user", "sub", true),
    ("email", "email", true),
    ("groups", "groups", false),
    ("preferredUsername", "preferred_username", false),
];

/// A logged-in request's way on: at `userinfo_path`, the session's identity as JSON, with any renewed
/// cookie, in place of going upstream; elsewhere `f`.
#[inline(never)]
fn session_step(cfg: &Config, target: &str, s: &Cached, f: Forward) -> Step {
    match &cfg.userinfo_path {
        Some(p) if paths::path_only(target) == p => userinfo(&s.claims, f),
        _ => Step::Forward(f),
    }
}

/// `{"user": …, "email": …, "groups": […], "preferredUsername": …}` from the session's ID token, as
/// oauth2-proxy's `/oauth2/userinfo` answers (`user` and `email` empty, the others left out, where the
/// token lacks the claim or the IdP has not verified the email), for a page's script that shows who is
/// logged in. Counted as `f` would be.
#[cold]
#[inline(never)]
fn userinfo(claims: &json::Object, f: Forward) -> Step {
    let mut body = String::from("{");
    for (name, claim, always) in USERINFO_CLAIMS {
        let list = claim == "groups";
        let mut items: Vec<&str> = Vec::new();
        // Plain loops: iterator chains here cost the module a kilobyte.
        match claims.get(claim) {
            Some(json::Value::String(s)) => items.push(s),
            Some(json::Value::Array(a)) if list => {
                for v in a {
                    if let Some(s) = v.as_str() {
                        items.push(s);
                    }
                }
            }
            // Zitadel's roles: an object of objects, whose keys are the items.
            Some(json::Value::Object(o)) if list && claims::keyed(o) => {
                for k in o.keys() {
                    items.push(k);
                }
            }
            _ if always => items.push(""),
            _ => continue,
        }
        if body.len() > 1 {
            body.push(',');
        }
        // Writing to a String cannot fail.
        let _ = json::write_string(&mut body, name);
        body.push(':');
        if list {
            body.push('[');
        }
        for (i, s) in items.into_iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let _ = json::write_string(&mut body, s);
        }
        if list {
            body.push(']');
        }
    }
    body.push('}');
    let reply = Reply {
        status: 200,
        headers: vec![
            ("cache-control", "no-store".into()),
            ("content-type", "application/json".into()),
        ],
        body: body.into(),
        metric: f.metric,
        detail: None,
        warn: false,
    };
    with_cookies(Step::Respond(reply), f.set_cookies)
}

/// True when a claim rule covers the path and the session's claims fail it, in any reading of the path
/// ([`paths::readings`]): decoded (`/public/..%2Fadmin` is `/admin` to an app that decodes), literal
/// (`/admin/..%2Fpublic` is the `/admin/` handler to one that does not), with `..;` as `..` or as a plain
/// segment (`/admin/..;/public` is `/public` to Tomcat, a path under `/admin` to Envoy's router), with empty
/// segments merged or kept (`/x//../admin` is `/x/admin` or `/admin`), and each lower-cased (`/ADMIN` to a
/// case-insensitive app); as it came, unresolved: an Envoy that does not normalize paths routes
/// `/admin/../x` by the `/admin` prefix; and decoded without resolving `..`
/// ([`paths::Readings::unresolved`]: `/admin%2Fx%2F..%2F..%2Fy` to an app that decodes `%2F` and leaves `..`
/// to its `/admin/<path>` handler). A path that does not decode (bad escapes) reads differently to
/// every app: there each rule applies.
fn denied(cfg: &Config, s: &Cached, target: &mut paths::Target<'_>) -> bool {
    denied_to(cfg, &s.claims, target)
}

/// [`denied`] for a token's `claims`.
fn denied_to(cfg: &Config, claims: &json::Object, target: &mut paths::Target<'_>) -> bool {
    if cfg.access.is_empty() {
        return false;
    }
    // A bypass path is open to anyone: refusing it to a logged-in user would only make them drop the cookie.
    let text = target.text;
    let readings = target.readings();
    if let Some(r) = readings
        && paths::bypass_in(&cfg.bypass_paths, text, r)
    {
        return false;
    }
    // A path that does not decode, or one with a dot segment ([`paths::Readings::dotted`]): every rule.
    let every = || cfg.access.iter().any(|a| !a.rule.allows(claims));
    let Some(readings) = readings.filter(|r| !r.dotted()) else {
        return every();
    };
    if refused_in(cfg, claims, text, readings) {
        return true;
    }
    if readings.plain() {
        return false;
    }
    // And what follows the host where the path, as it came or decoded, starts with two slashes: a URL
    // parser reads the first segment after them as a host ([`paths::past_authority`]), which a `\` ends
    // to some parsers and not to others. Each such rest once: the four are often one (found in review:
    // worked out for each, a logged-in request on a long path cost the readings of five paths).
    let (raw, decoded) = (Some(paths::path_only(text)), readings.decoded());
    let mut seen = [None; 4];
    for (i, (p, backslash)) in [(raw, true), (raw, false), (decoded, true), (decoded, false)]
        .into_iter()
        .enumerate()
    {
        let rest = p.and_then(|p| paths::past_authority(p, backslash));
        if seen.contains(&rest) {
            continue;
        }
        seen[i] = rest;
        if let Some(rest) = rest {
            match paths::readings(rest).filter(|r| !r.dotted()) {
                None => return every(),
                Some(r) if refused_in(cfg, claims, rest, &r) => return true,
                Some(_) => {}
            }
        }
    }
    false
}

/// Whether a claim rule covers one of `readings` of `target` (and the path as it came, and decoded
/// without resolving) and `claims` fail it.
fn refused_in(
    cfg: &Config,
    claims: &json::Object,
    target: &str,
    readings: &paths::Readings<'_>,
) -> bool {
    // Each reading as written and without regard to case: a rule for `/Admin` covers `/admin` and
    // `/ADMIN` for a case-insensitive app.
    // A plain path's one reading is the path as it came. Another's also as it came, and decoded without
    // resolving `..` (found in review: `/admin%2Fx%2F..%2F..%2Fy` was read as `/y` only, and an app
    // that decodes `%2F` and leaves `..` to its handler serves it under `/admin`).
    let raw = (!readings.plain()).then(|| paths::path_only(target));
    let unresolved = readings.unresolved();
    let unresolved = unresolved.iter().flatten().map(|p| &**p);
    let refused = |p: &str, any_case| {
        claims::rule_for(&cfg.access, p, any_case).is_some_and(|r| !r.allows(claims))
    };
    readings
        .iter()
        .chain(raw)
        .chain(unresolved)
        .any(|p| refused(p, false) || refused(&paths::fold_ascii_lookalikes(p), true))
}

/// A client's own bearer token on a path that is a bypass path only as text (`/healthz/..%2Fadmin`):
/// refused `400`. The gateway's policy exempts the bypass paths by their text, so it would not judge the
/// token's issuer and audience, and jwt_authn accepts a token of any issuer the gateway's
/// RequestAuthentications name: found in review, such a token of another issuer reached an app that
/// decodes `%2F` as `/admin`. (Without a token, such a path is no bypass path to the filter either.)
#[inline(never)]
fn bearer_on_text_bypass(cfg: &Config, target: &mut paths::Target<'_>) -> Option<Step> {
    paths::bypass_in_text_only(&cfg.bypass_paths, target).then(|| {
        let why =
            "the path is under a bypass path only as written (an encoded / or ..): send it decoded";
        bearer_reply(400, "invalid_request", Some(why))
    })
}

/// The filter's answer to a bearer request it refuses (RFC 6750 3.1): `401` says the token is invalid in
/// `WWW-Authenticate`, `403` is counted as forbidden, the others as unauthorized.
fn bearer_reply(status: u16, error: &str, description: Option<&str>) -> Step {
    let mut step = json_error(status, error);
    if let Step::Respond(r) = &mut step {
        if let Some(d) = description {
            r.body = json::object_of_strings(&[("error", error), ("error_description", d)]).into();
        }
        r.metric = Some(if status == 403 {
            Metric::Forbidden
        } else {
            Metric::Unauthorized
        });
        // RFC 6750 3 and 3.1: each refusal of a bearer token says why in its challenge (found in a
        // conformance review: the claim rule's `403` and the text-only bypass path's `400` had none).
        let code = match status {
            401 => "invalid_token",
            403 => "insufficient_scope",
            _ => error,
        };
        r.headers.push((
            "www-authenticate",
            format!("Bearer error=\"{code}\"").into(),
        ));
    }
    step
}

/// A client's own bearer token on a path a claim rule covers: its signature checked with the IdP's keys,
/// its `iss` and `exp`, and its claims judged by the rules; `None` lets it pass. Its audience is left to
/// jwt_authn, which judges every bearer after this: the check here only refuses, so it needs genuine
/// claims, not the audience (an access token for an API, with `forward_token: access_token`, has
/// another). Found in review: such requests went on unjudged, and jwt_authn and the policy check only
/// issuer and audience, so a user the rules refuse reached the path with their own ID token (which
/// `/logout` hands back in its redirect, and the app receives).
#[cold]
#[inline(never)]
fn bearer_refused(
    cfg: &Config,
    state: &State,
    h: &dyn Headers,
    target: &mut paths::Target<'_>,
    now: u64,
) -> Option<Step> {
    // Where no rule would refuse a token without claims (or there are no rules), none covers the path:
    // jwt_authn judges alone.
    if !denied_to(cfg, &json::Object::new(), target) {
        return None;
    }
    let Some(provider) = state.provider.ready() else {
        return Some(not_ready(state, true, false, now));
    };
    let header = h.get("authorization")?;
    let token = header.strip_prefix("Bearer ").unwrap_or_default().trim();
    let refused = |status: u16, error: &str| Some(bearer_reply(status, error, None));
    let claims = id_token::verify_signature(token, &provider.jwks, id_token::Kind::Bearer)
        .ok()
        .filter(|c| {
            c.get("iss").and_then(json::Value::as_str) == Some(cfg.issuer.as_str())
                && id_token::check_times(c, now, cfg.clock_leeway).is_ok()
        });
    // Read as a session's claims are: an unverified address names no one (found in review: a bearer's
    // passed the rule a session's did not).
    let claims = claims.map(|mut c| {
        if unverified_email(&c) {
            c.remove("email");
        }
        c
    });
    match claims {
        Some(c) if denied_to(cfg, &c, target) => refused(403, "forbidden"),
        Some(_) => None,
        None => refused(401, "invalid_token"),
    }
}

/// 403 for a logged-in user the claim rules refuse: says who they are and offers logout, never a login loop.
#[inline(never)]
fn forbidden(cfg: &Config, browser: bool, s: &Cached) -> Step {
    let who = ["preferred_username", "email"]
        .iter()
        // (A blank name names nobody: found by a black-box test, "logged in as <b>   </b>".)
        .find_map(|c| {
            let name = s.claims.get(c).and_then(|v| v.as_str());
            name.filter(|n| !n.trim().is_empty())
        })
        .unwrap_or(&s.session.sub);
    let (content_type, body) = if browser {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><title>Access denied</title><h1>Access denied</h1><p>You are logged in as <b>{}</b>, \
                 who may not open this page.</p><p><a href=\"{}\">Log out</a> to use another account.</p>\n",
                html_escape(who),
                cfg.logout_path
            ),
        )
    } else {
        (
            "application/json",
            json::object_of_strings(&[
                ("error", "forbidden"),
                ("logout", &cfg.logout_path),
                ("user", who),
            ]),
        )
    };
    Step::Respond(Reply {
        status: 403,
        headers: vec![
            ("content-type", content_type.into()),
            ("cache-control", "no-store".into()),
        ],
        body: body.into(),
        metric: Some(Metric::Forbidden),
        detail: None,
        warn: false,
    })
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a request without a valid session is answered.
#[derive(Debug, Clone, Copy)]
enum Anonymous {
    /// Forwarded without identity: a bypass path or CORS preflight, or a client's own bearer (counted so).
    Pass(Metric),
    /// A browser: to the login.
    Login,
    /// A browser's navigation inside a frame (an embedded dashboard panel): a page whose link logs in
    /// at the top level. IdPs' login pages refuse to be framed, so a redirect would leave it blank.
    Frame,
    /// A form posted by a browser: a page that says so; inside a frame (`framed`), its link logs in in the
    /// whole window, as [`Anonymous::Frame`]'s does (found by a black-box test: a framed form's page logged
    /// in inside the frame, where the IdP's page refuses to show).
    Page { framed: bool },
    /// An API client: 401.
    Api,
}

fn anonymous(cfg: &Config, h: &dyn Headers, target: &mut paths::Target<'_>) -> Anonymous {
    if paths::is_bypass(&cfg.bypass_paths, target) || (cfg.pass_cors_preflight && is_preflight(h)) {
        Anonymous::Pass(Metric::Bypass)
    } else if h.get("authorization").is_some_and(|a| is_bearer(&a)) {
        // An API client with its own token: jwt_authn judges it.
        Anonymous::Pass(Metric::BearerPassthrough)
    } else if is_browser(h) {
        if in_frame(h) {
            Anonymous::Frame
        } else {
            Anonymous::Login
        }
    } else if is_form_navigation(h) {
        Anonymous::Page {
            framed: in_frame(h),
        }
    } else {
        Anonymous::Api
    }
}

/// No valid session: bypass, a client's own bearer, a login redirect, or 401.
#[inline(never)]
fn without_session(
    cfg: &Config,
    state: &State,
    h: &dyn Headers,
    target: &mut paths::Target<'_>,
    cookie: Option<&str>,
    present: u32,
    now: u64,
) -> Step {
    let how = anonymous(cfg, h, target);
    if let Anonymous::Pass(metric) = how {
        if metric == Metric::BearerPassthrough
            && let Some(refused) = bearer_on_text_bypass(cfg, target)
                .or_else(|| bearer_refused(cfg, state, h, target, now))
        {
            return refused;
        }
        // Only the pass-through answers forward the header, and only ours need taking out of it.
        return Step::Forward(Forward {
            cookie: cookie.and_then(|c| cfg.strip_own_cookies(c)),
            identity: strip_identity(cfg),
            metric: Some(metric),
            ..Default::default()
        });
    }
    // A cookie of the session's name (its bit 0) that does not open, or whose session is over: cleared,
    // and its chunks, named by the scan (found in review: the header read again for them cost a request
    // with 57 KB of other cookies three times a logged-in one's work).
    let clear = if present & 1 != 0 {
        clear_named(cfg, session::names_of(&cfg.cookie_name, present))
    } else {
        Vec::new()
    };
    if state.provider.ready().is_none() {
        return with_cookies(
            not_ready(state, matches!(how, Anonymous::Api), false, now),
            clear,
        );
    }
    let page = how.holding_page(h);
    let mut r = anonymous_reply(cfg, how, page.as_deref().unwrap_or(target.text));
    if matches!(how, Anonymous::Login) {
        r.metric = Some(Metric::LoginRedirect);
    }
    with_cookies(Step::Respond(r), clear)
}

impl Anonymous {
    /// The way back after a login, where it is not the request's own address: for a form posted, the
    /// page that holds it (the same origin's `Referer`), not where it posts to; for a framed page, the
    /// page of the site's own that frames it (a portal showing a dashboard), which shows it again, rather
    /// than the frame's address alone in the whole window (found by a black-box test). Another site's
    /// page is not ours to send the user to.
    fn holding_page(self, h: &dyn Headers) -> Option<String> {
        match self {
            Anonymous::Page { .. } | Anonymous::Frame => same_origin_referer(h),
            _ => None,
        }
    }
}

/// The path of the same origin's `Referer`.
fn same_origin_referer(h: &dyn Headers) -> Option<String> {
    let referer = h.get("referer")?;
    let origin = origin(h)?;
    referer
        .strip_prefix(origin.as_str())
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
}

/// The answer to a request without a session that does not pass.
fn anonymous_reply(cfg: &Config, how: Anonymous, target: &str) -> Reply {
    match how {
        Anonymous::Login => redirect_reply(login_location(cfg, target)),
        Anonymous::Page { framed } => session_ended_reply(cfg, target, framed),
        Anonymous::Frame => frame_login_reply(cfg, target),
        _ => json_401(),
    }
}

/// A browser's navigation that is not GET or HEAD: a form posted after the session ended (or before any
/// login: the page says "not logged in", found by a black-box test where it said "ended"). A redirect
/// would lose what was sent anyway (and turn it into a GET), so the user gets a page that says so, with
/// a link to log in and come back, instead of the JSON an API client gets.
fn is_form_navigation(h: &dyn Headers) -> bool {
    h.get("sec-fetch-mode").is_some_and(|m| m == "navigate") && wants_page(h)
}

fn session_ended_reply(cfg: &Config, target: &str, framed: bool) -> Reply {
    let text = "<title>Log in</title><h1>You are not logged in</h1><p>What you sent was not \
                received: log in, then send it again.</p>";
    login_link_page(cfg, target, text, if framed { TOP } else { "" })
}

/// A link's attribute that opens it in the whole window, out of any frame.
const TOP: &str = " target=\"_top\"";

/// A `401` page: `text`, then a link (with `attributes`) to log in and come back to `target`.
fn login_link_page(cfg: &Config, target: &str, text: &str, attributes: &str) -> Reply {
    // `login_location` percent-encodes the target: the link holds no quote, `<` or `&`.
    let body = format!(
        "<!doctype html>{text}<p><a href=\"{}\"{attributes}>Log in</a></p>\n",
        login_location(cfg, target)
    );
    let mut r = html_page(401, body, Some(Metric::Unauthorized));
    r.headers.push(("www-authenticate", "Bearer".into()));
    r
}

/// A framed page without a session: `401` with a link that logs in in the whole window (`target="_top"`)
/// and comes back there to `target`: the site's own page that frames it, or else the framed page.
#[cold]
#[inline(never)]
fn frame_login_reply(cfg: &Config, target: &str) -> Reply {
    let text = "<title>Log in</title><p>Log in to see this.</p>";
    login_link_page(cfg, target, text, TOP)
}

/// `405` with the methods the path takes.
fn method_not_allowed(message: &'static str, allow: &'static str) -> Step {
    let mut r = text(405, message, None);
    if let Step::Respond(r) = &mut r {
        r.headers.push(("allow", allow.into()));
    }
    r
}

/// `rd` given as an absolute URL of the request's own origin (oauth2-proxy's nginx examples build
/// `rd=$scheme://$host$request_uri`; OpenID Connect's `target_link_uri` is one): what follows the
/// [`origin`], which [`paths::safe_redirect`] then judges as any `rd` (another port, a longer host, none
/// but a path lands on `/`). Anything else as it is (found by a black-box test of a migration: such links
/// landed on `/`).
fn own_origin_stripped<'a>(rd: &'a str, h: &dyn Headers) -> &'a str {
    origin(h)
        .and_then(|o| {
            rd.get(..o.len())
                .filter(|s| s.eq_ignore_ascii_case(&o))
                .and(rd.get(o.len()..))
        })
        .unwrap_or(rd)
}

/// Where a login goes back to: `rd`, or an IdP-started login's `target_link_uri`, kept as `rd` is (or `/`);
/// and whether the page that reads the fragment has run. Out of `login`, as `to_idp`: Envoy's V8 compiles
/// every function when the plugin loads, and the memory a compile takes, which Envoy's allocator keeps,
/// grows with the function: the largest compile sets what stays.
#[inline(never)]
fn login_target(cfg: &Config, h: &dyn Headers, target: &str) -> (String, bool) {
    let (mut rd, mut target_link) = (None, None);
    let mut fragment_read = false;
    for (k, v) in form::parse(paths::query_only(target).as_bytes()) {
        match k.as_str() {
            "rd" if rd.is_none() => rd = Some(v),
            // A login the IdP starts (OpenID Connect Core 4: an app's tile in its portal).
            "target_link_uri" if target_link.is_none() => target_link = Some(v),
            FRAGMENT_READ => fragment_read = true,
            _ => {}
        }
    }
    let rd = rd
        .or(target_link)
        .map(|v| paths::safe_redirect(own_origin_stripped(&v, h)))
        // Back to one of our own endpoints would loop through the IdP (`/login`) or undo the login (`/logout`).
        .filter(|rd| {
            let p = paths::normalize(rd).unwrap_or_default();
            ![&cfg.login_path, &cfg.callback_path, &cfg.logout_path].contains(&&p)
        })
        .unwrap_or_else(|| "/".to_string());
    (rd, fragment_read)
}

/// A login's start: its state, nonce and PKCE verifier sealed in its login cookie, and the redirect to
/// the IdP's authorization endpoint. Out of `login`, as `login_target`.
#[inline(never)]
fn to_idp(
    cfg: &Config,
    h: &dyn Headers,
    provider: &Provider,
    redirect_uri: &str,
    rd: String,
    [s, n, v, seal_nonce]: [[u8; 32]; 4],
    now: u64,
) -> Step {
    let login = LoginState {
        state: Secret::new(pkce::random_token(&s)),
        nonce: Secret::new(pkce::random_token(&n)),
        verifier: Secret::new(pkce::random_token(&v)),
        rd,
        expires_at: now + LOGIN_TTL,
    };
    let cookie_name = cfg.login_cookie_name(login.state.expose());
    let sealed = cfg
        .keys
        .seal(&cookie_name, &login.encode(), nonce24(&seal_nonce));

    let mut url = provider.meta.authorization_endpoint.clone();
    let challenge = pkce::s256_challenge(login.verifier.expose());
    let values = [
        "code",
        &cfg.client_id,
        redirect_uri,
        &cfg.scopes,
        login.state.expose(),
        login.nonce.expose(),
        &challenge,
        "S256",
    ];
    for (k, v) in AUTHORIZATION_PARAMS
        .into_iter()
        .zip(values)
        .chain(cfg.authorization_params.iter().map(|(k, v)| (&**k, &**v)))
    {
        url.append_query_pair(k, v);
    }
    let mut set = stale_attempts(cfg, h, cookie_name.len() + sealed.len() + 2);
    set.push(cookies::set_cookie(
        &cookie_name,
        &sealed,
        &login_attrs(cfg),
        LOGIN_TTL,
    ));
    with_cookies(
        redirect(url.as_str().to_string(), Some(Metric::LoginStarted)),
        set,
    )
}

/// `/login`: a fresh state, nonce and PKCE verifier, sealed into a cookie of their own, then off to the IdP.
#[inline(never)]
fn login(cfg: &Config, state: &mut State, env: &mut Env, h: &dyn Headers, target: &str) -> Step {
    // A login starts from a link, a redirect or a form; no other method starts one.
    if !matches!(h.get(":method").as_deref(), Some("GET" | "HEAD" | "POST")) {
        return method_not_allowed(
            "Method not allowed: open this address to log in.",
            "GET, HEAD, POST",
        );
    }
    // A prefetch or prerender starts no login: found by a black-box test, a page's speculation rules
    // prerendered a page without a session, and the login it began left an attempt cookie the user never
    // asked for (one of the few a browser keeps, `stale_attempts`). Declined: a browser drops an answer
    // other than a `2xx`, and the user's own click on the link logs in.
    if prefetched(h) {
        return text(503, "Not prefetched: open this address to log in.", None);
    }
    let (rd, fragment_read) = login_target(cfg, h, target);
    // A session made moments ago, sent back here by the page it went on to: an app that does not take the
    // gateway's login sends its users to its own `/login`, which is this one. Another login would pass
    // through the IdP's session at once and come back here, without end (found by a black-box test: one
    // tab logged in 23 times a second, and this page's script kept the browser's cap on redirects from
    // stopping it). Not through the IdP again: on to `rd` from the page that reads the fragment (a tab whose
    // login another tab finished meanwhile), and a page that says so to a browser the app sent here (a
    // redirect back to `rd` ended a loop of redirects only at the browser's cap, and one of the app's
    // scripts, ten pages a second, not at all: found by a black-box test).
    if let Some(c) = h.cookie().and_then(|c| opened(cfg, state, &c, env.now))
        && c.session
            .made_at()
            .is_some_and(|m| env.now < m.saturating_add(RELOGIN_AFTER))
    {
        if fragment_read {
            return redirect(rd, None);
        }
        return Step::Respond(logged_in_moments_ago(&rd));
    }
    // Counted where the browser was sent here from, not again (`session_cookies_unopened`).
    state.unopened = false;
    let Some(provider) = state.provider.ready() else {
        return not_ready(state, false, false, env.now);
    };
    // Before the page that reads the fragment (found by a black-box test: a hop there, then this 400).
    let Ok(origin) = origin_to_return_to(cfg, h) else {
        return text(
            400,
            "Bad request: a login cannot finish at this host. The IdP sends logins back to the \
             gateway's redirect_uri, on another host, which does not get this host's cookies \
             (cookie_domain). Open the site at that host.",
            None,
        );
    };
    if !fragment_read
        && h.get(":method").as_deref() == Some("GET")
        && h.get("sec-fetch-mode").as_deref() == Some("navigate")
    {
        return read_fragment(cfg, &rd);
    }
    // A form another site posts here: the browser sends it none of this site's `Lax` cookies, so the
    // attempts it holds go unseen and uncapped, yet it keeps the one the answer sets (found by a
    // black-box test: thirty such posts, and every page answered `431`). It goes on as a navigation of
    // this site's own, which shows them.
    if h.get(":method").as_deref() == Some("POST") && posted_from_another_site(h) {
        return read_fragment(cfg, &rd);
    }
    let Some(redirect_uri) = redirect_uri(cfg, h) else {
        return text(400, "Bad request: invalid Host header.", None);
    };
    let rd = match origin {
        Some(o) => o + &rd,
        None => rd,
    };
    let (Some(s), Some(n), Some(v), Some(seal_nonce)) = (
        (env.random)(),
        (env.random)(),
        (env.random)(),
        (env.random)(),
    ) else {
        return text(500, "Internal error: no randomness available.", None);
    };
    to_idp(
        cfg,
        h,
        provider,
        &redirect_uri,
        rd,
        [s, n, v, seal_nonce],
        env.now,
    )
}

/// The page for a browser sent to log in again moments after it did: a link back to `rd`, not a login.
#[cold]
#[inline(never)]
fn logged_in_moments_ago(rd: &str) -> Reply {
    html_page(
        200,
        format!(
            "<!doctype html><title>Logged in</title><p>You logged in moments ago and were sent to log \
             in again: the app may not accept you. <a href=\"{}\">Back</a>\n",
            html_escape(rd)
        ),
        None,
    )
}

/// At most this many login attempts a browser keeps: starting another clears the oldest. Found by a
/// black-box test: another site could make a browser start logins in a loop, each adding a cookie of up to
/// 2.9 KB (its `rd`), until every request of the site, and the login's own callback, was too large for
/// Envoy (`431`) for the half hour the attempts last.
const MAX_LOGIN_ATTEMPTS: usize = 16;

/// And together, with the new one, at most this many bytes of cookie: with a `cookie_domain` the attempts go
/// to every host of the domain, where a server with an 8 KB limit on a header line would refuse six of the
/// longest (found in review). Two of the longest fit, and sixteen short ones (about 330 bytes each): ten
/// tabs restored at once still log in (`harness/tests/concurrency.rs`).
const MAX_LOGIN_ATTEMPT_BYTES: usize = 8 * 1024;

/// At most this many of a request's login attempts are looked at, and cleared at once: the first `/login`
/// after a cap on them leaves only this many, and no request makes thousands of lines (found in review:
/// 2,000 such cookies took 5 ms and a 227 KB answer).
const MAX_ATTEMPTS_SEEN: usize = 4 * MAX_LOGIN_ATTEMPTS;

/// The clears of the request's login attempts that a new one of `new_bytes` pushes out: the oldest (and any
/// that does not open), so that with the new one at most [`MAX_LOGIN_ATTEMPTS`] remain, of at most
/// [`MAX_LOGIN_ATTEMPT_BYTES`].
#[inline(never)]
fn stale_attempts(cfg: &Config, h: &dyn Headers, new_bytes: usize) -> Vec<String> {
    let Some(header) = h.cookie() else {
        return Vec::new();
    };
    let prefix = format!("{}_login_", cfg.cookie_name);
    // (expires_at, name, bytes)
    let mut found: Vec<(u64, &str, usize)> = Vec::new();
    for (name, value) in cookies::iter(&header) {
        if found.len() == MAX_ATTEMPTS_SEEN {
            break;
        }
        if !name.starts_with(&prefix) || found.iter().any(|f| f.1 == name) {
            continue;
        }
        let opened = cfg
            .keys
            .open(name, value)
            .ok()
            .and_then(|plain| LoginState::decode(&plain).ok());
        let bytes = name.len() + value.len() + 2;
        found.push((opened.map_or(0, |l| l.expires_at), name, bytes));
    }
    // The oldest first, one at a time (few: no sort's code in the module for them).
    let attrs = login_attrs(cfg);
    let mut clears = Vec::new();
    let mut held: usize = found.iter().map(|f| f.2).sum();
    while found.len() >= MAX_LOGIN_ATTEMPTS
        || (!found.is_empty() && held + new_bytes > MAX_LOGIN_ATTEMPT_BYTES)
    {
        // The first of the soonest to expire (a loop: `min_by_key` took 250 bytes here).
        let mut soonest: Option<(usize, u64)> = None;
        for (i, f) in found.iter().enumerate() {
            if soonest.is_none_or(|(_, t)| f.0 < t) {
                soonest = Some((i, f.0));
            }
        }
        let Some((oldest, _)) = soonest else {
            break;
        };
        let (_, name, bytes) = found.swap_remove(oldest);
        held -= bytes;
        clears.push(cookies::clear_cookie(name, &attrs));
    }
    clears
}

/// The parameter that `read_fragment`'s page adds to `/login`: the fragment, if any, is in `rd` now.
const FRAGMENT_READ: &str = "fragment_read";

/// The parameters of the authorization request the filter sets itself, in the order it sends them
/// (`authorization_params` may not name them).
pub const AUTHORIZATION_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// A browser brings the fragment of the page it asked for (`/app#/alerts`, Kibana's `#/?_g=…`) along the
/// redirects to `/login`, but never sends it, and loses it at the IdP's login form. So `/login` first
/// answers a browser with a page whose script adds the fragment to `rd` and comes back. The script is
/// fixed text: it reads the address itself, and the second `/login` checks `rd` as ever. Without
/// scripts, the page moves on without the fragment.
#[inline(never)]
fn read_fragment(cfg: &Config, rd: &str) -> Step {
    let mut next = login_location(cfg, rd);
    next.push('&');
    next.push_str(FRAGMENT_READ);
    let next = html_escape(&next);
    let body = format!(
        "<!doctype html><title>Logging in</title><script>var q=new URLSearchParams(location.search),\
         r=q.get(\"rd\")||\"/\";if(location.hash.length>1&&r.indexOf(\"#\")<0)r+=location.hash;\
         q.set(\"rd\",r);q.set(\"{FRAGMENT_READ}\",\"\");location.replace(\"{login}?\"+q)</script>\
         <noscript><meta http-equiv=\"refresh\" content=\"0;url={next}\"></noscript>\
         <p><a href=\"{next}\">Continue to the login</a></p>\n",
        // The configured path, not the address bar's: a gateway that decodes and merges slashes gives
        // this filter `/login` for `//evil.example/..%2Flogin`, a path that would leave the site.
        // `config::path` keeps quotes, `<` and `\` out of it.
        login = cfg.login_path
    );
    Step::Respond(html_page(200, body, None))
}

/// The IdP's redirect back: check state against its cookie, then exchange the code.
#[inline(never)]
fn callback(cfg: &Config, state: &mut State, env: &mut Env, h: &dyn Headers, target: &str) -> Step {
    let query = paths::query_only(target);
    if query.len() > MAX_CALLBACK_QUERY {
        return bad_callback(
            CallbackFailure::BadRequest,
            "The login response is too large.",
            Vec::new(),
        );
    }
    let mut code = None;
    let mut st = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in form::parse(query.as_bytes()) {
        let slot = match k.as_str() {
            "code" => &mut code,
            "state" => &mut st,
            "error" => &mut error,
            // Only for the log line: the first, never a reason to refuse the answer.
            "error_description" => {
                description = description.or(Some(v));
                continue;
            }
            _ => continue,
        };
        if slot.is_some() {
            return bad_callback(
                CallbackFailure::BadRequest,
                "The login response repeats a parameter.",
                Vec::new(),
            );
        }
        *slot = Some(v);
    }
    let cookie_header = h.cookie().unwrap_or_default();
    let Some(st) = st.filter(|s| s.len() == 43 && s.bytes().all(is_b64url)) else {
        return bad_callback(
            CallbackFailure::BadRequest,
            "The login response has no valid state.",
            Vec::new(),
        );
    };
    let login_cookie = cfg.login_cookie_name(&st);
    let clear = vec![cookies::clear_cookie(&login_cookie, &login_attrs(cfg))];
    if let Some(e) = error {
        return idp_error(
            cfg,
            state,
            (e, description),
            &st,
            &cookie_header,
            &login_cookie,
            clear,
        );
    }
    let Some(code) = code.filter(|c| !c.is_empty() && c.len() <= MAX_CODE) else {
        return bad_callback(
            CallbackFailure::BadRequest,
            "The login response has no code.",
            clear,
        );
    };
    let Some(sealed) = cookies::get(&cookie_header, &login_cookie) else {
        return without_login_cookie(cfg, state, env, h, &cookie_header, clear);
    };
    let login = match cfg
        .keys
        .open(&login_cookie, sealed)
        .and_then(|p| LoginState::decode(&p))
    {
        Ok(l) => l,
        Err(_) => {
            // Said in the log: found in review, a login cookie of a replica with other cookie keys
            // read as any made-up callback.
            let why = "the login cookie does not open with this gateway's cookie_keys (sealed by a \
                       gateway with other keys, or altered)";
            return error_page(
                400,
                CallbackFailure::StateMismatch,
                "This login is not valid.",
                Some(why.into()),
                clear,
                "/",
            );
        }
    };
    if !constant_time_eq(login.state.expose().as_bytes(), st.as_bytes())
        || env.now >= login.expires_at
    {
        return bad_callback(
            CallbackFailure::StateMismatch,
            "This login has expired or is not valid.",
            clear,
        );
    }
    let Some(provider) = state.provider.ready() else {
        // Keep the login cookie: the attempt can go on once the IdP has been reached (Retry-After).
        return not_ready(state, false, false, env.now);
    };
    let Some(redirect_uri) = redirect_uri(cfg, h) else {
        return bad_callback(CallbackFailure::BadRequest, "Invalid Host header.", clear);
    };
    let form = token::code_request(
        &code,
        &redirect_uri,
        login.verifier.expose(),
        &cfg.client_id,
        &cfg.client_secret,
        cfg.client_auth,
    );
    let call = Callout::post_form(cfg, &provider.meta.token_endpoint, form);
    let stale_chunks = session::chunk_names(&cfg.cookie_name, &cookie_header);
    Step::Call(
        call,
        Box::new(Pending::Code(CodeExchange {
            login,
            login_cookie,
            stale_chunks,
            asked_at: env.now,
        })),
    )
}

/// The IdP's `error` at the callback: its page, towards where the login was going when it answers
/// this browser's own login, and its log line. Out of `callback`, whose compile it would nearly double.
#[inline(never)]
fn idp_error(
    cfg: &Config,
    state: &mut State,
    (e, description): (String, Option<String>),
    st: &str,
    cookie_header: &str,
    login_cookie: &str,
    clear: Vec<String>,
) -> Step {
    let e = form::keep_ascii(&e, 64, |b| b.is_ascii_alphanumeric() || b == b'_');
    // Towards where the login was going, when this browser's login cookie is the one the IdP
    // answers (found by a black-box test: a user who pressed Cancel at the IdP started again at `/`).
    let ours = cookies::get(cookie_header, login_cookie)
        .and_then(|sealed| cfg.keys.open(login_cookie, sealed).ok())
        .and_then(|p| LoginState::decode(&p).ok())
        .filter(|l| constant_time_eq(l.state.expose().as_bytes(), st.as_bytes()));
    let warn = ours.is_some() && !USER_ERRORS.contains(&e.as_str());
    let again = ours
        .as_ref()
        .map_or_else(|| "/".into(), |l| start_again(cfg, &l.rd));
    // The page names only the errors RFC 6749 4.1.2.1 and OpenID Connect Core 3.1.2.6 define: anyone
    // can send a link to the callback, and other words there would read as the site's (found by a
    // black-box test: "Your_account_is_locked_call_support_at_…"). The log line has it all.
    let page = if IDP_ERRORS.contains(&e.as_str()) {
        format!("The identity provider did not log you in ({e}).")
    } else {
        "The identity provider did not log you in.".into()
    };
    // The IdP's reason, in the log line only (the IdP's `error_description`, cleaned as a token
    // endpoint's): often the only place that names the setting to change.
    // Withheld when it quotes this login's secrets (an IdP that echoes the request).
    let mut secrets = vec![st, cfg.client_secret.expose()];
    if let Some(l) = &ours {
        secrets.extend([l.nonce.expose(), l.verifier.expose()]);
    }
    let detail = match description
        .as_deref()
        .map(|d| crate::oidc::token::description_withholding(d, &secrets))
    {
        Some(d) if !d.is_empty() => format!("the IdP answered error={e}, \"{d}\""),
        _ => format!("the IdP answered error={e}"),
    };
    let mut step = error_page(
        400,
        CallbackFailure::IdpError,
        &page,
        Some(detail),
        clear,
        &again,
    );
    // An error that is not the user's (who cancelled, or must log in at the IdP first), answering
    // this browser's own login: the deployment's to mend (a client the IdP requires pushed or
    // signed authorization requests from, a scope it does not know), so the first on this worker
    // goes at warning, where istio-proxy logs by default (found by a black-box test: every user
    // got this page and the log said nothing at that level).
    if warn
        && !state.told_idp_error
        && let Step::Respond(r) = &mut step
    {
        r.warn = true;
        state.told_idp_error = true;
    }
    step
}

/// A callback without its login cookie: a spent one seen again by a browser that is logged in, one
/// over plain HTTP where the cookie is `Secure`, or one this browser did not start. Out of `callback`.
#[inline(never)]
fn without_login_cookie(
    cfg: &Config,
    state: &mut State,
    env: &Env,
    h: &dyn Headers,
    cookie_header: &str,
    clear: Vec<String>,
) -> Step {
    // A callback this browser already completed, seen again (the back button through the IdP's
    // pages, a second tab): it is logged in, so on to the site rather than an error page.
    if opened(cfg, state, cookie_header, env.now).is_some() {
        return with_cookies(redirect("/".into(), None), clear);
    }
    // Browsers drop `Secure` cookies on a plain-HTTP site: then every login ends here. Not on
    // `localhost`, whose plain HTTP they trust (found by a black-box test: the demo's stale callbacks
    // blamed HTTPS).
    if cfg.cookie.secure
        && h.get(":scheme").as_deref() == Some("http")
        && !h.get(":authority").is_some_and(|a| is_loopback_name(&a))
    {
        return error_page(
            400,
            CallbackFailure::StateMismatch,
            "This login has expired or was already used, or the browser refused its Secure cookie \
             over plain HTTP (serve the site over HTTPS, or set cookie_secure to false).",
            Some("no login cookie on a plain-HTTP request, and cookie_secure is on".into()),
            clear,
            "/",
        );
    }
    bad_callback(
        CallbackFailure::StateMismatch,
        "This login has expired or was already used (or this browser does not keep this site's cookies).",
        clear,
    )
}

/// `/logout`: forget the session here, then end it at the IdP when it offers that. Sent by another
/// site (a link, a form, an image), or fetched by the browser without the user opening it (a prefetch,
/// a script), it first asks the user (`confirm_logout`).
#[inline(never)]
fn logout(cfg: &Config, state: &mut State, h: &dyn Headers, now: u64) -> Step {
    // A browser without Fetch Metadata says so by `Origin` on a POST (found by a black-box test: another
    // site's form logged out at once there), `null` included (another site makes one at will). The
    // site's own form under `Referrer-Policy: no-referrer` sends `null` too: its user gets the page that
    // asks, whose button posts with the site's origin (the page sets its own policy). A frame's post asks
    // too (found by a black-box test: a framed form posted by a page's script logged out at once).
    let another_site = posted_from_another_site(h);
    if another_site || not_opened(h) || in_frame(h) {
        return confirm_logout(cfg, h, another_site);
    }
    let header = h.cookie().unwrap_or_default();
    // The session this site set: the first of the name that opens and was issued to this client (see
    // `shadowed`, and `open_fresh`: found in review, another plugin's session of the same name and keys
    // gave its ID token to this IdP's end-session URL).
    let mut id_token = None;
    let mut i = 0;
    while let Some(sealed) = next_session(&header, &cfg.cookie_name, &mut i) {
        if let Some(s) = cfg
            .keys
            .open(&cfg.cookie_name, &sealed)
            .ok()
            .and_then(|p| Session::decode(&p).ok())
            .filter(|s| issued_to(cfg, &s.id_token))
        {
            // Its login ends here, on every worker (the adapter shares the list): a renewal still on its
            // way answers as without a session instead of setting a new cookie (found by a black-box
            // test: a page's poll that was renewing the session put it back after the logout), and so
            // does the cookie, kept or stolen, and a renewal of it done before the logout came, whose
            // cookie the browser had not stored yet (found in review); and, where the token names its
            // IdP session (`sid`), that session's earlier tokens. A later login, which the IdP may give
            // the same `sid`, stands.
            let (_, sid, iat, _) = token_facts(cfg, &s.id_token);
            let sid = sid.as_deref().or(s.login_sid.as_deref());
            let keys = logout_keys(&s);
            // The login's keys for as long as its sessions live; its IdP session's (`sid`) earlier
            // tokens and the user's, as long as any session of them can: another site of this client
            // may keep its sessions longer (found in review: by this session's end alone, that site's
            // sessions of the `sid` opened again when it came).
            let own = s.expires_at.max(now);
            let until = [own, own.max(now.saturating_add(logout_kept(cfg)))];
            // Now on the IdP's clock, as far as seen: kept by the user, the logout ends the login's
            // renewals done before it, whose tokens the IdP may have dated ahead of this gateway.
            let at = now.saturating_add_signed(state.idp_ahead.secs);
            // A login already logged out (a copy of a cookie logged out before) is recorded once: found
            // by a black-box test, each `/logout` sent again with one logged-out cookie rewrote the
            // workers' shared list, up to 20 ms of a worker's time with thousands of logouts listed.
            if !state.revoked.logged_out_before(&s.sub, iat, &keys) {
                state.revoked.end_login(&keys, sid, &s.sub, iat, at, until);
                state.ended_here = true;
            }
            id_token = Some(s.id_token);
            state.cache.remove(&sealed);
            break;
        }
    }
    let mut clear = clear_session_cookies(cfg, &header);
    // And a cookie of a second's life, set: Chromium keeps an app's `Cache-Control: no-store` pages in its
    // back/forward cache, and drops them when a cookie of theirs changes, but not for the session cookie's
    // clearing (found by a black-box test over HTTPS: after a logout, Back showed the logged-out user's
    // `no-store` page as it was; a cookie set drops it). Named as a login attempt's, it never goes upstream.
    clear.push(cookies::set_cookie(
        &cfg.login_cookie_name("out"),
        "1",
        &login_attrs(cfg),
        1,
    ));
    // The IdP's documents not loaded (a new VM's first fetch, or an IdP down since): the session ends here
    // all the same, and the user is told it may live on at the IdP; the adapter holds the request for the
    // documents first, as a login's (found by a black-box test: it went to `/` as if the IdP had no
    // end-session endpoint, and the next visit logged the user in again without a password).
    // Its keys are not needed: a worker that has the discovery document but no usable keys (the IdP
    // publishes only keys the filter refuses) still sends the user to the IdP's end-session endpoint
    // (found by a review of what the pages say: it said the IdP "could not be reached").
    let Some(meta) = state.provider.meta() else {
        let api = !is_browser(h) && !is_form_navigation(h);
        return with_cookies(idp_unreached_at_logout(api), clear);
    };
    let end_session = meta.end_session_endpoint.clone();
    let location = match end_session {
        Some(mut url) => {
            url.append_query_pair("client_id", &cfg.client_id);
            if let Some(p) = post_logout_uri(cfg, h) {
                url.append_query_pair("post_logout_redirect_uri", &p);
            }
            // `client_id` names the client (RP-Initiated Logout 1.0), but some IdPs need the ID token
            // too (Okta's end-session endpoint requires it): it goes while the URL stays within 8000
            // bytes. Web servers refuse longer request lines (8 KiB is the common bound; Entra ID
            // answers AADSTS90015), and the session here is gone by then: the user would stay logged
            // in at the IdP. A JWT needs no escaping, so its length is what it adds.
            if let Some(t) = id_token.as_ref().map(|t| t.expose()) {
                let with_hint = url.to_string().len() + "&id_token_hint=".len() + t.len();
                if with_hint <= MAX_END_SESSION_URL {
                    url.append_query_pair("id_token_hint", t);
                }
                // Entra ID's optional claim `login_hint`, taken back as `logout_hint` (RP-Initiated
                // Logout 1.0), signs the user out without asking which account (found by a review of
                // IdPs: Entra showed its account picker at every logout). Within the same bound.
                if let Some(hint) = login_hint(t) {
                    let mut with = url.clone();
                    with.append_query_pair("logout_hint", &hint);
                    if with.to_string().len() <= MAX_END_SESSION_URL {
                        url = with;
                    }
                }
            }
            url.to_string()
        }
        None => cfg
            .post_logout_redirect_uri
            .clone()
            .unwrap_or_else(|| "/".to_string()),
    };
    with_cookies(redirect(location, Some(Metric::Logout)), clear)
}

/// The longest end-session URL the ID token is sent in.
const MAX_END_SESSION_URL: usize = 8000;

/// The ID token's `login_hint` claim (Entra ID's, an opaque string, when the app registration adds it).
fn login_hint(id_token: &str) -> Option<String> {
    match payload_of(id_token)?.get("login_hint")? {
        json::Value::String(h) if !h.is_empty() => Some(h.clone()),
        _ => None,
    }
}

/// Whether the browser fetched this GET without the user opening it: a prefetch or prerender
/// ([`prefetched`]), or a request that is no navigation (`Sec-Fetch-Mode: cors` for a script's fetch, as
/// Next.js prefetches a link's page; `no-cors` for an image), or a frame's (found by a black-box test: an
/// `<iframe src=/logout>` that a page of the site's own let a user put in logged out whoever viewed it).
/// Without Fetch Metadata it is taken as opened.
fn not_opened(h: &dyn Headers) -> bool {
    matches!(h.get(":method").as_deref(), Some("GET") | Some("HEAD"))
        && (prefetched(h)
            || h.get("sec-fetch-mode").is_some_and(|m| m != "navigate")
            || in_frame(h))
}

/// Whether the browser fetched this on a guess that the user may open it: a prefetch or prerender of a
/// link shown on a page (a page's speculation rules, `<link rel=prefetch>`: `Sec-Purpose: prefetch`,
/// `prefetch;prerender`). Older browsers' prefetches say `Purpose: prefetch` (Chrome before 76) or
/// `X-Moz: prefetch` (Firefox), and Safari's previews `X-Purpose: preview`; each read without regard to
/// case (found by a black-box test). A browser keeps such an answer only if it is a `2xx`.
fn prefetched(h: &dyn Headers) -> bool {
    // Bytes compared: a `str` pattern search would bring a searcher of kilobytes into the module.
    let says = |name, word: &[u8]| {
        h.get(name).is_some_and(|p| {
            p.as_bytes()
                .windows(word.len())
                .any(|w| w.eq_ignore_ascii_case(word))
        })
    };
    let prefetch = |name| says(name, b"prefetch");
    prefetch("sec-purpose")
        || prefetch("purpose")
        || prefetch("x-moz")
        || says("x-purpose", b"preview")
}

/// Whether the browser says another site started this request (Fetch Metadata). `same-site` counts as
/// another site: a sibling subdomain may be an app the user trusts less. Without the header (clients
/// that are not browsers, browsers from before 2023) the request is taken as the user's own.
fn from_another_site(h: &dyn Headers) -> bool {
    h.get("sec-fetch-site")
        .is_some_and(|s| s != "same-origin" && s != "none")
}

/// Whether another site started this request: by `Sec-Fetch-Site` where the browser sends it; else, by
/// `Origin` (which browsers send on a POST), by host and port: behind a load balancer that ends TLS,
/// `:scheme` says `http` where the page's origin says `https`.
fn posted_from_another_site(h: &dyn Headers) -> bool {
    match h.get("sec-fetch-site") {
        Some(_) => from_another_site(h),
        // Bytes searched: `str::split_once` with a `&str` brings a two-way searcher and the panic
        // messages of slicing into the module (10 KB).
        None => h.get("origin").is_some_and(|o| {
            let host = (o.as_bytes().windows(3))
                .position(|w| w == b"://")
                .and_then(|i| o.get(i + 3..));
            host != h.get(":authority").as_deref()
        }),
    }
}

/// The page another site's `/logout` gets, and a prefetch of it: nothing is ended until the user presses
/// the button, whose form posts back here from this site (a POST, never taken for a prefetch). The page
/// may not be framed by another site (a framed button could be clicked by a trick); in a frame of the
/// site's own it shows, and its button logs out in the whole window (found by a black-box test: a
/// logout link in the site's own frame showed the browser's error page, with nothing to press). To a
/// prefetch it is a `503`, which the browser drops: found by a black-box test, Chromium kept the `200`
/// page its speculation rules prefetched and showed it at the user's click on the link, which then asked
/// rather than logged out.
#[inline(never)]
fn confirm_logout(cfg: &Config, h: &dyn Headers, another_site: bool) -> Step {
    let own_frame =
        !another_site && in_frame(h) && h.get("sec-fetch-site").is_some_and(|s| s == "same-origin");
    let host = html_escape(&h.get(":authority").unwrap_or_default());
    let ask = if another_site {
        format!("Another site sent you here to log out of <b>{host}</b>.")
    } else {
        format!("Log out of <b>{host}</b>?")
    };
    let body = format!(
        "<!doctype html><meta name=\"referrer\" content=\"same-origin\"><title>Log out?</title>\
         <h1>Log out?</h1><p>{ask}</p><form method=\"post\" \
         action=\"{}\"{}><button type=\"submit\">Log out</button></form><p><a href=\"/\">Stay logged \
         in</a></p>\n",
        cfg.logout_path,
        if own_frame { TOP } else { "" }
    );
    let mut r = html_page(if prefetched(h) { 503 } else { 200 }, body, None);
    // Its button's post names this site in `Origin` (which a browser without Fetch Metadata sends as `null`
    // under `no-referrer`, the site's or the gateway's).
    let (frame_options, ancestors) = if own_frame {
        ("SAMEORIGIN", "frame-ancestors 'self'")
    } else {
        ("DENY", "frame-ancestors 'none'")
    };
    r.headers.push(("x-frame-options", frame_options.into()));
    r.headers
        .push(("content-security-policy", ancestors.into()));
    r.headers.push(("referrer-policy", "same-origin".into()));
    Step::Respond(r)
}

/// Resumes a paused request with the IdP's answer (`None`: it did not answer).
pub fn on_reply(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    pending: Pending,
    reply: Option<(u16, &[u8])>,
) -> Step {
    match pending {
        Pending::Code(x) => code_reply(cfg, state, env, x, reply),
        Pending::CodeJwks(x, tokens) => {
            install_fetched_jwks(cfg, state, reply, env.now);
            finish_login(cfg, state, env, x, tokens, false)
        }
        Pending::Refresh(job) => refresh_reply(cfg, state, env, job, reply),
        Pending::RefreshJwks(job, tokens) => {
            install_fetched_jwks(cfg, state, reply, env.now);
            match ended_meanwhile(cfg, state, &job, env.now) {
                Some(step) => step,
                None => finish_refresh(cfg, state, env, job, tokens, false),
            }
        }
        Pending::LogoutJwks(token) => {
            // The IdP does not post it again: its keys not fetched is not the token's fault.
            if !install_fetched_jwks(cfg, state, reply, env.now) {
                let why = "the IdP's keys, fetched for its key id, did not come";
                return logout_refused(503, "temporarily_unavailable", why.into());
            }
            logout_with(cfg, state, env.now, token, false)
        }
    }
}

/// The keys a callout for an unknown `kid` brought back, if it brought any: the step it was made for
/// then tries once more, without fetching again.
/// `false` when they did not come.
fn install_fetched_jwks(
    cfg: &Config,
    state: &mut State,
    reply: Option<(u16, &[u8])>,
    now: u64,
) -> bool {
    let Some(jwks) = reply
        .filter(|(s, _)| *s == 200)
        .and_then(|(_, b)| Jwks::parse(b).ok())
    else {
        return false;
    };
    state
        .provider
        .install_jwks(jwks, now, cfg.jwks_refresh_interval);
    true
}

fn code_reply(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    x: CodeExchange,
    reply: Option<(u16, &[u8])>,
) -> Step {
    let clear = vec![cookies::clear_cookie(&x.login_cookie, &login_attrs(cfg))];
    let tokens = match reply {
        None | Some((504, _)) => {
            return gateway_error(
                504,
                CallbackFailure::Timeout,
                "The identity provider did not answer in time.",
                match reply {
                    None => no_answer(),
                    // Envoy's own answer when `callout_timeout` runs out (or the IdP's gateway's).
                    Some(_) => "the token endpoint's cluster answered 504 (Envoy's answer when \
                                callout_timeout runs out, or the IdP's gateway's)"
                        .into(),
                },
                clear,
                &start_again(cfg, &x.login.rd),
            );
        }
        Some((status, body)) => match token::parse_response(status, body)
            .map_err(|e| withholding_sent(cfg, e, x.login.verifier.expose()))
        {
            Ok(t) => t,
            Err(e @ TokenError::InvalidGrant { .. }) => {
                // Logged with the IdP's reason: a redirect URI or PKCE verifier it does not accept is
                // answered so too (Keycloak's "Incorrect redirect_uri").
                return error_page(
                    400,
                    CallbackFailure::InvalidGrant,
                    "This login code has expired or was already used.",
                    Some(e.to_string()),
                    clear,
                    &start_again(cfg, &x.login.rd),
                );
            }
            Err(e) => {
                // A 5xx is also what Envoy answers for an IdP it could not reach (found by a black-box
                // test: the page blamed the answer of an IdP that was down).
                let page = if status >= 500 {
                    "The identity provider could not be reached, or failed: try again later."
                } else if e.refuses_client() {
                    // Found by a review of what the pages say: "an unusable answer", and a retry that
                    // fails the same way, for the deployment's own mistake.
                    "The identity provider refused this site's client credentials: the site's operator \
                     must correct them. Trying again will not help until then."
                } else {
                    "The identity provider's token endpoint gave an unusable answer."
                };
                return gateway_error(
                    502,
                    CallbackFailure::TokenEndpoint,
                    page,
                    e.to_string(),
                    clear,
                    &start_again(cfg, &x.login.rd),
                );
            }
        },
    };
    finish_login(cfg, state, env, x, tokens, true)
}

/// A login whose code exchange the host would not send (a cluster this proxy does not have): it fails like
/// one the token endpoint answered badly, with `why` (which names the cluster) in its log line.
pub fn code_unsent(cfg: &Config, x: CodeExchange, why: String) -> Step {
    let clear = vec![cookies::clear_cookie(&x.login_cookie, &login_attrs(cfg))];
    gateway_error(
        502,
        CallbackFailure::TokenEndpoint,
        "The identity provider cannot be reached from this gateway.",
        format!("cannot call the IdP: {why}"),
        clear,
        &start_again(cfg, &x.login.rd),
    )
}

fn finish_login(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    x: CodeExchange,
    tokens: TokenResponse,
    may_refetch: bool,
) -> Step {
    let clear = vec![cookies::clear_cookie(&x.login_cookie, &login_attrs(cfg))];
    let Some(provider) = state.provider.ready() else {
        return with_cookies(not_ready(state, false, false, env.now), clear);
    };
    let Some(id_token) = tokens.id_token.clone() else {
        return gateway_error(
            502,
            CallbackFailure::TokenEndpoint,
            "The identity provider returned no ID token.",
            "token response has no id_token".into(),
            clear,
            &start_again(cfg, &x.login.rd),
        );
    };
    // One that no session cookies can hold is said to be so, before its check (found by a black-box test:
    // one over 32 KB failed as a malformed ID token, which sent the operator after the IdP's keys).
    if id_token.expose().len() > MAX_SESSION_CHUNKS * session::MAX_CHUNK_VALUE {
        return too_large(clear, &start_again(cfg, &x.login.rd));
    }
    let expected = Expected {
        issuer: &cfg.issuer,
        client_id: &cfg.client_id,
        nonce: Some(x.login.nonce.expose()),
        now: env.now,
        leeway: cfg.clock_leeway,
        max_age: cfg.max_age,
    };
    let claims = match id_token::verify(id_token.expose(), &provider.jwks, &expected) {
        Ok(c) => {
            state.saw_idp_clock(c.iat, x.asked_at, env.now, cfg.clock_leeway);
            c
        }
        Err(e)
            if e.stale_keys()
                && may_refetch
                && let Some(call) = state.provider.refetch_keys(cfg, env.now, false) =>
        {
            return Step::Call(call, Box::new(Pending::CodeJwks(x, tokens)));
        }
        Err(IdTokenError::MissingNonce | IdTokenError::NonceMismatch) => {
            return error_page(
                400,
                CallbackFailure::Nonce,
                "This login does not belong to this browser.",
                None,
                clear,
                &start_again(cfg, &x.login.rd),
            );
        }
        Err(e) => {
            // The issuer the token names, for the operator to compare (found in review: an IdP reached
            // by another host name, as Keycloak without `KC_HOSTNAME`, or Google's legacy
            // `accounts.google.com`). It came from the token endpoint, signed: no secret.
            let mut why = e.to_string();
            if e == IdTokenError::WrongIssuer
                && let Some(iss) = payload_of(id_token.expose())
                    .as_ref()
                    .and_then(|p| p.get("iss"))
                    .and_then(json::Value::as_str)
            {
                let iss = crate::oidc::discovery::quotable(iss, 200);
                why = format!("{why}: \"{iss}\"");
            }
            return gateway_error(
                502,
                CallbackFailure::IdToken,
                "The identity provider's ID token did not pass validation.",
                why,
                clear,
                &start_again(cfg, &x.login.rd),
            );
        }
    };
    let Some(mut session) = new_session(
        cfg, env.now, &tokens, id_token, claims.exp, claims.sub, None,
    ) else {
        return gateway_error(
            502,
            CallbackFailure::TokenEndpoint,
            "The identity provider returned no access token.",
            "token response has no access_token (forward_token is access_token)".into(),
            clear,
            &start_again(cfg, &x.login.rd),
        );
    };
    // The login's id, which its renewals keep and a `/logout` ends: of the login's `nonce`, random and
    // spent (the cookie is sealed; the list of ended sessions holds the id), and of when it was made,
    // which the `session_lifetime` configured now bounds ([`outlived`]).
    let random = crate::idhash::fnv(&[x.login.nonce.expose().as_bytes()]);
    session.login_id = Some(Session::login_id_made_at(env.now, random));
    // Accepted within `clock_leeway`, but a session born expired would send the browser straight back
    // to log in, for ever.
    if session.token_expires_at <= env.now {
        return gateway_error(
            502,
            CallbackFailure::IdToken,
            "The identity provider's token has already expired by this gateway's clock: the clocks of the two differ.",
            BORN_EXPIRED.into(),
            clear,
            &start_again(cfg, &x.login.rd),
        );
    }
    let mut set = clear;
    // Towards where the login was going, as every failed login's page (found by a review of what the
    // pages say: tokens that pass the first bound and fail only once sealed started again at `/`).
    let again = start_again(cfg, &x.login.rd);
    match seal_session(cfg, env, &session, &x.stale_chunks, &again) {
        Ok(cookies) => set.extend(cookies),
        Err(reply) => return with_cookies(*reply, set),
    }
    with_cookies(login_done(cfg, &x.login.rd), set)
}

fn refresh_reply(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    job: RefreshJob,
    reply: Option<(u16, &[u8])>,
) -> Step {
    match refresh_outcome(cfg, state, &job, (reply, env.unsent), env.now) {
        Ok(tokens) => finish_refresh(cfg, state, env, job, tokens, true),
        Err(step) => step,
    }
}

/// The IdP's answer to a renewal (`None`: none came, or the request stopped waiting for it; with why, when
/// the call was never sent: [`Env::unsent`]): its tokens, or the request's answer without them.
fn refresh_outcome(
    cfg: &Config,
    state: &mut State,
    job: &RefreshJob,
    (reply, unsent): (Option<(u16, &[u8])>, Option<&str>),
    now: u64,
) -> Result<TokenResponse, Step> {
    let still_valid = now < job.session.session.token_expires_at;
    let tokens = match reply {
        Some((status, body)) => token::parse_response(status, body).map_err(|e| {
            let refresh = job.session.session.refresh_token.as_ref();
            withholding_sent(cfg, e, refresh.map(Secret::expose).unwrap_or_default())
        }),
        None => Err(TokenError::NotJson("no answer")),
    };
    match &tokens {
        // The IdP answers: renewals need not wait.
        Ok(_) => state.renewal_answered(now),
        Err(e) if e.is_refusal() => state.renewal_answered(now),
        // A success in JSON that cannot be used: neither an outage nor an answer that ends one.
        Err(TokenError::Malformed(_)) => {}
        // Down or slow: recorded also when the session ended while it was renewed (found in review: the
        // outage went unrecorded, and the adapter then took the IdP for answering and ended the pause
        // the other workers shared).
        Err(_) => state.session_outage(job.who(), now),
    }
    if let Some(step) = ended_meanwhile(cfg, state, job, now) {
        return Err(step);
    }
    match tokens {
        Ok(t) => Ok(t),
        // The IdP refused the refresh token in its own words: no retry will change its mind.
        Err(e) if e.is_refusal() => Err(refresh_failed(cfg, state, job, now, e.to_string())),
        // The IdP is down or slow, or answers what cannot be used, but the token has a little life
        // left: keep the user working.
        Err(_) if still_valid => Err(keep_old(cfg, job, Metric::RefreshFailed)),
        // A success in JSON that cannot be used, once the token has expired: the IdP's own answer, which
        // asking again will not change (as an outage the 503 would stick until `session_lifetime`). Log in
        // again.
        Err(e @ TokenError::Malformed(_)) => {
            Err(refresh_failed(cfg, state, job, now, e.to_string()))
        }
        // The IdP is down or slow and the token has expired: fail closed, but keep the session, so that it
        // renews by itself once the IdP answers again rather than an outage logging everybody out.
        Err(e) => Err(renewal_unavailable(
            job.api(),
            match (reply, unsent) {
                (None, Some(why)) => format!("cannot call the IdP: {why}"),
                (None, None) => no_answer(),
                (Some(_), _) => e.to_string(),
            },
            state.held_for(job.who(), now),
        )),
    }
}

/// `e` without a description that quotes what the token request sent: the client secret (also as HTTP
/// Basic carried it) and the grant's own secret (the PKCE verifier, or the refresh token).
fn withholding_sent(cfg: &Config, e: TokenError, grant: &str) -> TokenError {
    let basic = token::basic_credentials(&cfg.client_id, &cfg.client_secret);
    e.withholding(&[cfg.client_secret.expose(), &basic, grant])
}

const NO_PROVIDER: &str = "the IdP's discovery document or keys are not loaded on this worker";
/// A request whose session cookie was replaced by `cookies` (which it sets), and which the browser has
/// not sent yet; its token has expired, and the new cookie carries what renews it. A browser's navigation
/// (`how`) is sent round again to `target` with it; anything else gets a 503 that says so: not a session
/// renewed yet (found by a review of what the pages say).
fn replaced(how: Anonymous, target: &str, cookies: Vec<String>) -> Step {
    if matches!(how, Anonymous::Login | Anonymous::Frame) {
        return with_cookies(redirect(paths::safe_redirect(target), None), cookies);
    }
    let step = unavailable(
        matches!(how, Anonymous::Api).then_some(RENEWAL_UNAVAILABLE),
        "This request carried an old session cookie; this answer brings the new one. Try again.",
        Metric::RefreshFailed,
        Some("the session has a new cookie, not yet sent by the browser".into()),
        RENEWAL_PAUSE,
    );
    with_cookies(step, cookies)
}

/// A request that would wait for another one's renewal, when too many wait on this worker already: 503,
/// its cookies stay (counted and logged as a refresh that failed).
pub fn renewal_crowded(job: &RefreshJob) -> Step {
    unavailable(
        job.api().then_some(RENEWAL_UNAVAILABLE),
        "Too many requests are waiting for sessions to be renewed on this gateway. Try again shortly.",
        Metric::RefreshFailed,
        Some("too many requests wait for renewals on this worker".into()),
        RENEWAL_PAUSE,
    )
}

/// The `error` of a renewal's `503` to an API client.
const RENEWAL_UNAVAILABLE: &str = "renewal_unavailable";

/// 503 for a request whose expired token the IdP could not renew just now; its cookies stay.
/// A browser gets a line of text; an API client JSON, as its other answers from the filter (found by a
/// black-box test: a client that reads every answer as JSON failed on this one).
/// `retry`: the seconds until the session's renewal may ask the IdP again ([`State::held_for`]).
fn renewal_unavailable(api: bool, detail: String, retry: u64) -> Step {
    // Not always the IdP's silence (it may refuse the gateway's credentials): the log line says why.
    unavailable(
        api.then_some(RENEWAL_UNAVAILABLE),
        "Your session could not be renewed just now. Try again shortly.",
        Metric::RefreshFailed,
        Some(detail),
        retry,
    )
}

fn finish_refresh(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    job: RefreshJob,
    tokens: TokenResponse,
    may_refetch: bool,
) -> Step {
    let old = &job.session.session;
    let still_valid = env.now < old.token_expires_at;
    let Some(provider) = state.provider.ready() else {
        return if still_valid {
            keep_old(cfg, &job, Metric::RefreshFailed)
        } else {
            refresh_failed(cfg, state, &job, env.now, NO_PROVIDER.into())
        };
    };
    // `login_sid`: the `sid` the session's ID tokens named last, kept when the new one names none. Found in
    // review: some IdPs leave it out of refreshed ID tokens, and a back-channel logout that named the
    // session by it then ended nothing.
    let (id_token, exp, sub, login_sid) = match &tokens.id_token {
        Some(t) => {
            let expected = Expected {
                issuer: &cfg.issuer,
                client_id: &cfg.client_id,
                nonce: None,
                now: env.now,
                leeway: cfg.clock_leeway,
                // Only a login authenticates: a refreshed token keeps the login's `auth_time`.
                max_age: None,
            };
            match id_token::verify(t.expose(), &provider.jwks, &expected) {
                // OIDC Core 12.2: a refreshed ID token must name the same user, for the same parties.
                Ok(c) if c.sub == old.sub => {
                    let asked = u64::from(job.asked_at);
                    state.saw_idp_clock(c.iat, asked, env.now, cfg.clock_leeway);
                    match unlike_login(&c.all, &old.id_token, cfg.clock_leeway) {
                        None => {
                            let kept = c.sid.is_none().then(|| job.session.sid.clone()).flatten();
                            (t.clone(), c.exp, c.sub, kept)
                        }
                        Some(name) => {
                            let why = format!("the refreshed ID token's {name} is not the login's");
                            return refresh_failed(cfg, state, &job, env.now, why);
                        }
                    }
                }
                // The IdP signs with a key this worker has not fetched yet (a new `kid`, or one replaced under
                // its `kid`): fetch the JWKS (rate-limited) once.
                Err(e)
                    if e.stale_keys()
                        && may_refetch
                        && let Some(call) = state.provider.refetch_keys(cfg, env.now, false) =>
                {
                    return Step::Call(call, Box::new(Pending::RefreshJwks(job, tokens)));
                }
                Ok(_) => {
                    let why = "the refreshed ID token names another user";
                    return refresh_failed(cfg, state, &job, env.now, why.into());
                }
                // A key this worker may not fetch just now (another request fetched the keys moments
                // ago), or that the keys fetched for it lack, or whose fetch failed: not the IdP's
                // refusal of the session, so an outage for this request rather than a logout.
                // Keys this worker may not fetch yet: its renewals wait until it may (found by a
                // black-box test: each request asked the token endpoint again, until then).
                Err(e) if e.stale_keys() => {
                    state.keys_wait_until = state.provider.next_kid_refetch();
                    let step = if still_valid {
                        keep_old(cfg, &job, Metric::RefreshFailed)
                    } else {
                        let secs = state.held_for(job.who(), env.now);
                        renewal_unavailable(job.api(), e.to_string(), secs)
                    };
                    return keeping_new_refresh_token(cfg, state, env, &job, &tokens, step);
                }
                Err(e) => return refresh_failed(cfg, state, &job, env.now, e.to_string()),
            }
        }
        None if cfg.forward_token == ForwardToken::AccessToken => (
            old.id_token.clone(),
            old.token_expires_at,
            old.sub.clone(),
            old.login_sid.clone(),
        ),
        // OIDC Core 12.2 lets an IdP leave the ID token out of a refresh answer: the one to forward has
        // expired, so the user logs in again.
        None => {
            let why = TokenError::MissingIdToken.to_string() + " (forward_token is id_token)";
            let mut step = refresh_failed(cfg, state, &job, env.now, why);
            // The IdP's setting ends every session at its first renewal (PingFederate's default):
            // the first time on this worker at warning, where istio-proxy logs by default (found in
            // review: at info only, the operator saw nothing while users logged in every 5 minutes).
            // Not on a `403` of a renewal another request made meanwhile, which logs no line (found in
            // review).
            if let Step::Respond(r) = &mut step
                && r.metric == Some(Metric::RefreshFailed)
                && !state.told_no_id_token
            {
                r.warn = true;
                state.told_no_id_token = true;
            }
            return step;
        }
    };
    renewed_session(
        cfg,
        state,
        env,
        job,
        &tokens,
        (id_token, exp, sub, login_sid),
    )
}

/// A refresh's tokens, checked, made the session: sealed, cached, and sent on with the request. Out of
/// `finish_refresh`: Envoy's V8 compiles every function when the plugin loads, and the memory a compile
/// takes, which Envoy's allocator keeps, grows with the function: the largest compile sets what stays.
#[inline(never)]
fn renewed_session(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    job: RefreshJob,
    tokens: &TokenResponse,
    (id_token, exp, sub, login_sid): (Secret, u64, String, Option<String>),
) -> Step {
    let old = &job.session.session;
    let refresh = tokens
        .refresh_token
        .clone()
        .or_else(|| old.refresh_token.clone());
    let Some(mut session) = new_session(cfg, env.now, tokens, id_token, exp, sub, refresh) else {
        let why = "token response has no access_token (forward_token is access_token)";
        return refresh_failed(cfg, state, &job, env.now, why.into());
    };
    session.expires_at = old.expires_at;
    session.login_sid = login_sid;
    session.login_id = old.login_id;
    // Otherwise every request would refresh it again. Not the clocks when it expires no later than the
    // token it renews: the IdP gave the same ID token again (against OIDC Core 12.2), or capped it at the
    // end of its own session (found by a black-box test: the log sent the operator after the clocks).
    if session.token_expires_at <= env.now {
        let why = if session.token_expires_at <= old.token_expires_at {
            "the IdP renewed the token without extending it (the same ID token again, or one capped at \
             the end of the IdP's session)"
        } else {
            BORN_EXPIRED
        };
        return refresh_failed(cfg, state, &job, env.now, why.into());
    }
    // One that did not extend it but is still good: renewing again before it expires would ask the
    // IdP on every request within the margin (found in review); the session renews once it has expired.
    session.renew_at_expiry = session.token_expires_at <= old.token_expires_at;
    let set = match seal_session(cfg, env, &session, &job.present_chunks, "/") {
        Ok(c) => c,
        Err(step) => {
            let why = match *step {
                Step::Respond(r) => r.detail,
                _ => None,
            };
            return refresh_failed(cfg, state, &job, env.now, why.unwrap_or_default());
        }
    };
    let cached = Rc::new(cached_session(cfg, session, set.clone(), env.now));
    // Requests still carrying the old cookie on this worker now get the new token too.
    state
        .cache
        .insert(job.cache_key.clone(), cached.clone(), env.now);
    goes_on(cfg, &job, &cached, set, Metric::Refreshed)
}

/// The token could not be renewed but has a little life left: the request goes up with it (if the claim
/// rules let it).
/// `step` (the old token while it lasts, else 503) for a refresh the IdP granted but whose new ID token
/// cannot be checked on this worker yet. An IdP that rotates refresh tokens has spent the old one: the
/// session keeps the new one, re-sealed with the old tokens, or its next renewal would be refused and the
/// user logged out. Requests that still carry the old cookie get the new one, and leave the renewal to it.
#[inline(never)]
fn keeping_new_refresh_token(
    cfg: &Config,
    state: &mut State,
    env: &mut Env,
    job: &RefreshJob,
    tokens: &TokenResponse,
    step: Step,
) -> Step {
    let old = &job.session.session;
    let Some(new) = tokens.refresh_token.as_ref().filter(|t| {
        old.refresh_token
            .as_ref()
            .is_none_or(|o| o.expose() != t.expose())
    }) else {
        return step;
    };
    let mut session = old.clone();
    session.refresh_token = Some(new.clone());
    let Ok(set) = seal_session(cfg, env, &session, &job.present_chunks, "/") else {
        return step;
    };
    // Requests that still carry the old cookie, here and (through the renewal table) on other workers,
    // get the new one and start no refresh of their own (see `with_session`).
    let mut cached = cached_session(cfg, session, set.clone(), env.now);
    cached.refresh_handed_on = true;
    state
        .cache
        .insert(job.cache_key.clone(), Rc::new(cached), env.now);
    match step {
        Step::Forward(mut f) => {
            f.set_cookies = set;
            Step::Forward(f)
        }
        other => with_cookies(other, set),
    }
}

fn keep_old(cfg: &Config, job: &RefreshJob, metric: Metric) -> Step {
    goes_on(cfg, job, &job.session, Vec::new(), metric)
}

/// `job`'s request goes on with session `s` (counted as `metric`), handing its browser `set`, the
/// session's renewed cookies if any: refused by the claim rules (a renewal made, then refused, counts as
/// both), answered at `userinfo_path`, or sent upstream.
#[inline(never)]
fn goes_on(cfg: &Config, job: &RefreshJob, s: &Cached, set: Vec<String>, metric: Metric) -> Step {
    if denied(cfg, s, &mut paths::Target::new(&job.target)) {
        let mut step = forbidden(cfg, job.browser(), s);
        if let Step::Respond(r) = &mut step
            && metric == Metric::Refreshed
        {
            r.metric = Some(Metric::RenewedForbidden);
        }
        return with_cookies(step, set);
    }
    session_step(
        cfg,
        &job.target,
        s,
        Forward {
            authorization: Some(s.bearer.clone()),
            cookie: job.cookie.clone(),
            set_cookies: set,
            identity: Some(s.identity.clone()),
            metric: Some(metric),
        },
    )
}

impl RefreshJob {
    /// The session, for [`State::session_outage`]: a hash of its cookie (never 0, an empty slot).
    fn who(&self) -> u64 {
        crate::idhash::fnv(&[self.cache_key.as_bytes()]) | 1
    }

    /// The sealed session this refresh renews.
    pub fn sealed(&self) -> &str {
        &self.cache_key
    }

    /// The bytes this job holds of its own (its sealed session, path, page and cookie; the opened session
    /// is shared with the cache): what a request that waits for another's renewal keeps in the worker's
    /// memory.
    pub fn held_bytes(&self) -> usize {
        let cookie = self.cookie.as_ref().and_then(Option::as_ref);
        self.cache_key.len()
            + self.target.len()
            + self.holding_page.as_ref().map_or(0, |p| p.len())
            + cookie.map_or(0, String::len)
            + self.present_chunks.iter().map(String::len).sum::<usize>()
    }
}

/// Another request is renewing this session (see `renewal`): while the old token is valid the request goes
/// up with it; an expired one is handed back to wait for that renewal.
pub fn renewal_busy(cfg: &Config, job: RefreshJob, now: u64) -> Result<Step, RefreshJob> {
    if now >= job.session.session.token_expires_at {
        return Err(job);
    }
    Ok(keep_old(cfg, &job, Metric::SessionForwarded))
}

/// Another request renewed this session; `renewed` are the `Set-Cookie` lines it sent. This request goes up
/// with the new token and gives its browser the new cookie too, without asking the IdP again.
pub fn adopt_renewal(
    cfg: &Config,
    state: &mut State,
    job: RefreshJob,
    renewed: &[String],
    now: u64,
) -> Step {
    if let Some(step) = ended_meanwhile(cfg, state, &job, now) {
        return step;
    }
    if renewed.is_empty() {
        return session_over(cfg, state, &job, now, REFUSED_ELSEWHERE.into());
    }
    let header = crate::headers::join(
        renewed
            .iter()
            .filter_map(|line| line.split(';').next())
            .filter(|pair| pair.split_once('=').is_some_and(|(_, v)| !v.is_empty())),
        "; ",
    );
    let session = session::join(&header, &cfg.cookie_name)
        .ok()
        .flatten()
        .and_then(|sealed| cfg.keys.open(&cfg.cookie_name, &sealed).ok())
        .and_then(|plain| Session::decode(&plain).ok())
        .filter(|s| s.sub == job.session.session.sub);
    let Some(session) = session else {
        let why = "the renewal made by another worker does not open";
        return refresh_failed(cfg, state, &job, now, why.into());
    };
    let mut cached = cached_session(cfg, session, renewed.to_vec(), now);
    // As this configuration reads the session's expiry (found in review: read as sealed, a renewal made
    // without an access token by a worker still on a configuration that forwarded none was taken for
    // unexpired, and the ID token went up in the access token's place).
    let expired = now >= cached.session.token_expires_at;
    // Only a new refresh token (`keeping_new_refresh_token`): the same tokens as before. (Not the ID
    // token alone: with `forward_token: access_token` a refresh that brings no ID token keeps the old one
    // beside a new access token, and such a renewal is not handed on; found in review.)
    let old = &job.session.session;
    cached.refresh_handed_on = cached.session.token_expires_at == old.token_expires_at
        && cached.session.id_token.expose() == old.id_token.expose()
        && cached.session.access_token.as_ref().map(Secret::expose)
            == old.access_token.as_ref().map(Secret::expose);
    // A renewal of a session the IdP has since logged out (its new ID token may name another IdP session
    // than the one this request's cookie holds).
    if ended(cfg, state, &cached, now) {
        let why = "the renewal made by another worker is of a session that has ended";
        return session_over(cfg, state, &job, now, why.into());
    }
    let cached = Rc::new(cached);
    state
        .cache
        .insert(job.cache_key.clone(), cached.clone(), now);
    // Only given a new refresh token, or kept for hours (its request had stopped waiting), and expired
    // meanwhile: the new cookie, whose next request renews; not a logout. A browser's navigation is sent
    // round again with it (found in review: a user back after the token's life got a `503` page).
    if expired {
        return replaced(job.anonymous, &job.target, renewed.to_vec());
    }
    goes_on(
        cfg,
        &job,
        &cached,
        renewed.to_vec(),
        Metric::SessionForwarded,
    )
}

/// The session another request on this worker renewed while `job` waited: cached under the same cookie,
/// with another token (not the same session opened again after the cache was emptied), still valid.
fn renewed_meanwhile(
    cfg: &Config,
    state: &State,
    job: &RefreshJob,
    now: u64,
) -> Option<Rc<Cached>> {
    // Not one that has ended since: its ID token may name another IdP session than the job's (found in
    // review: a logout of that one let the renewal through).
    state.cache.get(&job.cache_key).filter(|c| {
        c.bearer.expose() != job.session.bearer.expose()
            && now < c.session.token_expires_at
            && !ended(cfg, state, c, now)
    })
}

/// The renewal this request waited for failed or never finished. Why is not known here (the IdP down, or
/// the refresh token refused): fail closed but keep the cookie, as for an outage. A refused refresh token
/// is left to the next request's own refresh to find out: a waiting request must not log out a user over
/// an outage. A session that has ended meanwhile is answered as over ([`ended_meanwhile`]).
pub fn renewal_failed(cfg: &Config, state: &mut State, job: RefreshJob, now: u64) -> Step {
    if let Some(step) = ended_meanwhile(cfg, state, &job, now) {
        return step;
    }
    if renewed_meanwhile(cfg, state, &job, now).is_some() {
        // Renewed on this worker meanwhile: `refresh_failed` forwards that renewal.
        return refresh_failed(cfg, state, &job, now, String::new());
    }
    // The IdP refused it (on this worker): the session is over, not unavailable (found by a black-box
    // test: a page's requests that waited got `503` "try again").
    if job.session.over.get() {
        return session_over(cfg, state, &job, now, REFUSED_ELSEWHERE.into());
    }
    renewal_unavailable(
        job.api(),
        "the renewal another request of this session made did not complete".into(),
        RENEWAL_PAUSE,
    )
}

/// The `Set-Cookie` lines of the renewal this worker made of `sealed`, if it has made one; none (an empty
/// list) when its session is over, which the other workers' requests of it take for that
/// ([`adopt_renewal`]).
pub fn renewed_cookies(state: &State, sealed: &str) -> Option<Vec<String>> {
    let c = state.cache.get(sealed)?;
    if c.over.get() {
        return Some(Vec::new());
    }
    Some(c.renewed_cookies.clone()).filter(|c| !c.is_empty())
}

/// Why a request whose session another request found over is answered as without one.
const REFUSED_ELSEWHERE: &str = "another request's renewal of this session found it over";

/// The session ends (`why` says the cause in the log line), unless another request renewed it meanwhile.
fn refresh_failed(
    cfg: &Config,
    state: &mut State,
    job: &RefreshJob,
    now: u64,
    why: String,
) -> Step {
    // Another request on this worker renewed the same session while this one waited (an IdP that rotates
    // refresh tokens refuses every later use of the old one): that renewal stands, not a logout.
    if let Some(c) = renewed_meanwhile(cfg, state, job, now) {
        return goes_on(
            cfg,
            job,
            &c,
            c.renewed_cookies.clone(),
            Metric::SessionForwarded,
        );
    }
    session_over(cfg, state, job, now, why)
}

/// The session `job` renews is over: answered as without one, its cookies cleared. Its cookie stays in
/// the cache, marked over ([`Cached::over`]), and the other workers are told ([`renewed_cookies`]).
fn session_over(cfg: &Config, state: &mut State, job: &RefreshJob, now: u64, why: String) -> Step {
    job.session.over.set(true);
    // Not over another entry (a renewal made meanwhile, after the cache was emptied).
    if state
        .cache
        .get(&job.cache_key)
        .is_none_or(|c| Rc::ptr_eq(&c, &job.session))
    {
        state
            .cache
            .insert(job.cache_key.clone(), job.session.clone(), now);
    }
    let mut clear = Vec::new();
    for n in &job.present_chunks {
        clear_session_cookie(cfg, n, &mut clear);
    }
    if clear.is_empty() {
        clear_session_cookie(cfg, &cfg.cookie_name, &mut clear);
    }
    // As it would be answered without a session (a request that would pass starts no refresh).
    let page = job.holding_page.as_deref().unwrap_or(&job.target);
    let mut r = anonymous_reply(cfg, job.anonymous, page);
    r.metric = Some(Metric::RefreshFailed);
    r.detail = Some(why);
    with_cookies(Step::Respond(r), clear)
}

/// Builds the session to seal from a token response. `None` when the forwarded token is missing.
fn new_session(
    cfg: &Config,
    now: u64,
    tokens: &TokenResponse,
    id_token: Secret,
    id_exp: u64,
    sub: String,
    refresh: Option<Secret>,
) -> Option<Session> {
    // The IdP's figure, unchecked in size: an hour when it gives none (or 0); and no later than the
    // token's own `exp` when it is a JWT that has one (found in review: without `expires_in`, a JWT that
    // expired in 5 minutes went upstream, identity headers and all, for an hour).
    let given = now.saturating_add(tokens.expires_in.filter(|&e| e > 0).unwrap_or(3600));
    let access_exp = |a: &Secret| {
        token_payload(a)
            .and_then(|c| c.get("exp")?.as_number()?.floor_u64())
            .map_or(given, |e| e.min(given))
    };
    let (access_token, token_expires_at) = match cfg.forward_token {
        ForwardToken::AccessToken => {
            let a = tokens.access_token.clone()?;
            let exp = access_exp(&a);
            (Some(a), exp)
        }
        // The app gets the access token too: the session renews when the first of the two expires.
        ForwardToken::IdToken if cfg.passes_access_token() => match tokens.access_token.clone() {
            Some(a) => {
                let exp = access_exp(&a);
                (Some(a), id_exp.min(exp))
            }
            None => (None, id_exp),
        },
        ForwardToken::IdToken => (None, id_exp),
    };
    let refresh_token = refresh.or_else(|| tokens.refresh_token.clone());
    let expires_at = if refresh_token.is_some() {
        now + cfg.session_lifetime
    } else {
        token_expires_at.min(now + cfg.session_lifetime)
    };
    Some(Session {
        id_token,
        access_token,
        refresh_token,
        token_expires_at,
        expires_at,
        sub,
        login_sid: None,
        login_id: None,
        renew_at_expiry: false,
    })
}

/// The claims that rules and identity headers read, from the session's ID token. The token was verified
/// before it was sealed and the cookie is authenticated, so its payload is trusted without a signature check;
/// reading it here (once per opened cookie) keeps the cookie from carrying the claims twice.
fn token_facts(cfg: &Config, id_token: &Secret) -> (json::Object, Option<String>, u64, u64) {
    let all = token_payload(id_token).unwrap_or_default();
    let unverified = unverified_email(&all);
    let mut kept = json::Object::new();
    for k in &cfg.keep_claims {
        if let Some(v) = all
            .get(k)
            .filter(|_| !(unverified && k.as_str() == "email"))
        {
            kept.push(k.clone(), v.clone());
        }
    }
    let sid = all.get("sid").and_then(|v| v.as_str()).map(str::to_string);
    // As the ID token's check read it: a NumericDate may carry a fraction.
    let date = |name: &str| {
        all.get(name)
            .and_then(json::Value::as_number)
            .and_then(json::Number::floor_u64)
            .unwrap_or(0)
    };
    (kept, sid, date("iat"), date("exp"))
}

/// An address the IdP says is not the user's (not yet confirmed) names no one: no header, no rule passes
/// on it. An IdP that sends no `email_verified` vouches for its addresses, but Entra ID sends none at all:
/// its optional claim `xms_edov: false` says the address's domain is not one the tenant owns (found in
/// review: a guest's self-chosen address passed rules on `email`).
fn unverified_email(claims: &json::Object) -> bool {
    match claims.get("email_verified") {
        Some(json::Value::Bool(v)) => !v,
        Some(json::Value::String(v)) => v != "true",
        // A number: `1` for true as some serialisers write it; `0`, or any other, is no vouching (found
        // by a black-box test: `0` counted as verified).
        Some(json::Value::Number(n)) => n.as_str() != "1",
        // `null`, a list or an object says nothing true either (found by a black-box test: counted as
        // absent, so vouched for).
        Some(_) => true,
        // Present, it vouches only when it says so (Entra has sent it as `true`, `"1"` or `"true"`).
        None => claims.get("xms_edov").is_some_and(|v| {
            !matches!(v, json::Value::Bool(true))
                && !matches!(v, json::Value::String(s) if s == "1" || s == "true")
        }),
    }
}

/// OIDC Core 12.2: a refreshed ID token's `aud` and `azp` are the login's, and so is its `nonce` when it
/// has one. Its `auth_time` may be later than the login's (the user signed in again at the IdP, and
/// Keycloak then reports that time; Cognito reports each refresh's), but not earlier, nor after the new
/// token was issued. The claim that differs, if any.
fn unlike_login(new: &json::Object, login: &Secret, leeway: u64) -> Option<&'static str> {
    let login = token_payload(login).unwrap_or_default();
    // `aud` as a set: one audience may come as a string or a list of one.
    fn audiences(o: &json::Object) -> &[json::Value] {
        match o.get("aud") {
            Some(json::Value::Array(a)) => a,
            Some(v) => core::slice::from_ref(v),
            None => &[],
        }
    }
    let (a, b) = (audiences(new), audiences(&login));
    if !(a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))) {
        return Some("aud");
    }
    if new.get("azp") != login.get("azp") {
        return Some("azp");
    }
    if new
        .get("nonce")
        .is_some_and(|v| login.get("nonce") != Some(v))
    {
        return Some("nonce");
    }
    let time = |o: &json::Object, name| id_token::numeric_date(o, name).ok().flatten();
    let at = time(new, "auth_time")?;
    let earliest = time(&login, "auth_time").unwrap_or(0);
    let latest = time(new, "iat").unwrap_or(0).saturating_add(leeway);
    (at < earliest || at > latest).then_some("auth_time")
}

/// The claims of a sealed session's ID token (verified before it was sealed), unchecked.
fn token_payload(id_token: &Secret) -> Option<json::Object> {
    payload_of(id_token.expose())
}

/// A JWT's payload, unverified.
fn payload_of(token: &str) -> Option<json::Object> {
    let payload = token.split('.').nth(1)?;
    let bytes = crate::b64::decode_url(payload)?;
    json::parse_object(&bytes).ok()
}

/// A logout token posted by the IdP: on success the sessions it names end (here at once, on the other
/// workers at their next tick). Answers as the spec says: 200, or 400 with a JSON error (503 when it
/// cannot be checked just now).
pub fn on_backchannel_logout(cfg: &Config, state: &mut State, env: &Env, body: &[u8]) -> Step {
    let token = form::parse(body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v);
    let Some(token) = token else {
        return logout_refused(400, "invalid_request", "no logout_token in the body".into());
    };
    logout_with(cfg, state, env.now, token, true)
}

/// The answer to a logout token, as the spec says: 200, or 400 with a JSON error (503 when it cannot be
/// checked just now, which an IdP may post again). A token whose key the keys held may lack (an unknown
/// `kid`, or a bad signature: a key replaced under its `kid`) fetches the JWKS first (`may_refetch`), as
/// a login does: an IdP need not post it again.
fn logout_with(
    cfg: &Config,
    state: &mut State,
    now: u64,
    token: String,
    may_refetch: bool,
) -> Step {
    let Some(provider) = state.provider.ready() else {
        return logout_refused(503, "temporarily_unavailable", NO_PROVIDER.into());
    };
    match logout_token::verify(
        &token,
        &provider.jwks,
        &cfg.issuer,
        &cfg.client_id,
        now,
        cfg.clock_leeway,
    ) {
        Ok(logout) => {
            state.revoked.add(&logout, now, logout_kept(cfg));
            state.ended_here = true;
            let mut r = json_error(200, "");
            if let Step::Respond(r) = &mut r {
                r.metric = Some(Metric::BackchannelLogout);
            }
            r
        }
        Err(e)
            if e.stale_keys()
                && may_refetch
                && let Some(call) = state.provider.refetch_keys(cfg, now, true) =>
        {
            Step::Call(call, Box::new(Pending::LogoutJwks(token)))
        }
        // Signed with a key this worker may not fetch just now (it fetched the keys moments ago): not
        // the token's fault, and an IdP that posts again may then succeed. A bad signature only as below
        // (found in review: any, `503`, made anyone posting one every 30 s keep the IdP's own failing
        // tokens `503`s, which it posts again and again).
        // The log line says which (found by a black-box test: it read as the final `400`'s).
        Err(e @ logout_token::LogoutTokenError::Token(IdTokenError::UnknownKid)) if may_refetch => {
            logout_refused(
                503,
                "temporarily_unavailable",
                format!(
                    "{e}, and this worker fetched the keys moments ago (the IdP may post again)"
                ),
            )
        }
        // A bad signature on a token newer than the keys held, within `clock_leeway`: its key may have
        // come since, as `503` too (found by a black-box test: a forged post just before the IdP replaced
        // its key under the same `kid` made the IdP's real logout a final `400`, and the session lived
        // on). One dated before the keys held, which posting again will not change, is `400`.
        Err(e @ logout_token::LogoutTokenError::Token(IdTokenError::BadSignature))
            if may_refetch
                && payload_of(&token)
                    .and_then(|c| c.get("iat")?.as_number()?.floor_u64())
                    .is_some_and(|iat| {
                        iat.saturating_add(cfg.clock_leeway) > state.provider.keys_as_of()
                    }) =>
        {
            logout_refused(
                503,
                "temporarily_unavailable",
                format!(
                    "{e}, and it is newer than the keys this worker fetched moments ago (the IdP may post again)"
                ),
            )
        }
        Err(e) => logout_refused(400, "invalid_request", e.to_string()),
    }
}

/// An answer came to a back-channel post before the filter answered it (the app's, one that ignores a
/// request's body; or Envoy's: no route, no healthy upstream): it must not reach the client (found in
/// review), and the logout is not taken in, unless the keys it waited for come. The IdP is told so
/// (`503`), and the operator how to mend it (found by a black-box test: the app's `404` reached the IdP,
/// and the logout was lost without a word).
pub fn backchannel_answered_early() -> Step {
    logout_refused(
        503,
        "temporarily_unavailable",
        "an answer came before the logout token was taken in (the app's, or Envoy's: no route or no \
         healthy upstream): route this path to an upstream that reads the body first, or buffer it \
         before this filter (README, Back-channel logout)"
            .into(),
    )
}

/// A logout token not taken: the answer the spec asks for (`status` with `{"error": ERROR}`), counted and
/// logged with why.
fn logout_refused(status: u16, error: &str, why: String) -> Step {
    let mut step = json_error(status, error);
    if let Step::Respond(r) = &mut step {
        r.metric = Some(Metric::BackchannelLogoutRefused);
        r.detail = Some(why);
    }
    step
}

/// A JSON answer `{"error": ERROR}` (an empty body without one), not stored.
fn json_error(status: u16, error: &str) -> Step {
    let body = if error.is_empty() {
        String::new()
    } else {
        json::object_of_strings(&[("error", error)])
    };
    Step::Respond(Reply {
        status,
        headers: vec![
            ("cache-control", "no-store".into()),
            ("content-type", "application/json".into()),
        ],
        body: body.into(),
        metric: None,
        detail: None,
        warn: false,
    })
}

/// Removes every configured identity header (and `access_token_header`): on anonymous requests no
/// client-sent copy may pass.
fn strip_identity(cfg: &Config) -> Option<IdentityHeaders> {
    if cfg.identity_headers.is_empty() {
        return None;
    }
    Some(Rc::new(
        cfg.identity_headers
            .iter()
            .map(|(h, _)| (h.clone(), None))
            .collect(),
    ))
}

/// The answer for tokens that need more than [`MAX_SESSION_CHUNKS`] session cookies.
fn too_large(clear: Vec<String>, again: &str) -> Step {
    gateway_error(
        502,
        CallbackFailure::TokenEndpoint,
        "The identity provider's tokens are too large for a session cookie.",
        format!("the session needs more than {MAX_SESSION_CHUNKS} cookies (ask for fewer claims)"),
        clear,
        again,
    )
}

/// Seals a session into cookies, and clears chunks of an earlier, longer session. `again`: where the
/// page of tokens too large starts again (a login's, towards the page it was for).
fn seal_session(
    cfg: &Config,
    env: &mut Env,
    session: &Session,
    present: &[String],
    again: &str,
) -> Result<Vec<String>, Box<Step>> {
    let Some(r) = (env.random)() else {
        return Err(Box::new(text(
            500,
            "Internal error: no randomness available.",
            None,
        )));
    };
    let sealed = cfg
        .keys
        .seal(&cfg.cookie_name, &session.encode(), nonce24(&r));
    let chunks = match session::split(&cfg.cookie_name, &sealed) {
        Ok(c) if c.len() <= MAX_SESSION_CHUNKS => c,
        _ => return Err(Box::new(too_large(Vec::new(), again))),
    };
    let max_age = session.expires_at.saturating_sub(env.now);
    let mut out = Vec::new();
    // A host-only copy from before `cookie_domain` was set would come first in the browser's requests
    // and shadow the new session: cleared first (its clear and the new cookie are two cookies to a
    // browser, and in this order one that took them for the same would keep the new one).
    for (n, _) in &chunks {
        host_only_clear(cfg, n, &mut out);
    }
    for (n, v) in &chunks {
        out.push(cookies::set_cookie(n, v, &cfg.cookie, max_age));
    }
    for name in present {
        if !chunks.iter().any(|(n, _)| n == name) {
            clear_session_cookie(cfg, name, &mut out);
        }
    }
    Ok(out)
}

fn clear_session_cookies(cfg: &Config, header: &str) -> Vec<String> {
    clear_named(cfg, session::chunk_names(&cfg.cookie_name, header))
}

/// The clears of the session's cookies `names`, and of its first cookie always.
fn clear_named(cfg: &Config, mut names: Vec<String>) -> Vec<String> {
    if !names.iter().any(|n| n == &cfg.cookie_name) {
        names.push(cfg.cookie_name.clone());
    }
    let mut out = Vec::new();
    for n in &names {
        clear_session_cookie(cfg, n, &mut out);
    }
    out
}

/// Clears session cookie `name`: as the site sets it and, with `cookie_domain`, as a host-only cookie
/// too, one set before `cookie_domain` was (which a clear with `Domain` leaves in the browser).
fn clear_session_cookie(cfg: &Config, name: &str, out: &mut Vec<String>) {
    out.push(cookies::clear_cookie(name, &cfg.cookie));
    host_only_clear(cfg, name, out);
}

/// With `cookie_domain`, the clear of a host-only cookie `name`; without it, nothing.
fn host_only_clear(cfg: &Config, name: &str, out: &mut Vec<String>) {
    if cfg.cookie.domain.is_some() {
        let attrs = CookieAttrs {
            domain: None,
            ..cfg.cookie.clone()
        };
        out.push(cookies::clear_cookie(name, &attrs));
    }
}

/// The login-attempt cookie's attributes. It must come back with the IdP's redirect, a navigation from
/// the IdP's site: with `SameSite=Strict` a browser would withhold it, so that one is `Lax`. Its path is
/// `/`, so that `/login` sees the attempts a browser holds and keeps them few (`stale_attempts`; until the
/// fourteenth review it was the callback's, and `/login` saw none); a `__Host-` name needs it anyway.
fn login_attrs(cfg: &Config) -> CookieAttrs {
    CookieAttrs {
        path: "/".into(),
        same_site: match cfg.cookie.same_site {
            SameSite::Strict => SameSite::Lax,
            other => other,
        },
        ..cfg.cookie.clone()
    }
}

/// The answer that ends a login at `rd`. A redirect continues the navigation that came from the IdP, and
/// a browser withholds `SameSite=Strict` cookies from all of it: the session would seem missing and the
/// login start over. So with `Strict` a page of this site moves on to `rd` itself, a same-site navigation.
fn login_done(cfg: &Config, rd: &str) -> Step {
    if cfg.cookie.same_site != SameSite::Strict {
        return redirect(rd.to_string(), Some(Metric::LoginCompleted));
    }
    let rd = html_escape(rd);
    let body = format!(
        "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url={rd}\"><title>Logged in</title>\
         <p>Logged in. <a href=\"{rd}\">Continue</a>.</p>\n"
    );
    Step::Respond(html_page(200, body, Some(Metric::LoginCompleted)))
}

/// Where a login started on another host (or port) than its `redirect_uri`'s goes back to after the
/// callback: `redirect_uri`'s scheme (a gateway behind a TLS-terminating balancer may see `http`) and the
/// request's host and port. Only for a host within `cookie_domain`; `Err` for any other host than
/// `redirect_uri`'s: the login cookie would never reach the callback, so such a login cannot finish (found
/// by a black-box test: every login there went through the IdP to the page of a login that expired), and
/// no forged `Host` is written into one.
fn origin_to_return_to(cfg: &Config, h: &dyn Headers) -> Result<Option<String>, ()> {
    let (Some(url), Some(authority)) = (
        cfg.redirect_uri
            .as_deref()
            .and_then(|r| WebUrl::parse(r).ok()),
        h.get(":authority"),
    ) else {
        return Ok(None);
    };
    let authority = authority.to_ascii_lowercase();
    let Some(host) = crate::config::host_of(&authority) else {
        return Ok(None);
    };
    let other_host = !host.eq_ignore_ascii_case(url.host());
    let within = cfg.within_cookie_domain(&host);
    if other_host && !within {
        return Err(());
    }
    // A port left out is the redirect scheme's default, as it will be for the browser.
    let port = match authority
        .get(host.len()..)
        .and_then(|p| p.strip_prefix(':'))
    {
        Some(digits) => match digits.parse() {
            Ok(p) => p,
            Err(_) => return Ok(None),
        },
        None if url.scheme() == "https" => 443,
        None => 80,
    };
    let elsewhere = other_host || port != url.port_or_default();
    Ok((within && elsewhere).then(|| format!("{}://{authority}", url.scheme())))
}

fn redirect_uri(cfg: &Config, h: &dyn Headers) -> Option<String> {
    if let Some(r) = &cfg.redirect_uri {
        return Some(r.clone());
    }
    Some(format!("{}{}", origin(h)?, cfg.callback_path))
}

fn post_logout_uri(cfg: &Config, h: &dyn Headers) -> Option<String> {
    let p = cfg.post_logout_redirect_uri.as_ref()?;
    if p.starts_with('/') {
        Some(format!("{}{}", origin(h)?, p))
    } else {
        Some(p.clone())
    }
}

/// `scheme://host` of the request, from Envoy's own `:scheme` and `:authority` (never X-Forwarded-*).
fn origin(h: &dyn Headers) -> Option<String> {
    let scheme = match h.get(":scheme").as_deref() {
        Some("http") => "http",
        _ => "https",
    };
    let host = h.get(":authority")?;
    let valid = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        });
    // In lower case, as browsers write a host (found by a black-box test: a client's `Host:
    // B.Example.com` went into `post_logout_redirect_uri`, which the IdP refused as not registered).
    valid.then(|| format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// An `Authorization` value jwt_authn takes a token from: Istio's `RequestAuthentication` reads
/// `Authorization` with the prefix `Bearer ` (case and space exact), the token starting right after it.
/// Any other value (`Basic …`, `bearer …`, `Bearer` alone) jwt_authn treats as no token at all, so the
/// request would reach every host an `AuthorizationPolicy` does not cover without a login: it is
/// judged as a request without credentials instead.
fn is_bearer(value: &str) -> bool {
    value.strip_prefix("Bearer ").is_some_and(|t| {
        t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    })
}

/// A CORS preflight (Fetch standard: `OPTIONS` with `Origin` and `Access-Control-Request-Method`). A browser
/// sends it without cookies, before a cross-origin request that needs one; only the app (or Istio's CORS
/// policy, behind this filter) can answer it. Nor does a browser send `Authorization` on one: found in
/// review, an `OPTIONS` with a bearer token passed as a preflight, unjudged by the claim rules and by
/// the bypass-path check, to an app behind a policy that lets `OPTIONS` through.
/// Nor has one an empty `Access-Control-Request-Method`, or a body (found by a black-box test: both passed
/// to the app without a session, the body with them; and by a review, an HTTP/2 body, which no header
/// announces).
fn is_preflight(h: &dyn Headers) -> bool {
    h.get(":method").as_deref() == Some("OPTIONS")
        && h.get("origin").is_some()
        && h.get("access-control-request-method")
            .is_some_and(|m| !m.is_empty())
        && h.get("authorization").is_none()
        && !h.body_follows()
        && h.get("content-length").is_none_or(|l| l == "0")
        && h.get("transfer-encoding").is_none()
}

/// A browser navigation: GET or HEAD that wants HTML and is not a script's fetch.
fn is_browser(h: &dyn Headers) -> bool {
    matches!(h.get(":method").as_deref(), Some("GET") | Some("HEAD"))
        && wants_page(h)
        && h.get("sec-fetch-mode").is_none_or(|m| m == "navigate")
}

/// A navigation inside a frame (Fetch Metadata's `Sec-Fetch-Dest`).
fn in_frame(h: &dyn Headers) -> bool {
    h.get("sec-fetch-dest")
        .is_some_and(|d| matches!(&*d, "iframe" | "frame" | "fencedframe" | "embed" | "object"))
}

/// Asks for HTML and is not an `XMLHttpRequest`.
fn wants_page(h: &dyn Headers) -> bool {
    // Media types are case-insensitive (RFC 9110 8.3.1; found by a black-box test: `TEXT/HTML` got 401), and
    // one with `q=0` is one the client does not accept (12.4.2; found by a black-box test: `application/json,
    // text/html;q=0` was sent to log in).
    // Bytes split by hand: `str::split` sets up a searcher per call (470 instructions more per redirect).
    fn trim(mut b: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = b {
            b = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = b {
            b = rest;
        }
        b
    }
    let wants_html = h.get("accept").is_some_and(|a| {
        a.as_bytes().split(|&b| b == b',').any(|range| {
            let mut parts = range.split(|&b| b == b';');
            parts
                .next()
                .is_some_and(|t| trim(t).eq_ignore_ascii_case(b"text/html"))
                && !parts.any(|p| match trim(p) {
                    [b'q' | b'Q', b'=', v @ ..] => {
                        !v.is_empty() && v.iter().all(|b| matches!(b, b'0' | b'.'))
                    }
                    _ => false,
                })
        })
    });
    wants_html
        && !h
            .get("x-requested-with")
            .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"))
}

fn nonce24(r: &[u8; 32]) -> [u8; 24] {
    let mut n = [0u8; 24];
    n.copy_from_slice(&r[..24]);
    n
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn with_cookies(step: Step, set: Vec<String>) -> Step {
    match step {
        Step::Respond(mut r) => {
            r.headers
                .extend(set.into_iter().map(|c| ("set-cookie", Cow::Owned(c))));
            Step::Respond(r)
        }
        other => other,
    }
}

/// `/login?rd=<target>`, in one string rather than `format!` over a second one: every anonymous browser
/// request gets it.
fn login_location(cfg: &Config, target: &str) -> String {
    // `/login` would keep only the path of a longer one (`paths::safe_redirect`); encoded whole (up to
    // three times as long), a very long address would make a `Location` Envoy refuses to take back.
    let target = paths::fit_rd(target);
    let mut location = String::with_capacity(cfg.login_path.len() + 4 + 3 * target.len());
    location.push_str(&cfg.login_path);
    location.push_str("?rd=");
    form::encode_into(&mut location, target);
    location
}

fn redirect(location: String, metric: Option<Metric>) -> Step {
    let mut r = redirect_reply(location);
    r.metric = metric;
    Step::Respond(r)
}

fn redirect_reply(location: String) -> Reply {
    Reply {
        status: 302,
        headers: vec![
            ("location", location.into()),
            ("cache-control", "no-store".into()),
        ],
        body: Cow::Borrowed(""),
        metric: None,
        detail: None,
        warn: false,
    }
}

/// `api`: for an API client (JSON). What the page says depends on why: an IdP not reached yet, or one
/// that answered with what this gateway cannot use (then waiting does not help; the log names the cause);
/// and on what needs it: a login, or (`renewal`) a logged-in user's session whose token has expired
/// (found in review: such a user read "Login is not available", though logged in).
fn not_ready(state: &State, api: bool, renewal: bool, now: u64) -> Step {
    let what = if renewal {
        "Your session cannot be renewed"
    } else {
        "Login is not available"
    };
    let why = if state.provider.unusable() {
        ": the identity provider answered, but this site cannot use its discovery document or signing \
         keys. The site's operator must fix this."
    } else {
        " yet: the identity provider has not been reached. Try again shortly."
    };
    let msg = format!("{what}{why}");
    let retry = state.provider.retry_in(now);
    unavailable(
        api.then_some("not_ready"),
        &msg,
        Metric::NotReady,
        None,
        retry,
    )
}

/// A `/logout` whose IdP has not been reached ([`Metric::NotReady`]: held as a login is); `api`: for an
/// API client (JSON).
fn idp_unreached_at_logout(api: bool) -> Step {
    unavailable(
        api.then_some("not_ready"),
        "You are logged out of this site, but the identity provider could not be reached, so you may still be logged in there: log out at the identity provider too, or close the browser.",
        Metric::NotReady,
        None,
        RENEWAL_PAUSE,
    )
}

/// What a log line says of a callout that got no answer.
fn no_answer() -> String {
    "no answer from the token endpoint within callout_timeout".into()
}

/// 503 with `Retry-After: retry`: the IdP is needed and not reachable now; the client may simply retry
/// then. `msg` as text; for an API client (`json_error` set), in JSON with that `error`, as its other answers from the
/// filter (found by a black-box test: a client that reads every answer as JSON failed on these).
fn unavailable(
    json_error: Option<&str>,
    msg: &str,
    metric: Metric,
    detail: Option<String>,
    retry: u64,
) -> Step {
    let (content_type, body) = match json_error {
        Some(error) => (
            "application/json",
            json::object_of_strings(&[("error", error), ("message", msg)]),
        ),
        None => ("text/plain; charset=utf-8", format!("{msg}\n")),
    };
    Step::Respond(Reply {
        status: 503,
        headers: vec![
            ("retry-after", retry.to_string().into()),
            ("content-type", content_type.into()),
            ("cache-control", "no-store".into()),
        ],
        body: body.into(),
        metric: Some(metric),
        detail,
        warn: false,
    })
}

fn json_401() -> Reply {
    Reply {
        status: 401,
        headers: vec![
            ("www-authenticate", "Bearer".into()),
            ("content-type", "application/json".into()),
            ("cache-control", "no-store".into()),
        ],
        body: "{\"error\":\"unauthenticated\",\"message\":\"log in first or send a bearer token\"}"
            .into(),
        metric: Some(Metric::Unauthorized),
        detail: None,
        warn: false,
    }
}

fn text(status: u16, msg: &str, metric: Option<Metric>) -> Step {
    Step::Respond(Reply {
        status,
        headers: vec![
            ("content-type", "text/plain; charset=utf-8".into()),
            ("cache-control", "no-store".into()),
        ],
        body: format!("{msg}\n").into(),
        metric,
        detail: None,
        warn: false,
    })
}

/// A host browsers keep `Secure` cookies for over plain HTTP: `localhost` and its subdomains, and the
/// loopback addresses (`authority` with or without its port).
fn is_loopback_name(authority: &str) -> bool {
    let host = match crate::weburl::rsplit_once(authority, b':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost"
        || host
            .strip_suffix(".localhost")
            .is_some_and(|sub| !sub.is_empty() && !sub.starts_with('.') && !sub.ends_with('.'))
        || host == "[::1]"
        || crate::weburl::parse_ipv4(&host).is_some_and(|a| a[0] == 127)
}

/// Where a failed login's page sends "Start again": a new login towards where this one was going, on the
/// host it started from.
fn start_again(cfg: &Config, rd: &str) -> String {
    // `rd` is a path, or the origin of another host of the site and a path (`login`).
    // The path starts at the origin's third `/` (`scheme://host/`).
    let at = match rd.starts_with('/') {
        true => 0,
        false => rd
            .bytes()
            .enumerate()
            .filter(|&(_, c)| c == b'/')
            .nth(2)
            .map_or(0, |(i, _)| i),
    };
    let (origin, path) = crate::weburl::split_at(rd, at);
    format!("{origin}{}", login_location(cfg, path))
}

fn bad_callback(reason: CallbackFailure, msg: &str, clear: Vec<String>) -> Step {
    error_page(400, reason, msg, None, clear, "/")
}

/// Why a token the IdP just issued is refused though it passed its checks.
const BORN_EXPIRED: &str = "the new token expires no later than now by the gateway's clock (accepted \
    within clock_leeway): the gateway's and the IdP's clocks differ by more than the token's lifetime";

/// A login the IdP's answer failed: `msg` for the browser, `detail` for the operator's log line.
fn gateway_error(
    status: u16,
    reason: CallbackFailure,
    msg: &str,
    detail: String,
    clear: Vec<String>,
    again: &str,
) -> Step {
    error_page(status, reason, msg, Some(detail), clear, again)
}

/// The errors of an authorization response that the user's doing or the IdP's moment explains: the user
/// said no or must log in (or choose, or consent) at the IdP first, or the IdP is busy.
const USER_ERRORS: [&str; 6] = [
    "access_denied",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "temporarily_unavailable",
];

/// The error codes of an authorization response (RFC 6749 4.1.2.1, OpenID Connect Core 3.1.2.6).
const IDP_ERRORS: [&str; 16] = [
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
];

fn error_page(
    status: u16,
    reason: CallbackFailure,
    msg: &str,
    detail: Option<String>,
    clear: Vec<String>,
    again: &str,
) -> Step {
    // `msg` is ours (or an OAuth error code filtered to [A-Za-z0-9_]), so it needs no HTML escaping.
    // `again` is built from a checked host and an encoded path; escaped all the same, as it has two
    // sources.
    let again = html_escape(again);
    let body = format!(
        "<!doctype html><title>Login failed</title><h1>Login failed</h1><p>{msg}</p><p><a href=\"{again}\">Start again</a></p>\n"
    );
    let mut reply = html_page(status, body, Some(Metric::CallbackFailed(reason)));
    reply.detail = detail;
    with_cookies(Step::Respond(reply), clear)
}

/// A page of the filter's own (never cached: each is about one browser's login or session).
fn html_page(status: u16, body: String, metric: Option<Metric>) -> Reply {
    Reply {
        status,
        headers: vec![
            ("content-type", "text/html; charset=utf-8".into()),
            ("cache-control", "no-store".into()),
        ],
        body: body.into(),
        metric,
        detail: None,
        warn: false,
    }
}

/// Accessor used by tests and the adapter to check readiness without borrowing the state mutably.
pub fn provider(state: &State) -> Option<&Provider> {
    state.provider.ready()
}
