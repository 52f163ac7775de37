//! A worker that dies in the middle of a charge, for trying the operator's tool on a real store:
//! it claims `payment-017` with `once()`, "charges the card", and exits the process before the
//! result is recorded — no abort, no cleanup, like `kill -9`. Two seconds later the execution is
//! uncertain and `sentinel list --uncertain` shows it.
//!
//! Run: `cargo run --example crash -- postgres://postgres@127.0.0.1/postgres` (or a redis:// URL),
//! then follow the README's "Operating Sentinel" section.

use std::sync::Arc;
use std::time::Duration;

use sentinel_core::{CoordinationStore, Failure, Once, OnceOptions, OwnerId, Sentinel};
use sentinel_postgres::PostgresStore;
use sentinel_redis::RedisStore;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: crash <postgres:// or redis:// URL> [key]")?;
    let key = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "payment-017".to_owned());
    let store: Arc<dyn CoordinationStore> = if url.starts_with("redis") {
        Arc::new(RedisStore::connect(&url).await?)
    } else {
        Arc::new(PostgresStore::connect(&url).await?)
    };
    let sentinel = Sentinel::builder_shared(store)
        .namespace("payments")
        .owner(OwnerId::new("worker-7@ip-10-0-3-17")?)
        .build()?;
    let options = OnceOptions::new().ttl(Duration::from_secs(2));
    let _: Once<String> = sentinel
        .once_with(&key, &options, |ctx| async move {
            println!("charging {} under token {}...", ctx.key(), ctx.token());
            // The gateway accepted the charge; the process dies before recording it.
            println!("gateway: charge ch_3MtwBwLkdIwHu7ix accepted; the worker dies now");
            std::process::exit(137);
            #[allow(unreachable_code)]
            Ok::<_, Failure>(String::new())
        })
        .await?;
    Ok(())
}
