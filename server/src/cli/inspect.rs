//! `mxserve inspect`: check a checkpoint before serving it.

use std::io::Write as _;
use std::path::PathBuf;

use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadOptions};

/// Options of `mxserve inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (config.json + safetensors).
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Shared-expert fusion mode to decide under: auto, on or off.
    #[arg(long, default_value = "auto")]
    pub fusion: FusionMode,
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Runs `mxserve inspect`; returns the process exit code: 0 when the checkpoint can be served,
/// 1 when it cannot (every problem is listed, or the error that stopped the check is printed).
pub fn run(args: Args) -> anyhow::Result<i32> {
    let options = LoadOptions {
        fusion: args.fusion,
        ..LoadOptions::default()
    };
    let report = match loader::inspect(&args.dir, &options) {
        Ok(report) => report,
        Err(e) => {
            if args.json {
                let error = serde_json::json!({ "servable": false, "error": e.to_string() });
                emit(&format!("{}\n", serde_json::to_string_pretty(&error)?))?;
            } else {
                eprintln!("error: {e}");
                eprintln!("the checkpoint cannot be served");
            }
            return Ok(1);
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["servable"] = report.servable().into();
        emit(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
    } else {
        emit(&report.to_text())?;
    }
    Ok(if report.servable() { 0 } else { 1 })
}
