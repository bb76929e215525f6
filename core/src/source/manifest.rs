//! Reads Services, EndpointSlices and optionally the Node from a folder of YAML manifests.
//!
//! For nodes without a cluster, for the demo and for tests. The folder is the whole truth: at
//! start and after every change the source emits a [`ResourceEvent::Replaced`] for each kind
//! whose contents changed (all three at start).
//!
//! What is read: every regular file directly in the folder (not in sub-folders) whose name ends
//! in `.yaml`, `.yml` or `.json` and does not start with `.` (editor swap files, and the
//! `..data` links of a mounted ConfigMap, are skipped; the ConfigMap's own file links are read).
//! A YAML file may hold several documents; a JSON file one or more values. Objects of kind
//! `Service` (v1), `EndpointSlice` (discovery.k8s.io/v1), the `Node` named like this node, and
//! `List`s of them are taken; other kinds are ignored. Services and slices carrying a label
//! that [`PROXY_LABEL_SELECTOR`](super::PROXY_LABEL_SELECTOR) excludes are dropped, as the API
//! server would. A missing namespace means `default`.
//!
//! Bad input loses nothing: a file that cannot be read or parsed keeps contributing the objects
//! it contributed last time (a half-saved edit does not delete services), with a warning naming
//! the file and the document. A well-formed document of the wrong shape (say a port that is a
//! list) is skipped with a warning and the rest of the file is used. Deleting a file removes its
//! objects. An object defined in two files is taken from the later file in name order.
//!
//! Change detection: inotify (the `notify` crate) wakes the source; changes are debounced
//! ([`DEBOUNCE`]) so an editor's several writes make one rescan. A rescan re-reads only files
//! that an event named or whose (size, mtime, ctime, inode) changed, so a large folder costs a
//! `stat` per file. A slow poll ([`SAFETY_POLL`]) backs inotify up (queue overflow, the folder
//! being replaced); when inotify cannot be set up at all, polling every [`FALLBACK_POLL`] is
//! the only trigger. Polling alone would add up to its period to every change's latency, which
//! is why inotify is the primary path.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{excluded_by_proxy_selector, ResourceEvent, SourceError, SourceEvent};

/// Quiet time after the last file-system event before the folder is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// The longest a stream of file-system events can delay a rescan.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Rescan period while inotify works (a safety net for lost events).
pub const SAFETY_POLL: Duration = Duration::from_secs(2);
/// Rescan period when inotify cannot be used.
pub const FALLBACK_POLL: Duration = Duration::from_millis(250);

/// A folder of manifests as a source of Services, EndpointSlices and this node's Node.
pub struct ManifestSource {
    dir: PathBuf,
    node_name: String,
}

impl ManifestSource {
    /// A source over `dir`, taking only the Node called `node_name`. The folder is not checked
    /// here; if it is missing when the stream starts, the stream reports empty contents and
    /// keeps polling for it. Use [`ManifestSource::open`] to refuse a missing folder up front.
    pub fn new(dir: PathBuf, node_name: String) -> Self {
        Self { dir, node_name }
    }

    /// Like [`ManifestSource::new`], but fails when `dir` is not an existing, readable folder,
    /// so a typo in the config stops start-up instead of silently serving nothing.
    pub fn open(dir: PathBuf, node_name: String) -> Result<Self, SourceError> {
        let refuse = |reason: String| SourceError::ManifestDir {
            path: dir.clone(),
            reason,
        };
        let meta = std::fs::metadata(&dir).map_err(|e| refuse(e.to_string()))?;
        if !meta.is_dir() {
            return Err(refuse("not a folder".into()));
        }
        std::fs::read_dir(&dir).map_err(|e| refuse(e.to_string()))?;
        Ok(Self::new(dir, node_name))
    }

    /// The folder's contents now and after every change. The stream never ends; file-system
    /// trouble is logged and waited out.
    pub fn events(self) -> BoxStream<'static, SourceEvent> {
        let runner = Runner::start(Folder::new(self.dir, self.node_name));
        futures::stream::unfold(runner, |mut runner| async move {
            let event = runner.next_event().await;
            Some((event, runner))
        })
        .boxed()
    }
}

/// The folder's contents, as the stream last reported them or is about to.
#[derive(Debug, Default, Clone, PartialEq)]
struct Snapshot {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
}

/// Watches the folder and turns rescans into events.
struct Runner {
    folder: Option<Folder>,
    /// File-system notifications; `None` when inotify could not be set up.
    notifications: Option<mpsc::UnboundedReceiver<notify::Result<notify::Event>>>,
    /// Kept alive for as long as notifications are wanted.
    watcher: Option<notify::RecommendedWatcher>,
    /// The folder's identity when the watch was set up, to notice it being replaced.
    watched_dir: Option<FileSig>,
    reported: Option<Snapshot>,
    pending: std::collections::VecDeque<SourceEvent>,
}

/// What the next rescan must re-read regardless of file metadata.
#[derive(Default)]
struct Dirty {
    all: bool,
    paths: HashSet<PathBuf>,
}

impl Runner {
    fn start(folder: Folder) -> Self {
        let mut runner = Self {
            folder: Some(folder),
            notifications: None,
            watcher: None,
            watched_dir: None,
            reported: None,
            pending: Default::default(),
        };
        runner.arm_watch();
        runner
    }

    fn dir(&self) -> &Path {
        &self
            .folder
            .as_ref()
            .expect("folder is only away during a rescan")
            .dir
    }

    /// Sets up (or re-sets up) inotify on the folder; on failure the runner polls.
    fn arm_watch(&mut self) {
        use notify::Watcher as _;
        let dir = self.dir().to_path_buf();
        let dir_sig = FileSig::of(&dir).ok();
        if dir_sig.is_some() && dir_sig == self.watched_dir && self.watcher.is_some() {
            return;
        }
        self.watcher = None;
        self.notifications = None;
        self.watched_dir = None;
        let Some(dir_sig) = dir_sig else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let armed = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .and_then(|mut watcher| {
            watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match armed {
            Ok(watcher) => {
                self.watcher = Some(watcher);
                self.notifications = Some(rx);
                self.watched_dir = Some(dir_sig);
            }
            Err(error) => tracing::warn!(
                dir = %dir.display(),
                error = %error,
                poll_ms = FALLBACK_POLL.as_millis() as u64,
                "cannot watch the manifest folder with inotify; polling it instead"
            ),
        }
    }

    async fn next_event(&mut self) -> SourceEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let dirty = if self.reported.is_none() {
                Dirty::default()
            } else {
                self.wait_for_change().await
            };
            self.rescan(dirty).await;
            self.arm_watch();
        }
    }

    /// Waits for a file-system event (then debounces) or for the poll period to pass.
    async fn wait_for_change(&mut self) -> Dirty {
        let mut dirty = Dirty::default();
        let Some(rx) = self.notifications.as_mut() else {
            tokio::time::sleep(FALLBACK_POLL).await;
            return dirty;
        };
        let poll_at = tokio::time::Instant::now() + SAFETY_POLL;
        loop {
            match tokio::time::timeout_at(poll_at, rx.recv()).await {
                Err(_elapsed) => return dirty,
                Ok(None) => {
                    // The watcher's thread is gone; poll until it is re-armed after the rescan.
                    self.watcher = None;
                    self.notifications = None;
                    return dirty;
                }
                Ok(Some(event)) => {
                    if note(&mut dirty, event) {
                        break;
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
        loop {
            let quiet = tokio::time::Instant::now() + DEBOUNCE;
            match tokio::time::timeout_at(quiet.min(deadline), rx.recv()).await {
                Ok(Some(event)) => {
                    note(&mut dirty, event);
                }
                Ok(None) | Err(_) => return dirty,
            }
        }
    }

    /// Re-reads what changed (on a blocking thread: files may be large) and queues a
    /// `Replaced` for every kind whose contents differ from what was last reported.
    async fn rescan(&mut self, dirty: Dirty) {
        let mut folder = self
            .folder
            .take()
            .expect("folder is only away during a rescan");
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                span.in_scope(|| {
                    folder.rescan(&dirty);
                    let snapshot = folder.snapshot();
                    (folder, snapshot)
                })
            })
        })
        .await;
        let (folder, snapshot) = match joined {
            Ok(done) => done,
            // Only a panic in our own parsing code can get here; there is no folder to go on
            // with, so it is not worth hiding.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        };
        self.folder = Some(folder);
        let before = self.reported.take();
        let first = before.is_none();
        let before = before.unwrap_or_default();
        if first || before.services != snapshot.services {
            self.pending
                .push_back(SourceEvent::Service(ResourceEvent::Replaced(
                    snapshot.services.clone(),
                )));
        }
        if first || before.slices != snapshot.slices {
            self.pending
                .push_back(SourceEvent::Slice(ResourceEvent::Replaced(
                    snapshot.slices.clone(),
                )));
        }
        if first || before.nodes != snapshot.nodes {
            self.pending
                .push_back(SourceEvent::Node(ResourceEvent::Replaced(
                    snapshot.nodes.clone(),
                )));
        }
        self.reported = Some(snapshot);
    }
}

/// Records one notification in `dirty`; returns false for events that change nothing (our own
/// reads open files, and inotify reports that too).
fn note(dirty: &mut Dirty, event: notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event {
        Err(error) => {
            tracing::warn!(error = %error, "manifest folder watch error; rescanning everything");
            dirty.all = true;
            true
        }
        Ok(event) => {
            let relevant = match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            };
            if event.need_rescan() {
                dirty.all = true;
            }
            if relevant {
                dirty.paths.extend(event.paths);
            }
            relevant || dirty.all
        }
    }
}

/// Identity of a file's current contents as far as `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
    ino: u64,
}

impl FileSig {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
        })
    }
}

/// What one file contributes.
#[derive(Debug, Default, Clone, PartialEq)]
struct FileObjects {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
}

struct FileEntry {
    sig: FileSig,
    objects: FileObjects,
}

/// The folder and what each file in it contributed at its last good read.
struct Folder {
    dir: PathBuf,
    node_name: String,
    files: BTreeMap<PathBuf, FileEntry>,
    /// Whether the last rescan could list the folder, so trouble is reported once, not per poll.
    listable: bool,
}

impl Folder {
    fn new(dir: PathBuf, node_name: String) -> Self {
        Self {
            dir,
            node_name,
            files: BTreeMap::new(),
            listable: true,
        }
    }

    /// Brings `files` up to date with the folder.
    fn rescan(&mut self, dirty: &Dirty) {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(error) => {
                if self.listable {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %error,
                        "cannot list the manifest folder; keeping what it held"
                    );
                }
                self.listable = false;
                return;
            }
        };
        if !self.listable {
            tracing::info!(dir = %self.dir.display(), "manifest folder is readable again");
            self.listable = true;
        }
        let mut present = HashSet::new();
        for entry in listing.flatten() {
            let path = entry.path();
            if !is_manifest_name(&path) {
                continue;
            }
            let sig = match FileSig::of(&path) {
                Ok(sig) => sig,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(file = %path.display(), error = %error, "cannot stat manifest; keeping its objects");
                    present.insert(path);
                    continue;
                }
            };
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            present.insert(path.clone());
            let unchanged = self.files.get(&path).is_some_and(|e| e.sig == sig);
            if unchanged && !dirty.all && !dirty.paths.contains(&path) {
                continue;
            }
            self.reload(path, sig);
        }
        self.files.retain(|path, _| {
            let keep = present.contains(path);
            if !keep {
                tracing::info!(file = %path.display(), "manifest removed; dropping its objects");
            }
            keep
        });
    }

    /// Reads and parses one file; on failure its previous objects stay.
    fn reload(&mut self, path: PathBuf, sig: FileSig) {
        let parsed = std::fs::read(&path)
            .map_err(|e| ParseError {
                document: None,
                message: format!("cannot read: {e}"),
            })
            .and_then(|bytes| parse_file(&path, &bytes, &self.node_name));
        match parsed {
            Ok(objects) => {
                tracing::debug!(
                    file = %path.display(),
                    services = objects.services.len(),
                    slices = objects.slices.len(),
                    nodes = objects.nodes.len(),
                    "manifest read"
                );
                self.files.insert(path, FileEntry { sig, objects });
            }
            Err(error) => {
                let kept = self.files.get(&path).map(|e| e.objects.clone());
                tracing::warn!(
                    file = %path.display(),
                    document = error.document,
                    error = %error.message,
                    kept_services = kept.as_ref().map_or(0, |k| k.services.len()),
                    kept_slices = kept.as_ref().map_or(0, |k| k.slices.len()),
                    "manifest cannot be parsed; keeping the objects it held before"
                );
                // Remember the new signature so the same broken file is not re-read and
                // re-reported on every poll; the next change to it is picked up as usual.
                self.files.insert(
                    path,
                    FileEntry {
                        sig,
                        objects: kept.unwrap_or_default(),
                    },
                );
            }
        }
    }

    /// The union of all files, one object per (namespace, name): later files win.
    fn snapshot(&self) -> Snapshot {
        fn merge<K: k8s_openapi::Metadata<Ty = ObjectMeta> + Clone>(
            kind: &str,
            by_key: &mut BTreeMap<(String, String), (PathBuf, K)>,
            file: &Path,
            objects: &[K],
        ) {
            for object in objects {
                let meta = object.metadata();
                let key = (
                    meta.namespace.clone().unwrap_or_default(),
                    meta.name.clone().unwrap_or_default(),
                );
                if let Some((earlier, _)) = by_key.get(&key) {
                    tracing::warn!(
                        kind,
                        namespace = %key.0,
                        name = %key.1,
                        earlier = %earlier.display(),
                        later = %file.display(),
                        "object defined twice; the later file wins"
                    );
                }
                by_key.insert(key, (file.to_path_buf(), object.clone()));
            }
        }
        let mut services = BTreeMap::new();
        let mut slices = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (file, entry) in &self.files {
            merge("Service", &mut services, file, &entry.objects.services);
            merge("EndpointSlice", &mut slices, file, &entry.objects.slices);
            merge("Node", &mut nodes, file, &entry.objects.nodes);
        }
        Snapshot {
            services: services.into_values().map(|(_, o)| o).collect(),
            slices: slices.into_values().map(|(_, o)| o).collect(),
            nodes: nodes.into_values().map(|(_, o)| o).collect(),
        }
    }
}

fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Why a file as a whole could not be used.
#[derive(Debug)]
struct ParseError {
    /// Index of the failing document (0-based), when the failure is in one.
    document: Option<usize>,
    message: String,
}

/// Parses one file's bytes into the objects it contributes. Syntax errors fail the whole file
/// (its old objects are then kept); well-formed documents of the wrong shape are skipped here
/// with a warning.
fn parse_file(path: &Path, bytes: &[u8], node_name: &str) -> Result<FileObjects, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError {
        document: None,
        message: format!("not UTF-8: {e}"),
    })?;
    let mut documents = Vec::new();
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if is_json {
        for (index, value) in serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
        {
            documents.push(value.map_err(|e| ParseError {
                document: Some(index),
                message: e.to_string(),
            })?);
        }
    } else {
        // Stop at the first error: after a syntax error yaml_serde's document iterator keeps
        // yielding the same error.
        for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
            documents.push(Value::deserialize(document).map_err(|e| ParseError {
                document: Some(index),
                message: e.to_string(),
            })?);
        }
    }
    let mut objects = FileObjects::default();
    for (index, value) in documents.into_iter().enumerate() {
        let at = Location {
            file: path,
            document: index,
            item: None,
        };
        collect(value, &at, node_name, &mut objects);
    }
    Ok(objects)
}

/// Where a document came from, for warnings.
struct Location<'a> {
    file: &'a Path,
    document: usize,
    /// Index inside a `List`, if the object is an item of one.
    item: Option<usize>,
}

impl Location<'_> {
    fn skip(&self, kind: &str, name: &str, reason: &str) {
        tracing::warn!(
            file = %self.file.display(),
            document = self.document,
            item = self.item,
            kind,
            name,
            reason,
            "manifest object skipped"
        );
    }
}

/// Sorts one document (or `List` item) into `objects`.
fn collect(value: Value, at: &Location<'_>, node_name: &str, objects: &mut FileObjects) {
    let object = match value {
        // An empty document (a stray `---`, a file of comments) holds nothing.
        Value::Null => return,
        Value::Object(object) => object,
        _ => return at.skip("", "", "not a mapping"),
    };
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match kind.as_str() {
        "Service" => {
            if let Some(mut service) = typed::<Service>(object, at, &kind, &name) {
                if admit(&mut service.metadata, at, &kind) {
                    objects.services.push(service);
                }
            }
        }
        "EndpointSlice" => {
            if let Some(mut slice) = typed::<EndpointSlice>(object, at, &kind, &name) {
                if admit(&mut slice.metadata, at, &kind) {
                    objects.slices.push(slice);
                }
            }
        }
        "Node" => {
            if name != node_name {
                tracing::debug!(file = %at.file.display(), name, "Node of another node ignored");
            } else if let Some(node) = typed::<Node>(object, at, &kind, &name) {
                objects.nodes.push(node);
            }
        }
        "" => at.skip("", &name, "no kind"),
        list if list.ends_with("List") => match object.get("items") {
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    let at = Location {
                        item: Some(index),
                        ..*at
                    };
                    collect(item.clone(), &at, node_name, objects);
                }
            }
            _ => at.skip(list, &name, "a List without an items array"),
        },
        other => tracing::debug!(
            file = %at.file.display(),
            document = at.document,
            kind = other,
            name,
            "object of a kind kproxy does not use ignored"
        ),
    }
}

/// Converts a document into its typed object, or skips it with the reason.
fn typed<K: serde::de::DeserializeOwned>(
    object: serde_json::Map<String, Value>,
    at: &Location<'_>,
    kind: &str,
    name: &str,
) -> Option<K> {
    match serde_json::from_value(Value::Object(object)) {
        Ok(typed) => Some(typed),
        Err(error) => {
            at.skip(kind, name, &error.to_string());
            None
        }
    }
}

/// Fills in what manifests may leave out and applies the proxy label selector; false when the
/// object is not for kproxy or cannot be named.
fn admit(meta: &mut ObjectMeta, at: &Location<'_>, kind: &str) -> bool {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        at.skip(kind, "", "metadata.name is missing");
        return false;
    }
    if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".into());
    }
    if excluded_by_proxy_selector(meta) {
        tracing::debug!(file = %at.file.display(), kind, name, "excluded by the proxy label selector");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<FileObjects, ParseError> {
        parse_file(Path::new(name), text.as_bytes(), "node-a")
    }

    #[test]
    fn multi_document_yaml_with_lists_and_other_kinds() {
        let objects = parse(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n\
             ---\n---\nkind: ConfigMap\nmetadata: {name: c}\n\
             ---\nkind: List\nitems:\n- {kind: Service, metadata: {name: b, namespace: x}}\n\
             - {kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, addressType: IPv4, endpoints: [], metadata: {name: b-1}}\n",
        )
        .expect("parses");
        let names: Vec<_> = objects
            .services
            .iter()
            .map(|s| {
                (
                    s.metadata.namespace.clone().unwrap(),
                    s.metadata.name.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [("default".into(), "a".into()), ("x".into(), "b".into())]
        );
        assert_eq!(objects.slices.len(), 1);
        assert_eq!(
            objects.slices[0].metadata.namespace.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn a_syntax_error_fails_the_file_and_names_the_document() {
        let error = parse(
            "x.yaml",
            "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: [\n",
        )
        .expect_err("broken");
        assert_eq!(error.document, Some(1));
    }

    #[test]
    fn a_wrong_shape_skips_only_that_document() {
        let objects = parse(
            "x.yaml",
            "kind: Service\nmetadata: {name: a}\nspec: {ports: 7}\n---\nkind: Service\nmetadata: {name: b}\n\
             ---\nkind: EndpointSlice\napiVersion: discovery.k8s.io/v1beta1\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\n",
        )
        .expect("parses");
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.services[0].metadata.name.as_deref(), Some("b"));
        assert!(
            objects.slices.is_empty(),
            "a v1beta1 slice is not a v1 slice"
        );
    }

    #[test]
    fn json_files_and_node_and_label_filters() {
        let objects = parse(
            "x.json",
            r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"node-a"}}
               {"kind":"Node","apiVersion":"v1","metadata":{"name":"node-b"}}
               {"kind":"Service","metadata":{"name":"p","labels":{"service.kubernetes.io/service-proxy-name":"x"}}}
               {"kind":"EndpointSlice","addressType":"IPv4","endpoints":[],"metadata":{"name":"h","labels":{"service.kubernetes.io/headless":""}}}"#,
        )
        .expect("parses");
        assert_eq!(objects.nodes.len(), 1);
        assert_eq!(objects.nodes[0].metadata.name.as_deref(), Some("node-a"));
        assert!(objects.services.is_empty());
        assert!(objects.slices.is_empty());
    }

    #[test]
    fn manifest_names() {
        assert!(is_manifest_name(Path::new("/d/a.yaml")));
        assert!(is_manifest_name(Path::new("/d/a.yml")));
        assert!(is_manifest_name(Path::new("/d/a.json")));
        assert!(!is_manifest_name(Path::new("/d/.a.yaml")));
        assert!(!is_manifest_name(Path::new("/d/a.yaml.swp")));
        assert!(!is_manifest_name(Path::new("/d/..data")));
        assert!(!is_manifest_name(Path::new("/d/.yaml")));
    }
}
