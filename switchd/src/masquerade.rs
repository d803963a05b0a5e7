//! Egress masquerade: pods' traffic that leaves the cluster through the node goes out with
//! the node's address, or the far side could not answer it (flannel's `ipMasq`, Calico's
//! `natOutgoing`). One nftables table, `ip switchd` (and `ip6 switchd` on a dual-stack
//! node), written by `nft -f` in one atomic transaction, checked every few seconds and
//! written again if someone removed it.
//!
//! Why the `nft` command and not a netlink crate: it is the tool operators use to read the
//! rules back (`nft list table ip switchd`), its parser is the reference, and a whole table
//! replaced in one transaction is a single call; the pure-Rust nftables netlink crates are
//! young, and `nftnl` needs C libraries. It costs one `nft` process per check.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};

pub const TABLE: &str = "switchd";
/// kube-proxy's masquerade mark: traffic it marked is masqueraded by kube-proxy itself.
pub const KUBE_PROXY_MASQ_MARK: u32 = 0x4000;
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The rules, as `nft -f` reads them. Exempt: anything not from a pod, anything to a pod
/// (pod↔pod and node↔pod keep their addresses), what kube-proxy marked for its own
/// masquerade, and multicast.
pub fn ruleset(cluster_cidr: Ipv4Net) -> String {
    family_ruleset("ip", &cluster_cidr.to_string(), "224.0.0.0/4")
}

/// The IPv6 twin of [`ruleset`], table `ip6 switchd`.
pub fn ruleset_v6(cluster_cidr: Ipv6Net) -> String {
    family_ruleset("ip6", &cluster_cidr.to_string(), "ff00::/8")
}

fn family_ruleset(family: &str, cluster_cidr: &str, multicast: &str) -> String {
    format!(
        "add table {family} {TABLE}\n\
         delete table {family} {TABLE}\n\
         table {family} {TABLE} {{\n\
         \tcomment \"switchd: masquerade pod traffic that leaves {cluster_cidr} (config key masquerade)\"\n\
         \tchain egress {{\n\
         \t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n\
         \t\t{family} saddr != {cluster_cidr} return\n\
         \t\t{family} daddr {cluster_cidr} return\n\
         \t\tmeta mark & {KUBE_PROXY_MASQ_MARK:#x} == {KUBE_PROXY_MASQ_MARK:#x} return\n\
         \t\t{family} daddr {multicast} return\n\
         \t\tmasquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

/// What `switchctl status` shows.
#[derive(Debug, Default)]
pub struct Masquerade {
    /// "off" (masquerade = false), "installed", or "failed" with the reason in `detail`.
    state: Mutex<(String, String)>,
    /// Times the table was found missing or changed and written again.
    pub reapplied: AtomicU64,
    cluster_cidr: Option<Ipv4Net>,
    cluster_cidr_v6: Option<Ipv6Net>,
}

impl Masquerade {
    /// `cluster_cidr_v6`: also masquerade IPv6 egress, on a dual-stack node.
    pub fn new(
        enabled: bool,
        cluster_cidr: Ipv4Net,
        cluster_cidr_v6: Option<Ipv6Net>,
    ) -> Masquerade {
        Masquerade {
            state: Mutex::new((
                if enabled { "pending" } else { "off" }.into(),
                String::new(),
            )),
            reapplied: AtomicU64::new(0),
            cluster_cidr: enabled.then_some(cluster_cidr),
            cluster_cidr_v6: cluster_cidr_v6.filter(|_| enabled),
        }
    }

    pub fn state(&self) -> (String, String) {
        self.state.lock().unwrap().clone()
    }

    fn set(&self, state: &str, detail: String) {
        *self.state.lock().unwrap() = (state.into(), detail);
    }

    /// Install the rules (or, when masquerading is off, remove ours if an earlier run left
    /// them), then keep them in place for as long as switchd runs.
    pub async fn run(self: std::sync::Arc<Self>) {
        let Some(cidr) = self.cluster_cidr else {
            let _ = tokio::task::spawn_blocking(remove).await;
            return;
        };
        let mut wanted = vec![("ip", ruleset(cidr))];
        match self.cluster_cidr_v6 {
            Some(v6) => wanted.push(("ip6", ruleset_v6(v6))),
            // A node that was dual-stack before keeps no IPv6 rules of ours.
            None => {
                let _ = tokio::task::spawn_blocking(|| remove_family("ip6")).await;
            }
        }
        let mut first = true;
        loop {
            let w = wanted.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut outcome = Ensured::Present;
                for (family, rules) in &w {
                    if let Ensured::Written = ensure(family, rules)? {
                        outcome = Ensured::Written;
                    }
                }
                Ok(outcome)
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("nft worker failed: {e}")));
            match result {
                // Already there (a restarted switchd finds its predecessor's rules).
                Ok(Ensured::Present) => {
                    if self.state().0 != "installed" {
                        self.set("installed", String::new());
                    }
                }
                Ok(Ensured::Written) => {
                    if first {
                        tracing::info!(table = TABLE, cluster_cidr = %cidr, cluster_cidr_v6 = ?self.cluster_cidr_v6, "egress masquerade installed");
                    } else {
                        self.reapplied.fetch_add(1, Relaxed);
                        tracing::warn!(
                            table = TABLE,
                            "egress masquerade rules were missing or changed; written again"
                        );
                    }
                    self.set("installed", String::new());
                }
                Err(e) => {
                    let was = self.state().0;
                    if was != "failed" {
                        tracing::error!(error = %format!("{e:#}"), "cannot install the egress masquerade rules; pods cannot reach outside the cluster");
                    }
                    self.set("failed", format!("{e:#}"));
                }
            }
            first = false;
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }
}

enum Ensured {
    Present,
    Written,
}

/// Write the table of `family` unless it is already exactly what we want.
fn ensure(family: &str, wanted: &str) -> Result<Ensured> {
    if let Ok(current) = nft(&["list", "table", family, TABLE], None) {
        if same_rules(&current, wanted) {
            return Ok(Ensured::Present);
        }
    }
    nft(&["-f", "-"], Some(wanted)).with_context(|| format!("writing table {family} {TABLE}"))?;
    Ok(Ensured::Written)
}

/// Does `nft list table` output hold every rule of `wanted`? (nft prints rules in its own
/// normalised spelling, so compare the rules' essential words.)
fn same_rules(listed: &str, wanted: &str) -> bool {
    let norm = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| l.contains("return") || l.contains("masquerade fully-random"))
            .map(|l| l.replace("0x00004000", "0x4000"))
            .collect()
    };
    let (have, want) = (norm(listed), norm(wanted));
    !want.is_empty() && have == want
}

/// Remove switchd's tables (masquerade turned off, or uninstall); absent is fine.
pub fn remove() -> Result<()> {
    remove_family("ip")?;
    remove_family("ip6")
}

fn remove_family(family: &str) -> Result<()> {
    if nft(&["list", "table", family, TABLE], None).is_ok() {
        nft(&["delete", "table", family, TABLE], None)?;
        tracing::info!(
            table = TABLE,
            family,
            "egress masquerade removed (masquerade off, or no IPv6 any more)"
        );
    }
    Ok(())
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install the nftables package: apt-get install nftables)")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .context("feeding nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_exempts_cluster_traffic_and_kube_proxys_mark() {
        let r = ruleset("10.244.0.0/16".parse().unwrap());
        assert!(r.starts_with("add table ip switchd\ndelete table ip switchd\n"));
        assert!(r.contains("ip saddr != 10.244.0.0/16 return"));
        assert!(r.contains("ip daddr 10.244.0.0/16 return"));
        assert!(r.contains("meta mark & 0x4000 == 0x4000 return"));
        assert!(r.contains("type nat hook postrouting priority srcnat + 10;"));
        assert!(r.trim_end().ends_with('}'));
    }

    #[test]
    fn the_ipv6_ruleset_is_the_same_rules_for_ip6() {
        let r = ruleset_v6("fd10:244::/48".parse().unwrap());
        assert!(r.starts_with("add table ip6 switchd\ndelete table ip6 switchd\n"));
        assert!(r.contains("ip6 saddr != fd10:244::/48 return"));
        assert!(r.contains("ip6 daddr fd10:244::/48 return"));
        assert!(r.contains("ip6 daddr ff00::/8 return"));
        assert!(r.contains("masquerade fully-random"));
    }

    #[test]
    fn a_listing_matches_only_when_every_rule_is_there() {
        let wanted = ruleset("10.244.0.0/16".parse().unwrap());
        let listed = "table ip switchd {\n\tcomment \"x\"\n\tchain egress {\n\t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n\t\tip saddr != 10.244.0.0/16 return\n\t\tip daddr 10.244.0.0/16 return\n\t\tmeta mark & 0x00004000 == 0x00004000 return\n\t\tip daddr 224.0.0.0/4 return\n\t\tmasquerade fully-random\n\t}\n}\n";
        assert!(same_rules(listed, &wanted));
        let flushed = "table ip switchd {\n\tchain egress {\n\t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n\t}\n}\n";
        assert!(!same_rules(flushed, &wanted));
        let other_cidr = listed.replace("10.244.0.0/16", "10.245.0.0/16");
        assert!(!same_rules(&other_cidr, &wanted));
    }
}
