//! What the benchmark needs to know about a dataplane besides its plugin name: how to save what
//! it programmed into a file that the kernel's own tool loads back (the pre-rendered
//! reference), how to load that file, how to remove everything, and how to recognise the
//! nf_tables commit that carries one endpoint change.
//!
//! Adding a dataplane is one more implementation of [`Dataplane`] and one line in [`by_name`]:
//! for iptables, `dump` is `iptables-save` of kproxy's tables, `apply_reference` is
//! a plain `iptables-restore` of that file (into empty tables, and over the same rules), and
//! `is_change_commit` accepts the first commit after the change (iptables-nft commits through
//! nf_tables too; chain names there are hashes, not endpoint addresses).

mod iptables;

use crate::nfmon::Generation;
use anyhow::{bail, Context as _};
use kproxy_lab::{Lab, Place};
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

/// A dataplane under test; see the module docs.
pub trait Dataplane {
    /// The plugin's name (`dataplane = "…"` in the config, `libkproxy_plugin_<name>.so`).
    fn name(&self) -> &str;
    /// The body of its `[dataplanes.<name>]` config section.
    fn plugin_section(&self) -> String {
        String::new()
    }
    /// The tool the reference uses, for tables (`nft -f`).
    fn reference_name(&self) -> &str;
    /// Saves what the dataplane has programmed in the node namespace, in the form the
    /// reference tool loads.
    fn dump(&self, lab: &Lab) -> anyhow::Result<String>;
    /// Removes everything the dataplane programmed in the node namespace.
    fn clear(&self, lab: &Lab) -> anyhow::Result<()>;
    /// Loads `file` (written by [`Dataplane::dump`]) with the reference tool and times it:
    /// into an empty kernel, or, with `replacing`, over the same rules already there (as a
    /// restarted daemon does).
    fn apply_reference(&self, lab: &Lab, file: &Path, replacing: bool) -> anyhow::Result<Duration>;
    /// Whether the committed transaction `g` is the one that programs a change of the endpoint
    /// `endpoint` (added, removed, or its readiness changed).
    fn is_change_commit(&self, g: &Generation, endpoint: Ipv4Addr) -> bool;

    /// The kernel's own cost of the smallest transaction of the kind a change makes, with the
    /// dataplane's rules in place: `samples` timings, or `None` when the dataplane has no such
    /// reference. The floor under one change's latency.
    fn commit_floor(&self, _lab: &Lab, _samples: usize) -> anyhow::Result<Option<Vec<Duration>>> {
        Ok(None)
    }
}

/// The dataplane called `name`, configured with `section` (the body of its config section).
pub fn by_name(name: &str, section: &str) -> anyhow::Result<Box<dyn Dataplane>> {
    match name {
        "nftables" => Ok(Box::new(Nftables {
            section: section.to_string(),
        })),
        "iptables" => Ok(Box::new(iptables::Iptables::new(section)?)),
        other => {
            bail!("the benchmark does not know dataplane {other:?} (known: nftables, iptables)")
        }
    }
}

/// kproxy's nftables plugin: one table `ip kproxy`.
#[derive(Debug, Default)]
pub struct Nftables {
    /// Its config section (e.g. `writer = "nft"`).
    section: String,
}

const TABLE: &str = "kproxy";

impl Dataplane for Nftables {
    fn name(&self) -> &str {
        "nftables"
    }

    fn plugin_section(&self) -> String {
        self.section.clone()
    }

    fn reference_name(&self) -> &str {
        "nft -f"
    }

    fn dump(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(lab.exec_ok(&Place::Node, &["nft", "list", "table", "ip", TABLE])?)
    }

    fn clear(&self, lab: &Lab) -> anyhow::Result<()> {
        // `destroy` is silent when the table is absent (nft 1.0.6 lacks it; add + delete works
        // everywhere).
        let script = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
        nft_script(lab, &script)?;
        Ok(())
    }

    fn apply_reference(&self, lab: &Lab, file: &Path, replacing: bool) -> anyhow::Result<Duration> {
        let path = if replacing {
            // One transaction that deletes the table and loads it again.
            let dump = std::fs::read_to_string(file)?;
            let replaced = file.with_extension("replace.nft");
            std::fs::write(&replaced, format!("delete table ip {TABLE}\n{dump}"))?;
            replaced
        } else {
            self.clear(lab)?;
            file.to_path_buf()
        };
        let path_text = path.to_string_lossy().into_owned();
        let started = Instant::now();
        lab.exec_ok(&Place::Node, &["nft", "-f", &path_text])
            .with_context(|| format!("nft -f {path_text}"))?;
        Ok(started.elapsed())
    }

    fn commit_floor(&self, lab: &Lab, samples: usize) -> anyhow::Result<Option<Vec<Duration>>> {
        use kproxy_plugin_api::{IpAddr, IpFamily, Protocol};
        use kproxy_plugin_nftables::{
            netlink::{Batch, NetlinkSocket},
            rule::{ElemKey, ElemValue},
            script::{ElemRef, KeyType, SetSpec, SetValue, Sink},
        };
        // What an endpoint change writes: data elements of a service's slot map. A scratch
        // slot map gets one endpoint element added (timed) and removed, `samples` times.
        const FLOOR: &str = "kproxy-bench-floor";
        let times = lab.run_in(&Place::Node, move || -> anyhow::Result<Vec<Duration>> {
            let mut socket = NetlinkSocket::open().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut names = 0;
            let commit = |socket: &mut NetlinkSocket, b: Batch<'_>| {
                socket.commit(b).map_err(|e| anyhow::anyhow!("{e}"))
            };
            let spec = SetSpec {
                name: FLOOR,
                key: KeyType::Slots,
                value: SetValue::Endpoint(IpFamily::V4, Protocol::Tcp),
                interval: true,
                timeout: None,
                comment: None,
            };
            let mut create = Batch::new(&mut names, false);
            create.begin(IpFamily::V4, TABLE);
            create.add_set(&spec);
            commit(&mut socket, create)?;
            let key = ElemKey::Slots(0, 65535);
            let value = ElemValue::Endpoint(IpAddr::from(std::net::Ipv4Addr::new(10, 1, 2, 3)), 80);
            let mut out = Vec::with_capacity(samples);
            for _ in 0..samples {
                let mut add = Batch::new(&mut names, false);
                add.begin(IpFamily::V4, TABLE);
                add.add_elements(FLOOR, [ElemRef::new(&key, Some(&value))]);
                let t = Instant::now();
                commit(&mut socket, add)?;
                out.push(t.elapsed());
                let mut del = Batch::new(&mut names, false);
                del.begin(IpFamily::V4, TABLE);
                del.delete_elements(FLOOR, [ElemRef::new(&key, None)]);
                commit(&mut socket, del)?;
            }
            let mut drop_set = Batch::new(&mut names, false);
            drop_set.begin(IpFamily::V4, TABLE);
            drop_set.delete_set(FLOOR);
            commit(&mut socket, drop_set)?;
            Ok(out)
        })??;
        Ok(Some(times))
    }

    fn is_change_commit(&self, g: &Generation, endpoint: Ipv4Addr) -> bool {
        // An endpoint change writes the elements of its service's slot map (`… : <ip> . <port>`)
        // and of `hairpin-endpoints` (`<ip> . <ip>`): look for the address in them.
        let octets = endpoint.octets();
        g.elements
            .iter()
            .any(|(_, raw)| raw.windows(4).any(|w| w == octets))
    }
}

fn nft_script(lab: &Lab, script: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("script.nft");
    std::fs::write(&path, script)?;
    lab.exec_ok(&Place::Node, &["nft", "-f", &path.to_string_lossy()])?;
    Ok(())
}
