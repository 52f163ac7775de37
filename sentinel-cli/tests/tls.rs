//! The real `sentinel` binary over TLS: a private PostgreSQL that refuses unencrypted
//! connections and a private Redis that listens only on TLS, both with a certificate signed by a
//! throwaway certificate authority made with `openssl` for the test. The certificate is verified
//! when the URL asks for it (`sslmode=verify-full` with `sslrootcert`, or the operating system's
//! trust store, which `SSL_CERT_FILE` replaces here), and a connection without TLS is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sentinel_core::RequestId;
use sentinel_testkit::servers;
use sqlx::Connection;

/// Runs `sentinel <args> --url <url>`, with `SSL_CERT_FILE` set to `trust` when given (and no
/// inherited trust settings otherwise).
fn sentinel(url: &str, trust: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    cmd.args(args)
        .args(["--url", url, "--namespace", "tls"])
        .env_remove("SENTINEL_URL")
        .env_remove("DATABASE_URL")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("NO_COLOR", "1");
    if let Some(file) = trust {
        cmd.env("SSL_CERT_FILE", file);
    }
    cmd.output().unwrap()
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 signed by it,
/// in a directory of their own (removed on drop).
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// `None` (the test is skipped, or fails when backends are required) without `openssl`.
    fn make() -> Option<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sentinel-tls-{:016x}",
            RequestId::random().as_u128() as u64
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certificates { dir };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [&[&str]; 3] = [
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                &["-subj", "/CN=sentinel test CA"],
            ]
            .concat(),
            &[
                &["req"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
                &["-subj", "/CN=localhost"],
            ]
            .concat(),
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        ];
        std::fs::write(
            certs.dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        for step in steps {
            match Command::new("openssl")
                .args(step)
                .current_dir(&certs.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => panic!(
                    "openssl {step:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(error) => {
                    let missing = local_binary_missing(
                        "openssl",
                        format!("openssl is needed to make test certificates: {error}"),
                    );
                    return servers::require("TLS", Err(missing));
                }
            }
        }
        Some(certs)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What [`servers::require`] is told when a program the test runs itself is not installed.
fn local_binary_missing(server: &'static str, reason: impl Into<String>) -> servers::ServerError {
    servers::ServerError::Unavailable {
        server,
        attempts: vec![servers::Attempt::new(
            servers::AttemptSource::LocalBinaries,
            reason,
        )],
    }
}

/// Copies `from` to `to`, owned by the owner of `to`'s directory (the server's user), mode 0600.
fn install_for_server(from: &Path, to: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
    std::os::unix::fs::chown(to, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verified_and_plain_refused() {
    let Some(certs) = Certificates::make() else {
        return;
    };
    let Some(server) = servers::require("postgres (TLS)", servers::spawn_postgres()) else {
        return;
    };
    // Certificate and key in the data directory; TLS on; the server refuses unencrypted TCP.
    let mut admin = sqlx::PgConnection::connect(server.url()).await.unwrap();
    let (data,): (String,) = sqlx::query_as("SHOW data_directory")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let (hba,): (String,) = sqlx::query_as("SHOW hba_file")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let data = PathBuf::from(data);
    install_for_server(&certs.path("server.pem"), &data.join("server.pem"));
    install_for_server(&certs.path("server.key"), &data.join("server.key"));
    for setting in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.pem'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
    ] {
        sqlx::raw_sql(setting).execute(&mut admin).await.unwrap();
    }
    std::fs::write(
        &hba,
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let (reloaded,): (bool,) = sqlx::query_as("SELECT pg_reload_conf()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(reloaded);
    let _ = admin.close().await;

    let port = server.port();
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");
    let root = certs.path("ca.pem");
    let verified = at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    // The reload takes effect asynchronously: wait until a TLS connection is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = sentinel(&verified, None, &["migrate"]);
        if out.status.code() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TLS never came up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Verified against the CA given in the URL, or through the trust store.
    assert_exit(
        &sentinel(&verified, None, &["list"]),
        0,
        "verify-full, sslrootcert",
    );
    let trusted = at("localhost", "sslmode=verify-full");
    assert_exit(
        &sentinel(&trusted, Some(&root), &["list"]),
        0,
        "verify-full, CA in the trust store",
    );
    assert_exit(
        &sentinel(&at("127.0.0.1", "sslmode=require"), None, &["list"]),
        0,
        "require: encrypted, not verified",
    );
    // A certificate nobody vouches for, and no encryption at all: refused, exit 3 (unavailable).
    let out = sentinel(&trusted, None, &["list"]);
    assert_exit(&out, 3, "verify-full without the CA");
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));
    let out = sentinel(&at("127.0.0.1", "sslmode=disable"), None, &["list"]);
    assert_exit(&out, 3, "sslmode=disable");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no encryption"));
}

/// A `redis-server` listening only on TLS, on a free loopback port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(certs: &Certificates) -> Option<Self> {
        let binaries = servers::Resolver::from_process()
            .redis_binaries()
            .map_err(|reason| local_binary_missing("redis", reason));
        let server = servers::require("redis (TLS)", binaries)?
            .server()
            .to_owned();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (cert, key, ca) = (
            certs.path("server.pem"),
            certs.path("server.key"),
            certs.path("ca.pem"),
        );
        let child = Command::new(server)
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = TlsRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn redis_over_tls_verified_and_plain_refused() {
    let Some(certs) = Certificates::make() else {
        return;
    };
    let Some(redis) = TlsRedis::start(&certs) else {
        return;
    };
    let port = redis.port;
    let root = certs.path("ca.pem");
    let verified = format!("rediss://localhost:{port}");
    // Verified through the trust store (here: only our CA).
    assert_exit(
        &sentinel(&verified, Some(&root), &["list"]),
        0,
        "rediss://, CA in the trust store",
    );
    assert_exit(
        &sentinel(
            &format!("rediss://127.0.0.1:{port}"),
            Some(&root),
            &["list"],
        ),
        0,
        "rediss:// by IP address",
    );
    // `#insecure`: encrypted, not verified, by the URL's explicit choice.
    assert_exit(
        &sentinel(
            &format!("rediss://127.0.0.1:{port}/#insecure"),
            None,
            &["list"],
        ),
        0,
        "rediss://…/#insecure",
    );
    // A certificate nobody vouches for, and plain TCP to a TLS port: exit 3 (unavailable).
    let out = sentinel(&verified, None, &["list"]);
    assert_exit(&out, 3, "rediss:// without the CA");
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));
    assert_exit(
        &sentinel(&format!("redis://127.0.0.1:{port}"), None, &["list"]),
        3,
        "redis:// to a TLS port",
    );
}
