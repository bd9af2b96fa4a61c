//! Static membership (issue 13): the servers of a cluster as `--peers` lists them, which
//! one this process is, and the map's epoch. Every server is given the same list (its own
//! address included), so each sorts it the same way and every index means the same
//! server everywhere; [`crate::partition::servers_of`] indexes into it. Not used by the
//! servers yet.
use crate::features::murmur3_32;

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
