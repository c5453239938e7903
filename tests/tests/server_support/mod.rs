//! Starting a real server on the built-in tiny model for the server tests.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model_deepseek::fusion::FusionMode;
use runtime_rocm::Device;
use server::engine::EngineLimits;
use server::launch::{LaunchOptions, launch_on};
use server::routes::AppState;
use tokio::sync::oneshot;

/// The id the tests serve the model under.
pub const MODEL: &str = "tiny";

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// The built-in model's checkpoint, generated once per target directory.
pub fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mxserve-builtin");
    model_deepseek::tiny::builtin::ensure_tiny_checkpoint(
        &dir,
        &model_deepseek::tiny::builtin::builtin_spec(),
    )
    .expect("writing the built-in model");
    dir
}

/// Limits roomy enough for every test unless a test says otherwise.
pub fn limits() -> EngineLimits {
    EngineLimits {
        max_batch_tokens: 256,
        max_running: 64,
        max_waiting: 256,
    }
}

/// Loads the built-in model and serves it on a free port; shutdown gives running requests
/// 60 s.
pub async fn start(limits: EngineLimits, max_body_bytes: usize) -> TestServer {
    start_with_deadline(limits, max_body_bytes, Duration::from_secs(60)).await
}

/// As [`start`], with the given shutdown deadline.
pub async fn start_with_deadline(
    limits: EngineLimits,
    max_body_bytes: usize,
    deadline: Duration,
) -> TestServer {
    start_on(Device::cpu(), limits, max_body_bytes, deadline).await
}

/// As [`start_with_deadline`], with the model on `device`.
pub async fn start_on(
    device: Device,
    limits: EngineLimits,
    max_body_bytes: usize,
    deadline: Duration,
) -> TestServer {
    let options = LaunchOptions {
        model_dir: model_dir(),
        model_id: Some(MODEL.into()),
        fusion: FusionMode::Auto,
        limits,
        kv_capacity_tokens: Some(64 * 1024),
        max_body_bytes,
    };
    let launched = tokio::task::spawn_blocking(move || launch_on(&options, &device, &mut |_| {}))
        .await
        .unwrap()
        .expect("launching the server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = launched.state.clone();
    let task = tokio::spawn(server::server::serve(
        listener,
        launched.state,
        async {
            let _ = stopped.await;
        },
        deadline,
    ));
    TestServer {
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestServer {
    /// Shuts down gracefully and waits for it.
    #[allow(dead_code)]
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}
