//! Sessions ended by back-channel logout, until they would have expired anyway.
//! Each worker keeps a copy; the adapter merges it into Envoy's shared data so every worker learns of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oidc::logout_token::Logout;

/// Beyond this many entries the oldest go first (a flood of logouts must not grow memory without bound).
const MAX_ENTRIES: usize = 10_000;

/// Ended IdP sessions (`sid`) and users (`sub`, for tokens issued before the logout).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// sid -> until (unix seconds)
    #[serde(default)]
    sids: BTreeMap<String, u64>,
    /// sub -> (revoked at, until)
    #[serde(default)]
    subs: BTreeMap<String, (u64, u64)>,
}

impl Revocations {
    /// Records a logout; it lasts `lifetime` seconds, the longest any session it names can live.
    pub fn add(&mut self, logout: &Logout, now: u64, lifetime: u64) {
        let until = now.saturating_add(lifetime);
        match (&logout.sid, &logout.sub) {
            (Some(sid), _) => {
                self.sids.insert(sid.clone(), until);
            }
            (None, Some(sub)) => {
                self.subs.insert(sub.clone(), (now, until));
            }
            (None, None) => {}
        }
        self.cap();
    }

    /// True when a session with this `sid`/`sub`, whose ID token was issued at `iat`, has been logged out.
    pub fn is_revoked(&self, sid: Option<&str>, sub: &str, iat: u64) -> bool {
        sid.is_some_and(|s| self.sids.contains_key(s))
            || self.subs.get(sub).is_some_and(|(at, _)| iat <= *at)
    }

    pub fn is_empty(&self) -> bool {
        self.sids.is_empty() && self.subs.is_empty()
    }

    /// Forgets entries whose sessions have expired by now.
    pub fn prune(&mut self, now: u64) {
        self.sids.retain(|_, until| *until > now);
        self.subs.retain(|_, (_, until)| *until > now);
    }

    /// Takes in what another worker recorded.
    pub fn merge(&mut self, other: &Revocations) {
        for (k, v) in &other.sids {
            let e = self.sids.entry(k.clone()).or_insert(*v);
            *e = (*e).max(*v);
        }
        for (k, v) in &other.subs {
            let e = self.subs.entry(k.clone()).or_insert(*v);
            *e = ((e.0).max(v.0), (e.1).max(v.1));
        }
        self.cap();
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Anything unreadable counts as empty: the shared copy is ours, and a fresh start is safe.
    pub fn decode(bytes: &[u8]) -> Revocations {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn cap(&mut self) {
        while self.sids.len() > MAX_ENTRIES {
            let Some(oldest) = self
                .sids
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.sids.remove(&oldest);
        }
        while self.subs.len() > MAX_ENTRIES {
            let Some(oldest) = self
                .subs
                .iter()
                .min_by_key(|(_, u)| u.1)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.subs.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logout(sid: Option<&str>, sub: Option<&str>) -> Logout {
        Logout {
            sid: sid.map(Into::into),
            sub: sub.map(Into::into),
            iat: 0,
        }
    }

    #[test]
    fn sid_ends_that_session_only_and_sub_ends_older_sessions_of_that_user() {
        let mut r = Revocations::default();
        r.add(&logout(Some("s1"), Some("alice")), 100, 3600);
        assert!(r.is_revoked(Some("s1"), "alice", 50));
        assert!(!r.is_revoked(Some("s2"), "alice", 50));
        r.add(&logout(None, Some("bob")), 100, 3600);
        assert!(r.is_revoked(Some("x"), "bob", 99));
        assert!(
            !r.is_revoked(Some("x"), "bob", 101),
            "a login after the logout stands"
        );
        r.prune(3701);
        assert!(r.is_empty());
    }

    #[test]
    fn merges_and_round_trips() {
        let mut a = Revocations::default();
        a.add(&logout(Some("s1"), None), 100, 10);
        let mut b = Revocations::default();
        b.add(&logout(None, Some("u")), 100, 10);
        b.merge(&Revocations::decode(&a.encode()));
        assert!(b.is_revoked(Some("s1"), "x", 0) && b.is_revoked(None, "u", 0));
        assert!(Revocations::decode(b"garbage").is_empty());
    }
}
