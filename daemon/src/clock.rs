//! The daemon's one source of wall-clock time and its stored timestamp format.
//!
//! Code that needs "now" either calls the free functions here (the system
//! clock) or holds a [`Clock`], which tests can replace with a manual one to
//! control time. The store writer and the step-up expiry logic hold a
//! [`Clock`] (given to [`crate::store::Store::open`]); everything else reads
//! the system clock through this module. Monotonic timers (`Instant`) are not
//! wall-clock time and stay where they are.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::{Error, Result, quoted};

/// Stored timestamp format: RFC 3339, UTC, fixed microsecond precision, so
/// timestamps sort as strings.
const TS_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// A source of wall-clock time: the system clock, or (for tests) a manual
/// clock that only moves when told to. Cheap to clone; clones of a manual clock
/// share its time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock standing at `start` until [`Clock::set`] or [`Clock::advance`] moves it.
    pub fn manual(start: OffsetDateTime) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    /// Moves a manual clock to `t`; the system clock cannot be moved, so this
    /// returns false for it.
    pub fn set(&self, t: OffsetDateTime) -> bool {
        match &self.manual {
            Some(m) => {
                *m.lock().unwrap_or_else(PoisonError::into_inner) = t;
                true
            }
            None => false,
        }
    }

    /// Moves a manual clock forward by `by`; false for the system clock.
    pub fn advance(&self, by: Duration) -> bool {
        match &self.manual {
            Some(m) => {
                let mut t = m.lock().unwrap_or_else(PoisonError::into_inner);
                *t = t.saturating_add(time::Duration::try_from(by).unwrap_or(time::Duration::MAX));
                true
            }
            None => false,
        }
    }

    /// Now: the manual time, or the system's.
    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            Some(m) => *m.lock().unwrap_or_else(PoisonError::into_inner),
            None => OffsetDateTime::now_utc(),
        }
    }

    /// Now, in whole seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        self.now().unix_timestamp()
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        i64::try_from(self.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// Time left until `deadline` (seconds since the Unix epoch); zero once it passed.
    pub fn until_unix(&self, deadline: i64) -> Duration {
        OffsetDateTime::from_unix_timestamp(deadline)
            .map_or(time::Duration::ZERO, |d| d - self.now())
            .try_into()
            .unwrap_or(Duration::ZERO)
    }

    /// Now, in the stored timestamp format.
    pub fn ts(&self) -> String {
        format_ts(self.now())
    }
}

/// Now, from the system clock.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Now, in the stored timestamp format (system clock).
pub fn now_ts() -> String {
    Clock::system().ts()
}

/// Now, in whole seconds since the Unix epoch (system clock).
pub fn unix_now() -> i64 {
    Clock::system().unix()
}

/// Now, in milliseconds since the Unix epoch (system clock).
pub fn unix_now_ms() -> i64 {
    Clock::system().unix_ms()
}

/// Formats a time in the stored format.
pub fn format_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(TS_FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses an RFC 3339 timestamp given by a caller.
pub fn parse_rfc3339(field: &'static str, s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::invalid(field, format!("{} is not RFC 3339: {e}", quoted(s))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = Clock::manual(start);
        let shared = clock.clone();
        assert_eq!(clock.unix(), 1_700_000_000);
        assert!(shared.advance(Duration::from_secs(301)));
        assert_eq!(clock.unix(), 1_700_000_301);
        assert_eq!(clock.ts(), "2023-11-14T22:18:21.000000Z");
        assert!(!Clock::system().set(start));
        assert_eq!(clock.until_unix(1_700_000_311), Duration::from_secs(10));
        assert_eq!(clock.until_unix(1_700_000_000), Duration::ZERO);
    }

    #[test]
    fn stored_timestamps_sort_as_strings() {
        let a = format_ts(OffsetDateTime::from_unix_timestamp(9).unwrap());
        let b = format_ts(OffsetDateTime::from_unix_timestamp(10).unwrap());
        assert!(a < b);
        assert_eq!(a, "1970-01-01T00:00:09.000000Z");
    }
}
