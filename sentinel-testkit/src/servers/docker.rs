//! The third fallback (feature `docker`): PostgreSQL and Redis in Docker through testcontainers,
//! from pinned images.
//!
//! Every call into testcontainers' blocking API runs on a thread of its own: that API blocks on
//! a private tokio runtime, which panics when called from inside another runtime (as in a
//! `#[tokio::test]`). Containers held by a static are never dropped, so a reaper — the same
//! stdin-EOF watchdog as for local servers — runs `docker rm -f` on them when the process ends.

use std::any::Any;
use std::ffi::OsString;
use std::fmt;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::{REDIS_PORT, Redis};
use testcontainers_modules::testcontainers::core::{CmdWaitFor, ExecCommand, WaitFor};
use testcontainers_modules::testcontainers::runners::SyncRunner;
use testcontainers_modules::testcontainers::{GenericImage, ImageExt};

use super::Resolver;
use super::process::{self, Watchdog, find_in_path, wait_until};

/// The PostgreSQL image.
const POSTGRES_IMAGE: &str = "postgres";
/// Its pinned tag.
const POSTGRES_TAG: &str = "16-alpine";
/// The Redis image (also for the cluster's nodes).
const REDIS_IMAGE: &str = "redis";
/// Its pinned tag.
const REDIS_TAG: &str = "7-alpine";

/// Removes the containers named in `$2...` with the docker CLI `$1` once this process is gone.
const REAPER_SCRIPT: &str = r#"
trap '' HUP INT QUIT TERM PIPE
docker=$1
shift
while IFS= read -r _line; do :; done
"$docker" rm -f -v "$@" >/dev/null 2>&1
exit 0
"#;

/// Started containers, removed when this is dropped or (through the reaper) when the process
/// ends.
pub(crate) struct Containers {
    held: Mutex<Vec<Box<dyn Any + Send>>>,
    ids: Vec<String>,
    reaper: Option<Watchdog>,
}

impl fmt::Debug for Containers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Containers")
            .field("ids", &self.ids)
            .field("reaper", &self.reaper.is_some())
            .finish()
    }
}

impl Containers {
    fn new(resolver: &Resolver, held: Vec<Box<dyn Any + Send>>, ids: Vec<String>) -> Self {
        let path = resolver.var("PATH");
        let reaper = find_in_path("docker", path.as_deref()).and_then(|docker| {
            let mut args: Vec<OsString> = vec![docker.into_os_string()];
            args.extend(ids.iter().map(OsString::from));
            Watchdog::spawn_script(REAPER_SCRIPT, &args).ok()
        });
        Self {
            held: Mutex::new(held),
            ids,
            reaper,
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let held = match self.held.get_mut() {
            Ok(held) => std::mem::take(held),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        // A container's destructor blocks on its runtime: keep that off the caller's runtime.
        let _ = thread::spawn(move || drop(held)).join();
        if let Some(reaper) = self.reaper.as_mut() {
            reaper.finish();
        }
    }
}

/// Runs `start` on a thread of its own (see the module docs).
fn off_runtime<T: Send + 'static>(
    start: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    thread::spawn(start)
        .join()
        .map_err(|_| "the Docker start panicked".to_owned())?
}

/// PostgreSQL from `postgres:16-alpine`, trust auth: (admin URL, image, containers).
pub(crate) fn postgres(resolver: &Resolver) -> Result<(String, String, Containers), String> {
    let image = format!("{POSTGRES_IMAGE}:{POSTGRES_TAG}");
    let shown = image.clone();
    let (url, id, container) = off_runtime(move || {
        let container = Postgres::default()
            .with_host_auth()
            .with_tag(POSTGRES_TAG)
            .start()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let host = container.get_host().map_err(|e| e.to_string())?;
        let port = container
            .get_host_port_ipv4(5432)
            .map_err(|e| e.to_string())?;
        let url = format!("postgres://postgres@{host}:{port}/postgres");
        Ok((url, container.id().to_owned(), container))
    })?;
    let containers = Containers::new(resolver, vec![Box::new(container)], vec![id]);
    Ok((url, image, containers))
}

/// Redis from `redis:7-alpine`: (URL, image, containers).
pub(crate) fn redis(resolver: &Resolver) -> Result<(String, String, Containers), String> {
    let image = format!("{REDIS_IMAGE}:{REDIS_TAG}");
    let shown = image.clone();
    let (url, id, container) = off_runtime(move || {
        let container = Redis::default()
            .with_tag(REDIS_TAG)
            .start()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let host = container.get_host().map_err(|e| e.to_string())?;
        let port = container
            .get_host_port_ipv4(REDIS_PORT)
            .map_err(|e| e.to_string())?;
        Ok((
            format!("redis://{host}:{port}"),
            container.id().to_owned(),
            container,
        ))
    })?;
    let containers = Containers::new(resolver, vec![Box::new(container)], vec![id]);
    Ok((url, image, containers))
}

/// A three-primary cluster of `redis:7-alpine` containers on the host network (so the addresses
/// the nodes announce are the ones this process reaches; Linux engines only), joined with the
/// image's own `redis-cli --cluster create`: (node URLs, image, containers).
pub(crate) fn redis_cluster(
    resolver: &Resolver,
) -> Result<(Vec<String>, String, Containers), String> {
    let image = format!("{REDIS_IMAGE}:{REDIS_TAG}");
    let shown = image.clone();
    let (ports, ids, held) = off_runtime(move || {
        let mut ports = Vec::new();
        let mut ids = Vec::new();
        let mut held = Vec::new();
        for _ in 0..3 {
            let port = process::free_port().map_err(|e| format!("no free port: {e}"))?;
            let bus = process::free_port().map_err(|e| format!("no free port: {e}"))?;
            let (port_arg, bus_arg) = (port.to_string(), bus.to_string());
            let container = GenericImage::new(REDIS_IMAGE, REDIS_TAG)
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                .with_network("host")
                .with_cmd([
                    "redis-server",
                    "--port",
                    port_arg.as_str(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    bus_arg.as_str(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .start()
                .map_err(|e| format!("cannot start {shown} as a cluster node: {e}"))?;
            ports.push(port);
            ids.push(container.id().to_owned());
            held.push(container);
        }
        let mut create = vec!["redis-cli".to_owned(), "--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        if let Some(first) = held.first() {
            first
                .exec(ExecCommand::new(create).with_cmd_ready_condition(CmdWaitFor::exit_code(0)))
                .map_err(|e| format!("redis-cli --cluster create failed: {e}"))?;
        }
        Ok((ports, ids, held))
    })?;
    let held: Vec<Box<dyn Any + Send>> = held
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Any + Send>)
        .collect();
    let containers = Containers::new(resolver, held, ids);
    for &port in &ports {
        wait_until(
            Duration::from_secs(60),
            "cluster_state:ok on every node",
            || {
                Ok(super::redis::command(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok")))
            },
        )?;
    }
    let urls = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    Ok((urls, image, containers))
}
