//! The wall clock that billing reads.
//!
//! Every reading of wall time that money depends on — a call's `finished_at`, hence its billing hour and
//! the price entry in force — goes through one [`Clock`]. In production it is the system clock; tests hold
//! a manual clock they set and advance, so no test waits for a real hour (or a real price change).
//! Durations (latency, time to first token, timeouts) are not wall time: they use the monotonic clock.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `at` until set or advanced.
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(at))),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(t) => *t.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Moves a manual clock to `at` (a no-op on the system clock).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(t) = &self.manual {
            *t.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = at;
        }
    }

    /// Moves a manual clock forward by `by` (a no-op on the system clock).
    pub fn advance(&self, by: chrono::Duration) {
        if let Some(t) = &self.manual {
            let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *t += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start: DateTime<Utc> = "2026-11-25T15:59:59Z".parse().unwrap();
        let clock = Clock::manual(start);
        let seen_by_the_app = clock.clone();
        assert_eq!(seen_by_the_app.now(), start);
        clock.advance(chrono::Duration::seconds(2));
        assert_eq!(seen_by_the_app.now(), start + chrono::Duration::seconds(2));
        clock.set(start);
        assert_eq!(seen_by_the_app.now(), start);
    }

    #[test]
    fn the_system_clock_ignores_set() {
        let clock = Clock::system();
        clock.set("2000-01-01T00:00:00Z".parse().unwrap());
        assert!(clock.now().timestamp() > 1_700_000_000);
    }
}
