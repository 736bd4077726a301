//! The network seam on turmoil's simulated TCP, with connection resets injected on
//! demand.
//!
//! Owns: [`SimTransport`] (the [`Transport`] of one simulated node) and [`Resets`],
//! the switch through which the fault schedule resets every open connection of a node.
//! Knows nothing of: what travels on the streams.
//!
//! turmoil hosts have one IP each, so a dial's local IP is ignored (it is the host's
//! anyway), and a listener binds `0.0.0.0` on the port of the configured address
//! (turmoil binds only unspecified or loopback addresses).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::future::BoxFuture;
use meshkv::transport::{BoxStream, Listener, Transport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Resets every connection of one node that is open when [`Resets::reset_all`] is
/// called, as a flapping interface or a middlebox sending RSTs would: the next read or
/// write on each fails with `ConnectionReset`, and the node drops it (turmoil then
/// tells the other end). Connections opened later are not affected.
#[derive(Default)]
pub struct Resets {
    /// Bumped by every reset; a stream opened in an older generation is dead.
    generation: AtomicU64,
    next_id: AtomicU64,
    /// The waker of every stream that is waiting, so that a reset wakes it.
    waiting: Mutex<BTreeMap<u64, Waker>>,
}

impl Resets {
    /// Resets every open connection.
    pub fn reset_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting.lock().expect("resets lock"));
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    fn wrap(self: &Arc<Self>, inner: turmoil::net::TcpStream) -> BoxStream {
        Box::new(SimStream {
            inner,
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            generation: self.generation.load(Ordering::SeqCst),
            resets: self.clone(),
        })
    }
}

/// A simulated TCP stream that fails once its node's connections are reset.
struct SimStream {
    inner: turmoil::net::TcpStream,
    id: u64,
    generation: u64,
    resets: Arc<Resets>,
}

impl SimStream {
    fn reset(&self) -> bool {
        self.resets.generation.load(Ordering::SeqCst) != self.generation
    }

    /// Registers the waker of a poll that is about to return `Pending`.
    fn park<T>(&self, cx: &Context<'_>, poll: Poll<T>) -> Poll<T> {
        if poll.is_pending() {
            self.resets
                .waiting
                .lock()
                .expect("resets lock")
                .insert(self.id, cx.waker().clone());
        }
        poll
    }
}

fn reset_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset (injected)",
    )
}

impl Drop for SimStream {
    fn drop(&mut self) {
        self.resets
            .waiting
            .lock()
            .expect("resets lock")
            .remove(&self.id);
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.reset() {
            return Poll::Ready(Err(reset_error()));
        }
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.park(cx, poll)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reset() {
            return Poll::Ready(Err(reset_error()));
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.park(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The [`Transport`] of one simulated node.
#[derive(Clone)]
pub struct SimTransport {
    resets: Arc<Resets>,
}

impl SimTransport {
    /// A transport whose connections `resets` can reset.
    pub fn new(resets: Arc<Resets>) -> Self {
        Self { resets }
    }
}

impl Transport for SimTransport {
    fn dial(
        &self,
        _local_ip: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let resets = self.resets.clone();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(remote).await?;
            Ok(resets.wrap(stream))
        })
    }

    fn listen(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let resets = self.resets.clone();
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(SocketAddr::new(
                [0, 0, 0, 0].into(),
                address.port(),
            ))
            .await?;
            Ok(Box::new(SimListener { listener, resets }) as Box<dyn Listener>)
        })
    }
}

/// The [`Listener`] of [`SimTransport`].
struct SimListener {
    listener: turmoil::net::TcpListener,
    resets: Arc<Resets>,
}

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, remote) = self.listener.accept().await?;
            Ok((self.resets.wrap(stream), remote))
        })
    }
}
