//! The network seam: how a node opens and accepts byte streams.
//!
//! Owns: the [`Transport`] trait (dial from one of our IPs, listen on an address), its
//! [`Listener`] and [`BoxStream`], and [`TcpTransport`], the production implementation
//! on real TCP. Every connection the node makes or accepts, to peers and from HTTP
//! clients, goes through one `Transport`, so a simulator can swap the network whole.
//! Knows nothing of: what travels on the streams (frames, HTTP), deadlines (each caller
//! puts its own deadline around every call, so an implementation need not).

use std::io;
use std::net::{IpAddr, SocketAddr};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};

/// A bidirectional byte stream: a TCP connection in production, a simulated one in a
/// simulator.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// A connection of any [`Transport`].
pub type BoxStream = Box<dyn ByteStream>;

/// Inbound connections on one address.
pub trait Listener: Send + 'static {
    /// The next inbound connection and the address it came from.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
}

/// The node's network: opens outbound connections and listens for inbound ones.
pub trait Transport: Send + Sync + 'static {
    /// Connects to `remote` from `local_ip` (the node's own address: on a machine that
    /// hosts several nodes, firewall rules on IPs then partition them), with any port.
    fn dial(
        &self,
        local_ip: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<BoxStream>>;

    /// Starts listening on `address`.
    fn listen(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
}

/// The real network: TCP, bind before connect, `TCP_NODELAY` on every stream (frames
/// and HTTP responses are small, and each waits for its reply).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn dial(
        &self,
        local_ip: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async move {
            let socket = match local_ip {
                IpAddr::V4(_) => TcpSocket::new_v4(),
                IpAddr::V6(_) => TcpSocket::new_v6(),
            }?;
            socket.bind(SocketAddr::new(local_ip, 0))?;
            let stream = socket.connect(remote).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn listen(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = TcpListener::bind(address).await?;
            Ok(Box::new(TcpAcceptor(listener)) as Box<dyn Listener>)
        })
    }
}

/// The [`Listener`] of [`TcpTransport`].
struct TcpAcceptor(TcpListener);

impl Listener for TcpAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, remote) = self.0.accept().await?;
            // Best effort: a connection without it still works, only slower.
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as BoxStream, remote))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_dials_from_the_given_ip_and_accepts() {
        let transport = TcpTransport;
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        // Port 0 lets the OS choose; a raw listener tells us which it chose.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap();
        drop(probe);
        let mut listener = transport.listen(address).await.unwrap();
        let (mut client, (mut server, remote)) =
            tokio::try_join!(transport.dial(local, address), listener.accept()).unwrap();
        assert_eq!(remote.ip(), local);
        client.write_all(b"ping").await.unwrap();
        let mut buffer = [0; 4];
        server.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"ping");
    }
}
