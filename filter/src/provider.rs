//! The IdP as this worker knows it: discovery, then JWKS, retried with backoff and refreshed on a timer.
//! A JWKS that keeps failing sends the worker back to discovery, which may name the keys' new address.
//! Pure state machine: the adapter calls `poll` on every tick and hands back what the callout returned.

use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;

use crate::config::Config;
use crate::flow::Callout;
use crate::oidc::discovery::{self, ProviderMetadata};
use crate::oidc::jwks::Jwks;
use crate::oidc::token::ClientAuth;

/// Backoff after a failed fetch, doubling up to this many seconds.
const MAX_BACKOFF: u64 = 30;
/// An unknown `kid` may trigger a JWKS fetch at most this often.
const KID_REFRESH_INTERVAL: u64 = 30;
/// After this many failed JWKS fetches in a row, discovery is read again before the next one: the IdP may
/// have moved its keys (or briefly published a wrong `jwks_uri`), and the old address alone would be
/// retried forever.
const REDISCOVER_AFTER: u32 = 3;

/// Discovery and keys, once both are known.
#[derive(Debug, Clone)]
pub struct Provider {
    pub meta: ProviderMetadata,
    pub jwks: Jwks,
}

/// Which document a callout fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Discovery,
    Jwks,
}

/// What this worker knows of the IdP and when it next asks.
#[derive(Debug, Default)]
pub struct ProviderState {
    meta: Option<ProviderMetadata>,
    ready: Option<Provider>,
    in_flight: bool,
    /// When discovery was last read (or tried, on a periodic refresh), to refresh it once per JWKS cycle.
    discovery_checked_at: u64,
    next_attempt: u64,
    backoff: u64,
    jwks_fetched_at: u64,
    /// When an unknown `kid` last fetched the JWKS: [logins and refreshes, back-channel logout tokens],
    /// apart so that anonymous posts of forged logout tokens cannot use up the fetch a login needs.
    last_kid_refresh: [u64; 2],
    /// Failed JWKS fetches in a row since keys last loaded or discovery was last read.
    jwks_failures: u32,
    /// When the keys held were installed (fetched whatever for).
    keys_installed_at: u64,
    /// Not ready because the IdP answered with what the filter cannot use (a document that does not
    /// parse or names another issuer, keys it refuses, a `4xx`), rather than not answering: then the
    /// `503` page does not say the IdP "has not been reached" (found by a review of what the pages say).
    unusable: bool,
}

impl ProviderState {
    /// Discovery and keys, or `None` while not ready (protected requests then get 503).
    pub fn ready(&self) -> Option<&Provider> {
        self.ready.as_ref()
    }

    /// The discovery document, once in, keys or not: what a `/logout` needs.
    pub fn meta(&self) -> Option<&ProviderMetadata> {
        self.meta.as_ref()
    }

    /// Seconds from `now` until this worker may be ready: its next try of the IdP is due then (its
    /// retries back off from 1 s to [`MAX_BACKOFF`]), and a second for the tick that starts it and the
    /// answer. The `Retry-After` of a not-ready `503` (found in review: it said 5 while the backoff held
    /// the next try up to 30 s away).
    pub fn retry_in(&self, now: u64) -> u64 {
        self.next_attempt.saturating_sub(now).min(MAX_BACKOFF) + 1
    }

    /// Not ready because what the IdP answered cannot be used, rather than because it did not answer.
    pub fn unusable(&self) -> bool {
        self.unusable && self.ready.is_none()
    }

    /// Not ready yet, and a fetch is on its way that may make it so: a request that needs the IdP can
    /// wait for it rather than be turned away (a new VM's first seconds; not an outage's backoff).
    pub fn warming(&self) -> bool {
        self.ready.is_none() && self.in_flight
    }

    /// The next fetch to start, if one is due and none is under way.
    pub fn poll(&mut self, cfg: &Config, now: u64) -> Option<(Callout, Fetch)> {
        // A clock stepped back (after a reading far ahead) must not put the fetches off until it
        // catches up again: what lies in the future is taken as now (discovery then read afresh).
        if self.jwks_fetched_at > now || self.discovery_checked_at > now.saturating_add(1) {
            self.jwks_fetched_at = self.jwks_fetched_at.min(now);
            self.discovery_checked_at = self.jwks_fetched_at;
        }
        if self.next_attempt > now.saturating_add(MAX_BACKOFF) {
            self.next_attempt = now;
        }
        if self.in_flight || now < self.next_attempt {
            return None;
        }
        let discovery = || {
            let url = cfg
                .issuer_url
                .with_path(&discovery::discovery_path(&cfg.issuer_url));
            (Fetch::Discovery, url)
        };
        let rediscover = self.jwks_failures >= REDISCOVER_AFTER;
        let refresh_due = now
            >= self
                .jwks_fetched_at
                .saturating_add(cfg.jwks_refresh_interval);
        let (fetch, url) = match (&self.meta, &self.ready) {
            (None, _) => discovery(),
            // The keys keep failing: discovery again (they may have moved), then its `jwks_uri`.
            (Some(_), None) if rediscover => discovery(),
            (Some(meta), None) => (Fetch::Jwks, meta.jwks_uri.clone()),
            // A periodic refresh reads discovery again first (endpoints can move), then the keys; so does
            // a refresh whose keys keep failing, while the old keys go on serving.
            (Some(_), Some(_))
                if refresh_due
                    && (rediscover || self.discovery_checked_at <= self.jwks_fetched_at) =>
            {
                discovery()
            }
            (Some(meta), Some(_)) if refresh_due => (Fetch::Jwks, meta.jwks_uri.clone()),
            _ => return None,
        };
        self.in_flight = true;
        Some((Callout::get(cfg, &url), fetch))
    }

    /// Takes a fetch's reply (`None`: no answer) and returns a reason to log when it failed.
    pub fn on_reply(
        &mut self,
        cfg: &Config,
        fetch: Fetch,
        reply: Option<(u16, &[u8])>,
        now: u64,
    ) -> Result<String, String> {
        self.in_flight = false;
        // Discovery read again because the keys kept failing: not a recovery yet, so the backoff goes on.
        let rediscovery = fetch == Fetch::Discovery && self.jwks_failures >= REDISCOVER_AFTER;
        if fetch == Fetch::Discovery {
            // Loaded or not, the JWKS is tried next (at the new `jwks_uri`, else the known one), and
            // counted afresh.
            self.jwks_failures = 0;
            if self.ready.is_some() {
                // Even a failed re-read lets the JWKS refresh go ahead with the endpoints we know.
                self.discovery_checked_at = now.max(self.jwks_fetched_at.saturating_add(1));
            }
        }
        let result = match reply {
            None => Err("no answer from the IdP cluster".to_string()),
            Some((status, _)) if status != 200 => Err(format!("HTTP {}", u32::from(status))),
            Some((_, body)) => match fetch {
                Fetch::Discovery => discovery::parse(body, &cfg.issuer)
                    .map(|meta| {
                        self.meta = Some(meta);
                        "discovery document loaded".to_string()
                    })
                    .map_err(|e| e.to_string()),
                Fetch::Jwks => Jwks::parse(body)
                    .map(|jwks| {
                        self.jwks_fetched_at = now;
                        self.install_jwks(jwks, now, 0)
                    })
                    .map_err(|e| e.to_string()),
            },
        };
        match &result {
            Ok(_) => {
                if !rediscovery {
                    self.backoff = 0;
                }
                self.next_attempt = now;
            }
            Err(_) => {
                // A `5xx` may be Envoy's own (no healthy upstream): only a `200` that could not be
                // used, or a `4xx`, is the IdP's answer for certain. Discovery read fine in between
                // (keys still failing) leaves it as it was.
                self.unusable =
                    matches!(reply, Some((s, _)) if s == 200 || (400..500).contains(&s));
                if fetch == Fetch::Jwks {
                    self.jwks_failures = self.jwks_failures.saturating_add(1);
                }
                self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
                self.next_attempt = now + self.backoff;
            }
        }
        result
    }

    /// What the discovery document says that makes logins likely to fail with this configuration: a
    /// client authentication method or PKCE method it does not list. For a warning when it loads; the
    /// filter goes on (an IdP may support more than it lists).
    pub fn discovery_notes(&self, cfg: &Config) -> Vec<String> {
        let Some(meta) = &self.meta else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        let auth = match cfg.client_auth {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        };
        if !meta
            .token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == auth)
        {
            notes.push(format!(
                "token_endpoint_auth_methods_supported lacks `{auth}`: logins may fail"
            ));
        }
        let pkce = &meta.code_challenge_methods_supported;
        if !pkce.is_empty() && !pkce.iter().any(|m| m == "S256") {
            notes
                .push("code_challenge_methods_supported lacks `S256`: logins may fail".to_string());
        }
        // Found by a black-box test: with either, every user got the 400 page and the gateway's log
        // said nothing at its default level.
        if meta.requires_par {
            notes.push(
                "require_pushed_authorization_requests is true: the filter does not push its \
                 authorization requests (RFC 9126), so the IdP refuses every login; turn the \
                 requirement off"
                    .to_string(),
            );
        }
        if meta.requires_request_object {
            notes.push(
                "require_signed_request_object is true: the filter sends no request objects (RFC \
                 9101), so the IdP refuses every login; turn the requirement off"
                    .to_string(),
            );
        }
        notes
    }

    /// Installs keys fetched on behalf of a request that met an unknown `kid`. They stand for the
    /// periodic refresh (every `interval`) only when it is overdue: fetches for forged tokens, every
    /// 30 s, must not put off for ever the refresh that also reads discovery again.
    pub fn install_jwks(&mut self, jwks: Jwks, now: u64, interval: u64) -> String {
        let msg = format!(
            "{} signing keys loaded ({} skipped)",
            jwks.len(),
            jwks.skipped()
        );
        if now >= self.jwks_fetched_at.saturating_add(interval) {
            self.jwks_fetched_at = now;
        }
        self.jwks_failures = 0;
        self.keys_installed_at = now;
        if let Some(meta) = &self.meta {
            self.ready = Some(Provider {
                meta: meta.clone(),
                jwks,
            });
        }
        msg
    }

    /// What a new configuration of the same issuer in this VM may start from: the documents this one
    /// loaded, refreshed on the same clock, so that a change of configuration does not send the worker
    /// back to the IdP (nor its visitors to 503 until the IdP answers). Nothing is in flight: a fetch
    /// under way belongs to this one. `None` until ready.
    pub fn carried_over(&self) -> Option<ProviderState> {
        self.ready.as_ref()?;
        Some(ProviderState {
            meta: self.meta.clone(),
            ready: self.ready.clone(),
            in_flight: false,
            discovery_checked_at: self.discovery_checked_at,
            next_attempt: self.next_attempt,
            backoff: 0,
            jwks_fetched_at: self.jwks_fetched_at,
            last_kid_refresh: self.last_kid_refresh,
            jwks_failures: 0,
            keys_installed_at: self.keys_installed_at,
            unusable: false,
        })
    }

    /// When the keys held arrived (found in review: dated by a fetch that started, one that failed
    /// dated keys it never brought).
    pub fn keys_as_of(&self) -> u64 {
        self.keys_installed_at
    }

    /// The JWKS fetch for a token from the IdP whose key the keys held may lack, when one may go now
    /// (see [`ProviderState::may_refetch_for_kid`]).
    pub fn refetch_keys(&mut self, cfg: &Config, now: u64, logout: bool) -> Option<Callout> {
        if !self.may_refetch_for_kid(now, logout) {
            return None;
        }
        self.ready
            .as_ref()
            .map(|p| Callout::get(cfg, &p.meta.jwks_uri))
    }

    /// When an unknown `kid` of a login's or a renewal's token may fetch the JWKS again.
    pub fn next_kid_refetch(&self) -> u64 {
        self.last_kid_refresh[0].saturating_add(KID_REFRESH_INTERVAL)
    }

    /// True (and starts the clock) when an unknown `kid` may fetch the JWKS now; rate-limited so that
    /// forged tokens cannot turn the filter into a JWKS hammer. `logout`: for a back-channel logout
    /// token, which has a clock of its own.
    pub fn may_refetch_for_kid(&mut self, now: u64, logout: bool) -> bool {
        let last = &mut self.last_kid_refresh[usize::from(logout)];
        if self.ready.is_some() && (now >= *last + KID_REFRESH_INTERVAL || now < *last) {
            *last = now;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISCOVERY: &str = include_str!("../../testdata/discovery/good.json");
    const JWKS: &[u8] = include_bytes!("../../testdata/jwks/keys.json");
    const NOW: u64 = 1_900_000_000;

    fn cfg() -> Config {
        let json = r#"{"issuer":"https://idp.example.com","client_id":"app","client_secret":"s3cret",
            "cookie_keys":["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]}"#;
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    /// The good discovery document with its keys at `path`.
    fn discovery_with_keys_at(path: &str) -> Vec<u8> {
        DISCOVERY
            .replace(
                "https://idp.example.com/oauth2/keys",
                &format!("https://idp.example.com{path}"),
            )
            .into_bytes()
    }

    #[test]
    fn discovery_notes_name_a_client_auth_or_pkce_method_the_idp_does_not_list() {
        let mut p = ProviderState::default();
        let cfg = cfg();
        assert!(
            p.discovery_notes(&cfg).is_empty(),
            "nothing loaded, nothing to say"
        );
        discovered(&mut p, &cfg, NOW);
        assert_eq!(p.discovery_notes(&cfg), Vec::<String>::new());

        let narrow = DISCOVERY
            .replace(r#""client_secret_basic", "#, "")
            .replace(r#""plain", "S256""#, r#""plain""#);
        assert_ne!(
            narrow, DISCOVERY,
            "the test document changed: update the replacements"
        );
        p.on_reply(&cfg, Fetch::Discovery, Some((200, narrow.as_bytes())), NOW)
            .unwrap();
        let notes = p.discovery_notes(&cfg);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("`client_secret_basic`"), "{notes:?}");
        assert!(notes[1].contains("S256"), "{notes:?}");
    }

    /// An IdP that takes only pushed authorization requests or signed request objects refuses every
    /// login the filter starts: said when the document loads (found by a black-box test: nothing at
    /// istio-proxy's default log level said why every user got the 400 page). Only `true` requires.
    #[test]
    fn discovery_notes_name_a_requirement_of_pushed_requests_or_request_objects() {
        let cfg = cfg();
        let with = |extra: &str| {
            let mut p = ProviderState::default();
            let doc = DISCOVERY.replacen('{', &format!("{{{extra},"), 1);
            p.on_reply(&cfg, Fetch::Discovery, Some((200, doc.as_bytes())), NOW)
                .unwrap();
            p.discovery_notes(&cfg)
        };
        let notes = with(r#""require_pushed_authorization_requests": true"#);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("require_pushed_authorization_requests is true"),
            "{notes:?}"
        );
        let notes = with(r#""require_signed_request_object": true"#);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("require_signed_request_object is true"),
            "{notes:?}"
        );
        for not_required in [
            r#""require_pushed_authorization_requests": false"#,
            r#""require_signed_request_object": false"#,
            r#""require_pushed_authorization_requests": "true""#,
            r#""require_signed_request_object": null"#,
        ] {
            assert_eq!(with(not_required), Vec::<String>::new(), "{not_required}");
        }
    }

    /// What `poll` fetches at `now`, if anything.
    fn fetch_due(p: &mut ProviderState, cfg: &Config, now: u64) -> Option<Fetch> {
        due(p, cfg, now).map(|(f, _)| f)
    }

    /// The good discovery document arrives at `now`.
    fn discovered(p: &mut ProviderState, cfg: &Config, now: u64) {
        p.on_reply(
            cfg,
            Fetch::Discovery,
            Some((200, DISCOVERY.as_bytes())),
            now,
        )
        .unwrap();
    }

    /// The next fetch due at `now`, and the path it asks for.
    fn due(p: &mut ProviderState, cfg: &Config, now: u64) -> Option<(Fetch, String)> {
        let (call, fetch) = p.poll(cfg, now)?;
        let path = call
            .headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap();
        Some((fetch, path))
    }

    const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

    /// Found in review: a clock reading far ahead (a host that cannot tell the time reads as far in the
    /// future; a clock set wrong at boot, then corrected) stored times that put the periodic refresh and
    /// the unknown-`kid` fetch off until the clock caught up again: after the IdP rotated its keys,
    /// logins failed until the VM restarted.
    #[test]
    fn a_clock_stepped_back_does_not_put_off_the_fetches() {
        let cfg = cfg();
        let ahead = u64::MAX / 4;
        // Loaded while the clock read far ahead.
        let mut p = serving_at(&cfg, ahead);
        assert!(p.may_refetch_for_kid(ahead, false));
        // Back to the right time: the refresh is due one interval on, discovery first; a new `kid` may
        // fetch at once.
        assert!(p.may_refetch_for_kid(NOW, false));
        assert!(!p.may_refetch_for_kid(NOW + 1, false), "still rate-limited");
        assert_eq!(due(&mut p, &cfg, NOW), None);
        let later = NOW + cfg.jwks_refresh_interval;
        assert_eq!(
            due(&mut p, &cfg, later).map(|(_, path)| path),
            Some(DISCOVERY_PATH.to_string())
        );
        // A failed fetch far ahead, then the right time: the retry is not put off either.
        let mut p = ProviderState::default();
        p.poll(&cfg, ahead).unwrap();
        let _ = p.on_reply(&cfg, Fetch::Discovery, None, ahead);
        assert!(due(&mut p, &cfg, NOW).is_some());
    }

    /// A provider that read discovery and the keys at `NOW`, and serves.
    fn serving(cfg: &Config) -> ProviderState {
        serving_at(cfg, NOW)
    }

    /// A provider that read discovery and the keys at `now`, and serves.
    fn serving_at(cfg: &Config, now: u64) -> ProviderState {
        let mut p = ProviderState::default();
        p.poll(cfg, now).unwrap();
        discovered(&mut p, cfg, now);
        p.poll(cfg, now).unwrap();
        p.on_reply(cfg, Fetch::Jwks, Some((200, JWKS)), now)
            .unwrap();
        p
    }

    #[test]
    fn warming_while_a_first_fetch_is_under_way_not_during_backoff_nor_once_ready() {
        let cfg = cfg();
        let mut p = ProviderState::default();
        assert!(!p.warming(), "nothing asked yet");
        p.poll(&cfg, NOW).unwrap();
        assert!(p.warming(), "discovery on its way");
        p.on_reply(&cfg, Fetch::Discovery, None, NOW).unwrap_err();
        assert!(!p.warming(), "failed: backoff, nothing on its way");
        p.poll(&cfg, NOW + 1).unwrap();
        assert!(p.warming(), "the retry on its way");
        p.on_reply(
            &cfg,
            Fetch::Discovery,
            Some((200, DISCOVERY.as_bytes())),
            NOW + 1,
        )
        .unwrap();
        assert!(!p.warming(), "between discovery and keys");
        p.poll(&cfg, NOW + 1).unwrap();
        assert!(p.warming(), "the keys on their way");
        p.on_reply(&cfg, Fetch::Jwks, Some((200, JWKS)), NOW + 1)
            .unwrap();
        assert!(!p.warming() && p.ready().is_some());
        // A refresh of a provider that serves is not warming up: nothing waits for it.
        let later = NOW + 1 + cfg.jwks_refresh_interval;
        p.poll(&cfg, later).unwrap();
        assert!(!p.warming());
    }

    #[test]
    fn a_new_configuration_starts_from_what_the_old_one_loaded_with_nothing_in_flight() {
        let cfg = cfg();
        let mut p = ProviderState::default();
        p.poll(&cfg, NOW).unwrap();
        assert!(p.carried_over().is_none(), "nothing loaded yet");

        let mut p = serving(&cfg);
        // The old one is refreshing its keys when the configuration changes.
        let later = NOW + cfg.jwks_refresh_interval;
        let refresh = due(&mut p, &cfg, later);
        assert!(refresh.is_some());
        assert!(due(&mut p, &cfg, later).is_none(), "one fetch at a time");
        let mut new = p.carried_over().unwrap();
        assert_eq!(
            new.ready().map(|r| r.jwks.len()),
            p.ready().map(|r| r.jwks.len())
        );
        // Its own refresh, on the same clock.
        assert_eq!(due(&mut new, &cfg, later), refresh);
        let mut fresh = serving(&cfg).carried_over().unwrap();
        assert!(due(&mut fresh, &cfg, NOW + 1).is_none(), "nothing due");
    }

    #[test]
    fn failing_keys_while_not_ready_send_the_worker_back_to_discovery() {
        let cfg = cfg();
        let mut p = ProviderState::default();
        let mut now = NOW;
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Discovery, DISCOVERY_PATH.into()))
        );
        discovered(&mut p, &cfg, now);

        // The keys' address answers garbage: retried with the usual backoff, twice.
        for backoff in [1, 2] {
            assert_eq!(
                due(&mut p, &cfg, now),
                Some((Fetch::Jwks, "/oauth2/keys".into()))
            );
            p.on_reply(&cfg, Fetch::Jwks, Some((200, b"<html>")), now)
                .unwrap_err();
            assert!(p.poll(&cfg, now + backoff - 1).is_none());
            now += backoff;
        }
        // The third failure in a row: after the backoff, discovery is read again.
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Jwks, "/oauth2/keys".into()))
        );
        p.on_reply(&cfg, Fetch::Jwks, Some((404, b"")), now)
            .unwrap_err();
        assert!(p.poll(&cfg, now + 3).is_none(), "the backoff still holds");
        now += 4;
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Discovery, DISCOVERY_PATH.into()))
        );
        // A failed re-read falls back on the known address, three times, before discovery again.
        p.on_reply(&cfg, Fetch::Discovery, None, now).unwrap_err();
        for backoff in [8, 16, 30] {
            now += backoff;
            assert_eq!(
                due(&mut p, &cfg, now),
                Some((Fetch::Jwks, "/oauth2/keys".into()))
            );
            p.on_reply(&cfg, Fetch::Jwks, None, now).unwrap_err();
        }
        now += 30;
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Discovery, DISCOVERY_PATH.into()))
        );

        // The IdP now names another address: fetched right away, and the backoff goes on if it fails.
        let moved = discovery_with_keys_at("/keys-b");
        p.on_reply(&cfg, Fetch::Discovery, Some((200, &moved)), now)
            .unwrap();
        assert!(p.ready().is_none());
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Jwks, "/keys-b".into()))
        );
        p.on_reply(&cfg, Fetch::Jwks, None, now).unwrap_err();
        assert!(p.poll(&cfg, now + 29).is_none(), "not hammering the IdP");
        now += 30;
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Jwks, "/keys-b".into()))
        );
        p.on_reply(&cfg, Fetch::Jwks, Some((200, JWKS)), now)
            .unwrap();
        let ready = p.ready().unwrap();
        assert_eq!(
            ready.meta.jwks_uri.as_str(),
            "https://idp.example.com/keys-b"
        );
        assert_eq!(p.backoff, 0);
        assert!(
            p.poll(&cfg, now).is_none(),
            "nothing more until the refresh"
        );
    }

    #[test]
    fn failing_key_refreshes_while_serving_read_discovery_again() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let mut now = NOW;

        now += cfg.jwks_refresh_interval;
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Discovery, DISCOVERY_PATH.into()))
        );
        discovered(&mut p, &cfg, now);
        for backoff in [1, 2, 4] {
            assert_eq!(
                due(&mut p, &cfg, now),
                Some((Fetch::Jwks, "/oauth2/keys".into()))
            );
            p.on_reply(&cfg, Fetch::Jwks, Some((500, b"")), now)
                .unwrap_err();
            assert!(p.ready().is_some(), "the old keys keep serving");
            now += backoff;
        }
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Discovery, DISCOVERY_PATH.into()))
        );
        let moved = discovery_with_keys_at("/keys-b");
        p.on_reply(&cfg, Fetch::Discovery, Some((200, &moved)), now)
            .unwrap();
        assert_eq!(
            due(&mut p, &cfg, now),
            Some((Fetch::Jwks, "/keys-b".into()))
        );
        p.on_reply(&cfg, Fetch::Jwks, Some((200, JWKS)), now)
            .unwrap();
        let ready = p.ready().unwrap();
        assert_eq!(
            ready.meta.jwks_uri.as_str(),
            "https://idp.example.com/keys-b"
        );
        assert!(p.poll(&cfg, now + cfg.jwks_refresh_interval - 1).is_none());
        assert_eq!(
            due(&mut p, &cfg, now + cfg.jwks_refresh_interval),
            Some((Fetch::Discovery, DISCOVERY_PATH.into())),
            "the next refresh as usual"
        );
    }

    #[test]
    fn keys_loaded_for_an_unknown_kid_end_a_run_of_failures() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let mut now = NOW;
        now += cfg.jwks_refresh_interval;
        p.poll(&cfg, now).unwrap();
        discovered(&mut p, &cfg, now);
        for _ in 1..REDISCOVER_AFTER {
            assert_eq!(p.poll(&cfg, now).map(|(_, f)| f), Some(Fetch::Jwks));
            p.on_reply(&cfg, Fetch::Jwks, None, now).unwrap_err();
            now += 60;
        }
        // A request's unknown `kid` fetched the keys meanwhile: the run of failures is over (the next
        // refresh starts with discovery anyway).
        assert_eq!(p.jwks_failures, REDISCOVER_AFTER - 1);
        assert!(p.may_refetch_for_kid(now, false));
        p.install_jwks(Jwks::parse(JWKS).unwrap(), now, cfg.jwks_refresh_interval);
        assert_eq!(p.jwks_failures, 0);
        assert!(p.poll(&cfg, now).is_none(), "the keys are fresh");
    }

    #[test]
    fn keys_loaded_for_an_unknown_kid_do_not_put_off_the_periodic_refresh() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let interval = cfg.jwks_refresh_interval;
        // Forged tokens with unknown `kid`s fetch the keys every 30 s...
        let mut now = NOW;
        while now + 30 < NOW + interval {
            now += 30;
            assert!(p.poll(&cfg, now).is_none(), "not due yet at +{}", now - NOW);
            assert!(p.may_refetch_for_kid(now, true));
            p.install_jwks(Jwks::parse(JWKS).unwrap(), now, interval);
        }
        // ...and the refresh still comes when due, reading discovery again first.
        assert_eq!(
            fetch_due(&mut p, &cfg, NOW + interval),
            Some(Fetch::Discovery)
        );
    }

    #[test]
    fn discovery_read_while_the_clock_was_far_ahead_does_not_put_off_its_next_reading() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let ahead = u64::MAX / 4;
        // Far ahead: the refresh reads discovery, then the keys fail.
        assert_eq!(fetch_due(&mut p, &cfg, ahead), Some(Fetch::Discovery));
        discovered(&mut p, &cfg, ahead);
        assert_eq!(fetch_due(&mut p, &cfg, ahead), Some(Fetch::Jwks));
        assert!(p.on_reply(&cfg, Fetch::Jwks, None, ahead).is_err());
        // Back to the right time: the next refresh reads discovery again first.
        let later = NOW + cfg.jwks_refresh_interval;
        assert_eq!(fetch_due(&mut p, &cfg, later), Some(Fetch::Discovery));
    }

    #[test]
    fn only_a_200_reply_is_read() {
        let cfg = cfg();
        let mut p = ProviderState::default();
        p.poll(&cfg, NOW).unwrap();
        assert_eq!(
            p.on_reply(
                &cfg,
                Fetch::Discovery,
                Some((204, DISCOVERY.as_bytes())),
                NOW
            ),
            Err("HTTP 204".to_string())
        );
        assert!(p.discovery_notes(&cfg).is_empty(), "nothing loaded");
    }

    #[test]
    fn keys_installed_while_discovery_is_read_leave_the_next_refresh_to_the_keys() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let interval = cfg.jwks_refresh_interval;
        let t = NOW + interval;
        assert_eq!(fetch_due(&mut p, &cfg, t), Some(Fetch::Discovery));
        // Keys for an unknown `kid` arrive while discovery is on its way, in the same second.
        p.install_jwks(Jwks::parse(JWKS).unwrap(), t, interval);
        discovered(&mut p, &cfg, t);
        assert_eq!(due(&mut p, &cfg, t), None);
        // Discovery was read after those keys: the next refresh fetches the keys.
        assert_eq!(fetch_due(&mut p, &cfg, t + interval), Some(Fetch::Jwks));
    }

    #[test]
    fn keys_for_an_unknown_kid_just_when_the_refresh_is_due_stand_for_it() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let t = NOW + cfg.jwks_refresh_interval;
        p.install_jwks(Jwks::parse(JWKS).unwrap(), t, cfg.jwks_refresh_interval);
        assert_eq!(due(&mut p, &cfg, t), None);
    }

    #[test]
    fn no_kid_fetch_before_ready_nor_does_one_start_the_clock() {
        let cfg = cfg();
        let mut p = ProviderState::default();
        assert!(!p.may_refetch_for_kid(NOW, false));
        p.poll(&cfg, NOW).unwrap();
        discovered(&mut p, &cfg, NOW);
        p.poll(&cfg, NOW).unwrap();
        p.on_reply(&cfg, Fetch::Jwks, Some((200, JWKS)), NOW)
            .unwrap();
        assert!(p.may_refetch_for_kid(NOW + 1, false));
    }

    #[test]
    fn a_document_without_pkce_methods_gets_no_note() {
        let cfg = cfg();
        let mut p = ProviderState::default();
        let doc = DISCOVERY.replace(r#""code_challenge_methods_supported""#, r#""x_unused""#);
        assert_ne!(doc, DISCOVERY);
        p.on_reply(&cfg, Fetch::Discovery, Some((200, doc.as_bytes())), NOW)
            .unwrap();
        assert_eq!(p.discovery_notes(&cfg), Vec::<String>::new());
    }

    #[test]
    fn a_carried_over_state_starts_its_backoff_and_failure_count_afresh() {
        let cfg = cfg();
        let mut p = serving(&cfg);
        let t = NOW + cfg.jwks_refresh_interval;
        // The refresh: discovery read, then the keys fail twice.
        assert_eq!(fetch_due(&mut p, &cfg, t), Some(Fetch::Discovery));
        discovered(&mut p, &cfg, t);
        let mut now = t;
        for _ in 0..2 {
            assert_eq!(fetch_due(&mut p, &cfg, now), Some(Fetch::Jwks));
            assert!(p.on_reply(&cfg, Fetch::Jwks, None, now).is_err());
            now += 30;
        }
        let mut q = p.carried_over().unwrap();
        // One failure more: retried a second later (a fresh backoff), at the keys' address still (a
        // fresh count of failures).
        assert_eq!(fetch_due(&mut q, &cfg, now), Some(Fetch::Jwks));
        assert!(q.on_reply(&cfg, Fetch::Jwks, None, now).is_err());
        assert_eq!(due(&mut q, &cfg, now), None);
        assert_eq!(fetch_due(&mut q, &cfg, now + 1), Some(Fetch::Jwks));
    }
}
