//! Typed refusals of the state machine.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::execution::{ExecutionState, Fingerprint};
use crate::token::FencingToken;

/// Why the state machine refused a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// There is no record for the key.
    NotFound,
    /// The token presented is not the record's current token: another generation took over.
    Fenced,
    /// The token is current but its lease has expired; authority never revives.
    Expired,
    /// The execution is still alive, so it cannot be reconciled.
    StillAlive,
    /// The record's state does not allow the command.
    WrongState,
    /// The key is already used with a different request fingerprint.
    FingerprintMismatch {
        /// The fingerprint stored with the record.
        stored: Option<Fingerprint>,
    },
}

impl RejectReason {
    /// A short name: `not_found`, `fenced`, `expired`, `still_alive`, `wrong_state`,
    /// `fingerprint_mismatch`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::NotFound => "not_found",
            RejectReason::Fenced => "fenced",
            RejectReason::Expired => "expired",
            RejectReason::StillAlive => "still_alive",
            RejectReason::WrongState => "wrong_state",
            RejectReason::FingerprintMismatch { .. } => "fingerprint_mismatch",
        }
    }
}

/// A command the state machine refused, naming the record's current state and token so the caller
/// can tell what happened. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Rejection {
    /// Why it was refused.
    #[serde(flatten)]
    pub reason: RejectReason,
    /// The current state of the execution record (`None` for leases and missing records).
    pub state: Option<ExecutionState>,
    /// The record's current fencing token, if there is a record.
    pub token: Option<FencingToken>,
}

impl Rejection {
    /// A rejection for a missing record.
    pub fn not_found() -> Self {
        Rejection {
            reason: RejectReason::NotFound,
            state: None,
            token: None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.reason {
            RejectReason::NotFound => "no such record",
            RejectReason::Fenced => "fenced: the token is not the current one",
            RejectReason::Expired => "the lease has expired; authority never revives",
            RejectReason::StillAlive => "the execution is still alive",
            RejectReason::WrongState => "the state does not allow this",
            RejectReason::FingerprintMismatch { .. } => {
                "the key was used with a different request fingerprint"
            }
        };
        write!(f, "rejected: {what}")?;
        if let Some(state) = self.state {
            write!(f, " (state {state}")?;
            if let Some(token) = self.token {
                write!(f, ", token {token}")?;
            }
            f.write_str(")")?;
        } else if let Some(token) = self.token {
            write!(f, " (token {token})")?;
        }
        if let RejectReason::FingerprintMismatch { stored } = &self.reason {
            match stored {
                Some(fp) => write!(f, "; stored fingerprint {fp}")?,
                None => f.write_str("; the record has no fingerprint")?,
            }
        }
        Ok(())
    }
}
