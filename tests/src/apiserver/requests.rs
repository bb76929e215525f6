//! The request log: what clients asked, so a test can prove that a relist or re-watch happened.

use super::resources::Kind;

/// What a request did, in the API server's own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of a collection without `watch`.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// GET of one object.
    Get,
    /// POST to a collection.
    Create,
    /// PUT of one object.
    Update,
    /// PATCH of one object.
    Patch,
    /// DELETE of one object.
    Delete,
    /// `/version`, `/api`, `/apis` and the resource lists.
    Discovery,
    /// Anything the server does not serve (answered 404 or 405).
    Other,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Sequence number, starting at 0, in arrival order.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (still percent-encoded).
    pub query: String,
    /// What the request did.
    pub verb: Verb,
    /// The resource it addressed, if any.
    pub kind: Option<Kind>,
    /// `resourceVersion` query parameter, if given.
    pub resource_version: Option<String>,
    /// HTTP status code of the answer (200 for a watch, whose errors travel in the stream).
    pub status: u16,
}
