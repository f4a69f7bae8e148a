//! The real `tollgate` binary as a child process: a free port, start on a config file, wait
//! until it answers (the crash and shutdown suites: `durable.rs`, `faults.rs`, `leases.rs`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `tollgate run --config <config>` with the test secret and no admin token; stdout dropped,
/// stderr as given.
pub fn start(config: &Path, stderr: Stdio) -> Child {
    Command::new(crate::tollgate_binary())
        .args(["run", "--config"])
        .arg(config)
        .env("TOLLGATE_SECRET", "0123456789abcdef0123456789abcdef")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start tollgate")
}

/// Wait (up to 30 s) until `<base>/healthz` answers.
pub async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
