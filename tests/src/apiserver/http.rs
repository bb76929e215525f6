//! The HTTP face of the test API server: routing, list, get, write and the watch stream.
//!
//! Paths, query parameters, status codes and bodies follow the real API server closely enough
//! that kube-rs' `Api` and `watcher` work unchanged; where the double is simpler it says so.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::requests::{RequestRecord, Verb};
use super::resources::{self, Kind};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    event_for, parse_rv, status_doc, ApiServerError, Filter, Store, WatchMsg, WatchStart,
};

/// Error type of streamed bodies; an error frame cuts the connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body: a whole JSON document or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Default watch length when `timeoutSeconds` is absent (upstream picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// State shared by the control API and every connection.
pub struct Shared {
    /// Objects, history and open watches.
    pub store: Mutex<Store>,
    /// Every request, in arrival order.
    pub requests: Mutex<Vec<RequestRecord>>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Shared {
    /// The store, even if a panicking test thread poisoned the lock.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request log, even if poisoned.
    pub fn requests(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Collection(Kind, Option<String>),
    Object(Kind, String, String),
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v] => return Route::Resources(String::new(), v.to_string()),
        ["apis", g, v] => return Route::Resources(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    let kind = |plural: &str| Kind::from_path(group, version, plural);
    let namespaced = |k: &Kind| k.info().namespaced;
    match rest {
        [plural] => kind(plural).map_or(Route::Unknown, |k| Route::Collection(k, None)),
        [plural, name] => match kind(plural) {
            Some(k) if !namespaced(&k) => Route::Object(k, String::new(), name.to_string()),
            _ => Route::Unknown,
        },
        ["namespaces", ns, plural] => match kind(plural) {
            Some(k) if namespaced(&k) => Route::Collection(k, Some(ns.to_string())),
            _ => Route::Unknown,
        },
        ["namespaces", ns, plural, name] => match kind(plural) {
            Some(k) if namespaced(&k) => Route::Object(k, ns.to_string(), name.to_string()),
            _ => Route::Unknown,
        },
        _ => Route::Unknown,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    bytes_response(
        code,
        Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    )
}

fn bytes_response(code: u16, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body)
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(err: &ApiServerError) -> Response<Body> {
    json_response(err.code_and_reason().0, &err.status())
}

fn filter_from(query: &Query, namespace: Option<String>) -> Result<Filter, ApiServerError> {
    let bad = |e: super::selector::SelectorError| ApiServerError::Invalid(e.to_string());
    Ok(Filter {
        namespace,
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or("")).map_err(bad)?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or("")).map_err(bad)?,
    })
}

/// Serves one request and logs it.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query = Query::parse(&raw_query);
    let route = route(&path);
    let (verb, kind) = classify(&method, &route, &query);
    let resp = dispatch(&shared, req, route, &query, verb).await;
    let status = resp.status().as_u16();
    tracing::debug!(%method, %path, query = %raw_query, status, "test apiserver request");
    let mut log = shared.requests();
    let seq = log.len() as u64;
    log.push(RequestRecord {
        seq,
        method: method.to_string(),
        path,
        query: raw_query,
        verb,
        kind,
        resource_version: query.get("resourceVersion").map(str::to_string),
        status,
    });
    resp
}

fn classify(method: &Method, route: &Route, query: &Query) -> (Verb, Option<Kind>) {
    match (method, route) {
        (
            &Method::GET,
            Route::Version
            | Route::CoreVersions
            | Route::Groups
            | Route::Group(_)
            | Route::Resources(..),
        ) => (Verb::Discovery, None),
        (&Method::GET, Route::Collection(k, _)) if query.flag("watch") => (Verb::Watch, Some(*k)),
        (&Method::GET, Route::Collection(k, _)) => (Verb::List, Some(*k)),
        (&Method::POST, Route::Collection(k, _)) => (Verb::Create, Some(*k)),
        (&Method::GET, Route::Object(k, ..)) => (Verb::Get, Some(*k)),
        (&Method::PUT, Route::Object(k, ..)) => (Verb::Update, Some(*k)),
        (&Method::PATCH, Route::Object(k, ..)) => (Verb::Patch, Some(*k)),
        (&Method::DELETE, Route::Object(k, ..)) => (Verb::Delete, Some(*k)),
        (_, Route::Collection(k, _) | Route::Object(k, ..)) => (Verb::Other, Some(*k)),
        _ => (Verb::Other, None),
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    route: Route,
    query: &Query,
    verb: Verb,
) -> Response<Body> {
    let not_found = |what: &str| {
        json_response(
            404,
            &status_doc(
                404,
                "NotFound",
                &format!("the server could not find {what}"),
            ),
        )
    };
    let result = match (verb, route) {
        (Verb::Discovery, Route::Version) => Ok(json_response(200, &resources::version_doc())),
        (Verb::Discovery, Route::CoreVersions) => {
            Ok(json_response(200, &resources::core_versions_doc()))
        }
        (Verb::Discovery, Route::Groups) => Ok(json_response(200, &resources::group_list_doc())),
        (Verb::Discovery, Route::Group(g)) => Ok(resources::group_doc_for(&g).map_or_else(
            || not_found("the requested group"),
            |d| json_response(200, &d),
        )),
        (Verb::Discovery, Route::Resources(g, v)) => Ok(resources::resource_list_doc(&g, &v)
            .map_or_else(
                || not_found("the requested group version"),
                |d| json_response(200, &d),
            )),
        (Verb::List, Route::Collection(kind, ns)) => list(shared, kind, ns, query),
        (Verb::Watch, Route::Collection(kind, ns)) => watch(shared, kind, ns, query),
        (Verb::Get, Route::Object(kind, ns, name)) => shared
            .store()
            .get(kind, &ns, &name)
            .map(|o| json_response(200, &o))
            .ok_or(ApiServerError::NotFound {
                kind,
                namespace: ns,
                name,
            }),
        (Verb::Create, Route::Collection(kind, ns)) => match read_json(shared, req).await {
            Ok(obj) => create(shared, kind, ns, obj),
            Err(resp) => return resp,
        },
        (Verb::Update, Route::Object(kind, ns, name)) => match read_json(shared, req).await {
            Ok(obj) => update(shared, kind, ns, name, obj),
            Err(resp) => return resp,
        },
        (Verb::Patch, Route::Object(kind, ns, name)) => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            match read_json(shared, req).await {
                Ok(p) => patch(shared, kind, ns, name, &content_type, p),
                Err(resp) => return resp,
            }
        }
        (Verb::Delete, Route::Object(kind, ns, name)) => shared
            .store()
            .delete(kind, &ns, &name)
            .map(|o| json_response(200, &o)),
        (_, Route::Unknown) => Ok(not_found("the requested resource")),
        _ => Ok(json_response(
            405,
            &status_doc(
                405,
                "MethodNotAllowed",
                "the server does not allow this method",
            ),
        )),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

async fn read_json(shared: &Shared, req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let body = Limited::new(req.into_body(), shared.max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            json_response(
                413,
                &status_doc(413, "RequestEntityTooLarge", &format!("request body: {e}")),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error_response(&ApiServerError::Invalid(format!(
            "request body is not JSON: {e}"
        )))
    })
}

fn set_namespace(kind: Kind, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiServerError> {
    let (Some(ns), true) = (ns, kind.info().namespaced) else {
        return Ok(());
    };
    let meta = obj
        .as_object_mut()
        .ok_or_else(|| ApiServerError::Invalid("object is not a JSON object".into()))?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ApiServerError::Invalid("metadata is not an object".into()))?;
    match meta.get("namespace").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != ns => Err(ApiServerError::Invalid(format!(
            "the namespace of the object ({given}) does not match the namespace on the request ({ns})"
        ))),
        _ => {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
            Ok(())
        }
    }
}

fn check_name(name: &str, obj: &Value) -> Result<(), ApiServerError> {
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(given) if given != name => Err(ApiServerError::Invalid(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        ))),
        _ => Ok(()),
    }
}

fn create(
    shared: &Shared,
    kind: Kind,
    ns: Option<String>,
    mut obj: Value,
) -> Result<Response<Body>, ApiServerError> {
    set_namespace(kind, ns.as_deref(), &mut obj)?;
    let stored = shared.store().create(kind, obj)?;
    Ok(json_response(201, &stored))
}

fn update(
    shared: &Shared,
    kind: Kind,
    ns: String,
    name: String,
    mut obj: Value,
) -> Result<Response<Body>, ApiServerError> {
    check_name(&name, &obj)?;
    set_namespace(kind, Some(&ns), &mut obj)?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), Value::String(name));
    }
    let stored = shared.store().update(kind, obj, true)?;
    Ok(json_response(200, &stored))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// PATCH: merge and strategic-merge patches are applied as RFC 7386 merge patches (the double
/// does not know strategic list keys); server-side apply (sent as JSON) creates or merges.
fn patch(
    shared: &Shared,
    kind: Kind,
    ns: String,
    name: String,
    content_type: &str,
    patch: Value,
) -> Result<Response<Body>, ApiServerError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let apply = match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => true,
        other => {
            return Ok(json_response(
                415,
                &status_doc(
                    415,
                    "UnsupportedMediaType",
                    &format!("the test API server does not support patch type {other:?}"),
                ),
            ))
        }
    };
    let mut store = shared.store();
    let Some(current) = store.get(kind, &ns, &name) else {
        if apply {
            let mut obj = patch;
            check_name(&name, &obj)?;
            set_namespace(kind, Some(&ns), &mut obj)?;
            let stored = store.create(kind, obj)?;
            return Ok(json_response(201, &stored));
        }
        return Err(ApiServerError::NotFound {
            kind,
            namespace: ns,
            name,
        });
    };
    let mut obj = (*current).clone();
    merge_patch(&mut obj, &patch);
    let stored = store.update(kind, obj, true)?;
    Ok(json_response(200, &stored))
}

/// Continue tokens are `<list rv>/<namespace>/<name>` of the last item returned. The double
/// does not keep snapshots: later pages show current objects but carry the first page's
/// resourceVersion, so a watch from it replays whatever changed meanwhile (eventually consistent).
fn parse_continue(token: &str) -> Result<(u64, (String, String)), ApiServerError> {
    let bad = || ApiServerError::Invalid(format!("continue token {token:?} is not valid"));
    let mut parts = token.splitn(3, '/');
    let rv = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

fn list(
    shared: &Shared,
    kind: Kind,
    ns: Option<String>,
    query: &Query,
) -> Result<Response<Body>, ApiServerError> {
    let filter = filter_from(query, ns)?;
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiServerError::Invalid(format!("limit {l:?} is not a number")))?,
        ),
        None => None,
    };
    let store = shared.store();
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = parse_continue(token)?;
            if rv < store.compacted() {
                return Ok(json_response(
                    410,
                    &status_doc(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                ));
            }
            (rv, Some(key))
        }
        None => {
            if query.get("resourceVersionMatch") == Some("Exact") {
                let rv = parse_rv(query.get("resourceVersion").unwrap_or(""))?;
                if rv < store.compacted() {
                    return Err(ApiServerError::Expired {
                        requested: rv,
                        oldest: store.compacted(),
                    });
                }
            }
            (store.rv(), None)
        }
    };
    let (items, next) = store.list(kind, &filter, after.as_ref(), limit);
    drop(store);
    let info = kind.info();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some((ns, name)) = next {
        metadata["continue"] = Value::String(format!("{list_rv}/{ns}/{name}"));
    }
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut buf, &format!("{}List", info.kind)).expect("string serialises");
    buf.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut buf, &info.api_version()).expect("string serialises");
    buf.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut buf, &metadata).expect("value serialises");
    buf.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &**item).expect("value serialises");
    }
    buf.extend_from_slice(b"]}");
    Ok(bytes_response(200, Bytes::from(buf)))
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut buf, obj).expect("value serialises");
    buf.extend_from_slice(b"}\n");
    Bytes::from(buf)
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let info = kind.info();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": metadata}),
    )
}

type FrameTx = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

fn watch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    query: &Query,
) -> Result<Response<Body>, ApiServerError> {
    let filter = filter_from(query, ns)?;
    let from = match query.get("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        rv => Some(parse_rv(rv)?),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.flag("sendInitialEvents");
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    let start = shared.store().open_watch(kind, from, bookmarks);
    match start {
        Ok(start) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let id = start.id;
                run_watch(kind, filter, start, tx, timeout, initial_events).await;
                shared.store().close_watch(id);
            });
        }
        Err(err) => {
            // As upstream: the watch itself is accepted (200) and the expiry arrives as an
            // ERROR event carrying a Status; kube-rs then relists.
            let line = event_line("ERROR", &err.status());
            tx.try_send(Ok(Frame::data(line)))
                .map_err(|e| ApiServerError::Server(e.to_string()))?;
        }
    }
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn run_watch(
    kind: Kind,
    filter: Filter,
    mut start: WatchStart,
    tx: FrameTx,
    timeout: Duration,
    initial_events: bool,
) {
    let send = |line: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(line))).await.is_ok() }
    };
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    for change in std::mem::take(&mut start.backlog) {
        if let Some((t, obj)) = event_for(&change, &filter) {
            if !send(event_line(t.as_str(), &obj)).await {
                return;
            }
        }
    }
    if initial_events && !send(bookmark_line(kind, start.rv, true)).await {
        return;
    }
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            msg = start.rx.recv() => {
                let line = match msg {
                    None => return,
                    Some(WatchMsg::Cut) => {
                        let _ = tx.send(Err("watch cut by the test".into())).await;
                        return;
                    }
                    Some(WatchMsg::Bookmark(rv)) => bookmark_line(kind, rv, false),
                    Some(WatchMsg::Change(change)) => match event_for(&change, &filter) {
                        Some((t, obj)) => event_line(t.as_str(), &obj),
                        None => continue,
                    },
                };
                if !send(line).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/api/v1/services"),
            Route::Collection(Kind::Service, None)
        );
        assert_eq!(
            route("/api/v1/namespaces/ns/services/a"),
            Route::Object(Kind::Service, "ns".into(), "a".into())
        );
        assert_eq!(
            route("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"),
            Route::Collection(Kind::EndpointSlice, Some("ns".into()))
        );
        assert_eq!(
            route("/api/v1/nodes/n1"),
            Route::Object(Kind::Node, String::new(), "n1".into())
        );
        assert_eq!(route("/api/v1/services/a"), Route::Unknown);
        assert_eq!(route("/api/v1/namespaces/ns/nodes"), Route::Unknown);
        assert_eq!(route("/api/v1/pods"), Route::Unknown);
        assert_eq!(
            route("/apis/events.k8s.io/v1/namespaces/x/events"),
            Route::Collection(Kind::Event, Some("x".into()))
        );
        assert_eq!(route("/apis"), Route::Groups);
        assert_eq!(route("/version"), Route::Version);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(
            "labelSelector=%21service.kubernetes.io%2Fheadless%2Capp%3Dweb&watch=true&x=a+b&bad=%zz",
        );
        assert_eq!(
            q.get("labelSelector"),
            Some("!service.kubernetes.io/headless,app=web")
        );
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn continue_tokens() {
        assert_eq!(
            parse_continue("5//n1").unwrap(),
            (5, (String::new(), "n1".into()))
        );
        assert!(parse_continue("x/a/b").is_err());
    }
}
