//! One refresh per session, whichever worker its requests land on. An IdP that rotates refresh tokens
//! treats a second use of the old one as theft and revokes the whole grant, so requests that find a
//! session due for renewal at the same moment (a page and its resources) must not each refresh it.
//!
//! The first request claims the renewal; the others keep the old token while it is valid, or wait.
//! The claimant then publishes the renewed session's `Set-Cookie` lines, which requests still
//! carrying the old cookie adopt instead of refreshing again. The adapter keeps one table per bucket
//! in Envoy's shared data (seen by every worker) and updates it with compare-and-swap.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets per site: keeps each shared value small however many sessions renew at once.
pub const BUCKETS: u8 = 64;
/// How long a finished renewal stays for requests that still carry the old cookie.
pub const GRACE: u64 = 30;

/// What the table says about one session's renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Nobody renews it.
    Free,
    /// A request (on some worker) is renewing it.
    Claimed,
    /// Renewed: the new session's `Set-Cookie` lines.
    Done(Vec<String>),
}

/// The renewals of one bucket: session key -> claim or result, each with the time it lapses.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    until: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renewed: Option<Vec<String>>,
}

/// The table key of a sealed session (a digest: the table never holds the cookie it replaces).
pub fn key(sealed: &str) -> String {
    let digest = hmac_sha256::Hash::hash(sealed.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The bucket of a table key.
pub fn bucket(key: &str) -> u8 {
    let first = u8::from_str_radix(key.get(..2).unwrap_or("0"), 16).unwrap_or(0);
    first % BUCKETS
}

impl Table {
    /// The state of `key`'s renewal at `now`.
    pub fn get(&self, key: &str, now: u64) -> Renewal {
        match self.entries.get(key) {
            Some(e) if e.until > now => match &e.renewed {
                Some(lines) => Renewal::Done(lines.clone()),
                None => Renewal::Claimed,
            },
            _ => Renewal::Free,
        }
    }

    /// Claims `key`'s renewal until `until` (the token request's timeout, and a little).
    pub fn claim(&mut self, key: &str, until: u64) {
        self.entries.insert(
            key.to_string(),
            Entry {
                until,
                renewed: None,
            },
        );
    }

    /// Records the renewed session's cookies for the grace period.
    pub fn complete(&mut self, key: &str, renewed: Vec<String>, now: u64) {
        self.entries.insert(
            key.to_string(),
            Entry {
                until: now + GRACE,
                renewed: Some(renewed),
            },
        );
    }

    /// Drops a claim whose renewal failed, so waiting requests stop waiting.
    pub fn release(&mut self, key: &str) {
        if self.entries.get(key).is_some_and(|e| e.renewed.is_none()) {
            self.entries.remove(key);
        }
    }

    /// Forgets what has lapsed.
    pub fn prune(&mut self, now: u64) {
        self.entries.retain(|_, e| e.until > now);
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Anything unreadable counts as empty: at worst one session refreshes twice.
    pub fn decode(bytes: &[u8]) -> Table {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_complete_and_lapse() {
        let k = key("sealed-session");
        assert_eq!(k.len(), 32);
        assert!(bucket(&k) < BUCKETS);
        let mut t = Table::default();
        assert_eq!(t.get(&k, 100), Renewal::Free);
        t.claim(&k, 107);
        assert_eq!(t.get(&k, 100), Renewal::Claimed);
        assert_eq!(t.get(&k, 107), Renewal::Free, "a claim lapses");
        t.complete(&k, vec!["_s=new".into()], 101);
        let t = Table::decode(&t.encode());
        assert_eq!(t.get(&k, 130), Renewal::Done(vec!["_s=new".into()]));
        assert_eq!(t.get(&k, 101 + GRACE), Renewal::Free);
    }

    #[test]
    fn release_drops_only_claims() {
        let mut t = Table::default();
        t.claim("a", 10);
        t.complete("b", vec![], 0);
        t.release("a");
        t.release("b");
        assert_eq!(t.get("a", 0), Renewal::Free);
        assert!(matches!(t.get("b", 0), Renewal::Done(_)));
        t.prune(GRACE);
        assert_eq!(t, Table::default());
        assert_eq!(Table::decode(b"not json"), Table::default());
    }
}
