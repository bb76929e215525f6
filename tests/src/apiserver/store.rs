//! The object store: etcd's part of the API server, reduced to what list/watch needs.
//!
//! One global, monotonically increasing resourceVersion (as etcd's revision); every write bumps
//! it, stamps the object and appends a [`Change`] to the history that watches replay from.
//! [`Store::compact`] drops the history, after which a watch from an older resourceVersion is
//! answered `410 Expired`, exactly the situation kube-rs recovers from by relisting.
//!
//! Open watches are registered here and fed under the same lock that writes take, so a watch
//! sees every change after its starting resourceVersion exactly once and in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::resources::Kind;
use super::selector::{FieldSelector, LabelSelector};

/// A stored object; shared so that a multi-megabyte object is not copied per watcher.
pub type Obj = Arc<Value>;

/// Why a store operation or request failed; each maps to the Status the real server would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiServerError {
    /// The object or request is malformed (no name, not an object, bad selector...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object's `apiVersion`/`kind` is not one the test API server serves.
    #[error("the test API server does not serve {api_version}/{kind}")]
    UnknownKind {
        /// `apiVersion` as given.
        api_version: String,
        /// `kind` as given.
        kind: String,
    },
    /// Create of an object that already exists.
    #[error("{kind:?} {namespace}/{name} already exists")]
    AlreadyExists {
        /// Resource type.
        kind: Kind,
        /// Namespace, empty for cluster-scoped objects.
        namespace: String,
        /// Object name.
        name: String,
    },
    /// Read, update or delete of an object that does not exist.
    #[error("{kind:?} {namespace}/{name} not found")]
    NotFound {
        /// Resource type.
        kind: Kind,
        /// Namespace, empty for cluster-scoped objects.
        namespace: String,
        /// Object name.
        name: String,
    },
    /// Update whose `metadata.resourceVersion` is not the stored one (optimistic concurrency).
    #[error("{kind:?} {namespace}/{name}: resourceVersion {given} is not the current {current}")]
    Conflict {
        /// Resource type.
        kind: Kind,
        /// Namespace, empty for cluster-scoped objects.
        namespace: String,
        /// Object name.
        name: String,
        /// resourceVersion in the request.
        given: String,
        /// resourceVersion stored.
        current: u64,
    },
    /// Watch or continue from a resourceVersion older than the last compaction.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// resourceVersion asked for.
        requested: u64,
        /// Oldest resourceVersion still answerable.
        oldest: u64,
    },
    /// The server's own machinery failed (socket, runtime).
    #[error("test API server: {0}")]
    Server(String),
}

impl ApiServerError {
    /// HTTP status code and `reason` of the Status object the real server sends for this error.
    pub fn code_and_reason(&self) -> (u16, &'static str) {
        match self {
            ApiServerError::Invalid(_) => (400, "BadRequest"),
            ApiServerError::UnknownKind { .. } => (404, "NotFound"),
            ApiServerError::AlreadyExists { .. } => (409, "AlreadyExists"),
            ApiServerError::NotFound { .. } => (404, "NotFound"),
            ApiServerError::Conflict { .. } => (409, "Conflict"),
            ApiServerError::Expired { .. } => (410, "Expired"),
            ApiServerError::Server(_) => (500, "InternalError"),
        }
    }

    /// The `Status` object (`kind: Status`) the real server sends for this error.
    pub fn status(&self) -> Value {
        let (code, reason) = self.code_and_reason();
        status_doc(code, reason, &self.to_string())
    }
}

/// A failure `Status` object as the real API server writes it.
pub fn status_doc(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

/// One write, as the history keeps it and watches replay it.
#[derive(Debug)]
pub struct Change {
    /// resourceVersion this write created.
    pub rv: u64,
    /// Resource type written.
    pub kind: Kind,
    /// The object before the write (for a delete: its last state, stamped with `rv`).
    pub prev: Option<Obj>,
    /// The object after the write; `None` for a delete.
    pub cur: Option<Obj>,
}

/// Which objects a list or watch asks for: namespace from the path, plus both selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Namespace from a namespaced path; `None` for all namespaces.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns) {
                return false;
            }
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Watch event type, as written in the `type` field of a watch line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object now matches (created, or started matching the selector).
    Added,
    /// The object changed and matches before and after.
    Modified,
    /// The object was deleted or stopped matching the selector.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// What one watcher sees of a change, following the real watch cache: an object that stops
/// matching is sent as DELETED carrying its previous content at the change's resourceVersion,
/// one that starts matching is sent as ADDED.
pub fn event_for(change: &Change, filter: &Filter) -> Option<(EventType, Obj)> {
    let cur_passes = change.cur.as_ref().is_some_and(|c| filter.matches(c));
    let prev_passes = change.prev.as_ref().is_some_and(|p| filter.matches(p));
    match (prev_passes, cur_passes, &change.cur, &change.prev) {
        (false, true, Some(cur), _) => Some((EventType::Added, cur.clone())),
        (true, true, Some(cur), _) => Some((EventType::Modified, cur.clone())),
        (true, false, None, Some(prev)) => Some((EventType::Deleted, prev.clone())),
        (true, false, Some(_), Some(prev)) => {
            let mut last = (**prev).clone();
            set_rv(&mut last, change.rv);
            Some((EventType::Deleted, Arc::new(last)))
        }
        _ => None,
    }
}

/// A message to one open watch.
#[derive(Debug)]
pub enum WatchMsg {
    /// A write to the watched kind.
    Change(Arc<Change>),
    /// Send a BOOKMARK at this resourceVersion (every change up to it has been queued before).
    Bookmark(u64),
    /// Cut the connection mid-stream, without the chunked terminator.
    Cut,
}

struct Subscriber {
    kind: Kind,
    bookmarks: bool,
    tx: UnboundedSender<WatchMsg>,
}

/// What a newly opened watch starts from.
pub struct WatchStart {
    /// Registration id, for [`Store::close_watch`].
    pub id: u64,
    /// Changes to replay before anything from `rx`.
    pub backlog: Vec<Arc<Change>>,
    /// The global resourceVersion when the watch was registered.
    pub rv: u64,
    /// Everything after `rv`.
    pub rx: UnboundedReceiver<WatchMsg>,
}

type Key = (String, String);

/// The objects, their history and the open watches.
pub struct Store {
    rv: u64,
    compacted: u64,
    uid_seq: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Obj>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    watchers: HashMap<u64, Subscriber>,
    next_watch: u64,
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Parses a resourceVersion string; the real server refuses anything but a decimal number.
pub fn parse_rv(rv: &str) -> Result<u64, ApiServerError> {
    rv.parse()
        .map_err(|_| ApiServerError::Invalid(format!("resourceVersion {rv:?} is not a number")))
}

impl Store {
    /// An empty store at resourceVersion 1 keeping at most `history_limit` changes (older ones
    /// are compacted away, as etcd's periodic compaction does).
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 1,
            compacted: 0,
            uid_seq: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(2),
            watchers: HashMap::new(),
            next_watch: 1,
        }
    }

    /// The current global resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Oldest resourceVersion a watch may still start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Checks the object's type meta against `kind`, fills it in when absent, and works out
    /// where the object lives.
    fn normalise(&self, kind: Kind, obj: &mut Value) -> Result<Key, ApiServerError> {
        let info = kind.info();
        let map = obj
            .as_object_mut()
            .ok_or_else(|| ApiServerError::Invalid("object is not a JSON object".into()))?;
        let api_version = info.api_version();
        match (map.get("apiVersion"), map.get("kind")) {
            (Some(Value::String(av)), Some(Value::String(k)))
                if av != &api_version || k != info.kind =>
            {
                return Err(ApiServerError::Invalid(format!(
                    "object is {av}/{k}, expected {api_version}/{}",
                    info.kind
                )))
            }
            _ => {}
        }
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(info.kind.into()));
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| ApiServerError::Invalid("metadata is not an object".into()))?;
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(ApiServerError::Invalid("metadata.name is required".into()));
        }
        let name = name.to_string();
        let namespace = if info.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        Ok((namespace, name))
    }

    fn record(&mut self, kind: Kind, prev: Option<Obj>, cur: Option<Obj>) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            prev,
            cur,
        });
        self.watchers
            .retain(|_, w| w.kind != kind || w.tx.send(WatchMsg::Change(change.clone())).is_ok());
        self.history.push_back(change);
        if self.history.len() > self.history_limit {
            while self.history.len() > self.history_limit / 2 {
                if let Some(old) = self.history.pop_front() {
                    self.compacted = old.rv;
                }
            }
        }
    }

    /// Creates an object; the server sets resourceVersion, uid, creationTimestamp and generation.
    /// An object with only `metadata.generateName` gets a unique name, as upstream does.
    pub fn create(&mut self, kind: Kind, mut obj: Value) -> Result<Obj, ApiServerError> {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let unnamed = meta
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if let (true, Some(prefix)) =
                (unnamed, meta.get("generateName").and_then(Value::as_str))
            {
                let name = format!("{prefix}{:05x}", self.uid_seq + 1);
                meta.insert("name".into(), Value::String(name));
            }
        }
        let key = self.normalise(kind, &mut obj)?;
        if self.objects.entry(kind).or_default().contains_key(&key) {
            return Err(ApiServerError::AlreadyExists {
                kind,
                namespace: key.0,
                name: key.1,
            });
        }
        self.rv += 1;
        self.uid_seq += 1;
        let rv = self.rv;
        let meta = obj["metadata"].as_object_mut().expect("normalised");
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert(
            "uid".into(),
            Value::String(format!("00000000-0000-4000-8000-{:012x}", self.uid_seq)),
        );
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("generation".into(), Value::from(1));
        let obj = Arc::new(obj);
        self.objects
            .entry(kind)
            .or_default()
            .insert(key, obj.clone());
        self.record(kind, None, Some(obj.clone()));
        Ok(obj)
    }

    /// Replaces an existing object. With `check_rv`, a `metadata.resourceVersion` in `obj` that
    /// is not the stored one is refused with [`ApiServerError::Conflict`], as a PUT is upstream.
    pub fn update(
        &mut self,
        kind: Kind,
        mut obj: Value,
        check_rv: bool,
    ) -> Result<Obj, ApiServerError> {
        let key = self.normalise(kind, &mut obj)?;
        let Some(old) = self.objects.entry(kind).or_default().get(&key).cloned() else {
            return Err(ApiServerError::NotFound {
                kind,
                namespace: key.0,
                name: key.1,
            });
        };
        if check_rv {
            if let Some(given) = meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty()) {
                if given != self.current_rv_of(&old).to_string() {
                    return Err(ApiServerError::Conflict {
                        kind,
                        namespace: key.0,
                        name: key.1,
                        given: given.to_string(),
                        current: self.current_rv_of(&old),
                    });
                }
            }
        }
        self.rv += 1;
        let rv = self.rv;
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if old.get("spec") != obj.get("spec") {
            generation + 1
        } else {
            generation
        };
        let meta = obj["metadata"].as_object_mut().expect("normalised");
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        for field in ["uid", "creationTimestamp"] {
            if let Some(v) = old["metadata"].get(field) {
                meta.insert(field.into(), v.clone());
            }
        }
        meta.insert("generation".into(), Value::from(generation));
        let obj = Arc::new(obj);
        self.objects
            .entry(kind)
            .or_default()
            .insert(key, obj.clone());
        self.record(kind, Some(old), Some(obj.clone()));
        Ok(obj)
    }

    fn current_rv_of(&self, obj: &Value) -> u64 {
        meta_str(obj, "resourceVersion")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Creates or replaces, whichever applies (the test's "make it so").
    pub fn apply(&mut self, kind: Kind, mut obj: Value) -> Result<Obj, ApiServerError> {
        let key = self.normalise(kind, &mut obj)?;
        if self.objects.entry(kind).or_default().contains_key(&key) {
            self.update(kind, obj, false)
        } else {
            self.create(kind, obj)
        }
    }

    /// Deletes an object; returns its last state stamped with the deletion's resourceVersion
    /// (what DELETED watch events carry, so a watcher resumes after the deletion).
    pub fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Obj, ApiServerError> {
        let namespace = if kind.info().namespaced {
            namespace
        } else {
            ""
        };
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = self.objects.entry(kind).or_default().remove(&key) else {
            return Err(ApiServerError::NotFound {
                kind,
                namespace: key.0,
                name: key.1,
            });
        };
        self.rv += 1;
        let mut last = (*old).clone();
        set_rv(&mut last, self.rv);
        let last = Arc::new(last);
        self.record(kind, Some(last.clone()), None);
        Ok(last)
    }

    /// One object, if stored.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Obj> {
        let namespace = if kind.info().namespaced {
            namespace
        } else {
            ""
        };
        self.objects
            .get(&kind)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The selected objects of a kind in (namespace, name) order, after the key `after` if
    /// given (for `continue`), at most `limit` of them; plus the key of the last one returned
    /// when more remain.
    pub fn list(
        &self,
        kind: Kind,
        filter: &Filter,
        after: Option<&(String, String)>,
        limit: Option<usize>,
    ) -> (Vec<Obj>, Option<(String, String)>) {
        let Some(objects) = self.objects.get(&kind) else {
            return (Vec::new(), None);
        };
        let range = match after {
            Some(k) => objects.range::<Key, _>((
                std::ops::Bound::Excluded(k.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => objects.range::<Key, _>(..),
        };
        let mut items = Vec::new();
        let mut selected = range.filter(|(_, o)| filter.matches(o));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        for (key, obj) in selected.by_ref() {
            items.push(obj.clone());
            if items.len() == limit {
                let more = selected.next().is_some();
                return (items, more.then(|| key.clone()));
            }
        }
        (items, None)
    }

    /// Every stored object of a kind.
    pub fn objects(&self, kind: Kind) -> Vec<Obj> {
        self.objects
            .get(&kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Registers a watch from `from` (None: from now, replaying the current objects as ADDED,
    /// as upstream does for resourceVersion "0" or unset).
    pub fn open_watch(
        &mut self,
        kind: Kind,
        from: Option<u64>,
        bookmarks: bool,
    ) -> Result<WatchStart, ApiServerError> {
        let backlog = match from {
            None => self
                .objects(kind)
                .into_iter()
                .map(|o| {
                    Arc::new(Change {
                        rv: self.current_rv_of(&o),
                        kind,
                        prev: None,
                        cur: Some(o),
                    })
                })
                .collect(),
            Some(rv) if rv < self.compacted => {
                return Err(ApiServerError::Expired {
                    requested: rv,
                    oldest: self.compacted,
                })
            }
            Some(rv) => self
                .history
                .iter()
                .filter(|c| c.kind == kind && c.rv > rv)
                .cloned()
                .collect(),
        };
        let (tx, rx) = unbounded_channel();
        let id = self.next_watch;
        self.next_watch += 1;
        self.watchers.insert(
            id,
            Subscriber {
                kind,
                bookmarks,
                tx,
            },
        );
        Ok(WatchStart {
            id,
            backlog,
            rv: self.rv,
            rx,
        })
    }

    /// Unregisters a watch (its connection ended).
    pub fn close_watch(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// Number of registered watches, optionally of one kind.
    pub fn watch_count(&self, kind: Option<Kind>) -> usize {
        self.watchers
            .values()
            .filter(|w| kind.is_none_or(|k| w.kind == k))
            .count()
    }

    /// Tells every open watch to cut its connection mid-stream; returns how many there were.
    pub fn cut_watches(&mut self) -> usize {
        let n = self.watchers.len();
        for (_, w) in self.watchers.drain() {
            let _ = w.tx.send(WatchMsg::Cut);
        }
        n
    }

    /// Queues a BOOKMARK at the current resourceVersion to every watch that asked for them.
    pub fn bookmark_all(&mut self) {
        let rv = self.rv;
        self.watchers
            .retain(|_, w| !w.bookmarks || w.tx.send(WatchMsg::Bookmark(rv)).is_ok());
    }

    /// Forgets the history: a watch from a resourceVersion older than now gets `410 Expired`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "ns", "labels": labels},
               "spec": {"clusterIP": "10.0.0.1"}})
    }

    fn drain(rx: &mut UnboundedReceiver<WatchMsg>, filter: &Filter) -> Vec<(EventType, String)> {
        let mut out = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let WatchMsg::Change(c) = msg {
                if let Some((t, o)) = event_for(&c, filter) {
                    out.push((
                        t,
                        o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn writes_stamp_metadata_and_bump_rv() {
        let mut s = Store::new(100);
        let a = s.create(Kind::Service, svc("a", json!({}))).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert!(a["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert!(a["metadata"]["creationTimestamp"].is_string());
        assert!(matches!(
            s.create(Kind::Service, svc("a", json!({}))),
            Err(ApiServerError::AlreadyExists { .. })
        ));
        let mut changed = svc("a", json!({}));
        changed["spec"]["clusterIP"] = json!("10.0.0.2");
        changed["metadata"]["resourceVersion"] = json!("1");
        assert!(matches!(
            s.update(Kind::Service, changed.clone(), true),
            Err(ApiServerError::Conflict { .. })
        ));
        let b = s.update(Kind::Service, changed, false).unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], "3");
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        assert_eq!(b["metadata"]["generation"], 2);
        let gone = s.delete(Kind::Service, "ns", "a").unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "4");
        assert_eq!(s.rv(), 4);
        assert!(s.get(Kind::Service, "ns", "a").is_none());
    }

    #[test]
    fn watch_replays_history_and_expires_after_compaction() {
        let mut s = Store::new(100);
        s.create(Kind::Service, svc("a", json!({}))).unwrap();
        let start_rv = s.rv();
        s.create(Kind::Service, svc("b", json!({}))).unwrap();
        s.create(
            Kind::Node,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}),
        )
        .unwrap();
        let w = s.open_watch(Kind::Service, Some(start_rv), false).unwrap();
        assert_eq!(w.backlog.len(), 1);
        assert_eq!(w.backlog[0].cur.as_ref().unwrap()["metadata"]["name"], "b");
        s.compact();
        assert!(matches!(
            s.open_watch(Kind::Service, Some(start_rv), false),
            Err(ApiServerError::Expired { .. })
        ));
        assert!(s.open_watch(Kind::Service, Some(s.rv()), false).is_ok());
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let mut s = Store::new(100);
        let filter = Filter {
            labels: LabelSelector::parse("!skip").unwrap(),
            ..Filter::default()
        };
        let mut w = s.open_watch(Kind::Service, Some(s.rv()), false).unwrap();
        s.create(Kind::Service, svc("a", json!({}))).unwrap(); // 2 ADDED
        s.apply(Kind::Service, svc("a", json!({"x": "1"}))).unwrap(); // 3 MODIFIED
        s.apply(Kind::Service, svc("a", json!({"skip": ""})))
            .unwrap(); // 4 DELETED
        s.apply(Kind::Service, svc("a", json!({"skip": "again"})))
            .unwrap(); // 5 nothing
        s.apply(Kind::Service, svc("a", json!({}))).unwrap(); // 6 ADDED
        s.delete(Kind::Service, "ns", "a").unwrap(); // 7 DELETED
        let got = drain(&mut w.rx, &filter);
        let want: Vec<(EventType, String)> = [
            (EventType::Added, "2"),
            (EventType::Modified, "3"),
            (EventType::Deleted, "4"),
            (EventType::Added, "6"),
            (EventType::Deleted, "7"),
        ]
        .into_iter()
        .map(|(t, rv)| (t, rv.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn history_limit_compacts_oldest() {
        let mut s = Store::new(4);
        let first = s.rv();
        for i in 0..5 {
            s.create(Kind::Service, svc(&format!("s{i}"), json!({})))
                .unwrap();
        }
        assert!(s.compacted() > first);
        assert!(s.open_watch(Kind::Service, Some(first), false).is_err());
    }

    #[test]
    fn list_pages_in_key_order() {
        let mut s = Store::new(100);
        for name in ["c", "a", "b"] {
            s.create(Kind::Service, svc(name, json!({}))).unwrap();
        }
        let f = Filter::default();
        let (page, next) = s.list(Kind::Service, &f, None, Some(2));
        let names: Vec<&str> = page
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let (page, next) = s.list(Kind::Service, &f, next.as_ref(), Some(2));
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["metadata"]["name"], "c");
        assert!(next.is_none());
    }
}
