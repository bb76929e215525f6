//! The resource types the test API server knows, and the discovery documents that describe them.
//!
//! One table ([`Kind::ALL`]) drives routing, storage and discovery, so adding a resource is one
//! enum variant plus one row in [`Kind::info`].

use serde_json::{json, Value};

/// A resource type the test API server stores and serves.
///
/// These are exactly the resources kproxy reads (Services, EndpointSlices, its Node) or writes
/// (Events, in both API groups); anything else is answered with 404 as an unknown resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` `Service`, namespaced (`/api/v1/services`).
    Service,
    /// `discovery.k8s.io/v1` `EndpointSlice`, namespaced.
    EndpointSlice,
    /// `v1` `Node`, cluster-scoped (`/api/v1/nodes`).
    Node,
    /// `v1` `Event` (the core group's events), namespaced.
    CoreEvent,
    /// `events.k8s.io/v1` `Event`, namespaced.
    Event,
}

/// The static facts about a [`Kind`]: where it lives in the API and how it is named.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version inside the group.
    pub version: &'static str,
    /// `kind` field of a single object.
    pub kind: &'static str,
    /// Plural resource name used in URL paths.
    pub plural: &'static str,
    /// Singular resource name, for discovery.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl KindInfo {
    /// The `apiVersion` string (`v1` or `group/version`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl Kind {
    /// Every kind the server knows.
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::CoreEvent,
        Kind::Event,
    ];

    /// Where this kind lives in the API.
    pub fn info(self) -> KindInfo {
        match self {
            Kind::Service => KindInfo {
                group: "",
                version: "v1",
                kind: "Service",
                plural: "services",
                singular: "service",
                namespaced: true,
            },
            Kind::EndpointSlice => KindInfo {
                group: "discovery.k8s.io",
                version: "v1",
                kind: "EndpointSlice",
                plural: "endpointslices",
                singular: "endpointslice",
                namespaced: true,
            },
            Kind::Node => KindInfo {
                group: "",
                version: "v1",
                kind: "Node",
                plural: "nodes",
                singular: "node",
                namespaced: false,
            },
            Kind::CoreEvent => KindInfo {
                group: "",
                version: "v1",
                kind: "Event",
                plural: "events",
                singular: "event",
                namespaced: true,
            },
            Kind::Event => KindInfo {
                group: "events.k8s.io",
                version: "v1",
                kind: "Event",
                plural: "events",
                singular: "event",
                namespaced: true,
            },
        }
    }

    /// The kind served under `group`/`version` with the URL name `plural`, if any.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let i = k.info();
            i.group == group && i.version == version && i.plural == plural
        })
    }

    /// The kind named by an object's `apiVersion` and `kind` fields, if any.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.info().api_version() == api_version && k.info().kind == kind)
    }
}

/// `GET /version`: what `kubectl version` and kube-rs' `apiserver_version` read.
pub fn version_doc() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kproxy-test-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`: the core group's versions.
pub fn core_versions_doc() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
    })
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Kind::ALL
        .iter()
        .map(|k| k.info().group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn group_doc(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": gv})
}

/// `GET /apis`: the named groups.
pub fn group_list_doc() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_doc).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`, if the group exists.
pub fn group_doc_for(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| group_doc(group))
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`: the resources served there, if any.
pub fn resource_list_doc(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = Kind::ALL
        .iter()
        .map(|k| k.info())
        .filter(|i| i.group == group && i.version == version)
        .map(|i| {
            json!({
                "name": i.plural,
                "singularName": i.singular,
                "namespaced": i.namespaced,
                "kind": i.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]
            })
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_type_meta_round_trip() {
        for kind in Kind::ALL {
            let i = kind.info();
            assert_eq!(Kind::from_path(i.group, i.version, i.plural), Some(kind));
            assert_eq!(Kind::from_type_meta(&i.api_version(), i.kind), Some(kind));
        }
        assert_eq!(Kind::from_path("", "v1", "pods"), None);
        assert_eq!(
            Kind::from_type_meta("events.k8s.io/v1", "Event"),
            Some(Kind::Event)
        );
        assert_eq!(Kind::from_type_meta("v1", "Event"), Some(Kind::CoreEvent));
    }

    #[test]
    fn discovery_lists_each_group_once() {
        let doc = group_list_doc();
        let names: Vec<&str> = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["discovery.k8s.io", "events.k8s.io"]);
        let core = resource_list_doc("", "v1").unwrap();
        assert_eq!(core["resources"].as_array().unwrap().len(), 3);
        assert!(resource_list_doc("apps", "v1").is_none());
    }
}
