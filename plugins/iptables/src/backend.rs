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
//! 2. Otherwise the back end holding more rules wins (the wrapper's older, line-counting rule:
//!    `iptables-legacy-save | grep '^-' | wc -l` against the same for nft), nft on a tie.
//!
//! Detection only reads (`*-save`), so it never creates a table in the back end it rejects.

use crate::{restore::Tool, ruleset::Saved};
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
    /// Rules in every table of both families.
    pub rules: usize,
}

impl Evidence {
    /// Reads the evidence from `*-save` outputs of one back end.
    pub fn from_saves<'a>(saves: impl IntoIterator<Item = &'a str>) -> Evidence {
        let mut e = Evidence::default();
        for text in saves {
            let saved = Saved::parse(text);
            e.kubelet_hint |= saved.tables.values().any(|chains| {
                chains.contains_key("KUBE-IPTABLES-HINT")
                    || chains.contains_key("KUBE-KUBELET-CANARY")
            });
            e.rules += saved.rule_count();
        }
        e
    }
}

/// Decides from both back ends' evidence (see the module docs).
pub fn decide(nft: Evidence, legacy: Evidence) -> Backend {
    let legacy_wins = if nft.kubelet_hint || legacy.kubelet_hint {
        !nft.kubelet_hint
    } else {
        legacy.rules > nft.rules
    };
    if legacy_wins {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Reads both back ends (a missing binary or a failing save counts as an empty back end) and
/// decides. Returns the choice and the evidence, for the log.
pub fn detect() -> (Backend, Evidence, Evidence) {
    let read = |backend: Backend| {
        let tool = Tool::new(backend);
        let saves: Vec<String> = [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter(|f| tool.available(*f))
            .filter_map(|f| tool.save(f).ok())
            .collect();
        Evidence::from_saves(saves.iter().map(String::as_str))
    };
    let (nft, legacy) = (read(Backend::Nft), read(Backend::Legacy));
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
