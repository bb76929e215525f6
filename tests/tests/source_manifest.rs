//! The manifest source against a real folder: what it reports at start, how it follows files
//! being added, edited and removed, and that bad input (a half-saved edit) loses nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kproxy::source::manifest::ManifestSource;
use kproxy::source::{ResourceEvent, SourceEvent};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const NODE: &str = "node-a";
/// Generous: a change shows up within a fraction of a second, but CI machines stall.
const WAIT: Duration = Duration::from_secs(20);

/// The picture a consumer builds from the events, as `namespace/name` keys.
#[derive(Default, Debug)]
struct View {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    replaced: usize,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

fn apply<K: Clone, F: Fn(&K) -> String>(
    map: &mut BTreeMap<String, K>,
    event: ResourceEvent<K>,
    key: F,
) -> bool {
    match event {
        ResourceEvent::Applied(o) => {
            map.insert(key(&o), o);
            false
        }
        ResourceEvent::Deleted(o) => {
            map.remove(&key(&o));
            false
        }
        ResourceEvent::Replaced(all) => {
            *map = all.into_iter().map(|o| (key(&o), o)).collect();
            true
        }
    }
}

impl View {
    fn apply(&mut self, event: SourceEvent) {
        let replaced = match event {
            SourceEvent::Service(e) => apply(&mut self.services, e, |o| key(&o.metadata)),
            SourceEvent::Slice(e) => apply(&mut self.slices, e, |o| key(&o.metadata)),
            SourceEvent::Node(e) => apply(&mut self.nodes, e, |o| key(&o.metadata)),
        };
        self.replaced += usize::from(replaced);
    }

    fn service_keys(&self) -> Vec<&str> {
        self.services.keys().map(String::as_str).collect()
    }

    fn slice_keys(&self) -> Vec<&str> {
        self.slices.keys().map(String::as_str).collect()
    }
}

/// Applies events until `done` holds; fails the test with the last view on timeout. The
/// condition is also checked every few milliseconds, for conditions outside the view (a log).
async fn until(
    stream: &mut BoxStream<'static, SourceEvent>,
    view: &mut View,
    what: &str,
    done: impl Fn(&View) -> bool,
) {
    let wait = async {
        while !done(view) {
            tokio::select! {
                event = stream.next() => view.apply(event.expect("the manifest stream never ends")),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!(
            "timed out waiting for {what}; view: services {:?}, slices {:?}, nodes {:?}",
            view.service_keys(),
            view.slice_keys(),
            view.nodes.keys().collect::<Vec<_>>()
        );
    }
}

/// Warnings (and their fields) logged while the guard lives, on any thread the source uses.
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
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn any(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|w| w.contains(needle))
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: 10.96.0.{port_lo}\n  ports:\n  - port: {port}\n    targetPort: 8080\n",
        port_lo = port % 250 + 1
    )
}

fn slice(name: &str, service: &str, addresses: &[&str]) -> String {
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- port: 8080\nendpoints:\n"
    );
    for a in addresses {
        let _ = writeln!(out, "- addresses: [\"{a}\"]\n  conditions: {{ready: true}}");
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write manifest");
}

fn start(dir: &Path) -> BoxStream<'static, SourceEvent> {
    ManifestSource::open(dir.to_path_buf(), NODE.into())
        .expect("folder exists")
        .events()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/manifests")
}

#[tokio::test]
async fn the_example_manifests_start_as_one_replaced_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut stream = ManifestSource::open(dir.path().to_path_buf(), "kproxy-demo-node".into())
        .unwrap()
        .events();
    let mut kinds = Vec::new();
    let mut view = View::default();
    for _ in 0..3 {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap();
        match &event {
            SourceEvent::Service(ResourceEvent::Replaced(_)) => kinds.push("Service"),
            SourceEvent::Slice(ResourceEvent::Replaced(_)) => kinds.push("EndpointSlice"),
            SourceEvent::Node(ResourceEvent::Replaced(_)) => kinds.push("Node"),
            other => panic!("expected only Replaced at start, got {other:?}"),
        }
        view.apply(event);
    }
    kinds.sort();
    assert_eq!(kinds, ["EndpointSlice", "Node", "Service"]);
    assert_eq!(view.service_keys(), ["default/echo", "default/web"]);
    assert_eq!(view.slice_keys(), ["default/echo-demo", "default/web-demo"]);
    assert_eq!(
        view.nodes.keys().collect::<Vec<_>>(),
        [&"/kproxy-demo-node".to_string()]
    );
    let web = &view.services["default/web"];
    let port = &web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 80);
    let web_slice = &view.slices["default/web-demo"];
    assert_eq!(web_slice.endpoints.len(), 3);
    for endpoint in &web_slice.endpoints {
        assert!(endpoint.addresses[0].starts_with("10.244.1."));
        assert_eq!(endpoint.node_name.as_deref(), Some("kproxy-demo-node"));
    }
    let echo = view.services["default/echo"].spec.as_ref().unwrap();
    assert_eq!(echo.type_.as_deref(), Some("NodePort"));
}

#[tokio::test]
async fn adding_editing_and_removing_files_converges() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            service("a", 80),
            slice("a-1", "a", &["10.244.1.2"])
        ),
    );
    let mut stream = start(dir.path());
    let mut view = View::default();
    until(&mut stream, &mut view, "the first file", |v| {
        v.replaced == 3 && v.service_keys() == ["default/a"] && v.slice_keys() == ["default/a-1"]
    })
    .await;

    // A new file.
    write(dir.path(), "b.yml", &service("b", 81));
    until(&mut stream, &mut view, "b added", |v| {
        v.service_keys() == ["default/a", "default/b"]
    })
    .await;

    // An edit: a scaled slice.
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            service("a", 80),
            slice("a-1", "a", &["10.244.1.2", "10.244.1.3"])
        ),
    );
    until(&mut stream, &mut view, "a-1 scaled to two", |v| {
        v.slices
            .get("default/a-1")
            .is_some_and(|s| s.endpoints.len() == 2)
    })
    .await;
    assert_eq!(
        view.service_keys(),
        ["default/a", "default/b"],
        "an edit of a does not touch b"
    );

    // An editor's atomic save: write a temporary file, rename it over the original.
    write(dir.path(), ".b.yml.tmp", &service("b", 91));
    std::fs::rename(dir.path().join(".b.yml.tmp"), dir.path().join("b.yml")).unwrap();
    until(&mut stream, &mut view, "b's port changed by rename", |v| {
        v.services
            .get("default/b")
            .is_some_and(|s| s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port == 91)
    })
    .await;

    // Removing a file removes exactly its objects.
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    until(&mut stream, &mut view, "a removed", |v| {
        v.service_keys() == ["default/b"] && v.slices.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_objects_and_names_the_file() {
    let warnings = Warnings::default();
    let _guard = warnings.install();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!("{}---\n{}", service("a", 80), service("a2", 82)),
    );
    let mut stream = start(dir.path());
    let mut view = View::default();
    until(&mut stream, &mut view, "start", |v| {
        v.replaced == 3 && v.service_keys() == ["default/a", "default/a2"]
    })
    .await;

    // Half-saved: the second document is cut off mid-flow-mapping.
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\nkind: Service\nmetadata: {{name: [",
            service("a", 80)
        ),
    );
    until(&mut stream, &mut view, "a warning naming a.yaml", |_| {
        warnings.any("a.yaml")
    })
    .await;
    let warning = warnings
        .all()
        .into_iter()
        .find(|w| w.contains("a.yaml"))
        .unwrap();
    assert!(
        warning.contains("document=1"),
        "names the document: {warning}"
    );

    // Another file changes; the view at that point still holds both of a.yaml's services.
    write(dir.path(), "z.yaml", &service("z", 83));
    until(&mut stream, &mut view, "z added", |v| {
        v.services.contains_key("default/z")
    })
    .await;
    assert_eq!(
        view.service_keys(),
        ["default/a", "default/a2", "default/z"]
    );

    // A valid document of the wrong shape is skipped with a warning; the rest of the file counts.
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\nkind: Service\nmetadata: {{name: a3}}\nspec: {{ports: 7}}\n",
            service("a", 80)
        ),
    );
    until(
        &mut stream,
        &mut view,
        "a2 gone after the fixed save",
        |v| v.service_keys() == ["default/a", "default/z"],
    )
    .await;
    assert!(
        warnings.any("a3"),
        "the skipped object is named: {:?}",
        warnings.all()
    );
}

#[tokio::test]
async fn only_this_nodes_node_and_only_unlabelled_services_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str, zone: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/zone: {zone}\n")
    };
    write(
        dir.path(),
        "nodes.yaml",
        &format!("{}---\n{}", node("node-b", "z1"), node(NODE, "z1")),
    );
    write(
        dir.path(),
        "labelled.yaml",
        &format!(
            "{}---\n{}---\n{}",
            service("plain", 80),
            service("other", 81).replace(
                "metadata:\n",
                "metadata:\n  labels:\n    service.kubernetes.io/service-proxy-name: someone-else\n"
            ),
            slice("h-1", "h", &["10.244.1.9"]).replace(
                "labels:\n",
                "labels:\n    service.kubernetes.io/headless: \"\"\n"
            ),
        ),
    );
    let mut stream = start(dir.path());
    let mut view = View::default();
    until(&mut stream, &mut view, "start", |v| v.replaced == 3).await;
    assert_eq!(view.nodes.keys().collect::<Vec<_>>(), [&format!("/{NODE}")]);
    assert_eq!(view.service_keys(), ["default/plain"]);
    assert!(
        view.slices.is_empty(),
        "headless slice excluded: {:?}",
        view.slice_keys()
    );

    // The Node changing zone is reported; changing the other node's does nothing visible.
    write(
        dir.path(),
        "nodes.yaml",
        &format!("{}---\n{}", node("node-b", "z9"), node(NODE, "z2")),
    );
    until(&mut stream, &mut view, "zone z2", |v| {
        v.nodes
            .values()
            .next()
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
            == Some("z2".into())
    })
    .await;
    assert_eq!(view.nodes.len(), 1);
}

#[tokio::test]
async fn json_files_and_lists_are_read() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "list.json",
        r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"ns1"},"spec":{"ports":[{"port":53,"protocol":"UDP"}]}},
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ignored"}}
        ]}"#,
    );
    write(dir.path(), "notes.txt", &service("txt", 80));
    let mut stream = start(dir.path());
    let mut view = View::default();
    until(&mut stream, &mut view, "start", |v| v.replaced == 3).await;
    assert_eq!(view.service_keys(), ["ns1/j"], "a .txt file is not read");
}

#[test]
fn a_missing_folder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let error = match ManifestSource::open(missing.clone(), NODE.into()) {
        Ok(_) => panic!("a missing folder must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&missing.display().to_string()), "{error}");
}

#[tokio::test]
async fn an_unchecked_folder_that_appears_later_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let later = dir.path().join("later");
    let mut stream = ManifestSource::new(later.clone(), NODE.into()).events();
    let mut view = View::default();
    until(&mut stream, &mut view, "an empty start", |v| {
        v.replaced == 3
    })
    .await;
    assert!(view.services.is_empty());

    std::fs::create_dir(&later).unwrap();
    write(&later, "a.yaml", &service("a", 80));
    until(&mut stream, &mut view, "a, found by polling", |v| {
        v.service_keys() == ["default/a"]
    })
    .await;
    write(&later, "b.yaml", &service("b", 81));
    until(&mut stream, &mut view, "b", |v| {
        v.service_keys() == ["default/a", "default/b"]
    })
    .await;
}
