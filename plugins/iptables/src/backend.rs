//! Which iptables back end the node uses: iptables-nft or iptables-legacy.
//!
//! The two back ends program different kernel subsystems, and rules in one do not order with
//! rules in the other, so kproxy must use the one the node's other firewall users (kubelet,
//! the CNI plugin, the distribution's firewall) already use. Detection follows upstream's
//! iptables wrapper (kubernetes-sigs/iptables-wrappers), which kube-proxy images run before
//! kube-proxy:
//!
//! 1. kubelet (1.17 and later) creates `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` in the
//!    back end it uses: whichever shows them wins (nft first, as the wrapper checks).
//! 2. Then kproxy's own `KPROXY-SERVICES` (a restarted kproxy keeps the back end it used; not in
//!    the wrapper, which knows nothing of kproxy).
//! 3. Otherwise the back end holding more rules wins (the wrapper's older, line-counting rule:
//!    `iptables-legacy-save | grep '^-' | wc -l` against the same for nft), nft on a tie.
//!
//! Detection only reads, so it never creates a table in the back end it rejects. It reads
//! iptables-nft cheaply first (the small `mangle` table, one chain of `nat`), because a full
//! `iptables-nft-save` of a large table takes minutes (see the README).

use crate::{restore::Tool, ruleset::parse_chains};
use kproxy_plugin_api::IpFamily;

/// An iptables back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`.
    Legacy,
}

impl Backend {
    /// Both back ends.
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// The name in binary names (`iptables-<name>-restore`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// What one back end holds, as far as detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evidence {
    /// kubelet's hint chains are present.
    pub kubelet_hint: bool,
    /// kproxy's `KPROXY-SERVICES` is present.
    pub kproxy: bool,
    /// Rules in every table of both families (counted only when the other signs are absent).
    pub rules: usize,
}

impl Evidence {
    /// Reads the evidence from `*-save` outputs of one back end.
    pub fn from_saves<'a>(saves: impl IntoIterator<Item = &'a str>) -> Evidence {
        let mut e = Evidence::default();
        for text in saves {
            let tables = parse_chains(text);
            e.kubelet_hint |= tables.values().any(|chains| {
                chains.contains_key("KUBE-IPTABLES-HINT")
                    || chains.contains_key("KUBE-KUBELET-CANARY")
            });
            e.kproxy |= tables
                .get("nat")
                .is_some_and(|c| c.contains_key(crate::names::SERVICES));
            e.rules += tables
                .values()
                .flat_map(|t| t.values())
                .map(Vec::len)
                .sum::<usize>();
        }
        e
    }
}

/// Decides from both back ends' evidence (see the module docs).
pub fn decide(nft: Evidence, legacy: Evidence) -> Backend {
    let legacy_wins = if nft.kubelet_hint || legacy.kubelet_hint {
        !nft.kubelet_hint
    } else if nft.kproxy || legacy.kproxy {
        !nft.kproxy
    } else {
        legacy.rules > nft.rules
    };
    if legacy_wins {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Reads both back ends (a missing binary or a failing read counts as an empty back end) and
/// decides. Returns the choice and the evidence, for the log.
pub fn detect() -> (Backend, Evidence, Evidence) {
    let families = [IpFamily::V4, IpFamily::V6];
    let legacy_tool = Tool::new(Backend::Legacy);
    let nft_tool = Tool::new(Backend::Nft);
    // Legacy's save is cheap at any size: read it all.
    let legacy_saves: Vec<String> = families
        .into_iter()
        .filter(|f| legacy_tool.available(*f))
        .filter_map(|f| legacy_tool.save(f).ok())
        .collect();
    let legacy = Evidence::from_saves(legacy_saves.iter().map(String::as_str));
    // nft: the small mangle table for kubelet's hint, one chain for kproxy's own.
    let nft_available: Vec<IpFamily> = families
        .into_iter()
        .filter(|f| nft_tool.available(*f))
        .collect();
    let mangle: Vec<String> = nft_available
        .iter()
        .filter_map(|f| nft_tool.save_table(*f, "mangle").ok())
        .collect();
    let mut nft = Evidence::from_saves(mangle.iter().map(String::as_str));
    nft.kproxy = nft_available.iter().any(|f| {
        nft_tool
            .list_chain(*f, "nat", crate::names::SERVICES)
            .is_ok()
    });
    if !(nft.kubelet_hint || legacy.kubelet_hint || nft.kproxy || legacy.kproxy) {
        // Nothing decided yet: count every nft rule (no kproxy table in nft, so not a large one).
        let saves: Vec<String> = nft_available
            .iter()
            .filter_map(|f| nft_tool.save(*f).ok())
            .collect();
        nft = Evidence::from_saves(saves.iter().map(String::as_str));
    }
    (decide(nft, legacy), nft, legacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINT: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
    const THREE_RULES: &str = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\n-A INPUT -s 1.2.3.4/32 -j DROP\nCOMMIT\n";
    const ONE_RULE: &str = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n";

    #[test]
    fn kubelets_hint_wins_over_rule_counts() {
        let legacy = Evidence::from_saves([THREE_RULES, ""]);
        let nft = Evidence::from_saves([HINT]);
        assert!(nft.kubelet_hint && !legacy.kubelet_hint);
        assert_eq!(legacy.rules, 3);
        assert_eq!(decide(nft, legacy), Backend::Nft);
        assert_eq!(
            decide(
                Evidence::from_saves([THREE_RULES]),
                Evidence::from_saves([HINT])
            ),
            Backend::Legacy
        );
    }

    #[test]
    fn kproxys_own_chains_come_next() {
        let ours = Evidence::from_saves(["*nat\n:KPROXY-SERVICES - [0:0]\nCOMMIT\n"]);
        assert!(ours.kproxy);
        let busy = Evidence::from_saves([THREE_RULES]);
        assert_eq!(decide(busy, ours), Backend::Legacy);
        assert_eq!(decide(ours, busy), Backend::Nft);
        assert_eq!(decide(Evidence::from_saves([HINT]), ours), Backend::Nft);
    }

    #[test]
    fn otherwise_more_rules_win_and_a_tie_is_nft() {
        let three = Evidence::from_saves([THREE_RULES]);
        let one = Evidence::from_saves([ONE_RULE]);
        assert_eq!(decide(one, three), Backend::Legacy);
        assert_eq!(decide(three, one), Backend::Nft);
        assert_eq!(
            decide(Evidence::default(), Evidence::default()),
            Backend::Nft
        );
        // Both families count.
        assert_eq!(Evidence::from_saves([ONE_RULE, THREE_RULES]).rules, 4);
    }
}
