//! The deploy layout holds together: every Kubernetes manifest under `deploy/kubernetes/` is a
//! valid object of its kind (no unknown kinds, no misspelt fields), the pieces refer to each other
//! correctly, the ConfigMap's TOML passes kproxy's real config loader, and `deploy/install.sh`
//! lays out exactly the promised files with the promised modes.

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
    Resource,
};
use kproxy::config::Config;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// One manifest document, typed by its kind.
#[derive(Debug)]
enum Object {
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(Box<DaemonSet>),
}

/// Deserialises `doc` as `T` and checks that serialising it back loses nothing: k8s-openapi
/// ignores unknown fields, so a misspelt field would otherwise pass unnoticed.
fn typed<T: DeserializeOwned + Serialize>(doc: &serde_json::Value) -> Result<T, String> {
    let value: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&value).map_err(|e| e.to_string())?;
    match first_difference(doc, &back, "") {
        None => Ok(value),
        Some(path) => Err(format!(
            "field `{path}` is not part of {} (misspelt or misplaced?)",
            std::any::type_name::<T>()
        )),
    }
}

/// The first path at which `original` holds something `round_tripped` does not.
fn first_difference(
    original: &serde_json::Value,
    round_tripped: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value::*;
    match (original, round_tripped) {
        (Object(a), Object(b)) => a.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                Some(w) => first_difference(v, w, &p),
                // An explicitly empty value may be dropped on the way back.
                None if v.is_null() => None,
                None => Some(p),
            }
        }),
        (Array(a), Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(path.to_string()),
    }
}

/// Types one document by its `apiVersion` and `kind`; any other kind is an error.
fn classify(doc: &serde_json::Value) -> Result<Object, String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    let is = |v: &str, k: &str| api_version == v && kind == k;
    if is(ServiceAccount::API_VERSION, ServiceAccount::KIND) {
        typed(doc).map(Object::ServiceAccount)
    } else if is(ClusterRole::API_VERSION, ClusterRole::KIND) {
        typed(doc).map(Object::ClusterRole)
    } else if is(ClusterRoleBinding::API_VERSION, ClusterRoleBinding::KIND) {
        typed(doc).map(Object::ClusterRoleBinding)
    } else if is(ConfigMap::API_VERSION, ConfigMap::KIND) {
        typed(doc).map(Object::ConfigMap)
    } else if is(DaemonSet::API_VERSION, DaemonSet::KIND) {
        typed(doc).map(|d| Object::DaemonSet(Box::new(d)))
    } else {
        Err(format!(
            "unknown kind `{kind}` (apiVersion `{api_version}`): expected ServiceAccount, \
             ClusterRole, ClusterRoleBinding, ConfigMap or DaemonSet"
        ))
    }
}

/// Every YAML document in `text`, as JSON values (empty documents skipped).
fn documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// All objects under `deploy/kubernetes/`, with the file each came from.
fn load_manifests() -> Vec<(PathBuf, Object)> {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy/kubernetes"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        match documents(&text) {
            Err(e) => errors.push(format!("{}: not YAML: {e}", file.display())),
            Ok(docs) => {
                for (i, doc) in docs.iter().enumerate() {
                    match classify(doc) {
                        Ok(o) => objects.push((file.clone(), o)),
                        Err(e) => {
                            errors.push(format!("{} document {}: {e}", file.display(), i + 1))
                        }
                    }
                }
            }
        }
    }
    assert!(errors.is_empty(), "bad manifests:\n{}", errors.join("\n"));
    objects
}

fn only<T>(items: Vec<T>, what: &str) -> T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    items.into_iter().next().unwrap()
}

#[test]
fn every_manifest_is_a_known_kind_and_the_pieces_fit() {
    let objects = load_manifests();
    let mut sas = Vec::new();
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    let mut cms = Vec::new();
    let mut dss = Vec::new();
    for (_, o) in objects {
        match o {
            Object::ServiceAccount(x) => sas.push(x),
            Object::ClusterRole(x) => roles.push(x),
            Object::ClusterRoleBinding(x) => bindings.push(x),
            Object::ConfigMap(x) => cms.push(x),
            Object::DaemonSet(x) => dss.push(*x),
        }
    }
    let sa = only(sas, "ServiceAccount");
    let role = only(roles, "ClusterRole");
    let binding = only(bindings, "ClusterRoleBinding");
    let cm = only(cms, "ConfigMap");
    let ds = only(dss, "DaemonSet");

    let ns = ds
        .metadata
        .namespace
        .clone()
        .expect("DaemonSet has a namespace");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(cm.metadata.namespace.as_deref(), Some(ns.as_str()));

    // RBAC: the binding ties the role to the service account the pods run as.
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace.as_deref() == Some(ns.as_str())),
        "the binding does not name the service account"
    );
    check_role_is_minimal(&role);

    // The DaemonSet.
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let template_labels = template_labels.unwrap_or_default();
    assert!(
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v)),
        "the selector does not match the pod template's labels"
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.host_network,
        Some(true),
        "kproxy must run in the host network"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let tolerates_all = pod.tolerations.as_ref().is_some_and(|t| {
        t.iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    });
    assert!(
        tolerates_all,
        "kproxy must tolerate every taint, as kube-proxy does"
    );

    let container = only(pod.containers.clone(), "container");
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false);
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert!(
        privileged || caps.iter().any(|c| c == "NET_ADMIN"),
        "the container can neither program the network (privileged) nor has NET_ADMIN"
    );

    // Host paths the dataplanes need, mounted where they are expected.
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    for host_path in ["/lib/modules", "/run/xtables.lock", "/sys/fs/bpf"] {
        let volume = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .unwrap_or_else(|| panic!("no hostPath volume for {host_path}"));
        assert!(
            mounts
                .iter()
                .any(|m| m.name == volume.name && m.mount_path == host_path),
            "{host_path} is not mounted at the same path"
        );
    }

    // The config: the ConfigMap is mounted where the command line reads it.
    let cm_name = cm.metadata.name.clone().expect("ConfigMap name");
    let config_volume = volumes
        .iter()
        .find(|v| v.config_map.as_ref().is_some_and(|c| c.name == cm_name))
        .expect("the ConfigMap is not a volume");
    let config_mount = mounts
        .iter()
        .find(|m| m.name == config_volume.name)
        .expect("the config volume is not mounted");
    let data = cm.data.clone().unwrap_or_default();
    let toml_key = "kproxy.toml";
    let text = data.get(toml_key).expect("the ConfigMap holds kproxy.toml");
    let config_path = format!("{}/{toml_key}", config_mount.mount_path);
    let args: Vec<String> = container
        .command
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(container.args.clone().unwrap_or_default())
        .collect();
    assert!(
        args.iter().any(|a| a == &format!("--config={config_path}"))
            || args
                .windows(2)
                .any(|w| w[0] == "--config" && w[1] == config_path),
        "the command line {args:?} does not read {config_path}"
    );
    assert!(
        args.iter().any(|a| a == "run"),
        "the command line does not run the daemon"
    );

    // The ConfigMap's TOML passes the real loader, and the probe asks the port it configures.
    let config = Config::parse(
        text,
        Path::new("deploy/kubernetes/configmap.yaml: kproxy.toml"),
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's kproxy.toml is refused: {e}"));
    let healthz = config
        .healthz_bind_address
        .expect("the DaemonSet's liveness probe needs healthz");
    let probe = container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.clone())
        .expect("an HTTP liveness probe");
    assert_eq!(probe.path.as_deref(), Some("/livez"));
    assert_eq!(probe.port, IntOrString::Int(i32::from(healthz.port())));
    assert_eq!(healthz.port(), 10256);
}

/// The ClusterRole grants list+watch on what the watchers read and create+patch on events — and
/// nothing that writes cluster state or reads secrets.
fn check_role_is_minimal(role: &ClusterRole) {
    let mut granted = BTreeSet::new();
    for rule in role.rules.clone().unwrap_or_default() {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    assert_ne!(resource, "*", "no wildcard resources");
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let need = [
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ];
    for (g, r, v) in need {
        assert!(
            granted.contains(&(g.to_string(), r.to_string(), v.to_string())),
            "the ClusterRole lacks {v} on {g}/{r}"
        );
    }
    for (g, r, v) in &granted {
        let is_event = r == "events";
        let read = v == "list" || v == "watch" || v == "get";
        assert!(
            (is_event && (v == "create" || v == "patch" || v == "update")) || (!is_event && read),
            "the ClusterRole grants more than needed: {v} on {g}/{r}"
        );
        assert_ne!(r, "secrets", "kproxy never reads secrets");
    }
}

#[test]
fn unknown_kinds_and_misspelt_fields_are_refused() {
    let doc = |yaml: &str| documents(yaml).unwrap().remove(0);
    let err = classify(&doc(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    ))
    .unwrap_err();
    assert!(err.contains("unknown kind `Deployment`"), "{err}");
    let err = classify(&doc(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountToken: true\n",
    ))
    .unwrap_err();
    assert!(err.contains("field `automountToken`"), "{err}");
    let ok = classify(&doc(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAccountToken: true\n",
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

// ---- deploy/install.sh ----

/// The plugins `install.sh` must install: the cdylib crates under `plugins/` whose library is
/// `kproxy_plugin_<name>` — read here with a TOML parser, independently of the script's sed.
fn expected_plugins() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("plugins")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = text.parse().unwrap();
        let Some(lib) = doc.get("lib").and_then(|l| l.as_table()) else {
            continue;
        };
        let name = lib.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let cdylib = lib
            .get("crate-type")
            .and_then(|t| t.as_array())
            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("cdylib")));
        if cdylib && name.starts_with("kproxy_plugin_") {
            out.insert(format!("lib{name}.so"));
        }
    }
    out
}

/// A fake target folder with a `kproxy` program and a `.so` for every plugin and fixture.
fn fake_build(plugins: &BTreeSet<String>) -> tempfile::TempDir {
    let target = tempfile::tempdir().unwrap();
    let release = target.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("kproxy"), "#!/bin/sh\necho kproxy\n").unwrap();
    std::fs::set_permissions(
        release.join("kproxy"),
        std::fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    for so in plugins.iter().map(String::as_str).chain([
        "libkproxy_plugin_recorder.so",
        "libkproxy_plugin_changed.so",
        "libkproxy_plugin_future.so",
    ]) {
        std::fs::write(release.join(so), so).unwrap();
        std::fs::set_permissions(release.join(so), std::fs::Permissions::from_mode(0o664)).unwrap();
    }
    target
}

fn run_install(target: &Path, dest: &Path, prefix: &str) -> std::process::Output {
    let out = Command::new(repo().join("deploy/install.sh"))
        .env("DESTDIR", dest)
        .env("PREFIX", prefix)
        .env("TARGET_DIR", target)
        .env("PROFILE", "release")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run deploy/install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_lays_out_binary_plugins_config_and_unit() {
    let plugins = expected_plugins();
    assert!(!plugins.is_empty(), "no plugin crates under plugins/");
    let target = fake_build(&plugins);
    let dest = tempfile::tempdir().unwrap();
    run_install(target.path(), dest.path(), "/usr");
    let root = dest.path();

    let bin = root.join("usr/bin/kproxy");
    assert_eq!(mode(&bin), 0o755);
    let plugin_dir = root.join("usr/lib/kproxy");
    assert_eq!(mode(&plugin_dir), 0o755);
    let installed: BTreeSet<String> = std::fs::read_dir(&plugin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        installed, plugins,
        "exactly the plugins from plugins/, no fixtures"
    );
    for so in &installed {
        assert_eq!(mode(&plugin_dir.join(so)), 0o755, "{so}");
    }
    let conf = root.join("etc/kproxy/kproxy.toml");
    assert_eq!(mode(&conf), 0o644);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        std::fs::read_to_string(repo().join("configs/kproxy.toml")).unwrap()
    );
    let unit = root.join("usr/lib/systemd/system/kproxy.service");
    assert_eq!(mode(&unit), 0o644);
    assert!(std::fs::read_to_string(&unit)
        .unwrap()
        .contains("ExecStart=/usr/bin/kproxy --config /etc/kproxy/kproxy.toml run"));
    // Root-owned when installed by root (the plugin host refuses anything else).
    if nix::unistd::geteuid().is_root() {
        for p in [&bin, &plugin_dir, &conf, &unit] {
            assert_eq!(std::fs::metadata(p).unwrap().uid(), 0, "{}", p.display());
        }
    }

    // A second install keeps the operator's config.
    std::fs::write(&conf, "dataplane = \"iptables\"\n").unwrap();
    let out = run_install(target.path(), dest.path(), "/usr");
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept existing"));
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "dataplane = \"iptables\"\n"
    );
}

#[test]
fn install_follows_prefix() {
    let plugins = expected_plugins();
    let target = fake_build(&plugins);
    let dest = tempfile::tempdir().unwrap();
    run_install(target.path(), dest.path(), "/usr/local");
    let root = dest.path();
    assert!(root.join("usr/local/bin/kproxy").is_file());
    assert!(root.join("usr/local/lib/kproxy").is_dir());
    let unit =
        std::fs::read_to_string(root.join("usr/local/lib/systemd/system/kproxy.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/kproxy "), "{unit}");
    // The installed config points the daemon at the installed plugins.
    let conf = root.join("etc/kproxy/kproxy.toml");
    let config = Config::parse(&std::fs::read_to_string(&conf).unwrap(), &conf).unwrap();
    assert_eq!(config.plugin_dir, PathBuf::from("/usr/local/lib/kproxy"));
}

#[test]
fn install_refuses_a_missing_build() {
    let dest = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("deploy/install.sh"))
        .env("DESTDIR", dest.path())
        .env("TARGET_DIR", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("build first"));
    assert!(
        !dest.path().join("usr").exists(),
        "nothing is installed from a missing build"
    );
}
