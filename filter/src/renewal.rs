//! One refresh per session, whichever worker its requests land on. An IdP that rotates refresh tokens
//! treats a second use of the old one as theft and revokes the whole grant, so requests that find a
//! session due for renewal at the same moment (a page and its resources) must not each refresh it.
//!
//! The first request claims the renewal; the others keep the old token while it is valid, or wait.
//! The claimant then publishes the renewed session's `Set-Cookie` lines, which requests still
//! carrying the old cookie adopt instead of refreshing again. The adapter keeps one table per bucket
//! in Envoy's shared data (seen by every worker) and updates it with compare-and-swap.

use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;

use crate::wire::{Reader, Writer};

/// Buckets per site: keeps each shared value small however many sessions renew at once.
pub const BUCKETS: u8 = 64;
/// How long a finished renewal stays for requests that still carry the old cookie.
pub const GRACE: u64 = 30;
/// No entry lasts longer than this from when it is written: a claim (twice the longest `callout_timeout`,
/// 60 s, and 2 s), a finished renewal ([`GRACE`]). One that reaches further was written while the clock
/// read far ahead, and has lapsed.
const LONGEST: u64 = 122;
/// The first byte of an encoded [`Table`]; format 1 was JSON.
const VERSION: u8 = 2;

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

/// The renewals of one bucket: session key -> claim or result, each with the time it lapses. A
/// bucket holds the few sessions renewing within the last [`GRACE`] seconds, so a list will do.
///
/// Encoded (see [`crate::wire`]) as [`VERSION`], then the list of entries, each its key, `until`,
/// and optionally the list of `renewed` cookie lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    entries: Vec<(String, Entry)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    until: u64,
    renewed: Option<Vec<String>>,
}

/// The table key of a sealed session (a digest: the table never holds the cookie it replaces).
pub fn key(sealed: &str) -> String {
    let digest = crate::sha256::hash(sealed.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The bucket of a table key.
pub fn bucket(key: &str) -> u8 {
    let first = u8::from_str_radix(key.get(..2).unwrap_or("0"), 16).unwrap_or(0);
    first % BUCKETS
}

/// True while an entry made `until` that time holds at `now` (the clock may have stepped back since).
fn live(until: u64, now: u64) -> bool {
    until > now && until <= now.saturating_add(LONGEST)
}

impl Table {
    /// The state of `key`'s renewal at `now`.
    pub fn get(&self, key: &str, now: u64) -> Renewal {
        match self.entry(key) {
            Some(e) if live(e.until, now) => match &e.renewed {
                Some(lines) => Renewal::Done(lines.clone()),
                None => Renewal::Claimed,
            },
            _ => Renewal::Free,
        }
    }

    /// Claims `key`'s renewal until `until` (the token request's timeout, and a little).
    pub fn claim(&mut self, key: &str, until: u64) {
        self.insert(
            key,
            Entry {
                until,
                renewed: None,
            },
        );
    }

    /// Records the renewed session's cookies for the grace period.
    pub fn complete(&mut self, key: &str, renewed: Vec<String>, now: u64) {
        self.insert(
            key,
            Entry {
                until: now.saturating_add(GRACE),
                renewed: Some(renewed),
            },
        );
    }

    /// Drops the claim made until `until` (the releasing request's own) whose renewal failed, so waiting
    /// requests stop waiting. A later claim of another request, made once this one lapsed, stays.
    pub fn release(&mut self, key: &str, until: u64) {
        self.entries
            .retain(|(k, e)| k != key || e.renewed.is_some() || e.until != until);
    }

    /// Forgets what has lapsed.
    pub fn prune(&mut self, now: u64) {
        self.entries.retain(|(_, e)| live(e.until, now));
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(VERSION, self.entries.len().saturating_mul(64));
        w.list(&self.entries, |w, (key, e)| {
            w.str(key).u64(e.until).flag(e.renewed.is_some());
            if let Some(lines) = &e.renewed {
                w.list(lines, |w, line| {
                    w.str(line);
                });
            }
        });
        w.finish()
    }

    /// The table in `bytes` (none yet: empty) to change and write back; `None` when it is of a later
    /// format than this build writes: another build's, beside this one through an upgrade, whose claims
    /// and renewals this one would overwrite. Left alone then, as the shared logout list is.
    pub fn for_update(bytes: Option<&[u8]>) -> Option<Table> {
        crate::wire::for_update(bytes, VERSION, Table::decode)
    }

    /// Anything unreadable counts as empty: at worst one session refreshes twice.
    pub fn decode(bytes: &[u8]) -> Table {
        let read = || {
            let mut r = Reader::new(bytes, VERSION)?;
            let entries = r.list(|r| {
                let key = r.string()?;
                let until = r.u64()?;
                let renewed = match r.flag()? {
                    true => Some(r.list(Reader::string)?),
                    false => None,
                };
                Some((key, Entry { until, renewed }))
            })?;
            r.finish().map(|()| Table { entries })
        };
        read().unwrap_or_default()
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = entry,
            None => self.entries.push((key.to_string(), entry)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of a later format is not changed here (it would be read as empty and overwritten);
    /// an older, unreadable or missing one is.
    #[test]
    fn a_table_of_a_later_format_is_left_alone() {
        let mut t = Table::default();
        t.claim("k", 1_900_000_010);
        let mut later = t.encode();
        later[0] = VERSION + 1;
        assert!(Table::for_update(Some(&later)).is_none());
        let ours = Table::for_update(Some(&t.encode())).unwrap();
        assert_eq!(ours.get("k", 1_900_000_000), Renewal::Claimed);
        for other in [
            None,
            Some(&b""[..]),
            Some(&[VERSION - 1, 0][..]),
            Some(&b"garbage"[..]),
        ] {
            assert!(
                Table::for_update(other).is_some_and(|t| t.entries.is_empty()),
                "{other:?}"
            );
        }
    }

    /// Found in review: an entry written while the clock read far ahead held (a finished renewal kept
    /// being adopted, for longer than the grace period) until the clock caught up again.
    #[test]
    fn an_entry_from_a_clock_far_ahead_has_lapsed() {
        let mut t = Table::default();
        let ahead = 1_900_000_000 + 100_000;
        t.complete("k", vec!["c=1".into()], ahead);
        t.claim("j", ahead + 10);
        let now = 1_900_000_000;
        assert_eq!(t.get("k", now), Renewal::Free);
        assert_eq!(t.get("j", now), Renewal::Free);
        t.prune(now);
        assert!(t.entries.is_empty());
        // The longest claim there can be, just made, holds.
        t.claim("j", now + 2 * 60 + 2);
        assert_eq!(t.get("j", now), Renewal::Claimed);
    }

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
        t.release("a", 10);
        t.release("b", GRACE);
        assert_eq!(t.get("a", 0), Renewal::Free);
        assert!(matches!(t.get("b", 0), Renewal::Done(_)));
        // A claim that lapsed, taken by another request: the first one's release leaves it.
        t.claim("c", 10);
        t.claim("c", 25);
        t.release("c", 10);
        assert_eq!(t.get("c", 12), Renewal::Claimed);
        t.release("c", 25);
        assert_eq!(t.get("c", 12), Renewal::Free);
        t.prune(GRACE);
        assert_eq!(t, Table::default());
        assert_eq!(Table::decode(b"not json"), Table::default());
    }

    #[test]
    fn claiming_again_replaces_the_entry() {
        let mut t = Table::default();
        t.claim("a", 10);
        t.claim("b", 10);
        t.claim("a", 20);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.get("a", 15), Renewal::Claimed);
        t.complete("a", vec!["x".into()], 100);
        assert_eq!(t.get("a", 101), Renewal::Done(vec!["x".into()]));
        t.prune(11);
        assert_eq!(t.entries.len(), 1);
    }

    fn sample() -> Table {
        let mut t = Table::default();
        t.claim(&key("one"), 1_700_000_007);
        t.complete(
            &key("two"),
            vec!["_s=1.abc; Path=/".into(), "_s.1=; Max-Age=0".into()],
            1_700_000_000,
        );
        t.complete(&key("three"), vec![], 5);
        t
    }

    #[test]
    fn tables_round_trip_and_stay_small() {
        let t = sample();
        let bytes = t.encode();
        assert_eq!(Table::decode(&bytes), t);
        assert_eq!(Table::decode(&Table::default().encode()), Table::default());
        assert_eq!(Table::default().encode(), [VERSION, 0]);
        // Per entry: the 32-byte key and its length, the time, the tag (and the lines).
        let mut one = Table::default();
        one.claim(&key("one"), 1_700_000_007);
        assert_eq!(one.encode().len(), 2 + 33 + 5 + 1);
    }

    #[test]
    fn damaged_tables_are_empty() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert_eq!(
                Table::decode(&bytes[..len]),
                Table::default(),
                "cut to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Table::decode(&longer), Table::default());
        for v in (0..=u8::MAX).filter(|&v| v != VERSION) {
            let mut other = bytes.clone();
            other[0] = v;
            assert_eq!(Table::decode(&other), Table::default(), "version {v}");
        }
        // A key that is not UTF-8.
        let mut bad = bytes.clone();
        bad[3] = 0xff;
        assert_eq!(Table::decode(&bad), Table::default());
        assert_eq!(Table::decode(b"{}"), Table::default(), "format 1");
    }

    #[test]
    fn random_and_mutated_tables_never_panic() {
        for b in crate::wire::mutations(sample().encode(), VERSION, 0x9e37_79b9_7f4a_7c15_u64) {
            let t = Table::decode(&b);
            let _ = t.get(&key("two"), 0);
            assert_eq!(Table::decode(&t.encode()), t);
        }
    }

    #[test]
    fn an_entry_reaching_one_second_beyond_the_longest_has_lapsed() {
        let mut t = Table::default();
        let now = 1_900_000_000;
        // 122 s: twice the longest `callout_timeout`, and 2 s.
        t.claim("j", now + 2 * 60 + 3);
        assert_eq!(t.get("j", now), Renewal::Free);
        t.claim("k", now + 2 * 60 + 2);
        assert_eq!(t.get("k", now), Renewal::Claimed);
    }

    #[test]
    fn a_release_leaves_another_sessions_claim_of_the_same_time() {
        let mut t = Table::default();
        t.claim("a", 10);
        t.claim("b", 10);
        t.release("a", 10);
        assert_eq!(t.get("a", 0), Renewal::Free);
        assert_eq!(t.get("b", 0), Renewal::Claimed);
    }

    /// Every build must agree on a session's bucket (their tables are shared through an upgrade).
    #[test]
    fn a_keys_bucket_is_its_first_byte_modulo_64() {
        assert_eq!(bucket("00ab"), 0);
        assert_eq!(bucket("3fab"), 63);
        assert_eq!(bucket("40ab"), 0);
        assert_eq!(bucket("ffab"), 63);
    }
}
