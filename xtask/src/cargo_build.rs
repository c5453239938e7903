//! Building workspace programs through cargo and finding the executables it produced (their
//! paths honour `CARGO_TARGET_DIR` and the build profile, so nothing assumes `target/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs one cargo build and returns (name, path) of each executable it produced.
pub fn executables(root: &Path, args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !output.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), output.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let message: serde_json::Value =
            serde_json::from_str(line).context("parsing cargo's JSON output")?;
        if let (Some(path), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) {
            found.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    if found.is_empty() {
        bail!("cargo {} produced no executable", args.join(" "));
    }
    Ok(found)
}
