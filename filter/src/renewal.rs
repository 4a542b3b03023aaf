//! One refresh per session, whichever worker its requests land on. An IdP that rotates refresh tokens
//! treats a second use of the old one as theft and revokes the whole grant, so requests that find a
//! session due for renewal at the same moment (a page and its resources) must not each refresh it.
//!
//! The first request claims the renewal; the others keep the old token while it is valid, or wait.
//! The claimant then publishes the renewed session's `Set-Cookie` lines, which requests still
//! carrying the old cookie adopt instead of refreshing again. The adapter keeps one table per bucket
//! in Envoy's shared data (seen by every worker) and updates it with compare-and-swap.

use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;

use crate::wire::{Reader, Writer};

/// Buckets per site: keeps each shared value small however many sessions renew at once.
pub const BUCKETS: u8 = 64;
/// How long a finished renewal stays for requests that still carry the old cookie.
pub const GRACE: u64 = 30;
/// How long, at most, a renewal no browser was handed stays (its request had stopped waiting, or its
/// client had gone): the session's next request may come much later, on any worker, still with the old
/// cookie, whose refresh token an IdP that rotates them has retired (found in review: after [`GRACE`],
/// such a request on another worker refreshed with it, and the user was logged out).
pub const UNDELIVERED: u64 = 8 * 3600;
/// Renewals kept longer than [`GRACE`] per bucket (64 per site's 64 buckets, 4,096 in all), holding at
/// most [`MAX_UNDELIVERED_BYTES`] of cookie lines: when more stall at once (an IdP slow for everyone),
/// the one that lapses first goes.
const MAX_UNDELIVERED: usize = 64;
/// 128 KiB a bucket, 8 MiB of Envoy's shared data a site: 64 sessions of 2 KB, 16 of 8 KB (found in
/// review: 64 sessions of 8 KB in each of 64 buckets held 32 MiB, every bucket's update rewriting 512
/// KiB).
const MAX_UNDELIVERED_BYTES: usize = 128 * 1024;
/// No claim lasts longer than this from when it is written: three times the longest `callout_timeout`
/// (60 s: the token request's doubled timeout, and a fetch of keys after it) and 2 s; no finished
/// renewal longer than [`UNDELIVERED`]. One that reaches further was written while the clock read far
/// ahead, and has lapsed.
const LONGEST: u64 = 182;
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
/// bucket holds the few sessions renewing within the last [`GRACE`] seconds, and at most
/// [`MAX_UNDELIVERED`] renewals no browser got yet, so a list will do.
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
    crate::b64::hex(&digest[..16])
}

/// The bucket of a table key.
pub fn bucket(key: &str) -> u8 {
    let first = u8::from_str_radix(key.get(..2).unwrap_or("0"), 16).unwrap_or(0);
    first % BUCKETS
}

/// True while entry `e` holds at `now`: before its `until`, and not beyond the longest it can last from
/// `now`, as the clock may have stepped back since it was written (a finished renewal's bound has a
/// claim's room too, so a step back of seconds does not drop one kept for [`UNDELIVERED`]; found in
/// review). One written while the clock read ahead by less than that holds until then.
fn live(e: &Entry, now: u64) -> bool {
    let longest = if e.renewed.is_some() {
        UNDELIVERED + LONGEST
    } else {
        LONGEST
    };
    e.until > now && e.until <= now.saturating_add(longest)
}

impl Table {
    /// The state of `key`'s renewal at `now`.
    pub fn get(&self, key: &str, now: u64) -> Renewal {
        match self.entry(key) {
            Some(e) if live(e, now) => match &e.renewed {
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

    /// Records the renewed session's cookies for the grace period, or, when no browser was handed them,
    /// for `undelivered` seconds (at most [`UNDELIVERED`]; the session's lifetime), while the bucket
    /// keeps at most [`MAX_UNDELIVERED`] such.
    /// No lines say the session is over (its renewal was refused): told for the grace period only, and
    /// never over a renewal made meanwhile (found in review: kept as a renewal no browser got, such ends
    /// took the room of real ones).
    pub fn complete(
        &mut self,
        key: &str,
        renewed: Vec<String>,
        now: u64,
        undelivered: Option<u64>,
    ) {
        let over = renewed.is_empty();
        if over
            && self
                .entry(key)
                .is_some_and(|e| live(e, now) && e.renewed.is_some())
        {
            return;
        }
        let keep = match undelivered {
            Some(u) if !over => u.clamp(GRACE, UNDELIVERED),
            _ => GRACE,
        };
        self.insert(
            key,
            Entry {
                until: now.saturating_add(keep),
                renewed: Some(renewed),
            },
        );
        let long = |e: &Entry| e.renewed.is_some() && e.until > now.saturating_add(GRACE);
        loop {
            let (n, bytes) =
                self.entries
                    .iter()
                    .filter(|(_, e)| long(e))
                    .fold((0, 0), |(n, b), (_, e)| {
                        (
                            n + 1,
                            b + e.renewed.iter().flatten().map(String::len).sum::<usize>(),
                        )
                    });
            if n <= MAX_UNDELIVERED && bytes <= MAX_UNDELIVERED_BYTES {
                break;
            }
            // The first of the long ones that lapse soonest.
            let mut first: Option<(usize, u64)> = None;
            for (i, (_, e)) in self.entries.iter().enumerate() {
                if long(e) && first.is_none_or(|(_, t)| e.until < t) {
                    first = Some((i, e.until));
                }
            }
            let Some((i, _)) = first else { break };
            self.entries.remove(i);
        }
    }

    /// A renewal kept longer than [`GRACE`], taken in by a request whose browser gets its cookies now:
    /// kept the grace period from here only (found in review: kept for hours after, it filled the
    /// buckets, and a stolen copy of the old cookie could take it in all that time). True if it was such.
    pub fn taken(&mut self, key: &str, now: u64) -> bool {
        let until = now.saturating_add(GRACE);
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, e)) if e.renewed.is_some() && e.until > until => {
                e.until = until;
                true
            }
            _ => false,
        }
    }

    /// Drops the claim made until `until` (the releasing request's own) whose renewal failed, so waiting
    /// requests stop waiting. A later claim of another request, made once this one lapsed, stays.
    pub fn release(&mut self, key: &str, until: u64) {
        self.entries
            .retain(|(k, e)| k != key || e.renewed.is_some() || e.until != until);
    }

    /// Forgets what has lapsed.
    pub fn prune(&mut self, now: u64) {
        self.entries.retain(|(_, e)| live(e, now));
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
        t.complete("k", vec!["c=1".into()], ahead, None);
        t.claim("j", ahead + 10);
        let now = 1_900_000_000;
        assert_eq!(t.get("k", now), Renewal::Free);
        assert_eq!(t.get("j", now), Renewal::Free);
        t.prune(now);
        assert!(t.entries.is_empty());
        // The longest claim there can be, just made, holds; and the longest kept renewal.
        t.claim("j", now + 3 * 60 + 2);
        assert_eq!(t.get("j", now), Renewal::Claimed);
        t.complete("k", vec!["c=1".into()], now, Some(UNDELIVERED));
        assert_eq!(t.get("k", now), Renewal::Done(vec!["c=1".into()]));
        t.claim("j", now + 3 * 60 + 3);
        assert_eq!(t.get("j", now), Renewal::Free);
    }

    /// Found in review: a renewal no browser was handed lasted [`GRACE`], after which the session's next
    /// request, on another worker, refreshed with the refresh token the IdP had retired. It lasts as the
    /// session may now, and a bucket keeps [`MAX_UNDELIVERED`] of them, the latest to lapse.
    #[test]
    fn a_session_found_over_is_told_for_the_grace_period_and_over_no_renewal() {
        let now = 1_900_000_000;
        let mut t = Table::default();
        t.complete("k", Vec::new(), now, Some(3600));
        assert_eq!(t.get("k", now + GRACE - 1), Renewal::Done(Vec::new()));
        assert_eq!(t.get("k", now + GRACE), Renewal::Free);
        t.complete("r", vec!["c=1".into()], now, Some(3600));
        t.complete("r", Vec::new(), now + 1, None);
        assert_eq!(t.get("r", now + 2), Renewal::Done(vec!["c=1".into()]));
        // Many such ends leave a renewal no browser got where it is.
        for i in 0..2 * MAX_UNDELIVERED {
            t.complete(&format!("over-{i}"), Vec::new(), now, Some(3600));
        }
        assert_eq!(t.get("r", now + 100), Renewal::Done(vec!["c=1".into()]));
    }

    /// Found by mutation testing: a later renewal of the same session replaces the one recorded before
    /// (whose refresh token the later one's request may have spent); only a session found over leaves a
    /// recorded renewal where it is.
    #[test]
    fn a_later_renewal_replaces_the_one_recorded_before() {
        let now = 1_900_000_000;
        let mut t = Table::default();
        t.complete("k", vec!["c=1".into()], now, None);
        t.complete("k", vec!["c=2".into()], now + 1, None);
        assert_eq!(t.get("k", now + 2), Renewal::Done(vec!["c=2".into()]));
        t.complete("k", vec!["c=3".into()], now + 2, Some(3600));
        assert_eq!(t.get("k", now + 100), Renewal::Done(vec!["c=3".into()]));
        // A renewal that has lapsed (not yet pruned) leaves the room to a session found over.
        t.complete("j", vec!["c=1".into()], now, None);
        t.complete("j", Vec::new(), now + GRACE, None);
        assert_eq!(t.get("j", now + GRACE), Renewal::Done(Vec::new()));
    }

    /// Found by mutation testing: of the kept renewals that lapse at the same time, the bucket drops the
    /// first recorded, not the one just made.
    #[test]
    fn of_kept_renewals_that_lapse_together_the_first_recorded_goes() {
        let now = 1_900_000_000;
        let mut t = Table::default();
        for i in 0..=MAX_UNDELIVERED {
            t.complete(&format!("u{i}"), vec!["u".into()], now, Some(3600));
        }
        assert_eq!(t.get("u0", now), Renewal::Free);
        let last = format!("u{MAX_UNDELIVERED}");
        assert_eq!(t.get(&last, now), Renewal::Done(vec!["u".into()]));
    }

    #[test]
    fn a_renewal_no_browser_got_is_kept_longer() {
        let now = 1_900_000_000;
        let mut t = Table::default();
        t.complete("k", vec!["c=1".into()], now, Some(3600));
        t.complete("g", vec!["c=2".into()], now, None);
        let t2 = Table::decode(&t.encode());
        assert_eq!(t2.get("k", now + 3599), Renewal::Done(vec!["c=1".into()]));
        assert_eq!(t2.get("k", now + 3600), Renewal::Free);
        assert_eq!(
            t2.get("g", now + GRACE - 1),
            Renewal::Done(vec!["c=2".into()])
        );
        assert_eq!(t2.get("g", now + GRACE), Renewal::Free);
        // Bounded: never past `UNDELIVERED`, never below `GRACE`.
        t.complete("x", vec!["c=3".into()], now, Some(u64::MAX));
        assert_eq!(t.get("x", now + UNDELIVERED), Renewal::Free);
        assert_eq!(
            t.get("x", now + UNDELIVERED - 1),
            Renewal::Done(vec!["c=3".into()])
        );
        t.complete("y", vec!["c=4".into()], now, Some(1));
        assert_eq!(
            t.get("y", now + GRACE - 1),
            Renewal::Done(vec!["c=4".into()])
        );
        // A clock a second behind keeps it; taken in, it lasts the grace period from then.
        assert_eq!(t.get("x", now - 1), Renewal::Done(vec!["c=3".into()]));
        assert!(t.taken("x", now + 100));
        assert!(!t.taken("x", now + 100), "once");
        assert!(!t.taken("y", now), "a short one stays as it is");
        assert_eq!(
            t.get("x", now + 100 + GRACE - 1),
            Renewal::Done(vec!["c=3".into()])
        );
        assert_eq!(t.get("x", now + 100 + GRACE), Renewal::Free);
        // More than a bucket keeps: the first to lapse goes; the short-lived and the claims stay.
        let mut t = Table::default();
        t.claim("claim", now + 10);
        t.complete("short", vec!["s".into()], now, None);
        for i in 0..MAX_UNDELIVERED + 3 {
            t.complete(
                &format!("u{i}"),
                vec!["u".into()],
                now,
                Some(1000 + i as u64),
            );
        }
        for i in 0..3 {
            assert_eq!(t.get(&format!("u{i}"), now), Renewal::Free, "u{i}");
        }
        for i in 3..MAX_UNDELIVERED + 3 {
            assert_eq!(
                t.get(&format!("u{i}"), now),
                Renewal::Done(vec!["u".into()]),
                "u{i}"
            );
        }
        assert_eq!(t.get("claim", now), Renewal::Claimed);
        assert_eq!(t.get("short", now), Renewal::Done(vec!["s".into()]));
        // And at most so many bytes: sessions of 8 KB, 16 of them.
        let mut t = Table::default();
        let big = || vec!["c".repeat(8 * 1024 - 1)];
        for i in 0..20u64 {
            t.complete(&format!("b{i}"), big(), now, Some(1000 + i));
        }
        let kept: Vec<u64> = (0..20)
            .filter(|i| t.get(&format!("b{i}"), now) != Renewal::Free)
            .collect();
        assert_eq!(kept, (4..20).collect::<Vec<_>>());
    }

    /// Found by mutation testing: the bounds as documented, the limits themselves allowed (8 hours; 64
    /// renewals; 128 KiB, all of a renewal's lines counted), and only renewals counted, dropped or
    /// `taken`: never a claim, even one reaching past the grace period.
    #[test]
    fn the_kept_renewals_bounds_are_as_documented() {
        let now = 1_900_000_000;
        let mut t = Table::default();
        t.complete("k", vec!["c=1".into()], now, Some(8 * 3600));
        assert_eq!(
            t.get("k", now + 8 * 3600 - 1),
            Renewal::Done(vec!["c=1".into()])
        );
        let kept = |t: &Table, prefix: &str, n: u64| {
            (0..n)
                .filter(|i| t.get(&format!("{prefix}{i}"), now) != Renewal::Free)
                .count()
        };
        let mut t = Table::default();
        t.claim("claim", now + 100);
        for i in 0..64u64 {
            t.complete(&format!("u{i}"), vec!["u".into()], now, Some(1000 + i));
        }
        assert_eq!(kept(&t, "u", 64), 64);
        t.complete("u64", vec!["u".into()], now, Some(1000 + 64));
        assert_eq!(t.get("u0", now), Renewal::Free);
        assert_eq!(kept(&t, "u", 65), 64);
        assert_eq!(t.get("claim", now), Renewal::Claimed);
        assert!(!t.taken("claim", now), "a claim is no renewal");
        assert_eq!(t.get("claim", now + GRACE + 1), Renewal::Claimed);
        // 16 renewals of two 4 KiB lines: 128 KiB, kept; a byte more drops the first to lapse.
        let mut t = Table::default();
        for i in 0..16u64 {
            let lines = vec!["c".repeat(4096), "d".repeat(4096)];
            t.complete(&format!("b{i}"), lines, now, Some(1000 + i));
        }
        assert_eq!(kept(&t, "b", 16), 16);
        t.complete("one", vec!["e".into()], now, Some(2000));
        assert_eq!(t.get("b0", now), Renewal::Free);
        assert_eq!(kept(&t, "b", 16), 15);
        assert_eq!(t.get("one", now), Renewal::Done(vec!["e".into()]));
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
        t.complete(&k, vec!["_s=new".into()], 101, None);
        let t = Table::decode(&t.encode());
        assert_eq!(t.get(&k, 130), Renewal::Done(vec!["_s=new".into()]));
        assert_eq!(t.get(&k, 101 + GRACE), Renewal::Free);
    }

    #[test]
    fn release_drops_only_claims() {
        let mut t = Table::default();
        t.claim("a", 10);
        t.complete("b", vec![], 0, None);
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
        t.complete("a", vec!["x".into()], 100, None);
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
            None,
        );
        t.complete(&key("three"), vec![], 5, None);
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
        // 182 s: three times the longest `callout_timeout`, and 2 s.
        t.claim("j", now + 3 * 60 + 3);
        assert_eq!(t.get("j", now), Renewal::Free);
        t.claim("k", now + 3 * 60 + 2);
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
