//! Drives a real server on the built-in tiny model with the official `openai` Python client
//! (tests/py/e2e.py). `MXSERVE_E2E_PYTHON` names the Python that has `openai` installed
//! (`cargo xtask test` prepares it); when it is set but that Python does not exist or lacks
//! the package, the test fails. Unset, the test says it is skipped.

mod server_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use server_support::{MODEL, limits, start};

const PYTHON_VAR: &str = "MXSERVE_E2E_PYTHON";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_against_the_server() {
    let Some(python) = std::env::var_os(PYTHON_VAR) else {
        eprintln!(
            "skipped: {PYTHON_VAR} is not set (cargo xtask test sets it to a venv with `openai`)"
        );
        return;
    };
    let python = PathBuf::from(python);
    assert!(
        python.exists(),
        "{PYTHON_VAR}={} does not exist; run `cargo xtask test` to create the venv",
        python.display()
    );
    let server = start(limits(), 1 << 20).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join("e2e.py");
    let base_url = format!("http://{}/v1", server.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .arg(&base_url)
            .arg(MODEL)
            .output()
    })
    .await
    .unwrap()
    .expect("running the e2e script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "e2e.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("e2e ok"), "{stdout}");
    server.shutdown().await;
}
