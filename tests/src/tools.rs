//! Third-party tools the interoperability tests drive (the x402 Python SDK, `mppx`), installed
//! by their `tests/*/setup.sh` under `~/.cache` (`tests/run.sh` runs them and requires them).

use std::path::PathBuf;

/// The tool at `$env` (set by `tests/run.sh`), else at `~/<home_path>`; `None` when it is not
/// installed -- a failed assertion instead when `$require` is set (CI must not skip it).
pub fn installed(env: &str, home_path: &str, require: &str, setup: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_path)))
        .filter(|p| p.exists());
    if p.is_none() {
        assert!(
            std::env::var_os(require).is_none(),
            "{env} is required but not installed (bash {setup})"
        );
        eprintln!("SKIPPED: not installed (bash {setup})");
    }
    p
}
