//! Label and field selectors, parsed and matched the way the real API server does.
//!
//! kproxy's Service watch uses `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`
//! and its Node watch uses `metadata.name=<node>`, so both must filter exactly as upstream.

use serde_json::Value;

/// Why a selector string was refused (answered with 400 Bad Request, as upstream does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`: every requirement must hold (comma means AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(selector: &str, rest: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError {
            selector: selector.to_string(),
            reason: "expected a parenthesised set of values".into(),
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses a selector; the empty string selects everything.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: selector.to_string(),
            reason: reason.to_string(),
        };
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_top_level(selector) {
            let part = part.trim();
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                LabelReq::NotIn(k.trim().to_string(), parse_set(selector, rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                LabelReq::In(k.trim().to_string(), parse_set(selector, rest)?)
            } else {
                LabelReq::Exists(part.to_string())
            };
            let key = match &req {
                LabelReq::Exists(k)
                | LabelReq::NotExists(k)
                | LabelReq::Equals(k, _)
                | LabelReq::NotEquals(k, _)
                | LabelReq::In(k, _)
                | LabelReq::NotIn(k, _) => k,
            };
            if !valid_key(key) {
                return Err(err(&format!("invalid label key {key:?}")));
            }
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    /// Whether an object (its `metadata.labels`) satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.reqs.iter().all(|req| match req {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        })
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value` or `path!=value`, comma means AND.
///
/// Paths are dotted JSON paths into the object (`metadata.name`, `metadata.namespace`,
/// `spec.nodeName`); a missing field compares as the empty string, as upstream's field sets do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, String, bool)>,
}

impl FieldSelector {
    /// Parses a selector; the empty string selects everything.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in selector.split(',') {
            let (path, value, equal) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, true)
            } else {
                return Err(SelectorError {
                    selector: selector.to_string(),
                    reason: format!("{part:?} is not of the form field=value or field!=value"),
                });
            };
            let path = path.trim();
            if !valid_key(path) || path.contains('/') {
                return Err(SelectorError {
                    selector: selector.to_string(),
                    reason: format!("invalid field path {path:?}"),
                });
            }
            reqs.push((path.to_string(), value.trim().to_string(), equal));
        }
        Ok(Self { reqs })
    }

    /// Whether the object's fields satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, value, equal)| {
            let actual = path
                .split('.')
                .try_fold(obj, |v, seg| v.get(seg))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn kproxy_service_selector() {
        let sel = LabelSelector::parse(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        assert!(sel.matches(&labelled(json!({"app": "web"}))));
        assert!(sel.matches(&json!({"metadata": {"name": "no-labels"}})));
        assert!(!sel.matches(&labelled(
            json!({"service.kubernetes.io/service-proxy-name": "other"})
        )));
        assert!(!sel.matches(&labelled(json!({"service.kubernetes.io/headless": ""}))));
    }

    #[test]
    fn equality_inequality_and_sets() {
        let obj = labelled(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&obj);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"));
        assert!(!m("app!=web"));
        assert!(m("app in (db, web)"));
        assert!(!m("app notin (db,web)"));
        assert!(m("missing notin (x)"));
        assert!(!m("missing in (x)"));
        assert!(m("app in (web),tier=front"));
        assert!(!m("app in (web),tier=back"));
        assert!(m(""));
    }

    #[test]
    fn bad_selectors_are_refused() {
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn field_selector_on_name_and_namespace() {
        let obj = labelled(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&obj);
        assert!(m("metadata.name=a"));
        assert!(!m("metadata.name=b"));
        assert!(m("metadata.name!=b,metadata.namespace=ns"));
        assert!(m("spec.nodeName="));
        assert!(!m("spec.nodeName=n1"));
    }
}
