//! Redis from local binaries: `redis-server` processes in scratch directories, and a three-primary
//! cluster assembled with `redis-cli --cluster create`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ServerError;
use super::process::{
    self, LOG_TAIL_LINES, Reap, Watchdog, append_log, find_in_path, log_tail, make_scratch_dir,
    run_logged, wait_until,
};

/// How many fresh ports a start tries when the chosen one is taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// How long a server may take to answer PING after it was spawned (an AOF may need loading).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `redis-server` and, when present, `redis-cli`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBinaries {
    server: PathBuf,
    cli: Option<PathBuf>,
}

impl RedisBinaries {
    /// Looks both up in the directories of `path` (a `PATH` value).
    pub fn find(path: Option<&str>) -> Result<Self, String> {
        let server = find_in_path("redis-server", path).ok_or_else(|| {
            format!(
                "redis-server not found on PATH ({})",
                path.unwrap_or("unset")
            )
        })?;
        Ok(Self {
            server,
            cli: find_in_path("redis-cli", path),
        })
    }

    /// The `redis-server` binary.
    pub fn server(&self) -> &Path {
        &self.server
    }

    /// The `redis-cli` binary, when it was found.
    pub fn cli(&self) -> Option<&Path> {
        self.cli.as_deref()
    }
}

/// Redis's `appendfsync` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppendFsync {
    /// fsync after every write: nothing acknowledged is lost even on `kill -9`.
    Always,
    /// fsync once a second (Redis's default).
    #[default]
    EverySec,
    /// Leave it to the OS.
    No,
}

impl AppendFsync {
    fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::EverySec => "everysec",
            Self::No => "no",
        }
    }
}

/// How [`super::spawn_redis`] configures its server. RDB snapshots are always off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RedisOptions {
    /// Keep an append-only file, so data survives a restart (off: a restart starts empty).
    pub appendonly: bool,
    /// When the append-only file is fsynced (used only with `appendonly`).
    pub appendfsync: AppendFsync,
}

/// Sends one command as a RESP array to 127.0.0.1:`port` and reads one reply, returned in the
/// form `redis-cli` would print a simple one: `+PONG` → `PONG`, a bulk string → its text,
/// `-ERR x` → an `Err`.
pub(crate) fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a reply",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    // Not `split_at`: whatever answers on the port may not be Redis, and may not start with
    // one byte.
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", line));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(rest.to_owned())),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| io::Error::other(format!("bad bulk length {rest:?}")))?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(String::new());
            };
            // The replies this reads are a few bytes: a length beyond this is no Redis reply.
            if len > 1 << 20 {
                return Err(io::Error::other(format!("bulk length {len} is too long")));
            }
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
    }
}

/// One `redis-server` process in its own directory, restartable on the same port.
#[derive(Debug)]
struct Node {
    port: u16,
    /// The cluster bus port, for cluster nodes.
    cluster_port: Option<u16>,
    dir: PathBuf,
    server: PathBuf,
    options: RedisOptions,
    child: Option<Child>,
}

impl Node {
    fn new(server: &Path, dir: PathBuf, options: RedisOptions, cluster: bool) -> io::Result<Self> {
        fs::create_dir_all(dir.join("data"))?;
        Ok(Self {
            port: 0,
            cluster_port: cluster.then_some(0),
            dir,
            server: server.to_path_buf(),
            options,
            child: None,
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts on fresh free ports, retrying when one was taken between the probe and the bind.
    fn start_on_free_port(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = process::free_port().map_err(|e| format!("no free port: {e}"))?;
            if self.cluster_port.is_some() {
                let bus = process::free_port().map_err(|e| format!("no free port: {e}"))?;
                if bus == self.port {
                    continue;
                }
                self.cluster_port = Some(bus);
            }
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(format!(
            "no port could be bound in {PORT_ATTEMPTS} tries: {last}"
        ))
    }

    fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = self.log();
        let out = append_log(&log).map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let mut cmd = Command::new(&self.server);
        let port = self.port.to_string();
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.join("data"))
            .arg("--pidfile")
            .arg(self.pid_file())
            .args(["--logfile", "", "--save", ""])
            .args([
                "--appendonly",
                if self.options.appendonly { "yes" } else { "no" },
                "--appendfsync",
                self.options.appendfsync.as_str(),
            ]);
        if let Some(bus) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"))
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", "5000"]);
        }
        let shown = process::describe(&cmd);
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
        self.child = Some(child);
        let port = self.port;
        let ready = wait_until(READY_TIMEOUT, "redis-server to answer PING", || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("redis-server exited ({status})"));
            }
            Ok(matches!(command(port, &["PING"]).as_deref(), Ok("PONG")))
        });
        if let Err(e) = ready {
            self.kill();
            return Err(format!(
                "`{shown}` did not come up: {e}; {}",
                log_tail(&log, LOG_TAIL_LINES)
            ));
        }
        Ok(())
    }

    /// `SHUTDOWN` (which fsyncs the append-only file), then waits for the process to end.
    fn stop(&mut self) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if child.try_wait().ok().flatten().is_none() {
            // The server closes the connection instead of replying when it shuts down.
            let asked = command(self.port, &["SHUTDOWN"]);
            let exited = wait_until(Duration::from_secs(30), "redis-server to exit", || {
                Ok(child.try_wait().ok().flatten().is_some())
            });
            if let Err(e) = exited {
                self.kill();
                return Err(format!(
                    "SHUTDOWN ({asked:?}) did not stop it: {e}; killed it; {}",
                    log_tail(&self.log(), LOG_TAIL_LINES)
                ));
            }
        }
        self.child = None;
        let _ = fs::remove_file(self.pid_file());
        Ok(())
    }

    /// SIGKILL, and waits for the process to end.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The pid in it is dead now: do not let the watchdog signal a reused pid later.
        let _ = fs::remove_file(self.pid_file());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts one node in a fresh scratch directory under `base`, with its watchdog.
fn spawn_single(
    bins: &RedisBinaries,
    base: &Path,
    options: RedisOptions,
) -> Result<(PathBuf, Watchdog, Node), String> {
    let dir = make_scratch_dir(base, "redis")
        .map_err(|e| format!("cannot make a directory under {}: {e}", base.display()))?;
    let pid_file = dir.join("redis.pid");
    let watchdog = match Watchdog::spawn(&dir, &[(Reap::Kill, pid_file)]) {
        Ok(w) => w,
        Err(e) => {
            process::remove_dir(&dir);
            return Err(format!("cannot start the watchdog (sh): {e}"));
        }
    };
    let started = Node::new(bins.server(), dir.clone(), options, false)
        .map_err(|e| format!("cannot prepare {}: {e}", dir.display()))
        .and_then(|mut node| node.start_on_free_port().map(|()| node));
    match started {
        Ok(node) => Ok((dir, watchdog, node)),
        Err(e) => {
            process::remove_dir(&dir);
            drop(watchdog);
            Err(e)
        }
    }
}

/// A Redis server this process started from `redis-server` in a scratch directory.
///
/// It listens on 127.0.0.1 on its own port (kept across [`stop`](Self::stop) and
/// [`start`](Self::start)) and keeps its data directory across restarts, so with
/// [`RedisOptions::appendonly`] its data survives them. A watchdog kills it and removes its
/// directory when the test process ends, however it ends; dropping it does the same at once.
#[derive(Debug)]
pub struct LocalRedis {
    node: Node,
    dir: PathBuf,
    url: String,
    watchdog: Watchdog,
}

impl LocalRedis {
    pub(crate) fn create(
        bins: &RedisBinaries,
        base: &Path,
        options: RedisOptions,
    ) -> Result<Self, String> {
        let (dir, watchdog, node) = spawn_single(bins, base, options)?;
        Ok(Self {
            url: node.url(),
            node,
            dir,
            watchdog,
        })
    }

    fn control(action: &'static str, result: Result<(), String>) -> Result<(), ServerError> {
        result.map_err(|reason| ServerError::Control {
            server: "redis",
            action,
            reason,
        })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The scratch directory (data, append-only file, log), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.node.log()
    }

    /// Whether the server was started and not stopped since, as far as this handle knows.
    pub fn is_running(&self) -> bool {
        self.node.child.is_some()
    }

    /// Stops the server cleanly (`SHUTDOWN`, which fsyncs the append-only file). Does nothing
    /// when it is stopped.
    pub fn stop(&mut self) -> Result<(), ServerError> {
        let result = self.node.stop();
        Self::control("stop", result)
    }

    /// Starts the server again on the same port and data directory, and waits until it answers
    /// PING (after loading its append-only file). Does nothing when it runs.
    pub fn start(&mut self) -> Result<(), ServerError> {
        let result = self.node.start();
        Self::control("start", result)
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop()?;
        let result = self.node.start();
        Self::control("restart", result)
    }

    /// Kills the server with SIGKILL: only what its append-only file had on disk survives.
    pub fn kill(&mut self) -> Result<(), ServerError> {
        self.node.kill();
        Ok(())
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.node.kill();
        process::remove_dir(&self.dir);
        self.watchdog.finish();
    }
}

/// A three-primary Redis cluster (no replicas) started from local binaries. Its nodes are killed
/// and its directory removed when it is dropped or the test process ends.
#[derive(Debug)]
pub(crate) struct LocalRedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    watchdog: Watchdog,
}

impl LocalRedisCluster {
    /// Starts `redis-server --cluster-enabled yes` three times, joins them with
    /// `redis-cli --cluster create`, and waits for `cluster_state:ok` on every node.
    pub(crate) fn create(bins: &RedisBinaries, base: &Path) -> Result<Self, String> {
        let cli = bins
            .cli()
            .ok_or("redis-cli not found on PATH")?
            .to_path_buf();
        let dir = make_scratch_dir(base, "redis-cluster")
            .map_err(|e| format!("cannot make a directory under {}: {e}", base.display()))?;
        let node_dirs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("node{i}"))).collect();
        let pid_files: Vec<(Reap, PathBuf)> = node_dirs
            .iter()
            .map(|d| (Reap::Kill, d.join("redis.pid")))
            .collect();
        let watchdog = match Watchdog::spawn(&dir, &pid_files) {
            Ok(w) => w,
            Err(e) => {
                process::remove_dir(&dir);
                return Err(format!("cannot start the watchdog (sh): {e}"));
            }
        };
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
            watchdog,
        };
        // On failure `cluster` is dropped, which kills the nodes and removes the directory.
        for node_dir in node_dirs {
            let mut node = Node::new(bins.server(), node_dir, RedisOptions::default(), true)
                .map_err(|e| format!("cannot prepare a cluster node: {e}"))?;
            node.start_on_free_port()?;
            cluster.nodes.push(node);
        }
        cluster.join(&cli)?;
        Ok(cluster)
    }

    fn join(&self, cli: &Path) -> Result<(), String> {
        let mut cmd = Command::new(cli);
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"])
            .current_dir(&self.dir);
        run_logged(cmd, &self.dir.join("cluster-create.log"))?;
        for node in &self.nodes {
            let port = node.port;
            let mut last = String::new();
            wait_until(
                Duration::from_secs(60),
                "cluster_state:ok on every node",
                || {
                    last = command(port, &["CLUSTER", "INFO"]).unwrap_or_else(|e| e.to_string());
                    Ok(last.contains("cluster_state:ok") && last.contains("cluster_known_nodes:3"))
                },
            )
            .map_err(|e| {
                format!(
                    "node 127.0.0.1:{port}: {e}; its last CLUSTER INFO: {}",
                    last.trim()
                )
            })?;
        }
        Ok(())
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        process::remove_dir(&self.dir);
        self.watchdog.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::command;

    /// What `command` makes of `reply` from a one-shot server on a free port.
    fn answered(reply: &'static [u8]) -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("an address").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("a client");
            let mut request = [0; 64];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(reply);
        });
        let answer = command(port, &["PING"]);
        server.join().expect("the server thread");
        answer
    }

    #[test]
    fn replies_are_read_and_strange_ones_are_errors_not_panics() {
        assert_eq!(answered(b"+PONG\r\n").unwrap(), "PONG");
        assert_eq!(answered(b"$3\r\nabc\r\n").unwrap(), "abc");
        assert_eq!(answered(b"$-1\r\n").unwrap(), "");
        assert_eq!(answered(b"-ERR no\r\n").unwrap_err().to_string(), "ERR no");
        // Not Redis on the port: a multi-byte first character, an absurd or huge length.
        for reply in [&b"\xc3\xa9t\xc3\xa9\r\n"[..], b"$9223372036854775807\r\n"] {
            assert!(answered(reply).is_err(), "{reply:?}");
        }
    }
}
