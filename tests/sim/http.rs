//! A minimal HTTP/1.1 client over turmoil's simulated TCP: one connection per request,
//! every step under one deadline.
//!
//! Owns: [`call`] and [`Reply`].
//! Knows nothing of: meshkv's routes (the caller builds paths and reads bodies).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// What a node answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

/// Why no reply came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The connection could not be opened (refused: nothing listens).
    Connect(String),
    /// The connection failed after it was opened (reset, closed).
    Broken(String),
    /// No complete reply within the deadline.
    Timeout,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(reason) => write!(f, "connect: {reason}"),
            CallError::Broken(reason) => write!(f, "broken: {reason}"),
            CallError::Timeout => f.write_str("timeout"),
        }
    }
}

/// Sends one request to `address` on a fresh connection and reads the whole reply,
/// all within `deadline`.
pub async fn call(
    address: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    deadline: Duration,
) -> Result<Reply, CallError> {
    let mut connection = None;
    let exchange = async {
        let stream = turmoil::net::TcpStream::connect(address)
            .await
            .map_err(|error| CallError::Connect(error.to_string()))?;
        let (mut sender, driver) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|error| CallError::Broken(error.to_string()))?;
        connection = Some(tokio::task::spawn_local(driver));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, address.to_string())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(body.unwrap_or_default()))
            .expect("a valid request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| CallError::Broken(error.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| CallError::Broken(error.to_string()))?
            .to_bytes();
        Ok(Reply { status, body })
    };
    let result = match tokio::time::timeout(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout),
    };
    // The connection is not reused: stop its driver, which closes the stream.
    if let Some(connection) = connection {
        connection.abort();
    }
    result
}
