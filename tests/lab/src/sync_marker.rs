//! Knowing when a dataplane has programmed a manifest, with real packets and without knowing
//! how the dataplane stores its rules.
//!
//! The writer of a manifest folder adds a *sync marker* to each write: a Service without
//! endpoints whose cluster IP changes with every write ([`marker_service`]). Upstream programs a
//! REJECT for a service without endpoints, while an unallocated address in the service CIDR is
//! dropped, so once a connection from the node to the current marker is refused
//! ([`is_programmed`]), the sync that carried the whole file has reached the kernel. Files are
//! written atomically ([`write_manifest`]) so the daemon sees every write whole.

use crate::{
    client::{Outcome, RequestOptions},
    Lab, Place,
};
use kproxy_plugin_api::Protocol;
use serde_json::{json, Value};
use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

/// The marker's cluster IP for write number `n`: cycles through 10.96.255.10–209 (inside the
/// lab's service CIDR), so the previous write's marker is never the current one.
pub fn marker_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 255, 10 + (n % 200) as u8)
}

/// The marker Service for write number `n`, in `namespace`.
pub fn marker_service(namespace: &str, n: u32) -> Value {
    let ip = marker_ip(n).to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sync-marker", "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "marker", "port": 1, "protocol": "TCP", "targetPort": 1}],
        },
    })
}

/// Sends one probe from the node to marker `n`: true once the dataplane rejects it.
pub fn is_programmed(lab: &Lab, n: u32) -> bool {
    let dst = SocketAddr::new(IpAddr::V4(marker_ip(n)), 1);
    let opts = RequestOptions {
        src: None,
        src_port: None,
        timeout: Duration::from_millis(150),
    };
    lab.request_with(&Place::Node, dst, Protocol::Tcp, &opts) == Outcome::Refused
}

/// Writes `objects` as one multi-document YAML file `dir/file_name` (JSON documents are YAML),
/// atomically: a hidden temporary file renamed into place, which manifest readers skip.
pub fn write_manifest(
    dir: &Path,
    file_name: &str,
    header: &str,
    objects: &[Value],
) -> io::Result<()> {
    let mut text = String::new();
    for line in header.lines() {
        text.push_str("# ");
        text.push_str(line);
        text.push('\n');
    }
    for obj in objects {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(obj).map_err(io::Error::other)?);
        text.push('\n');
    }
    let tmp = dir.join(format!(".{file_name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join(file_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_markers_differ_and_stay_in_the_service_cidr() {
        for n in 0..400 {
            assert_ne!(marker_ip(n), marker_ip(n + 1));
            let o = marker_ip(n).octets();
            assert_eq!(&o[..3], &[10, 96, 255]);
        }
        assert_eq!(marker_service("x", 3)["spec"]["clusterIP"], "10.96.255.13");
    }

    #[test]
    fn manifests_are_written_whole_as_yaml_documents() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(
            dir.path(),
            "m.yaml",
            "made by a test",
            &[json!({"a": 1}), json!({"b": 2})],
        )
        .unwrap();
        let text = fs::read_to_string(dir.path().join("m.yaml")).unwrap();
        assert_eq!(text, "# made by a test\n---\n{\"a\":1}\n---\n{\"b\":2}\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
