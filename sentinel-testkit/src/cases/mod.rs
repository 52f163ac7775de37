//! The conformance cases. Each is a plain `async fn` over a [`crate::StoreFactory`] that panics
//! with a message naming the case and what went wrong.

mod client;
mod clock;
mod events;
mod features;
mod keys;
mod model;
mod operations;
mod races;
mod tokens;

pub use client::{lease_renews_under_heartbeat, once_with_concurrent_callers};
pub use clock::{numbers_stay_exact, server_clock};
pub use events::{event_log_ignores_reads_and_refusals, event_log_records_every_transition};
pub use features::{
    fingerprints_guard_the_key, two_phase_execution, waiting_for_a_result, waiting_misses_no_change,
};
pub use keys::{
    awkward_keys, invalid_input_writes_nothing, keys_round_trip_and_never_collide,
    namespaces_are_separate,
};
pub use model::model_based;
pub use operations::{
    expiry_is_exclusive, heartbeat_batch, list_filters_and_pages,
    list_pages_through_sparse_matches, purge_in_batches, retries_after_a_lost_reply,
};
pub use races::{
    claim_race, lease_acquire_race, purge_race, reconcile_vs_complete_race, renewal_vs_expiry_race,
};
pub use tokens::{tokens_strictly_increase, tokens_survive_restart};
