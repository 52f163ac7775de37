//! `sentinel`: inspect and reconcile Sentinel executions from a shell.
//!
//! Exit codes: 0 done; 1 refused by the record's state (or no such record); 2 bad usage or input;
//! 3 backend unreachable; 4 any other failure.

mod backend;
mod duration;
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
    OwnerId, RecordId, Sentinel,
};

use backend::{Target, redact};
use output::{Output, liveness, relative, table};

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
    /// Show the history of a key, oldest first.
    #[command(
        after_help = "Examples:\n  sentinel history payment-017\n  sentinel history nightly-report --lease"
    )]
    History {
        /// The key.
        key: String,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
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
        /// Only records whose last transition is at least this old (e.g. 10m, 4h, 2d).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = 100)]
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
    /// Remove completed records older than a duration (tokens stay increasing).
    #[command(
        after_help = "Examples:\n  sentinel purge --completed-before 30d --dry-run\n  sentinel purge --completed-before 30d --yes"
    )]
    Purge {
        /// Remove completed records whose completion is at least this old (e.g. 30d).
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
        #[arg(long, default_value_t = 100)]
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
            Command::History { key, limit, lease } => {
                let query = HistoryQuery { after: None, limit };
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
                serde_json::from_str(&result)
                    .map_err(|e| Failure::Usage(format!("--result is not valid JSON: {e}")))?,
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
            eprintln!("sentinel: cannot start: {e}");
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
    };
    if out.json {
        out.json(&json!({ "error": { "kind": kind, "message": message, "detail": detail } }));
    } else {
        eprintln!("sentinel: {}", out.alarm(&message));
        if code == 3 {
            eprintln!(
                "sentinel: check --url (or SENTINEL_URL / DATABASE_URL) and that the server is up"
            );
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

    fn client(&self) -> Result<Sentinel, Failure> {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "operator".to_owned());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = OwnerId::new(format!("sentinel-cli:{user}@{}", host.trim()))?;
        Ok(Sentinel::builder_shared(Arc::clone(&self.store))
            .namespace(self.namespace.as_str())
            .owner(owner)
            .retries(1, Duration::ZERO)
            .build()?)
    }

    /// Asks before a change, on a terminal, unless `--yes`.
    fn confirm(&self, question: &str) -> Result<(), Failure> {
        if self.yes || !std::io::stdin().is_terminal() {
            return Ok(());
        }
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
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
        // Histories are short; the last page is the tail.
        Ok(self
            .store
            .history(keyspace, id, &HistoryQuery::default())
            .await?
            .pop())
    }
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
            out.json(&json!({ "migrated": true, "schema": target.schema }));
        } else {
            out.print(&format!(
                "schema {:?} is up to date on {}",
                target.schema,
                redact(&target.url)
            ));
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
            let id = ctx.id(key)?;
            ctx.confirm(&format!(
                "Reconcile {key:?} in namespace {:?} on {}? Its worker is fenced out for good.",
                ctx.namespace.as_str(),
                redact(&ctx.target.url)
            ))?;
            let token = ctx.client()?.reconcile(key).await?;
            changed(
                &ctx,
                &id,
                key,
                json!({ "token": token }),
                &format!("reconciling under token {token}"),
            )
            .await
        }
        Action::ForceComplete(key, value) => {
            let key = key.as_str();
            let id = ctx.id(key)?;
            ctx.confirm(&format!(
                "Record {key:?} as completed with {value}? Later calls will replay it."
            ))?;
            ctx.client()?.force_complete(key, &value).await?;
            changed(&ctx, &id, key, json!({}), "completed").await
        }
        Action::Reset(key) => {
            let key = key.as_str();
            let id = ctx.id(key)?;
            ctx.confirm(&format!(
                "Reset {key:?} to claimed? The next delivery runs it again."
            ))?;
            ctx.client()?.reset_to_claimed(key).await?;
            changed(
                &ctx,
                &id,
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
            .json(&output::record_json(&record, now, last.as_ref()));
        return Ok(());
    }
    ctx.out
        .print(&describe(ctx.out, &record, now, last.as_ref()));
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
        ("key", record.key.to_string()),
        ("namespace", record.namespace.to_string()),
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
        ("owner", record.owner.to_string()),
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
                .map_or("-".to_owned(), ToString::to_string),
        ),
        ("result", show(&record.result)),
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
    let ns = if record.namespace.as_str() == "default" {
        String::new()
    } else {
        format!(" -n {}", shell_word(record.namespace.as_str()))
    };
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

/// `word` as one shell word: bare when it is plainly safe, single-quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | '+' | ',')
        });
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn event_line(event: &Event, now: sentinel_core::Timestamp) -> String {
    let by = event
        .owner
        .as_ref()
        .map(|o| format!(" by {o}"))
        .unwrap_or_default();
    let detail = event
        .detail
        .as_ref()
        .map(|d| format!(" {d}"))
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
    if ctx.out.json {
        ctx.out
            .json(&serde_json::to_value(&events).unwrap_or(Value::Null));
        return Ok(());
    }
    if events.is_empty() {
        return Err(Failure::Refused(
            format!(
                "no history for {keyspace} {key:?} in namespace {:?}",
                ctx.namespace.as_str()
            ),
            None,
        ));
    }
    let now = ctx.store.now().await?;
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.at.to_string(),
                relative(e.at, now),
                e.kind.to_string(),
                e.state.map_or("-".to_owned(), |s| s.to_string()),
                e.token.to_string(),
                e.owner.as_ref().map_or("-".to_owned(), ToString::to_string),
                e.detail.as_ref().map_or(String::new(), Value::to_string),
            ]
        })
        .collect();
    ctx.out.print(&table(
        &["TIME", "WHEN", "EVENT", "STATE", "TOKEN", "BY", "DETAIL"],
        &rows,
    ));
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
        ctx.out.json(&json!({ "items": items, "next": page.next }));
        return Ok(());
    }
    if page.items.is_empty() {
        ctx.out.print("nothing matches");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|r| {
            vec![
                r.key.to_string(),
                ctx.out.state(r.state, r.is_uncertain(now)),
                liveness(r.lease_expires_at, now),
                r.owner.to_string(),
                r.token.to_string(),
                relative(r.updated_at, now),
            ]
        })
        .collect();
    ctx.out.print(&table(
        &["KEY", "STATE", "LEASE", "OWNER", "TOKEN", "UPDATED"],
        &rows,
    ));
    if let Some(next) = page.next {
        ctx.out.print(&format!(
            "\nmore: sentinel list ... --after {:?}",
            next.as_str()
        ));
    }
    Ok(())
}

/// Prints the record after a change.
async fn changed(
    ctx: &Context,
    id: &RecordId,
    key: &str,
    mut extra: Value,
    summary: &str,
) -> Result<(), Failure> {
    let record = ctx.record(key).await?;
    let now = ctx.store.now().await?;
    let last = ctx.last_event(Keyspace::Execution, id).await?;
    if ctx.out.json {
        if let Value::Object(map) = &mut extra {
            map.insert(
                "record".into(),
                output::record_json(&record, now, last.as_ref()),
            );
        }
        ctx.out.json(&extra);
    } else {
        ctx.out.print(&format!("{key}: {summary}\n"));
        ctx.out
            .print(&describe(ctx.out, &record, now, last.as_ref()));
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
        ctx.out.json(&output::lease_json(&lease, now));
        return Ok(());
    }
    let rows = [
        ("key", lease.key.to_string()),
        ("namespace", lease.namespace.to_string()),
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
        ("owner", lease.owner.to_string()),
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
        ctx.out.print(&format!("{k:<11}  {v}"));
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
        ctx.out.json(&json!({ "items": items, "next": page.next }));
        return Ok(());
    }
    if page.items.is_empty() {
        ctx.out.print("no leases");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|l| {
            vec![
                l.key.to_string(),
                liveness(l.lease_expires_at, now),
                l.owner.to_string(),
                l.token.to_string(),
            ]
        })
        .collect();
    ctx.out
        .print(&table(&["KEY", "LEASE", "OWNER", "TOKEN"], &rows));
    if let Some(next) = page.next {
        ctx.out.print(&format!(
            "\nmore: sentinel lease list --after {:?}",
            next.as_str()
        ));
    }
    Ok(())
}

async fn purge(ctx: &Context, age: Duration, dry_run: bool) -> Result<(), Failure> {
    let described = duration::format(age);
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
            ctx.out
                .json(&json!({ "would_purge": count, "older_than": described, "dry_run": true }));
        } else {
            ctx.out.print(&format!("would purge {count} completed records older than {described} (dry run: nothing removed)"));
        }
        return Ok(());
    }
    ctx.confirm(&format!(
        "Purge completed records older than {described} from namespace {:?}?",
        ctx.namespace.as_str()
    ))?;
    let purged = ctx.client()?.purge(age).await?;
    if ctx.out.json {
        ctx.out
            .json(&json!({ "purged": purged, "older_than": described }));
    } else {
        ctx.out.print(&format!(
            "purged {purged} completed records older than {described}; their tokens are kept"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn hints_quote_keys_for_the_shell() {
        assert_eq!(shell_word("payment-017"), "payment-017");
        assert_eq!(shell_word("order 9"), "'order 9'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_word(""), "''");
    }
}
