//! Authority as the client sees it: held until a local deadline, or until the store refuses a
//! renewal, whichever comes first.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::rejection::Rejection;
use crate::token::FencingToken;

/// Why authority over an execution or lease was lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LostReason {
    /// No renewal succeeded before the local deadline (the store was unreachable or slow). The
    /// store may already consider the lease expired; act as if it does.
    Expired,
    /// The hard ttl was reached; no heartbeat extends past it.
    HardTtl,
    /// The store refused a renewal: another generation took over, or the lease had expired there.
    Rejected(Rejection),
    /// The work finished, or the lease was released; the holder let it go.
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Expired => f.write_str("no renewal succeeded before the lease deadline"),
            LostReason::HardTtl => f.write_str("the hard ttl was reached"),
            LostReason::Rejected(r) => write!(f, "the store refused a renewal: {r}"),
            LostReason::Released => f.write_str("released by its holder"),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct AuthorityState {
    /// Authority ends here unless a renewal moves it: measured on the monotonic clock from when
    /// the granting request was sent, so it never outlasts the store's own lease.
    pub(crate) deadline: Instant,
    /// No renewal moves the deadline past this.
    pub(crate) hard_deadline: Instant,
    /// Set once authority is lost for a reason other than the deadline passing.
    pub(crate) lost: Option<LostReason>,
}

impl AuthorityState {
    /// Why authority is gone at `now`, or `None` while it holds.
    pub(crate) fn lost_at(&self, now: Instant) -> Option<LostReason> {
        if let Some(reason) = &self.lost {
            return Some(reason.clone());
        }
        if now < self.deadline {
            None
        } else if self.deadline >= self.hard_deadline {
            Some(LostReason::HardTtl)
        } else {
            Some(LostReason::Expired)
        }
    }
}

/// The writer side, kept by the heartbeat task.
#[derive(Debug)]
pub(crate) struct AuthorityCell {
    tx: watch::Sender<AuthorityState>,
}

impl AuthorityCell {
    pub(crate) fn new(
        token: FencingToken,
        deadline: Instant,
        hard_deadline: Instant,
    ) -> (Self, Authority) {
        let (tx, rx) = watch::channel(AuthorityState {
            deadline: deadline.min(hard_deadline),
            hard_deadline,
            lost: None,
        });
        (AuthorityCell { tx }, Authority { token, rx })
    }

    pub(crate) fn state(&self) -> AuthorityState {
        self.tx.borrow().clone()
    }

    /// Moves the deadline to `deadline` (capped by the hard deadline); never backwards, never after
    /// authority was lost.
    pub(crate) fn extend(&self, deadline: Instant) {
        self.tx.send_if_modified(|s| {
            let next = deadline.min(s.hard_deadline);
            if s.lost.is_some() || next <= s.deadline || Instant::now() >= s.deadline {
                return false;
            }
            s.deadline = next;
            true
        });
    }

    /// Marks authority lost (the first reason wins).
    pub(crate) fn lose(&self, reason: LostReason) {
        self.tx.send_if_modified(|s| {
            if s.lost.is_some() {
                return false;
            }
            s.lost = Some(reason);
            true
        });
    }
}

/// A handle on the authority a claim or lease granted: the token to carry into writes, whether it
/// still holds, and a future that resolves when it is lost.
///
/// Cheap to clone; every clone sees the same authority.
#[derive(Clone, Debug)]
pub struct Authority {
    token: FencingToken,
    rx: watch::Receiver<AuthorityState>,
}

impl Authority {
    /// The fencing token of this generation.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// True while authority holds: no renewal was refused and the local deadline has not passed.
    /// Check it right before an irreversible step; pass the token downstream as well.
    pub fn is_held(&self) -> bool {
        self.rx.borrow().lost_at(Instant::now()).is_none()
    }

    /// Why authority was lost, or `None` while it holds.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.rx.borrow().lost_at(Instant::now())
    }

    /// The current local deadline (monotonic clock).
    pub fn deadline(&self) -> Instant {
        self.rx.borrow().deadline
    }

    /// Resolves when authority is lost, with the reason. Use it in a `select!` to stop work the
    /// moment the lease can no longer be trusted.
    pub async fn lost(&self) -> LostReason {
        let mut rx = self.rx.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            if let Some(reason) = state.lost_at(Instant::now()) {
                return reason;
            }
            tokio::select! {
                () = tokio::time::sleep_until(state.deadline) => {}
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The writer is gone without a verdict: only the deadline is left.
                        tokio::time::sleep_until(state.deadline).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rejection::RejectReason;

    fn cell(ttl_ms: u64, hard_ms: u64) -> (AuthorityCell, Authority, Instant) {
        let start = Instant::now();
        let token = FencingToken::new(1).expect("positive");
        let (cell, authority) = AuthorityCell::new(
            token,
            start + Duration::from_millis(ttl_ms),
            start + Duration::from_millis(hard_ms),
        );
        (cell, authority, start)
    }

    /// A renewal refused because another generation took over.
    fn fenced() -> Rejection {
        Rejection {
            reason: RejectReason::Fenced,
            state: None,
            token: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn authority_ends_at_the_deadline_itself() {
        let (_cell, authority, start) = cell(1_000, 5_000);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(authority.is_held());
        assert_eq!(authority.lost_reason(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(Instant::now(), start + Duration::from_millis(1_000));
        assert!(!authority.is_held(), "alive means now < deadline");
        assert_eq!(authority.lost_reason(), Some(LostReason::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_after_the_deadline_never_revives_authority() {
        let (cell, authority, start) = cell(1_000, 5_000);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        // A heartbeat whose reply arrives late: the store may have let the lease expire.
        cell.extend(start + Duration::from_millis(3_000));
        assert!(!authority.is_held());
        assert_eq!(authority.deadline(), start + Duration::from_millis(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_after_a_loss_changes_nothing() {
        let (cell, authority, start) = cell(1_000, 5_000);
        let refused = fenced();
        cell.lose(LostReason::Rejected(refused.clone()));
        cell.extend(start + Duration::from_millis(3_000));
        cell.lose(LostReason::Released);
        assert_eq!(authority.deadline(), start + Duration::from_millis(1_000));
        assert_eq!(
            authority.lost_reason(),
            Some(LostReason::Rejected(refused)),
            "the first reason wins"
        );
        assert_eq!(
            authority.lost().await,
            authority.lost_reason().expect("lost")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_move_forward_only_and_stop_at_the_hard_deadline() {
        let (cell, authority, start) = cell(1_000, 2_500);
        cell.extend(start + Duration::from_millis(2_000));
        cell.extend(start + Duration::from_millis(1_500));
        assert_eq!(authority.deadline(), start + Duration::from_millis(2_000));
        cell.extend(start + Duration::from_millis(9_000));
        assert_eq!(authority.deadline(), start + Duration::from_millis(2_500));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(authority.lost_reason(), Some(LostReason::HardTtl));
        assert_eq!(authority.lost().await, LostReason::HardTtl);
    }

    #[test]
    fn reasons_say_what_happened() {
        assert_eq!(
            LostReason::Expired.to_string(),
            "no renewal succeeded before the lease deadline"
        );
        assert_eq!(LostReason::HardTtl.to_string(), "the hard ttl was reached");
        assert_eq!(LostReason::Released.to_string(), "released by its holder");
        assert!(
            LostReason::Rejected(fenced())
                .to_string()
                .starts_with("the store refused a renewal: ")
        );
    }
}
