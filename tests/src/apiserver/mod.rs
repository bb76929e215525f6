//! The test API server: a **test double** of the Kubernetes API server, not a Kubernetes API
//! server. It speaks the real HTTP list/watch protocol on loopback so kube-rs (`kube::Api`,
//! `kube::runtime::watcher`) and the kproxy daemon talk to it unchanged, and it hands tests the
//! failure modes a real cluster produces: dropped watch connections, `410 Expired` after
//! compaction, and an API server that is away (connection refused) for a while.
//!
//! What it serves (plain HTTP, `127.0.0.1:<ephemeral port>`):
//! - `v1` Services, `discovery.k8s.io/v1` EndpointSlices, `v1` Nodes, and Events in both
//!   `v1` and `events.k8s.io/v1` (see [`Kind`]); all-namespace and namespaced collection paths,
//!   single objects; GET, LIST (`labelSelector`, `fieldSelector`, `limit`/`continue`), WATCH,
//!   POST, PUT, PATCH (merge, strategic-merge treated as merge, apply as create-or-merge), DELETE;
//! - `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>[/<version>]` discovery documents.
//!
//! What it does like the real thing: one global resourceVersion bumped by every write (as
//! etcd's revision); server-set `resourceVersion`, `uid`, `creationTimestamp`, `generation`;
//! watch streams of `ADDED`/`MODIFIED`/`DELETED` JSON lines replayed from any resourceVersion
//! still in the history; objects that stop matching a label selector sent as `DELETED`;
//! `BOOKMARK`s when `allowWatchBookmarks=true` (periodically and on [`TestApiServer::send_bookmarks`]);
//! `sendInitialEvents` with the `k8s.io/initial-events-end` bookmark; an `ERROR` event carrying a
//! `410 Expired` Status for a watch older than the last compaction.
//!
//! Where it is simpler: no authentication (any token is accepted), no admission or validation
//! beyond names and namespaces, no snapshots (paged lists show current objects), JSON only.
//!
//! Start with [`TestApiServer::start`]; every control method is synchronous so plain `#[test]`s
//! and async tests can both use it (the server runs on its own thread and tokio runtime).

mod http;
mod requests;
mod resources;
mod selector;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use http::Shared;
pub use requests::{RequestRecord, Verb};
pub use resources::Kind;
pub use store::ApiServerError;
use store::Store;

/// How a [`TestApiServer`] behaves; [`Options::default`] suits most tests.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often watches that asked for bookmarks get one; `None` sends them only on
    /// [`TestApiServer::send_bookmarks`]. Default 500 ms (the real server: about a minute).
    pub bookmark_interval: Option<Duration>,
    /// Changes kept for watches to replay before the oldest are compacted away (etcd compacts
    /// every five minutes). Default 100,000.
    pub history_limit: usize,
    /// Largest request body accepted. Default 32 MiB (objects of several MB must work).
    pub max_body_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bookmark_interval: Some(Duration::from_millis(500)),
            history_limit: 100_000,
            max_body_bytes: 32 << 20,
        }
    }
}

/// The accept loop while the server is reachable.
struct Listening {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running test double of the Kubernetes API server; stops when dropped.
pub struct TestApiServer {
    shared: Arc<Shared>,
    rt: Handle,
    addr: SocketAddr,
    listening: Mutex<Option<Listening>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // So that `resume` can rebind the port while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let shared = shared.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(http::handle(shared, req).await)
                            }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            tracing::debug!(error = %e, "test apiserver connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "test apiserver accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Refuse new connections first, then reset the open ones, as a dying API server does.
    drop(listener);
    conns.shutdown().await;
}

impl TestApiServer {
    /// Starts a server with [`Options::default`] on `127.0.0.1:<ephemeral port>`.
    ///
    /// # Panics
    /// If no thread, runtime or loopback port can be had: a test cannot go on without one.
    pub fn start() -> Self {
        Self::start_with(Options::default()).expect("start the test API server")
    }

    /// Starts a server with the given options.
    pub fn start_with(options: Options) -> Result<Self, ApiServerError> {
        let server_err =
            |what: &str, e: &dyn std::fmt::Display| ApiServerError::Server(format!("{what}: {e}"));
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = shutdown_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| server_err("spawn thread", &e))?;
        let rt = handle_rx
            .recv()
            .map_err(|e| server_err("runtime thread", &e))?
            .map_err(|e| server_err("build runtime", &e))?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history_limit)),
            requests: Mutex::new(Vec::new()),
            max_body_bytes: options.max_body_bytes,
        });
        let mut server = Self {
            shared: shared.clone(),
            rt,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listening: Mutex::new(None),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        server.addr = server.listen(server.addr)?;
        if let Some(every) = options.bookmark_interval {
            server.rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    shared.store().bookmark_all();
                }
            });
        }
        tracing::info!(url = %server.url(), "test API server (a test double) started");
        Ok(server)
    }

    /// Runs `fut` on the server's runtime and waits for it from any thread, async or not.
    fn run_on<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the test API server's runtime is running")
    }

    fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, ApiServerError> {
        let shared = self.shared.clone();
        let (stop_tx, stop_rx) = oneshot::channel();
        let started = self.run_on(async move {
            let listener = bind(addr)?;
            let local = listener.local_addr()?;
            let task = tokio::spawn(accept_loop(listener, shared, stop_rx));
            Ok::<_, std::io::Error>((local, task))
        });
        let (local, task) =
            started.map_err(|e| ApiServerError::Server(format!("bind {addr}: {e}")))?;
        *self.listening.lock().unwrap_or_else(|e| e.into_inner()) = Some(Listening {
            stop: stop_tx,
            task,
        });
        Ok(local)
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address it listens on (kept across [`pause`](Self::pause)/[`resume`](Self::resume)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig that points at this server over plain HTTP with a dummy bearer token,
    /// context `kproxy-test`, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: kproxy-test\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: kproxy-test\n  user:\n    token: kproxy-test-token\n\
             contexts:\n\
             - name: kproxy-test\n  context:\n    cluster: kproxy-test\n    user: kproxy-test\n    namespace: default\n\
             current-context: kproxy-test\n",
            url = self.url()
        )
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path` (what the daemon is pointed at
    /// with `KUBECONFIG` or its config).
    pub fn kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), ApiServerError> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig_yaml())
            .map_err(|e| ApiServerError::Server(format!("write {}: {e}", path.display())))
    }

    fn to_value<T: Serialize>(obj: &T) -> Result<(Kind, Value), ApiServerError> {
        let value = serde_json::to_value(obj)
            .map_err(|e| ApiServerError::Invalid(format!("object does not serialise: {e}")))?;
        let field = |f: &str| {
            value
                .get(f)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let kind = Kind::from_type_meta(&api_version, &kind)
            .ok_or(ApiServerError::UnknownKind { api_version, kind })?;
        Ok((kind, value))
    }

    /// Creates an object (typed k8s-openapi object or `serde_json::Value` with `apiVersion`
    /// and `kind`); a namespaced object without a namespace goes to `default`. Returns the
    /// stored object with its server-set metadata.
    pub fn create<T: Serialize>(&self, obj: &T) -> Result<Value, ApiServerError> {
        let (kind, value) = Self::to_value(obj)?;
        Ok((*self.shared.store().create(kind, value)?).clone())
    }

    /// Replaces an existing object (its `metadata.resourceVersion`, if any, is ignored).
    pub fn update<T: Serialize>(&self, obj: &T) -> Result<Value, ApiServerError> {
        let (kind, value) = Self::to_value(obj)?;
        Ok((*self.shared.store().update(kind, value, false)?).clone())
    }

    /// Creates or replaces, whichever applies.
    pub fn apply<T: Serialize>(&self, obj: &T) -> Result<Value, ApiServerError> {
        let (kind, value) = Self::to_value(obj)?;
        Ok((*self.shared.store().apply(kind, value)?).clone())
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds); returns its last
    /// state, stamped with the deletion's resourceVersion as DELETED events carry it.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiServerError> {
        Ok((*self.shared.store().delete(kind, namespace, name)?).clone())
    }

    /// One stored object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .store()
            .get(kind, namespace, name)
            .map(|o| (*o).clone())
    }

    /// Every stored object of a kind, in (namespace, name) order.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.shared
            .store()
            .objects(kind)
            .into_iter()
            .map(|o| (*o).clone())
            .collect()
    }

    /// The current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Forgets the change history, as etcd's compaction does: a watch (or `continue`) from a
    /// resourceVersion older than now is answered `410 Expired`. Open watches are not
    /// affected; combine with [`drop_watches`](Self::drop_watches) to force a relist.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Cuts every open watch connection mid-stream (no chunked terminator, as when a load
    /// balancer or the API server drops it); returns how many were cut.
    pub fn drop_watches(&self) -> usize {
        self.shared.store().cut_watches()
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
    pub fn send_bookmarks(&self) {
        self.shared.store().bookmark_all();
    }

    /// Open watches.
    pub fn watch_count(&self) -> usize {
        self.shared.store().watch_count(None)
    }

    /// Open watches on one kind.
    pub fn watch_count_of(&self, kind: Kind) -> usize {
        self.shared.store().watch_count(Some(kind))
    }

    /// Blocks until at least `n` watches are open on `kind` or `timeout` passes; returns
    /// whether they are. Do not call it from a single-threaded async runtime that also drives
    /// the client being waited for (it would block that client); use `spawn_blocking` there.
    pub fn wait_for_watches(&self, kind: Kind, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.watch_count_of(kind) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops being reachable: closes the listening socket (new connections are refused) and
    /// resets every open connection, watches included, as an API server that went away.
    /// Returns once the port refuses connections.
    pub fn pause(&self) {
        let listening = self
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(l) = listening {
            self.run_on(async move {
                let _ = l.stop.send(());
                let _ = l.task.await;
            });
        }
        self.shared.store().cut_watches();
    }

    /// Listens again on the same port after [`pause`](Self::pause); a no-op when not paused.
    pub fn resume(&self) -> Result<(), ApiServerError> {
        if !self.is_paused() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..50 {
            match self.listen(self.addr) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Err(last.unwrap_or_else(|| ApiServerError::Server("resume failed".into())))
    }

    /// Whether the server is paused.
    pub fn is_paused(&self) -> bool {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests().clone()
    }

    /// How many requests of `verb` on `kind` have arrived.
    pub fn request_count(&self, verb: Verb, kind: Kind) -> usize {
        self.shared
            .requests()
            .iter()
            .filter(|r| r.verb == verb && r.kind == Some(kind))
            .count()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.requests().clear();
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
