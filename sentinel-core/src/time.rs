//! Time as the store sees it: timestamps, clocks and the time source a store is built with.
//!
//! Every expiry decision in Sentinel is taken on the store's clock. A client never compares its own
//! wall clock with a stored timestamp; it only measures elapsed time on its monotonic clock (see
//! [`crate::client`]). Tests replace the store's clock with a [`ManualClock`] so they can move time
//! without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: whole microseconds since the Unix epoch, UTC.
///
/// Microseconds are the resolution of PostgreSQL's `timestamptz` and of Redis `TIME`, so every store
/// can hold a timestamp exactly. The range is restricted to the years 1970 to 9999, which keeps
/// every fencing token derived from a timestamp far below `i64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable instant, 9999-12-31T23:59:59.999999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999_999);

    /// A timestamp from microseconds since the epoch, clamped to `EPOCH..=MAX`.
    pub const fn from_micros(micros: i64) -> Self {
        if micros < 0 {
            Self::EPOCH
        } else if micros > Self::MAX.0 {
            Self::MAX
        } else {
            Timestamp(micros)
        }
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The system's wall clock, read now. Only stores use this, as their own clock.
    pub fn now_system() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        Self::from_micros(micros)
    }

    /// This instant moved forward by `d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        Self::from_micros(self.0.saturating_add(duration_micros(d)))
    }

    /// This instant moved back by `d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self::from_micros(self.0.saturating_sub(duration_micros(d)))
    }

    /// How long after `earlier` this instant is, or `None` if it is before `earlier`.
    pub fn duration_since(self, earlier: Timestamp) -> Option<Duration> {
        let delta = self.0.checked_sub(earlier.0)?;
        u64::try_from(delta).ok().map(Duration::from_micros)
    }
}

/// Whole microseconds in `d`, saturating at `i64::MAX`.
pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-27T09:15:02.000125Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0;
        let secs = micros.div_euclid(1_000_000);
        let frac = micros.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12 by construction.
    (year, month as u32, day as u32)
}

/// A source of the current time for a store.
///
/// The memory store reads one directly; the PostgreSQL and Redis stores use their server's clock
/// unless they are given a [`TimeSource::Manual`] clock.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_system()
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// Give one to a store through [`TimeSource::Manual`] and move it with [`ManualClock::advance`]:
/// leases expire exactly when the test says so, without sleeping.
///
/// ```
/// use std::time::Duration;
/// use sentinel_core::time::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now().duration_since(before), Some(Duration::from_millis(1500)));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    /// The instant a new manual clock starts at: 2026-01-01T00:00:00Z.
    pub const START: Timestamp = Timestamp(1_767_225_600_000_000);

    /// A clock standing at [`ManualClock::START`].
    pub fn new() -> Self {
        Self::starting_at(Self::START)
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        ManualClock {
            micros: Arc::new(AtomicI64::new(start.as_micros())),
        }
    }

    /// Moves the clock forward by `d` (saturating at [`Timestamp::MAX`]) and returns the new time.
    pub fn advance(&self, d: Duration) -> Timestamp {
        let step = duration_micros(d);
        let previous = self
            .micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(Timestamp::from_micros(m.saturating_add(step)).as_micros())
            })
            .unwrap_or_else(|m| m);
        Timestamp::from_micros(previous.saturating_add(step))
    }

    /// The clock's current time.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.micros.load(Ordering::SeqCst))
    }

    /// Sets the clock to `t`. Moving it backwards is allowed, as real clocks do it too; tokens stay
    /// increasing regardless, because they never fall below the last issued token.
    pub fn set(&self, t: Timestamp) {
        self.micros.store(t.as_micros(), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        ManualClock::now(self)
    }
}

/// Where a store takes the current time from.
#[derive(Clone, Debug, Default)]
pub enum TimeSource {
    /// The store's own clock: PostgreSQL `clock_timestamp()`, Redis `TIME`, the memory store's
    /// system clock. The production default.
    #[default]
    Server,
    /// A clock the test controls, passed to the store with every command.
    Manual(ManualClock),
}

impl TimeSource {
    /// The manual clock's current time, or `None` for [`TimeSource::Server`].
    pub fn manual_now(&self) -> Option<Timestamp> {
        match self {
            TimeSource::Server => None,
            TimeSource::Manual(clock) => Some(clock.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            ManualClock::START.to_string(),
            "2026-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::from_micros(951_782_400_000_001).to_string(),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
        // Around leap days and century years, where the calendar arithmetic branches.
        for (micros, text) in [
            (946_684_799_000_000, "1999-12-31T23:59:59.000000Z"),
            (951_868_800_000_000, "2000-03-01T00:00:00.000000Z"),
            (1_709_251_200_000_000, "2024-03-01T00:00:00.000000Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
            (4_133_980_800_000_000, "2101-01-01T00:00:00.000000Z"),
            (13_574_608_496_000_000, "2400-02-29T12:34:56.000000Z"),
        ] {
            assert_eq!(Timestamp::from_micros(micros).to_string(), text);
        }
    }

    #[test]
    fn arithmetic_saturates_inside_the_range() {
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(5)),
            Timestamp::MAX
        );
        assert_eq!(
            Timestamp::EPOCH.saturating_sub(Duration::from_secs(5)),
            Timestamp::EPOCH
        );
        assert_eq!(Timestamp::from_micros(-4), Timestamp::EPOCH);
        assert_eq!(Timestamp::EPOCH.duration_since(Timestamp::MAX), None);
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::new();
        let b = a.clone();
        a.advance(Duration::from_micros(7));
        assert_eq!(b.now().as_micros(), ManualClock::START.as_micros() + 7);
        b.set(Timestamp::from_micros(10));
        assert_eq!(a.now(), Timestamp::from_micros(10));
        assert_eq!(
            TimeSource::Manual(a).manual_now(),
            Some(Timestamp::from_micros(10))
        );
        assert_eq!(TimeSource::Server.manual_now(), None);
    }
}
