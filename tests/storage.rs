//! Versions that cost what changed, as a user sees it through real server processes: a
//! sparse commit writes about what changed, compaction folds chains of delta layers into
//! new bases while the model trains, and `kill -9` at any moment of that loses no
//! version and changes none.
mod common;

use accrete_proto::v1 as pb;
use common::procs::spawn_server_with;
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

/// A counter of the server's `/metrics` for model `m`.
fn metric(http: &str, name: &str, m: &str) -> f64 {
    let addr = http.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let prefix = format!("{name}{{model=\"{m}\"}} ");
    out.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// A version's weights, pulled: (version, tensors).
type Pulled = (u64, Vec<(String, Vec<f32>)>);

/// Every tagged version's weights, pulled.
async fn tagged(c: &mut Conn, m: &str) -> Vec<Pulled> {
    let mut out = Vec::new();
    for v in versions(c, m).await.into_iter().filter(|v| !v.tags.is_empty()) {
        out.push((v.version, pull_all(c, m, Some(v.version)).await.1));
    }
    out
}

fn bits(t: &[(String, Vec<f32>)]) -> Vec<(String, Vec<u32>)> {
    t.iter().map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_bits()).collect())).collect()
}

#[tokio::test]
async fn kill_9_while_compacting_loses_no_version_and_changes_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let http = ["--http", "127.0.0.1:0"];
    let mut p = spawn_server_with(&dir, &http).await;
    let mut c = common::connect(&p.url).await.unwrap();
    let mut spec = linear("s", 0, pb::OptimizerKind::Adagrad, 0.1);
    spec.hash_bits = 16;
    spec.init = Some(pb::InitSpec { seed: 3, scale: 0.1 });
    spec.commit = Some(pb::CommitPolicy { every_updates: 1, every_secs: 0.0, keep_last: 3 });
    create(&mut c, spec).await;
    let mut rebased = 0.0;
    let mut kept: Vec<Pulled> = Vec::new();
    for round in 0..5u64 {
        // a few rows in every chunk per push: every commit stacks a layer on each chain
        let load = {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in 0u64.. {
                    let keys: Vec<u64> = (0..16).map(|k| (k * 4099 + i * 31 + round) % (1 << 16)).collect();
                    if c.params.push(push_req("s", 0, vec![rows("h", &keys, &[0.25; 16])])).await.is_err() {
                        return;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(700 + 211 * round)).await;
        rebased = metric(p.http.as_deref().unwrap(), "accrete_compaction_chunks_total", "s");
        p.child.kill().unwrap(); // SIGKILL, amid commits, retention and compaction
        p.child.wait().unwrap();
        let _ = load.await;
        p = spawn_server_with(&dir, &http).await;
        c = common::connect(&p.url).await.unwrap();
        // every version tagged before is listed and reads back bit for bit
        let now = tagged(&mut c, "s").await;
        for (v, t) in &kept {
            let found = now.iter().find(|(w, _)| w == v);
            assert!(found.is_some(), "round {round}: tagged version {v} is gone");
            assert!(bits(&found.unwrap().1) == bits(t), "round {round}: tagged version {v} changed");
        }
        for v in versions(&mut c, "s").await {
            let pulled = c
                .params
                .pull(pb::PullRequest { model: "s".into(), version: Some(v.version), ..Default::default() })
                .await;
            assert!(pulled.is_ok(), "round {round}: version {} does not read back: {:?}", v.version, pulled.err());
        }
        // tag the head: later compactions rewrite its manifest, never its content
        let head = versions(&mut c, "s").await.last().unwrap().version;
        c.models.tag(pb::TagRequest { model: "s".into(), version: head, label: format!("r{round}") }).await.unwrap();
        kept.push((head, pull_all(&mut c, "s", Some(head)).await.1));
    }
    assert!(rebased > 0.0, "no compaction ran before the kills");
}
