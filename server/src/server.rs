//! Accepting connections and shutting down gracefully: on the shutdown signal, stop
//! accepting, let running requests finish within a deadline, then cancel what is left.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::routes::{AppState, handle};

/// How long a client gets to send a request's headers; past it the connection is closed, so a
/// slowloris client cannot hold connections open by trickling header bytes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long cancelled requests get to send their error before connections are dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Serves `listener` until `shutdown` completes, then drains: requests in flight get
/// `deadline` to finish, after which the engine cancels them.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection failures (e.g. too many open files) must not stop the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let state = state.clone();
        let service = service_fn(move |request| handle(state.clone(), request));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(deadline = ?deadline, "shutting down: no new connections; finishing requests in flight");
    state.engine.stop_accepting();
    let drain = graceful.shutdown();
    tokio::pin!(drain);
    if tokio::time::timeout(deadline, &mut drain).await.is_err() {
        tracing::warn!("shutdown deadline passed; cancelling the requests still running");
        state.engine.cancel_all();
        if tokio::time::timeout(CANCEL_GRACE, drain).await.is_err() {
            tracing::warn!("closing connections that did not finish");
        }
    }
    Ok(())
}
