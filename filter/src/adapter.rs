//! The only code that talks to the host: reads headers, runs the core's `Step`s, keeps callouts pending.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

use crate::config::{Plugin, Unmatched};
use crate::flow::{self, CallbackFailure, Callout, Env, Metric, Pending, RefreshJob, State, Step};
use crate::headers::HeaderBlock;
use crate::provider::Fetch;
use crate::renewal::{self, Renewal};
use crate::revocation::Revocations;

/// Envoy's shared data is shared by every worker's VM of this plugin: the one place a logout reaches them all.
fn revocation_key(cfg: &crate::config::Config) -> String {
    format!("oidc-filter.revoked.{}.{}", cfg.client_id, cfg.cookie_name)
}

/// The shared-data key of one bucket of a site's renewal table (see `renewal`).
fn renewal_bucket(cfg: &crate::config::Config, key: &str) -> String {
    format!(
        "oidc-filter.renewal.{}.{}.{}",
        cfg.client_id,
        cfg.cookie_name,
        renewal::bucket(key)
    )
}

/// Replies larger than this are not an IdP document or token response.
const MAX_REPLY: usize = 256 * 1024;
const TICK: Duration = Duration::from_secs(1);
/// The tick while requests wait for another worker's renewal.
const FAST_TICK: Duration = Duration::from_millis(100);

/// Per-worker state shared by the root context and every request on that worker.
struct Shared {
    plugin: Rc<Plugin>,
    /// One per site, same order as `plugin.sites`.
    states: Vec<State>,
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
    fn define() -> Metrics {
        let c = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("oidc_filter.{name}"))
                .unwrap_or(0)
        };
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
            Some(Metric::BackchannelLogout) => self.backchannel_logout,
            Some(Metric::CallbackFailed(f)) => {
                let i = FAILURES.iter().position(|x| *x == f).unwrap_or(0);
                self.callback_failed[i]
            }
        };
        if id != 0 && id == self.forwarded {
            // The one counter of the logged-in path: added up here, handed to Envoy on the tick.
            FORWARDED_UNFLUSHED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if id != 0 {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    /// Hands Envoy the logged-in requests counted since the last tick.
    fn flush(&self) {
        let n = FORWARDED_UNFLUSHED.swap(0, Ordering::Relaxed);
        if n > 0 && self.forwarded != 0 {
            let _ = hostcalls::increment_metric(self.forwarded, n as i64);
        }
    }
}

/// Logged-in requests this VM has not yet added to `sessions_forwarded`: a host call per request is
/// a measurable share of the logged-in path, so the counter trails by at most one tick (1 s).
static FORWARDED_UNFLUSHED: AtomicU64 = AtomicU64::new(0);

/// The plugin's root context: configuration, discovery and JWKS on a timer.
#[derive(Default)]
pub struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    fast_tick: bool,
    metrics: Metrics,
    fetches: HashMap<u32, (usize, Fetch)>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some((site, fetch)) = self.fetches.remove(&token) else {
            return;
        };
        let Some(shared) = &self.shared else { return };
        let reply = read_reply(self, body_size);
        let now = now(self);
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
            }
            Err(reason) => log_warn(&format!(
                "oidc-filter: fetching the {} of {} failed: {reason}; retrying",
                match fetch {
                    Fetch::Discovery => "discovery document",
                    Fetch::Jwks => "JWKS",
                },
                cfg.issuer
            )),
        }
        drop(s);
        self.poll();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let env = |k: &str| std::env::var(k).ok();
        match Plugin::parse(&raw, &env) {
            Ok(plugin) => {
                self.metrics = Metrics::define();
                let states = plugin.sites.iter().map(|_| State::default()).collect();
                // Create the renewal buckets before any request can race to create one (a compare-and-swap
                // needs an existing entry); a bucket another VM already has is left alone.
                for cfg in &plugin.sites {
                    for b in 0..renewal::BUCKETS {
                        let name = format!(
                            "oidc-filter.renewal.{}.{}.{b}",
                            cfg.client_id, cfg.cookie_name
                        );
                        if let Ok((None, _)) = hostcalls::get_shared_data(&name) {
                            let empty = renewal::Table::default().encode();
                            let _ = hostcalls::set_shared_data(&name, Some(&empty), None);
                        }
                    }
                }
                let shared = Shared {
                    plugin: Rc::new(plugin),
                    states,
                    parked: Vec::new(),
                };
                self.shared = Some(Rc::new(RefCell::new(shared)));
                self.fetches.clear();
                self.set_tick_period(TICK);
                self.poll();
                true
            }
            Err(e) => {
                log_error(&format!("oidc-filter: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.metrics.flush();
        self.poll();
        self.sync_revocations();
        // Last: it switches the effective context to each resumed request.
        self.resume_parked();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Http {
            shared,
            metrics: self.metrics,
            id: context_id,
            site: 0,
            reading_body: false,
            pending: None,
            renewing: None,
            set_cookies: Rc::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Resumes the waiting requests whose renewal has finished (or failed, or is overdue).
    fn resume_parked(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = now(self);
        let mut ready = Vec::new();
        {
            let Ok(mut s) = shared.try_borrow_mut() else {
                return;
            };
            let plugin = s.plugin.clone();
            let parked = std::mem::take(&mut s.parked);
            // Requests that park set the fast tick; back to the slow one once none waits.
            self.fast_tick |= !parked.is_empty();
            for p in parked {
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
                ready.push((p.context_id, step, p.set_cookies));
            }
            if s.parked.is_empty() && self.fast_tick {
                self.set_tick_period(TICK);
                self.fast_tick = false;
            }
        }
        for (context_id, step, set_cookies) in ready {
            // A request whose client went away is gone: nothing to resume.
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            match apply(step, &self.metrics, &set_cookies, None) {
                Ok(Action::Continue) => {
                    let _ = hostcalls::resume_http_request();
                }
                Ok(_) => {}
                // Adopting or failing a renewal never calls out or reads a body.
                Err(_) => {
                    let _ = hostcalls::send_http_response(
                        500,
                        vec![("cache-control", "no-store")],
                        None,
                    );
                }
            }
        }
    }

    /// Takes in the logouts other workers recorded, and forgets expired ones.
    fn sync_revocations(&self) {
        let Some(shared) = &self.shared else { return };
        let now = now(self);
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let plugin = s.plugin.clone();
        for (cfg, state) in plugin.sites.iter().zip(s.states.iter_mut()) {
            if cfg.backchannel_logout_path.is_none() {
                continue;
            }
            if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&revocation_key(cfg)) {
                state.revoked.merge(&Revocations::decode(&bytes));
            }
            state.revoked.prune(now);
        }
    }

    fn poll(&mut self) {
        let Some(shared) = &self.shared else { return };
        let now = now(self);
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
            match dispatch(self, &call) {
                Ok(token) => {
                    self.fetches.insert(token, (site, fetch));
                }
                Err(reason) => {
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

/// One request.
struct Http {
    shared: Rc<RefCell<Shared>>,
    metrics: Metrics,
    id: u32,
    site: usize,
    reading_body: bool,
    pending: Option<(u32, Box<Pending>)>,
    /// The renewal this request claimed: its table key and the sealed session it renews.
    renewing: Option<(String, String)>,
    /// Shared with the root context, which fills it for a request it resumes.
    set_cookies: Rc<RefCell<Vec<String>>>,
}

impl Drop for Http {
    /// Ended (its client went away) before the renewal it claimed finished: the waiting requests stop
    /// waiting. (In `Drop`, which the SDK runs from `proxy_on_delete`, rather than in `on_done`: then the
    /// module need not export `proxy_on_done`, one trip into the VM less per request.)
    fn drop(&mut self) {
        self.end_renewal(None);
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some((expected, pending)) = self.pending.take() else {
            return;
        };
        if expected != token {
            self.fail(500);
            return;
        }
        let reply = read_reply(self, body_size);
        let now = now(self);
        let (step, renewed) = {
            let Ok(mut s) = self.shared.try_borrow_mut() else {
                self.fail(500);
                return;
            };
            let plugin = s.plugin.clone();
            let (Some(cfg), Some(state)) =
                (plugin.sites.get(self.site), s.states.get_mut(self.site))
            else {
                drop(s);
                self.fail(500);
                return;
            };
            let mut random = random;
            let mut env = Env {
                now,
                random: &mut random,
            };
            let step = flow::on_reply(
                cfg,
                state,
                &mut env,
                *pending,
                reply.as_ref().map(|(st, b)| (*st, b.as_slice())),
            );
            // A renewal this request claimed has ended (unless it now fetches keys): publish it, or let go.
            let renewed = match (&step, &self.renewing) {
                (Step::Call(..), _) | (_, None) => None,
                (_, Some((_, sealed))) => Some(flow::renewed_cookies(state, sealed)),
            };
            (step, renewed)
        };
        if let Some(renewed) = renewed {
            self.end_renewal(renewed);
        }
        if let Action::Continue = self.run(step, None) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let now = now(self);
        let headers = request_headers();
        let step = {
            let Ok(mut s) = self.shared.try_borrow_mut() else {
                self.fail(500);
                return Action::Pause;
            };
            let plugin = s.plugin.clone();
            let site = match plugin
                .site_for_request(|| headers.get(":authority").map(|a| a.into_owned()))
            {
                Some(i) => i,
                None => {
                    drop(s);
                    return self.unmatched(&plugin, &headers);
                }
            };
            self.site = site;
            let (Some(cfg), Some(state)) = (plugin.sites.get(site), s.states.get_mut(site)) else {
                drop(s);
                self.fail(500);
                return Action::Pause;
            };
            let mut random = random;
            let mut env = Env {
                now,
                random: &mut random,
            };
            flow::on_request(cfg, state, &mut env, &headers)
        };
        if end_of_stream && matches!(step, Step::ReadBody) {
            return self.backchannel_logout(&[]);
        }
        self.run(step, Some(&headers))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.reading_body {
            return Action::Continue;
        }
        if !end_of_stream {
            // Logout tokens are small; a huge body is not one.
            if body_size > 64 * 1024 {
                self.reading_body = false;
                self.send_http_response(413, vec![("cache-control", "no-store")], None);
            }
            return Action::Pause;
        }
        self.reading_body = false;
        let body = self
            .get_http_request_body(0, body_size.min(64 * 1024))
            .unwrap_or_default();
        self.backchannel_logout(&body)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for c in self.set_cookies.borrow_mut().drain(..) {
            hostcalls::add_map_value(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                "set-cookie",
                &c,
            )
            .ok();
        }
        Action::Continue
    }
}

impl Http {
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
        match apply(step, &self.metrics, &self.set_cookies, headers) {
            Ok(action) => action,
            Err(Step::ReadBody) => {
                // Proxy-Wasm hosts turn a pause here into "stop all iteration" (Envoy does unless the plugin
                // sets `allow_on_headers_stop_iteration`, which Istio cannot), and then never hand this filter
                // the body. So the headers go on, stripped of anything that could stand for a user, and the
                // body is held in `on_http_request_body`, which answers locally.
                self.reading_body = true;
                self.strip_credentials();
                Action::Continue
            }
            Err(Step::Call(call, pending)) => match dispatch(self, &call) {
                Ok(token) => {
                    self.pending = Some((token, pending));
                    Action::Pause
                }
                Err(reason) => {
                    log_warn(&format!("oidc-filter: cannot call the IdP: {reason}"));
                    self.end_renewal(None);
                    self.fail(502);
                    Action::Pause
                }
            },
            Err(_) => Action::Continue,
        }
    }

    /// Makes this request the one that renews its session (`Ok`: go ahead and refresh), unless another
    /// request has: then the old token while it lasts or that request's renewal (`Err(Some)`), or a wait for
    /// it (`Err(None)`, the request is parked).
    fn claim_renewal(&mut self, job: RefreshJob) -> Result<RefreshJob, Option<Step>> {
        let now = now(self);
        let Ok(mut s) = self.shared.try_borrow_mut() else {
            return Ok(job);
        };
        let plugin = s.plugin.clone();
        let (Some(cfg), Some(state)) = (plugin.sites.get(self.site), s.states.get_mut(self.site))
        else {
            return Ok(job);
        };
        let key = renewal::key(job.sealed());
        // Long enough for the token request and a JWKS fetch after it.
        let until = now + 2 * cfg.callout_timeout.as_secs() + 2;
        let mut claimed = false;
        let found = update_renewals(cfg, &key, now, |t| match t.get(&key, now) {
            Renewal::Free => {
                t.claim(&key, until);
                claimed = true;
                None
            }
            other => {
                claimed = false;
                Some(other)
            }
        });
        match found {
            Some(Renewal::Done(lines)) => {
                Err(Some(flow::adopt_renewal(cfg, state, job, &lines, now)))
            }
            Some(Renewal::Claimed) => match flow::renewal_busy(cfg, job, now) {
                Ok(step) => Err(Some(step)),
                Err(job) => {
                    s.parked.push(Parked {
                        context_id: self.id,
                        site: self.site,
                        key,
                        job,
                        until,
                        set_cookies: self.set_cookies.clone(),
                    });
                    let _ = hostcalls::set_tick_period(FAST_TICK);
                    Err(None)
                }
            },
            // Claimed by us; or the table is unusable, and refreshing is what the filter did before it.
            _ => {
                if claimed {
                    self.renewing = Some((key, job.sealed().to_string()));
                }
                Ok(job)
            }
        }
    }

    /// Publishes the renewal this request claimed (`renewed`: its `Set-Cookie` lines), or lets it go.
    fn end_renewal(&mut self, renewed: Option<Vec<String>>) {
        let Some((key, _)) = self.renewing.take() else {
            return;
        };
        let now = now(self);
        let Ok(s) = self.shared.try_borrow() else {
            return;
        };
        let Some(cfg) = s.plugin.sites.get(self.site) else {
            return;
        };
        update_renewals(cfg, &key, now, |t| {
            match renewed.clone() {
                Some(lines) => t.complete(&key, lines, now),
                None => t.release(&key),
            }
            None::<()>
        });
    }

    /// Validates a posted logout token and records the logout where every worker sees it.
    fn backchannel_logout(&mut self, body: &[u8]) -> Action {
        let now = now(self);
        let step = {
            let Ok(mut s) = self.shared.try_borrow_mut() else {
                self.fail(500);
                return Action::Pause;
            };
            let plugin = s.plugin.clone();
            let (Some(cfg), Some(state)) =
                (plugin.sites.get(self.site), s.states.get_mut(self.site))
            else {
                drop(s);
                self.fail(500);
                return Action::Pause;
            };
            let mut random = random;
            let env = Env {
                now,
                random: &mut random,
            };
            let step = flow::on_backchannel_logout(cfg, state, &env, body);
            if matches!(&step, Step::Respond(r) if r.status == 200) {
                let key = revocation_key(cfg);
                // Compare-and-swap, so two workers recording at once don't lose each other's entry.
                for _ in 0..8 {
                    let (bytes, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
                    let mut merged = bytes.map(|b| Revocations::decode(&b)).unwrap_or_default();
                    merged.merge(&state.revoked);
                    if hostcalls::set_shared_data(&key, Some(&merged.encode()), cas).is_ok() {
                        break;
                    }
                }
            }
            step
        };
        self.run(step, None)
    }

    /// Removes every header that could stand for a user (`Authorization`, `Cookie`, identity headers).
    fn strip_credentials(&self) {
        self.set_http_request_header("authorization", None);
        self.set_http_request_header("cookie", None);
        if let Ok(s) = self.shared.try_borrow()
            && let Some(cfg) = s.plugin.sites.get(self.site)
        {
            for (name, _) in &cfg.identity_headers {
                self.set_http_request_header(name, None);
            }
        }
    }

    /// A host no site serves: pass (without any identity header a client may have sent) or 403.
    fn unmatched(&self, plugin: &Plugin, headers: &HeaderBlock) -> Action {
        match plugin.unmatched {
            Unmatched::Pass => {
                for cfg in &plugin.sites {
                    for (name, _) in &cfg.identity_headers {
                        if headers.contains(name) {
                            self.set_http_request_header(name, None);
                        }
                    }
                }
                Action::Continue
            }
            Unmatched::Default | Unmatched::Deny => {
                self.send_http_response(
                    403,
                    vec![
                        ("content-type", "text/plain; charset=utf-8"),
                        ("cache-control", "no-store"),
                    ],
                    Some(b"This host is not served by this gateway's login.\n"),
                );
                Action::Pause
            }
        }
    }

    fn fail(&self, status: u32) {
        let body: &[u8] = if status == 502 {
            b"The identity provider cannot be reached from this gateway.\n"
        } else {
            b"Internal error in the login filter.\n"
        };
        self.send_http_response(
            status,
            vec![
                ("content-type", "text/plain; charset=utf-8"),
                ("cache-control", "no-store"),
            ],
            Some(body),
        );
    }
}

/// Carries out a `Forward` or `Respond` in the current effective context (the request's own, or one the root
/// context switched to); hands any other step back.
fn apply(
    step: Step,
    metrics: &Metrics,
    set_cookies: &RefCell<Vec<String>>,
    headers: Option<&HeaderBlock>,
) -> Result<Action, Step> {
    use proxy_wasm::types::MapType::HttpRequestHeaders;
    match step {
        Step::Forward(f) => {
            metrics.count(f.metric);
            if let Some(auth) = &f.authorization {
                let _ = hostcalls::set_map_value(
                    HttpRequestHeaders,
                    "authorization",
                    Some(auth.expose()),
                );
            }
            if let Some(cookie) = &f.cookie {
                let _ = hostcalls::set_map_value(HttpRequestHeaders, "cookie", cookie.as_deref());
            }
            if let Some(identity) = &f.identity {
                for (name, value) in identity.iter() {
                    // Removing a header the request does not carry is a host call for nothing.
                    if value.is_some() || headers.is_none_or(|h| h.contains(name)) {
                        let _ =
                            hostcalls::set_map_value(HttpRequestHeaders, name, value.as_deref());
                    }
                }
            }
            *set_cookies.borrow_mut() = f.set_cookies;
            Ok(Action::Continue)
        }
        Step::Respond(r) => {
            metrics.count(r.metric);
            // Failures worth a line for whoever debugs a login: the reason only, never request data.
            match r.metric {
                Some(Metric::CallbackFailed(f)) => {
                    log_info(&format!(
                        "oidc-filter: login callback failed ({}), answered {}",
                        f.name(),
                        r.status
                    ));
                }
                Some(Metric::RefreshFailed) => {
                    log_info(&format!(
                        "oidc-filter: token refresh failed, answered {}",
                        r.status
                    ));
                }
                _ => {}
            }
            let headers: Vec<(&str, &str)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let _ = hostcalls::send_http_response(
                u32::from(r.status),
                headers,
                Some(r.body.as_bytes()),
            );
            Ok(Action::Pause)
        }
        other => Err(other),
    }
}

/// What the shared table says about the renewal of `key`.
fn renewal_state(cfg: &crate::config::Config, key: &str, now: u64) -> Renewal {
    match hostcalls::get_shared_data(&renewal_bucket(cfg, key)) {
        Ok((Some(bytes), _)) => renewal::Table::decode(&bytes).get(key, now),
        _ => Renewal::Free,
    }
}

/// Reads, changes (`f`) and writes back `key`'s bucket with compare-and-swap, retrying when another worker
/// wrote in between; returns what `f` returned (it wrote nothing then: nothing to write).
fn update_renewals<T>(
    cfg: &crate::config::Config,
    key: &str,
    now: u64,
    mut f: impl FnMut(&mut renewal::Table) -> Option<T>,
) -> Option<T> {
    let name = renewal_bucket(cfg, key);
    for _ in 0..8 {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(&name) else {
            return None;
        };
        let mut table = bytes
            .map(|b| renewal::Table::decode(&b))
            .unwrap_or_default();
        table.prune(now);
        if let Some(found) = f(&mut table) {
            return Some(found);
        }
        if hostcalls::set_shared_data(&name, Some(&table.encode()), cas).is_ok() {
            return None;
        }
    }
    None
}

fn dispatch(ctx: &dyn Context, call: &Callout) -> Result<u32, String> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ctx.dispatch_http_call(
        &call.cluster,
        headers,
        call.body.as_deref(),
        vec![],
        call.timeout,
    )
    .map_err(|status| {
        format!(
            "cluster `{}`: {status:?} (is the cluster defined on this proxy?)",
            call.cluster
        )
    })
}

unsafe extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// The request's headers, in one host call. (The SDK's per-header reads cost a host call and an allocation
/// each, and its text reads panic on bytes that are not UTF-8, which Envoy lets through.) A map the host
/// cannot give reads as empty: no `:path`, so the request is refused.
fn request_headers() -> HeaderBlock {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: map type 0 is the request headers; the host writes the address and size of a buffer it
    // got from this module's `proxy_on_memory_allocate` (the SDK's: a leaked boxed slice of exactly
    // `size` bytes), which this function then owns, as the SDK's own `get_map_bytes` does.
    let status = unsafe { proxy_get_header_map_pairs(0, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return HeaderBlock::empty();
    }
    // SAFETY: see above; `data` is non-null and `size` bytes long, allocated by the global allocator.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    HeaderBlock::parse(bytes).unwrap_or_else(HeaderBlock::empty)
}

fn read_reply(ctx: &dyn Context, body_size: usize) -> Option<(u16, Vec<u8>)> {
    let status = std::str::from_utf8(&ctx.get_http_call_response_header_bytes(":status")?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    if body_size > MAX_REPLY {
        // Too large to be a real answer: hand the core an empty, unparsable body.
        return Some((status, Vec::new()));
    }
    let body = ctx
        .get_http_call_response_body(0, body_size)
        .unwrap_or_default();
    Some((status, body))
}

fn now(ctx: &dyn Context) -> u64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random() -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

fn log_info(msg: &str) {
    let _ = hostcalls::log(proxy_wasm::types::LogLevel::Info, msg);
}

fn log_warn(msg: &str) {
    let _ = hostcalls::log(proxy_wasm::types::LogLevel::Warn, msg);
}

fn log_error(msg: &str) {
    let _ = hostcalls::log(proxy_wasm::types::LogLevel::Error, msg);
}
