//! Serving the router on the node's transport with every client-facing bound in place.
//!
//! Owns: the HTTP accept loop, the cap on concurrent connections, the deadline for a
//! client to send its request headers (which also closes idle keep-alive connections),
//! the deadline for each response write to make progress, and graceful shutdown of
//! open connections. Per-request deadlines are kept by the [`Api`] service.
//! `axum::serve` offers none of these knobs, so this drives hyper directly, as
//! `axum::serve` itself does.
//! Knows nothing of: how connections are made (the [`Listener`] comes from the node's
//! transport: TCP in production).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Api;
use crate::transport::Listener;

/// Client-facing bounds.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Open client connections at most; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// A client must send a request's headers within this time (idle keep-alive
    /// connections are closed after it too).
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection
    /// (a client that never reads would otherwise hold its slot forever).
    pub write_timeout: Duration,
    /// How long shutdown waits for open requests to finish.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    mut listener: Box<dyn Listener>,
    router: Api,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    loop {
        // Both selects in order: a stopping node accepts nothing more.
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(%error, "client accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = router.clone();
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(options.write_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%remote, %error, "client connection ended with an error");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "client connections still open after {:?}",
            options.shutdown_grace
        );
    }
}
