//! The only code that talks to the host: reads headers, runs the core's `Step`s, keeps callouts pending.
//! (`exports` hands it the host's callbacks; `host` makes the calls.)

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;

use alloc::rc::Rc;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use crate::config::{Config, Plugin, Unmatched};
use crate::flow::{self, CallbackFailure, Callout, Env, Metric, Pending, RefreshJob, State, Step};
use crate::headers::{self, HeaderBlock};
use crate::host::{self, Action, Buffer, Headers, LogLevel};
use crate::provider::{Fetch, ProviderState};
use crate::renewal::{self, Renewal};
use crate::revocation::Revocations;
use crate::secret::Secret;
use crate::throttle::Throttle;
use crate::workers;

/// After the decision just made recorded a logout (`State::ended_here`: a back-channel logout, or a
/// `/logout` of a session), hands this worker's list of ended sessions to the others.
fn share_if_ended(cfg: &Config, state: &mut State) {
    if core::mem::take(&mut state.ended_here) {
        share_revoked(cfg, state);
    }
}

/// Hands this worker's list of ended sessions to the others through Envoy's shared data: the back-channel
/// logouts (and the users' entries), and the `/logout`s, each part under its own key, each tried whatever
/// became of the other (found in review: a failure of the first kept the second from being tried). A part
/// that has not changed is not written. What the other workers wrote is taken in too: this worker's next
/// logout then judges the cap by the list they share (found in review: each judged by its own copy, up
/// to a tick old, so the copies of several workers could each fill up, and their union pushed other
/// users' logouts out).
fn share_revoked(cfg: &Config, state: &mut State) {
    let back_channel = share_part(&revocation_key(cfg), state, false);
    let logouts = share_part(&logouts_key(cfg), state, true);
    if back_channel && logouts {
        return;
    }
    log_warn(
        "oidc-filter: a logout holds on this worker only: the list the workers share would not take \
         it (the next logout this worker records shares it again)",
    );
}

/// Writes one part of the list (`logouts`: the `/logout`s', [`Revocations::merged_shared`]) under `key`,
/// merged into what is there; true when it is there (also
/// when nothing changed: then nothing is written, and no worker decodes it again).
fn share_part(key: &str, state: &mut State, logouts: bool) -> bool {
    // Compare-and-swap, so two workers recording at once don't lose each other's entry.
    for _ in 0..8 {
        // Unreadable: writing without its compare would drop the other workers' entries.
        let Ok((bytes, cas)) = host::get_shared_data(key) else {
            break;
        };
        let Some((merged, all)) =
            Revocations::merged_shared(bytes.as_deref(), &state.revoked, now(), logouts)
        else {
            break;
        };
        if bytes.as_deref() == Some(merged.as_slice())
            || host::set_shared_data(key, &merged, cas).is_ok()
        {
            // This worker's list and what the others shared, as written (not decoded again: with
            // thousands of logouts listed, that was a few ms of each `/logout`).
            state.revoked = all;
            return true;
        }
    }
    false
}

/// Envoy's shared data is shared by every worker's VM of this plugin: the one place a logout reaches them all.
/// The list of the site that took the logout; every site of its IdP client reads it.
fn revocation_key(cfg: &Config) -> String {
    format!("oidc-filter.revoked.{}.{}", cfg.client_id, cfg.cookie_name)
}

/// The key of the `/logout`s' part of that list (see `revocation`).
fn logouts_key(cfg: &Config) -> String {
    format!("oidc-filter.ended.{}.{}", cfg.client_id, cfg.cookie_name)
}

/// The shared-data key of one bucket of a site's renewal table (see `renewal`).
fn renewal_bucket(cfg: &crate::config::Config, key: &str) -> String {
    format!(
        "oidc-filter.renewal.{}.{}.{}",
        cfg.client_id,
        cfg.cookie_name,
        u32::from(renewal::bucket(key))
    )
}

/// Takes in the renewal pause the other workers shared ([`workers::take_pause`]).
fn take_shared_pause(cfg: &Config, state: &mut flow::State, now: u64) {
    if let Ok((Some(bytes), cas)) = host::get_shared_data(&workers::pause_key(cfg)) {
        workers::take_pause(state, &bytes, cas, now);
    }
}

/// Shares this site's renewal pause, as [`workers::pause_to_share`] decides.
fn share_pause(cfg: &Config, state: &mut flow::State, before: (u64, bool), answered: bool) {
    let key = workers::pause_key(cfg);
    let shared = || host::get_shared_data(&key).ok().and_then(|(b, _)| b);
    if let Some(until) = workers::pause_to_share(state, before, answered, shared) {
        let _ = host::set_shared_data(&key, &until, None);
    }
}

/// Shares how far the IdP's clock runs ahead when an ID token just changed what this worker reads
/// (`before`), compare-and-swap ([`workers::ahead_to_share`]).
fn share_ahead(cfg: &Config, state: &mut flow::State, before: flow::Ahead) {
    if state.idp_ahead == before {
        return;
    }
    let key = workers::ahead_key(cfg);
    for _ in 0..4 {
        let Ok((bytes, cas)) = host::get_shared_data(&key) else {
            return;
        };
        let (ours, write) = workers::ahead_to_share(cfg, state.idp_ahead, bytes.as_deref());
        state.idp_ahead = ours;
        let Some(bytes) = write else { return };
        if host::set_shared_data(&key, &bytes, cas).is_ok() {
            return;
        }
    }
}

/// Replies larger than this are not an IdP document or token response.
const MAX_REPLY: usize = 256 * 1024;
const TICK: Duration = Duration::from_secs(1);
/// The tick while requests wait for another worker's renewal, or to be run again (`exports::hold`).
const FAST_TICK: Duration = Duration::from_millis(100);
/// Waiting requests a callback of the root context carries on or answers at most, of each kind (parked,
/// held); the others wait for the next (fast) tick. Envoy runs the local reply (or direct response) of
/// each such request nested inside the one before, on V8's stack: about 300 in one callback overflowed it
/// (`Maximum call stack size exceeded`) and lost the VM.
pub const FINISH_PER_CALL: usize = 32;

/// Per-worker state shared by the root context and every request on that worker.
struct Shared {
    plugin: Rc<Plugin>,
    /// One per site, same order as `plugin.sites`.
    states: Vec<State>,
    /// Per site: the versions (compare-and-swap values) of the two parts of its shared list of ended
    /// sessions last taken in.
    seen: Vec<[Option<u32>; 2]>,
    /// When the logouts taken in were last pruned (seconds).
    pruned_at: u64,
    /// Requests with an expired token waiting for a renewal another request has claimed; the root context
    /// resumes them on its tick.
    parked: Vec<Parked>,
}

struct Parked {
    context_id: u32,
    site: usize,
    key: String,
    job: RefreshJob,
    /// Give up waiting then (the claim should have ended by itself long before).
    until: u64,
    set_cookies: Rc<RefCell<Vec<String>>>,
}

/// One counter per `Metric`, defined once per VM.
#[derive(Clone, Copy, Default)]
struct Metrics {
    forwarded: u32,
    login_redirect: u32,
    login_started: u32,
    login_completed: u32,
    refreshed: u32,
    refresh_failed: u32,
    logout: u32,
    unauthorized: u32,
    not_ready: u32,
    bypass: u32,
    bearer_passthrough: u32,
    forbidden: u32,
    backchannel_logout: u32,
    backchannel_refused: u32,
    idp_fetch_failed: u32,
    unmatched_passed: u32,
    unmatched_denied: u32,
    session_unopened: u32,
    callback_failed: [u32; 8],
}

const FAILURES: [CallbackFailure; 8] = [
    CallbackFailure::IdpError,
    CallbackFailure::BadRequest,
    CallbackFailure::StateMismatch,
    CallbackFailure::InvalidGrant,
    CallbackFailure::TokenEndpoint,
    CallbackFailure::IdToken,
    CallbackFailure::Nonce,
    CallbackFailure::Timeout,
];

impl Metrics {
    #[inline(never)]
    fn define() -> Metrics {
        let c = |name: &str| host::define_counter(&format!("oidc_filter.{name}")).unwrap_or(0);
        let mut m = Metrics {
            forwarded: c("sessions_forwarded"),
            login_redirect: c("login_redirects"),
            login_started: c("logins_started"),
            login_completed: c("logins_completed"),
            refreshed: c("refreshes"),
            refresh_failed: c("refresh_failures"),
            logout: c("logouts"),
            unauthorized: c("unauthorized"),
            not_ready: c("not_ready"),
            bypass: c("bypassed"),
            bearer_passthrough: c("bearer_passthrough"),
            forbidden: c("forbidden"),
            backchannel_logout: c("backchannel_logouts"),
            backchannel_refused: c("backchannel_logout_failures"),
            idp_fetch_failed: c("idp_fetch_failures"),
            unmatched_passed: c("unmatched_hosts_passed"),
            unmatched_denied: c("unmatched_hosts_denied"),
            session_unopened: c("session_cookies_unopened"),
            callback_failed: [0; 8],
        };
        for (i, f) in FAILURES.iter().enumerate() {
            m.callback_failed[i] = c(&format!("callback_failures.{}", f.name()));
        }
        m
    }

    fn count(&self, metric: Option<Metric>) {
        let id = match metric {
            None => return,
            Some(Metric::SessionForwarded) => self.forwarded,
            Some(Metric::LoginRedirect) => self.login_redirect,
            Some(Metric::LoginStarted) => self.login_started,
            Some(Metric::LoginCompleted) => self.login_completed,
            Some(Metric::Refreshed) => self.refreshed,
            Some(Metric::RefreshFailed) => self.refresh_failed,
            Some(Metric::Logout) => self.logout,
            Some(Metric::Unauthorized) => self.unauthorized,
            Some(Metric::NotReady) => self.not_ready,
            Some(Metric::Bypass) => self.bypass,
            Some(Metric::BearerPassthrough) => self.bearer_passthrough,
            Some(Metric::Forbidden) => self.forbidden,
            Some(Metric::RenewedForbidden) => {
                self.count(Some(Metric::Refreshed));
                self.forbidden
            }
            Some(Metric::BackchannelLogout) => self.backchannel_logout,
            Some(Metric::BackchannelLogoutRefused) => self.backchannel_refused,
            Some(Metric::UnmatchedHostPassed) => self.unmatched_passed,
            Some(Metric::UnmatchedHostDenied) => self.unmatched_denied,
            Some(Metric::SessionUnopened) => self.session_unopened,
            Some(Metric::CallbackFailed(f)) => {
                let i = FAILURES.iter().position(|x| *x == f).unwrap_or(0);
                self.callback_failed[i]
            }
        };
        if id == 0 {
            return;
        }
        match self.batched().iter().position(|&b| b == id) {
            // A per-request counter: added up here, handed to Envoy on the tick.
            Some(slot) => {
                if let Some(n) = UNFLUSHED.get(slot) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let _ = host::increment_metric(id, 1);
            }
        }
    }

    /// The counters a request on a common path bumps, in [`UNFLUSHED`]'s order.
    fn batched(&self) -> [u32; BATCHED] {
        [
            self.forwarded,
            self.login_redirect,
            self.unauthorized,
            self.bypass,
            self.bearer_passthrough,
            self.not_ready,
            self.unmatched_passed,
            self.unmatched_denied,
        ]
    }

    /// Hands Envoy the per-request counts added up since the last tick.
    fn flush(&self) {
        for (n, id) in UNFLUSHED.iter().zip(self.batched()) {
            let n = n.swap(0, Ordering::Relaxed);
            if n > 0 && id != 0 {
                let _ = host::increment_metric(id, n as i64);
            }
        }
    }
}

const BATCHED: usize = 8;

/// Requests this VM has counted but not yet handed to Envoy, one slot per [`Metrics::batched`] counter:
/// a host call per request is a measurable share of the logged-in path and of the redirect, so these
/// counters trail by at most one tick (1 s). Rarer events (logins, refreshes, failures) count at once.
static UNFLUSHED: [AtomicU64; BATCHED] = [const { AtomicU64::new(0) }; BATCHED];

/// The plugin's root context: configuration, discovery and JWKS on a timer.
pub struct Root {
    id: u32,
    shared: Option<Rc<RefCell<Shared>>>,
    fast_tick: bool,
    metrics: Metrics,
    /// Discovery and JWKS fetches in flight: token, site, which document (at most two per site), and
    /// the cluster it went through (for a warning should it fail).
    fetches: Vec<(u32, usize, Fetch, String)>,
}

impl Root {
    /// The root context `id`, not configured yet.
    pub fn new(id: u32) -> Root {
        Root {
            id,
            shared: None,
            fast_tick: false,
            metrics: Metrics::default(),
            fetches: Vec::new(),
        }
    }

    /// A discovery document or JWKS arrived (or the fetch failed: no `:status`).
    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let Some(at) = self.fetches.iter().position(|f| f.0 == token) else {
            return;
        };
        let (_, site, fetch, target) = self.fetches.swap_remove(at);
        let Some(shared) = &self.shared else { return };
        let reply = read_reply(body_size);
        let now = now();
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let plugin = s.plugin.clone();
        let (Some(cfg), Some(state)) = (plugin.sites.get(site), s.states.get_mut(site)) else {
            return;
        };
        let was_ready = state.provider.ready().is_some();
        match state.provider.on_reply(
            cfg,
            fetch,
            reply.as_ref().map(|(st, b)| (*st, b.as_slice())),
            now,
        ) {
            Ok(msg) => {
                if !was_ready || fetch == Fetch::Jwks {
                    log_info(&format!("oidc-filter: {}: {msg}", cfg.issuer));
                }
                if !was_ready && fetch == Fetch::Discovery {
                    warn_discovery_notes(cfg, &state.provider);
                }
            }
            Err(reason) => {
                let _ = host::increment_metric(self.metrics.idp_fetch_failed, 1);
                let moved = match &reply {
                    Some((300..=399, _)) => moved_to(),
                    _ => String::new(),
                };
                log_warn(&format!(
                    "oidc-filter: fetching the {} of {} (cluster `{target}`) failed: {reason}{moved}; retrying",
                    match fetch {
                        Fetch::Discovery => "discovery document",
                        Fetch::Jwks => "JWKS",
                    },
                    cfg.issuer
                ));
            }
        }
        drop(s);
        self.poll();
    }

    /// Reads and checks the plugin configuration; `false` refuses it (Envoy then refuses the listener).
    /// `known`: what the VM's other root contexts (earlier configurations, other plugins) fetched for a
    /// site like the given one (see `provider_for`).
    pub fn on_configure(&mut self, known: &dyn Fn(&Config) -> Option<ProviderState>) -> bool {
        let raw = host::get_buffer(Buffer::PluginConfiguration, 0, usize::MAX).unwrap_or_default();
        let env = |k: &str| crate::wasm::env_var(k);
        match Plugin::parse(&raw, &env) {
            Ok(plugin) => {
                self.metrics = Metrics::define();
                warn_inline_secrets(&plugin.inline_secrets);
                let mut states = Vec::new();
                for cfg in &plugin.sites {
                    let provider = self
                        .provider_for(cfg)
                        .or_else(|| known(cfg))
                        .unwrap_or_default();
                    // Otherwise nothing would say that a change took: nothing is fetched.
                    if let Some(p) = provider.ready() {
                        log_info(&format!(
                            "oidc-filter: {}: new configuration, discovery document and {} signing keys taken from another configuration of this issuer and cluster",
                            cfg.issuer,
                            p.jwks.len()
                        ));
                        warn_discovery_notes(cfg, &provider);
                    }
                    states.push(State {
                        provider,
                        ..State::default()
                    });
                }
                // Create the renewal buckets and the list of ended sessions before any request can race
                // to create one (a compare-and-swap needs an existing entry: two workers recording their
                // first back-channel logouts at once would otherwise lose one); an entry another VM
                // already has is left alone.
                let create = |name: &str, empty: &[u8]| {
                    if let Ok((None, _)) = host::get_shared_data(name) {
                        let _ = host::set_shared_data(name, empty, None);
                    }
                };
                for cfg in &plugin.sites {
                    for b in 0..renewal::BUCKETS {
                        let name = format!(
                            "oidc-filter.renewal.{}.{}.{}",
                            cfg.client_id,
                            cfg.cookie_name,
                            u32::from(b)
                        );
                        create(&name, &renewal::Table::default().encode());
                    }
                    // Every site's: `/logout` records there too, not only back-channel logouts.
                    create(&revocation_key(cfg), &Revocations::default().encode());
                    create(&logouts_key(cfg), &Revocations::default().encode_logouts());
                }
                let shared = Shared {
                    seen: {
                        let mut seen = Vec::new();
                        seen.resize(plugin.sites.len(), [None; 2]);
                        seen
                    },
                    pruned_at: 0,
                    plugin: Rc::new(plugin),
                    states,
                    parked: Vec::new(),
                };
                self.shared = Some(Rc::new(RefCell::new(shared)));
                self.fetches.clear();
                let _ = host::set_tick_period(TICK);
                self.poll();
                // Sessions ended by back-channel logout stay ended from the first request on, not from
                // the first tick.
                self.sync_revocations();
                true
            }
            Err(e) => {
                log_error(&format!("oidc-filter: {e}"));
                false
            }
        }
    }

    /// What this root fetched for a site of the same issuer through the same cluster as `like`, for a
    /// configuration that replaces it (or another plugin's in the same VM). Both must match: discovery
    /// checks only the document's `issuer`, so another cluster may have served documents of anyone's
    /// choosing.
    pub fn provider_for(&self, like: &Config) -> Option<ProviderState> {
        let s = self.shared.as_ref()?.try_borrow().ok()?;
        let site = s
            .plugin
            .sites
            .iter()
            .position(|cfg| cfg.issuer == like.issuer && cfg.idp_cluster == like.idp_cluster)?;
        s.states.get(site)?.provider.carried_over()
    }

    /// Ticks fast while requests wait to be resumed (parked, or held ones left over), slowly otherwise.
    /// Switches the effective context back to this root context when it changes the period.
    pub fn pace(&mut self, fast: bool) {
        if fast != self.fast_tick && host::set_effective_context(self.id).is_ok() {
            let _ = host::set_tick_period(if fast { FAST_TICK } else { TICK });
            self.fast_tick = fast;
        }
    }

    /// `true` while parked requests remain.
    pub fn on_tick(&mut self) -> bool {
        self.metrics.flush();
        self.poll();
        self.sync_revocations();
        // Last: it switches the effective context to each resumed request.
        self.resume_parked()
    }

    /// A new request's context; `None` before a configuration was accepted.
    pub fn create_http_context(&self, context_id: u32) -> Option<Http> {
        let shared = self.shared.clone()?;
        Some(Http {
            shared,
            metrics: self.metrics,
            id: context_id,
            site: 0,
            reading_body: false,
            pending: None,
            renewing: None,
            set_cookies: None,
            held: None,
            kept_until: None,
            gives_up_at: None,
            given_up: false,
        })
    }

    /// Resumes the waiting requests whose renewal has finished (or failed, or is overdue); `true` while
    /// some remain parked.
    fn resume_parked(&mut self) -> bool {
        let Some(shared) = self.shared.clone() else {
            return false;
        };
        let now = now();
        let mut ready = Vec::new();
        let left = {
            let Ok(mut s) = shared.try_borrow_mut() else {
                return self.fast_tick;
            };
            let plugin = s.plugin.clone();
            let parked = core::mem::take(&mut s.parked);
            // Requests that park set the fast tick themselves (`pace` sets the slow one once none waits).
            self.fast_tick |= !parked.is_empty();
            for p in parked {
                if ready.len() == FINISH_PER_CALL {
                    s.parked.push(p);
                    continue;
                }
                let (Some(cfg), Some(state)) = (plugin.sites.get(p.site), s.states.get_mut(p.site))
                else {
                    continue;
                };
                let step = match renewal_state(cfg, &p.key, now) {
                    Renewal::Done(lines) => flow::adopt_renewal(cfg, state, p.job, &lines, now),
                    Renewal::Claimed if now < p.until => {
                        s.parked.push(p);
                        continue;
                    }
                    _ => flow::renewal_failed(cfg, state, p.job, now),
                };
                ready.push((p.context_id, step, p.set_cookies, p.site));
            }
            !s.parked.is_empty()
        };
        for (context_id, step, set_cookies, site) in ready {
            // A request whose client went away is gone: nothing to resume.
            if host::set_effective_context(context_id).is_err() {
                continue;
            }
            let site = || site_label(&shared, site);
            match apply(step, &self.metrics, &mut Some(set_cookies), None, &site) {
                Ok(Action::Continue) => {
                    let _ = host::resume_request();
                }
                Ok(_) => {}
                // Adopting or failing a renewal never calls out or reads a body.
                Err(_) => respond(500, &[("cache-control", Cow::Borrowed("no-store"))], b""),
            }
        }
        left
    }

    /// Takes in the logouts other workers recorded, and forgets expired ones.
    fn sync_revocations(&self) {
        if let Some(shared) = &self.shared {
            sync_revocations(shared);
        }
    }

    fn poll(&mut self) {
        let Some(shared) = &self.shared else { return };
        let now = now();
        let shared = shared.clone();
        let Ok(plugin) = shared.try_borrow().map(|s| s.plugin.clone()) else {
            return;
        };
        for (site, cfg) in plugin.sites.iter().enumerate() {
            let next = match shared.try_borrow_mut() {
                Ok(mut s) => s
                    .states
                    .get_mut(site)
                    .and_then(|st| st.provider.poll(cfg, now)),
                Err(_) => None,
            };
            let Some((call, fetch)) = next else { continue };
            match dispatch(self.id, &call) {
                Ok(token) => {
                    self.fetches.push((token, site, fetch, call.cluster));
                }
                Err(reason) => {
                    let _ = host::increment_metric(self.metrics.idp_fetch_failed, 1);
                    log_warn(&format!("oidc-filter: cannot call the IdP: {reason}"));
                    if let Ok(mut s) = shared.try_borrow_mut()
                        && let Some(st) = s.states.get_mut(site)
                    {
                        let _ = st.provider.on_reply(cfg, fetch, None, now);
                    }
                }
            }
        }
    }
}

/// Takes in the logouts other workers recorded (those lists that changed since last taken in), and
/// forgets expired ones: on each tick, and before a renewal's answer is carried out (a `/logout` on
/// another worker since it was asked must end it; found in review: a tick is up to a second away).
#[inline(never)]
fn sync_revocations(shared: &RefCell<Shared>) {
    let now = now();
    let Ok(mut s) = shared.try_borrow_mut() else {
        return;
    };
    let plugin = s.plugin.clone();
    let s = &mut *s;
    // The clock stepped back: a reading far ahead may have pruned logouts whose sessions live on, so
    // the shared lists are taken in again.
    if now < s.pruned_at {
        s.seen.fill([None; 2]);
    }
    s.pruned_at = now;
    // Each list once, merged per IdP client: the IdP posts a client's logouts to one of its sites,
    // and they end the others' sessions too.
    let mut lists: Vec<(&Config, Revocations)> = Vec::new();
    for (o, seen) in plugin.sites.iter().zip(s.seen.iter_mut()) {
        // Both parts: the back-channel logouts, and the `/logout`s.
        for (key, seen) in [revocation_key(o), logouts_key(o)]
            .iter()
            .zip(seen.iter_mut())
        {
            if let Ok((Some(bytes), cas)) = host::get_shared_data(key) {
                // Unchanged since it was last taken in (every write changes the version): nothing new
                // in it, and a list of thousands of logouts is not decoded every second.
                if cas.is_some() && cas == *seen {
                    continue;
                }
                *seen = cas;
                let list = Revocations::decode(&bytes);
                match lists.iter_mut().find(|(c, _)| c.same_client(o)) {
                    Some((_, all)) => all.merge(&list),
                    None => lists.push((o, list)),
                }
            }
        }
    }
    for (cfg, state) in plugin.sites.iter().zip(s.states.iter_mut()) {
        if let Some((_, all)) = lists.iter().find(|(c, _)| c.same_client(cfg)) {
            state.revoked.merge(all);
        }
        state.revoked.prune(now);
        // How far the IdP's clock runs ahead, as the other workers saw it (`share_ahead`).
        if let Ok((bytes, _)) = host::get_shared_data(&workers::ahead_key(cfg))
            && let Some(shared) = workers::ahead_of(cfg, bytes.as_deref())
        {
            state.idp_ahead = state.idp_ahead.and(shared);
        }
    }
}

/// A renewal a request claimed in the shared renewal table.
struct Claim {
    /// Its table key.
    key: String,
    /// The sealed session it renews.
    sealed: String,
    /// When the claim lapses (which tells it from a later claim of another request).
    until: u64,
    /// The renewed cookies the worker's cache held for that session when it was claimed: an earlier
    /// renewal's, not this one's.
    before: Option<Vec<String>>,
}

/// One request.
pub struct Http {
    shared: Rc<RefCell<Shared>>,
    metrics: Metrics,
    id: u32,
    site: usize,
    reading_body: bool,
    pending: Option<(u32, Box<Pending>)>,
    /// The renewal this request claimed.
    renewing: Option<Claim>,
    /// The response's `Set-Cookie` lines. Shared with the root context, which fills it for a request it
    /// resumes; made only when there is a line to add or a request parks (not an allocation per request).
    set_cookies: Option<Rc<RefCell<Vec<String>>>>,
    /// Held at its headers until the IdP's documents arrive (`exports::hold`): whether the headers
    /// ended the stream, and when to stop waiting.
    held: Option<(bool, u64)>,
    /// Ended while keys fetched for a new `kid` were on their way: kept for them until then.
    kept_until: Option<u64>,
    /// When (ms) this request stops waiting for its renewal's call, which goes on (`give_up`).
    gives_up_at: Option<u64>,
    /// It did: the call's answer is taken in as one that came after the request ended.
    given_up: bool,
}

/// Whether `pending` waits for keys fetched for a new `kid` (of a login's or a logout's token).
fn fetches_keys(pending: &Pending) -> bool {
    matches!(pending, Pending::CodeJwks(..) | Pending::LogoutJwks(..))
}

/// At most this many requests wait for another request's renewal per root context, each with its session;
/// more are answered 503 with `Retry-After` at once.
const MAX_PARKED: usize = 512;
/// And together they hold at most this many bytes of their own (sessions, paths, cookies): 512 requests of
/// an 8 KB session fit; 512 of 60 KB paths would have grown the worker's memory, which Wasm never gives
/// back, by 30 MiB (found in review).
const MAX_PARKED_BYTES: usize = 4 << 20;

impl Drop for Http {
    /// Ended (its client went away) before the renewal it claimed finished: the waiting requests stop
    /// waiting. (In `Drop`, which `exports` runs from its tick-time sweep of ended contexts, rather than in
    /// `proxy_on_done` or `proxy_on_delete`: the module exports neither, two trips into the VM less per
    /// request.)
    fn drop(&mut self) {
        self.end_renewal(None, false);
    }
}

impl Http {
    /// True when nothing is left for this request's later callbacks: no callout, body or renewal to wait
    /// for, and no `Set-Cookie` line for the response.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none()
            && !self.reading_body
            && self.renewing.is_none()
            && self.set_cookies.is_none()
            && self.held.is_none()
    }

    /// The IdP answered this request's callout (or the callout failed: no `:status`).
    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        if self.given_up {
            return self.on_orphaned_call_response(token, body_size);
        }
        let Some((expected, pending)) = self.pending.take() else {
            return;
        };
        if expected != token {
            self.fail();
            return;
        }
        if let Action::Continue = self.resume(*pending, read_reply(body_size)) {
            let _ = host::resume_request();
        }
    }

    /// Carries a callout's outcome on through the core: the IdP's reply, or `None` when there was none (a
    /// timeout, a reset, or a call the host would not make).
    fn resume(&mut self, pending: Pending, reply: Option<(u16, Vec<u8>)>) -> Action {
        self.resume_unsent(pending, reply, None)
    }

    /// [`Http::resume`], for a call the host would not send: `unsent` says why (`flow::Env::unsent`).
    fn resume_unsent(
        &mut self,
        pending: Pending,
        reply: Option<(u16, Vec<u8>)>,
        unsent: Option<String>,
    ) -> Action {
        let Some((step, renewed)) = self.reply_step(pending, reply, unsent) else {
            self.fail();
            return Action::Pause;
        };
        if let Some(renewed) = renewed {
            self.end_renewal(renewed, false);
        }
        self.run(step, None)
    }

    /// The IdP answered a callout of this request after the request ended (its client went away). A
    /// renewal it brings is still taken in, and published for the session's next request to adopt: an
    /// IdP that rotates refresh tokens has retired the old one already, so the session would otherwise
    /// end at its next renewal. Keys fetched for a new `kid` are taken in too, and a back-channel logout
    /// that waited for them recorded (found in review: both were dropped, while the fetch had used up the
    /// worker's one fetch for a `kid` in 30 s, so logins and logouts signed with the new key failed
    /// meanwhile; an app that answers the IdP's POST before the filter does ends that request early).
    /// Nothing is answered: nobody is left to answer.
    pub fn on_orphaned_call_response(&mut self, token: u32, body_size: usize) {
        let Some((expected, pending)) = self.pending.take() else {
            return;
        };
        if expected != token || (self.renewing.is_none() && !fetches_keys(&pending)) {
            return;
        }
        let reply = read_reply(body_size);
        let Some((step, renewed)) = self.reply_step(*pending, reply, None) else {
            return;
        };
        let (step, renewed) = match step {
            // Keys for the new token's `kid`: fetched still, the renewal finished when they come.
            Step::Call(call, pending) => match dispatch(self.id, &call) {
                Ok(token) => {
                    self.pending = Some((token, pending));
                    return;
                }
                // As a request that is still there goes on: without them.
                Err(_) => match self.reply_step(*pending, None, None) {
                    Some(done) => done,
                    None => return,
                },
            },
            step => (step, renewed),
        };
        // A request that stopped waiting for its renewal was answered, counted and logged then, as an
        // outage (`give_up`): a late end that is an outage again (no answer, Envoy's own `504` or `503`, the
        // IdP's `5xx`, an answer it cannot use, keys that did not come) is that same failure, not a second
        // (found by black-box tests: two warnings and two counts of `refresh_failed` for one hung
        // renewal; again for one whose connection was cut after it was given up). A renewal made late, or
        // a session the IdP ended, is counted.
        let again = self.given_up
            && match &step {
                // (A `200` is `userinfo_path`'s answer with the old token's identity.)
                Step::Respond(r) => {
                    matches!(r.status, 200 | 503) && r.metric == Some(Metric::RefreshFailed)
                }
                Step::Forward(f) => f.metric == Some(Metric::RefreshFailed),
                _ => false,
            };
        if !again {
            account(&step, &self.metrics, &|| {
                site_label(&self.shared, self.site)
            });
        }
        if let Some(renewed) = renewed {
            self.end_renewal(renewed, true);
        }
    }

    /// True while this request, ended or not, waits for an answer of the IdP worth taking in without
    /// it: to the renewal it claimed (while the claim holds), or keys for a new `kid` (for a minute at
    /// most from when it is first asked: a callout is answered within its timeout, 60 s at most). An
    /// ended one is kept for that answer (`on_orphaned_call_response`).
    pub fn awaits_answer(&mut self, now: u64) -> bool {
        let Some((_, pending)) = &self.pending else {
            return false;
        };
        self.renewing.as_ref().is_some_and(|c| now < c.until)
            || (fetches_keys(pending) && now < *self.kept_until.get_or_insert(now + 61))
    }

    /// Whether this request waits for its renewal's call past `callout_timeout` at `now` (ms; see
    /// `give_up`).
    pub fn gives_up_by(&self, now: u64) -> bool {
        self.gives_up_at.is_some_and(|t| now >= t)
    }

    /// Stops waiting for the renewal's call, which goes on (twice `callout_timeout`): the request is
    /// answered as if the IdP had not answered (its token while it lasts, else `503`), while the renewal
    /// stays claimed, so that no other request refreshes with the same refresh token meanwhile, and its
    /// answer, when it comes, is kept for the session's next request (found by a black-box test: Envoy
    /// gave up the call at `callout_timeout`, the IdP had made the renewal and, rotating refresh tokens,
    /// refused the session's next one: the user was logged out by a few seconds' stall).
    pub fn give_up(&mut self) {
        // Once: also when the answer came first (found in review: the request was looked at every tick).
        self.gives_up_at = None;
        let step = {
            let Some((_, pending)) = &self.pending else {
                return;
            };
            let Ok(mut s) = self.shared.try_borrow_mut() else {
                return;
            };
            let plugin = s.plugin.clone();
            let (Some(cfg), Some(state)) =
                (plugin.sites.get(self.site), s.states.get_mut(self.site))
            else {
                return;
            };
            let before = (state.renewals_paused_until, state.renewals_failing);
            let Some(step) = flow::renewal_given_up(cfg, state, pending, now()) else {
                return;
            };
            share_pause(cfg, state, before, false);
            step
        };
        self.given_up = true;
        if let Action::Continue = self.run(step, None) {
            let _ = host::resume_request();
        }
    }

    /// The core's step for a callout's outcome, and the renewal it ended, if this request claimed one
    /// (`Some(None)`: ended without new cookies). `None` when the worker's state is out of reach.
    #[allow(clippy::type_complexity)]
    fn reply_step(
        &self,
        pending: Pending,
        reply: Option<(u16, Vec<u8>)>,
        unsent: Option<String>,
    ) -> Option<(Step, Option<Option<Vec<String>>>)> {
        let renewal = matches!(pending, Pending::Refresh(_) | Pending::RefreshJwks(..));
        if renewal {
            sync_revocations(&self.shared);
        }
        let now = now();
        let mut s = self.shared.try_borrow_mut().ok()?;
        let plugin = s.plugin.clone();
        let (Some(cfg), Some(state)) = (plugin.sites.get(self.site), s.states.get_mut(self.site))
        else {
            return None;
        };
        let mut random = random;
        let mut env = Env {
            now,
            random: &mut random,
            unsent: unsent.as_deref(),
        };
        let before = (state.renewals_paused_until, state.renewals_failing);
        let ahead = state.idp_ahead;
        let step = flow::on_reply(
            cfg,
            state,
            &mut env,
            pending,
            reply.as_ref().map(|(st, b)| (*st, b.as_slice())),
        );
        share_if_ended(cfg, state);
        let answered = core::mem::take(&mut state.idp_answered);
        share_pause(cfg, state, before, answered);
        share_ahead(cfg, state, ahead);
        // A renewal this request claimed has ended (unless it now fetches keys): publish the cookies made
        // since the claim (this renewal's, or another request's on this worker meanwhile), or let go.
        // Not what an earlier renewal of this cookie left in the cache (found by a black-box test: a
        // renewal that met an outage published those again as its own, and the other workers' requests
        // took them, expired, for a renewal just made: "renewed while this request was on its way").
        let renewed = match (&step, &self.renewing) {
            (Step::Call(..), _) | (_, None) => None,
            (_, Some(c)) => Some(
                flow::renewed_cookies(state, &c.sealed)
                    .filter(|lines| Some(lines) != c.before.as_ref()),
            ),
        };
        Some((step, renewed))
    }

    /// The request's headers: decide (`flow::on_request`) and carry the decision out.
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        self.headers_read(end_of_stream, None)
    }

    /// Runs a request held at its headers again, now that the IdP has answered a fetch (or on a tick):
    /// it goes on as if it had just arrived, or is held once more while its deadline lasts. `None`: held
    /// (again), nothing was sent.
    pub fn rerun(&mut self) -> Option<Action> {
        let (end_of_stream, until) = self.held.take()?;
        let action = self.headers_read(end_of_stream, Some(until));
        self.held.is_none().then_some(action)
    }

    /// `held_until`: the deadline of a request held before.
    fn headers_read(&mut self, end_of_stream: bool, held_until: Option<u64>) -> Action {
        let mut headers = request_headers();
        headers.body_follows = !end_of_stream;
        let action = self.on_headers(&headers, end_of_stream, held_until);
        host::recycle_header_buffer(headers.into_bytes());
        action
    }

    fn on_headers(
        &mut self,
        headers: &HeaderBlock,
        end_of_stream: bool,
        held_until: Option<u64>,
    ) -> Action {
        let now = now();
        let (step, hold) = {
            let Ok(mut s) = self.shared.try_borrow_mut() else {
                self.fail();
                return Action::Pause;
            };
            let plugin = s.plugin.clone();
            let site = match plugin
                .site_for_request(|| headers.get(":authority").map(|a| a.into_owned()))
            {
                Ok(Some(i)) => i,
                Ok(None) => {
                    drop(s);
                    return self.unmatched(&plugin, headers);
                }
                Err(_) => {
                    drop(s);
                    respond(
                        400,
                        &[
                            ("content-type", Cow::Borrowed("text/plain; charset=utf-8")),
                            ("cache-control", Cow::Borrowed("no-store")),
                        ],
                        b"The Host header is not a host name and port.\n",
                    );
                    return Action::Pause;
                }
            };
            self.site = site;
            let (Some(cfg), Some(state)) = (plugin.sites.get(site), s.states.get_mut(site)) else {
                drop(s);
                self.fail();
                return Action::Pause;
            };
            let mut random = random;
            let mut env = Env {
                now,
                random: &mut random,
                unsent: None,
            };
            let step = flow::on_request(cfg, state, &mut env, headers);
            share_if_ended(cfg, state);
            let unopened = core::mem::take(&mut state.unopened);
            // Not ready, but the IdP's documents are on their way (a new VM's first fetch): wait for
            // them, up to a little longer than that fetch may take, rather than answer 503. It is two
            // fetches, one after the other (the discovery document, then the keys), each given
            // `callout_timeout`: one fetch and 2 s from arrival while the discovery document is on its
            // way, one more once it is in. A fetch that fails ends the wait (no longer warming), unless
            // its retry is under way by then (whole seconds of backoff: it may start within the same
            // second), which the bound then cuts short (found by a CI run: a request waited 8 s for an
            // IdP that hung).
            let hold = match &step {
                Step::Respond(r) if r.metric == Some(Metric::NotReady) => {
                    let t = cfg.callout_timeout.as_secs();
                    let provider = &state.provider;
                    Some(held_until.unwrap_or(now + 2 * t + 2)).filter(|until| {
                        let until = if provider.meta().is_some() {
                            *until
                        } else {
                            until - t
                        };
                        now < until && provider.warming()
                    })
                }
                _ => None,
            };
            // Counted once, when the request is decided: not on each run of a held one.
            if unopened && hold.is_none() {
                self.metrics.count(Some(Metric::SessionUnopened));
            }
            (step, hold)
        };
        if let Some(until) = hold
            && crate::exports::hold(self.id)
        {
            self.held = Some((end_of_stream, until));
            return Action::Pause;
        }
        if end_of_stream && matches!(step, Step::ReadBody) {
            return self.backchannel_logout(&[]);
        }
        self.run(step, Some(headers))
    }

    /// A chunk of the request body: only a back-channel logout's is read, the rest passes, unless the
    /// request is paused: held, waiting for a callout, or parked (the root context, which resumes it,
    /// holds a second reference to its `Set-Cookie` list). Envoy stops a paused request's body anyway,
    /// unless the plugin sets `allow_on_headers_stop_iteration`: then a `Continue` here would send the
    /// request on unchecked.
    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.reading_body {
            return if self.paused() {
                Action::Watermark
            } else {
                Action::Continue
            };
        }
        // Logout tokens are small; a huge body is not one, however it arrives (found in review: one
        // whose last piece took it past the bound was cut and refused 400).
        if body_size > 64 * 1024 {
            self.reading_body = false;
            respond(413, &[("cache-control", Cow::Borrowed("no-store"))], b"");
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.reading_body = false;
        let body = host::get_buffer(Buffer::RequestBody, 0, body_size).unwrap_or_default();
        self.backchannel_logout(&body)
    }

    /// True while the request waits: held, waiting for a callout (not a renewal's it stopped waiting for:
    /// found in review, the body of a request that went on then was held for good), or parked (the root
    /// context, which resumes it, holds a second reference to its `Set-Cookie` list).
    fn paused(&self) -> bool {
        self.held.is_some()
            || self.pending.is_some() && !self.given_up
            || self
                .set_cookies
                .as_ref()
                .is_some_and(|c| Rc::strong_count(c) > 1)
    }

    /// The request's trailers. A back-channel logout's body that ends with trailers is refused (no IdP
    /// sends one): passing them would make Envoy send the body this filter holds on to the app, unread.
    /// A request that waits keeps its trailers waiting too: Envoy hands them over when the plugin sets
    /// `allow_on_headers_stop_iteration`, and a `Continue` would then send the request on unchecked.
    pub fn on_request_trailers(&mut self) -> Action {
        if !self.reading_body {
            return if self.paused() {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        self.reading_body = false;
        respond(400, &[("cache-control", Cow::Borrowed("no-store"))], b"");
        Action::Pause
    }

    /// The response's headers: add the cookies the request's step set.
    pub fn on_response_headers(&mut self) -> Action {
        // A back-channel post's headers went on while the filter waits for its body, and an answer came
        // before it (the app's, one that ignores a body: a catch-all, a stream; or Envoy's: no route, no
        // healthy upstream): that answer to an anonymous request must not reach the client (found in
        // review). The logout token is not read: `503`.
        // So too while it fetches the keys the logout token needs (found in review: the body had come, and
        // the app's answer went out during the fetch). The fetch goes on: its answer is taken in without
        // the request (`on_orphaned_call_response`).
        let fetching_keys = self
            .pending
            .as_ref()
            .is_some_and(|(_, p)| matches!(**p, Pending::LogoutJwks(..)));
        if self.reading_body || fetching_keys {
            self.reading_body = false;
            return self.run(flow::backchannel_answered_early(), None);
        }
        let mut added = false;
        // Taken: nothing adds a line after the response's headers, and a request with none left is idle
        // (`exports` then lets it go, rather than keep a long-lived stream in every tick's sweep).
        if let Some(lines) = self.set_cookies.take() {
            for c in lines.borrow_mut().drain(..) {
                added |= host::add_header(Headers::Response, "set-cookie", &c).is_ok();
            }
        }
        // The app may have marked its answer cacheable, but now it carries this user's session: no cache
        // (a CDN in front of the gateway) may keep it and hand the cookie to others. One response per
        // renewal, so the app's own caching of it is little loss. Also no cache that reads a field of
        // its own first (RFC 9213's `CDN-Cache-Control` and a CDN's, `Surrogate-Control`, Akamai's
        // `Edge-Control`, nginx's `X-Accel-Expires`) or only `Expires`: those fields go (found by a black-box test).
        if added {
            let _ = host::set_header(Headers::Response, "cache-control", Some("no-store"));
            for name in [
                "cdn-cache-control",
                "cloudflare-cdn-cache-control",
                "surrogate-control",
                "edge-control",
                "x-accel-expires",
                "expires",
            ] {
                let _ = host::set_header(Headers::Response, name, None);
            }
        }
        Action::Continue
    }

    /// Carries out `step`; `headers`, when at hand, spares removing headers the request does not have.
    fn run(&mut self, step: Step, headers: Option<&HeaderBlock>) -> Action {
        let step = match step {
            Step::Call(call, pending) => match *pending {
                Pending::Refresh(job) => match self.claim_renewal(job) {
                    Ok(job) => Step::Call(call, Box::new(Pending::Refresh(job))),
                    Err(Some(step)) => step,
                    // Parked: the root context resumes it.
                    Err(None) => return Action::Pause,
                },
                other => Step::Call(call, Box::new(other)),
            },
            other => other,
        };
        let (shared, site) = (&self.shared, self.site);
        match apply(step, &self.metrics, &mut self.set_cookies, headers, &|| {
            site_label(shared, site)
        }) {
            Ok(action) => action,
            Err(Step::ReadBody) => self.read_body(headers),
            Err(Step::Call(call, pending)) => self.call_out(call, pending),
            // No other step is left to carry out here; should one ever be, it is not let through.
            Err(_) => {
                self.fail();
                Action::Pause
            }
        }
    }

    /// A request whose body the filter must read (`Step::ReadBody`). Out of `run`, as `call_out` and
    /// `claim_renewal`: Envoy's V8 compiles every function when the plugin loads, and the memory a
    /// function's compile takes, which Envoy's allocator keeps, grows with the function: the largest
    /// compile sets what stays.
    #[inline(never)]
    fn read_body(&mut self, headers: Option<&HeaderBlock>) -> Action {
        // Proxy-Wasm hosts turn a pause here into "stop all iteration" (Envoy does unless the plugin
        // sets `allow_on_headers_stop_iteration`, which Istio cannot), and then never hand this filter
        // the body. So the headers go on, stripped of anything that could stand for a user, and the
        // body is held in `on_http_request_body`, which answers locally.
        if !self.strip_credentials(headers) {
            return refused();
        }
        self.reading_body = true;
        Action::Continue
    }

    /// A step that calls the IdP: sent, or failed as the step's kind fails. Out of `run` as `read_body`.
    #[inline(never)]
    fn call_out(&mut self, call: Callout, pending: Box<Pending>) -> Action {
        match dispatch(self.id, &call) {
            Ok(token) => {
                // A renewal's call lasts twice `callout_timeout`; the request waits the first half.
                if let Pending::Refresh(_) = *pending {
                    // (Half the call's whole seconds, in ms: `as_millis` is 128-bit.)
                    let half = call.timeout.as_secs().saturating_mul(500);
                    self.gives_up_at = Some(host::now_millis().saturating_add(half));
                }
                self.pending = Some((token, pending));
                Action::Pause
            }
            Err(reason) => match *pending {
                // A login whose code exchange cannot be sent fails like one the token endpoint
                // answered badly: its page, its count and its log line, which names the cluster.
                Pending::Code(x) => {
                    let step = match self.shared.try_borrow() {
                        Ok(s) => s
                            .plugin
                            .sites
                            .get(self.site)
                            .map(|cfg| flow::code_unsent(cfg, x, reason)),
                        Err(_) => None,
                    };
                    match step {
                        Some(step) => self.run(step, None),
                        None => {
                            self.fail();
                            Action::Pause
                        }
                    }
                }
                // Anything else that cannot be sent goes on as an IdP that did not answer: a refresh
                // with its token while that lasts, as through an outage (its log line says the call was
                // not sent, `resume_unsent`); a step waiting for keys without them.
                p => {
                    CALL_FAILED.log(LogLevel::Warn, || {
                        format!("oidc-filter: cannot call the IdP: {reason}")
                    });
                    self.resume_unsent(p, None, Some(reason))
                }
            },
        }
    }

    /// Makes this request the one that renews its session (`Ok`: go ahead and refresh), unless another
    /// request has: then the old token while it lasts or that request's renewal (`Err(Some)`), or a wait for
    /// it (`Err(None)`, the request is parked).
    #[inline(never)]
    fn claim_renewal(&mut self, job: RefreshJob) -> Result<RefreshJob, Option<Step>> {
        let now = now();
        let Ok(mut s) = self.shared.try_borrow_mut() else {
            return Ok(job);
        };
        let plugin = s.plugin.clone();
        let (Some(cfg), Some(state)) = (plugin.sites.get(self.site), s.states.get_mut(self.site))
        else {
            return Ok(job);
        };
        let key = renewal::key(job.sealed());
        // A request parked for the renewal waits as long as its token request may take (twice
        // `callout_timeout`, `flow.rs`) and 2 s; the claim holds for a fetch of keys after it too (found
        // in review: it lapsed during that fetch, and another worker refreshed with the same token).
        let until = now + 2 * cfg.callout_timeout.as_secs() + 2;
        let claim_until = until + cfg.callout_timeout.as_secs();
        take_shared_pause(cfg, state, now);
        let before = (state.renewals_paused_until, state.renewals_failing);
        let paused = state.renewals_paused(now);
        // Or this session's own renewal met an outage moments ago (`flow::renewal_held`).
        let held = flow::renewal_held(state, &job, now);
        let found = update_renewals(cfg, &key, now, |t| match t.get(&key, now) {
            // Renewals paused on this worker: no claim (another worker may renew it meanwhile).
            Renewal::Free if held => Some(Renewal::Free),
            Renewal::Free => {
                t.claim(&key, claim_until);
                None
            }
            other => Some(other),
        });
        let claimed = match found {
            // Free, but this worker's renewals are paused.
            Ok(Some(Renewal::Free)) => flow::renewal_claim(cfg, state, job, now).map_err(Some),
            Ok(Some(Renewal::Done(lines))) => {
                // A renewal kept for hours is the grace period's from here (`Table::taken`).
                let _ = update_renewals(cfg, &key, now, |t| (!t.taken(&key, now)).then_some(()));
                Err(Some(flow::adopt_renewal(cfg, state, job, &lines, now)))
            }
            // Claimed, while this worker's renewals are paused after an outage: answered at once, not
            // parked for a renewal whose request gave up waiting (its call goes on, `Http::give_up`).
            Ok(Some(Renewal::Claimed)) if paused => {
                Err(Some(flow::renewal_paused(cfg, state, job, now)))
            }
            Ok(Some(Renewal::Claimed)) => match flow::renewal_busy(cfg, job, now) {
                Ok(step) => Err(Some(step)),
                // Each waits with its session: a bound on the memory a burst can take.
                Err(job)
                    if s.parked.len() >= MAX_PARKED
                        || s.parked.iter().map(|p| p.job.held_bytes()).sum::<usize>()
                            + job.held_bytes()
                            > MAX_PARKED_BYTES =>
                {
                    Err(Some(flow::renewal_crowded(&job)))
                }
                Err(job) => {
                    // The first to park sets the fast tick; the others find it set (each call restarts
                    // Envoy's timer a full period from then: found by a schedule test, requests parking
                    // less than 100 ms apart held off every tick, and the requests it would have
                    // resumed or let go, logouts taken in from the other workers, counters).
                    if s.parked.is_empty() {
                        let _ = host::set_tick_period(FAST_TICK);
                    }
                    s.parked.push(Parked {
                        context_id: self.id,
                        site: self.site,
                        key,
                        job,
                        until,
                        set_cookies: self.set_cookies.get_or_insert_with(Rc::default).clone(),
                    });
                    Err(None)
                }
            },
            // Claimed by us (the claim written); not paused, so `renewal_claim` lets it go (as a probe
            // while renewals keep failing).
            Ok(None) => flow::renewal_claim(cfg, state, job, now)
                .inspect(|job| {
                    self.renewing = Some(Claim {
                        key,
                        sealed: job.sealed().to_string(),
                        until: claim_until,
                        before: flow::renewed_cookies(state, job.sealed()),
                    });
                })
                .map_err(Some),
            // The table is unusable (or would not take the claim): refreshing is what the filter did
            // before it, and with no claim of ours there is none to publish or let go.
            _ => flow::renewal_claim(cfg, state, job, now).map_err(Some),
        };
        // A probe going out: the other workers wait for it too.
        if let Some(state) = s.states.get_mut(self.site) {
            share_pause(cfg, state, before, false);
        }
        claimed
    }

    /// Publishes the renewal this request claimed (`renewed`: its `Set-Cookie` lines), or lets it go.
    /// `undelivered`: no browser gets those lines from this request (it stopped waiting, or its client
    /// went away), so the session's next request adopts them, however late, within its lifetime.
    fn end_renewal(&mut self, renewed: Option<Vec<String>>, undelivered: bool) {
        let Some(Claim { key, until, .. }) = self.renewing.take() else {
            return;
        };
        let now = now();
        let Ok(s) = self.shared.try_borrow() else {
            return;
        };
        let Some(cfg) = s.plugin.sites.get(self.site) else {
            return;
        };
        let _ = update_renewals(cfg, &key, now, |t| {
            match renewed.clone() {
                Some(lines) => t.complete(
                    &key,
                    lines,
                    now,
                    undelivered.then_some(cfg.session_lifetime),
                ),
                None => t.release(&key, until),
            }
            None::<()>
        });
    }

    /// Validates a posted logout token and records the logout where every worker sees it.
    fn backchannel_logout(&mut self, body: &[u8]) -> Action {
        let now = now();
        let step = {
            let Ok(mut s) = self.shared.try_borrow_mut() else {
                self.fail();
                return Action::Pause;
            };
            let plugin = s.plugin.clone();
            let (Some(cfg), Some(state)) =
                (plugin.sites.get(self.site), s.states.get_mut(self.site))
            else {
                drop(s);
                self.fail();
                return Action::Pause;
            };
            let mut random = random;
            let env = Env {
                now,
                random: &mut random,
                unsent: None,
            };
            let step = flow::on_backchannel_logout(cfg, state, &env, body);
            share_if_ended(cfg, state);
            step
        };
        self.run(step, None)
    }

    /// Removes every header that could stand for a user (`Authorization`, `Cookie`, identity headers, the
    /// headers no client may send, and their copies spelled with `_`). The body is answered here, but Envoy's router has sent the headers
    /// upstream by then (and resets that request when the answer comes): false when any removal failed.
    fn strip_credentials(&self, headers: Option<&HeaderBlock>) -> bool {
        let read;
        let headers = match headers {
            Some(h) => h,
            None => {
                read = request_headers();
                &read
            }
        };
        if headers.is_empty() {
            return false;
        }
        let Ok(s) = self.shared.try_borrow() else {
            return false;
        };
        let Some(cfg) = s.plugin.sites.get(self.site) else {
            return false;
        };
        let mut done = strip_never_from_client(headers)
            & remove_request_header("authorization")
            & remove_request_header("cookie");
        for (name, _) in &cfg.identity_headers {
            done &= set_identity_header(headers, name, None);
        }
        done
    }

    /// A host no site serves: pass (without any identity header a client may have sent) or 403.
    fn unmatched(&self, plugin: &Plugin, headers: &HeaderBlock) -> Action {
        match plugin.unmatched {
            Unmatched::Pass => {
                // No site's cookie is a credential for this host's app, and no client's header its user.
                let mut done = strip_never_from_client(headers);
                if let Some(edit) = headers.cookie().and_then(|c| plugin.strip_all_cookies(&c)) {
                    done &= host::set_header(Headers::Request, "cookie", edit.as_deref()).is_ok();
                }
                // Each site's list holds every name any site sets (`config`): the first's is all.
                if let Some(cfg) = plugin.sites.first() {
                    for (name, _) in &cfg.identity_headers {
                        done &= set_identity_header(headers, name, None);
                    }
                }
                if !done {
                    return refused();
                }
                self.metrics.count(Some(Metric::UnmatchedHostPassed));
                Action::Continue
            }
            Unmatched::Default | Unmatched::Deny => {
                self.metrics.count(Some(Metric::UnmatchedHostDenied));
                respond(
                    403,
                    &[
                        ("content-type", Cow::Borrowed("text/plain; charset=utf-8")),
                        ("cache-control", Cow::Borrowed("no-store")),
                    ],
                    b"This host is not served by this gateway's login.\n",
                );
                Action::Pause
            }
        }
    }

    fn fail(&self) {
        fail();
    }
}

/// Answers the current request with 500: the filter's own fault.
pub fn fail() {
    respond(
        500,
        &[
            ("content-type", Cow::Borrowed("text/plain; charset=utf-8")),
            ("cache-control", Cow::Borrowed("no-store")),
        ],
        b"Internal error in the login filter.\n",
    );
}

/// Answers the current request locally.
fn respond(status: u32, headers: &[(&str, Cow<'_, str>)], body: &[u8]) {
    let _ = host::send_response(status, &headers::encode_pairs(headers), body);
}

/// Removes the [`headers::NEVER_FROM_CLIENT`] headers the request carries: none, for a request that
/// carries none, at no cost beyond what `parse` noted. False when the host refused a change.
fn strip_never_from_client(headers: &HeaderBlock) -> bool {
    let mut done = true;
    if headers.carries_never_from_client() {
        for name in headers::NEVER_FROM_CLIENT {
            if headers.may_carry(name) {
                done &= set_identity_header(headers, name, None);
            }
        }
    }
    done
}

/// Sets identity header `name` to `value` (`None`: removes it), and removes its copies spelled with `_`,
/// which some apps read as `name`; the request's `headers` spare host calls for what it does not carry.
/// False when the host refused a change.
fn set_identity_header(headers: &HeaderBlock, name: &str, value: Option<&str>) -> bool {
    let mut done = true;
    if value.is_some() || headers.contains(name) {
        done &= host::set_header(Headers::Request, name, value).is_ok();
    }
    if headers.may_carry(name) {
        for other in headers.other_spellings(name) {
            done &= remove_request_header(other);
        }
    }
    done
}

/// The host would not change a request header: the request must not go on as it is.
fn refused() -> Action {
    log_warn("oidc-filter: the host refused to change a request header; answered 500");
    fail();
    Action::Pause
}

fn remove_request_header(name: &str) -> bool {
    host::set_header(Headers::Request, name, None).is_ok()
}

/// Carries out a `Forward` or `Respond` in the current effective context (the request's own, or one the root
/// context switched to); hands any other step back.
fn apply(
    step: Step,
    metrics: &Metrics,
    set_cookies: &mut Option<Rc<RefCell<Vec<String>>>>,
    headers: Option<&HeaderBlock>,
    site: &dyn Fn() -> Option<String>,
) -> Result<Action, Step> {
    account(&step, metrics, site);
    match step {
        Step::Forward(f) => {
            // A request resumed after a callout or a renewal comes without its headers: read them, or
            // the copies spelled with `_` of the headers stripped below would pass.
            let read;
            let headers = match headers {
                Some(h) => h,
                None => {
                    read = request_headers();
                    // A failed read would hide them: refused, not sent on with them.
                    if read.is_empty() {
                        return Ok(refused());
                    }
                    &read
                }
            };
            // Every change must take: a client's own header left in place could stand for a user, and
            // the filter's cookies must not reach the app. The headers no client may send go first, so
            // that one `identity_headers` names is set after.
            let mut done = strip_never_from_client(headers);
            if let Some(auth) = &f.authorization {
                done &= host::set_header(Headers::Request, "authorization", Some(auth.expose()))
                    .is_ok();
            }
            if let Some(cookie) = &f.cookie {
                done &= host::set_header(Headers::Request, "cookie", cookie.as_deref()).is_ok();
            }
            if let Some(identity) = &f.identity {
                for (name, value) in identity.iter() {
                    done &= set_identity_header(headers, name, value.as_ref().map(Secret::expose));
                }
            }
            if !done {
                return Ok(refused());
            }
            if !f.set_cookies.is_empty() {
                *set_cookies.get_or_insert_with(Rc::default).borrow_mut() = f.set_cookies;
            }
            Ok(Action::Continue)
        }
        Step::Respond(r) => {
            respond(u32::from(r.status), &r.headers, r.body.as_bytes());
            Ok(Action::Pause)
        }
        other => Err(other),
    }
}

/// The site of a `hosts` entry, by its first host, for log lines; `None` for the top level's (the only
/// one without `hosts`).
#[inline(never)]
fn site_label(shared: &RefCell<Shared>, site: usize) -> Option<String> {
    let s = shared.try_borrow().ok()?;
    s.plugin.sites.get(site)?.hosts.first().cloned()
}

/// Counts what `step` stands for, and logs a local answer that is a failure worth a line: whether or not
/// there is a request left to carry it out.
fn account(step: &Step, metrics: &Metrics, site: &dyn Fn() -> Option<String>) {
    match step {
        Step::Forward(f) => metrics.count(f.metric),
        Step::Respond(r) => {
            metrics.count(r.metric);
            log_reply(r, site);
        }
        Step::Call(..) | Step::ReadBody => {}
    }
}

/// Logs a local answer that is a failure worth a line (a login, a renewal or a back-channel logout that
/// failed), within its kind's budget.
fn log_reply(r: &flow::Reply, site: &dyn Fn() -> Option<String>) {
    // A `200` is no failure: `userinfo_path`'s answer, counted as the request it stands for (one that
    // went up with the old token when a renewal failed, without a line).
    if r.status == 200 {
        return;
    }
    // Failures worth a line for whoever debugs a login, a renewal or a back-channel logout: the
    // reason and the core's own words for it, never request data; and, for a `hosts` entry's site,
    // which one (found in review: with one stale client secret among several, the lines did not say
    // whose).
    let line = |what: &str| {
        let detail = r.detail.as_deref().unwrap_or_default();
        let sep = if detail.is_empty() { "" } else { ": " };
        let at = site().map(|h| format!(" (site {h})")).unwrap_or_default();
        format!(
            "oidc-filter: {what}, answered {}{sep}{detail}{at}",
            u32::from(r.status)
        )
    };
    // A 5xx is the IdP's or the deployment's failure (a client secret it refuses, an ID token
    // for another client id, a clock out of step, no answer): at warning, which istio-proxy logs
    // by default. A 4xx is the request's own (anyone can send a bad callback; a user logged out
    // at the IdP has a refresh refused): at info.
    // Each level has its own budget of lines, so that a flood of bad callbacks cannot crowd
    // out the warnings.
    // Back-channel refusals at info whatever the status: anyone can post a token whose key id
    // this worker may not fetch just now (a 503).
    // A line the core asks to be a warning (once per site and worker) has a budget of its own: a flood of
    // the others cannot crowd it out (found in review: the flag that it was told was set all the same).
    let (level, at) = if r.warn {
        (LogLevel::Warn, 2)
    } else if r.status >= 500 && r.metric != Some(Metric::BackchannelLogoutRefused) {
        (LogLevel::Warn, 0)
    } else {
        (LogLevel::Info, 1)
    };
    let budget: &[Throttle] = match r.metric {
        Some(Metric::CallbackFailed(_)) => &CALLBACK_FAILED,
        Some(Metric::RefreshFailed) => &REFRESH_FAILED,
        Some(Metric::BackchannelLogoutRefused) => &LOGOUT_REFUSED,
        _ => &[],
    };
    if let Some(budget) = budget.get(at) {
        budget.log(level, || {
            line(&match r.metric {
                Some(Metric::CallbackFailed(f)) => {
                    format!("login callback failed ({})", f.name())
                }
                Some(Metric::RefreshFailed) => "token refresh failed".into(),
                _ => "back-channel logout refused".into(),
            })
        });
    }
}

/// What the shared table says about the renewal of `key`.
fn renewal_state(cfg: &crate::config::Config, key: &str, now: u64) -> Renewal {
    match host::get_shared_data(&renewal_bucket(cfg, key)) {
        Ok((Some(bytes), _)) => renewal::Table::decode(&bytes).get(key, now),
        _ => Renewal::Free,
    }
}

/// Reads, changes (`f`) and writes back `key`'s bucket with compare-and-swap, retrying when another worker
/// wrote in between: `Ok(Some)` with what `f` returned (nothing written then), `Ok(None)` once written,
/// `Err` when the bucket cannot be read, holds a later format's table, or eight writes in a row lost the
/// race.
fn update_renewals<T>(
    cfg: &crate::config::Config,
    key: &str,
    now: u64,
    mut f: impl FnMut(&mut renewal::Table) -> Option<T>,
) -> Result<Option<T>, ()> {
    let name = renewal_bucket(cfg, key);
    for _ in 0..8 {
        let Ok((bytes, cas)) = host::get_shared_data(&name) else {
            return Err(());
        };
        let Some(mut table) = renewal::Table::for_update(bytes.as_deref()) else {
            return Err(());
        };
        table.prune(now);
        if let Some(found) = f(&mut table) {
            return Ok(Some(found));
        }
        if host::set_shared_data(&name, &table.encode(), cas).is_ok() {
            return Ok(None);
        }
    }
    Err(())
}

/// Sends `call` for context `owner` (a request, or the root context), whose callback gets the answer.
fn dispatch(owner: u32, call: &Callout) -> Result<u32, String> {
    let body = call.body.as_deref().unwrap_or_default();
    match host::http_call(
        &call.cluster,
        &headers::encode_pairs(&call.headers),
        body,
        call.timeout,
    ) {
        Ok(token) => {
            crate::exports::register_callout(token, owner);
            Ok(token)
        }
        // Envoy answers `BadArgument` for a cluster it does not have, and `InternalFailure` for a call
        // its router failed before sending it: no healthy endpoint (a `ServiceEntry` whose host does not
        // resolve) or a circuit breaker at its limit, where the cluster is there to see.
        Err(status) => Err(format!(
            "cluster `{}`: {status} ({})",
            call.cluster,
            if status.0 == host::BAD_ARGUMENT {
                "is the cluster defined on this proxy?"
            } else {
                "failed at once: no healthy endpoint, or a circuit breaker open?"
            }
        )),
    }
}

/// The request's headers, in one host call. (The SDK's per-header reads cost a host call and an allocation
/// each, and its text reads panicked on bytes that are not UTF-8, which Envoy lets through.) A map the host
/// cannot give reads as empty: no `:path`, so the request is refused.
fn request_headers() -> HeaderBlock {
    host::get_header_map_pairs(Headers::Request)
        .and_then(HeaderBlock::parse)
        .unwrap_or_else(HeaderBlock::empty)
}

/// Where a redirect answering a fetch of the IdP's documents points, for its log line: the usual
/// mistakes show there (`http` for `https`, an issuer's missing or extra `/`, a path the IdP moved). Its
/// query, fragment and path parameters left out, which may carry what a log line must not (a session id),
/// and one that names a user (`https://user:password@…`) not shown at all (found in review): the line
/// then says only `HTTP 301`.
fn moved_to() -> String {
    // Bytes pushed one by one: `format!` and `quotable` cost the module 700 bytes here.
    let mut out = String::new();
    if let Some(location) = host::get_header(Headers::CallResponse, "location") {
        let end = location
            .iter()
            .position(|&b| matches!(b, b'?' | b'#' | b';'))
            .unwrap_or(location.len());
        let location = location.get(..end).unwrap_or_default();
        if !location.contains(&b'@') {
            out.push_str(" to \"");
            for &b in location.iter().take(200) {
                out.push(crate::oidc::token::clean(b).into());
            }
            out.push('"');
        }
    }
    out
}

fn read_reply(body_size: usize) -> Option<(u16, Vec<u8>)> {
    let status = core::str::from_utf8(&host::get_header(Headers::CallResponse, ":status")?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    // Too large to be a real answer: one byte past the most any reader takes is enough for it to say
    // so ("larger than ... bytes"), and the rest is never copied into the VM.
    let size = body_size.min(MAX_REPLY + 1);
    let body = host::get_buffer(Buffer::HttpCallResponseBody, 0, size).unwrap_or_default();
    Some((status, body))
}

fn now() -> u64 {
    host::now_secs()
}

fn random() -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

/// Logging through a [`Throttle`]: the line is made only when its budget lets it go.
trait Throttled {
    fn log(&self, level: LogLevel, line: impl FnOnce() -> String);
}

impl Throttled for Throttle {
    fn log(&self, level: LogLevel, line: impl FnOnce() -> String) {
        if let Some(skipped) = self.admit(now()) {
            log_admitted(level, line(), skipped);
        }
    }
}

/// A line a [`Throttle`] let through: one copy of this for every kind of line (the module's size).
#[inline(never)]
fn log_admitted(level: LogLevel, mut line: String, skipped: u64) {
    if skipped > 0 {
        line.push_str(&format!(" ({skipped} more of this kind not logged)"));
    }
    host::log(level, &line);
}

/// A cluster missing from the proxy fails every refresh: one warning per 10 s.
static CALL_FAILED: Throttle = Throttle::new(10, 1);
/// Anyone can send failing callbacks, and an outage fails every expired session's requests: at most 20
/// lines a second each, for the warnings and for the info lines apart, and a third for the once-per-worker
/// warning a `Reply` asks for (`warn`: an IdP's error that is the deployment's).
static CALLBACK_FAILED: [Throttle; 3] = [
    Throttle::new(1, 20),
    Throttle::new(1, 20),
    Throttle::new(1, 20),
];
/// For refresh failures a third: the once-per-worker warning a `Reply` asks for (`warn`), which a flood of
/// the others must not crowd out.
static REFRESH_FAILED: [Throttle; 3] = [
    Throttle::new(1, 20),
    Throttle::new(1, 20),
    Throttle::new(1, 20),
];
/// Anyone can post to the back-channel path too.
static LOGOUT_REFUSED: [Throttle; 2] = [Throttle::new(1, 20), Throttle::new(1, 20)];

/// Secrets written in pluginConfig work (local tests use them), but whoever reads the WasmPlugin or the
/// proxy's configuration reads them too (found in review: nothing said so at start).
#[inline(never)]
fn warn_inline_secrets(fields: &[String]) {
    for f in fields {
        log_warn(&format!(
            "oidc-filter: `{f}` holds a secret in pluginConfig, where whoever can read the WasmPlugin or \
             the proxy's configuration can read it: outside local tests, name an environment variable \
             in `{f}_env` instead"
        ));
    }
}

/// What the discovery document says that makes logins likely to fail with `cfg`, when it loads or a
/// new configuration takes it over.
fn warn_discovery_notes(cfg: &Config, provider: &ProviderState) {
    for note in provider.discovery_notes(cfg) {
        log_warn(&format!("oidc-filter: {}: {note}", cfg.issuer));
    }
}

fn log_info(msg: &str) {
    host::log(LogLevel::Info, msg);
}

fn log_warn(msg: &str) {
    host::log(LogLevel::Warn, msg);
}

fn log_error(msg: &str) {
    host::log(LogLevel::Error, msg);
}
