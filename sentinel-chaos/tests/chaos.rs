//! The short chaos runs of the test suite: the harness binary on every store, under faults,
//! must find no violation and must really have injected its faults; and with a deliberate bug it
//! must fail. A missing server skips its run, unless SENTINEL_REQUIRE_BACKENDS=1.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One run at a time: they share two cores and their ttl-based timing.
static SERIAL: Mutex<()> = Mutex::new(());

/// Exit code of the harness when a backend is unavailable.
const UNAVAILABLE: i32 = 3;

struct Outcome {
    code: i32,
    summary: Option<Value>,
    output: String,
}

fn run(name: &str, args: &[&str]) -> Outcome {
    let json = std::env::temp_dir().join(format!("chaos-test-{name}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let log: PathBuf =
        std::env::temp_dir().join(format!("chaos-test-{name}-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).expect("a log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentinel-chaos"))
        .arg("run")
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("a log file"))
        .stderr(file)
        .spawn()
        .expect("the harness binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the harness") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("{name}: the harness ran for more than 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let summary = std::fs::read(&json)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let _ = std::fs::remove_file(&json);
    Outcome {
        code: status.code().unwrap_or(-1),
        summary,
        output,
    }
}

fn count(summary: &Value, fault: &str) -> u64 {
    summary["faults"][fault].as_u64().unwrap_or(0)
}

/// Runs `store` under every fault it supports and checks the verdict; `None` when skipped.
fn clean_run(store: &str, extra: &[&str]) -> Option<Value> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut args = vec!["--store", store, "--duration", "10", "--keys", "40"];
    args.extend_from_slice(extra);
    let out = run(store, &args);
    if out.code == UNAVAILABLE {
        let why = out.output.lines().last().unwrap_or_default().to_owned();
        assert!(
            !sentinel_testkit::servers::backends_required(),
            "chaos {store}: SENTINEL_REQUIRE_BACKENDS=1 requires its server, but {why}"
        );
        // Straight to stderr, past the harness's capture, like `servers::require`.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: chaos {store} suite: {why}"
        );
        return None;
    }
    println!("{}", out.output);
    assert_eq!(
        out.code, 0,
        "{store}: the harness reported violations or failed:\n{}",
        out.output
    );
    let summary = out.summary.expect("a JSON summary");
    assert_eq!(summary["violations"], 0);
    assert!(summary["ops"].as_u64().unwrap_or(0) > 100, "{summary}");
    let audit = &summary["audit"];
    assert_eq!(
        audit["completed_at_end"], audit["keys"],
        "every key ends completed"
    );
    assert!(audit["writes"]["attempts"].as_u64().unwrap_or(0) > 0);
    println!(
        "{store}: {} once() calls, faults {}, uncertain keys {}, stale writes rejected {}",
        summary["ops"], summary["faults"], audit["uncertain"]["keys"], audit["writes"]["rejected"]
    );
    Some(summary)
}

#[test]
fn memory_under_faults() {
    let Some(s) = clean_run("memory", &[]) else {
        return;
    };
    assert!(count(&s, "kill") > 0, "{}", s["faults"]);
    assert!(count(&s, "pause") > 0, "{}", s["faults"]);
    assert!(
        count(&s, "lost_claim") > 0 && count(&s, "lost_complete") > 0,
        "{}",
        s["faults"]
    );
    assert!(
        s["audit"]["lost_replies"]["grants_adopted"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

/// Every kind of fault a default run injects was injected at least once.
fn assert_every_fault_injected(s: &Value) {
    for fault in [
        "kill",
        "pause",
        "conn_kills",
        "restart",
        "proxy_drops",
        "lost_claim",
    ] {
        assert!(
            count(s, fault) > 0,
            "{fault} was not injected: {}",
            s["faults"]
        );
    }
}

#[test]
fn postgres_under_faults() {
    let Some(s) = clean_run("postgres", &[]) else {
        return;
    };
    assert_every_fault_injected(&s);
    assert!(
        s["audit"]["restarts"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
}

#[test]
fn postgres_exactly_once_under_faults() {
    let Some(s) = clean_run(
        "postgres",
        &["--exactly-once", "--faults", "kill,pause,conn,lost"],
    ) else {
        return;
    };
    assert!(count(&s, "kill") > 0, "{}", s["faults"]);
    // The ledger write and the completion commit together: a kill after the commit leaves the
    // key completed, before it nothing applied. No uncertain key is ever force-completed.
    assert_eq!(
        s["audit"]["uncertain"]["force_completed"], 0,
        "{}",
        s["audit"]["uncertain"]
    );
}

#[test]
fn redis_under_faults() {
    let Some(s) = clean_run("redis", &[]) else {
        return;
    };
    assert_every_fault_injected(&s);
}

#[test]
fn redis_cluster_under_faults() {
    let Some(s) = clean_run("redis-cluster", &[]) else {
        return;
    };
    for fault in ["kill", "pause", "lost_claim"] {
        assert!(
            count(&s, fault) > 0,
            "{fault} was not injected: {}",
            s["faults"]
        );
    }
}

#[test]
fn the_audit_catches_a_double_application() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = run(
        "sabotage",
        &[
            "--store",
            "memory",
            "--duration",
            "3",
            "--keys",
            "20",
            "--rounds",
            "1",
            "--sabotage",
            "double-apply",
        ],
    );
    // A failed run keeps its journals for inspection; this one failed on purpose.
    let kept = out.output.lines().find_map(|l| l.split_once("kept in "));
    if let Some((_, dir)) = kept {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
    assert_eq!(
        out.code, 1,
        "a double application must fail the run:\n{}",
        out.output
    );
    let summary = out.summary.expect("a JSON summary");
    assert!(summary["violations"].as_u64().unwrap_or(0) > 0);
    let violations = summary["audit"]["violations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        violations.iter().any(|v| v["invariant"] == 1),
        "invariant 1 must catch it: {violations:?}"
    );
    assert!(
        out.output.contains("applied by two generations"),
        "{}",
        out.output
    );
}
