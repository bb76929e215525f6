//! Proof that the test API server speaks the list/watch protocol well enough for the real
//! kube-rs client: `kube::Api` for lists, gets, writes and raw watches, and
//! `kube::runtime::watcher` for the resume / relist / back-off paths the daemon relies on.
//!
//! Every wait has a timeout; nothing asserts on how long anything took.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_tests::apiserver::{Kind, Options, TestApiServer, Verb};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The selector kproxy's Service watch uses (upstream kube-proxy's).
const KPROXY_SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

const WAIT: Duration = Duration::from_secs(30);

/// A kube client built the way the daemon builds one: from a kubeconfig file.
async fn client(server: &TestApiServer, dir: &tempfile::TempDir) -> kube::Client {
    let path = dir.path().join("kubeconfig");
    server.kubeconfig(&path).expect("write kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube accepts the kubeconfig");
    kube::Client::try_from(config).expect("build kube client")
}

fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

async fn wait_for_watch(server: &TestApiServer, kind: Kind) {
    for _ in 0..(WAIT.as_millis() / 10) {
        if server.watch_count_of(kind) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {kind:?} watch was opened within {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_gets_and_writes_through_kube_api() {
    let server = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&server, &dir).await;

    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.major, "1");

    server
        .apply(&service("a", "web", json!({"app": "web"})))
        .unwrap();
    server
        .apply(&service("b", "db", json!({"app": "db"})))
        .unwrap();
    server
        .apply(&service(
            "a",
            "other-proxy",
            json!({"service.kubernetes.io/service-proxy-name": "x"}),
        ))
        .unwrap();
    server
        .apply(&service(
            "a",
            "headless",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();

    // All namespaces, then one namespace, then kproxy's selector, then key=value / key!=value.
    let all: Api<Service> = Api::all(client.clone());
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 4);
    assert_eq!(
        list.metadata.resource_version.as_deref(),
        Some(server.current_rv().to_string().as_str())
    );
    let names = |l: &kube::api::ObjectList<Service>| -> Vec<String> {
        l.items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    };
    let in_a: Api<Service> = Api::namespaced(client.clone(), "a");
    assert_eq!(
        names(&in_a.list(&ListParams::default()).await.unwrap()),
        ["headless", "other-proxy", "web"]
    );
    let selected = all
        .list(&ListParams::default().labels(KPROXY_SERVICE_SELECTOR))
        .await
        .unwrap();
    assert_eq!(names(&selected), ["web", "db"]);
    assert_eq!(
        names(
            &all.list(&ListParams::default().labels("app=db"))
                .await
                .unwrap()
        ),
        ["db"]
    );
    assert_eq!(
        names(
            &all.list(&ListParams::default().labels("app,app!=db"))
                .await
                .unwrap()
        ),
        ["web"]
    );

    // Paging: limit + continue walk the whole collection.
    let page = all.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = all
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.as_deref().unwrap_or("").is_empty());

    // Server-set metadata.
    let web = in_a.get("web").await.unwrap();
    assert!(web.metadata.uid.is_some());
    assert!(web.metadata.creation_timestamp.is_some());
    assert!(in_a.get("missing").await.is_err());

    // Nodes: cluster-scoped, selected by name as the daemon selects its own Node.
    for name in ["node-1", "node-2"] {
        server
            .apply(&json!({"apiVersion": "v1", "kind": "Node",
                           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}}}))
            .unwrap();
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let mine = nodes
        .list(&ListParams::default().fields("metadata.name=node-2"))
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);
    assert_eq!(mine.items[0].metadata.name.as_deref(), Some("node-2"));
    assert_eq!(
        nodes.get("node-1").await.unwrap().metadata.name.as_deref(),
        Some("node-1")
    );

    // Writes through the API land in the store with a new resourceVersion each.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "a");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    let before = server.current_rv();
    let created = slices.create(&PostParams::default(), &slice).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("a"));
    assert_eq!(server.current_rv(), before + 1);
    assert!(
        slices.create(&PostParams::default(), &slice).await.is_err(),
        "duplicate create refused"
    );
    let patched = slices
        .patch(
            "web-abc",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["extra"], "yes");
    let mut stale = created.clone();
    stale.metadata.labels = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
    assert!(
        slices
            .replace("web-abc", &PostParams::default(), &stale)
            .await
            .is_err(),
        "stale PUT conflicts"
    );
    slices
        .delete("web-abc", &DeleteParams::default())
        .await
        .unwrap();
    assert!(server.get(Kind::EndpointSlice, "a", "web-abc").is_none());

    // Events in both API groups are accepted and stored.
    let core_events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "a");
    core_events
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "e1"}, "involvedObject": {"kind": "Node", "name": "node-1"},
                "reason": "Test", "message": "hello", "type": "Normal"
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "a");
    events
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "e2"}, "eventTime": "2025-01-01T00:00:00.000000Z",
                "reportingController": "kproxy", "reportingInstance": "node-1",
                "action": "Sync", "reason": "Test", "type": "Normal"
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(server.objects(Kind::CoreEvent).len(), 1);
    assert_eq!(server.objects(Kind::Event).len(), 1);

    assert!(server.request_count(Verb::List, Kind::Service) >= 6);
    assert_eq!(server.request_count(Verb::Create, Kind::EndpointSlice), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_travel_through_list_and_watch() {
    let server = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&server, &dir).await;
    let api: Api<Service> = Api::namespaced(client, "big");
    let start = server.current_rv();
    let stream = api
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .unwrap();
    futures::pin_mut!(stream);

    let mut big = service("big", "huge", json!({}));
    big["metadata"]["annotations"] = json!({"blob": "x".repeat(1 << 20)});
    let svc: Service = serde_json::from_value(big).unwrap();
    api.create(&PostParams::default(), &svc)
        .await
        .expect("1 MB create");

    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        listed.items[0].metadata.annotations.as_ref().unwrap()["blob"].len(),
        1 << 20
    );
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    match event {
        Some(WatchEvent::Added(s)) => {
            assert_eq!(s.metadata.annotations.unwrap()["blob"].len(), 1 << 20)
        }
        other => panic!("expected ADDED of the large object, got {other:?}"),
    }
}

/// Reads the next non-bookmark event unless `bookmarks` is set.
async fn next_event<S>(stream: &mut S, bookmarks: bool) -> WatchEvent<Service>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Service>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("watch event within the timeout")
            .expect("stream still open")
            .expect("event parses");
        if bookmarks || !matches!(ev, WatchEvent::Bookmark(_)) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_streams_changes_in_order_with_bookmarks_and_410() {
    let server = TestApiServer::start_with(Options {
        bookmark_interval: None,
        ..Options::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&server, &dir).await;
    let api: Api<Service> = Api::all(client.clone());

    server.apply(&service("ns", "before", json!({}))).unwrap();
    let start = server.current_rv();
    let mut stream = api
        .watch(
            &WatchParams::default().labels("!hidden"),
            &start.to_string(),
        )
        .await
        .unwrap()
        .boxed();

    let added = server.apply(&service("ns", "web", json!({}))).unwrap();
    let mut changed = service("ns", "web", json!({"v": "2"}));
    changed["spec"]["clusterIP"] = json!("10.96.0.11");
    let modified = server.apply(&changed).unwrap();
    server
        .apply(&service("ns", "invisible", json!({"hidden": "1"})))
        .unwrap();
    let hide = server
        .apply(&service("ns", "before", json!({"hidden": "1"})))
        .unwrap();
    let deleted = server.delete(Kind::Service, "ns", "web").unwrap();

    let summary = |ev: &WatchEvent<Service>| match ev {
        WatchEvent::Added(s) => (
            "ADDED",
            s.metadata.name.clone().unwrap(),
            s.metadata.resource_version.clone().unwrap(),
        ),
        WatchEvent::Modified(s) => (
            "MODIFIED",
            s.metadata.name.clone().unwrap(),
            s.metadata.resource_version.clone().unwrap(),
        ),
        WatchEvent::Deleted(s) => (
            "DELETED",
            s.metadata.name.clone().unwrap(),
            s.metadata.resource_version.clone().unwrap(),
        ),
        WatchEvent::Bookmark(b) => (
            "BOOKMARK",
            String::new(),
            b.metadata.resource_version.clone(),
        ),
        WatchEvent::Error(e) => ("ERROR", e.reason.clone(), e.code.to_string()),
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(summary(&next_event(&mut stream, false).await));
    }
    let rv = |v: &Value| rv_of(v).to_string();
    assert_eq!(
        got,
        vec![
            ("ADDED", "web".to_string(), rv(&added)),
            ("MODIFIED", "web".to_string(), rv(&modified)),
            // Stopped matching the selector: DELETED at the relabel's resourceVersion.
            ("DELETED", "before".to_string(), rv(&hide)),
            ("DELETED", "web".to_string(), rv(&deleted)),
        ]
    );

    // A bookmark carries the current resourceVersion.
    server.send_bookmarks();
    let bookmark = summary(&next_event(&mut stream, true).await);
    assert_eq!(
        bookmark,
        ("BOOKMARK", String::new(), server.current_rv().to_string())
    );

    // Watching from before the compaction point: an ERROR event with 410 Expired.
    server.compact();
    let mut expired = api
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .unwrap()
        .boxed();
    match next_event(&mut expired, true).await {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {}", summary(&other).0),
    }
}

/// What a consumer of `kube::runtime::watcher` sees, folded into a store like a reflector.
#[derive(Default)]
struct Observed {
    store: BTreeMap<String, Service>,
    buffer: BTreeMap<String, Service>,
    inits: usize,
    init_dones: usize,
    errors: usize,
}

impl Observed {
    fn names(&self) -> Vec<String> {
        self.store.keys().cloned().collect()
    }
}

enum Seen {
    Event(Box<watcher::Event<Service>>),
    Error,
}

fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or(""),
        s.metadata.name.as_deref().unwrap_or("")
    )
}

/// Runs kproxy-style watcher (label selector, default back-off) and forwards what it yields.
fn spawn_watcher(client: kube::Client) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let api: Api<Service> = Api::all(client);
    tokio::spawn(async move {
        let stream = watcher(
            api,
            watcher::Config::default().labels(KPROXY_SERVICE_SELECTOR),
        )
        .default_backoff();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let seen = match item {
                Ok(ev) => Seen::Event(Box::new(ev)),
                Err(_) => Seen::Error,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Folds watcher output into `obs` until `done(obs)` holds; panics after [`WAIT`].
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    obs: &mut Observed,
    done: impl Fn(&Observed) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(obs) {
        let seen = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("watcher reached the expected state within the timeout")
            .expect("watcher still running");
        let Seen::Event(ev) = seen else {
            obs.errors += 1;
            continue;
        };
        match *ev {
            watcher::Event::Init => {
                obs.inits += 1;
                obs.buffer.clear();
            }
            watcher::Event::InitApply(s) => {
                obs.buffer.insert(key(&s), s);
            }
            watcher::Event::InitDone => {
                obs.init_dones += 1;
                obs.store = std::mem::take(&mut obs.buffer);
            }
            watcher::Event::Apply(s) => {
                obs.store.insert(key(&s), s);
            }
            watcher::Event::Delete(s) => {
                obs.store.remove(&key(&s));
            }
        }
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_applies_label_selector_like_kproxy() {
    let server = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    server.apply(&service("ns", "a", json!({}))).unwrap();
    server
        .apply(&service(
            "ns",
            "mesh",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ))
        .unwrap();
    let mut rx = spawn_watcher(client(&server, &dir).await);
    let mut obs = Observed::default();
    until(&mut rx, &mut obs, |o| o.init_dones == 1).await;
    assert_eq!(obs.names(), names(&["ns/a"]));

    server.apply(&service("ns", "b", json!({}))).unwrap();
    server
        .apply(&service(
            "ns",
            "headless",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
    until(&mut rx, &mut obs, |o| o.store.len() == 2).await;
    assert_eq!(obs.names(), names(&["ns/a", "ns/b"]));

    // `a` gets the label that excludes it: the watcher sees it deleted; `mesh` loses it: added.
    server
        .apply(&service(
            "ns",
            "a",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ))
        .unwrap();
    server.apply(&service("ns", "mesh", json!({}))).unwrap();
    until(&mut rx, &mut obs, |o| {
        o.names() == names(&["ns/b", "ns/mesh"])
    })
    .await;

    // A cut watch with its history intact resumes from where it was: no relist.
    wait_for_watch(&server, Kind::Service).await;
    assert_eq!(server.drop_watches(), 1);
    server.delete(Kind::Service, "ns", "b").unwrap();
    until(&mut rx, &mut obs, |o| o.names() == names(&["ns/mesh"])).await;
    wait_for_watch(&server, Kind::Service).await;
    assert_eq!(obs.inits, 1, "no relist was needed");
    assert_eq!(server.request_count(Verb::List, Kind::Service), 1);
    assert!(server.request_count(Verb::Watch, Kind::Service) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_makes_the_watcher_relist() {
    // Bookmarks only on demand, so the Service watcher's resourceVersion stays behind while
    // another kind moves the global resourceVersion on, as on a real cluster.
    let server = TestApiServer::start_with(Options {
        bookmark_interval: None,
        ..Options::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    server.apply(&service("ns", "a", json!({}))).unwrap();
    server.apply(&service("ns", "b", json!({}))).unwrap();
    let mut rx = spawn_watcher(client(&server, &dir).await);
    let mut obs = Observed::default();
    until(&mut rx, &mut obs, |o| o.init_dones == 1).await;
    wait_for_watch(&server, Kind::Service).await;
    let watcher_rv = server.current_rv();
    let lists_before = server.request_count(Verb::List, Kind::Service);

    server
        .apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
        .unwrap();
    server.compact();
    assert_eq!(server.drop_watches(), 1);
    // Changes after the compaction are picked up by the relist.
    server.delete(Kind::Service, "ns", "a").unwrap();
    server.apply(&service("ns", "c", json!({}))).unwrap();

    until(&mut rx, &mut obs, |o| o.init_dones == 2).await;
    assert_eq!(obs.inits, 2);
    until(&mut rx, &mut obs, |o| o.names() == names(&["ns/b", "ns/c"])).await;

    assert_eq!(
        server.request_count(Verb::List, Kind::Service),
        lists_before + 1
    );
    // The log shows why: a watch from the old resourceVersion, then the relist.
    let log = server.requests();
    let expired_watch = log
        .iter()
        .rposition(|r| {
            r.verb == Verb::Watch
                && r.kind == Some(Kind::Service)
                && r.resource_version.as_deref() == Some(watcher_rv.to_string().as_str())
        })
        .expect("a watch from the expired resourceVersion");
    assert!(log[expired_watch..]
        .iter()
        .any(|r| r.verb == Verb::List && r.kind == Some(Kind::Service)));

    // And the watch resumes: later changes stream in without another list.
    server.apply(&service("ns", "d", json!({}))).unwrap();
    until(&mut rx, &mut obs, |o| o.store.contains_key("ns/d")).await;
    assert_eq!(
        server.request_count(Verb::List, Kind::Service),
        lists_before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_backs_off_while_paused_and_catches_up_from_history() {
    let server = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    server.apply(&service("ns", "a", json!({}))).unwrap();
    let mut rx = spawn_watcher(client(&server, &dir).await);
    let mut obs = Observed::default();
    until(&mut rx, &mut obs, |o| o.init_dones == 1).await;
    wait_for_watch(&server, Kind::Service).await;
    let lists_before = server.request_count(Verb::List, Kind::Service);

    server.pause();
    assert!(server.is_paused());
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "a paused server refuses connections"
    );
    // The world moves on while the API server is away.
    server.apply(&service("ns", "b", json!({}))).unwrap();
    server.delete(Kind::Service, "ns", "a").unwrap();
    until(&mut rx, &mut obs, |o| o.errors >= 1).await;
    // Last known state is kept meanwhile.
    assert_eq!(obs.names(), names(&["ns/a"]));

    server.resume().expect("resume on the same port");
    until(&mut rx, &mut obs, |o| o.names() == names(&["ns/b"])).await;
    assert_eq!(
        obs.inits, 1,
        "history was still there: resumed without a relist"
    );
    assert_eq!(
        server.request_count(Verb::List, Kind::Service),
        lists_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_then_compacted_server_makes_the_watcher_relist() {
    let server = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    server.apply(&service("ns", "a", json!({}))).unwrap();
    server.apply(&service("ns", "b", json!({}))).unwrap();
    let mut rx = spawn_watcher(client(&server, &dir).await);
    let mut obs = Observed::default();
    until(&mut rx, &mut obs, |o| o.init_dones == 1).await;
    wait_for_watch(&server, Kind::Service).await;

    server.pause();
    server.delete(Kind::Service, "ns", "b").unwrap();
    server.apply(&service("ns", "c", json!({}))).unwrap();
    server.compact();
    until(&mut rx, &mut obs, |o| o.errors >= 1).await;
    server.resume().expect("resume on the same port");

    until(&mut rx, &mut obs, |o| {
        o.init_dones == 2 && o.names() == names(&["ns/a", "ns/c"])
    })
    .await;
    assert_eq!(obs.inits, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive_periodically_when_asked_for() {
    let server = TestApiServer::start_with(Options {
        bookmark_interval: Some(Duration::from_millis(100)),
        ..Options::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api: Api<Service> = Api::all(client(&server, &dir).await);
    server.apply(&service("ns", "a", json!({}))).unwrap();
    let rv = server.current_rv();
    let mut stream = api
        .watch(&WatchParams::default(), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream, true).await {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv.to_string()),
        _ => panic!("expected a BOOKMARK on a quiet watch"),
    }

    // Without allowWatchBookmarks no bookmark is sent: the next event is the next change.
    let mut plain = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    server.send_bookmarks();
    server.apply(&service("ns", "b", json!({}))).unwrap();
    match next_event(&mut plain, true).await {
        WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("b")),
        _ => panic!("a watch without allowWatchBookmarks got something other than the change"),
    }
}

/// Sends a raw HTTP/1.1 GET and returns the stream once the response headers have arrived.
fn raw_get(server: &TestApiServer, path: &str) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the response headers");
        got.extend_from_slice(&buf[..n]);
    }
    (conn, got)
}

fn read_to_close(conn: &mut std::net::TcpStream, got: &mut Vec<u8>) {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn dropped_watch_is_cut_mid_stream_and_timeout_ends_cleanly() {
    let server = TestApiServer::start_with(Options {
        bookmark_interval: None,
        ..Options::default()
    })
    .unwrap();
    server.apply(&service("ns", "a", json!({}))).unwrap();
    let rv = server.current_rv();

    // Cut: the chunked body never gets its terminating zero-length chunk.
    let (mut conn, mut got) = raw_get(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={rv}"),
    );
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(server.wait_for_watches(Kind::Service, 1, WAIT));
    server.apply(&service("ns", "b", json!({}))).unwrap();
    assert_eq!(server.drop_watches(), 1);
    read_to_close(&mut conn, &mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut watch must not end cleanly: {text}"
    );
    assert_eq!(server.watch_count(), 0);

    // Timeout: the server ends the stream properly after timeoutSeconds.
    let (mut conn, mut got) = raw_get(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
    );
    read_to_close_or_terminator(&mut conn, &mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("\"type\":\"ADDED\""),
        "replayed change: {text}"
    );
    assert!(
        text.ends_with("0\r\n\r\n"),
        "a timed-out watch ends cleanly: {text}"
    );
}

/// Reads until the chunked terminator arrives (the connection stays open for keep-alive).
fn read_to_close_or_terminator(conn: &mut std::net::TcpStream, got: &mut Vec<u8>) {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            return;
        }
        got.extend_from_slice(&buf[..n]);
    }
}
