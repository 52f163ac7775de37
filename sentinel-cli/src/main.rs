//! `sentinel`: inspect and reconcile Sentinel executions from a shell.
//!
//! Exit codes: 0 done; 1 refused by the record's state (or no such record); 2 bad usage or input;
//! 3 backend unreachable; 4 any other failure.

mod backend;
mod duration;
mod json;
mod output;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use sentinel_core::store::{HistoryQuery, LeaseListQuery, ListFilter, ListQuery};
use sentinel_core::{
    CoordinationStore, Error, Event, ExecutionRecord, ExecutionState, Key, Keyspace, Namespace,
    OwnerId, RecordId, Sentinel, Timestamp,
};

use backend::{Target, redact};
use output::{Output, liveness, printable, relative, shell_word, table};

/// The page size of `list`, `lease list` and `history` when none is given.
const DEFAULT_LIMIT: u32 = 100;

const EXAMPLES: &str = "\
Examples:
  export SENTINEL_URL=postgres://app@db.internal/payments
  sentinel list --uncertain                      # the reconciliation queue
  sentinel inspect payment-017                   # what is known about one key
  sentinel history payment-017                   # every transition, oldest first
  sentinel reconcile payment-017                 # fence out the vanished worker
  sentinel force-complete payment-017 --result '{\"charge_id\":\"ch_17\"}'
  sentinel reset payment-017                     # or: let the next delivery run it again
  sentinel purge --completed-before 30d --dry-run";

/// Inspect and reconcile Sentinel executions and leases.
///
/// When an execution is uncertain (a worker started it and vanished), find it with
/// `list --uncertain`, check the downstream system, then `reconcile` it and either
/// `force-complete` it with the result you found or `reset` it so it runs again.
#[derive(Parser, Debug)]
#[command(name = "sentinel", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// The store: postgres://…, postgresql://…, redis://… or rediss://… (comma-separated
    /// redis:// URLs for a cluster). Falls back to SENTINEL_URL, then DATABASE_URL.
    #[arg(long, global = true, env = "SENTINEL_URL", hide_env_values = true)]
    url: Option<String>,
    /// The namespace of the keys.
    #[arg(
        long,
        short = 'n',
        global = true,
        default_value = "default",
        env = "SENTINEL_NAMESPACE"
    )]
    namespace: String,
    /// PostgreSQL schema holding Sentinel's tables.
    #[arg(long, global = true, default_value = "sentinel")]
    schema: String,
    /// Redis key prefix.
    #[arg(long, global = true, default_value = "sentinel")]
    prefix: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Do not ask for confirmation before changing anything.
    #[arg(long, short = 'y', global = true)]
    yes: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show one execution: state, whether it is alive (and for how long), owner, token, expiries,
    /// result, fingerprint and last event.
    #[command(after_help = "Example:\n  sentinel inspect payment-017")]
    Inspect {
        /// The key.
        key: String,
    },
    /// Show the history of a key, oldest first (or its newest events, newest first).
    #[command(
        after_help = "Examples:\n  sentinel history payment-017\n  sentinel history payment-017 --newest-first --limit 10\n  sentinel history nightly-report --lease"
    )]
    History {
        /// The key.
        key: String,
        /// At most this many events (1 to 1000).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: u32,
        /// The newest events, newest first, instead of the oldest.
        #[arg(long)]
        newest_first: bool,
        /// Only events with an id above this one (the last id of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// Only events with an id below this one (the last id of the previous page, newest
        /// first).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        /// The history of the lease with this key instead of the execution.
        #[arg(long)]
        lease: bool,
    },
    /// List executions that need attention.
    #[command(
        after_help = "Examples:\n  sentinel list --uncertain\n  sentinel list --state reconciling\n  sentinel list --state completed --older-than 30d --limit 500"
    )]
    List {
        /// Only this state: claimed, executing, completed or reconciling.
        #[arg(long)]
        state: Option<String>,
        /// Only uncertain executions (executing and expired): the reconciliation queue.
        #[arg(long)]
        uncertain: bool,
        /// Only records whose lease has expired.
        #[arg(long)]
        expired: bool,
        /// Only records whose last transition is at least this old: a number and a unit, s, m or
        /// min (minutes), h or d (e.g. 10m, 4h, 2d).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: u32,
        /// Start after this key (the `next` of the previous page).
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
    },
    /// Start resolving an uncertain execution: fence out its worker with a new token.
    #[command(after_help = "Example:\n  sentinel reconcile payment-017 --yes")]
    Reconcile {
        /// The key.
        key: String,
    },
    /// Resolve a reconciling execution as completed with the result you found downstream.
    #[command(
        name = "force-complete",
        after_help = "Example:\n  sentinel force-complete payment-017 --result '{\"charge_id\":\"ch_17\"}'"
    )]
    ForceComplete {
        /// The key.
        key: String,
        /// The result, as JSON; later `once` calls replay it.
        #[arg(long)]
        result: String,
    },
    /// Resolve a reconciling execution by making it claimable again: the next `once` runs it.
    #[command(after_help = "Example:\n  sentinel reset payment-017")]
    Reset {
        /// The key.
        key: String,
    },
    /// Leases: inspect or list.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Remove completed records older than a duration (tokens stay increasing). A purged key runs
    /// again on its next delivery: keep records longer than any redelivery can come.
    #[command(
        after_help = "Examples:\n  sentinel purge --completed-before 30d --dry-run\n  sentinel purge --completed-before 30d --yes"
    )]
    Purge {
        /// Remove completed records whose last change is at least this old, by the store's clock:
        /// a number and a unit, s, m or min (minutes), h or d (e.g. 30d; a bare number is
        /// refused). 0s removes every completed record.
        #[arg(long, value_name = "DURATION")]
        completed_before: String,
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create or upgrade Sentinel's schema (PostgreSQL).
    #[command(
        after_help = "Example:\n  sentinel migrate --url postgres://admin@db/payments --schema sentinel"
    )]
    Migrate,
}

#[derive(Subcommand, Debug)]
enum LeaseCommand {
    /// Show one lease: holder, token, alive or expired.
    #[command(after_help = "Example:\n  sentinel lease inspect nightly-report")]
    Inspect {
        /// The key.
        key: String,
    },
    /// List the namespace's leases.
    #[command(after_help = "Example:\n  sentinel lease list")]
    List {
        /// At most this many leases (1 to 1000).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: u32,
        /// Start after this key.
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
    },
}

/// A command whose input has been checked: nothing is sent to the store before every argument is
/// known to be valid.
#[derive(Debug)]
enum Action {
    Inspect(Key),
    History {
        key: Key,
        query: HistoryQuery,
        keyspace: Keyspace,
    },
    List(ListFilter, Option<Key>, u32),
    Reconcile(Key),
    ForceComplete(Key, Value),
    Reset(Key),
    LeaseInspect(Key),
    LeaseList(Option<Key>, u32),
    Purge(Duration, bool),
    Migrate,
}

impl TryFrom<Command> for Action {
    type Error = Failure;

    fn try_from(command: Command) -> Result<Self, Failure> {
        let page = |limit: u32| -> Result<u32, Failure> {
            ListQuery {
                namespace: Namespace::new("check")?,
                filter: ListFilter::default(),
                after: None,
                limit,
            }
            .validate()?;
            Ok(limit)
        };
        let after = |after: Option<String>| after.map(Key::new).transpose().map_err(Failure::from);
        Ok(match command {
            Command::Inspect { key } => Action::Inspect(Key::new(key)?),
            Command::History {
                key,
                limit,
                newest_first,
                after,
                before,
                lease,
            } => {
                let query = HistoryQuery {
                    after,
                    before,
                    limit,
                    newest_first,
                };
                query.validate()?;
                let keyspace = if lease {
                    Keyspace::Lease
                } else {
                    Keyspace::Execution
                };
                Action::History {
                    key: Key::new(key)?,
                    query,
                    keyspace,
                }
            }
            Command::List {
                state,
                uncertain,
                expired,
                older_than,
                limit,
                after: start,
            } => Action::List(
                ListFilter {
                    state: state.map(|s| s.parse::<ExecutionState>()).transpose()?,
                    uncertain,
                    expired,
                    older_than: older_than
                        .map(|d| duration::parse(&d))
                        .transpose()
                        .map_err(Failure::Usage)?,
                },
                after(start)?,
                page(limit)?,
            ),
            Command::Reconcile { key } => Action::Reconcile(Key::new(key)?),
            Command::ForceComplete { key, result } => Action::ForceComplete(
                Key::new(key)?,
                json::parse_exact(&result).map_err(|e| Failure::Usage(format!("--result {e}")))?,
            ),
            Command::Reset { key } => Action::Reset(Key::new(key)?),
            Command::Lease(LeaseCommand::Inspect { key }) => Action::LeaseInspect(Key::new(key)?),
            Command::Lease(LeaseCommand::List {
                limit,
                after: start,
            }) => Action::LeaseList(after(start)?, page(limit)?),
            Command::Purge {
                completed_before,
                dry_run,
            } => Action::Purge(
                duration::parse(&completed_before).map_err(Failure::Usage)?,
                dry_run,
            ),
            Command::Migrate => Action::Migrate,
        })
    }
}

/// What ended the command, mapped to the exit code.
#[derive(Debug)]
enum Failure {
    /// Refused by the record's state, or no such record (exit 1).
    Refused(String, Option<Value>),
    /// Bad usage or input (exit 2).
    Usage(String),
    /// The operator declined the confirmation (exit 1).
    Declined,
    /// A store error.
    Store(Error),
    /// Standard output could not be written (exit 4).
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Output(error)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidInput(e) => Failure::Usage(e.to_string()),
            Error::Rejected(r) => Failure::Refused(r.to_string(), serde_json::to_value(&r).ok()),
            other => Failure::Store(other),
        }
    }
}

impl From<sentinel_core::InvalidInput> for Failure {
    fn from(error: sentinel_core::InvalidInput) -> Self {
        Failure::Usage(error.to_string())
    }
}

/// Writes one line to standard error. A failed write (a closed pipe, a full disk) is ignored:
/// the exit code still says what happened, and a change already applied must not end in a panic.
fn to_stderr(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            to_stderr(format_args!("sentinel: cannot start: {e}"));
            return ExitCode::from(4);
        }
    };
    match runtime.block_on(run(cli, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure, out),
    }
}

fn report(failure: Failure, out: Output) -> ExitCode {
    let (code, kind, message, detail) = match failure {
        Failure::Refused(message, detail) => (1, "refused", message, detail),
        Failure::Declined => (1, "declined", "nothing changed".to_owned(), None),
        Failure::Usage(message) => (2, "usage", message, None),
        Failure::Store(error @ (Error::Unavailable { .. } | Error::Timeout { .. })) => {
            (3, "unreachable", error.to_string(), None)
        }
        Failure::Store(error) => (4, "failed", error.to_string(), None),
        Failure::Output(error) => (
            4,
            "failed",
            format!("cannot write the output: {error}"),
            None,
        ),
    };
    let error = json!({ "error": { "kind": kind, "message": message, "detail": detail } });
    // In JSON mode the error is a JSON document on stdout; when stdout is what failed, the error
    // goes to stderr.
    if !(out.json && out.json(&error).is_ok()) {
        to_stderr(format_args!(
            "sentinel: {}",
            out.alarm(&printable(&message))
        ));
        if code == 3 {
            to_stderr(format_args!(
                "sentinel: check --url (or SENTINEL_URL / DATABASE_URL) and that the server is up"
            ));
        }
    }
    ExitCode::from(code)
}

struct Context {
    out: Output,
    store: Arc<dyn CoordinationStore>,
    namespace: Namespace,
    target: Target,
    yes: bool,
}

impl Context {
    fn id(&self, key: &str) -> Result<RecordId, Failure> {
        Ok(RecordId::new(self.namespace.clone(), Key::new(key)?))
    }

    /// The client the changing commands go through, with the core's retries: a call whose reply
    /// was lost is sent again, and the retry recognises the command's own effect (the same owner
    /// id: this operator on this host) instead of reporting it as refused: the core recognises
    /// its own reconcile and reset, and force-complete of a completed record with the same
    /// result is accepted by the state machine.
    fn client(&self) -> Result<Sentinel, Failure> {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "operator".to_owned());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = OwnerId::new(format!("sentinel-cli:{user}@{}", host.trim()))?;
        Ok(Sentinel::builder_shared(Arc::clone(&self.store))
            .namespace(self.namespace.as_str())
            .owner(owner)
            .build()?)
    }

    /// The store, as prompts name it (without its password).
    fn store_shown(&self) -> String {
        redact(&self.target.url)
    }

    /// `-n NAMESPACE` for a suggested command.
    fn namespace_option(&self) -> String {
        format!(" -n {}", shell_word(self.namespace.as_str()))
    }

    /// Asks before a change, on a terminal, unless `--yes`.
    fn confirm(&self, question: &str) -> Result<(), Failure> {
        if self.yes || !std::io::stdin().is_terminal() {
            return Ok(());
        }
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "{question} [y/N] ").and_then(|()| stderr.flush());
        drop(stderr);
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            Ok(())
        } else {
            Err(Failure::Declined)
        }
    }

    async fn record(&self, key: &str) -> Result<ExecutionRecord, Failure> {
        let id = self.id(key)?;
        self.store.inspect(&id).await?.ok_or_else(|| {
            Failure::Refused(
                format!(
                    "no execution record for key {key:?} in namespace {:?}",
                    self.namespace.as_str()
                ),
                None,
            )
        })
    }

    async fn last_event(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
    ) -> Result<Option<Event>, Failure> {
        Ok(last_event(self.store.as_ref(), keyspace, id).await?)
    }
}

/// The newest event of a history, read from its newest end (a PostgreSQL history is never
/// trimmed: a lease taken every minute logs thousands of events a day).
async fn last_event(
    store: &dyn CoordinationStore,
    keyspace: Keyspace,
    id: &RecordId,
) -> Result<Option<Event>, Error> {
    let newest = HistoryQuery {
        limit: 1,
        newest_first: true,
        ..HistoryQuery::default()
    };
    Ok(store.history(keyspace, id, &newest).await?.pop())
}

async fn run(cli: Cli, out: Output) -> Result<(), Failure> {
    let action = Action::try_from(cli.command)?;
    let namespace = Namespace::new(cli.global.namespace.clone())?;
    let url = cli
        .global
        .url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .ok_or_else(|| {
            Failure::Usage(
                "no store given: pass --url, or set SENTINEL_URL or DATABASE_URL".to_owned(),
            )
        })?;
    let target = Target {
        url,
        schema: cli.global.schema.clone(),
        prefix: cli.global.prefix.clone(),
    };
    backend::Backend::of(&target.url)?;
    if let Action::Migrate = action {
        backend::migrate(&target).await?;
        if out.json {
            out.json(&json!({ "migrated": true, "schema": target.schema }))?;
        } else {
            out.print(&format!(
                "schema {:?} is up to date on {}",
                target.schema,
                redact(&target.url)
            ))?;
        }
        return Ok(());
    }
    let store = backend::connect(&target).await?;
    let ctx = Context {
        out,
        store,
        namespace,
        target,
        yes: cli.global.yes,
    };
    match action {
        Action::Inspect(key) => inspect(&ctx, key.as_str()).await,
        Action::History {
            key,
            query,
            keyspace,
        } => history(&ctx, key.as_str(), &query, keyspace).await,
        Action::List(filter, after, limit) => list(&ctx, filter, limit, after).await,
        Action::Reconcile(key) => {
            let key = key.as_str();
            ctx.confirm(&format!(
                "Reconcile {key:?} in namespace {:?} on {}? Its worker is fenced out for good.",
                ctx.namespace.as_str(),
                ctx.store_shown()
            ))?;
            let client = ctx.client()?;
            let token = client.reconcile(key).await?;
            changed(
                &ctx,
                &client,
                key,
                json!({ "token": token }),
                &format!("reconciling under token {token}"),
            )
            .await
        }
        Action::ForceComplete(key, value) => {
            let key = key.as_str();
            ctx.confirm(&format!(
                "Record {key:?} in namespace {:?} on {} as completed with {}? Later calls will replay it.",
                ctx.namespace.as_str(),
                ctx.store_shown(),
                printable(&value.to_string())
            ))?;
            let client = ctx.client()?;
            client.force_complete(key, &value).await?;
            changed(&ctx, &client, key, json!({}), "completed").await
        }
        Action::Reset(key) => {
            let key = key.as_str();
            ctx.confirm(&format!(
                "Reset {key:?} in namespace {:?} on {} to claimed? The next delivery runs it again.",
                ctx.namespace.as_str(),
                ctx.store_shown()
            ))?;
            let client = ctx.client()?;
            client.reset_to_claimed(key).await?;
            changed(
                &ctx,
                &client,
                key,
                json!({}),
                "claimed: the next once() runs it again",
            )
            .await
        }
        Action::LeaseInspect(key) => lease_inspect(&ctx, key.as_str()).await,
        Action::LeaseList(after, limit) => lease_list(&ctx, limit, after).await,
        Action::Purge(age, dry_run) => purge(&ctx, age, dry_run).await,
        Action::Migrate => Ok(()),
    }
}

async fn inspect(ctx: &Context, key: &str) -> Result<(), Failure> {
    let record = ctx.record(key).await?;
    let now = ctx.store.now().await?;
    let last = ctx.last_event(Keyspace::Execution, &record.id()).await?;
    if ctx.out.json {
        ctx.out
            .json(&output::record_json(&record, now, last.as_ref()))?;
        return Ok(());
    }
    ctx.out
        .print(&describe(ctx.out, &record, now, last.as_ref()))?;
    Ok(())
}

fn describe(
    out: Output,
    record: &ExecutionRecord,
    now: sentinel_core::Timestamp,
    last: Option<&Event>,
) -> String {
    let uncertain = record.is_uncertain(now);
    let show = |v: &Option<Value>| v.as_ref().map_or("-".to_owned(), Value::to_string);
    let mut rows = vec![
        ("key", output::key(record.key.as_str()).into_owned()),
        (
            "namespace",
            printable(record.namespace.as_str()).into_owned(),
        ),
        ("state", out.state(record.state, uncertain)),
        (
            "lease",
            format!(
                "{} ({})",
                liveness(record.lease_expires_at, now),
                record.lease_expires_at
            ),
        ),
        (
            "hard expiry",
            format!(
                "{} ({})",
                relative(record.hard_expires_at, now),
                record.hard_expires_at
            ),
        ),
        ("owner", printable(record.owner.as_str()).into_owned()),
        ("token", record.token.to_string()),
        (
            "ttl",
            format!(
                "{} (hard {})",
                duration::format(record.ttl.ttl()),
                duration::format(record.ttl.hard())
            ),
        ),
        (
            "created",
            format!(
                "{} ({})",
                relative(record.created_at, now),
                record.created_at
            ),
        ),
        (
            "updated",
            format!(
                "{} ({})",
                relative(record.updated_at, now),
                record.updated_at
            ),
        ),
        (
            "fingerprint",
            record
                .fingerprint
                .as_ref()
                .map_or("-".to_owned(), |f| printable(&f.to_string()).into_owned()),
        ),
        ("result", printable(&show(&record.result)).into_owned()),
    ];
    if let Some(event) = last {
        rows.push(("last event", event_line(event, now)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text: Vec<String> = rows
        .into_iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect();
    let key = shell_word(record.key.as_str());
    // Always `-n`, `default` too: without it, SENTINEL_NAMESPACE would pick the namespace of the
    // pasted command.
    let ns = format!(" -n {}", shell_word(record.namespace.as_str()));
    let hint = match record.state {
        ExecutionState::Executing if uncertain => Some(format!(
            "UNCERTAIN: the worker started and vanished. Check the downstream system, then:\n  sentinel reconcile {key}{ns}\n  then: sentinel force-complete {key}{ns} --result '<json>'   (it happened)\n    or: sentinel reset {key}{ns}                              (it did not)"
        )),
        ExecutionState::Reconciling => Some(format!(
            "Reconciling: finish with `sentinel force-complete {key}{ns} --result '<json>'` or `sentinel reset {key}{ns}`."
        )),
        _ => None,
    };
    if let Some(hint) = hint {
        text.push(String::new());
        text.push(hint);
    }
    text.join("\n")
}

fn event_line(event: &Event, now: sentinel_core::Timestamp) -> String {
    let by = event
        .owner
        .as_ref()
        .map(|o| format!(" by {}", printable(o.as_str())))
        .unwrap_or_default();
    let detail = event
        .detail
        .as_ref()
        .map(|d| format!(" {}", printable(&d.to_string())))
        .unwrap_or_default();
    format!("{}{by}, {}{detail}", event.kind, relative(event.at, now))
}

async fn history(
    ctx: &Context,
    key: &str,
    query: &HistoryQuery,
    keyspace: Keyspace,
) -> Result<(), Failure> {
    let id = ctx.id(key)?;
    let events = ctx.store.history(keyspace, &id, query).await?;
    if events.is_empty() {
        return Err(Failure::Refused(
            format!(
                "no history for {keyspace} {key:?} in namespace {:?}",
                ctx.namespace.as_str()
            ),
            None,
        ));
    }
    if ctx.out.json {
        ctx.out
            .json(&serde_json::to_value(&events).unwrap_or(Value::Null))?;
        return Ok(());
    }
    let now = ctx.store.now().await?;
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.at.to_string(),
                relative(e.at, now),
                e.kind.to_string(),
                e.state.map_or("-".to_owned(), |s| s.to_string()),
                e.token.to_string(),
                e.owner
                    .as_ref()
                    .map_or("-".to_owned(), |o| printable(o.as_str()).into_owned()),
                e.detail
                    .as_ref()
                    .map_or(String::new(), |d| printable(&d.to_string()).into_owned()),
            ]
        })
        .collect();
    ctx.out.print(&table(
        &[
            "ID", "TIME", "WHEN", "EVENT", "STATE", "TOKEN", "BY", "DETAIL",
        ],
        &rows,
    ))?;
    if let Some(last) = events
        .last()
        .filter(|_| events.len() >= query.limit as usize)
    {
        ctx.out.print(&format!(
            "\nmore: sentinel history{}{}",
            ctx.namespace_option(),
            next_history_page(key, query, keyspace, last.id)
        ))?;
    }
    Ok(())
}

async fn list(
    ctx: &Context,
    filter: ListFilter,
    limit: u32,
    after: Option<Key>,
) -> Result<(), Failure> {
    let query = ListQuery {
        namespace: ctx.namespace.clone(),
        filter,
        after,
        limit,
    };
    let page = ctx.store.list(&query).await?;
    let now = ctx.store.now().await?;
    if ctx.out.json {
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|r| output::record_json(r, now, None))
            .collect();
        ctx.out
            .json(&json!({ "items": items, "next": page.next }))?;
        return Ok(());
    }
    if page.items.is_empty() {
        ctx.out.print("nothing matches")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|r| {
            vec![
                output::key(r.key.as_str()).into_owned(),
                ctx.out.state(r.state, r.is_uncertain(now)),
                liveness(r.lease_expires_at, now),
                printable(r.owner.as_str()).into_owned(),
                r.token.to_string(),
                relative(r.updated_at, now),
            ]
        })
        .collect();
    ctx.out.print(&table(
        &["KEY", "STATE", "LEASE", "OWNER", "TOKEN", "UPDATED"],
        &rows,
    ))?;
    if let Some(next) = page.next {
        let filter = &query.filter;
        let mut options = String::new();
        if let Some(state) = filter.state {
            options.push_str(&format!(" --state {state}"));
        }
        if filter.uncertain {
            options.push_str(" --uncertain");
        }
        if filter.expired {
            options.push_str(" --expired");
        }
        if let Some(age) = filter.older_than {
            options.push_str(&format!(" --older-than {}", duration::exact(age)));
        }
        ctx.out.print(&format!(
            "\nmore: sentinel list{}{options}{}",
            ctx.namespace_option(),
            page_options(limit, &next)
        ))?;
    }
    Ok(())
}

/// `--limit` (unless the default) and `--after=KEY` of the next page's command, the key quoted
/// for the shell (`=`, so that a key starting with `-` is not taken for an option).
fn page_options(limit: u32, next: &Key) -> String {
    let limit = if limit == DEFAULT_LIMIT {
        String::new()
    } else {
        format!(" --limit {limit}")
    };
    format!("{limit} --after={}", shell_word(next.as_str()))
}

/// The options and key of the command that reads the history page after one that ended at
/// `last`: the same query, its cursor moved past `last`, the key after `--` when it starts with
/// `-` (so that it is not taken for an option).
fn next_history_page(key: &str, query: &HistoryQuery, keyspace: Keyspace, last: i64) -> String {
    let mut next = String::new();
    if keyspace == Keyspace::Lease {
        next.push_str(" --lease");
    }
    if query.limit != DEFAULT_LIMIT {
        next.push_str(&format!(" --limit {}", query.limit));
    }
    let (after, before) = if query.newest_first {
        next.push_str(" --newest-first");
        (query.after, Some(last))
    } else {
        (Some(last), query.before)
    };
    if let Some(after) = after {
        next.push_str(&format!(" --after {after}"));
    }
    if let Some(before) = before {
        next.push_str(&format!(" --before {before}"));
    }
    let separator = if key.starts_with('-') { " --" } else { "" };
    format!("{next}{separator} {}", shell_word(key))
}

/// Prints the record after a change. The change is applied by now: if the record cannot be read
/// back, that is said (a warning on stderr, `"record": null` and `"warning"` in JSON), and the
/// command still succeeds.
async fn changed(
    ctx: &Context,
    client: &Sentinel,
    key: &str,
    mut extra: Value,
    summary: &str,
) -> Result<(), Failure> {
    let id = ctx.id(key)?;
    let read = async {
        let record = client.inspect(key).await?;
        let now = ctx.store.now().await?;
        let last = last_event(ctx.store.as_ref(), Keyspace::Execution, &id).await?;
        Ok::<_, Error>((record, now, last))
    };
    let (record, warning) = match read.await {
        Ok((Some(record), now, last)) => (Some((record, now, last)), None),
        Ok((None, _, _)) => (None, Some("it is gone".to_owned())),
        Err(error) => (None, Some(error.to_string())),
    };
    let warning = warning.map(|reason| {
        format!(
            "the change is applied, but the record could not be read back: {reason}; see `sentinel inspect {}{}`",
            shell_word(key),
            ctx.namespace_option()
        )
    });
    if ctx.out.json {
        if let Value::Object(map) = &mut extra {
            map.insert(
                "record".into(),
                record.as_ref().map_or(Value::Null, |(r, now, last)| {
                    output::record_json(r, *now, last.as_ref())
                }),
            );
            if let Some(warning) = &warning {
                map.insert("warning".into(), json!(warning));
            }
        }
        ctx.out.json(&extra)?;
    } else {
        ctx.out
            .print(&format!("{}: {summary}\n", output::key(key)))?;
        if let Some((record, now, last)) = &record {
            ctx.out
                .print(&describe(ctx.out, record, *now, last.as_ref()))?;
        }
    }
    if let Some(warning) = warning {
        to_stderr(format_args!("sentinel: {}", printable(&warning)));
    }
    Ok(())
}

async fn lease_inspect(ctx: &Context, key: &str) -> Result<(), Failure> {
    let id = ctx.id(key)?;
    let now = ctx.store.now().await?;
    let Some(lease) = ctx.store.inspect_lease(&id).await? else {
        return Err(Failure::Refused(
            format!(
                "no lease is held on {key:?} in namespace {:?}",
                ctx.namespace.as_str()
            ),
            None,
        ));
    };
    if ctx.out.json {
        ctx.out.json(&output::lease_json(&lease, now))?;
        return Ok(());
    }
    let rows = [
        ("key", output::key(lease.key.as_str()).into_owned()),
        (
            "namespace",
            printable(lease.namespace.as_str()).into_owned(),
        ),
        (
            "lease",
            format!(
                "{} ({})",
                liveness(lease.lease_expires_at, now),
                lease.lease_expires_at
            ),
        ),
        (
            "hard expiry",
            format!(
                "{} ({})",
                relative(lease.hard_expires_at, now),
                lease.hard_expires_at
            ),
        ),
        ("owner", printable(lease.owner.as_str()).into_owned()),
        ("token", lease.token.to_string()),
        (
            "acquired",
            format!(
                "{} ({})",
                relative(lease.acquired_at, now),
                lease.acquired_at
            ),
        ),
    ];
    for (k, v) in rows {
        ctx.out.print(&format!("{k:<11}  {v}"))?;
    }
    Ok(())
}

async fn lease_list(ctx: &Context, limit: u32, after: Option<Key>) -> Result<(), Failure> {
    let query = LeaseListQuery {
        namespace: ctx.namespace.clone(),
        after,
        limit,
    };
    let page = ctx.store.list_leases(&query).await?;
    let now = ctx.store.now().await?;
    if ctx.out.json {
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|l| output::lease_json(l, now))
            .collect();
        ctx.out
            .json(&json!({ "items": items, "next": page.next }))?;
        return Ok(());
    }
    if page.items.is_empty() {
        ctx.out.print("no leases")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|l| {
            vec![
                output::key(l.key.as_str()).into_owned(),
                liveness(l.lease_expires_at, now),
                printable(l.owner.as_str()).into_owned(),
                l.token.to_string(),
            ]
        })
        .collect();
    ctx.out
        .print(&table(&["KEY", "LEASE", "OWNER", "TOKEN"], &rows))?;
    if let Some(next) = page.next {
        ctx.out.print(&format!(
            "\nmore: sentinel lease list{}{}",
            ctx.namespace_option(),
            page_options(limit, &next)
        ))?;
    }
    Ok(())
}

/// Which completed records a purge of `age` removes, read at the store's `now`: "last changed at
/// or before INSTANT (AGE before the store's clock, NOW)", and the cutoff itself.
fn purge_scope(age: Duration, now: Timestamp) -> (String, Timestamp) {
    let cutoff = now.saturating_sub(age);
    let every = if age.is_zero() {
        ": every completed record"
    } else {
        ""
    };
    let scope = format!(
        "last changed at or before {cutoff} ({} before the store's clock, {now}{every})",
        duration::exact(age)
    );
    (scope, cutoff)
}

async fn purge(ctx: &Context, age: Duration, dry_run: bool) -> Result<(), Failure> {
    let older_than = duration::exact(age);
    let now = ctx.store.now().await?;
    let (scope, cutoff) = purge_scope(age, now);
    if dry_run {
        let filter = ListFilter {
            state: Some(ExecutionState::Completed),
            older_than: Some(age),
            ..ListFilter::default()
        };
        let mut count = 0usize;
        let mut after = None;
        loop {
            let page = ctx
                .store
                .list(&ListQuery {
                    namespace: ctx.namespace.clone(),
                    filter: filter.clone(),
                    after,
                    limit: sentinel_core::store::MAX_PAGE,
                })
                .await?;
            count += page.items.len();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if ctx.out.json {
            ctx.out.json(&json!({
                "would_purge": count,
                "older_than": older_than,
                "now": now,
                "cutoff": cutoff,
                "cutoff_utc": cutoff.to_string(),
                "dry_run": true,
            }))?;
        } else {
            ctx.out.print(&format!(
                "would purge {count} completed records {scope}; dry run: nothing removed"
            ))?;
        }
        return Ok(());
    }
    ctx.confirm(&format!(
        "Purge the completed records in namespace {:?} on {} {scope}? A purged key runs again on its next delivery (its token is kept).",
        ctx.namespace.as_str(),
        ctx.store_shown()
    ))?;
    // The store judges ages by its clock when it purges: read it again after the question.
    let now = ctx.store.now().await?;
    let (scope, cutoff) = purge_scope(age, now);
    let purged = ctx.client()?.purge(age).await?;
    if ctx.out.json {
        ctx.out.json(&json!({
            "purged": purged,
            "older_than": older_than,
            "now": now,
            "cutoff": cutoff,
            "cutoff_utc": cutoff.to_string(),
        }))?;
    } else {
        ctx.out.print(&format!(
            "purged {purged} completed records {scope}; their tokens are kept"
        ))?;
    }
    Ok(())
}
