//! A budget of log lines: at most so many per window of seconds for one kind of line, counting the ones
//! left out, for lines that a client or an outage can cause on every request. The host side logs through
//! it (`adapter`); the decision needs only the time, so it is tested here.

use core::sync::atomic::{AtomicU64, Ordering};

/// At most `lines` log lines per `window` seconds, per VM.
pub struct Throttle {
    window: u64,
    lines: u64,
    /// When the current window began (seconds), how many lines it has logged, how many were left out
    /// since the last line.
    start: AtomicU64,
    logged: AtomicU64,
    left_out: AtomicU64,
}

impl Throttle {
    pub const fn new(window: u64, lines: u64) -> Throttle {
        Throttle {
            window,
            lines,
            start: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at `now`: `Some` with how many were left out since the last line
    /// logged (for that line to say so), `None` when this one is left out. A clock that steps back
    /// starts a new window: one read far ahead would otherwise silence the kind until it caught up.
    pub fn admit(&self, now: u64) -> Option<u64> {
        let start = self.start.load(Ordering::Relaxed);
        if start == 0 || now >= start.saturating_add(self.window) || now < start {
            self.start.store(now.max(1), Ordering::Relaxed);
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) >= self.lines {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.left_out.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_900_000_000;

    #[test]
    fn a_window_logs_its_lines_and_the_next_line_says_how_many_were_left_out() {
        let t = Throttle::new(1, 20);
        let first: Vec<_> = (0..25).map(|_| t.admit(NOW)).collect();
        assert!(first[..20].iter().all(|a| *a == Some(0)), "{first:?}");
        assert!(first[20..].iter().all(Option::is_none), "{first:?}");
        // The next second: a new window, whose first line counts the five left out.
        assert_eq!(t.admit(NOW + 1), Some(5));
        assert_eq!(t.admit(NOW + 1), Some(0));
    }

    #[test]
    fn a_longer_window_holds_until_it_ends() {
        let t = Throttle::new(10, 1);
        assert_eq!(t.admit(NOW), Some(0));
        for dt in 1..10 {
            assert_eq!(t.admit(NOW + dt), None, "+{dt} s");
        }
        assert_eq!(t.admit(NOW + 10), Some(9));
    }

    /// A clock read far ahead, then corrected: the kind is not silent until the clock catches up.
    #[test]
    fn a_clock_that_steps_back_starts_a_new_window() {
        let t = Throttle::new(10, 1);
        let ahead = NOW + 365 * 86_400;
        assert_eq!(t.admit(ahead), Some(0));
        assert_eq!(t.admit(ahead), None);
        assert_eq!(t.admit(NOW), Some(1));
        assert_eq!(t.admit(NOW + 1), None, "and holds from there");
    }
}
