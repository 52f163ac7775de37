//! The test servers: how they are resolved, that local ones really start and answer, that private
//! ones survive restarts, and that none outlives the test process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sentinel_testkit::servers::{
    self, AppendFsync, AttemptSource, Origin, POSTGRES_URL_VAR, REDIS_CLUSTER_URLS_VAR,
    REDIS_URL_VAR, REQUIRE_BACKENDS_VAR, RedisOptions, Resolver, ServerError,
};

/// The variable that turns [`child_probe`] on in a re-run of this binary.
const CHILD_VAR: &str = "SENTINEL_TESTKIT_SERVERS_CHILD";

/// A resolver that sees only this process's `PATH` (and `TMPDIR`): no URL variables, no Docker,
/// so the local-binaries step is what answers.
fn local_resolver() -> Resolver {
    let mut vars = vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())];
    if let Ok(tmp) = std::env::var("TMPDIR") {
        vars.push(("TMPDIR".to_owned(), tmp));
    }
    Resolver::from_vars(vars).docker(false)
}

/// A resolver for which nothing exists: no variables, no `PATH`, no PostgreSQL install root.
fn empty_resolver() -> Resolver {
    Resolver::from_vars(Vec::<(String, String)>::new()).postgres_roots(Vec::new())
}

fn port_of(url: &str) -> u16 {
    let after_host = url.rsplit(':').next().unwrap();
    after_host
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {url}"))
}

fn host_of(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap();
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    host_port.rsplit_once(':').unwrap().0.to_owned()
}

/// PING over a plain TCP connection; the raw reply line.
fn redis_ping(host: &str, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((host, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn pg_isready(port: u16) -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pg_isready runs")
        .success()
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql:?} on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn local_dir(origin: &Origin) -> PathBuf {
    match origin {
        Origin::Local { dir } => dir.clone(),
        other => panic!("expected a local server, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution order
// ---------------------------------------------------------------------------------------------

#[test]
fn environment_urls_win_over_local_binaries() {
    let resolver = Resolver::from_vars([
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        (
            POSTGRES_URL_VAR,
            "postgres://ci@db.example:6543/admin".to_owned(),
        ),
        (REDIS_URL_VAR, "redis://cache.example:7000".to_owned()),
        (
            REDIS_CLUSTER_URLS_VAR,
            " redis://n1:7001, redis://n2:7002,,redis://n3:7003 ".to_owned(),
        ),
    ]);
    // The binaries are there, but the environment comes first and nothing is started.
    assert!(resolver.postgres_binaries().is_ok());

    let pg = resolver.postgres().unwrap();
    assert_eq!(pg.url(), "postgres://ci@db.example:6543/admin");
    assert_eq!(
        pg.origin(),
        &Origin::Environment {
            variable: POSTGRES_URL_VAR
        }
    );

    let redis = resolver.redis().unwrap();
    assert_eq!(redis.url(), "redis://cache.example:7000");
    assert_eq!(
        redis.origin(),
        &Origin::Environment {
            variable: REDIS_URL_VAR
        }
    );

    let cluster = resolver.redis_cluster().unwrap();
    assert_eq!(
        cluster.urls(),
        ["redis://n1:7001", "redis://n2:7002", "redis://n3:7003"]
    );
    assert_eq!(
        cluster.origin(),
        &Origin::Environment {
            variable: REDIS_CLUSTER_URLS_VAR
        }
    );
}

#[test]
fn nothing_available_names_every_attempt_in_order() {
    // An empty variable counts as unset.
    let resolver =
        Resolver::from_vars([(POSTGRES_URL_VAR, " "), ("PATH", "")]).postgres_roots(Vec::new());
    let docker_reason = if cfg!(feature = "docker") {
        None
    } else {
        Some(servers::DOCKER_NOT_COMPILED)
    };

    let checks: [(&str, &str, Result<(), ServerError>); 3] = [
        ("postgres", POSTGRES_URL_VAR, resolver.postgres().map(drop)),
        ("redis", REDIS_URL_VAR, resolver.redis().map(drop)),
        (
            "redis cluster",
            REDIS_CLUSTER_URLS_VAR,
            resolver.redis_cluster().map(drop),
        ),
    ];
    for (server, var, result) in checks {
        let error = result.unwrap_err();
        assert_eq!(error.server(), server);
        let attempts = error.attempts();
        let sources: Vec<&AttemptSource> = attempts.iter().map(|a| &a.source).collect();
        assert_eq!(
            sources,
            [
                &AttemptSource::Environment(var),
                &AttemptSource::LocalBinaries,
                &AttemptSource::Docker
            ]
        );
        assert_eq!(attempts[0].reason, "not set");
        assert!(attempts[1].reason.contains("not found"), "{attempts:?}");
        if let Some(reason) = docker_reason {
            assert_eq!(attempts[2].reason, reason);
        }

        let text = error.to_string();
        assert!(
            text.starts_with(&format!("no {server} server available; tried, in order:")),
            "{text}"
        );
        assert!(
            text.contains(&format!("1. environment variable {var}: not set")),
            "{text}"
        );
        assert!(text.contains("2. local binaries: "), "{text}");
        assert!(text.contains("3. docker: "), "{text}");
        if docker_reason.is_some() {
            assert!(
                text.contains(
                    "docker: support not compiled in (enable the `docker` feature of sentinel-testkit)"
                ),
                "{text}"
            );
        }
        // It is a std error.
        let _: &dyn std::error::Error = &error;
    }

    // Private instances only ever try local binaries.
    let error = empty_resolver().spawn_postgres().unwrap_err();
    assert_eq!(error.attempts().len(), 1);
    assert_eq!(error.attempts()[0].source, AttemptSource::LocalBinaries);
    let error = empty_resolver()
        .spawn_redis(RedisOptions::default())
        .unwrap_err();
    assert!(
        error.to_string().contains("redis-server not found"),
        "{error}"
    );
}

fn fake_postgres_bin(dir: &Path, names: &[&str]) {
    fs::create_dir_all(dir).unwrap();
    for name in names {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn postgres_binaries_are_found_on_path_then_in_install_roots() {
    let scratch =
        std::env::temp_dir().join(format!("sentinel-testkit-lookup-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    let root = scratch.join("lib-postgresql");
    let all = ["initdb", "pg_ctl", "postgres"];
    fake_postgres_bin(&root.join("9.6/bin"), &all);
    fake_postgres_bin(&root.join("13/bin"), &all);
    fake_postgres_bin(&root.join("16/bin"), &["initdb"]); // incomplete: skipped
    let on_path = scratch.join("on-path");
    fake_postgres_bin(&on_path, &all);

    // Not on PATH: the highest complete version under the root.
    let found = Resolver::from_vars([("PATH", "/nonexistent")])
        .postgres_roots([root.clone()])
        .postgres_binaries()
        .unwrap();
    assert_eq!(
        found.bin_dir(),
        fs::canonicalize(root.join("13/bin")).unwrap()
    );
    assert_eq!(found.initdb(), found.bin_dir().join("initdb"));

    // On PATH: PATH wins.
    let found = Resolver::from_vars([("PATH", on_path.display().to_string())])
        .postgres_roots([root.clone()])
        .postgres_binaries()
        .unwrap();
    assert_eq!(found.bin_dir(), fs::canonicalize(&on_path).unwrap());

    // Neither: the error says where it looked.
    let error = Resolver::from_vars([("PATH", "/nonexistent")])
        .postgres_roots([scratch.join("missing")])
        .postgres_binaries()
        .unwrap_err();
    assert!(error.contains("missing/*/bin"), "{error}");
    fs::remove_dir_all(&scratch).unwrap();

    // This machine's real install, with PATH empty: found through /usr/lib/postgresql/*/bin.
    if Path::new(servers::POSTGRES_INSTALL_ROOT).is_dir() {
        let found = Resolver::from_vars([("PATH", "")])
            .postgres_binaries()
            .unwrap();
        assert!(
            found.bin_dir().starts_with(servers::POSTGRES_INSTALL_ROOT),
            "{found:?}"
        );
    } else {
        eprintln!(
            "note: no {} on this machine",
            servers::POSTGRES_INSTALL_ROOT
        );
    }
}

#[test]
fn the_required_flag_is_read_from_the_environment() {
    assert!(Resolver::from_vars([(REQUIRE_BACKENDS_VAR, "1")]).backends_required());
    assert!(Resolver::from_vars([(REQUIRE_BACKENDS_VAR, "true")]).backends_required());
    assert!(!Resolver::from_vars([(REQUIRE_BACKENDS_VAR, "0")]).backends_required());
    assert!(!Resolver::from_vars([(REQUIRE_BACKENDS_VAR, "")]).backends_required());
    assert!(!empty_resolver().backends_required());
}

#[test]
fn require_panics_when_required_and_skips_loudly_otherwise() {
    let missing = || empty_resolver().docker(false).postgres().map(drop);

    assert_eq!(servers::require_with(true, "postgres", Ok(7)), Some(7));
    assert_eq!(servers::require_with(false, "postgres", Ok(7)), Some(7));
    // (`require_with(false, ..)` with an error prints the SKIPPED line: that case runs in a
    // child process below, so this binary's own output does not claim a skip.)

    let panic = std::panic::catch_unwind(|| servers::require_with(true, "postgres", missing()))
        .unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("postgres suite: SENTINEL_REQUIRE_BACKENDS=1 requires its server"),
        "{message}"
    );
    assert!(
        message.contains("1. environment variable SENTINEL_TEST_POSTGRES_URL: not set"),
        "{message}"
    );
    assert!(message.contains("2. local binaries:"), "{message}");

    let line = servers::skipped_message("postgres", &missing().unwrap_err());
    assert!(
        line.starts_with("SKIPPED: postgres suite: no postgres server available"),
        "{line}"
    );
}

/// Runs this test binary again with only [`child_probe`] selected, in `mode`.
fn rerun_self(mode: &str, required: Option<&str>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_probe",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_VAR, mode)
    .env_remove(REQUIRE_BACKENDS_VAR)
    .stdin(Stdio::null());
    if let Some(value) = required {
        cmd.env(REQUIRE_BACKENDS_VAR, value);
    }
    cmd
}

#[test]
fn require_reads_the_process_flag_end_to_end() {
    // Without the flag: the test passes, and stderr has the SKIPPED line despite capture.
    let out = rerun_self("require", None).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr.contains("SKIPPED: postgres suite: no postgres server available; tried, in order:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1. environment variable SENTINEL_TEST_POSTGRES_URL: not set"),
        "{stderr}"
    );

    // With SENTINEL_REQUIRE_BACKENDS=1: the test fails with the reasons.
    let out = rerun_self("require", Some("1")).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("postgres suite: SENTINEL_REQUIRE_BACKENDS=1 requires its server"),
        "{all}"
    );
    assert!(!all.contains("SKIPPED:"), "{all}");
}

// ---------------------------------------------------------------------------------------------
// Local servers
// ---------------------------------------------------------------------------------------------

#[test]
fn local_postgres_starts_answers_and_goes_away_on_drop() {
    let started = Instant::now();
    let pg = local_resolver().postgres().unwrap();
    eprintln!("local postgres (initdb + start): {:?}", started.elapsed());
    let dir = local_dir(pg.origin());
    let port = port_of(pg.url());
    assert!(
        pg.url().starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        pg.url()
    );
    assert!(pg_isready(port));
    assert_eq!(psql(pg.url(), "select 1"), "1");
    // Tuned for speed, as the shared server is.
    assert_eq!(psql(pg.url(), "show fsync"), "off");
    // Callers create their own databases.
    psql(pg.url(), "create database suite_a");
    let db_url = format!("{}/suite_a", pg.url().rsplit_once('/').unwrap().0);
    assert_eq!(psql(&db_url, "select current_database()"), "suite_a");

    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!answers(port));
}

#[test]
fn local_redis_starts_answers_and_goes_away_on_drop() {
    let started = Instant::now();
    let redis = local_resolver().redis().unwrap();
    eprintln!("local redis: {:?}", started.elapsed());
    let dir = local_dir(redis.origin());
    let port = port_of(redis.url());
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis_ping("127.0.0.1", port).unwrap(), "+PONG\r\n");

    drop(redis);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!answers(port));
}

#[test]
fn local_redis_cluster_has_three_primaries_and_all_slots() {
    let started = Instant::now();
    let cluster = local_resolver().redis_cluster().unwrap();
    eprintln!("local redis cluster (3 primaries): {:?}", started.elapsed());
    let dir = local_dir(cluster.origin());
    let ports: Vec<u16> = cluster.urls().iter().map(|u| port_of(u)).collect();
    assert_eq!(ports.len(), 3);
    for &port in &ports {
        let info = redis_cli(port, &["cluster", "info"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
        let nodes = redis_cli(port, &["cluster", "nodes"]);
        let primaries = nodes
            .lines()
            .filter(|l| l.contains("master") && l.contains("connected"))
            .count();
        assert_eq!(primaries, 3, "{nodes}");
        assert!(!nodes.contains("slave"), "{nodes}");
    }
    // Keys land on the node owning their slot; a cluster-aware client follows redirections.
    for key in ["a", "b", "c", "{user1}x"] {
        assert_eq!(redis_cli(ports[0], &["-c", "set", key, "v"]), "OK");
        assert_eq!(redis_cli(ports[1], &["-c", "get", key]), "v");
    }

    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(ports.iter().all(|&p| !answers(p)));
}

#[test]
fn shared_servers_are_resolved_once_and_answer() {
    let pg = servers::postgres().unwrap();
    assert!(std::ptr::eq(pg, servers::postgres().unwrap()));
    assert_eq!(psql(pg.url(), "select 1"), "1");

    let redis = servers::redis().unwrap();
    assert!(std::ptr::eq(redis, servers::redis().unwrap()));
    assert_eq!(
        redis_ping(&host_of(redis.url()), port_of(redis.url())).unwrap(),
        "+PONG\r\n"
    );

    let cluster = servers::redis_cluster().unwrap();
    assert!(std::ptr::eq(cluster, servers::redis_cluster().unwrap()));
    assert_eq!(cluster.urls().len(), 3);
    let first = &cluster.urls()[0];
    assert_eq!(
        redis_ping(&host_of(first), port_of(first)).unwrap(),
        "+PONG\r\n"
    );
    eprintln!(
        "shared: postgres {:?}, redis {:?}, cluster {:?}",
        pg.origin(),
        redis.origin(),
        cluster.origin()
    );
}

// ---------------------------------------------------------------------------------------------
// Private instances
// ---------------------------------------------------------------------------------------------

#[test]
fn spawn_redis_with_aof_keeps_data_across_restart_and_kill() {
    let started = Instant::now();
    let mut redis = local_resolver()
        .spawn_redis(RedisOptions {
            appendonly: true,
            appendfsync: AppendFsync::Always,
        })
        .unwrap();
    eprintln!("spawn_redis (AOF): {:?}", started.elapsed());
    let port = redis.port();
    let url = redis.url().to_owned();
    assert_eq!(redis_cli(port, &["set", "k", "v1"]), "OK");

    let started = Instant::now();
    redis.restart().unwrap();
    eprintln!("redis restart: {:?}", started.elapsed());
    assert_eq!(redis.url(), url);
    assert_eq!(redis_cli(port, &["get", "k"]), "v1");

    // appendfsync always: an acknowledged write survives SIGKILL.
    assert_eq!(redis_cli(port, &["set", "k2", "v2"]), "OK");
    redis.kill().unwrap();
    assert!(!answers(port));
    assert!(!redis.is_running());
    redis.start().unwrap();
    assert_eq!(redis_cli(port, &["get", "k2"]), "v2");

    redis.stop().unwrap();
    assert!(!answers(port));
    redis.stop().unwrap(); // stopping a stopped server is fine
    redis.start().unwrap();
    assert_eq!(redis_cli(port, &["get", "k"]), "v1");

    let dir = redis.dir().to_path_buf();
    drop(redis);
    assert!(!dir.exists());
    assert!(!answers(port));
}

#[test]
fn spawn_redis_without_aof_starts_empty_after_restart() {
    let mut redis = local_resolver()
        .spawn_redis(RedisOptions::default())
        .unwrap();
    let port = redis.port();
    assert_eq!(redis_cli(port, &["set", "k", "v"]), "OK");
    redis.restart().unwrap();
    assert_eq!(redis_cli(port, &["get", "k"]), "");
}

#[test]
fn spawn_postgres_restart_stop_start_and_kill_keep_data_and_url() {
    let started = Instant::now();
    let mut pg = local_resolver().spawn_postgres().unwrap();
    eprintln!("spawn_postgres (initdb + start): {:?}", started.elapsed());
    let url = pg.url().to_owned();
    let port = pg.port();
    assert_eq!(psql(&url, "show fsync"), "on");
    psql(&url, "create table t (x int); insert into t values (42)");

    let started = Instant::now();
    pg.restart().unwrap();
    eprintln!("postgres restart: {:?}", started.elapsed());
    assert_eq!(pg.url(), url);
    assert_eq!(psql(&url, "select x from t"), "42");

    pg.stop().unwrap();
    assert!(!pg.is_running());
    assert!(!pg_isready(port));
    pg.start().unwrap();
    assert!(pg_isready(port));
    psql(&url, "insert into t values (43)");

    // Immediate shutdown: committed rows come back through crash recovery.
    pg.kill().unwrap();
    assert!(!answers(port));
    pg.start().unwrap();
    assert_eq!(
        psql(&url, "select string_agg(x::text, ',' order by x) from t"),
        "42,43"
    );

    let dir = pg.dir().to_path_buf();
    assert!(pg.log_path().starts_with(&dir));
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!answers(port));
}

// ---------------------------------------------------------------------------------------------
// Nothing outlives the test process
// ---------------------------------------------------------------------------------------------

#[test]
fn servers_die_with_a_killed_test_process() {
    let mut child = rerun_self("orphan", None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest may have written `test child_probe ... ` on the same line first.
        .find_map(|line| line.find("READY ").map(|at| line[at..].to_owned()));
    let Some(ready) = ready else {
        let _ = child.kill();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        panic!("the child never got its servers up: {stderr}");
    };
    let mut ports = Vec::new();
    let mut dirs = Vec::new();
    for field in ready.split_whitespace().skip(1) {
        let (key, value) = field.split_once('=').unwrap();
        if key.ends_with("port") {
            ports.push(value.parse::<u16>().unwrap());
        } else {
            dirs.push(PathBuf::from(value));
        }
    }
    assert_eq!(ports.len(), 6, "{ready}");
    assert_eq!(dirs.len(), 4, "{ready}");
    assert!(ports.iter().all(|&p| answers(p)), "{ready}");
    assert!(dirs.iter().all(|d| d.exists()), "{ready}");

    // SIGKILL: no destructor, no atexit, nothing runs in the child.
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    eventually(
        "the killed process's servers to stop",
        Duration::from_secs(30),
        || ports.iter().all(|&p| !answers(p)),
    );
    eventually(
        "the killed process's directories to go",
        Duration::from_secs(30),
        || dirs.iter().all(|d| !d.exists()),
    );
    eprintln!("orphans cleaned up {:?} after the kill", started.elapsed());
}

/// Not a test on its own: the body of the re-runs above, selected by [`CHILD_VAR`].
#[test]
fn child_probe() {
    let Ok(mode) = std::env::var(CHILD_VAR) else {
        return;
    };
    match mode.as_str() {
        "require" => {
            let missing = empty_resolver().docker(false).postgres();
            assert!(servers::require("postgres", missing).is_none());
        }
        "orphan" => {
            let resolver = local_resolver();
            let pg = resolver.postgres().unwrap();
            let redis = resolver.redis().unwrap();
            let cluster = resolver.redis_cluster().unwrap();
            let private = resolver.spawn_redis(RedisOptions::default()).unwrap();
            let mut line = format!(
                "READY pg_port={} pg_dir={} redis_port={} redis_dir={} private_port={} private_dir={} cluster_dir={}",
                port_of(pg.url()),
                local_dir(pg.origin()).display(),
                port_of(redis.url()),
                local_dir(redis.origin()).display(),
                private.port(),
                private.dir().display(),
                local_dir(cluster.origin()).display(),
            );
            for (i, url) in cluster.urls().iter().enumerate() {
                line.push_str(&format!(" cluster{i}_port={}", port_of(url)));
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
            drop(out);
            // Wait to be killed.
            std::thread::sleep(Duration::from_secs(600));
            panic!("not killed");
        }
        other => panic!("unknown child mode {other}"),
    }
}
