//! The real `sentinel` binary against real PostgreSQL and Redis servers: the reconciliation flow
//! on an execution left uncertain by a worker that stopped mid-flight, JSON output parsed back,
//! refusals and exit codes, the commands it suggests, and changes whose replies were lost on the
//! way back (through a proxy that drops them).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Disposition, EventKind, Failure,
    Keyspace, LeaseRequest, Once, OwnerId, RecordId, RequestId, Sentinel, Ttl,
};
use sentinel_postgres::PostgresStore;
use sentinel_redis::RedisStore;
use sentinel_testkit::servers;

#[derive(Clone)]
struct Cli {
    url: String,
    namespace: String,
    extra: Vec<String>,
    /// More environment variables for the binary.
    env: Vec<(String, String)>,
}

impl Cli {
    fn new(url: &str, namespace: &str, extra: &[&str]) -> Cli {
        Cli {
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
        }
    }

    /// The same store, another namespace.
    fn namespaced(&self, namespace: &str) -> Cli {
        Cli {
            namespace: namespace.to_owned(),
            ..self.clone()
        }
    }

    /// The same, with `name=value` in the binary's environment.
    fn with_env(&self, name: &str, value: &str) -> Cli {
        let mut cli = self.clone();
        cli.env.push((name.to_owned(), value.to_owned()));
        cli
    }

    /// `program` with this CLI's environment: its URL, no other, no colour.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("SENTINEL_URL", &self.url)
            .env_remove("DATABASE_URL")
            .env_remove("SENTINEL_NAMESPACE")
            .env("NO_COLOR", "1");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Runs with stdout going to `/dev/full`, where every write fails; stderr too if
    /// `stderr_too` (then the output holds no stderr).
    fn run_into_full_disk(&self, args: &[&str], stderr_too: bool) -> Output {
        let mut argv = self.argv(args);
        let program = argv.next().unwrap();
        let full = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap()
        };
        self.command(program)
            .args(argv)
            .stdout(full())
            .stderr(if stderr_too {
                Stdio::from(full())
            } else {
                Stdio::piped()
            })
            .output()
            .unwrap()
    }

    /// Runs and returns stdout as text, asserting the exit code.
    fn text(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "sentinel {args:?}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `sentinel` and its arguments: `args`, then this CLI's namespace and extra options.
    fn argv<'a>(&'a self, args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        std::iter::once(env!("CARGO_BIN_EXE_sentinel"))
            .chain(args.iter().copied())
            .chain(["--namespace", self.namespace.as_str()])
            .chain(self.extra.iter().map(String::as_str))
    }

    /// Starts it, with stdout and stderr piped.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut argv = self.argv(args);
        let program = argv.next().unwrap();
        self.command(program)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
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

    // A key without history is "no such record" in JSON too (exit 1), as in text.
    let missing = cli.json(&["history", "no-such-key"], 1);
    assert_eq!(missing["error"]["kind"], "refused", "{missing}");
    let out = cli.run(&["history", "no-such-key"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Output that cannot be written is a failure (exit 4), not a silent success.
    for args in [
        vec!["inspect", "payment-017", "--json"],
        vec!["inspect", "payment-017"],
        vec!["list", "--uncertain"],
    ] {
        let out = cli.run_into_full_disk(&args, false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot write"), "{args:?}: {stderr}");
        // With stderr unwritable too, the exit code still says it (no panic: exit 101).
        let out = cli.run_into_full_disk(&args, true);
        assert_eq!(out.status.code(), Some(4), "{args:?}, stderr full too");
    }

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

    // The confirmations of force-complete and reset name the namespace and the store, as
    // reconcile's does; declining changes nothing.
    // The test servers' URLs hold no password: the CLI shows them as they are.
    let store_shown = cli.url.clone();
    for args in [
        vec!["force-complete", "payment-017", "--result", "{}"],
        vec!["reset", "payment-017"],
        vec!["reconcile", "payment-017"],
    ] {
        let declined = cli.on_terminal(&args, "n\n");
        let shown = String::from_utf8_lossy(&declined.stdout).into_owned();
        assert_eq!(declined.status.code(), Some(1), "{args:?}: {shown}");
        assert!(
            shown.contains("in namespace \"payments\"") && shown.contains(&store_shown),
            "{args:?} should name namespace and store ({store_shown}): {shown}"
        );
    }

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

    let kinds = |args: &[&str]| -> Vec<String> {
        let history = cli.json(args, 0);
        history
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        kinds(&["history", "payment-017"]),
        ["claimed", "reconciling", "force_completed"]
    );
    assert_eq!(
        kinds(&["history", "payment-017", "--newest-first", "--limit", "2"]),
        ["force_completed", "reconciling"]
    );

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
    // A duration needs a unit: `30` is not taken as 30 seconds (nor days).
    let bare = cli.json(&["purge", "--completed-before", "30", "--dry-run"], 2);
    assert_eq!(bare["error"]["kind"], "usage", "{bare}");
    let message = bare["error"]["message"].as_str().unwrap();
    assert!(message.contains("m or min (minutes)"), "{message}");
    let dry = cli.json(&["purge", "--completed-before", "1h", "--dry-run"], 0);
    assert_eq!(dry["would_purge"], json!(0), "{dry}");
    // The cutoff is the store's clock minus the age, as an instant and in UTC.
    assert_eq!(
        dry["now"].as_i64().unwrap() - dry["cutoff"].as_i64().unwrap(),
        3_600_000_000,
        "{dry}"
    );
    let cutoff_utc = dry["cutoff_utc"].as_str().unwrap();
    assert!(
        cutoff_utc.len() == 27 && cutoff_utc.ends_with('Z'),
        "{cutoff_utc}"
    );
    let text = cli.text(&["purge", "--completed-before", "1h", "--dry-run"], 0);
    assert!(
        text.contains("would purge 0 completed records last changed at or before 20")
            && text.contains("Z (1h before the store's clock, 20")
            && text.contains("dry run: nothing removed"),
        "{text}"
    );
    let text = cli.text(&["purge", "--completed-before", "0s", "--dry-run"], 0);
    assert!(
        text.contains("would purge 2 completed records") && text.contains("every completed record"),
        "{text}"
    );
    // The confirmation shows the same, with the namespace and the store.
    let declined = cli.on_terminal(&["purge", "--completed-before", "2d"], "n\n");
    let shown = String::from_utf8_lossy(&declined.stdout).into_owned();
    assert_eq!(declined.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("last changed at or before 20")
            && shown.contains("Z (2d before the store's clock, 20")
            && shown.contains("in namespace \"payments\"")
            && shown.contains(&store_shown),
        "{shown}"
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

    hints(cli, store.as_ref()).await;
}

/// The commands the CLI suggests name the namespace, and quote keys for the shell; keys are
/// shown with their control characters escaped.
async fn hints(cli: &Cli, store: &dyn CoordinationStore) {
    // `-n default` too: SENTINEL_NAMESPACE would otherwise pick the namespace of a pasted hint.
    let default = cli
        .namespaced("default")
        .with_env("SENTINEL_NAMESPACE", "payments");
    abandon(store, "default", "payment-020").await;
    let text = default.text(&["inspect", "payment-020"], 0);
    assert!(
        text.contains("  sentinel reconcile payment-020 -n default\n")
            && text.contains("sentinel reset payment-020 -n default "),
        "{text}"
    );

    // Paging: the next page's command, quoted so a pasted hint runs nothing a key holds.
    let paging = cli.namespaced("paging");
    let escape = "z\u{1b}[2Kpay\rhidden";
    for key in ["a-1", "k`id`$(id)"] {
        start(store, "paging", key, "worker-9", Duration::from_secs(60)).await;
    }
    abandon(store, "paging", escape).await;
    let text = paging.text(&["list", "--limit", "2"], 0);
    assert!(
        text.contains("\nmore: sentinel list -n paging --limit 2 --after='k`id`$(id)'"),
        "{text}"
    );
    let text = paging.text(&["list", "--uncertain", "--after", "k`id`$(id)"], 0);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("$'z\\x1b[2Kpay\\rhidden'"), "{text:?}");
    for args in [
        vec!["inspect", escape],
        vec!["history", escape],
        vec!["list"],
        vec!["lease", "list"],
        vec!["lease", "inspect", escape],
    ] {
        let out = paging.run(&args);
        assert!(
            !out.stdout.contains(&0x1b) && !out.stdout.contains(&b'\r'),
            "{args:?}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = paging.text(&["inspect", escape], 0);
    assert!(
        text.contains("  sentinel reconcile $'z\\x1b[2Kpay\\rhidden' -n paging\n"),
        "{text}"
    );
    // The pasted hint names the same key.
    let pasted = Command::new("bash")
        .args(["-c", "printf %s $'z\\x1b[2Kpay\\rhidden'"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pasted.stdout), escape);

    for key in ["a-1", "k`id`$(id)", escape] {
        let request = LeaseRequest {
            owner: OwnerId::new("worker-9").unwrap(),
            ttl: Ttl::new(Duration::from_secs(60)).unwrap(),
            request_id: RequestId::random(),
        };
        let id = RecordId::parse("paging", key).unwrap();
        assert!(matches!(
            store.acquire_lease(&id, &request).await.unwrap(),
            Acquisition::Acquired(_)
        ));
    }
    let text = paging.text(&["lease", "list", "--limit", "2"], 0);
    assert!(
        text.contains("\nmore: sentinel lease list -n paging --limit 2 --after='k`id`$(id)'"),
        "{text}"
    );
    for args in [vec!["lease", "list"], vec!["lease", "inspect", escape]] {
        let text = paging.text(&args, 0);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\r'),
            "{args:?}: {text:?}"
        );
        assert!(
            text.contains("$'z\\x1b[2Kpay\\rhidden'"),
            "{args:?}: {text:?}"
        );
    }
}

/// A history longer than a page (1,000 events; PostgreSQL never trims one): `inspect` shows
/// its newest event, not the last of the first page.
async fn newest_event_of_a_long_history(cli: &Cli, store: &dyn CoordinationStore) {
    let id = RecordId::parse(&cli.namespace, "retried-501-times").unwrap();
    let mut last = 0;
    for round in 0..501 {
        let request = ClaimRequest {
            owner: OwnerId::new("worker-8").unwrap(),
            ttl: Ttl::new(Duration::from_secs(60)).unwrap(),
            start: true,
            request_id: RequestId::random(),
            fingerprint: None,
        };
        let ClaimOutcome::Acquired(grant) = store.claim(&id, &request).await.unwrap() else {
            panic!("claimable again")
        };
        last = grant.token.get();
        if round < 500 {
            store
                .abort(&id, grant.token, Disposition::NotApplied)
                .await
                .unwrap();
        }
    }
    let record = cli.json(&["inspect", "retried-501-times"], 0);
    assert_eq!(record["last_event"]["kind"], "claimed", "{record}");
    assert_eq!(record["last_event"]["token"], json!(last), "{record}");

    // Paging: a full page ends with the command that reads the next one, from either end.
    let ids = |args: &[&str]| -> Vec<i64> {
        let page = cli.json(args, 0);
        page.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let newest_four = ids(&[
        "history",
        "retried-501-times",
        "--newest-first",
        "--limit",
        "4",
    ]);
    let oldest_four = ids(&["history", "retried-501-times", "--limit", "4"]);
    assert_eq!(newest_four.len(), 4);
    for (first, shown, want) in [
        (
            vec!["--newest-first", "--limit", "2"],
            &newest_four[..2],
            &newest_four[2..],
        ),
        (vec!["--limit", "2"], &oldest_four[..2], &oldest_four[2..]),
    ] {
        let mut args = vec!["history", "retried-501-times"];
        args.extend(first);
        let table = cli.text(&args, 0);
        // The table's first column is each event's id, the one `--after` / `--before` take.
        let ids_shown: Vec<i64> = table
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids_shown, shown, "{table}");
        let more = table
            .lines()
            .find_map(|l| l.strip_prefix("more: sentinel "))
            .unwrap_or_else(|| panic!("no next page: {table}"));
        // The words of the next command, less the namespace (the test adds its own).
        let words: Vec<&str> = more.split_whitespace().collect();
        let next: Vec<&str> = words
            .iter()
            .enumerate()
            .filter(|(i, w)| **w != "-n" && (*i == 0 || words[i - 1] != "-n"))
            .map(|(_, w)| *w)
            .collect();
        assert_eq!(ids(&next), want, "{more}");
    }
    // The last page, shorter than its limit (999 events of 1,001), says nothing more.
    let second = oldest_four[1].to_string();
    let lines = cli.text(
        &[
            "history",
            "retried-501-times",
            "--limit",
            "1000",
            "--after",
            &second,
        ],
        0,
    );
    assert!(!lines.contains("more:"), "{lines}");
    assert_eq!(lines.lines().filter(|l| l.contains("aborted")).count(), 499);
}

/// A store over the server at `url` in `schema`, which the CLI's `migrate` created.
async fn migrated_store(url: &str, schema: &str) -> PostgresStore {
    let pool = PostgresStore::pool_options().connect(url).await.unwrap();
    PostgresStore::builder(pool)
        .schema(schema)
        .migrate(false)
        .build()
        .await
        .unwrap()
}

/// Drops `store`'s schema: the server is shared with later runs, so leave nothing behind.
async fn drop_schema(store: &PostgresStore) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reconciliation_flow() {
    let Some(server) = servers::require("postgres", servers::postgres()) else {
        return;
    };
    let schema = unique("cli");
    let cli = Cli::new(server.url(), "payments", &["--schema", &schema]);
    let migrated = cli.json(&["migrate"], 0);
    assert_eq!(migrated["schema"], json!(schema));
    let store = migrated_store(server.url(), &schema).await;
    reconciliation_flow(&cli, Arc::new(store.clone())).await;
    newest_event_of_a_long_history(&cli, &store).await;
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reconciliation_flow() {
    let Some(server) = servers::require("redis", servers::redis()) else {
        return;
    };
    let prefix = servers::redis_test_prefix("cli");
    let cli = Cli::new(server.url(), "payments", &["--prefix", &prefix]);
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
    let cli = |url: &str| Cli::new(url, "payments", &[]);
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
        vec!["force-complete", "k", "--result", "{", "--yes"],
        // Would be stored as 1.2345678901234568e22.
        vec![
            "force-complete",
            "k",
            "--result",
            r#"{"amount": 12345678901234567890123}"#,
            "--yes",
        ],
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
    // A schema name that can never be valid is bad input, found before connecting.
    let bad_schema = Cli::new(
        "postgres://postgres@127.0.0.1:1/x",
        "payments",
        &["--schema", "no such schema!"],
    );
    let out = bad_schema.run(&["list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("schema"), "{stderr}");
    let out = cli("mysql://root:pw@h/db").run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pw@"));

    // Bare numbers are no durations: a unit is required (and named).
    for args in [
        vec!["purge", "--completed-before", "30", "--dry-run"],
        vec!["purge", "--completed-before", "30", "--yes"],
        vec!["list", "--older-than", "600"],
    ] {
        let out = any.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("s, m or min (minutes), h or d"),
            "{args:?}: {stderr}"
        );
    }

    // A malformed URL option is bad input (exit 2), not an unreachable server.
    for url in [
        "postgres://u@127.0.0.1:1/x?sslmode=verfy-full",
        "postgres://u@127.0.0.1:99999/x",
    ] {
        let out = cli(url).run(&["list"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(!stderr.contains("check --url"), "{url}: {stderr}");
    }

    // Passwords the URL syntax makes awkward are not printed either, in text or JSON.
    for ((url, secret, code), child) in [
        ("postgres://alice:s3,cr3t@127.0.0.1:1/pay", "cr3t", 3),
        ("postgres://alice:pa#w0rd@127.0.0.1:1/pay", "w0rd", 2),
        ("postgres://alice:pa?w0rd@127.0.0.1:1/pay", "w0rd", 2),
        ("postgres://alice:1234/w0rd@127.0.0.1:1/pay", "w0rd", 3),
        (
            "postgres://alice@127.0.0.1:1/pay?password=s3cr3t",
            "s3cr3t",
            3,
        ),
        ("postgres:alice:s3cr3t@127.0.0.1:1/pay", "s3cr3t", 2),
        ("redis://:s3,cr3t@127.0.0.1:1", "cr3t", 3),
        ("redis://:pa/w0rd@127.0.0.1:1", "w0rd", 2),
    ]
    .into_iter()
    .flat_map(|case| [(case, &["list"][..]), (case, &["list", "--json"][..])])
    // All at once: an unreachable PostgreSQL takes the pool's 5 s timeout to give up.
    .map(|(case, args)| (case, cli(case.0).spawn(args)))
    .collect::<Vec<_>>()
    {
        let out = child.wait_with_output().unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{url}: {shown}");
        assert!(!shown.contains(secret), "{url}: {shown}");
    }
}

/// A loopback TCP proxy that loses one reply: after a request holding `marker` passes through
/// (the CLI's owner id, in its writes only), it reads the server's answer and closes both
/// connections instead of passing it on. The server has applied the command; the CLI never
/// hears of it.
struct LossyProxy {
    port: u16,
    /// How many replies to lose.
    drops: Arc<AtomicU32>,
    /// The start of each lost reply.
    lost: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl LossyProxy {
    fn start(upstream: String, marker: String) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let drops = Arc::new(AtomicU32::new(0));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let (drops_, lost_) = (drops.clone(), lost.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let armed = Arc::new(AtomicBool::new(false));
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (marker, drops, armed_) = (marker.clone(), drops_.clone(), armed.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    // The end of the bytes read before: a marker split across two reads is
                    // still seen.
                    let mut seen: Vec<u8> = Vec::new();
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        let chunk = &buf[..n];
                        seen.extend_from_slice(chunk);
                        if drops.load(Ordering::SeqCst) > 0
                            && seen.windows(marker.len()).any(|w| w == marker.as_bytes())
                        {
                            armed_.store(true, Ordering::SeqCst);
                            seen.clear();
                        }
                        let keep = seen.len().min(marker.len().saturating_sub(1));
                        seen.drain(..seen.len() - keep);
                        if to.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                let (mut from, mut to) = (server, client);
                let (drops, lost) = (drops_.clone(), lost_.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if armed.swap(false, Ordering::SeqCst)
                            && drops
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                                    d.checked_sub(1)
                                })
                                .is_ok()
                        {
                            lost.lock().unwrap().push(buf[..n.min(64)].to_vec());
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        LossyProxy { port, drops, lost }
    }

    /// Loses the reply to the next request that holds the marker.
    fn lose_next(&self) {
        self.drops.store(1, Ordering::SeqCst);
    }

    fn lost(&self) -> usize {
        self.lost.lock().unwrap().len()
    }
}

/// `url` with its host and port replaced by the proxy's, and the host:port it named.
fn through_proxy(url: &str, default_port: u16, proxy: impl FnOnce(String) -> u16) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(default_port)
    );
    let port = proxy(upstream);
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(port)).unwrap();
    parsed.to_string()
}

/// reconcile, force-complete and reset whose replies are lost: each was applied, and the CLI
/// says so (exit 0, with reconcile's token) instead of "unreachable".
async fn lost_replies(cli: &Cli, proxy: &LossyProxy, store: &dyn CoordinationStore) {
    // The store's scripts (Redis) are loaded before any reply is lost: the reply lost must be
    // the applied command's, not a NOSCRIPT.
    let owner = OwnerId::new("prime").unwrap();
    let nothing = RecordId::parse(&cli.namespace, "no-such-key").unwrap();
    let _ = store.reconcile(&nothing, &owner).await;
    let _ = store.force_complete(&nothing, &owner, &json!(1)).await;
    let _ = store.reset_to_claimed(&nothing, &owner).await;

    for key in ["lost-1", "lost-2"] {
        let token = abandon(store, &cli.namespace, key).await;
        proxy.lose_next();
        let out = cli.json(&["reconcile", key, "--yes"], 0);
        assert_eq!(proxy.lost(), if key == "lost-1" { 1 } else { 3 }, "{out}");
        let new_token = out["token"].as_i64().unwrap();
        assert!(new_token > token, "{out}");
        assert_eq!(out["record"]["state"], "reconciling", "{out}");
        assert_eq!(out["record"]["token"], json!(new_token), "{out}");
        if key == "lost-1" {
            proxy.lose_next();
            let out = cli.json(
                &["force-complete", key, "--result", r#"{"n":1}"#, "--yes"],
                0,
            );
            assert_eq!(proxy.lost(), 2, "{out}");
            assert_eq!(out["record"]["state"], "completed", "{out}");
            assert_eq!(out["record"]["result"], json!({"n": 1}), "{out}");
        } else {
            proxy.lose_next();
            let out = cli.json(&["reset", key, "--yes"], 0);
            assert_eq!(proxy.lost(), 4, "{out}");
            assert_eq!(out["record"]["state"], "claimed", "{out}");
        }
        let id = RecordId::parse(&cli.namespace, key).unwrap();
        let kinds: Vec<EventKind> = store
            .history(Keyspace::Execution, &id, &Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let resolved = if key == "lost-1" {
            EventKind::ForceCompleted
        } else {
            EventKind::Reset
        };
        assert_eq!(
            kinds,
            [EventKind::Claimed, EventKind::Reconciling, resolved],
            "each applied once"
        );
    }
    // Sent again with the same result, a force-complete is accepted (that is what makes its
    // retry safe); with another result, it is refused.
    cli.json(
        &[
            "force-complete",
            "lost-1",
            "--result",
            r#"{"n":1}"#,
            "--yes",
        ],
        0,
    );
    let other = cli.json(
        &[
            "force-complete",
            "lost-1",
            "--result",
            r#"{"n":2}"#,
            "--yes",
        ],
        1,
    );
    assert_eq!(other["error"]["detail"]["reason"], "wrong_state", "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_replies_are_recognised() {
    let Some(server) = servers::require("postgres", servers::postgres()) else {
        return;
    };
    let schema = unique("cli_lost");
    let marker = unique("op");
    let mut proxy = None;
    let url = through_proxy(server.url(), 5432, |upstream| {
        let started = LossyProxy::start(upstream, marker.clone());
        let port = started.port;
        proxy = Some(started);
        port
    });
    let proxy = proxy.unwrap();
    // In plain text, so that the proxy can read the marker: a server with TLS on (Debian's
    // packaged PostgreSQL is) would otherwise be spoken to over TLS (sslmode=prefer).
    let mut url = url::Url::parse(&url).unwrap();
    url.query_pairs_mut().append_pair("sslmode", "disable");
    let url = url.to_string();
    // The CLI's owner id holds $USER: the proxy knows the CLI's writes by it.
    let cli = Cli::new(&url, "lost", &["--schema", &schema]).with_env("USER", &marker);
    cli.json(&["migrate"], 0);
    let store = migrated_store(server.url(), &schema).await;
    lost_replies(&cli, &proxy, &store).await;
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_replies_are_recognised() {
    let Some(server) = servers::require("redis", servers::redis()) else {
        return;
    };
    let prefix = servers::redis_test_prefix("cli-lost");
    let marker = unique("op");
    let mut proxy = None;
    let url = through_proxy(server.url(), 6379, |upstream| {
        let started = LossyProxy::start(upstream, marker.clone());
        let port = started.port;
        proxy = Some(started);
        port
    });
    let proxy = proxy.unwrap();
    let cli = Cli::new(&url, "lost", &["--prefix", &prefix]).with_env("USER", &marker);
    let store = RedisStore::builder()
        .prefix(&prefix)
        .connect(server.url())
        .await
        .unwrap();
    lost_replies(&cli, &proxy, &store).await;
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
