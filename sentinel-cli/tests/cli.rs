//! The real `sentinel` binary against real PostgreSQL and Redis servers: the reconciliation flow
//! on an execution left uncertain by a worker that stopped mid-flight, JSON output parsed back,
//! refusals and exit codes.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, Failure, Once, OwnerId, RecordId, RequestId,
    Sentinel, Ttl,
};
use sentinel_postgres::PostgresStore;
use sentinel_redis::RedisStore;
use sentinel_testkit::servers;

struct Cli {
    url: String,
    namespace: String,
    extra: Vec<String>,
}

impl Cli {
    /// `program` with this CLI's environment: its URL, no other, no colour.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("SENTINEL_URL", &self.url)
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1");
        command
    }

    /// `sentinel` and its arguments: `args`, then this CLI's namespace and extra options.
    fn argv<'a>(&'a self, args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        std::iter::once(env!("CARGO_BIN_EXE_sentinel"))
            .chain(args.iter().copied())
            .chain(["--namespace", self.namespace.as_str()])
            .chain(self.extra.iter().map(String::as_str))
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut argv = self.argv(args);
        let program = argv.next().unwrap();
        self.command(program).args(argv).output().unwrap()
    }

    /// Runs on a terminal (`script` gives the command a pseudo-terminal), typing `typed`; stdout
    /// and stderr both come back as stdout.
    fn on_terminal(&self, args: &[&str], typed: &str) -> Output {
        let line: Vec<String> = self
            .argv(args)
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let mut child = self
            .command("script")
            .args(["-qec", &line.join(" "), "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs the command on a pseudo-terminal");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(typed.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// Runs with `--json` and parses stdout; asserts the exit code.
    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "sentinel {args:?}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("sentinel {args:?} printed no JSON ({e}): {stdout}"))
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", RequestId::random().as_u128() as u32)
}

/// A worker claims and starts `key`, then stops mid-flight: no completion, no heartbeat.
async fn abandon(store: &dyn CoordinationStore, namespace: &str, key: &str) -> i64 {
    let token = start(
        store,
        namespace,
        key,
        "worker-7",
        Duration::from_millis(200),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    token
}

/// `owner` claims and starts `key` for `ttl`: its token.
async fn start(
    store: &dyn CoordinationStore,
    namespace: &str,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> i64 {
    let request = ClaimRequest {
        owner: OwnerId::new(owner).unwrap(),
        ttl: Ttl::new(ttl).unwrap(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: None,
    };
    let id = RecordId::parse(namespace, key).unwrap();
    let ClaimOutcome::Acquired(grant) = store.claim(&id, &request).await.unwrap() else {
        panic!("a fresh key")
    };
    grant.token.get()
}

/// The whole flow an operator follows, on any store.
async fn reconciliation_flow(cli: &Cli, store: Arc<dyn CoordinationStore>) {
    let token = abandon(store.as_ref(), &cli.namespace, "payment-017").await;

    let queue = cli.json(&["list", "--uncertain"], 0);
    let keys: Vec<&str> = queue["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["payment-017"]);
    assert_eq!(queue["items"][0]["uncertain"], json!(true));

    let record = cli.json(&["inspect", "payment-017"], 0);
    assert_eq!(record["state"], "executing");
    assert_eq!(record["alive"], json!(false));
    assert_eq!(record["token"], json!(token));
    assert_eq!(record["owner"], "worker-7");
    assert_eq!(record["last_event"]["kind"], "claimed");

    let human = cli.run(&["inspect", "payment-017"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("UNCERTAIN") && text.contains("expired") && text.contains(" ago"),
        "{text}"
    );
    // What to do next, for this key in this namespace, and the last event.
    assert!(
        text.contains(
            "Check the downstream system, then:\n  sentinel reconcile payment-017 -n payments\n"
        ),
        "{text}"
    );
    assert!(text.contains("claimed by worker-7, "), "{text}");

    let reconciled = cli.json(&["reconcile", "payment-017", "--yes"], 0);
    let new_token = reconciled["token"].as_i64().unwrap();
    assert!(new_token > token);
    assert_eq!(reconciled["record"]["state"], "reconciling");
    let text = String::from_utf8_lossy(&cli.run(&["inspect", "payment-017"]).stdout).into_owned();
    assert!(
        text.contains("Reconciling: finish with `sentinel force-complete payment-017 -n payments"),
        "{text}"
    );
    assert!(!text.contains("UNCERTAIN"), "{text}");

    // Refusals: the state does not allow it (exit 1), with the reason.
    let again = cli.json(&["reconcile", "payment-017", "--yes"], 1);
    assert_eq!(again["error"]["kind"], "refused");
    assert_eq!(again["error"]["detail"]["reason"], "wrong_state");
    assert_eq!(again["error"]["detail"]["state"], "reconciling");

    // Bad input writes nothing (exit 2).
    let bad = cli.json(
        &[
            "force-complete",
            "payment-017",
            "--result",
            "{not json",
            "--yes",
        ],
        2,
    );
    assert_eq!(bad["error"]["kind"], "usage");
    assert_eq!(
        cli.json(&["inspect", "payment-017"], 0)["state"],
        "reconciling"
    );

    let done = cli.json(
        &[
            "force-complete",
            "payment-017",
            "--result",
            r#"{"charge_id":"ch_17"}"#,
            "--yes",
        ],
        0,
    );
    assert_eq!(done["record"]["state"], "completed");
    assert_eq!(done["record"]["result"], json!({"charge_id": "ch_17"}));
    assert_eq!(
        cli.json(&["reset", "payment-017", "--yes"], 1)["error"]["detail"]["reason"],
        "wrong_state"
    );

    let history = cli.json(&["history", "payment-017"], 0);
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["claimed", "reconciling", "force_completed"]);

    // The application now replays the operator's result.
    let app = Sentinel::builder_shared(store.clone())
        .namespace(&cli.namespace)
        .build()
        .unwrap();
    let replay: Once<Value> = app
        .once("payment-017", |_| async {
            Err(Failure::not_applied("must not run"))
        })
        .await
        .unwrap();
    assert_eq!(replay.into_value(), Some(json!({"charge_id": "ch_17"})));

    // Reset path: a second abandoned execution runs again after reset.
    abandon(store.as_ref(), &cli.namespace, "payment-018").await;
    // On a terminal, a change is asked for: "n" changes nothing, "y" goes ahead.
    let declined = cli.on_terminal(&["reconcile", "payment-018"], "n\n");
    let shown = String::from_utf8_lossy(&declined.stdout).into_owned();
    assert_eq!(declined.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("[y/N]") && shown.contains("nothing changed"),
        "{shown}"
    );
    assert_eq!(
        cli.json(&["inspect", "payment-018"], 0)["state"],
        "executing"
    );
    let accepted = cli.on_terminal(&["reconcile", "payment-018"], "y\n");
    let shown = String::from_utf8_lossy(&accepted.stdout).into_owned();
    assert_eq!(accepted.status.code(), Some(0), "{shown}");
    assert_eq!(
        cli.json(&["inspect", "payment-018"], 0)["state"],
        "reconciling"
    );
    // Not on a terminal (a script), nothing is asked, `--yes` or not.
    let out = cli.run(&["reset", "payment-018", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(cli.json(&["inspect", "payment-018"], 0)["state"], "claimed");
    let rerun = app
        .once("payment-018", |_| async {
            Ok::<_, Failure>(json!("charged once"))
        })
        .await
        .unwrap();
    assert!(rerun.is_executed());

    // Leases.
    let guard = app
        .lease("nightly-report")
        .await
        .unwrap()
        .acquired()
        .unwrap();
    let lease = cli.json(&["lease", "inspect", "nightly-report"], 0);
    assert_eq!(lease["token"], json!(guard.token().get()));
    assert_eq!(lease["alive"], json!(true));
    assert_eq!(
        cli.json(&["lease", "list"], 0)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    guard.release().await.unwrap();
    assert_eq!(
        cli.json(&["lease", "inspect", "nightly-report"], 1)["error"]["kind"],
        "refused"
    );
    let lease_history = cli.json(&["history", "nightly-report", "--lease"], 0);
    assert_eq!(lease_history.as_array().unwrap().len(), 2);

    // Purge: both completed records, not the live execution beside them, and none of them
    // before they are old enough; the dry run removes nothing.
    start(
        store.as_ref(),
        &cli.namespace,
        "payment-019",
        "worker-8",
        Duration::from_secs(60),
    )
    .await;
    let text = String::from_utf8_lossy(&cli.run(&["inspect", "payment-019"]).stdout).into_owned();
    assert!(!text.contains("UNCERTAIN"), "a live execution: {text}");
    assert_eq!(
        cli.json(&["purge", "--completed-before", "1h", "--dry-run"], 0)["would_purge"],
        json!(0)
    );
    assert_eq!(
        cli.json(&["purge", "--completed-before", "0s", "--dry-run"], 0)["would_purge"],
        json!(2)
    );
    assert_eq!(
        cli.json(&["list", "--state", "completed"], 0)["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        cli.json(&["purge", "--completed-before", "0s", "--yes"], 0)["purged"],
        json!(2)
    );
    assert_eq!(
        cli.json(&["inspect", "payment-017"], 1)["error"]["kind"],
        "refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reconciliation_flow() {
    let Some(server) = servers::require("postgres", servers::postgres()) else {
        return;
    };
    let schema = unique("cli");
    let cli = Cli {
        url: server.url().to_owned(),
        namespace: "payments".into(),
        extra: vec!["--schema".into(), schema.clone()],
    };
    let migrated = cli.json(&["migrate"], 0);
    assert_eq!(migrated["schema"], json!(schema));
    let pool = PostgresStore::pool_options()
        .connect(server.url())
        .await
        .unwrap();
    let store = PostgresStore::builder(pool.clone())
        .schema(&schema)
        .migrate(false)
        .build()
        .await
        .unwrap();
    reconciliation_flow(&cli, Arc::new(store)).await;
    // The server is shared with later runs: leave nothing behind.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reconciliation_flow() {
    let Some(server) = servers::require("redis", servers::redis()) else {
        return;
    };
    let prefix = servers::redis_test_prefix("cli");
    let cli = Cli {
        url: server.url().to_owned(),
        namespace: "payments".into(),
        extra: vec!["--prefix".into(), prefix.clone()],
    };
    let store = RedisStore::builder()
        .prefix(&prefix)
        .connect(server.url())
        .await
        .unwrap();
    reconciliation_flow(&cli, Arc::new(store)).await;
    assert_eq!(
        cli.json(&["migrate"], 2)["error"]["kind"],
        "usage",
        "Redis has no schema to migrate"
    );
}

#[test]
fn usage_errors_exit_2_and_unreachable_backends_exit_3_without_printing_passwords() {
    let cli = |url: &str| Cli {
        url: url.to_owned(),
        namespace: "payments".into(),
        extra: Vec::new(),
    };
    let down = cli("postgres://alice:s3cr3t@127.0.0.1:1/payments");
    let out = down.run(&["list", "--uncertain"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("alice:***@") && !stderr.contains("s3cr3t"),
        "{stderr}"
    );
    assert!(stderr.contains("check --url"), "{stderr}");
    let out = cli("redis://:hunter2@127.0.0.1:1").run(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));

    let any = cli("postgres://postgres@127.0.0.1:1/x");
    for args in [
        vec!["inspect", ""],
        vec!["list", "--state", "nope"],
        vec!["list", "--older-than", "5 fortnights"],
        vec!["purge", "--completed-before", "soon"],
        vec!["list", "--limit", "0"],
        vec!["frobnicate"],
    ] {
        let out = any.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("check --url"),
            "a usage error is not about the server: {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["list"])
        .env_remove("SENTINEL_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--url"));
    let out = cli("mysql://root:pw@h/db").run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pw@"));
}

#[test]
fn every_command_has_help_with_examples() {
    for args in [
        vec!["--help"],
        vec!["inspect", "--help"],
        vec!["history", "--help"],
        vec!["list", "--help"],
        vec!["reconcile", "--help"],
        vec!["force-complete", "--help"],
        vec!["reset", "--help"],
        vec!["lease", "inspect", "--help"],
        vec!["lease", "list", "--help"],
        vec!["purge", "--help"],
        vec!["migrate", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{args:?} has no example:\n{text}");
    }
}
