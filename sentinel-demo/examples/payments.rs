//! A payment queue delivers each of 50 payments several times to 8 concurrent workers; one worker
//! crashes in the middle of a charge. Sentinel makes every payment charge once, serves the
//! redeliveries from cache, surfaces the crashed charge as uncertain instead of retrying it, and
//! the demo reconciles it against the gateway's ledger.
//!
//! Run: `cargo run --example payments` (in-memory store, no setup), or against a real store with
//! `-- --postgres postgres://postgres@127.0.0.1/postgres` or `-- --redis redis://127.0.0.1:6379`
//! (each run uses a namespace of its own).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use sentinel_core::{
    CoordinationStore, Failure, FencingToken, ListFilter, Once, OwnerId, Sentinel,
};
use sentinel_memory::MemoryStore;
use sentinel_postgres::PostgresStore;
use sentinel_redis::RedisStore;

const PAYMENTS: u32 = 50;
const WORKERS: usize = 8;
/// The payment whose first charge is interrupted by a worker crash.
const CRASHING_PAYMENT: u32 = 17;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
struct Payment {
    id: u32,
    amount_cents: u64,
}

impl Payment {
    fn key(&self) -> String {
        format!("payment-{:03}", self.id)
    }
}

/// What the gateway returns for a charge; Sentinel records it and replays it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    amount_cents: u64,
}

/// A fake payment gateway with a ledger. It keeps the highest fencing token it has seen per
/// payment and refuses lower ones, as a downstream system should.
#[derive(Default)]
struct Gateway {
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    charges: BTreeMap<u32, Vec<Receipt>>,
    highest_token: HashMap<u32, FencingToken>,
    fenced: usize,
}

impl Gateway {
    async fn charge(&self, payment: &Payment, token: FencingToken) -> Result<Receipt, Failure> {
        // The network call.
        tokio::time::sleep(Duration::from_millis(5 + u64::from(payment.id % 7) * 3)).await;
        let mut ledger = self
            .ledger
            .lock()
            .map_err(|_| Failure::uncertain("ledger poisoned"))?;
        let highest = ledger.highest_token.entry(payment.id).or_insert(token);
        if token < *highest {
            ledger.fenced += 1;
            return Err(Failure::not_applied(format!("stale token {token} refused")));
        }
        *highest = token;
        let receipt = Receipt {
            charge_id: format!("ch_{:03}_{}", payment.id, token.get() % 10_000),
            amount_cents: payment.amount_cents,
        };
        ledger
            .charges
            .entry(payment.id)
            .or_default()
            .push(receipt.clone());
        Ok(receipt)
    }

    fn lookup(&self, payment: u32) -> Option<Receipt> {
        self.ledger
            .lock()
            .ok()
            .and_then(|l| l.charges.get(&payment).and_then(|c| c.first().cloned()))
    }
}

/// An at-least-once queue: a delivery stays pending until a worker acknowledges it, and can be
/// redelivered later.
struct Queue {
    ready: Mutex<VecDeque<Payment>>,
    pending: AtomicUsize,
    wake: Notify,
    deliveries: AtomicUsize,
}

impl Queue {
    fn new(deliveries: Vec<Payment>) -> Arc<Self> {
        Arc::new(Queue {
            pending: AtomicUsize::new(deliveries.len()),
            ready: Mutex::new(deliveries.into()),
            wake: Notify::new(),
            deliveries: AtomicUsize::new(0),
        })
    }

    async fn next(&self) -> Option<Payment> {
        loop {
            let notified = self.wake.notified();
            if let Some(payment) = self.ready.lock().ok()?.pop_front() {
                self.deliveries.fetch_add(1, Ordering::SeqCst);
                return Some(payment);
            }
            if self.pending.load(Ordering::SeqCst) == 0 {
                return None;
            }
            notified.await;
        }
    }

    fn ack(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake.notify_waiters();
        }
    }

    /// Puts a delivery back after `delay`, as a queue does when a consumer does not acknowledge.
    fn redeliver(self: &Arc<Self>, payment: Payment, delay: Duration) {
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut ready) = queue.ready.lock() {
                ready.push_back(payment);
            }
            queue.wake.notify_one();
        });
    }
}

#[derive(Default)]
struct Stats {
    executed: AtomicUsize,
    cached: AtomicUsize,
    busy: AtomicUsize,
    uncertain: AtomicUsize,
    other: AtomicUsize,
}

/// A tiny deterministic shuffle, so every run delivers in the same order.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

async fn worker(
    number: usize,
    sentinel: Sentinel,
    queue: Arc<Queue>,
    gateway: Arc<Gateway>,
    stats: Arc<Stats>,
    crashed: Arc<AtomicBool>,
) -> Result<(), Error> {
    while let Some(payment) = queue.next().await {
        let crash_now = payment.id == CRASHING_PAYMENT && !crashed.swap(true, Ordering::SeqCst);
        let charged = Arc::new(Notify::new());
        let work = {
            let (gateway, payment, charged) =
                (Arc::clone(&gateway), payment.clone(), Arc::clone(&charged));
            move |ctx: sentinel_core::ExecutionContext| async move {
                let receipt = gateway.charge(&payment, ctx.token()).await?;
                charged.notify_one();
                if crash_now {
                    // The process dies here: the card is charged, the result never recorded.
                    std::future::pending::<()>().await;
                }
                Ok::<_, Failure>(receipt)
            }
        };
        let key = payment.key();
        let outcome = if crash_now {
            tokio::select! {
                outcome = sentinel.once(&key, work) => outcome?,
                () = async { charged.notified().await; tokio::time::sleep(Duration::from_millis(2)).await } => {
                    println!(
                        "  worker {number} CRASHED after charging {} and before recording it",
                        payment.key()
                    );
                    // The queue never got an acknowledgement: it redelivers later.
                    queue.redeliver(payment, Duration::from_millis(20));
                    return Ok(());
                }
            }
        } else {
            sentinel.once(&key, work).await?
        };
        match &outcome {
            Once::Executed { .. } => stats.executed.fetch_add(1, Ordering::SeqCst),
            Once::Cached { .. } => stats.cached.fetch_add(1, Ordering::SeqCst),
            Once::InProgress { .. } => {
                // Someone else is charging it right now: let the queue bring it back later.
                stats.busy.fetch_add(1, Ordering::SeqCst);
                queue.redeliver(payment, Duration::from_millis(30));
                continue;
            }
            Once::Uncertain { owner, .. } => {
                println!(
                    "  worker {number}: {} is UNCERTAIN ({owner} vanished mid-charge); not retrying",
                    payment.key()
                );
                stats.uncertain.fetch_add(1, Ordering::SeqCst)
            }
            other => {
                println!("  worker {number}: {} -> {}", payment.key(), other.kind());
                stats.other.fetch_add(1, Ordering::SeqCst)
            }
        };
        queue.ack();
    }
    Ok(())
}

/// The store named on the command line: memory (default), `--postgres URL` or `--redis URL`.
async fn store_from_args() -> Result<(Arc<dyn CoordinationStore>, String), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => Ok((Arc::new(MemoryStore::new()), "memory store".to_owned())),
        ["--postgres", url] => Ok((
            Arc::new(PostgresStore::connect(url).await?),
            "PostgreSQL".to_owned(),
        )),
        ["--redis", url] => Ok((
            Arc::new(RedisStore::connect(url).await?),
            "Redis".to_owned(),
        )),
        _ => Err("usage: payments [--postgres URL | --redis URL]".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    let (store, store_name) = store_from_args().await?;
    // A namespace per run, so a second run against the same server starts afresh.
    let namespace = format!(
        "payments-demo-{:08x}",
        sentinel_core::RequestId::random().as_u128() as u32
    );
    // Each worker is its own client (as separate processes would be), with its own owner id.
    let client = |owner: &str| {
        Sentinel::builder_shared(Arc::clone(&store))
            .namespace(&namespace)
            .owner(OwnerId::new(owner)?)
            .ttl(Duration::from_millis(300))
            .hard_ttl(Duration::from_secs(5))
            .build()
    };
    let sentinel = client("operator")?;

    let payments: Vec<Payment> = (1..=PAYMENTS)
        .map(|id| Payment {
            id,
            amount_cents: 1_000 + u64::from(id) * 25,
        })
        .collect();
    let mut deliveries: Vec<Payment> = payments
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), 3 + (p.id % 2) as usize))
        .collect();
    shuffle(&mut deliveries, 7);
    let queued = deliveries.len();
    println!(
        "Sentinel payments demo: {PAYMENTS} payments, {queued} deliveries, {WORKERS} workers ({store_name})\n"
    );
    println!("Processing the queue...");

    let queue = Queue::new(deliveries);
    let gateway = Arc::new(Gateway::default());
    let stats = Arc::new(Stats::default());
    let crashed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (1..=WORKERS)
        .map(|n| {
            Ok(tokio::spawn(worker(
                n,
                client(&format!("worker-{n}"))?,
                Arc::clone(&queue),
                Arc::clone(&gateway),
                Arc::clone(&stats),
                Arc::clone(&crashed),
            )))
        })
        .collect::<Result<_, sentinel_core::Error>>()?;
    for w in workers {
        w.await??;
    }

    println!("\nReconciling the uncertain executions against the gateway's ledger...");
    let queue_page = sentinel.list(ListFilter::uncertain(), None, 100).await?;
    let mut reconciled = Vec::new();
    for record in &queue_page.items {
        let token = sentinel.reconcile(record.key.as_str()).await?;
        let payment_id: u32 = record.key.as_str().trim_start_matches("payment-").parse()?;
        match gateway.lookup(payment_id) {
            Some(receipt) => {
                println!(
                    "  {}: ledger shows {} -> force-complete (reconcile token {token})",
                    record.key, receipt.charge_id
                );
                sentinel
                    .force_complete(record.key.as_str(), &receipt)
                    .await?;
                reconciled.push((record.key.to_string(), "force-completed"));
            }
            None => {
                println!(
                    "  {}: no charge in the ledger -> reset, it will run again",
                    record.key
                );
                sentinel.reset_to_claimed(record.key.as_str()).await?;
                reconciled.push((record.key.to_string(), "reset"));
            }
        }
    }

    // One more delivery of everything: all of it must come from the cache now.
    let mut replayed = 0;
    for payment in &payments {
        let outcome: Once<Receipt> = sentinel
            .once(&payment.key(), |_| async {
                Err(Failure::not_applied("must not run"))
            })
            .await?;
        if outcome.is_cached() {
            replayed += 1;
        }
    }

    let (charged_payments, total_charges, duplicates, fenced) = {
        let ledger = gateway.ledger.lock().map_err(|_| "ledger poisoned")?;
        let total: usize = ledger.charges.values().map(Vec::len).sum();
        let duplicates = ledger.charges.values().filter(|c| c.len() > 1).count();
        (ledger.charges.len(), total, duplicates, ledger.fenced)
    };

    println!("\nSummary");
    println!("  {:<42} {:>6}", "payments", PAYMENTS);
    println!(
        "  {:<42} {:>6}",
        "deliveries (incl. redeliveries)",
        queue.deliveries.load(Ordering::SeqCst)
    );
    println!(
        "  {:<42} {:>6}",
        "charged by a worker (executed)",
        stats.executed.load(Ordering::SeqCst)
    );
    println!(
        "  {:<42} {:>6}",
        "replays served from cache",
        stats.cached.load(Ordering::SeqCst)
    );
    println!(
        "  {:<42} {:>6}",
        "busy elsewhere, redelivered",
        stats.busy.load(Ordering::SeqCst)
    );
    println!(
        "  {:<42} {:>6}",
        "deliveries told 'uncertain'",
        stats.uncertain.load(Ordering::SeqCst)
    );
    println!("  {:<42} {:>6}", "executions reconciled", reconciled.len());
    println!(
        "  {:<42} {:>6}",
        "other outcomes",
        stats.other.load(Ordering::SeqCst)
    );
    println!(
        "  {:<42} {:>6}",
        "gateway: payments charged", charged_payments
    );
    println!("  {:<42} {:>6}", "gateway: charges in total", total_charges);
    println!(
        "  {:<42} {:>6}",
        "gateway: payments charged twice", duplicates
    );
    println!("  {:<42} {:>6}", "gateway: stale tokens refused", fenced);
    println!("  {:<42} {:>6}", "final replay: cached results", replayed);
    println!(
        "  {:<42} {:>5}ms",
        "wall time",
        started.elapsed().as_millis()
    );

    let ok = duplicates == 0
        && charged_payments == PAYMENTS as usize
        && replayed == PAYMENTS as usize
        && stats.other.load(Ordering::SeqCst) == 0;
    if ok {
        println!("\nEvery payment was charged exactly once; the crash was surfaced, not retried.");
        Ok(())
    } else {
        Err("a payment was charged twice or left unresolved".into())
    }
}
