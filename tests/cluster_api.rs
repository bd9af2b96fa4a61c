//! A model over a cluster of in-process servers (real gRPC on ports bound at 0, a real
//! sled database each): what must not depend on how a model is partitioned — the
//! optimizer's step counts, the updates counted — and what is global: retention keeps
//! the same versions on every partition as the home's log lists, tags included.
mod common;

use accrete_client::Client;
use accrete_core::push::{Gradient, Push};
use accrete_core::{CommitPolicy, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec};
use tokio::sync::oneshot;

/// Servers of one cluster (`--peers` the same list on each), plus their stops.
struct Cluster {
    urls: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Cluster {
    /// `n` servers with `--peers` (n = 1 without: a server of its own).
    async fn start(n: usize) -> Cluster {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
        let (mut dirs, mut stops) = (Vec::new(), Vec::new());
        for l in listeners {
            let dir = tempfile::tempdir().unwrap();
            let config = accrete_server::ServerConfig {
                peers: (n > 1).then(|| addrs.join(",")),
                ..accrete_server::ServerConfig::new(dir.path().join("data"))
            };
            let (stop, rx) = oneshot::channel::<()>();
            tokio::spawn(accrete_server::run(config, l, async {
                let _ = rx.await;
            }));
            dirs.push(dir);
            stops.push(stop);
        }
        Cluster { urls: addrs.iter().map(|a| format!("http://{a}")).collect(), _dirs: dirs, stops }
    }

    async fn client(&self, i: usize) -> Client {
        Client::connect_patiently(&self.urls[i], std::time::Duration::from_secs(10)).await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}

fn adam_spec(name: &str, partitions: u32) -> ModelSpec {
    ModelSpec {
        hash_bits: 12,
        optimizer: OptimizerSpec::new(OptimizerKind::Adam, 0.1),
        commit: CommitPolicy { every_updates: 0, every_secs: 0.0, keep_last: 0 },
        partitions,
        ..ModelSpec::new(name, ModelKind::Logistic)
    }
}

/// Pushes `n` gradients through the routed stream: every third only touches rows of the
/// first partition (and the bias, which lives there), the others rows across the table
/// (4096 rows: partitions start at 0, 1365, 2730).
async fn push_pattern(c: &mut Client, spec: &ModelSpec, n: usize) {
    let stream = c.push_stream_for(spec).await.unwrap();
    for k in 0..n {
        let keys: Vec<u32> = if k % 3 == 0 { vec![1, 2] } else { vec![1, 1500 + (k % 5) as u32, 3000] };
        let values: Vec<f32> = keys.iter().enumerate().map(|(i, _)| 0.25 + 0.1 * i as f32 - 0.02 * k as f32).collect();
        let bias = [0.3f32];
        let push = Push {
            model: &spec.name,
            lineage_epoch: 0,
            grads: vec![
                Gradient { tensor: "h", keys: &keys, values: &values, ..Default::default() },
                Gradient { tensor: "b", values: &bias, ..Default::default() },
            ],
            meta: None,
        };
        stream.send(&push).await.unwrap();
    }
    stream.finish().await.unwrap();
}

/// The live hashed table and bias, whole.
async fn table(c: &mut Client, name: &str) -> (Vec<f32>, Vec<f32>) {
    let view = c.model_view(name).await.unwrap();
    let keys: Vec<u32> = (0..4096).collect();
    let p = c.pull_batch(&view, &keys, None, None).await.unwrap();
    (p.tensors.h, p.tensors.b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adams_steps_and_the_update_count_do_not_depend_on_the_partitioning() {
    let (cluster, one) = (Cluster::start(3).await, Cluster::start(1).await);
    let (mut c, mut s) = (cluster.client(1).await, one.client(0).await);
    let (split, whole) = (adam_spec("adam", 3), adam_spec("adam", 1));
    c.create_model(&split, None).await.unwrap();
    s.create_model(&whole, None).await.unwrap();
    let info = c.model_info("adam").await.unwrap();
    assert_eq!(info.partitions.len(), 3, "{:?}", info.partitions);
    assert!(info.partitions.iter().all(|p| p.rows >= 1365), "every partition holds rows: {:?}", info.partitions);
    assert_eq!(table(&mut c, "adam").await, table(&mut s, "adam").await, "the same initial parameters");
    push_pattern(&mut c, &split, 30).await;
    push_pattern(&mut s, &whole, 30).await;
    let (split_table, whole_table) = (table(&mut c, "adam").await, table(&mut s, "adam").await);
    assert!(whole_table.0[3000] != 0.0, "row 3000 (the last partition's) was trained");
    // Adam's bias correction counts every push, also on a partition that holds none of
    // its rows: the same steps give the same parameters, float for float.
    let first_difference =
        (split_table.0.iter().zip(&whole_table.0).position(|(a, b)| a != b), split_table.1 == whole_table.1);
    assert_eq!(first_difference, (None, true), "h differs first at that row (or the bias differs)");
    // The update count (the commit policy's) is the whole model's on every partition.
    for p in 0..3u32 {
        let local = accrete_core::spec::local_name("adam", p);
        assert_eq!(c.model_info(&local).await.unwrap().updates, 30, "partition {p}");
    }
    assert_eq!(s.model_info("adam").await.unwrap().updates, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_tags_are_global() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(2).await;
    let spec =
        ModelSpec { commit: CommitPolicy { every_updates: 0, every_secs: 0.0, keep_last: 3 }, ..adam_spec("kept", 3) };
    c.create_model(&spec, None).await.unwrap();
    let mut made = vec![1];
    for round in 0..6 {
        push_pattern(&mut c, &spec, 4).await;
        let (v, created) = c.commit("kept", "test").await.unwrap();
        assert!(created, "round {round}");
        made.push(v.version);
        if round == 0 {
            c.tag("kept", v.version, "first").await.unwrap();
        }
    }
    let listed = |vs: Vec<accrete_core::VersionRecord>| vs.iter().map(|v| v.version).collect::<Vec<u64>>();
    let home = listed(c.versions("kept").await.unwrap());
    let n = made.len();
    assert_eq!(home, vec![made[1], made[n - 3], made[n - 2], made[n - 1]], "the tagged version and the newest 3");
    for p in 1..3u32 {
        let local = accrete_core::spec::local_name("kept", p);
        assert_eq!(listed(c.versions(&local).await.unwrap()), home, "partition {p} keeps what the home lists");
    }
    // The tagged version loads whole: every partition still holds its rows.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first.safetensors");
    let rec = accrete_client::safetensors::export(&mut c, "kept", Some(made[1]), false, &out).await.unwrap();
    assert_eq!(rec.version, made[1]);
    // A rollback installs a version on every partition, and retention follows again.
    let back = c.rollback("kept", made[1], "test").await.unwrap();
    let home = listed(c.versions("kept").await.unwrap());
    assert_eq!(home.last(), Some(&back.version));
    for p in 1..3u32 {
        let local = accrete_core::spec::local_name("kept", p);
        assert_eq!(listed(c.versions(&local).await.unwrap()), home, "partition {p} after the rollback");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_installs_the_whole_model_on_every_partition() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let spec = adam_spec("imp", 3);
    c.create_model(&spec, None).await.unwrap();
    push_pattern(&mut c, &spec, 12).await;
    let (v, _) = c.commit("imp", "test").await.unwrap();
    let saved = table(&mut c, "imp").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imp.safetensors");
    accrete_client::safetensors::export(&mut c, "imp", Some(v.version), true, &file).await.unwrap();
    push_pattern(&mut c, &spec, 12).await;
    assert_ne!(table(&mut c, "imp").await, saved, "trained on");
    let before = c.model_info("imp").await.unwrap().lineage_epoch;
    let rec = accrete_client::safetensors::import(&mut c, "imp", &file).await.unwrap();
    assert_eq!(rec.kind, accrete_core::VersionKind::Import);
    assert_eq!(table(&mut c, "imp").await, saved, "the exported parameters, on every partition");
    for p in 0..3u32 {
        let local = accrete_core::spec::local_name("imp", p);
        let info = c.model_info(&local).await.unwrap();
        assert_eq!((info.head_version, info.lineage_epoch), (rec.version, before + 1), "partition {p}");
    }
    // The version exported again holds the same weights and optimizer slots, byte for byte.
    let again = dir.path().join("again.safetensors");
    accrete_client::safetensors::export(&mut c, "imp", Some(rec.version), true, &again).await.unwrap();
    assert_eq!(tensor_bytes(&again), tensor_bytes(&file));
}

/// Each tensor's (and slot's) name and bytes in a safetensors file.
fn tensor_bytes(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let (entries, start, _) = accrete_client::safetensors::read_header(path).unwrap();
    let body = std::fs::read(path).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|e| (e.name(), body[(start + e.begin) as usize..(start + e.end) as usize].to_vec()))
        .collect();
    out.sort();
    assert!(out.len() >= 4, "weights and slots of h and b: {:?}", out.iter().map(|e| &e.0).collect::<Vec<_>>());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asked_to_score_a_split_model_alone_says_why_and_partitions_describe_themselves() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    c.create_model(&adam_spec("sc", 3), None).await.unwrap();
    let info = c.model_info("sc").await.unwrap();
    let home = &info.partitions[0].primary;
    // A hashed row beyond the home's own rows, sent to the home without routing.
    let mut raw = accrete_client::raw::RawClient::connect(&format!("http://{home}")).await.unwrap();
    let rows = accrete_proto::v1::FeatureRows {
        rows: 1,
        row_ptr: vec![0, 1],
        indices: vec![3000],
        values: 1f32.to_le_bytes().to_vec().into(),
        ..Default::default()
    };
    let req = accrete_proto::v1::PredictRequest { model: "sc".into(), version: None, rows: Some(rows) };
    let err = raw.params.predict(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("split into 3 partitions") && err.message().contains("\"sc\""), "{err:?}");
    // Partition 2 describes itself: its name, and the rows of `h` it holds.
    let p2 = c.model_info("sc#2").await.unwrap();
    assert_eq!((p2.spec.name.as_str(), p2.spec.partition), ("sc#2", 2));
    let h = p2.tensors.iter().find(|t| t.name == "h").unwrap_or_else(|| panic!("{p2:?}"));
    assert_eq!((h.row_begin, h.row_end, h.rows), (2730, 4096, 4096), "{:?}", p2.tensors);
    assert!(p2.tensors.iter().all(|t| t.name != "b"), "the bias is whole on partition 0: {:?}", p2.tensors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_alone_refuses_whole_model_calls_and_a_delete_drops_every_partition() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;
    let spec = adam_spec("del", 3);
    c.create_model(&spec, None).await.unwrap();
    push_pattern(&mut c, &spec, 6).await;
    let (v, _) = c.commit("del", "test").await.unwrap();
    // Calls that change the whole model's versions, sent to partition 1 alone (routed to
    // its server): refused, naming the partition and the model to call instead.
    let whole_only = |e: accrete_client::ClientError| {
        let m = e.to_string();
        assert!(m.starts_with("INVALID_ARGUMENT"), "{m}");
        assert!(m.contains("\"del#1\" is partition 1 of model \"del\""), "{m}");
    };
    whole_only(c.commit("del#1", "alone").await.unwrap_err());
    whole_only(c.rollback("del#1", 1, "alone").await.unwrap_err());
    whole_only(c.tag("del#1", v.version, "alone").await.unwrap_err());
    whole_only(c.delete_model("del#1").await.unwrap_err());
    let info = c.model_info("del#1").await.unwrap();
    assert_eq!((info.head_version, info.lineage_epoch), (v.version, 1), "nothing changed");
    // The delete drops every partition, so a create of the same name starts afresh.
    let initial = {
        let mut s = cluster.client(0).await;
        s.create_model(&adam_spec("fresh", 3), None).await.unwrap();
        table(&mut s, "fresh").await
    };
    c.delete_model("del").await.unwrap();
    for p in 1..3u32 {
        let local = accrete_core::spec::local_name("del", p);
        let gone = c.model_info(&local).await.unwrap_err();
        assert!(matches!(gone, accrete_client::ClientError::NotFound(_)), "partition {p}: {gone}");
    }
    c.create_model(&spec, None).await.unwrap();
    assert_eq!(c.model_info("del").await.unwrap().head_version, 1);
    let (h, b) = table(&mut c, "del").await;
    assert_eq!((h.len(), h.iter().filter(|x| **x != 0.0).count(), b), (4096, 0, vec![0.0]), "no trained row is left");
    assert_eq!(table(&mut c, "fresh").await, (h, vec![0.0]), "as a fresh model's");
    assert_eq!(initial.0.len(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_that_reached_one_partition_is_repaired_by_the_next_commit_and_a_retried_install_is_one() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let spec = adam_spec("half", 3);
    c.create_model(&spec, None).await.unwrap();
    push_pattern(&mut c, &spec, 6).await;
    let (v, _) = c.commit("half", "test").await.unwrap();
    let committed = table(&mut c, "half").await;
    // A coordinator's rollback to version 1 that reached partition 2 and no further (its
    // server went down before the next): partition 2 is at a new lineage epoch alone.
    let (_, mut p2) = c.partition_server("half", 2, 3);
    let at = (v.version + 1, 2);
    let first = p2.install("half#2", 1, at, "rollback to 1", false).await.unwrap();
    let again = p2.install("half#2", 1, at, "rollback to 1", false).await.unwrap();
    assert_eq!((first.version, first.lineage_epoch), at);
    assert_eq!(again, first, "a retried install (its answer lost) is answered with the version it made");
    // The next commit finds two lineages and takes every partition back to the latest
    // global version, at one new epoch.
    push_pattern(&mut c, &spec, 3).await;
    // (the coordinator says UNAVAILABLE, "commit again"; the client's retry finds
    // nothing new to commit after the recovery)
    let (after, created) = c.commit("half", "after").await.unwrap();
    assert!(!created && after.reason.contains("partition 2 is at lineage epoch 2 and the home at 1"), "{after:?}");
    let epochs: Vec<(u64, u64)> = {
        let mut out = Vec::new();
        for p in 0..3u32 {
            let i = c.model_info(&accrete_core::spec::local_name("half", p)).await.unwrap();
            out.push((i.head_version, i.lineage_epoch));
        }
        out
    };
    assert_eq!(epochs, vec![(v.version + 2, 3); 3], "one version and one epoch on every partition");
    assert_eq!(table(&mut c, "half").await, committed, "the latest global version's content, whole");
    let head = c.versions("half").await.unwrap().pop().unwrap();
    assert_eq!((head.version, head.content_of), (v.version + 2, v.version), "{head:?}");
    assert!(head.reason.starts_with(&format!("recovery to {}", v.version)), "{}", head.reason);
}
