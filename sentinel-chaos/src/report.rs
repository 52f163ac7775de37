//! The run's summary: printed for people, and as JSON for tests and dashboards.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::audit::Audit;

/// Latency percentiles of `once()`, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `micros` (sorted in place).
    pub fn of(micros: &mut [u64]) -> Latency {
        if micros.is_empty() {
            return Latency::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
            micros[i] as f64 / 1000.0
        };
        Latency {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Everything a run measured and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// The store.
    pub store: String,
    /// Where its server came from.
    pub server: String,
    /// The run's id (namespace, schema and key prefix suffix).
    pub run_id: String,
    /// The seed of every random choice.
    pub seed: u64,
    /// Worker processes (memory: task groups).
    pub workers: usize,
    /// Concurrent deliveries per worker.
    pub tasks: usize,
    /// workers × tasks.
    pub concurrency: usize,
    /// Lease ttl.
    pub ttl_ms: u64,
    /// Keys per round.
    pub keys_per_round: u32,
    /// Deliveries of each key.
    pub deliveries_per_key: u32,
    /// Rounds delivered.
    pub rounds: u32,
    /// Seconds from the first delivery until the queue was drained.
    pub seconds: f64,
    /// `once()` calls by the workers.
    pub ops: u64,
    /// `once()` calls per second.
    pub ops_per_s: f64,
    /// `once()` latency.
    pub latency: Latency,
    /// `once()` outcomes by kind.
    pub outcomes: BTreeMap<String, u64>,
    /// Faults switched on.
    pub faults_enabled: Vec<String>,
    /// Faults asked for that cannot run here, with the reason.
    pub faults_skipped: BTreeMap<String, String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Worker exits that were neither a clean stop nor a kill fault.
    pub unexpected_exits: Vec<String>,
    /// The audit.
    pub audit: Audit,
    /// How many violations (the exit code is 1 when above 0).
    pub violations: u64,
}

impl Summary {
    /// The report for people.
    pub fn render(&self) -> String {
        let a = &self.audit;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== sentinel-chaos: {} ({}) run {} seed {}",
            self.store, self.server, self.run_id, self.seed
        );
        let _ = writeln!(
            s,
            "workload: {} keys ({} rounds of {}), each delivered {}x, {} workers x {} tasks, ttl {} ms",
            a.keys,
            self.rounds,
            self.keys_per_round,
            self.deliveries_per_key,
            self.workers,
            self.tasks,
            self.ttl_ms
        );
        let _ = writeln!(
            s,
            "load: {} once() calls in {:.1} s = {:.0} ops/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.ops,
            self.seconds,
            self.ops_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms
        );
        let _ = writeln!(s, "outcomes: {}", kv(&self.outcomes));
        let _ = writeln!(
            s,
            "faults enabled: {}",
            if self.faults_enabled.is_empty() {
                "none".to_owned()
            } else {
                self.faults_enabled.join(",")
            }
        );
        for (fault, why) in &self.faults_skipped {
            let _ = writeln!(s, "  skipped {fault}: {why}");
        }
        let _ = writeln!(s, "faults injected: {}", kv(&self.faults));
        let l = &a.lost_replies;
        let _ = writeln!(
            s,
            "lost replies: claims dropped {} (grants {}: adopted by the retry {}, retried after the lease lapsed {}; not retried {}), completions dropped {} (accepted again {}); claims failed in transit and retried {}",
            l.claims_dropped,
            l.grants_dropped,
            l.grants_adopted,
            l.grants_lapsed,
            l.claims_not_retried,
            l.completions_dropped,
            l.completions_accepted_again,
            l.claims_failed_in_transit
        );
        let u = &a.uncertain;
        let _ = writeln!(
            s,
            "uncertain: {} keys, {} generations reconciled ({} force-completed from the ledger, {} reset and run again)",
            u.keys, u.generations, u.force_completed, u.reset
        );
        for (cause, n) in &u.causes {
            let _ = writeln!(s, "  {n:>5}  {cause}");
        }
        let w = &a.writes;
        let _ = writeln!(
            s,
            "ledger writes: {} attempted, {} applied, {} rejected by the fence, {} lost with their worker or connection",
            w.attempts, w.applied, w.rejected, w.lost
        );
        let _ = writeln!(
            s,
            "  writes below a later reconciliation's token: {} (applied after the fence: {})",
            w.below_a_reconciliation, w.after_the_fence
        );
        let cp = &a.checkpoint;
        let _ = writeln!(
            s,
            "end of deliveries: {} completed, {} uncertain ({} listed by the reconciliation queue), {} stuck alive, {} stuck reconciling, {} lost",
            cp.completed,
            cp.uncertain,
            cp.listed,
            cp.stuck_alive.len(),
            cp.stuck_reconciling.len(),
            cp.lost.len()
        );
        let _ = writeln!(
            s,
            "after reconciliation: {}/{} completed; applied once {}, twice after an explicit reset {}",
            a.completed_at_end, a.keys, a.applied_once, a.applied_twice_after_reset
        );
        for r in &a.restarts {
            let _ = writeln!(
                s,
                "restart ({}): {} completed results checked, {} lost",
                r.kind,
                r.checked,
                r.lost.len()
            );
        }
        let _ = writeln!(
            s,
            "history: {} events checked for increasing tokens",
            a.events
        );
        for e in &self.unexpected_exits {
            let _ = writeln!(s, "unexpected worker exit: {e}");
        }
        for n in a.notes.iter().take(20) {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(s, "VIOLATIONS: {}", self.violations);
        for v in a.violations.iter().take(50) {
            let _ = writeln!(s, "  invariant {} key {}: {}", v.invariant, v.key, v.detail);
        }
        if a.violations.len() > 50 {
            let _ = writeln!(s, "  … and {} more", a.violations.len() - 50);
        }
        s
    }
}

fn kv(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table of a load run: one line per concurrency level.
pub fn load_table(levels: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| store | concurrency | processes x tasks | once() calls | ops/s | p50 ms | p99 ms | uncertain keys | violations |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in levels {
        let _ = writeln!(
            s,
            "| {} | {} | {} x {} | {} | {:.0} | {:.1} | {:.1} | {} | {} |",
            l.store,
            l.concurrency,
            l.workers,
            l.tasks,
            l.ops,
            l.ops_per_s,
            l.latency.p50_ms,
            l.latency.p99_ms,
            l.audit.uncertain.keys,
            l.violations
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(Latency::of(&mut []).p99_ms, 0.0);
    }
}
