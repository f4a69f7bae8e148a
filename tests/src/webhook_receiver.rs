//! The webhook receiver of the tests (`tests/webhooks/receiver.py`): a Python server that
//! verifies every delivery with the Standard Webhooks reference library (`standardwebhooks`,
//! installed by `tests/webhooks/setup.sh`) and answers by a plan of actions.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::python::PythonServer;

/// The virtualenv's python with `standardwebhooks`, if installed (required when
/// `TOLLGATE_REQUIRE_WEBHOOKS` is set, as CI does).
pub fn python() -> Option<PathBuf> {
    crate::tools::installed(
        "TOLLGATE_WEBHOOKS_PYTHON",
        ".cache/tollgate-webhooks-venv/bin/python",
        "TOLLGATE_REQUIRE_WEBHOOKS",
        "tests/webhooks/setup.sh",
    )
}

/// Start the receiver on `port` with `secret` and `plan` (comma-separated actions: `500`,
/// `hang`, `ok`; then every attempt gets 204).
pub fn start(python: &Path, secret: &str, port: u16, plan: &str) -> PythonServer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/receiver.py");
    PythonServer::start_with(python, [script, secret, &port.to_string(), plan])
}

/// Every attempt the receiver saw, in arrival order: `{id, type, valid, action, payload}`.
pub async fn attempts(port: u16) -> Vec<Value> {
    let v: Value = reqwest::get(format!("http://127.0.0.1:{port}/received"))
        .await
        .expect("the receiver answers")
        .json()
        .await
        .expect("JSON");
    v["attempts"].as_array().cloned().unwrap_or_default()
}
