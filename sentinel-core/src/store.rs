//! The port: what a store must do so that Sentinel can coordinate through it.
//!
//! Every method of [`CoordinationStore`] is one atomic step of the state machine in
//! [`crate::execution`] and [`crate::lease`], with its event appended in the same step, and one round
//! trip to the backend. A store holds no rules of its own beyond making each step atomic; the
//! conformance suite in `sentinel-testkit` checks every store against the pure transition
//! functions.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{InvalidInput, Result};
use crate::event::Event;
use crate::execution::{ClaimOutcome, ClaimRequest, Disposition, ExecutionRecord, ExecutionState};
use crate::key::{Key, Keyspace, Namespace, RecordId};
use crate::lease::{Acquisition, LeaseRecord, LeaseRequest};
use crate::owner::OwnerId;
use crate::rejection::Rejection;
use crate::time::Timestamp;
use crate::token::FencingToken;

/// The most records or events one page may hold.
pub const MAX_PAGE: u32 = 1000;

/// A renewal of one held execution or lease, as sent in a heartbeat batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Renewal {
    /// Which keyspace the record is in.
    pub keyspace: Keyspace,
    /// The record.
    pub id: RecordId,
    /// The holder's token.
    pub token: FencingToken,
}

/// The result of one renewal: the new lease expiry, or why it was refused.
pub type RenewalResult = std::result::Result<Timestamp, Rejection>;

/// Which execution records a [`ListQuery`] returns. Fields combine with AND; the default matches
/// every record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Only records in this state.
    pub state: Option<ExecutionState>,
    /// Only uncertain records (`executing` and not alive): the reconciliation queue.
    pub uncertain: bool,
    /// Only records whose lease has expired.
    pub expired: bool,
    /// Only records whose last transition is at least this old (store time).
    pub older_than: Option<Duration>,
}

impl ListFilter {
    /// The reconciliation queue: executions that started and whose lease expired.
    pub fn uncertain() -> Self {
        ListFilter {
            uncertain: true,
            ..ListFilter::default()
        }
    }

    /// Whether `record` matches at store time `now`. Stores that filter in their query language
    /// must agree with this function; the conformance suite checks that they do.
    pub fn matches(&self, record: &ExecutionRecord, now: Timestamp) -> bool {
        self.state.is_none_or(|s| record.state == s)
            && (!self.uncertain || record.is_uncertain(now))
            && (!self.expired || !record.is_alive(now))
            && self
                .older_than
                .is_none_or(|age| record.updated_at <= now.saturating_sub(age))
    }
}

/// A page of execution records of one namespace, in key order (bytewise UTF-8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// The namespace to list.
    pub namespace: Namespace,
    /// Which records.
    pub filter: ListFilter,
    /// Start after this key (the `next` of the previous page).
    pub after: Option<Key>,
    /// At most this many records, 1 to [`MAX_PAGE`].
    pub limit: u32,
}

impl ListQuery {
    /// The first page of `namespace` (up to 100 records, no filter).
    pub fn new(namespace: Namespace) -> Self {
        ListQuery {
            namespace,
            filter: ListFilter::default(),
            after: None,
            limit: 100,
        }
    }

    /// Checks the page size.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_limit(self.limit)
    }
}

/// A page of lease records of one namespace, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseListQuery {
    /// The namespace to list.
    pub namespace: Namespace,
    /// Start after this key.
    pub after: Option<Key>,
    /// At most this many records, 1 to [`MAX_PAGE`].
    pub limit: u32,
}

impl LeaseListQuery {
    /// The first page of `namespace` (up to 100 leases).
    pub fn new(namespace: Namespace) -> Self {
        LeaseListQuery {
            namespace,
            after: None,
            limit: 100,
        }
    }

    /// Checks the page size.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_limit(self.limit)
    }
}

/// Which part of a record's history to read: the events whose ids lie strictly between `after`
/// and `before`, the `limit` oldest of them oldest first, or with `newest_first` the `limit`
/// newest of them newest first.
///
/// Paging forwards passes the last id of a page as the next page's `after`; paging backwards
/// (`newest_first`) passes it as the next page's `before`. The newest event is
/// `HistoryQuery { newest_first: true, limit: 1, ..Default::default() }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only events with an id above this one.
    pub after: Option<i64>,
    /// Only events with an id below this one.
    #[serde(default)]
    pub before: Option<i64>,
    /// At most this many events, 1 to [`MAX_PAGE`].
    pub limit: u32,
    /// The newest events of the range, newest first, instead of the oldest, oldest first.
    #[serde(default)]
    pub newest_first: bool,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            after: None,
            before: None,
            limit: MAX_PAGE,
            newest_first: false,
        }
    }
}

impl HistoryQuery {
    /// Checks the page size.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_limit(self.limit)
    }
}

pub(crate) fn check_limit(limit: u32) -> Result<(), InvalidInput> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(())
    } else {
        Err(InvalidInput::Malformed {
            what: "page size",
            detail: format!("{limit} is outside 1..={MAX_PAGE}"),
        })
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The records, in key order.
    pub items: Vec<T>,
    /// Pass this as `after` to read the next page; `None` on the last page.
    pub next: Option<Key>,
}

/// The port every store implements: one atomic step of the state machine per method, one round
/// trip per call, the event written in the same step.
///
/// Errors: a refusal of the state machine is [`crate::Error::Rejected`] and changes nothing; a store
/// that cannot be reached answers [`crate::Error::Unavailable`] or [`crate::Error::Timeout`] and
/// never invents a state. Every mutating method is safe to send again after a lost reply (see
/// DESIGN §5): a repeated completion with the same token and result succeeds without a second
/// event, and a repeated claim with the same request id adopts its own grant.
///
/// The trait is object-safe: hold stores as `Arc<dyn CoordinationStore>`.
#[async_trait]
pub trait CoordinationStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and traces, e.g. `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The store's current time (its server clock, or the manual clock it was given).
    async fn now(&self) -> Result<Timestamp>;

    /// Claims `id` ([`ClaimRequest::start`] claims and starts in one step).
    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome>;

    /// Moves a claimed execution into `executing`; returns the renewed lease expiry.
    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp>;

    /// Renews many held executions and leases in one round trip. The results are in the order of
    /// `renewals`; a refused renewal is an `Err` item, not a failed call. A batch names each record
    /// at most once (the client's heartbeat never sends duplicates).
    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>>;

    /// Records the result of an execution.
    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()>;

    /// Gives up an execution, saying whether anything was applied.
    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()>;

    /// Fences out the worker of an uncertain execution; returns the reconciliation's new token.
    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken>;

    /// Completes a reconciling execution with a known result.
    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()>;

    /// Returns a reconciling execution to `claimed`, so the next `once` runs it again.
    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()>;

    /// Removes up to `limit` completed records of `namespace` whose last transition is at least
    /// `older_than` old, oldest first, keeping their tokens; returns how many it removed.
    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64>;

    /// The execution record of `id`, if any.
    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>>;

    /// A page of execution records.
    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>>;

    /// A page of the history of one record: the part `query` names, in its order (oldest first
    /// unless `query.newest_first`). Event ids increase along a history.
    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>>;

    /// Acquires the lease `id` if it is free or expired.
    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition>;

    /// Releases a held lease.
    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()>;

    /// The lease record of `id`, if held (it may have expired without being released).
    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>>;

    /// A page of lease records.
    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>>;

    /// Waits until the execution record of `id` changes, or `timeout` passes.
    ///
    /// `since` is when the caller last read the record (the moment it sent the claim that found
    /// it busy): a change strictly after `since` that happened before this call must return at
    /// once, so no change falls between reading and waiting. Spurious early returns are allowed. This is a
    /// notification, not a read: the caller claims again to learn the new state.
    ///
    /// Stores that cannot notify keep this default, which answers [`Wait::Unsupported`] at once;
    /// the client then polls with a bounded backoff.
    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        let _ = (id, since, timeout);
        Ok(Wait::Unsupported)
    }
}

/// How a [`CoordinationStore::wait_for_change`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The record changed (or may have).
    Changed,
    /// The timeout passed first.
    TimedOut,
    /// The store cannot notify; poll instead.
    Unsupported,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::RequestId;
    use crate::ttl::Ttl;

    /// A record in `state`, last changed at 1 s, whose lease ends at 2 s.
    fn record(state: ExecutionState) -> ExecutionRecord {
        let at = |ms: i64| Timestamp::from_micros(ms * 1_000);
        ExecutionRecord {
            namespace: Namespace::new("ns").expect("valid"),
            key: Key::new("k").expect("valid"),
            state,
            owner: OwnerId::new("w").expect("valid"),
            token: FencingToken::new(7).expect("positive"),
            request_id: Some(RequestId::random()),
            lease_expires_at: at(2_000),
            hard_expires_at: at(5_000),
            ttl: Ttl::new(Duration::from_secs(1)).expect("valid"),
            result: None,
            fingerprint: None,
            created_at: at(1_000),
            updated_at: at(1_000),
        }
    }

    const ALIVE: Timestamp = Timestamp::from_micros(1_999_999);
    const EXPIRED: Timestamp = Timestamp::from_micros(2_000_000);

    #[test]
    fn list_filters_combine_with_and() {
        let executing = record(ExecutionState::Executing);
        let claimed = record(ExecutionState::Claimed);
        let all = ListFilter::default();
        assert!(all.matches(&executing, ALIVE) && all.matches(&claimed, EXPIRED));

        let by_state = ListFilter {
            state: Some(ExecutionState::Claimed),
            ..ListFilter::default()
        };
        assert!(by_state.matches(&claimed, ALIVE));
        assert!(!by_state.matches(&executing, ALIVE));

        // The reconciliation queue: started, and expired from the instant the lease ends.
        let queue = ListFilter::uncertain();
        assert!(!queue.matches(&executing, ALIVE));
        assert!(queue.matches(&executing, EXPIRED));
        assert!(!queue.matches(&claimed, EXPIRED));

        let expired = ListFilter {
            expired: true,
            ..ListFilter::default()
        };
        assert!(!expired.matches(&claimed, ALIVE));
        assert!(expired.matches(&claimed, EXPIRED));

        // At least this old: a record changed exactly `age` ago matches, one changed later not.
        let old = ListFilter {
            older_than: Some(Duration::from_millis(500)),
            ..ListFilter::default()
        };
        assert!(old.matches(&claimed, Timestamp::from_micros(1_500_000)));
        assert!(!old.matches(&claimed, Timestamp::from_micros(1_499_999)));

        let both = ListFilter {
            state: Some(ExecutionState::Claimed),
            expired: true,
            ..ListFilter::default()
        };
        assert!(both.matches(&claimed, EXPIRED));
        assert!(!both.matches(&claimed, ALIVE));
        assert!(!both.matches(&executing, EXPIRED));
    }

    #[test]
    fn page_sizes_are_checked() {
        let ns = Namespace::new("ns").expect("valid");
        for (limit, ok) in [
            (0, false),
            (1, true),
            (MAX_PAGE, true),
            (MAX_PAGE + 1, false),
        ] {
            let list = ListQuery {
                limit,
                ..ListQuery::new(ns.clone())
            };
            let leases = LeaseListQuery {
                limit,
                ..LeaseListQuery::new(ns.clone())
            };
            let history = HistoryQuery {
                limit,
                ..HistoryQuery::default()
            };
            assert_eq!(list.validate().is_ok(), ok, "list {limit}");
            assert_eq!(leases.validate().is_ok(), ok, "leases {limit}");
            assert_eq!(history.validate().is_ok(), ok, "history {limit}");
        }
    }
}
