//! One model split over three real server processes, under faults: a `kill -9` of a
//! partition's server (or of the model's home) in the middle of two workers' training
//! and its restart on the same data dir, then a check of the whole history — every server
//! lists the same global versions, every partition holds each of them with the same cut,
//! a recovery is in the lineage, offsets only grow within a lineage epoch, and every row
//! counts exactly once in every version. Also what a down partition answers, and the
//! barriers (BSP, SSP) across partitions.
mod common;

use accrete_proto::v1::{VersionInfo, VersionKind};
use common::cluster::{
    exit_of, flights_shards, json, local_info, local_versions, output_of, read_safetensors, run_json, spawn_worker,
    versions, Cluster,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The model every scenario trains: logistic over 2^16 hashed rows and one numeric input,
/// in 3 partitions (one per server).
const MODEL: &str = "m";
/// Rows per shard of the kill scenarios (a multiple of the batch: every batch is whole).
const ROWS: u64 = 4000;

/// Three servers, the model created through server 1, and two shards for workers of
/// `batch` rows per batch. (The temp dir goes last: a failing test prints the logs in it.)
struct Setup {
    cluster: Cluster,
    shards: Vec<PathBuf>,
    batch: u64,
    tmp: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..2 {
                let log = self.worker_log(i);
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("---- worker w{i}, last lines:");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

impl Setup {
    fn new(rows: u64, batch: u64, extra: &[&str]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(tmp.path(), 3);
        let shards = flights_shards(tmp.path(), 2, rows as usize, 11);
        let spec = [
            "model",
            "create",
            MODEL,
            "--kind",
            "logistic",
            "--hash-bits",
            "16",
            "--features",
            "1",
            "--optimizer",
            "adagrad",
            "--lr",
            "0.1",
            "--partitions",
            "3",
        ];
        json(&cluster.url(1), &[&spec[..], extra].concat());
        Setup { cluster, shards, batch, tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The index of the server of each partition.
    fn servers(&self) -> Vec<usize> {
        self.cluster.partitions(MODEL).iter().map(|a| self.cluster.index_of(a)).collect()
    }

    /// Workers `w0`, `w1` on the shards, started through servers `via[i]`.
    fn workers(&self, via: [usize; 2], extra: &[&str]) -> Vec<Child> {
        let batch = self.batch.to_string();
        let extra = [&["--batch", &batch][..], extra].concat();
        (0..2)
            .map(|i| {
                let url = self.cluster.url(via[i]);
                spawn_worker(&url, self.dir(), MODEL, &format!("w{i}"), &self.shards[i], &extra)
            })
            .collect()
    }

    /// Waits for both workers to exit 0 with their rows committed.
    fn finish(&self, workers: &mut [Child], secs: u64) {
        for (i, w) in workers.iter_mut().enumerate() {
            let id = format!("w{i}");
            let status = exit_of(w, &id, secs);
            let (out, err) = (output_of(self.dir(), &id, "out"), output_of(self.dir(), &id, "err"));
            assert!(status.success() && out.contains("committed in version"), "{id}: {status:?}\n{out}\n{err}");
        }
    }

    fn worker_log(&self, i: usize) -> String {
        output_of(self.dir(), &format!("w{i}"), "err")
    }
}

/// The model's live update count (at its home), or `None` while no server answers.
async fn live_updates(url: &str) -> Option<u64> {
    let mut c = accrete_client::Client::connect(url).await.ok()?;
    Some(c.model_info(MODEL).await.ok()?.updates)
}

/// Waits until the model applied `n` updates, with both workers still running.
async fn until_updates(s: &Setup, url: &str, n: u64, workers: &mut [Child]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_updates(url).await.is_none_or(|u| u < n) {
        assert!(Instant::now() < deadline, "fewer than {n} updates in 60 s:\n{}\n{}", s.worker_log(0), s.worker_log(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, w) in workers.iter_mut().enumerate() {
        assert!(w.try_wait().unwrap().is_none(), "w{i} finished before the kill: give it more rows");
    }
}

/// A shard's rows as byte offsets: where each row's line ends.
struct Shard {
    ends: Vec<u64>,
}

impl Shard {
    fn read(path: &Path) -> Shard {
        let bytes = std::fs::read(path).unwrap();
        let mut ends: Vec<u64> =
            bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i as u64 + 1).collect();
        ends.remove(0); // the header's
        Shard { ends }
    }

    fn len(&self) -> u64 {
        *self.ends.last().unwrap()
    }

    /// The rows before byte `offset`, which must be where a row ends (or 0).
    fn rows_before(&self, offset: u64) -> u64 {
        if offset == 0 {
            return 0;
        }
        match self.ends.binary_search(&offset) {
            Ok(i) => i as u64 + 1,
            Err(_) => panic!("offset {offset} is not at the end of a row"),
        }
    }
}

/// One worker's progress in a version: (incarnation, seq, pass, offset, rows, pushes,
/// clock).
type Mark = (u64, u64, u64, u64, u64, u64, u64);

fn marks(v: &VersionInfo) -> BTreeMap<String, Mark> {
    v.workers
        .iter()
        .map(|w| (w.worker_id.clone(), (w.incarnation, w.seq, w.pass, w.offset, w.rows, w.pushes, w.clock)))
        .collect()
}

/// The count of rows the `norm` statistics of version `v` took in (feature 0's count),
/// from an export of that version (gathered over the partitions by the home).
fn norm_count(url: &str, dir: &Path, v: u64) -> f32 {
    let out = dir.join(format!("v{v}.safetensors"));
    json(url, &["model", "export", MODEL, "--version", &v.to_string(), "--out", out.to_str().unwrap()]);
    let (tensors, meta) = read_safetensors(&out);
    assert_eq!(meta["accrete.version"], v.to_string(), "the export is of version {v}");
    tensors.into_iter().find(|(n, _)| n == "norm").unwrap().1[0]
}

/// What `epochs` clean passes over the shard in batches of `batch` give: rows and pushes.
fn clean(shard: &Shard, batch: u64, epochs: u64) -> (u64, u64) {
    let rows = shard.ends.len() as u64;
    (rows * epochs, rows.div_ceil(batch) * epochs)
}

/// The history check of a model trained by workers `w0`, `w1` on the shards for `epochs`
/// passes, after a final commit. Returns the versions, as the home lists them.
///
/// (a) every server lists the same versions, with the same content (`model versions --json`);
/// (b) with `recovered`, the lineage has a recovery: `to`'s content and `to`'s worker
///     progress (the rewind) under a new lineage epoch;
/// (c) the head holds each worker's whole shard: offset at its end, rows and pushes those
///     of one clean pass, and the model's statistics count each row once;
/// (d) within a lineage epoch, each worker's progress only grows; and in every version,
///     each worker's rows and pushes are exactly those before its offset, and the
///     statistics count exactly the rows the workers' progress says: no row twice, none
///     lost, at every version;
/// (e) every partition holds every listed version under the same number and lineage
///     epoch, with the same cut: each worker's (incarnation, seq), offset, rows, pushes
///     and clock as at the home.
async fn check_history(s: &Setup, epochs: u64, recovered: bool) -> Vec<VersionInfo> {
    let c = &s.cluster;
    let commit = json(&c.url(2), &["model", "commit", MODEL, "--reason", "the history check"]);
    // (a)
    let all: Vec<Vec<Value>> = c.urls().iter().map(|u| versions(u, MODEL)).collect();
    for (i, other) in all.iter().enumerate().skip(1) {
        assert_eq!(other, &all[0], "the versions through server {i} differ from server 0's");
    }
    let servers = s.servers();
    let vs = local_versions(&c.addrs[servers[0]], MODEL).await;
    let numbers: Vec<u64> = vs.iter().map(|v| v.version).collect();
    let listed: Vec<u64> = all[0].iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(numbers, listed, "the home's own list");
    eprintln!("versions: {:?}", reasons(&vs));
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "version numbers grow: {numbers:?}");
    let head = vs.last().unwrap();
    assert_eq!(Some(head.version), commit["version"].as_u64(), "the head is the final commit's");
    let by_number: BTreeMap<u64, &VersionInfo> = vs.iter().map(|v| (v.version, v)).collect();
    // (b)
    let recoveries: Vec<&VersionInfo> = vs.iter().filter(|v| v.reason.starts_with("recovery to")).collect();
    if recovered {
        assert!(!recoveries.is_empty(), "no recovery in the lineage: {:?}", reasons(&vs));
    }
    for r in &recoveries {
        let to: u64 =
            r.reason["recovery to ".len()..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        assert_eq!(r.kind, VersionKind::Rollback as i32, "a recovery is a rollback: {r:?}");
        let before = vs.iter().rev().find(|v| v.version < r.version).unwrap();
        assert_eq!(r.lineage_epoch, before.lineage_epoch + 1, "a recovery starts a new lineage epoch: {r:?}");
        if let Some(target) = by_number.get(&to) {
            let content = if target.content_of == 0 { to } else { target.content_of };
            assert_eq!(r.content_of, content, "{r:?}");
            assert_eq!(
                marks(r),
                marks(target),
                "recovery {}: the workers rewind to version {to}'s progress",
                r.version
            );
        }
    }
    // (c)
    let shards: Vec<Shard> = s.shards.iter().map(|p| Shard::read(p)).collect();
    let mut total = 0;
    assert_eq!(head.workers.len(), 2, "{head:?}");
    for (i, shard) in shards.iter().enumerate() {
        let w = head.workers.iter().find(|w| w.worker_id == format!("w{i}")).unwrap();
        let (rows, pushes) = clean(shard, s.batch, epochs);
        let got = (w.pass, w.offset, w.rows, w.pushes);
        assert_eq!(
            got,
            (epochs - 1, shard.len(), rows, pushes),
            "w{i} (pass, offset, rows, pushes) in the head {head:?}"
        );
        total += rows;
    }
    let dir = s.dir();
    assert_eq!(norm_count(&c.url(0), dir, head.version), total as f32, "rows in the head's statistics");
    // (d)
    for pair in vs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.lineage_epoch != b.lineage_epoch {
            continue;
        }
        let (ma, mb) = (marks(a), marks(b));
        for (w, pa) in &ma {
            let pb = mb.get(w).unwrap_or_else(|| panic!("{w} is in version {} but not in {}", a.version, b.version));
            let grew = (pa.2, pa.3) <= (pb.2, pb.3) && pa.4 <= pb.4 && pa.5 <= pb.5 && (pa.0, pa.1) <= (pb.0, pb.1);
            assert!(
                grew,
                "{w}'s progress went back within lineage epoch {}: version {} {pa:?} then {} {pb:?}",
                a.lineage_epoch, a.version, b.version
            );
        }
    }
    for v in &vs {
        let mut rows = 0;
        for w in &v.workers {
            let i: usize = w.worker_id[1..].parse().unwrap();
            let shard = &shards[i];
            let (per_pass, pushes_per_pass) = clean(shard, s.batch, 1);
            let before = shard.rows_before(w.offset);
            let want = (w.pass * per_pass + before, w.pass * pushes_per_pass + before.div_ceil(s.batch));
            assert_eq!(
                (w.rows, w.pushes),
                want,
                "version {}: {}'s rows and pushes are not those before its offset {} in pass {}",
                v.version,
                w.worker_id,
                w.offset,
                w.pass
            );
            rows += w.rows;
        }
        assert_eq!(
            norm_count(&c.url(1), dir, v.version),
            rows as f32,
            "version {}'s statistics count other rows than its progress says",
            v.version
        );
    }
    // (e)
    for (p, server) in servers.into_iter().enumerate().skip(1) {
        let local = format!("{MODEL}#{p}");
        let theirs: BTreeMap<u64, VersionInfo> =
            local_versions(&c.addrs[server], &local).await.into_iter().map(|v| (v.version, v)).collect();
        for v in &vs {
            let there = theirs
                .get(&v.version)
                .unwrap_or_else(|| panic!("partition {p} has no version {}: it has {:?}", v.version, theirs.keys()));
            assert_eq!(there.lineage_epoch, v.lineage_epoch, "partition {p}, version {}", v.version);
            assert_eq!(
                marks(there),
                marks(v),
                "version {}: the cut on partition {p} differs from the home's",
                v.version
            );
        }
    }
    vs
}

fn reasons(vs: &[VersionInfo]) -> Vec<String> {
    vs.iter().map(|v| format!("{} e{} {}", v.version, v.lineage_epoch, v.reason)).collect()
}

/// Two workers train two passes each; the server of `partition` is killed with -9 in the
/// middle and restarted on its data dir a second later. The workers ride it out, and the
/// history holds.
async fn kill_during_training(partition: usize) {
    let started = Instant::now();
    let epochs = 2;
    let mut s = Setup::new(ROWS, 10, &["--commit-every-updates", "50"]);
    let servers = s.servers();
    let victim = servers[partition];
    eprintln!("partitions on servers {servers:?}; killing server {victim} (partition {partition})");
    // One worker bootstraps from the server that dies, the other from one that stays.
    let other = (victim + 1) % 3;
    let mut workers = s.workers([victim, other], &["--epochs", &epochs.to_string()]);
    let home = s.cluster.url(servers[0]);
    until_updates(&s, &home, 2 * ROWS * epochs / s.batch / 3, &mut workers).await;
    s.cluster.kill(victim);
    let killed_at = live_updates(&s.cluster.url(other)).await;
    eprintln!("killed at {:.1} s (home's updates: {killed_at:?})", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.cluster.restart(victim);
    s.finish(&mut workers, 60);
    eprintln!("workers done at {:.1} s", started.elapsed().as_secs_f64());
    for i in 0..2 {
        let log = s.worker_log(i);
        assert!(log.contains("joined again"), "w{i} did not notice the kill:\n{log}");
    }
    check_history(&s, epochs, true).await;
    eprintln!("checked at {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_partition_server_killed_during_training_recovers_and_every_row_counts_once() {
    kill_during_training(1).await;
}

#[tokio::test]
async fn the_home_server_killed_during_training_recovers_and_every_row_counts_once() {
    kill_during_training(0).await;
}

/// While a partition's server is down, routed calls fail with UNAVAILABLE naming the
/// partition and its server, and the versions are still listed through the home; after
/// its restart on its data dir the model answers again with the same content.
#[tokio::test]
async fn a_down_partition_is_named_and_its_restart_gives_back_the_same_content() {
    let mut s = Setup::new(1000, 50, &["--commit-every-secs", "0"]);
    let servers = s.servers();
    let (home, victim) = (s.cluster.url(servers[0]), servers[2]);
    let mut w = s.workers([servers[1], servers[2]], &[]);
    s.finish(&mut w, 60);
    json(&home, &["model", "commit", MODEL]);
    let before = versions(&home, MODEL);
    let head = before.last().unwrap()["version"].as_u64().unwrap();
    let dir = s.dir().to_path_buf();
    let export = |name: &str, version: Option<u64>, url: &str| {
        let out = dir.join(name);
        let mut args = vec!["model", "export", MODEL, "--out", out.to_str().unwrap()];
        let v = version.map(|v| v.to_string());
        if let Some(v) = &v {
            args.extend(["--version", v]);
        }
        (run_json(url, &args), out)
    };
    let (out, a) = export("before.safetensors", None, &home);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let holdout = s.shards[1].to_str().unwrap().to_string();
    let predict = |url: &str, secs: &str| {
        let args = ["model", "predict", MODEL, "--input", &holdout, "--reconnect-secs", secs, "--server", url];
        std::process::Command::new(common::procs::BIN).args(args).output().unwrap()
    };
    let p0 = predict(&home, "10");
    assert!(p0.status.success(), "{}", String::from_utf8_lossy(&p0.stderr));
    assert_eq!(String::from_utf8_lossy(&p0.stdout).lines().count(), 1000);

    s.cluster.kill(victim);
    let addr = s.cluster.addrs[victim].clone();
    let named = |what: &str, out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} succeeded with partition 2 down");
        assert!(
            err.contains("UNAVAILABLE") && err.contains("partition 2") && err.contains(&addr),
            "{what} does not say UNAVAILABLE naming partition 2 and {addr}: {err}"
        );
    };
    let t = Instant::now();
    named("predict", &predict(&home, "1"));
    eprintln!("predict failed in {:.1} s", t.elapsed().as_secs_f64());
    let fast = |args: &[&str]| {
        std::process::Command::new(common::procs::BIN)
            .args(args)
            .args(["--reconnect-secs", "1", "--server", &home])
            .output()
            .unwrap()
    };
    let t = Instant::now();
    let export_down = dir.join("down.safetensors");
    named("export", &fast(&["model", "export", MODEL, "--out", export_down.to_str().unwrap()]));
    named("commit", &fast(&["model", "commit", MODEL]));
    eprintln!("export and commit failed in {:.1} s", t.elapsed().as_secs_f64());
    let shard = s.shards[0].to_str().unwrap();
    let worker = std::process::Command::new(common::procs::BIN)
        .args(["worker", "--model", MODEL, "--shard", shard, "--worker-id", "late"])
        .args(common::cluster::COLS)
        .args(["--reconnect-secs", "1", "--server", &home])
        .output()
        .unwrap();
    named("a worker", &worker);
    for (i, url) in s.cluster.urls().iter().enumerate().filter(|(i, _)| *i != victim) {
        assert_eq!(versions(url, MODEL), before, "the versions through server {i} while partition 2 is down");
    }

    s.cluster.restart(victim);
    let after: Vec<String> =
        versions(&home, MODEL).iter().map(|v| format!("{} {}", v["version"], v["reason"])).collect();
    eprintln!("after the restart: {after:?}");
    let (out, b) = export("again.safetensors", Some(head), &home);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "version {head} exported again, byte for byte");
    let (out, c) = export("head.safetensors", None, &s.cluster.url(victim));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_safetensors(&c).0, read_safetensors(&a).0, "the head's content after the restart");
    let p1 = predict(&s.cluster.url(victim), "10");
    assert!(p1.status.success(), "{}", String::from_utf8_lossy(&p1.stderr));
    assert_eq!(p1.stdout, p0.stdout, "the same predictions after the restart");
    // and it trains again
    let mut w = s.workers([victim, servers[0]], &["--epochs", "2"]);
    s.finish(&mut w, 30);
    let head = json(&home, &["model", "commit", MODEL]);
    let rows: u64 = head["workers"].as_array().unwrap().iter().map(|w| w["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 2 * 2 * 1000, "each worker's two passes: {head}");
}

/// Two workers under BSP or SSP on the 3 partitions: both finish their shard, and each
/// partition's local model holds every global version with the same clocks and progress
/// as the home (a worker's clock is the same on every partition); every partition counts
/// the same updates.
async fn barrier_across_partitions(consistency: &str) {
    let started = Instant::now();
    let s = Setup::new(2000, 20, &["--consistency", consistency, "--commit-every-updates", "40"]);
    let servers = s.servers();
    let mut w = s.workers([servers[0], servers[2]], &[]);
    s.finish(&mut w, 30);
    eprintln!("{consistency}: workers done in {:.1} s", started.elapsed().as_secs_f64());
    let vs = check_history(&s, 1, false).await;
    let head = vs.last().unwrap();
    let mut updates = Vec::new();
    for (p, server) in servers.iter().enumerate() {
        let local = if p == 0 { MODEL.to_string() } else { format!("{MODEL}#{p}") };
        let info = local_info(&s.cluster.addrs[*server], &local).await;
        let lv = local_versions(&s.cluster.addrs[*server], &local).await;
        let last = lv.last().unwrap();
        assert_eq!(last.version, head.version, "partition {p}'s head");
        let clocks: BTreeMap<String, (u64, u64)> =
            last.workers.iter().map(|w| (w.worker_id.clone(), (w.clock, w.pushes))).collect();
        eprintln!("partition {p}: updates {} head {} clocks {clocks:?}", info.updates, info.head_version);
        assert_eq!(info.uncommitted_updates, 0, "partition {p} after the final commit");
        updates.push(info.updates);
    }
    assert!(updates.iter().all(|u| *u == updates[0]), "updates per partition {updates:?}: the same pushes everywhere");
    // one update per push; under BSP one per round, of both workers' pushes or of one's
    let pushes = 2 * 2000 / 20;
    if consistency == "bsp" {
        assert!((pushes / 2..=pushes).contains(&updates[0]), "{} rounds for {pushes} pushes", updates[0]);
    } else {
        assert_eq!(updates[0], pushes, "one update per push");
    }
}

#[tokio::test]
async fn bsp_clocks_are_the_same_on_every_partition() {
    barrier_across_partitions("bsp").await;
}

#[tokio::test]
async fn ssp_clocks_are_the_same_on_every_partition() {
    barrier_across_partitions("ssp:2").await;
}

/// A worker started through a server that is not the model's home renews its lease on
/// every partition: its heartbeats are routed as its pulls and pushes are.
#[tokio::test]
async fn a_worker_started_through_any_server_renews_its_lease() {
    let s = Setup::new(200, 50, &["--consistency", "ssp:1"]);
    let servers = s.servers();
    // `--follow`: it reads its shard, then waits for more rows, beating meanwhile
    let mut w = s.workers([servers[1], servers[2]], &["--follow"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_updates(&s.cluster.url(0)).await.is_none_or(|u| u < 8) {
        assert!(Instant::now() < deadline, "the workers did not push their shards in 30 s: {}", s.worker_log(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // five seconds: three heartbeats, and the whole lease
    tokio::time::sleep(Duration::from_secs(5)).await;
    for c in &mut w {
        let _ = c.kill();
        let _ = c.wait();
    }
    for i in 0..2 {
        let log = s.worker_log(i);
        assert!(!log.contains("heartbeat refused"), "w{i} (started through server {}): {log}", servers[i + 1]);
    }
    let log = s.cluster.log(servers[0]);
    assert!(!log.contains("lease expired"), "a worker beating its lease lost it at the home: {log}");
}

/// A partition's server restarts after a worker's last push was acknowledged everywhere
/// but before a version held it (under BSP its round waits for a second member, which
/// never pushes): the worker learns that its rows were lost, reads them again, and
/// exits 0 with them committed once.
#[tokio::test]
async fn a_partition_restart_between_the_last_ack_and_its_commit_reads_the_rows_again() {
    let mut s = Setup::new(50, 100, &["--consistency", "bsp"]);
    let servers = s.servers();
    let home = s.cluster.url(servers[0]);
    // A second member of the barrier that joins first and never pushes: round 1 stays open.
    let idle = accrete_client::Client::connect(&home).await.unwrap();
    idle.clone().join(MODEL, "idle", "", None).await.unwrap();
    let beat = {
        let mut c = idle.clone();
        tokio::spawn(async move {
            loop {
                let _ = c.heartbeat(MODEL, "idle").await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let shard = s.shards[0].clone();
    let mut w = spawn_worker(&home, s.dir(), MODEL, "w0", &shard, &["--batch", "100"]);
    // Its one push is acknowledged into round 1 on every partition; it waits for a version.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(w.try_wait().unwrap().is_none(), "the worker did not wait: {}", s.worker_log(0));
    s.cluster.kill(servers[1]);
    s.cluster.restart(servers[1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    beat.abort();
    let _ = idle.clone().leave(MODEL, "idle").await;
    let status = exit_of(&mut w, "w0", 30);
    assert!(status.success(), "{status:?}: {}", s.worker_log(0));
    let head = json(&home, &["model", "commit", MODEL]);
    let mine = head["workers"].as_array().unwrap().iter().find(|w| w["worker_id"] == "w0").cloned();
    assert_eq!(mine.map(|w| w["rows"].clone()), Some(serde_json::json!(50)), "w0's rows in the head {head}");
    let v = head["version"].as_u64().unwrap();
    assert_eq!(norm_count(&home, s.dir(), v), 50.0, "rows counted by the head's statistics");
}
