//! Serving the router on the node's transport with every client-facing bound in place.
//!
//! Owns: the HTTP accept loop, the cap on concurrent connections, the TLS handshake of
//! HTTPS connections (within the header deadline; a failure, e.g. plain HTTP sent to
//! the HTTPS port, closes that connection alone and is counted), the deadline for a
//! client to send its request headers (which also closes idle keep-alive connections),
//! the deadline for each response write to make progress, and graceful shutdown of
//! open connections. Per-request deadlines are kept by the [`Api`] service.
//! `axum::serve` offers none of these knobs, so this drives hyper directly, as
//! `axum::serve` itself does.
//! Knows nothing of: how connections are made (the [`Listener`] comes from the node's
//! transport: TCP in production), where certificates come from.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Api;
use crate::metrics::{Metrics, ReasonLabels};
use crate::transport::{BoxStream, Listener};

/// HTTPS: the acceptor wraps every client connection; failed handshakes are counted
/// in `metrics`.
#[derive(Clone)]
pub struct Https {
    /// The TLS server side (certificate, key, ALPN `http/1.1`).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Where failed handshakes are counted.
    pub metrics: Arc<Metrics>,
}

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

/// Serves `router` on `listener` (over TLS with `https`) until `shutdown`, then lets
/// open requests finish.
pub async fn serve(
    mut listener: Box<dyn Listener>,
    router: Api,
    options: ServerOptions,
    https: Option<Https>,
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
        let stream = Box::pin(stream);
        let Some(https) = &https else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%remote, %error, "client connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task, so a slow client holds up no
        // one; graceful shutdown waits for it (bounded by the header deadline).
        let (https, http, watcher) = (https.clone(), http.clone(), graceful.watcher());
        let header_timeout = options.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let Some(stream) = handshake(&https, stream, remote, header_timeout).await else {
                return;
            };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(error) = connection.await {
                debug!(%remote, %error, "client connection ended with an error");
            }
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

/// The server side of a client's TLS handshake, within `deadline`; `None` (counted,
/// logged at debug level) if it fails: the connection is then closed.
async fn handshake(
    https: &Https,
    stream: std::pin::Pin<Box<TimeoutStream<BoxStream>>>,
    remote: std::net::SocketAddr,
    deadline: Duration,
) -> Option<tokio_rustls::server::TlsStream<std::pin::Pin<Box<TimeoutStream<BoxStream>>>>> {
    let reason = match tokio::time::timeout(deadline, https.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(error)) => {
            debug!(%remote, %error, "client TLS handshake failed");
            crate::tls::http_failure_reason(&error)
        }
        Err(_) => {
            debug!(%remote, "no client TLS handshake within {deadline:?}");
            "timeout"
        }
    };
    https
        .metrics
        .http_tls_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
    None
}
