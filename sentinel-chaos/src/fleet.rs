//! The workers, as processes ([`ProcessFleet`]) or, for the memory store, as task groups in this
//! process ([`TaskFleet`]); both restart a worker that died, as a process supervisor would.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::Result;
use crate::backend::Backend;
use crate::config::WorkerConfig;
use crate::journal::Journal;
use crate::lossy::Lossy;
use crate::worker::{self, DieMode, WorkerCtx, WorkerFaults};

/// What happened to the workers.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Workers that died by SIGKILL (or, in memory, were aborted) mid-side-effect.
    pub kills: AtomicU64,
    /// Workers started again after dying.
    pub respawns: AtomicU64,
    /// Pauses inflicted (SIGSTOP then SIGCONT; in memory, stalls armed).
    pub pauses: AtomicU64,
    /// Workers killed because they did not stop in time at the end.
    pub forced_stops: AtomicU64,
    /// Exits that were neither a clean stop nor a kill fault: `worker: status`.
    pub unexpected: std::sync::Mutex<Vec<String>>,
}

impl FleetStats {
    fn unexpected(&self, what: String) {
        match self.unexpected.lock() {
            Ok(mut v) => v.push(what),
            Err(p) => p.into_inner().push(what),
        }
    }

    /// The unexpected exits so far.
    pub fn unexpected_exits(&self) -> Vec<String> {
        match self.unexpected.lock() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// A set of workers the coordinator can fault.
#[async_trait]
pub trait Fleet: Send + Sync {
    /// How many workers.
    fn size(&self) -> usize;
    /// Arms worker `index` to die right after its next accepted ledger write.
    async fn arm_kill(&self, index: usize) -> bool;
    /// Pauses worker `index` for `duration` (returns once it runs again).
    async fn pause(&self, index: usize, duration: Duration) -> bool;
    /// Stops every worker: they finish their deliveries and exit; stragglers are killed after
    /// `timeout`.
    async fn stop(&self, timeout: Duration);
    /// What happened so far.
    fn stats(&self) -> &FleetStats;
}

struct Slot {
    pid: Option<u32>,
    stdin: Option<ChildStdin>,
}

/// Worker processes: `<this binary> worker --config … --index i --incarnation n`.
pub struct ProcessFleet {
    slots: Vec<Arc<Mutex<Slot>>>,
    stopping: Arc<AtomicBool>,
    stats: Arc<FleetStats>,
    supervisors: Mutex<JoinSet<()>>,
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}

fn signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl ProcessFleet {
    /// Starts `workers` worker processes reading `config`, logging their stderr in `dir`.
    pub fn start(workers: usize, config: PathBuf, dir: PathBuf) -> Result<ProcessFleet> {
        let exe = std::env::current_exe()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FleetStats::default());
        let mut supervisors = JoinSet::new();
        let mut slots = Vec::new();
        for index in 0..workers {
            let slot = Arc::new(Mutex::new(Slot {
                pid: None,
                stdin: None,
            }));
            slots.push(slot.clone());
            let (exe, config, dir) = (exe.clone(), config.clone(), dir.clone());
            let (stopping, stats) = (stopping.clone(), stats.clone());
            supervisors.spawn(async move {
                let mut incarnation = 0u32;
                while !stopping.load(Ordering::SeqCst) {
                    let name = format!("w{index}.{incarnation}");
                    let log = std::fs::File::create(dir.join(format!("{name}.log")));
                    let stderr = log.map_or_else(|_| Stdio::null(), Stdio::from);
                    let child = Command::new(&exe)
                        .arg("worker")
                        .arg("--config")
                        .arg(&config)
                        .args(["--index", &index.to_string()])
                        .args(["--incarnation", &incarnation.to_string()])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(stderr)
                        .kill_on_drop(true)
                        .spawn();
                    let mut child = match child {
                        Ok(c) => c,
                        Err(e) => {
                            stats.unexpected(format!("{name}: cannot start: {e}"));
                            return;
                        }
                    };
                    {
                        let mut s = slot.lock().await;
                        s.pid = child.id();
                        s.stdin = child.stdin.take();
                    }
                    let status = child.wait().await;
                    {
                        let mut s = slot.lock().await;
                        s.pid = None;
                        s.stdin = None;
                    }
                    use std::os::unix::process::ExitStatusExt as _;
                    match status {
                        Ok(s) if s.signal() == Some(9) => {
                            stats.kills.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(s) if s.success() && stopping.load(Ordering::SeqCst) => {}
                        Ok(s) => stats.unexpected(format!("{name}: {s}")),
                        Err(e) => stats.unexpected(format!("{name}: {e}")),
                    }
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    stats.respawns.fetch_add(1, Ordering::Relaxed);
                    incarnation += 1;
                }
            });
        }
        Ok(ProcessFleet {
            slots,
            stopping,
            stats,
            supervisors: Mutex::new(supervisors),
        })
    }

    async fn tell(&self, index: usize, line: &str) -> bool {
        let Some(slot) = self.slots.get(index) else {
            return false;
        };
        let mut s = slot.lock().await;
        match s.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_ok(),
            None => false,
        }
    }
}

#[async_trait]
impl Fleet for ProcessFleet {
    fn size(&self) -> usize {
        self.slots.len()
    }

    async fn arm_kill(&self, index: usize) -> bool {
        self.tell(index, "kill").await
    }

    async fn pause(&self, index: usize, duration: Duration) -> bool {
        let Some(slot) = self.slots.get(index) else {
            return false;
        };
        let Some(pid) = slot.lock().await.pid else {
            return false;
        };
        // The worker stops itself mid-execution (after its claim, before its ledger write), so
        // every pause holds a live claim; wait until it has.
        if !self.tell(index, "pause").await {
            return false;
        }
        let armed = tokio::time::Instant::now();
        while !stopped(pid) {
            if armed.elapsed() > Duration::from_secs(5) {
                self.tell(index, "unpause").await;
                // It may have taken the armed pause just before "unpause" arrived and be about to
                // stop itself: give it a moment, so that a late stop is not left stopped.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !stopped(pid) {
                    signal(pid, "-CONT");
                    return false;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stats.pauses.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(duration).await;
        signal(pid, "-CONT");
        true
    }

    async fn stop(&self, timeout: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        for index in 0..self.slots.len() {
            self.tell(index, "unpause").await;
            if let Some(pid) = self.slots[index].lock().await.pid {
                signal(pid, "-CONT");
            }
            self.tell(index, "stop").await;
        }
        let mut supervisors = self.supervisors.lock().await;
        let all = async { while supervisors.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, all).await.is_err() {
            for slot in &self.slots {
                if let Some(pid) = slot.lock().await.pid
                    && signal(pid, "-9")
                {
                    self.stats.forced_stops.fetch_add(1, Ordering::Relaxed);
                }
            }
            while supervisors.join_next().await.is_some() {}
        }
    }

    fn stats(&self) -> &FleetStats {
        &self.stats
    }
}

/// For the memory store: each worker is a group of tasks with its own client (and heartbeat)
/// over the one shared store. A kill aborts the group's tasks right after the ledger write (the
/// dropped `once` futures leave their executions uncertain, and the heartbeat stops with the
/// client); a pause makes the next execution stall past its hard ttl before its ledger write.
pub struct TaskFleet {
    size: usize,
    workers: Arc<Mutex<Vec<MemWorker>>>,
    stats: Arc<FleetStats>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    hard_ttl: Duration,
}

struct MemWorker {
    incarnation: u32,
    ctx: Arc<WorkerCtx>,
    tasks: JoinSet<()>,
}

fn spawn_mem(
    index: usize,
    incarnation: u32,
    config: &WorkerConfig,
    backend: &Backend,
    die: &mpsc::UnboundedSender<usize>,
) -> Result<MemWorker> {
    let name = format!("w{index}.{incarnation}");
    let journal = Arc::new(Journal::create(&config.dir.join(format!("{name}.jsonl")))?);
    let store: Arc<dyn sentinel_core::CoordinationStore> = Arc::new(Lossy::wrap(
        backend.store.clone(),
        config.lost_reply_rate,
        config.seed ^ ((index as u64) << 32) ^ u64::from(incarnation),
        journal.clone(),
    ));
    let sentinel = worker::client(store, config, &format!("chaos-{name}"))?;
    let ctx = Arc::new(WorkerCtx {
        name,
        index,
        sentinel,
        backend: backend.clone(),
        journal,
        work: config.work,
        sabotage: config.sabotage,
        faults: Arc::new(WorkerFaults::new(DieMode::Abort(die.clone()))),
        stop: Arc::new(AtomicBool::new(false)),
        handled: AtomicU64::new(0),
    });
    let mut tasks = JoinSet::new();
    for task in 0..config.tasks {
        tasks.spawn(worker::run_task(
            ctx.clone(),
            WorkerConfig::taker(index, task),
            false,
        ));
    }
    Ok(MemWorker {
        incarnation,
        ctx,
        tasks,
    })
}

impl TaskFleet {
    /// Starts `workers` task groups over `backend`.
    pub fn start(workers: usize, config: WorkerConfig, backend: Backend) -> Result<TaskFleet> {
        let (die_tx, mut die_rx) = mpsc::unbounded_channel::<usize>();
        let mut list = Vec::new();
        for index in 0..workers {
            list.push(spawn_mem(index, 0, &config, &backend, &die_tx)?);
        }
        let list_len = list.len();
        let workers = Arc::new(Mutex::new(list));
        let stats = Arc::new(FleetStats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let hard_ttl = config.hard_ttl;
        let (w, s, stop) = (workers.clone(), stats.clone(), stopping.clone());
        let supervisor = tokio::spawn(async move {
            while let Some(index) = die_rx.recv().await {
                let mut workers = w.lock().await;
                let Some(dead) = workers.get_mut(index) else {
                    continue;
                };
                dead.tasks.abort_all();
                while dead.tasks.join_next().await.is_some() {}
                s.kills.fetch_add(1, Ordering::Relaxed);
                let takers: Vec<String> = (0..config.tasks)
                    .map(|t| WorkerConfig::taker(index, t))
                    .collect();
                let _ = backend.queue.recover(&takers).await;
                if stop.load(Ordering::SeqCst) {
                    continue;
                }
                match spawn_mem(index, dead.incarnation + 1, &config, &backend, &die_tx) {
                    Ok(next) => {
                        *dead = next;
                        s.respawns.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => s.unexpected(format!("w{index}: cannot restart: {e}")),
                }
            }
        });
        Ok(TaskFleet {
            size: list_len,
            workers,
            stats,
            supervisor: Mutex::new(Some(supervisor)),
            stopping,
            hard_ttl,
        })
    }
}

#[async_trait]
impl Fleet for TaskFleet {
    fn size(&self) -> usize {
        self.size
    }

    async fn arm_kill(&self, index: usize) -> bool {
        let workers = self.workers.lock().await;
        match workers.get(index) {
            Some(w) => {
                w.ctx.faults.armed_kill.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    async fn pause(&self, index: usize, duration: Duration) -> bool {
        let workers = self.workers.lock().await;
        let Some(w) = workers.get(index) else {
            return false;
        };
        let stall = duration.max(self.hard_ttl + Duration::from_millis(500));
        match w.ctx.faults.stall.lock() {
            Ok(mut s) => *s = Some(stall),
            Err(p) => *p.into_inner() = Some(stall),
        }
        self.stats.pauses.fetch_add(1, Ordering::Relaxed);
        drop(workers);
        tokio::time::sleep(stall).await;
        true
    }

    async fn stop(&self, timeout: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut workers = self.workers.lock().await;
        for w in workers.iter() {
            w.ctx.stop.store(true, Ordering::SeqCst);
        }
        for w in workers.iter_mut() {
            let all = async { while w.tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(timeout, all).await.is_err() {
                w.tasks.abort_all();
                self.stats.forced_stops.fetch_add(1, Ordering::Relaxed);
                while w.tasks.join_next().await.is_some() {}
            }
        }
        if let Some(s) = self.supervisor.lock().await.take() {
            s.abort();
        }
    }

    fn stats(&self) -> &FleetStats {
        &self.stats
    }
}
