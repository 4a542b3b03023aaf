//! The IdP as this worker knows it: discovery, then JWKS, retried with backoff and refreshed on a timer.
//! Pure state machine: the adapter calls `poll` on every tick and hands back what the callout returned.

use crate::config::Config;
use crate::flow::Callout;
use crate::oidc::discovery::{self, ProviderMetadata};
use crate::oidc::jwks::Jwks;

/// Backoff after a failed fetch, doubling up to this many seconds.
const MAX_BACKOFF: u64 = 30;
/// An unknown `kid` may trigger a JWKS fetch at most this often.
const KID_REFRESH_INTERVAL: u64 = 30;

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
    last_kid_refresh: u64,
}

impl ProviderState {
    /// Discovery and keys, or `None` while not ready (protected requests then get 503).
    pub fn ready(&self) -> Option<&Provider> {
        self.ready.as_ref()
    }

    /// The next fetch to start, if one is due and none is under way.
    pub fn poll(&mut self, cfg: &Config, now: u64) -> Option<(Callout, Fetch)> {
        if self.in_flight || now < self.next_attempt {
            return None;
        }
        let (fetch, url) = match (&self.meta, &self.ready) {
            (None, _) => {
                let url = cfg
                    .issuer_url
                    .with_path(&discovery::discovery_path(&cfg.issuer_url));
                (Fetch::Discovery, url)
            }
            (Some(meta), None) => (Fetch::Jwks, meta.jwks_uri.clone()),
            // A periodic refresh reads discovery again first (endpoints can move), then the keys.
            (Some(_), Some(_))
                if now >= self.jwks_fetched_at + cfg.jwks_refresh_interval
                    && self.discovery_checked_at <= self.jwks_fetched_at =>
            {
                let url = cfg
                    .issuer_url
                    .with_path(&discovery::discovery_path(&cfg.issuer_url));
                (Fetch::Discovery, url)
            }
            (Some(meta), Some(_)) if now >= self.jwks_fetched_at + cfg.jwks_refresh_interval => {
                (Fetch::Jwks, meta.jwks_uri.clone())
            }
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
        if fetch == Fetch::Discovery && self.ready.is_some() {
            // Even a failed re-read lets the JWKS refresh go ahead with the endpoints we know.
            self.discovery_checked_at = now.max(self.jwks_fetched_at + 1);
        }
        let result = match reply {
            None => Err("no answer from the IdP cluster".to_string()),
            Some((status, _)) if status != 200 => Err(format!("HTTP {status}")),
            Some((_, body)) => match fetch {
                Fetch::Discovery => discovery::parse(body, &cfg.issuer)
                    .map(|meta| {
                        self.meta = Some(meta);
                        "discovery document loaded".to_string()
                    })
                    .map_err(|e| e.to_string()),
                Fetch::Jwks => Jwks::parse(body)
                    .map(|jwks| self.install_jwks(jwks, now))
                    .map_err(|e| e.to_string()),
            },
        };
        match &result {
            Ok(_) => {
                self.backoff = 0;
                self.next_attempt = now;
            }
            Err(_) => {
                self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
                self.next_attempt = now + self.backoff;
            }
        }
        result
    }

    /// Installs keys fetched on behalf of a request that met an unknown `kid`.
    pub fn install_jwks(&mut self, jwks: Jwks, now: u64) -> String {
        let msg = format!(
            "{} signing keys loaded ({} skipped)",
            jwks.len(),
            jwks.skipped()
        );
        self.jwks_fetched_at = now;
        if let Some(meta) = &self.meta {
            self.ready = Some(Provider {
                meta: meta.clone(),
                jwks,
            });
        }
        msg
    }

    /// True (and starts the clock) when an unknown `kid` may fetch the JWKS now; rate-limited so that
    /// forged tokens cannot turn the filter into a JWKS hammer.
    pub fn may_refetch_for_kid(&mut self, now: u64) -> bool {
        if self.ready.is_some() && now >= self.last_kid_refresh + KID_REFRESH_INTERVAL {
            self.last_kid_refresh = now;
            true
        } else {
            false
        }
    }
}
