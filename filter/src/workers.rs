//! What the workers share about a site's IdP through Envoy's shared data, beside the lists of ended
//! sessions and the renewal table: the renewal pause, and how far the IdP's clock runs ahead. Decided
//! here from the shared bytes, so that tests reach it; the adapter reads and writes them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::Config;
use crate::flow::{Ahead, State};

/// The shared-data key of a site's renewal pause: until when no worker's renewal asks the IdP, after one met
/// an outage or while one probes it (`0`: the IdP answered last). Of the client at its IdP: a new
/// configuration of another IdP starts without it.
pub fn pause_key(cfg: &Config) -> String {
    format!(
        "oidc-filter.paused.{}.{}.{}",
        cfg.client_id, cfg.cookie_name, cfg.issuer
    )
}

/// Takes in the renewal pause the other workers shared, `bytes` at version `cas` (found by a black-box
/// test: each worker paused only its own renewals, so with the IdP hanging the requests of one user, taken
/// by the workers in turn, each waited out `callout_timeout` for a renewal of its own worker: every page
/// took 5 s). Whatever was shared last stands, once, when it changes: a pause (shorter too: a probe that
/// met the outage at once), or its end (`0`, the IdP answered). With the pause, the session whose failure
/// made it, if one did ([`State::record_outage`]): its end and that session's hash, 8 bytes each (a
/// build before it wrote the end alone, and reads this as nothing: during an image upgrade its VMs do not
/// take in the new build's pauses).
pub fn take_pause(state: &mut State, bytes: &[u8], cas: Option<u32>, now: u64) {
    if cas.is_some() && cas == state.pause_seen {
        return;
    }
    state.pause_seen = cas;
    let word = |at: usize| {
        let b = bytes.get(at..at + 8)?;
        <[u8; 8]>::try_from(b).ok().map(u64::from_le_bytes)
    };
    let (Some(until), 8 | 16) = (word(0), bytes.len()) else {
        return;
    };
    if until == 0 {
        state.renewals_failing = false;
        state.renewals_paused_until = 0;
        state.answered_at = now;
        state.others_wait = false;
    } else if until <= now.saturating_add(crate::flow::MAX_PAUSE) {
        // (One further off than any can be is none: the clock read far ahead when it was written.)
        state.renewals_failing = true;
        state.renewals_paused_until = until;
        if let Some(who) = word(8).filter(|&w| w != 0) {
            let at = until.saturating_sub(crate::flow::RENEWAL_PAUSE).min(now);
            let _ = state.record_outage(who, at);
        }
    }
}

/// What to share of this site's renewal pause (`None`: nothing), when what was just decided changed it
/// from `before` (a renewal met an outage, a probe went out, or the IdP answered after an outage); and,
/// when the IdP answered a renewal (`answered`), its end if another worker's pause is still shared
/// (`shared` reads it; found in review: a worker that met an outage once and then saw no answer kept
/// failing, and hours later its next renewal paused them all as a probe). With the pause, the session
/// whose failure made it ([`take_pause`]).
pub fn pause_to_share(
    state: &State,
    before: (u64, bool),
    answered: bool,
    shared: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<[u8; 16]> {
    let (until, who) = if state.renewals_failing {
        (state.renewals_paused_until, state.outage_who)
    } else {
        (0, 0)
    };
    let changed = (state.renewals_paused_until, state.renewals_failing) != before;
    let stale = || {
        answered && !state.renewals_failing && shared().is_some_and(|b| b.iter().any(|&x| x != 0))
    };
    (changed || stale()).then(|| (u128::from(who) << 64 | u128::from(until)).to_le_bytes())
}

/// The shared-data key of how far the IdP's clock runs ahead of the gateway's (`State::idp_ahead`): of the
/// IdP, whichever site saw it.
pub fn ahead_key(cfg: &Config) -> String {
    format!("oidc-filter.ahead.{}", cfg.issuer)
}

/// The reading of the IdP's clock `shared` holds (seconds ahead, within `clock_leeway`, or behind,
/// negative, within `MAX_BEHIND`; and when seen). Seconds behind are written as a two's complement,
/// which a build before them reads as far ahead, so as `clock_leeway` ahead: its `/logout`s kept by the
/// user end a login again within that, as they did before.
pub fn ahead_of(cfg: &Config, shared: Option<&[u8]>) -> Option<Ahead> {
    let bytes = <[u8; 16]>::try_from(shared?).ok()?;
    let (secs, seen) = bytes.split_at(8);
    let num = |b: &[u8]| <[u8; 8]>::try_from(b).map(u64::from_le_bytes).ok();
    let secs = i64::from_le_bytes(<[u8; 8]>::try_from(secs).ok()?);
    Some(Ahead {
        secs: Ahead::within(secs.unsigned_abs(), secs >= 0, cfg.clock_leeway),
        seen: num(seen)?,
    })
}

/// How far the IdP's clock runs ahead once this worker's reading `ours` and the shared bytes are combined
/// ([`Ahead::and`]), and what to write over them (`None`: nothing; a reading only newer, by less than ten
/// minutes, is not written). Shared when an ID token changed what a worker reads: a `/logout` on another
/// worker is dated by it (found in review: a renewal done on one worker, whose token the IdP dated ahead,
/// outlived a `/logout` another worker kept by its user).
pub fn ahead_to_share(
    cfg: &Config,
    ours: Ahead,
    shared: Option<&[u8]>,
) -> (Ahead, Option<[u8; 16]>) {
    let shared = ahead_of(cfg, shared);
    let ours = shared.map_or(ours, |s| ours.and(s));
    if shared.is_some_and(|s| s.secs == ours.secs && ours.seen < s.seen.saturating_add(600)) {
        return (ours, None);
    }
    let mut bytes = [0u8; 16];
    let (secs, seen) = bytes.split_at_mut(8);
    secs.copy_from_slice(&ours.secs.to_le_bytes());
    seen.copy_from_slice(&ours.seen.to_le_bytes());
    (ours, Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_900_000_000;

    fn cfg(issuer: &str) -> Config {
        let json = format!(
            r#"{{"issuer":"{issuer}","client_id":"app","client_secret":"s3cret",
            "cookie_keys":["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]}}"#
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    /// A pause until `until` as shared, no session's failure named.
    fn shared(until: u64) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&until.to_le_bytes());
        b
    }

    fn failing(until: u64) -> State {
        State {
            renewals_failing: true,
            renewals_paused_until: until,
            ..State::default()
        }
    }

    /// Found by mutation testing: none of these was held.
    #[test]
    fn the_shared_pause_is_taken_in_once_per_change_its_end_too_a_far_one_not() {
        // A pause another worker shared: taken in.
        let mut s = State::default();
        take_pause(&mut s, &(NOW + 5).to_le_bytes(), Some(1), NOW);
        assert!(s.renewals_failing && s.renewals_paused(NOW));
        // Its end: taken in (the IdP answered another worker), and when: a session's failures from
        // before are its own from then on; the sessions that waited out the pause wait no more.
        s.others_wait = true;
        take_pause(&mut s, &0u64.to_le_bytes(), Some(2), NOW);
        assert!(!s.renewals_failing && !s.renewals_paused(NOW));
        assert_eq!(s.answered_at, NOW);
        assert!(!s.others_wait);
        // The same version again is not taken in twice: this worker's own outage since stands.
        let mut s = failing(NOW + 5);
        s.pause_seen = Some(2);
        take_pause(&mut s, &0u64.to_le_bytes(), Some(2), NOW);
        assert!(s.renewals_failing);
        // One further off than any pause can be (the clock read far ahead when written): none.
        let mut s = State::default();
        // (Found in review: taken in up to 120 s, though a pause over `MAX_PAUSE` is none: the worker
        // went on to probe without pausing.)
        let max = crate::flow::MAX_PAUSE;
        take_pause(&mut s, &(NOW + max + 1).to_le_bytes(), Some(3), NOW);
        assert!(!s.renewals_failing && !s.renewals_paused(NOW));
        take_pause(&mut s, &(NOW + max).to_le_bytes(), Some(4), NOW);
        assert!(s.renewals_failing && s.renewals_paused(NOW));
        // Unreadable: nothing changes.
        let mut s = failing(NOW + 5);
        take_pause(&mut s, b"x", Some(5), NOW);
        assert!(s.renewals_failing && s.renewals_paused(NOW));
        // Of another length than this build's or the one before's (a later build's format, found by
        // mutation testing): nothing.
        let mut s = State::default();
        let later = [&shared(NOW + 5)[..], &[0; 8]].concat();
        take_pause(&mut s, &later, Some(6), NOW);
        assert!(!s.renewals_failing && !s.renewals_paused(NOW));
    }

    /// Found by mutation testing: a pause that names the session whose failure made it records that
    /// session as one that met the outage, at the time of its failure (the pause's end less its length),
    /// or, with this worker's clock behind the writer's, no later than now; a pause that names none (a
    /// probe's) records none, and takes no session's slot.
    #[test]
    fn a_shared_pause_records_the_session_it_names_when_it_failed() {
        let who = 0x5eed;
        let named = |until: u64| {
            let mut b = shared(until);
            b[8..].copy_from_slice(&u64::to_le_bytes(who));
            b
        };
        let failed_at = |s: &State| s.outages_of.iter().find(|o| o.who == who).map(|o| o.last);
        // Written 2 s ago: its failure then, not when taken in.
        let mut s = State::default();
        let pause = crate::flow::RENEWAL_PAUSE;
        take_pause(&mut s, &named(NOW - 2 + pause), Some(1), NOW);
        assert_eq!(failed_at(&s), Some(NOW - 2));
        // Written by a clock 20 s ahead of this worker's: no later than now.
        let mut s = State::default();
        take_pause(&mut s, &named(NOW + 20 + pause), Some(1), NOW);
        assert_eq!(failed_at(&s), Some(NOW));
        // Naming none: no record.
        let mut s = State::default();
        take_pause(&mut s, &shared(NOW + pause), Some(1), NOW);
        assert!(s.renewals_failing);
        assert_eq!(s.outages_of, State::default().outages_of);
    }

    /// Found by mutation testing: a version taken in is not taken in again, so that this worker's renewal
    /// the IdP answered since is not paused again by the pause it already took; and a host that gives no
    /// versions has each pause taken in all the same.
    #[test]
    fn a_shared_pause_taken_in_stays_taken_and_one_without_a_version_is_taken_too() {
        let mut s = State::default();
        take_pause(&mut s, &(NOW + 5).to_le_bytes(), Some(7), NOW);
        assert!(s.renewals_failing);
        // This worker's renewal was answered since: the same shared pause does not pause it again.
        s.renewals_failing = false;
        s.renewals_paused_until = 0;
        take_pause(&mut s, &(NOW + 5).to_le_bytes(), Some(7), NOW);
        assert!(!s.renewals_failing && !s.renewals_paused(NOW));
        // No version: taken in.
        let mut s = State::default();
        take_pause(&mut s, &(NOW + 5).to_le_bytes(), None, NOW);
        assert!(s.renewals_failing && s.renewals_paused(NOW));
    }

    /// Found by mutation testing: a renewal of a worker still failing that leaves its pause as it was (an
    /// answer in JSON that cannot be used) does not write that pause over another worker's later one.
    #[test]
    fn a_failing_workers_unchanged_pause_is_not_written_over_another_workers() {
        let s = failing(NOW + 5);
        let later = || Some((NOW + 9).to_le_bytes().to_vec());
        assert_eq!(pause_to_share(&s, (NOW + 5, true), true, later), None);
    }

    #[test]
    fn a_pause_is_shared_when_it_changes_and_its_end_when_the_idp_answers() {
        let unread = || -> Option<Vec<u8>> { panic!("read without need") };
        // An outage just met: its pause.
        let s = failing(NOW + 5);
        assert_eq!(
            pause_to_share(&s, (0, false), false, unread),
            Some(shared(NOW + 5))
        );
        // Unchanged: nothing written.
        assert_eq!(pause_to_share(&s, (NOW + 5, true), false, unread), None);
        // The IdP answered this worker's renewal after its own outage: the end.
        let ok = State::default();
        assert_eq!(
            pause_to_share(&ok, (NOW + 5, true), true, unread),
            Some([0; 16])
        );
        // Answered, nothing changed here, but another worker's pause is still shared: its end
        // (found in review); none when nothing or the end is shared.
        let paused = || Some((NOW + 5).to_le_bytes().to_vec());
        assert_eq!(pause_to_share(&ok, (0, false), true, paused), Some([0; 16]));
        assert_eq!(pause_to_share(&ok, (0, false), true, || None), None);
        assert_eq!(
            pause_to_share(&ok, (0, false), true, || Some(vec![0; 8])),
            None
        );
        // The end as this build writes it, 16 bytes (found by mutation testing: read as a pause still
        // shared, every answer wrote the end again, and every worker took it in again).
        assert_eq!(
            pause_to_share(&ok, (0, false), true, || Some(vec![0; 16])),
            None
        );
        // A reply that is no answer of the IdP's ends no other worker's pause.
        assert_eq!(pause_to_share(&ok, (0, false), false, paused), None);
    }

    /// Found by mutation testing: a probe going out lengthens the worker's pause to its timeout, and its
    /// outage met at once shortens it again: each shared, so that the other workers wait for the probe's
    /// answer too rather than send probes of their own, and no longer than it.
    #[test]
    fn a_probes_pause_is_shared_as_it_lengthens_and_shortens() {
        let unread = || -> Option<Vec<u8>> { panic!("read without need") };
        assert_eq!(
            pause_to_share(&failing(NOW + 65), (NOW + 5, true), false, unread),
            Some(shared(NOW + 65))
        );
        assert_eq!(
            pause_to_share(&failing(NOW + 5), (NOW + 65, true), true, unread),
            Some(shared(NOW + 5))
        );
    }

    /// A new configuration of another IdP starts without the pause of the one before.
    #[test]
    fn the_pause_and_the_clock_are_the_idps() {
        let (a, b) = (cfg("https://a.example"), cfg("https://b.example"));
        assert_ne!(pause_key(&a), pause_key(&b));
        assert_ne!(ahead_key(&a), ahead_key(&b));
        assert!(pause_key(&a).contains("app") && pause_key(&a).contains("_oidc_session"));
    }

    #[test]
    fn the_idps_clock_is_shared_when_it_reads_further_ahead_or_an_hour_newer() {
        let cfg = cfg("https://a.example");
        let at = |secs, seen| Ahead { secs, seen };
        let bytes = |a: Ahead| ahead_to_share(&cfg, a, None).1.unwrap();
        // Nothing shared yet: ours.
        let (ours, write) = ahead_to_share(&cfg, at(20, NOW), None);
        assert_eq!(
            (ours, ahead_of(&cfg, write.as_ref().map(|b| &b[..]))),
            (at(20, NOW), Some(at(20, NOW)))
        );
        // Further ahead than shared: written.
        let shared = bytes(at(10, NOW));
        let (ours, write) = ahead_to_share(&cfg, at(20, NOW + 5), Some(&shared));
        assert_eq!(ours, at(20, NOW + 5));
        assert!(write.is_some());
        // Less far than shared within the hour: the shared one is read, nothing written.
        let shared = bytes(at(30, NOW));
        assert_eq!(
            ahead_to_share(&cfg, at(20, NOW + 5), Some(&shared)),
            (at(30, NOW), None)
        );
        // As far, only newer by less than ten minutes: nothing written; ten minutes: written.
        assert_eq!(
            ahead_to_share(&cfg, at(30, NOW + 599), Some(&shared)),
            (at(30, NOW + 599), None)
        );
        assert!(
            ahead_to_share(&cfg, at(30, NOW + 600), Some(&shared))
                .1
                .is_some()
        );
        // Less far, an hour after the shared one was last seen: ours stands, and is written.
        let (ours, write) = ahead_to_share(&cfg, at(2, NOW + 3600), Some(&shared));
        assert_eq!(ours, at(2, NOW + 3600));
        assert!(write.is_some());
        // Further than `clock_leeway` is read as it; unreadable as nothing.
        assert_eq!(
            ahead_of(&cfg, Some(&bytes(at(999, NOW)))),
            Some(at(60, NOW))
        );
        assert_eq!(ahead_of(&cfg, Some(&[0; 8])), None);
        // Behind: written as a two's complement, read back within `MAX_BEHIND`.
        assert_eq!(
            ahead_of(&cfg, Some(&bytes(at(-300, NOW)))),
            Some(at(-300, NOW))
        );
        assert_eq!(
            ahead_of(&cfg, Some(&bytes(at(-5000, NOW)))),
            Some(at(-1800, NOW))
        );
        // As a build before readings behind reads them: far ahead, so `clock_leeway` ahead.
        let before = u64::from_le_bytes(bytes(at(-300, NOW))[..8].try_into().unwrap());
        assert_eq!(before.min(cfg.clock_leeway), 60);
    }
}
