//! Process plumbing shared by the local servers: scratch directories, free ports, commands whose
//! output goes to a log file, and the watchdog that stops a server when the test process is gone.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a single helper command (initdb, pg_ctl, redis-cli) may run before it is killed.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How many lines of a log an error message quotes.
pub(crate) const LOG_TAIL_LINES: usize = 25;

/// A port on 127.0.0.1 that nothing listened on a moment ago. Another process may take it
/// before the server binds it: callers retry on a new port when the start fails that way.
pub(crate) fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn port_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Polls `check` every 25 ms until it says done, fails, or `timeout` passes.
pub(crate) fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Quotes `s` for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `lines` lines of the file at `path` (at most 64 KiB are read), or a note that it
/// could not be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                format!("(log {} is empty)", path.display())
            } else {
                format!(
                    "last lines of {}:\n    {}",
                    path.display(),
                    tail.join("\n    ")
                )
            }
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}

/// The effective user id of this process (the owner of `/proc/self`, else `id -u`).
pub(crate) fn current_uid() -> Option<u32> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Some(meta.uid());
    }
    let out = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The uid and gid of the OS user `name`, from /etc/passwd or else `id`.
pub(crate) fn user_ids(name: &str) -> Option<(u32, u32)> {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| passwd_ids(&passwd, name))
        .or_else(|| id_command_ids(name))
}

/// The uid and gid of `name` in the text of a passwd file.
fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == name {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// The uid and gid of `name` as `id -u` and `id -g` print them.
fn id_command_ids(name: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `name` in the directories of a `PATH` value.
pub(crate) fn find_in_path(name: &str, path: Option<&str>) -> Option<PathBuf> {
    std::env::split_paths(OsStr::new(path?))
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether every directory from `/` down to `dir` can be entered by any user, so that a server
/// running as another OS user can reach a directory made below it.
pub(crate) fn traversable_by_all(dir: &Path) -> bool {
    dir.ancestors().all(|d| {
        fs::metadata(d)
            .map(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// A fresh directory `<base>/sentinel-testkit-<pid>-<n>-<kind>`, made with mode 0700.
pub(crate) fn make_scratch_dir(base: &Path, kind: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(base)?;
    let mut last_error = None;
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "sentinel-testkit-{}-{n}-{nanos:x}-{kind}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free scratch directory name")))
}

/// Opens `path` for appending (creating it), to receive a child's stdout and stderr.
pub(crate) fn append_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Describes a command the way a shell would show it.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` to completion with its output appended to `log` (never a pipe: a server it forks
/// may keep its stdout open forever) and no stdin; kills it after [`COMMAND_TIMEOUT`].
pub(crate) fn run_logged(mut cmd: Command, log: &Path) -> Result<(), String> {
    let shown = describe(&cmd);
    let out = append_log(log).map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    if let Ok(mut header) = out.try_clone() {
        let _ = writeln!(header, "$ {shown}");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!(
                    "`{shown}` failed ({status}); {}",
                    log_tail(log, LOG_TAIL_LINES)
                ));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown}` did not finish within {COMMAND_TIMEOUT:?}; {}",
                    log_tail(log, LOG_TAIL_LINES)
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for `{shown}`: {e}")),
        }
    }
}

/// Waits up to `timeout` for `child` to exit; kills it when it does not.
pub(crate) fn wait_or_kill(child: &mut Child, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What the watchdog does to a server's process when the test process is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reap {
    /// SIGQUIT: a PostgreSQL postmaster's immediate shutdown.
    Quit,
    /// SIGKILL.
    Kill,
}

/// The watchdog: it blocks reading a pipe whose only writer is this process. When the process
/// ends in any way (normal exit, panic, SIGKILL), the kernel closes the pipe, `read` sees EOF,
/// and the script signals every pid named in the given pid files, waits for them, and removes
/// the scratch directory. Terminal signals are ignored so a Ctrl-C of `cargo test` cannot kill
/// the watchdog before it has cleaned up.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT QUIT TERM PIPE
dir=$1
shift
while IFS= read -r _line; do :; done
[ -d "$dir" ] || exit 0
pids=
for spec in "$@"; do
  sig=${spec%%:*}
  file=${spec#*:}
  [ -f "$file" ] || continue
  pid=$(head -n 1 "$file" 2>/dev/null)
  case "$pid" in ''|*[!0-9]*) continue ;; esac
  kill -"$sig" "$pid" 2>/dev/null && pids="$pids $pid"
done
i=0
while [ -n "$pids" ] && [ "$i" -lt 100 ]; do
  alive=
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
  pids=$alive
  [ -n "$pids" ] && sleep 0.1
  i=$((i + 1))
done
for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
rm -rf "$dir"
"#;

/// A `sh` process that stops the servers of a scratch directory and removes it once this test
/// process has exited (see `WATCHDOG_SCRIPT`). Statics are never dropped, so this is what ends
/// the shared servers.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Option<Child>,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts a watchdog for `dir` that will signal the pids in `pid_files`.
    pub(crate) fn spawn(dir: &Path, pid_files: &[(Reap, PathBuf)]) -> io::Result<Self> {
        let mut args = vec![dir.as_os_str().to_owned()];
        for (reap, file) in pid_files {
            let sig = match reap {
                Reap::Quit => "QUIT",
                Reap::Kill => "KILL",
            };
            args.push(format!("{sig}:{}", file.display()).into());
        }
        Self::spawn_script(WATCHDOG_SCRIPT, &args)
    }

    /// Starts `sh -c script` with `args` as `$1...`, its stdin a pipe that reaches EOF when this
    /// process is gone (or [`finish`](Self::finish) is called). The script must ignore terminal
    /// signals and read stdin to EOF before it acts.
    pub(crate) fn spawn_script(script: &str, args: &[std::ffi::OsString]) -> io::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sentinel-testkit-watchdog")
            .args(args);
        let mut child = cmd
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Self {
            child: Some(child),
            pipe,
        })
    }

    /// Lets the watchdog run its cleanup now (the caller has usually done it already) and waits
    /// for it to finish.
    pub(crate) fn finish(&mut self) {
        drop(self.pipe.take());
        if let Some(mut child) = self.child.take() {
            let _ = wait_or_kill(&mut child, Duration::from_secs(15));
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Removes a scratch directory, tolerating one that is already gone.
pub(crate) fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        // A server still writing into it can make the first pass fail; try once more.
        thread::sleep(Duration::from_millis(100));
        let _ = fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(kind: &str) -> PathBuf {
        make_scratch_dir(&std::env::temp_dir(), kind).expect("a scratch directory")
    }

    #[test]
    fn a_port_answers_while_something_listens_on_it() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert!(port_answers(port));
        drop(listener);
        assert!(!port_answers(port));
    }

    #[test]
    fn shell_quoting_survives_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        for text in ["plain", "it's", "$HOME `id` \"x\" \\ ;|&", "", "'''"] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(text)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), text);
        }
    }

    #[test]
    fn a_log_tail_quotes_the_last_lines() {
        let dir = scratch("log-tail");
        let log = dir.join("server.log");
        assert!(log_tail(&log, 3).contains("unreadable"), "a missing log");
        fs::write(&log, "").expect("write");
        assert_eq!(
            log_tail(&log, 3),
            format!("(log {} is empty)", log.display())
        );
        // More than the 64 KiB it reads: the last lines are still whole and in order.
        let lines: Vec<String> = (0..10_000).map(|i| format!("line {i:05}")).collect();
        fs::write(&log, lines.join("\n")).expect("write");
        assert_eq!(
            log_tail(&log, 3),
            format!(
                "last lines of {}:\n    line 09997\n    line 09998\n    line 09999",
                log.display()
            )
        );
        // A full tail of long lines (4 KiB here) is all there.
        let long: Vec<String> = (0..1_000)
            .map(|i| format!("{i:04} {}", "x".repeat(160)))
            .collect();
        fs::write(&log, long.join("\n")).expect("write");
        let tail = log_tail(&log, LOG_TAIL_LINES);
        assert_eq!(tail.lines().count(), LOG_TAIL_LINES + 1, "{tail}");
        assert!(
            tail.contains(&format!("\n    0975 {}\n", "x".repeat(160))),
            "{tail}"
        );
        remove_dir(&dir);
        assert!(!dir.exists());
        remove_dir(&dir); // already gone: nothing to do
    }

    #[test]
    fn user_ids_match_the_system() {
        let id = |args: &[&str]| -> u32 {
            let out = Command::new("id").args(args).output().expect("id runs");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a number")
        };
        assert_eq!(current_uid(), Some(id(&["-u"])));
        assert_eq!(user_ids("root"), Some((0, 0)));
        assert_eq!(user_ids("no-such-user-sentinel"), None);
        assert_eq!(id_command_ids("root"), Some((0, 0)));
        assert_eq!(id_command_ids("no-such-user-sentinel"), None);
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      short:x:7\n\
                      pg:x:105:109::/var/lib/postgresql:/bin/sh\n\
                      odd:x:none:1::/:/bin/sh\n";
        assert_eq!(passwd_ids(passwd, "pg"), Some((105, 109)));
        assert_eq!(passwd_ids(passwd, "root"), Some((0, 0)));
        assert_eq!(passwd_ids(passwd, "short"), None, "too few fields");
        assert_eq!(passwd_ids(passwd, "odd"), None, "not a number");
        assert_eq!(passwd_ids(passwd, "p"), None, "names match whole");
    }

    #[test]
    fn executables_and_traversable_directories_are_told_apart() {
        let dir = scratch("modes");
        let file = dir.join("tool");
        fs::write(&file, "#!/bin/sh\n").expect("write");
        for (mode, executable) in [(0o644, false), (0o744, true), (0o610, true), (0o601, true)] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(is_executable(&file), executable, "mode {mode:o}");
        }
        assert!(!is_executable(&dir), "a directory");
        assert!(!is_executable(&dir.join("missing")));

        // The scratch directory itself is 0700: nobody else can enter it.
        assert_eq!(
            fs::metadata(&dir).expect("stat").permissions().mode() & 0o777,
            0o700
        );
        assert!(
            traversable_by_all(Path::new("/")),
            "the root is open to all"
        );
        assert!(!traversable_by_all(&dir));
        let inner = dir.join("inner");
        fs::create_dir(&inner).expect("mkdir");
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o711)).expect("chmod");
        assert!(!traversable_by_all(&inner), "its parent is closed");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).expect("chmod");
        if traversable_by_all(&std::env::temp_dir()) {
            assert!(traversable_by_all(&inner));
            fs::set_permissions(&inner, fs::Permissions::from_mode(0o710)).expect("chmod");
            assert!(!traversable_by_all(&inner), "closed to others");
            assert!(!traversable_by_all(&file), "a file is not a directory");
        }
        remove_dir(&dir);
    }

    #[test]
    fn scratch_directories_are_fresh_and_private() {
        let base = scratch("base").join("not-yet");
        let a = make_scratch_dir(&base, "x").expect("made with its base");
        let b = make_scratch_dir(&base, "x").expect("made");
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        remove_dir(base.parent().expect("the outer scratch directory"));
    }

    #[test]
    fn commands_run_with_their_output_in_the_log() {
        let dir = scratch("run");
        let log = dir.join("run.log");
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo fine"]);
        assert_eq!(describe(&ok), "sh -c echo fine");
        run_logged(ok, &log).expect("a command that succeeds");
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo boom; exit 3"]);
        let error = run_logged(failing, &log).expect_err("a command that fails");
        assert!(
            error.starts_with("`sh -c echo boom; exit 3` failed"),
            "{error}"
        );
        assert!(error.contains("    boom"), "{error}");
        let text = fs::read_to_string(&log).expect("the log");
        assert!(
            text.starts_with("$ sh -c echo fine\nfine\n$ sh -c echo boom; exit 3\nboom\n"),
            "{text}"
        );
        assert!(run_logged(Command::new(dir.join("missing")), &log).is_err());
        remove_dir(&dir);
    }

    #[test]
    fn a_child_is_waited_for_or_killed() {
        let mut quick = Command::new("sh")
            .args(["-c", "sleep 0.2"])
            .spawn()
            .expect("spawn");
        wait_or_kill(&mut quick, Duration::from_secs(30)).expect("waited");
        let status = quick.try_wait().expect("status").expect("exited");
        assert!(status.success(), "ran to its end, not killed: {status}");

        let mut slow = Command::new("sleep").arg("30").spawn().expect("spawn");
        let start = Instant::now();
        wait_or_kill(&mut slow, Duration::from_millis(100)).expect("killed");
        let status = slow.try_wait().expect("status").expect("gone");
        assert!(!status.success(), "killed: {status}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_watchdog_acts_when_its_pipe_closes() {
        let dir = scratch("watchdog");
        let script =
            "trap '' HUP INT QUIT TERM PIPE\nwhile IFS= read -r _l; do :; done\ntouch \"$1\"";
        let finished = dir.join("finished");
        let mut watchdog =
            Watchdog::spawn_script(script, &[finished.clone().into()]).expect("spawn");
        assert!(!finished.exists(), "waits while the pipe is open");
        watchdog.finish();
        assert!(finished.exists(), "finish closes the pipe and waits");

        let dropped = dir.join("dropped");
        drop(Watchdog::spawn_script(script, &[dropped.clone().into()]).expect("spawn"));
        assert!(dropped.exists(), "dropping it does the same");
        remove_dir(&dir);
    }
}
