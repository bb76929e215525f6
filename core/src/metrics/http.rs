//! The small HTTP/1.1 server every kproxy endpoint runs on: `/metrics`, `/healthz` and
//! `/livez`, and one per health-check node port.
//!
//! A server is one task on the actor system's thread that owns its listener and all its
//! connections: aborting the task (see [`ServerHandle`]) closes the port and every open
//! connection at once, as upstream's `server.Close()` does when a service goes away. Handlers
//! are local futures, so they can ask actors for their answer.

use bytes::Bytes;
use futures::{future::LocalBoxFuture, stream::FuturesUnordered, StreamExt};
use http_body_util::Full;
use hyper::{body::Incoming, header::HeaderValue, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{convert::Infallible, io, net::SocketAddr, rc::Rc, time::Duration};
use tokio::net::{TcpListener, TcpSocket};

/// A response as kproxy's endpoints build them.
pub type Reply = Response<Full<Bytes>>;

/// Answers one request.
pub type HttpHandler = Rc<dyn Fn(Request<Incoming>) -> LocalBoxFuture<'static, Reply>>;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds a listening socket on `addr` with `SO_REUSEADDR` (so a health-check port closed and
/// opened again is not refused while old connections linger in TIME_WAIT). Must run inside the
/// actor system (a tokio runtime).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A running server; dropping the handle leaves it running, [`ServerHandle::close`] stops it.
#[derive(Debug)]
pub struct ServerHandle {
    task: tokio::task::JoinHandle<()>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerHandle {
    /// Closes the listening socket and every connection.
    pub fn close(self) {
        self.task.abort();
    }
}

/// Starts serving `listener` with `handler` on the current actor system's thread.
pub fn spawn(listener: TcpListener, handler: HttpHandler) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let task = actix::spawn(serve(listener, handler));
    Ok(ServerHandle { task, addr })
}

/// Accepts connections and serves them until the task is aborted.
pub async fn serve(listener: TcpListener, handler: HttpHandler) {
    let mut connections: FuturesUnordered<LocalBoxFuture<'static, ()>> = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let handler = handler.clone();
                    let service = service_fn(move |req| {
                        let reply = handler(req);
                        async move { Ok::<_, Infallible>(reply.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    connections.push(Box::pin(async move {
                        let _ = conn.await;
                    }));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(()) = connections.next(), if !connections.is_empty() => {}
        }
    }
}

/// Builds a response with a status, a content type and a body.
pub fn reply(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

/// Adds `X-Content-Type-Options: nosniff`, as upstream sets on its JSON answers.
pub fn nosniff(mut r: Reply) -> Reply {
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A plain-text 404.
pub fn not_found() -> Reply {
    reply(404, "text/plain; charset=utf-8", "404 page not found\n")
}
