//! A worker: takes deliveries from the shared queue and runs `once` for each, whose side effect
//! is a fenced ledger write. The same loop runs in worker processes ([`process_main`]), in the
//! memory store's task groups, and in the coordinator's final sweep.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use sentinel_core::{
    CoordinationStore, ExecutionContext, Failure, Once, OwnerId, RecordId, Sentinel,
};

use crate::Result;
use crate::backend::{self, Backend, Delivery, WriteOutcome, chain};
use crate::config::{Sabotage, StoreKind, WorkerConfig};
use crate::journal::{Entry, Journal};
use crate::lossy::Lossy;

/// How a worker dies when a kill fault is armed.
#[derive(Debug)]
pub enum DieMode {
    /// `kill -9` its own process.
    Process,
    /// Ask the memory fleet's supervisor to abort this worker's tasks.
    Abort(mpsc::UnboundedSender<usize>),
    /// Never (the coordinator's sweeper).
    Never,
}

/// Faults a worker inflicts on itself when told to.
#[derive(Debug)]
pub struct WorkerFaults {
    /// Die right after the next accepted ledger write, before the completion is recorded.
    pub armed_kill: AtomicBool,
    /// Stop this process (SIGSTOP) in the next execution, after its claim and before its ledger
    /// write; the coordinator resumes it once its lease has lapsed.
    pub armed_pause: AtomicBool,
    /// Stall the next execution this long before its ledger write (memory's pause).
    pub stall: Mutex<Option<Duration>>,
    /// How to die.
    pub die: DieMode,
}

impl WorkerFaults {
    /// No fault armed.
    pub fn new(die: DieMode) -> Self {
        WorkerFaults {
            armed_kill: AtomicBool::new(false),
            armed_pause: AtomicBool::new(false),
            stall: Mutex::new(None),
            die,
        }
    }

    fn take_stall(&self) -> Option<Duration> {
        match self.stall.lock() {
            Ok(mut s) => s.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Everything one worker's tasks share.
#[derive(Debug)]
pub struct WorkerCtx {
    /// `w<index>.<incarnation>` (or `sweeper`).
    pub name: String,
    /// The worker's index.
    pub index: usize,
    /// The client.
    pub sentinel: Sentinel,
    /// The queue and ledger.
    pub backend: Backend,
    /// Where it journals.
    pub journal: Arc<Journal>,
    /// The simulated gateway latency.
    pub work: Duration,
    /// A deliberate bug, if any.
    pub sabotage: Option<Sabotage>,
    /// Self-inflicted faults.
    pub faults: Arc<WorkerFaults>,
    /// Set to stop taking deliveries.
    pub stop: Arc<AtomicBool>,
    /// Deliveries handled.
    pub handled: AtomicU64,
}

/// How many times a ledger write that failed in transit is sent again with the same token (the
/// write is idempotent per token, so a repeat applies nothing twice).
const WRITE_TRIES: u32 = 3;

/// Builds the client a worker (or the coordinator) uses.
pub fn client(
    store: Arc<dyn CoordinationStore>,
    config: &WorkerConfig,
    owner: &str,
) -> Result<Sentinel> {
    Ok(Sentinel::builder_shared(store)
        .namespace(config.namespace.clone())
        .ttl(config.ttl)
        .hard_ttl(config.hard_ttl)
        .owner(OwnerId::new(owner)?)
        .retries(config.retries, Duration::from_millis(50))
        .call_timeout(Duration::from_secs(3))
        .build()?)
}

/// Takes deliveries as `taker` until told to stop (or, with `until_empty`, until the queue is
/// empty).
pub async fn run_task(ctx: Arc<WorkerCtx>, taker: String, until_empty: bool) {
    let queue = ctx.backend.queue.clone();
    let mut failures = 0u32;
    while !ctx.stop.load(Ordering::Relaxed) {
        let delivery = match queue.take(&taker).await {
            Ok(Some(d)) => {
                failures = 0;
                d
            }
            Ok(None) if until_empty => return,
            Ok(None) => {
                // Nothing held here: anything in this taker's in-flight list is a take whose
                // reply was lost. Give it back.
                let _ = queue.recover(std::slice::from_ref(&taker)).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            Err(e) => {
                // The move may have happened with its reply lost: give back whatever we hold.
                ctx.journal.log(&Entry::QueueError {
                    op: "take".into(),
                    detail: chain(e.as_ref()),
                });
                let _ = queue.recover(std::slice::from_ref(&taker)).await;
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(failures.min(10)))).await;
                if until_empty && failures > 100 {
                    return;
                }
                continue;
            }
        };
        handle(&ctx, &taker, delivery).await;
        ctx.handled.fetch_add(1, Ordering::Relaxed);
    }
}

async fn handle(ctx: &Arc<WorkerCtx>, taker: &str, delivery: Delivery) {
    let key = delivery.key.clone();
    let started = Instant::now();
    let work_ctx = ctx.clone();
    let work_key = key.clone();
    let outcome: sentinel_core::Result<Once<Value>> = ctx
        .sentinel
        .once(&key, move |ectx| work(work_ctx, work_key, ectx))
        .await;
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (done, requeue) = match &outcome {
        Ok(once) => {
            let (detail, requeue) = match once {
                Once::Failed { failure, .. } => {
                    (Some(failure.to_string()), failure.is_not_applied())
                }
                Once::CompletionFailed { error, .. } => (Some(chain(error)), false),
                Once::Panicked { message, .. } => (Some(message.clone()), false),
                _ => (None, false),
            };
            (
                Entry::Done {
                    key: key.clone(),
                    kind: once.kind().to_owned(),
                    uncertain: once.is_uncertain(),
                    token: Some(once.token().get()),
                    us,
                    detail,
                },
                requeue,
            )
        }
        Err(e) => (
            Entry::Done {
                key: key.clone(),
                kind: "error".into(),
                uncertain: false,
                token: None,
                us,
                detail: Some(chain(e)),
            },
            true,
        ),
    };
    ctx.journal.log(&done);
    if let (Some(Sabotage::DoubleApply), Ok(Once::Cached { token, .. })) = (ctx.sabotage, &outcome)
    {
        let fake = token.get() + 1;
        if ctx
            .backend
            .ledger
            .write_unfenced(&key, fake, &ctx.name)
            .await
            .is_ok()
        {
            ctx.journal.log(&Entry::Sabotage {
                key: key.clone(),
                token: fake,
            });
        }
    }
    // Not applied (or not even claimed): deliver it again later. Anything else is settled here,
    // or belongs to whoever holds the key, or to the reconciler.
    for attempt in 0..40u64 {
        let sent = if requeue {
            ctx.backend.queue.nack(taker, &delivery).await
        } else {
            ctx.backend.queue.ack(taker, &delivery).await
        };
        match sent {
            Ok(()) => return,
            Err(e) => {
                ctx.journal.log(&Entry::QueueError {
                    op: if requeue { "nack" } else { "ack" }.into(),
                    detail: chain(e.as_ref()),
                });
                tokio::time::sleep(Duration::from_millis(50 * attempt.min(10) + 50)).await;
            }
        }
    }
}

/// The payment: wait for the "gateway", then write to the ledger behind the fence.
async fn work(ctx: Arc<WorkerCtx>, key: String, ectx: ExecutionContext) -> Result<Value, Failure> {
    let token = ectx.token();
    ctx.journal.log(&Entry::Run {
        key: key.clone(),
        token: token.get(),
        worker: ctx.name.clone(),
    });
    if ctx.faults.armed_pause.swap(false, Ordering::SeqCst) {
        ctx.journal.log(&Entry::Stalling {
            key: key.clone(),
            token: token.get(),
            ms: 0,
        });
        // The whole process stops here until the coordinator sends SIGCONT.
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status();
    }
    if let Some(stall) = ctx.faults.take_stall() {
        ctx.journal.log(&Entry::Stalling {
            key: key.clone(),
            token: token.get(),
            ms: u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
        });
        tokio::time::sleep(stall).await;
    }
    tokio::time::sleep(ctx.work).await;
    // Deliberately no `ectx.is_authoritative()` check: a worker that paused past its lease
    // writes anyway, so that the fence is what stops it.
    let id = RecordId::new(ectx.namespace().clone(), ectx.key().clone());
    let result = json!({
        "charge": format!("ch-{key}-{token}"),
        "token": token.get(),
        "worker": ctx.name,
    });
    let mut maybe_applied = false;
    let mut outcome = WriteOutcome::NotApplied("not attempted".into());
    for attempt in 0..WRITE_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        outcome = ctx
            .backend
            .ledger
            .write(&id, token, &ctx.name, &result)
            .await;
        match &outcome {
            WriteOutcome::Accepted | WriteOutcome::Rejected(_) => break,
            WriteOutcome::Unknown(_) => maybe_applied = true,
            WriteOutcome::NotApplied(_) => {}
        }
    }
    // After a write whose fate is unknown, a later refusal proves nothing about the first one.
    if maybe_applied && !matches!(outcome, WriteOutcome::Accepted) {
        outcome = WriteOutcome::Unknown(match outcome {
            WriteOutcome::Rejected(r) | WriteOutcome::NotApplied(r) => {
                format!("an earlier try's fate is unknown; the last one said: {r}")
            }
            WriteOutcome::Unknown(r) => r,
            WriteOutcome::Accepted => String::new(),
        });
    }
    let verdict = match &outcome {
        WriteOutcome::Accepted => "accepted".to_owned(),
        WriteOutcome::Rejected(r) => format!("rejected: {r}"),
        WriteOutcome::NotApplied(r) => format!("not applied: {r}"),
        WriteOutcome::Unknown(r) => format!("unknown: {r}"),
    };
    ctx.journal.log(&Entry::Write {
        key: key.clone(),
        token: token.get(),
        verdict,
    });
    match outcome {
        WriteOutcome::Accepted => {
            if ctx.faults.armed_kill.swap(false, Ordering::SeqCst) {
                ctx.journal.log(&Entry::Killing {
                    key,
                    token: token.get(),
                    worker: ctx.name.clone(),
                });
                die(&ctx).await;
            }
            Ok(result)
        }
        WriteOutcome::Rejected(r) | WriteOutcome::NotApplied(r) => Err(Failure::not_applied(r)),
        WriteOutcome::Unknown(r) => Err(Failure::uncertain(r)),
    }
}

async fn die(ctx: &WorkerCtx) {
    match &ctx.faults.die {
        DieMode::Process => {
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
        }
        DieMode::Abort(tx) => {
            let _ = tx.send(ctx.index);
        }
        DieMode::Never => return,
    }
    // The signal (or the abort) arrives while we wait here, before the completion is recorded.
    std::future::pending::<()>().await;
}

/// Connects the backend a worker or the coordinator uses (retrying for up to `patience`, since
/// the server may be restarting). `name` is the connections' name; `via_proxy` routes through the
/// fault proxy.
pub async fn connect(
    config: &WorkerConfig,
    name: &str,
    via_proxy: bool,
    pool_size: u32,
    setup: bool,
    patience: Duration,
) -> Result<Backend> {
    let deadline = Instant::now() + patience;
    let skip_fence = config.sabotage == Some(Sabotage::SkipFence);
    loop {
        let attempt: Result<Backend> = match config.access.kind {
            StoreKind::Postgres => backend::postgres::PgBackend::connect(
                &config.access,
                name,
                via_proxy,
                pool_size,
                setup,
                config.exactly_once,
                skip_fence,
            )
            .await
            .map(backend::postgres::PgBackend::backend),
            StoreKind::Redis => {
                backend::redis::standalone(&config.access, name, via_proxy, skip_fence).await
            }
            StoreKind::RedisCluster => backend::redis::cluster(&config.access, skip_fence).await,
            StoreKind::Memory => {
                Err("the memory store cannot be reached from another process".into())
            }
        };
        match attempt {
            Ok(b) => return Ok(b),
            Err(e) if Instant::now() < deadline && config.access.kind != StoreKind::Memory => {
                eprintln!(
                    "{name}: connecting failed ({}); trying again",
                    chain(e.as_ref())
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The `worker` subcommand: one worker process. Reads control lines on stdin (`kill` arms a
/// kill at the next accepted ledger write; `pause` arms a SIGSTOP of the process in the next
/// execution, between its claim and its ledger write, and `unpause` disarms it; `stop` finishes
/// the current deliveries and exits; end of input stops too).
pub async fn process_main(config_path: &Path, index: usize, incarnation: u32) -> Result<()> {
    let config: WorkerConfig = serde_json::from_slice(&std::fs::read(config_path)?)?;
    let name = format!("w{index}.{incarnation}");
    let journal = Arc::new(Journal::create(&config.dir.join(format!("{name}.jsonl")))?);
    journal.log(&Entry::Start {
        worker: name.clone(),
        pid: std::process::id(),
    });
    let backend = connect(
        &config,
        &config.access.conn_name,
        true,
        config.pool_size,
        false,
        Duration::from_secs(30),
    )
    .await?;
    let takers: Vec<String> = (0..config.tasks)
        .map(|t| WorkerConfig::taker(index, t))
        .collect();
    // Whatever this worker's previous incarnation held when it died goes back to the queue.
    for attempt in 0..100u64 {
        match backend.queue.recover(&takers).await {
            Ok(_) => break,
            Err(e) if attempt < 99 => {
                eprintln!("{name}: recovering deliveries failed ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let store: Arc<dyn CoordinationStore> = Arc::new(Lossy::wrap(
        backend.store.clone(),
        config.lost_reply_rate,
        config.seed ^ ((index as u64) << 32) ^ u64::from(incarnation),
        journal.clone(),
    ));
    let owner = format!("chaos-{name}-{}", std::process::id());
    let sentinel = client(store, &config, &owner)?;
    let faults = Arc::new(WorkerFaults::new(DieMode::Process));
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(WorkerCtx {
        name: name.clone(),
        index,
        sentinel,
        backend,
        journal: journal.clone(),
        work: config.work,
        sabotage: config.sabotage,
        faults: faults.clone(),
        stop: stop.clone(),
        handled: AtomicU64::new(0),
    });
    tokio::spawn(control(faults, stop));
    let mut tasks = tokio::task::JoinSet::new();
    for taker in takers {
        tasks.spawn(run_task(ctx.clone(), taker, false));
    }
    while tasks.join_next().await.is_some() {}
    journal.log(&Entry::Exit {
        deliveries: ctx.handled.load(Ordering::Relaxed),
    });
    Ok(())
}

async fn control(faults: Arc<WorkerFaults>, stop: Arc<AtomicBool>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.trim() == "kill" => {
                faults.armed_kill.store(true, Ordering::SeqCst);
            }
            Ok(Some(line)) if line.trim() == "pause" => {
                faults.armed_pause.store(true, Ordering::SeqCst);
            }
            Ok(Some(line)) if line.trim() == "unpause" => {
                faults.armed_pause.store(false, Ordering::SeqCst);
            }
            Ok(Some(line)) if line.trim() != "stop" => {}
            _ => {
                stop.store(true, Ordering::SeqCst);
                // Deliveries in flight get time to finish; a worker stuck longer than that
                // (a store that never answers) leaves anyway.
                tokio::time::sleep(Duration::from_secs(45)).await;
                eprintln!("worker: still busy 45 s after stop; exiting");
                std::process::exit(4);
            }
        }
    }
}
