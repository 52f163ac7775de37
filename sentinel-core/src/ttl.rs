//! Lease lifetimes: the ttl a heartbeat renews, and the hard ttl no heartbeat can pass.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// How long a claim or lease lives without a heartbeat (`ttl`), and the ceiling no heartbeat can
/// extend it past (`hard_ttl`), both counted from the moment of the claim.
///
/// Use a short ttl to notice a dead worker quickly and a long hard ttl to give a live one room to
/// finish. Omitting the hard ttl makes it equal to the ttl, so heartbeats cannot extend the work:
/// long work must ask for it explicitly.
///
/// ```
/// use std::time::Duration;
/// use sentinel_core::Ttl;
///
/// let ttl = Ttl::with_hard(Duration::from_secs(3), Duration::from_secs(30)).unwrap();
/// assert_eq!(ttl.hard(), Duration::from_secs(30));
/// assert!(Ttl::new(Duration::ZERO).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "TtlMicros", into = "TtlMicros")]
pub struct Ttl {
    ttl: Duration,
    hard: Duration,
}

impl Ttl {
    /// The shortest ttl accepted: one millisecond.
    pub const MIN: Duration = Duration::from_millis(1);
    /// The longest ttl or hard ttl accepted: 366 days.
    pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

    /// A ttl whose hard ttl equals it.
    pub fn new(ttl: Duration) -> Result<Self, InvalidInput> {
        Self::with_hard(ttl, ttl)
    }

    /// A ttl with a separate hard ttl, which must be at least the ttl.
    pub fn with_hard(ttl: Duration, hard: Duration) -> Result<Self, InvalidInput> {
        if ttl < Self::MIN {
            return Err(InvalidInput::TtlTooShort {
                ttl,
                min: Self::MIN,
            });
        }
        if ttl > Self::MAX {
            return Err(InvalidInput::TtlTooLong {
                what: "ttl",
                ttl,
                max: Self::MAX,
            });
        }
        if hard < ttl {
            return Err(InvalidInput::HardTtlBelowTtl { ttl, hard });
        }
        if hard > Self::MAX {
            return Err(InvalidInput::TtlTooLong {
                what: "hard ttl",
                ttl: hard,
                max: Self::MAX,
            });
        }
        // Stores keep whole microseconds.
        Ok(Ttl {
            ttl: truncate_to_micros(ttl),
            hard: truncate_to_micros(hard),
        })
    }

    /// A ttl from whole microseconds, as stores keep it.
    pub fn from_micros(ttl: i64, hard: i64) -> Result<Self, InvalidInput> {
        let to_duration = |m: i64| Duration::from_micros(u64::try_from(m).unwrap_or(0));
        Self::with_hard(to_duration(ttl), to_duration(hard))
    }

    /// The lease window a heartbeat renews.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The ceiling, counted from the claim, that no heartbeat passes.
    pub fn hard(&self) -> Duration {
        self.hard
    }

    /// The ttl in whole microseconds.
    pub fn ttl_micros(&self) -> i64 {
        crate::time::duration_micros(self.ttl)
    }

    /// The hard ttl in whole microseconds.
    pub fn hard_micros(&self) -> i64 {
        crate::time::duration_micros(self.hard)
    }
}

fn truncate_to_micros(d: Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[derive(Serialize, Deserialize)]
struct TtlMicros {
    ttl_us: i64,
    hard_ttl_us: i64,
}

impl TryFrom<TtlMicros> for Ttl {
    type Error = InvalidInput;
    fn try_from(v: TtlMicros) -> Result<Self, InvalidInput> {
        Ttl::from_micros(v.ttl_us, v.hard_ttl_us)
    }
}

impl From<Ttl> for TtlMicros {
    fn from(t: Ttl) -> Self {
        TtlMicros {
            ttl_us: t.ttl_micros(),
            hard_ttl_us: t.hard_micros(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ttls_are_refused() {
        assert!(matches!(
            Ttl::new(Duration::ZERO),
            Err(InvalidInput::TtlTooShort { .. })
        ));
        assert!(matches!(
            Ttl::with_hard(Duration::from_secs(2), Duration::from_secs(1)),
            Err(InvalidInput::HardTtlBelowTtl { .. })
        ));
        assert!(matches!(
            Ttl::new(Ttl::MAX + Duration::from_secs(1)),
            Err(InvalidInput::TtlTooLong { .. })
        ));
        assert!(Ttl::from_micros(-5, 10).is_err());
    }

    #[test]
    fn an_omitted_hard_ttl_equals_the_ttl() {
        let t = Ttl::new(Duration::from_millis(300)).expect("valid");
        assert_eq!(t.hard(), t.ttl());
        assert_eq!(t.ttl_micros(), 300_000);
    }

    #[test]
    fn the_bounds_are_inclusive() {
        let day = Duration::from_secs(24 * 3600);
        let micro = Duration::from_micros(1);
        assert_eq!(Ttl::MAX, day * 366);
        assert!(Ttl::new(Ttl::MIN).is_ok());
        assert!(matches!(
            Ttl::new(Ttl::MIN - micro),
            Err(InvalidInput::TtlTooShort { .. })
        ));
        assert!(Ttl::new(Ttl::MAX).is_ok());
        assert!(matches!(
            Ttl::new(Ttl::MAX + micro),
            Err(InvalidInput::TtlTooLong { what: "ttl", .. })
        ));
        assert!(Ttl::with_hard(Ttl::MIN, Ttl::MAX).is_ok());
        assert!(matches!(
            Ttl::with_hard(Ttl::MIN, Ttl::MAX + micro),
            Err(InvalidInput::TtlTooLong {
                what: "hard ttl",
                ..
            })
        ));
    }

    #[test]
    fn microseconds_round_trip() {
        let t = Ttl::from_micros(1_500, 90_000_001).expect("valid");
        assert_eq!(t.ttl(), Duration::from_micros(1_500));
        assert_eq!(t.hard(), Duration::from_micros(90_000_001));
        assert_eq!((t.ttl_micros(), t.hard_micros()), (1_500, 90_000_001));
        // Below a microsecond is dropped, as the stores keep it.
        let t = Ttl::new(Duration::from_nanos(2_000_999)).expect("valid");
        assert_eq!(t.ttl_micros(), 2_000);
    }
}
