//! What the memory store says about itself, beyond the conformance suite: its name, its Debug
//! output, and the manual clock it is built with.

use std::time::Duration;

use sentinel_core::CoordinationStore;
use sentinel_memory::MemoryStore;

#[tokio::test]
async fn a_store_on_a_manual_clock_follows_that_clock() {
    let (store, clock) = MemoryStore::with_manual_clock();
    let before = store.now().await.expect("now");
    assert_eq!(before, clock.now());
    clock.advance(Duration::from_secs(90));
    assert_eq!(
        store.now().await.expect("now").duration_since(before),
        Some(Duration::from_secs(90))
    );
}

#[test]
fn a_store_names_itself() {
    let store = MemoryStore::new();
    assert_eq!(store.backend(), "memory");
    let shown = format!("{store:?}");
    assert!(
        shown.starts_with("MemoryStore {") && shown.contains("clock: SystemClock"),
        "{shown}"
    );
}
