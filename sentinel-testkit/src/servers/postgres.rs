//! PostgreSQL from local binaries: `initdb` into a scratch directory, `pg_ctl` to run it.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{
    self, LOG_TAIL_LINES, Reap, Watchdog, current_uid, find_in_path, is_executable, log_tail,
    make_scratch_dir, run_logged, shell_quote, traversable_by_all, user_ids,
};
use super::{Origin, ServerError};

/// The OS user PostgreSQL runs as when the tests run as root (initdb and postgres refuse root).
const POSTGRES_OS_USER: &str = "postgres";

/// How many fresh ports a start tries when the chosen one is taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// A directory holding `initdb`, `pg_ctl` and `postgres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresBinaries {
    bin_dir: PathBuf,
}

impl PostgresBinaries {
    /// Looks for a directory holding all three binaries: first each directory of `path` (a
    /// `PATH` value), then every `<root>/<version>/bin` of each of `roots` (such as
    /// `/usr/lib/postgresql`), highest version first. Symbolic links are resolved, so the
    /// directory returned is where the real binaries live.
    pub fn find(path: Option<&str>, roots: &[PathBuf]) -> Result<Self, String> {
        if let Some(initdb) = find_in_path("initdb", path) {
            let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(dir) = initdb.parent()
                && Self::complete(dir)
            {
                return Ok(Self {
                    bin_dir: dir.to_path_buf(),
                });
            }
        }
        let mut searched = Vec::new();
        for root in roots {
            let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let key = name.split('.').map(|n| n.parse().unwrap_or(0)).collect();
                    (key, entry.path().join("bin"))
                })
                .collect();
            versions.sort_by(|a, b| b.0.cmp(&a.0));
            for (_, bin) in versions {
                if Self::complete(&bin) {
                    let bin_dir = fs::canonicalize(&bin).unwrap_or(bin);
                    return Ok(Self { bin_dir });
                }
            }
            searched.push(format!("{}/*/bin", root.display()));
        }
        Err(format!(
            "initdb, pg_ctl and postgres not found together on PATH ({}) nor in {}",
            path.unwrap_or("unset"),
            if searched.is_empty() {
                "any PostgreSQL installation root".to_owned()
            } else {
                searched.join(", ")
            }
        ))
    }

    fn complete(dir: &Path) -> bool {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|name| is_executable(&dir.join(name)))
    }

    /// The directory of the binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The `initdb` binary.
    pub fn initdb(&self) -> PathBuf {
        self.bin_dir.join("initdb")
    }

    /// The `pg_ctl` binary.
    pub fn pg_ctl(&self) -> PathBuf {
        self.bin_dir.join("pg_ctl")
    }

    /// The `postgres` binary.
    pub fn postgres(&self) -> PathBuf {
        self.bin_dir.join("postgres")
    }
}

/// How a local PostgreSQL is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// The shared test server: `fsync`, `synchronous_commit` and `full_page_writes` off, and
    /// room for many connections.
    Fast,
    /// A private instance for restart tests: PostgreSQL's durable defaults.
    Durable,
}

/// How commands are run: directly, or as the `postgres` OS user when this process is root.
#[derive(Debug, Clone)]
struct RunAs {
    user: Option<(String, u32, u32)>,
    runuser: Option<PathBuf>,
}

impl RunAs {
    fn detect(path: Option<&str>) -> Result<Self, String> {
        if current_uid() != Some(0) {
            return Ok(Self {
                user: None,
                runuser: None,
            });
        }
        let (uid, gid) = user_ids(POSTGRES_OS_USER).ok_or_else(|| {
            format!(
                "running as root, and PostgreSQL refuses root, but there is no `{POSTGRES_OS_USER}` \
                 OS user to run it as"
            )
        })?;
        let runuser = find_in_path("runuser", path).or_else(|| {
            ["/usr/sbin/runuser", "/sbin/runuser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
        });
        Ok(Self {
            user: Some((POSTGRES_OS_USER.to_owned(), uid, gid)),
            runuser,
        })
    }

    fn command(&self, program: &Path, args: &[OsString], cwd: &Path) -> Command {
        let mut cmd = match (&self.user, &self.runuser) {
            (None, _) => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            (Some((user, _, _)), Some(runuser)) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", user, "--"]).arg(program).args(args);
                cmd
            }
            (Some((user, _, _)), None) => {
                let mut line = shell_quote(&program.to_string_lossy());
                for arg in args {
                    line.push(' ');
                    line.push_str(&shell_quote(&arg.to_string_lossy()));
                }
                let mut cmd = Command::new("su");
                cmd.args(["-s", "/bin/sh", user, "-c"]).arg(line);
                cmd
            }
        };
        // The caller's directory may be closed to the postgres user (root's home is 0700).
        cmd.current_dir(cwd);
        cmd
    }

    fn give(&self, path: &Path) -> Result<(), String> {
        if let Some((user, uid, gid)) = &self.user {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| format!("cannot give {} to {user}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// A PostgreSQL server this process started from local binaries in a scratch directory.
///
/// It listens on 127.0.0.1 on its own port (kept across [`stop`](Self::stop) and
/// [`start`](Self::start)), lets the `postgres` user in without a password, and has a watchdog
/// that shuts it down and removes its directory when the test process ends, however it ends.
/// Dropping it does the same at once.
#[derive(Debug)]
pub struct LocalPostgres {
    url: String,
    port: u16,
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    commands_log: PathBuf,
    pg_ctl: PathBuf,
    run_as: RunAs,
    running: bool,
    watchdog: Watchdog,
}

impl LocalPostgres {
    /// Makes a cluster with `initdb` in a new directory under `base` and starts it on a free port.
    pub(crate) fn create(
        bins: &PostgresBinaries,
        path: Option<&str>,
        base: &Path,
        profile: Profile,
    ) -> Result<Self, String> {
        let run_as = RunAs::detect(path)?;
        let base = if run_as.user.is_some() && !traversable_by_all(base) {
            Path::new("/tmp")
        } else {
            base
        };
        let dir = make_scratch_dir(base, "postgres")
            .map_err(|e| format!("cannot make a directory under {}: {e}", base.display()))?;
        let data = dir.join("data");
        let watchdog = match Watchdog::spawn(&dir, &[(Reap::Quit, data.join("postmaster.pid"))]) {
            Ok(w) => w,
            Err(e) => {
                process::remove_dir(&dir);
                return Err(format!("cannot start the watchdog (sh): {e}"));
            }
        };
        let mut server = Self {
            url: String::new(),
            port: 0,
            log: dir.join("postgres.log"),
            commands_log: dir.join("commands.log"),
            data,
            dir,
            pg_ctl: bins.pg_ctl(),
            run_as,
            running: false,
            watchdog,
        };
        // On failure `server` is dropped here, which removes its directory.
        server.init(bins, profile)?;
        server.start_on_free_port()?;
        Ok(server)
    }

    fn init(&mut self, bins: &PostgresBinaries, profile: Profile) -> Result<(), String> {
        self.run_as.give(&self.dir)?;
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data.clone().into(),
            "-U".into(),
            "postgres".into(),
            "--auth=trust".into(),
            "--encoding=UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ];
        let cmd = self.run_as.command(&bins.initdb(), &args, &self.dir);
        run_logged(cmd, &self.commands_log)?;

        let mut settings = String::from("\n# sentinel-testkit\n");
        let _ = writeln!(settings, "listen_addresses = '127.0.0.1'");
        // A Unix socket path is limited to about 100 bytes: under a long TMPDIR, TCP only.
        let socket_dir = self.dir.display().to_string();
        let socket_dir = if socket_dir.len() + "/.s.PGSQL.65535".len() < 100 {
            socket_dir.replace('\'', "''")
        } else {
            String::new()
        };
        let _ = writeln!(settings, "unix_socket_directories = '{socket_dir}'");
        match profile {
            Profile::Fast => settings.push_str(
                "max_connections = 300\nfsync = off\nsynchronous_commit = off\n\
                 full_page_writes = off\n",
            ),
            Profile::Durable => settings.push_str("max_connections = 100\nfsync = on\n"),
        }
        let conf = self.data.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))
    }

    fn start_on_free_port(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = process::free_port().map_err(|e| format!("no free port: {e}"))?;
            self.set_port(port);
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) if log_tail(&self.log, LOG_TAIL_LINES).contains("already in use") => {
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(format!(
            "no port could be bound in {PORT_ATTEMPTS} tries: {last}"
        ))
    }

    fn set_port(&mut self, port: u16) {
        self.port = port;
        self.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut all: Vec<OsString> = vec!["-D".into(), self.data.clone().into()];
        all.extend(args.iter().map(OsString::from));
        self.run_as.command(&self.pg_ctl, &all, &self.dir)
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let port = format!("-p {}", self.port);
        let log = self.log.display().to_string();
        let cmd = self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &port, "start"]);
        let started = run_logged(cmd, &self.commands_log);
        // `pg_ctl -w` has seen the server ready, unless it failed; either way it may be running.
        self.running = self.data.join("postmaster.pid").exists();
        started.map_err(|e| format!("{e}\n{}", log_tail(&self.log, LOG_TAIL_LINES)))?;
        if process::port_answers(self.port) {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl said the server started, but nothing answers on 127.0.0.1:{}; {}",
                self.port,
                log_tail(&self.log, LOG_TAIL_LINES)
            ))
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        let cmd = self.pg_ctl(&["-m", mode, "-w", "-t", "60", "stop"]);
        run_logged(cmd, &self.commands_log)
            .map_err(|e| format!("{e}\n{}", log_tail(&self.log, LOG_TAIL_LINES)))?;
        self.running = false;
        Ok(())
    }

    fn control(action: &'static str, result: Result<(), String>) -> Result<(), ServerError> {
        result.map_err(|reason| ServerError::Control {
            server: "postgres",
            action,
            reason,
        })
    }

    /// An admin URL: `postgres://postgres@127.0.0.1:<port>/postgres` (trust auth, no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The scratch directory (data directory, logs, Unix socket), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the server was started and not stopped since, as far as this handle knows.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`). Does nothing when it is stopped.
    pub fn stop(&mut self) -> Result<(), ServerError> {
        let result = self.pg_ctl_stop("fast");
        Self::control("stop", result)
    }

    /// Starts the server again on the same port and data. Does nothing when it runs.
    pub fn start(&mut self) -> Result<(), ServerError> {
        if self.running {
            return Ok(());
        }
        let result = self.pg_ctl_start();
        Self::control("start", result)
    }

    /// Stops the server cleanly and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop()?;
        let result = self.pg_ctl_start();
        Self::control("restart", result)
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`: no checkpoint, crash recovery on
    /// the next start). Does nothing when it is stopped.
    pub fn kill(&mut self) -> Result<(), ServerError> {
        let result = self.pg_ctl_stop("immediate");
        Self::control("kill", result)
    }

    /// Where this server came from, for [`super::PostgresServer::origin`].
    pub(crate) fn origin(&self) -> Origin {
        Origin::Local {
            dir: self.dir.clone(),
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
        process::remove_dir(&self.dir);
        self.watchdog.finish();
    }
}
