//! Static membership (issue 13): the servers of a cluster as `--peers` lists them, which
//! one this process is, and the map's epoch. Every server is given the same list (its own
//! address included), so each sorts it the same way and every index means the same
//! server everywhere; [`crate::partition::servers_of`] indexes into it. Also the
//! messages of a global commit between a model's home and its partitions
//! ([`HoldReport`], [`CutOrder`]).
use crate::features::murmur3_32;
use crate::VersionKind;
use std::collections::BTreeMap;

/// Per worker id, the (incarnation, seq) of its last batch: what a partition applied, or
/// the cut a global commit takes.
pub type Marks = BTreeMap<String, (u64, u64)>;

/// A partition's answer to a hold: what it applied (its pushes now wait).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldReport {
    pub applied: Marks,
    /// The partition's newest version number.
    pub last_version: u64,
    pub server_instance: u64,
    /// Applied pushes, all time.
    pub updates: u64,
    /// Applied pushes since the partition's last version.
    pub since_commit: u64,
    /// The partition's lineage epoch: the same on every partition, unless a rollback or
    /// import reached only some of them.
    pub lineage_epoch: u64,
    /// BSP: the last round the partition applied (its rounds wait during the hold).
    pub round: u64,
}

/// The second phase of a global commit, for one partition: apply exactly up to `cut`,
/// then write the live state as version `version` and release the hold.
#[derive(Debug, Clone, PartialEq)]
pub struct CutOrder {
    /// The partition's local model.
    pub model: String,
    pub commit: u64,
    pub version: u64,
    pub cut: Marks,
    pub reason: String,
    pub kind: VersionKind,
    /// How long to wait for the pushes up to the cut.
    pub wait_ms: u64,
    /// BSP: apply every round up to this one (the furthest any partition applied).
    pub round: u64,
}

/// The cut of a global commit: per worker, the furthest any partition got.
pub fn cut_of<'a>(reports: impl IntoIterator<Item = &'a HoldReport>) -> Marks {
    let mut cut = Marks::new();
    for r in reports {
        for (w, m) in &r.applied {
            let e = cut.entry(w.clone()).or_insert(*m);
            *e = (*e).max(*m);
        }
    }
    cut
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// `host:port` of every server, sorted, without duplicates.
    pub servers: Vec<String>,
    /// This server's index in `servers`.
    pub me: usize,
    /// Names this membership: the same list gives the same epoch on every server (a
    /// client that sees two epochs knows it mixed maps).
    pub epoch: u64,
}

impl ClusterMap {
    /// The one-server cluster of a server started without `--peers`.
    pub fn alone(me: &str) -> ClusterMap {
        ClusterMap { servers: vec![me.to_string()], me: 0, epoch: epoch_of(&[me.to_string()]) }
    }

    /// The map of `--peers` (comma-separated `host:port`) for the server at `me` (its
    /// `--advertise` address, or `--listen`). Refuses a malformed or empty list, and a
    /// list that does not name `me`: every server must be given the same list.
    pub fn from_peers(peers: &str, me: &str) -> Result<ClusterMap, String> {
        let mut servers: Vec<String> = Vec::new();
        for p in peers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let port_ok =
                p.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("--peers: {p:?} is not host:port"));
            }
            servers.push(p.to_string());
        }
        if servers.is_empty() {
            return Err("--peers: no servers listed".into());
        }
        servers.sort();
        servers.dedup();
        let me_at = servers.iter().position(|s| s == me).ok_or_else(|| {
            format!("--peers {}: this server's address {me} is not in the list (give every server the same list, its own address included; --advertise names it when it listens elsewhere)", servers.join(","))
        })?;
        let epoch = epoch_of(&servers);
        Ok(ClusterMap { servers, me: me_at, epoch })
    }
}

fn epoch_of(servers: &[String]) -> u64 {
    let joined = servers.join(",");
    let (a, b) = (murmur3_32(joined.as_bytes(), 0), murmur3_32(joined.as_bytes(), 0x9e37_79b9));
    ((a as u64) << 32) | b as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_reads_the_same_list_the_same_way() {
        let peers = "10.0.0.3:50051, 10.0.0.1:50051,10.0.0.2:50051";
        let a = ClusterMap::from_peers(peers, "10.0.0.1:50051").unwrap();
        let c = ClusterMap::from_peers("10.0.0.2:50051,10.0.0.1:50051,10.0.0.3:50051", "10.0.0.3:50051").unwrap();
        assert_eq!(a.servers, c.servers);
        assert_eq!((a.me, c.me), (0, 2));
        assert_eq!(a.epoch, c.epoch);
        assert_ne!(a.epoch, ClusterMap::from_peers("10.0.0.1:50051,10.0.0.2:50051", "10.0.0.1:50051").unwrap().epoch);
    }

    #[test]
    fn bad_lists_are_refused_by_name() {
        let e = ClusterMap::from_peers("a:1,b:2", "c:3").unwrap_err();
        assert!(e.contains("c:3 is not in the list"), "{e}");
        assert!(ClusterMap::from_peers("a:1,b", "a:1").unwrap_err().contains("\"b\" is not host:port"));
        assert!(ClusterMap::from_peers("a:99999", "a:99999").is_err());
        assert!(ClusterMap::from_peers(" , ", "a:1").unwrap_err().contains("no servers"));
        assert_eq!(ClusterMap::from_peers("a:1,a:1", "a:1").unwrap().servers, vec!["a:1"]);
        assert_eq!(ClusterMap::alone("a:1").me, 0);
    }
}
