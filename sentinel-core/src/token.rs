//! Fencing tokens: the proof of authority a worker carries into every write.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::time::Timestamp;

/// A fencing token: a positive `i64` that strictly increases per record, across every acquisition,
/// reconciliation, purge and store restart.
///
/// A worker passes its token to every write it makes; a write carrying a token lower than the
/// current one comes from a worker that lost its authority and must be refused. Downstream systems
/// should keep the highest token they have seen and refuse lower ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct FencingToken(i64);

impl FencingToken {
    /// A token from its value; it must be positive.
    pub fn new(value: i64) -> Result<Self, InvalidInput> {
        if value > 0 {
            Ok(FencingToken(value))
        } else {
            Err(InvalidInput::Token(value))
        }
    }

    /// The token's value.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The token to issue next: `max(last + 1, now in microseconds)`.
    ///
    /// The time term keeps tokens increasing even when a store lost its recent writes (a Redis
    /// restart without persistence, a failover to a lagging replica), because the store's clock
    /// kept moving. Timestamps stop at the year 9999, so the result always fits in an `i64`; a
    /// store reaches the end of `i64` only through about 9 × 10¹⁸ grants of one record, and a
    /// `last` of `i64::MAX` (a record edited by hand) is answered with itself, not a larger one.
    pub fn next(last: Option<FencingToken>, now: Timestamp) -> FencingToken {
        let after_last = last.map_or(1, |t| t.0.saturating_add(1));
        FencingToken(after_last.max(now.as_micros()))
    }
}

impl TryFrom<i64> for FencingToken {
    type Error = InvalidInput;
    fn try_from(value: i64) -> Result<Self, InvalidInput> {
        Self::new(value)
    }
}

impl From<FencingToken> for i64 {
    fn from(value: FencingToken) -> i64 {
        value.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_above_the_last_and_the_clock() {
        let now = Timestamp::from_micros(1_000);
        assert_eq!(FencingToken::next(None, now).get(), 1_000);
        let high = FencingToken::new(5_000).expect("positive");
        assert_eq!(FencingToken::next(Some(high), now).get(), 5_001);
        assert_eq!(FencingToken::next(None, Timestamp::EPOCH).get(), 1);
        assert!(FencingToken::new(0).is_err());
        assert!(FencingToken::new(-3).is_err());
    }

    #[test]
    fn a_token_converts_to_its_value() {
        let t = FencingToken::new(5_000).expect("positive");
        assert_eq!(i64::from(t), 5_000);
        assert_eq!(FencingToken::try_from(5_000), Ok(t));
        assert!(FencingToken::try_from(0).is_err());
        assert_eq!(t.to_string(), "5000");
        assert_eq!(format!("{t:?}"), "FencingToken(5000)");
    }
}
