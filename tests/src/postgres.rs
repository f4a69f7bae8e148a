//! A private PostgreSQL server for tests, like [`crate::RedisServer`]: `initdb` in a temp dir,
//! `pg_ctl start` on a free loopback port, stopped on drop. [`PostgresServer::stop`] and
//! [`PostgresServer::start_again`] make the "PostgreSQL down" fault (same data, same port).
//!
//! `fsync` is off (a test's data need not survive the machine), but `synchronous_commit` is
//! left on: [`PostgresServer::stop`] is a crash of the server process, and a commit
//! acknowledged before it must survive it, as the drainer's guarantee requires.
//!
//! `initdb` refuses to run as root, so as root every PostgreSQL binary runs through
//! `runuser -u postgres --`, in a temp dir owned by `postgres`. The binaries are looked up in
//! `$TOLLGATE_PG_BIN`, then `/usr/lib/postgresql/{17,16,15}/bin`, then `PATH` (`tests/run.sh`
//! installs Debian's `postgresql` where they are missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) PostgreSQL cluster of one database, `postgres`, user `postgres`,
/// trust authentication on 127.0.0.1 only.
pub struct PostgresServer {
    /// Holds the data directory and the log; removed on drop.
    dir: tempfile::TempDir,
    /// Where `initdb`, `pg_ctl` and `postgres` are.
    bin: PathBuf,
    port: u16,
    /// Whether the server should be running (drop stops it).
    running: bool,
    /// Extra server settings (`-c name=value ...`).
    settings: String,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_PG_BIN") {
        return PathBuf::from(p);
    }
    for v in ["17", "16", "15"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return p;
        }
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !found.is_empty(),
        "PostgreSQL not found: install it (apt-get install postgresql); tests/run.sh does"
    );
    Path::new(&found)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl PostgresServer {
    /// `initdb` a fresh cluster and start it; waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`PostgresServer::start`] with extra server settings, e.g. `-c synchronous_commit=off`.
    pub fn start_with(settings: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = PostgresServer {
            dir,
            bin: find_bin(),
            port: free_port(),
            running: false,
            settings: settings.to_owned(),
        };
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(s.dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown of the PostgreSQL temp dir failed");
        }
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(s.data())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = s;
        s.start_again();
        s
    }

    /// A PostgreSQL binary, run as `postgres` when we are root.
    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.stdin(Stdio::null());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start the (stopped) server again on the same port and data; waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off \
             -c max_connections=50 {}",
            self.port,
            self.dir.path().display(),
            self.settings
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
        );
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server at once (`pg_ctl stop -m immediate`: a crash, as far as clients can
    /// tell); the data stays for [`PostgresServer::start_again`].
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` (no password: trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A client connection for assertions (its connection task runs on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
