//! The Kubernetes source against the test API server over real HTTP: the initial listing, live
//! changes, the proxy label selector, and the failures a real cluster produces — a cut watch,
//! an expired resourceVersion, an API server that is away for a while.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use kproxy::source::kubernetes::{client_from, KubeSource};
use kproxy::source::{ResourceEvent, SourceEvent};
use kproxy_tests::apiserver::{Kind, Options, TestApiServer, Verb};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const NODE: &str = "node-a";
/// Generous, for slow CI machines; the backoff after an outage alone can take several seconds.
const WAIT: Duration = Duration::from_secs(60);

fn service(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}})
}

fn slice(name: &str, service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints})
}

fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
}

/// The picture a consumer builds from the events, plus every event in order.
#[derive(Default, Debug)]
struct View {
    services: BTreeMap<String, String>,
    slices: BTreeMap<String, usize>,
    nodes: BTreeMap<String, String>,
    log: Vec<String>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

fn apply<K, V>(
    map: &mut BTreeMap<String, V>,
    event: ResourceEvent<K>,
    kind: &str,
    log: &mut Vec<String>,
    key_of: impl Fn(&K) -> String,
    value_of: impl Fn(&K) -> V,
) {
    match event {
        ResourceEvent::Applied(o) => {
            log.push(format!("{kind} applied {}", key_of(&o)));
            map.insert(key_of(&o), value_of(&o));
        }
        ResourceEvent::Deleted(o) => {
            log.push(format!("{kind} deleted {}", key_of(&o)));
            map.remove(&key_of(&o));
        }
        ResourceEvent::Replaced(all) => {
            let keys: Vec<_> = all.iter().map(&key_of).collect();
            log.push(format!("{kind} replaced {keys:?}"));
            *map = all.iter().map(|o| (key_of(o), value_of(o))).collect();
        }
    }
}

impl View {
    fn apply(&mut self, event: SourceEvent) {
        let log = &mut self.log;
        match event {
            SourceEvent::Service(e) => apply(
                &mut self.services,
                e,
                "Service",
                log,
                |o| key(&o.metadata),
                |o| o.metadata.resource_version.clone().unwrap_or_default(),
            ),
            SourceEvent::Slice(e) => apply(
                &mut self.slices,
                e,
                "EndpointSlice",
                log,
                |o| key(&o.metadata),
                |o| o.endpoints.len(),
            ),
            SourceEvent::Node(e) => apply(
                &mut self.nodes,
                e,
                "Node",
                log,
                |o| key(&o.metadata),
                |o| {
                    o.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
                        .unwrap_or_default()
                },
            ),
        }
    }

    fn services(&self) -> Vec<&str> {
        self.services.keys().map(String::as_str).collect()
    }

    fn replaced_count(&self, kind: &str) -> usize {
        let prefix = format!("{kind} replaced");
        self.log.iter().filter(|l| l.starts_with(&prefix)).count()
    }
}

/// The source's events, forwarded by a task that polls the stream all the time, as the daemon's
/// Watcher actor does (the watcher only talks to the server while it is polled).
struct Events {
    rx: mpsc::UnboundedReceiver<SourceEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    fn spawn(mut stream: BoxStream<'static, SourceEvent>, dispatch: tracing::Dispatch) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            async move {
                while let Some(event) = stream.next().await {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
            .with_subscriber(dispatch),
        );
        Self { rx, task }
    }

    async fn next(&mut self) -> SourceEvent {
        self.rx
            .recv()
            .await
            .expect("the Kubernetes stream never ends")
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies events until `done` holds; fails with the event log on timeout.
async fn until(events: &mut Events, view: &mut View, what: &str, done: impl Fn(&View) -> bool) {
    let wait = async {
        while !done(view) {
            view.apply(events.next().await);
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!(
            "timed out waiting for {what}; events so far: {:#?}",
            view.log
        );
    }
}

/// Collects events for `period`, failing if the stream ends.
async fn quiet_for(events: &mut Events, view: &mut View, period: Duration) {
    let deadline = tokio::time::Instant::now() + period;
    while let Ok(event) = tokio::time::timeout_at(deadline, events.next()).await {
        view.apply(event);
    }
}

/// Blocks (off the async workers) until the source has its three watches open.
fn wait_for_all_watches(server: &TestApiServer) {
    tokio::task::block_in_place(|| {
        for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
            assert!(
                server.wait_for_watches(kind, 1, WAIT),
                "no watch on {kind:?}"
            );
        }
    });
}

/// A server holding services `a` (plus one that belongs to another proxy), slice `a-1`, this
/// node and another, and a source started against it that has delivered its initial listing.
async fn started(
    options: Options,
    dispatch: tracing::Dispatch,
) -> (TestApiServer, Events, View, tempfile::TempDir) {
    let server = TestApiServer::start_with(options).expect("start the test API server");
    server.create(&service("a", json!({}))).unwrap();
    server
        .create(&service(
            "other-proxy",
            json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
        ))
        .unwrap();
    server.create(&slice("a-1", "a", &["10.244.1.2"])).unwrap();
    server
        .create(
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "headless-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "h",
                                    "service.kubernetes.io/headless": ""}},
            "addressType": "IPv4", "endpoints": []}),
        )
        .unwrap();
    server.create(&node(NODE, "z1")).unwrap();
    server.create(&node("node-b", "z1")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.kubeconfig(&kubeconfig).unwrap();
    let client = client_from(Some(&kubeconfig))
        .await
        .expect("client from kubeconfig");
    let mut stream = Events::spawn(KubeSource::new(client, NODE.into()).events(), dispatch);
    let mut view = View::default();
    until(&mut stream, &mut view, "the initial listing", |v| {
        v.replaced_count("Service") == 1
            && v.replaced_count("EndpointSlice") == 1
            && v.replaced_count("Node") == 1
    })
    .await;
    (server, stream, view, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_listing_then_live_changes_and_the_label_selector() {
    let (server, mut stream, mut view, _dir) =
        started(Options::default(), current_dispatch()).await;
    assert_eq!(
        view.log.len(),
        3,
        "the listing comes as exactly three Replaced: {:#?}",
        view.log
    );
    assert_eq!(
        view.services(),
        ["default/a"],
        "other-proxy's service is not taken"
    );
    assert_eq!(
        view.slices.keys().collect::<Vec<_>>(),
        ["default/a-1"],
        "headless slice is not taken"
    );
    assert_eq!(view.nodes.keys().collect::<Vec<_>>(), [&format!("/{NODE}")]);

    server.create(&service("b", json!({}))).unwrap();
    until(&mut stream, &mut view, "b applied", |v| {
        v.log.iter().any(|l| l == "Service applied default/b")
    })
    .await;

    server
        .apply(&slice("a-1", "a", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    until(&mut stream, &mut view, "a-1 scaled", |v| {
        v.slices.get("default/a-1") == Some(&2)
    })
    .await;

    server.apply(&node(NODE, "z2")).unwrap();
    server.apply(&node("node-b", "z9")).unwrap();
    until(&mut stream, &mut view, "zone z2", |v| {
        v.nodes.values().any(|z| z == "z2")
    })
    .await;

    server.delete(Kind::Service, "default", "a").unwrap();
    until(&mut stream, &mut view, "a deleted", |v| {
        v.services() == ["default/b"]
    })
    .await;

    // A service that belongs to another proxy never shows up, created or changed.
    server
        .create(&service(
            "other-2",
            json!({"service.kubernetes.io/service-proxy-name": "x"}),
        ))
        .unwrap();
    server.create(&service("c", json!({}))).unwrap();
    until(&mut stream, &mut view, "c applied", |v| {
        v.services.contains_key("default/c")
    })
    .await;
    assert!(
        !view.log.iter().any(|l| l.contains("other")),
        "another proxy's service appeared: {:#?}",
        view.log
    );
    assert!(
        !view.log.iter().any(|l| l.contains("node-b")),
        "another node appeared: {:#?}",
        view.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_watch_resumes_without_relisting() {
    let (server, mut stream, mut view, _dir) =
        started(Options::default(), current_dispatch()).await;
    let lists_before = server.request_count(Verb::List, Kind::Service);
    let events_before = view.log.len();

    wait_for_all_watches(&server);
    assert!(server.drop_watches() >= 3, "the source holds three watches");
    server.create(&service("d", json!({}))).unwrap();
    until(&mut stream, &mut view, "d applied after the cut", |v| {
        v.services.contains_key("default/d")
    })
    .await;

    let since: Vec<_> = view.log[events_before..].to_vec();
    assert!(
        !since.iter().any(|l| l.contains("replaced")),
        "a cut watch must resume from its resourceVersion, not relist: {since:#?}"
    );
    assert_eq!(view.services(), ["default/a", "default/d"]);
    assert_eq!(
        server.request_count(Verb::List, Kind::Service),
        lists_before,
        "no relist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_resource_version_relists_with_the_right_set() {
    // Without bookmarks the source's resourceVersion stays at its last event, so a write it
    // does not see (another node) followed by compaction leaves it expired.
    let options = Options {
        bookmark_interval: None,
        ..Options::default()
    };
    let (server, mut stream, mut view, _dir) = started(options, current_dispatch()).await;
    wait_for_all_watches(&server);
    server.apply(&node("node-c", "z1")).unwrap();
    server.compact();
    server.drop_watches();
    until(&mut stream, &mut view, "a relist after 410", |v| {
        v.replaced_count("Service") >= 2
    })
    .await;
    assert_eq!(
        view.services(),
        ["default/a"],
        "the relist holds the same set"
    );

    // Now with changes the source missed: they arrive in the relist.
    server.pause();
    server.delete(Kind::Service, "default", "a").unwrap();
    server.create(&service("e", json!({}))).unwrap();
    server.create(&slice("e-1", "e", &["10.244.1.7"])).unwrap();
    server.compact();
    server.resume().unwrap();
    until(&mut stream, &mut view, "the relist after the outage", |v| {
        v.services() == ["default/e"] && v.slices.contains_key("default/e-1")
    })
    .await;
    assert!(view.replaced_count("Service") >= 3, "{:#?}", view.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_api_server_is_away_nothing_is_lost_and_it_converges_after() {
    let warnings = Warnings::default();
    let (server, mut stream, mut view, _dir) =
        started(Options::default(), warnings.dispatch()).await;
    let before = (
        view.services.clone(),
        view.slices.clone(),
        view.nodes.clone(),
    );
    let events_before = view.log.len();

    server.pause();
    server.create(&service("f", json!({}))).unwrap();
    server
        .apply(&slice(
            "a-1",
            "a",
            &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
        ))
        .unwrap();
    // No events while away, and the stream does not end (quiet_for fails if it does).
    quiet_for(&mut stream, &mut view, Duration::from_secs(3)).await;
    assert_eq!(
        view.log.len(),
        events_before,
        "events while away: {:#?}",
        &view.log[events_before..]
    );
    assert_eq!(
        (
            view.services.clone(),
            view.slices.clone(),
            view.nodes.clone()
        ),
        before
    );
    assert!(
        warnings.any("resource=\"Service\""),
        "the failure is logged with the resource: {:?}",
        warnings.all()
    );

    server.resume().unwrap();
    until(&mut stream, &mut view, "convergence after resume", |v| {
        v.services() == ["default/a", "default/f"] && v.slices.get("default/a-1") == Some(&3)
    })
    .await;
}

/// Warnings logged (with their fields) while the guard lives.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, " {}={:?}", field.name(), value);
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

impl Warnings {
    fn dispatch(&self) -> tracing::Dispatch {
        tracing::Dispatch::new(tracing_subscriber::registry().with(self.clone()))
    }

    fn any(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|w| w.contains(needle))
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn current_dispatch() -> tracing::Dispatch {
    tracing::dispatcher::get_default(|d| d.clone())
}
