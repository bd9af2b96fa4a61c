//! `accrete bench server`: the parameter server's benchmarks, run against a real server
//! process on loopback:
//! - dense push+apply of a 10^7-float model vs raw tonic streaming of the same messages to
//!   a sink that applies nothing;
//! - sparse 1,000-key pushes (key-updates/s);
//! - commit after touching 1 % of a 10^8-float model vs a commit that rewrites it all;
//! - rollback time for 10^6, 10^7, 10^8 floats;
//! - server RSS holding a 10^7-float Adam model vs the bytes of weights + slots;
//! - and the storage scenarios (`storage.rs`): disk after 1 % commits, a 2^24-row hashed
//!   model's commits and disk.
use accrete_client::raw::RawClient;
use accrete_proto::bench::sink_client::SinkClient;
use accrete_proto::v1 as pb;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Floats per dense push message: 256 KiB of values.
const MSG_FLOATS: usize = 64 * 1024;

/// A child process killed on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn spawn(args: &[&str]) -> Result<(Proc, String)> {
    let port = free_port()?;
    let exe = std::env::current_exe()?;
    let listen = format!("127.0.0.1:{port}");
    let child =
        Command::new(exe).args(args).args(["--listen", &listen]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let p = Proc(child);
    let url = format!("http://{listen}");
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(&listen).await.is_ok() {
            return Ok((p, url));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{args:?} did not start listening on {listen}")
}

pub(crate) async fn spawn_server(dir: &Path) -> Result<(Proc, String, RawClient)> {
    let d = dir.to_string_lossy().to_string();
    let (p, url) = spawn(&["server", "--data-dir", &d, "--max-message-bytes", &(256u64 << 20).to_string()]).await?;
    let c = RawClient::connect(&url).await?;
    Ok((p, url, c))
}

pub(crate) fn spec(name: &str, features: u32, opt: pb::OptimizerKind, keep_last: u32) -> pb::ModelSpec {
    pb::ModelSpec {
        name: name.into(),
        kind: pb::ModelKind::Linear as i32,
        features,
        optimizer: Some(pb::OptimizerSpec { kind: opt as i32, lr: 1e-3, ..Default::default() }),
        commit: Some(pb::CommitPolicy { keep_last, ..Default::default() }),
        ..Default::default()
    }
}

/// Push messages covering `floats` floats of `w` from `start`, 256 KiB each.
pub(crate) fn dense_msgs(model: &str, start: u64, floats: u64, value: f32) -> Vec<pb::PushRequest> {
    let mut out = Vec::new();
    let mut off = start;
    while off < start + floats {
        let n = (start + floats - off).min(MSG_FLOATS as u64) as usize;
        let grads = vec![pb::TensorChunk {
            tensor: "w".into(),
            offset: off,
            values: accrete_proto::f32s_to_bytes(&vec![value; n]),
            ..Default::default()
        }];
        out.push(pb::PushRequest { model: model.into(), lineage_epoch: 0, grads, meta: None });
        off += n as u64;
    }
    out
}

/// Streams `msgs` `rounds` times over one push stream; returns seconds.
pub(crate) async fn stream_pushes(c: &mut RawClient, msgs: &[pb::PushRequest], rounds: usize) -> Result<f64> {
    let all: Vec<pb::PushRequest> = (0..rounds).flat_map(|_| msgs.iter().cloned()).collect();
    let n = all.len();
    let t = Instant::now();
    let mut acks = c.params.push_stream(tokio_stream::iter(all)).await?.into_inner();
    let mut got = 0;
    while let Some(a) = acks.next().await {
        a?;
        got += 1;
    }
    if got != n {
        bail!("{got} acks for {n} pushes");
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn stream_sink(url: &str, msgs: &[pb::PushRequest], rounds: usize) -> Result<f64> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await?;
    let mut sink = SinkClient::new(ch).max_encoding_message_size(256 << 20);
    let all: Vec<pb::PushRequest> = (0..rounds).flat_map(|_| msgs.iter().cloned()).collect();
    let n = all.len();
    let t = Instant::now();
    let mut acks = sink.drain(tokio_stream::iter(all)).await?.into_inner();
    let mut got = 0;
    while let Some(a) = acks.next().await {
        a?;
        got += 1;
    }
    if got != n {
        bail!("{got} sink acks for {n} messages");
    }
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) async fn commit(c: &mut RawClient, model: &str) -> Result<(f64, pb::VersionInfo)> {
    let t = Instant::now();
    let r = c
        .models
        .commit(pb::CommitRequest { model: model.into(), reason: String::new(), ..Default::default() })
        .await?
        .into_inner();
    Ok((t.elapsed().as_secs_f64(), r.version.unwrap_or_default()))
}

pub(crate) async fn create(c: &mut RawClient, s: pb::ModelSpec) -> Result<f64> {
    let t = Instant::now();
    c.models.create_model(pb::CreateModelRequest { spec: Some(s), ..Default::default() }).await?;
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Bytes the files under `p` take on disk (allocated blocks, as `du` counts them).
pub(crate) fn dir_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(
            |e| {
                if e.path().is_dir() {
                    dir_bytes(&e.path())
                } else {
                    e.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
                }
            },
        )
        .sum()
}

/// What the scenarios share: a scratch directory, the figures so far, how to print.
pub(crate) struct Ctx {
    pub(crate) dir: std::path::PathBuf,
    max_floats: u64,
    as_json: bool,
    pub(crate) report: serde_json::Map<String, serde_json::Value>,
}

impl Ctx {
    pub(crate) fn say(&self, line: String) {
        if !self.as_json {
            println!("{line}");
        }
    }
}

pub(crate) async fn server_bench(max_floats: u64, as_json: bool, only: &[String]) -> Result<()> {
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let tmp = tempfile::tempdir()?;
    let mut ctx = Ctx { dir: tmp.path().to_path_buf(), max_floats, as_json, report: serde_json::Map::new() };
    if want("apply") {
        apply(&mut ctx).await?;
    }
    if want("dense") {
        dense(&mut ctx).await?;
    }
    if want("admin") {
        admin(&mut ctx).await?;
    }
    if want("sparse") {
        sparse(&mut ctx).await?;
    }
    if want("commit") {
        commit_rollback(&mut ctx).await?;
    }
    if want("rss") {
        rss(&mut ctx).await?;
    }
    if want("disk") {
        crate::storage::disk(&mut ctx).await?;
    }
    if want("hashed") {
        crate::storage::hashed(&mut ctx).await?;
    }
    if as_json {
        println!("{}", serde_json::Value::Object(ctx.report));
    }
    Ok(())
}

/// The apply kernel alone, in process: check + decode + SGD over a 10^7-float model.
async fn apply(ctx: &mut Ctx) -> Result<()> {
    let mut spec = accrete_core::ModelSpec::new("k", accrete_core::ModelKind::Linear);
    spec.features = 10_000_000;
    let mut p = accrete_core::Params::init(&spec);
    let layout = accrete_core::layout(&spec);
    let bytes: Vec<u8> = (0..MSG_FLOATS).flat_map(|i| (i as f32 * 1e-6).to_le_bytes()).collect();
    let msgs = 10_000_000 / MSG_FLOATS;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for m in 0..msgs {
            let off = (m * MSG_FLOATS) as u64;
            let g = accrete_core::optim::LeBytes(&bytes);
            let ti = accrete_core::params::check_dense(&layout, "w", off, &g)?;
            p.begin_update();
            p.apply_dense_le(ti, off as usize, &bytes);
            p.finish_update()?;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gbs = (msgs * MSG_FLOATS * 4) as f64 / best / 1e9;
    ctx.say(format!("apply kernel (check + decode + SGD + finiteness, 256 KiB messages over a 10^7-float model, one thread): {gbs:.2} GB/s of gradient"));
    ctx.report.insert("apply".into(), json!({"gb_s": gbs}));
    Ok(())
}

/// Dense push+apply vs raw streaming of the same messages.
async fn dense(ctx: &mut Ctx) -> Result<()> {
    let (_p, _url, mut c) = spawn_server(&ctx.dir.join("dense")).await?;
    let (_sink, sink_url) = spawn(&["bench", "sink"]).await?;
    create(&mut c, spec("dense", 10_000_000, pb::OptimizerKind::Sgd, 0)).await?;
    let msgs = dense_msgs("dense", 0, 10_000_000, 1e-3);
    let bytes = msgs.iter().map(|m| m.grads[0].values.len()).sum::<usize>() as f64;
    let rounds = 2;
    stream_sink(&sink_url, &msgs, 1).await?; // warm-up
    stream_pushes(&mut c, &msgs, 1).await?;
    // Alternate the two, five pairs; the median pair ratio is the figure.
    let mut pairs = Vec::new();
    for _ in 0..5 {
        let raw = stream_sink(&sink_url, &msgs, rounds).await?;
        let push = stream_pushes(&mut c, &msgs, rounds).await?;
        pairs.push((raw / push, bytes * rounds as f64 / push / 1e9, bytes * rounds as f64 / raw / 1e9));
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, push_gbs, raw_gbs) = pairs[2];
    ctx.say(format!(
        "dense push+apply, 10^7-float SGD model, 256 KiB messages: {push_gbs:.2} GB/s; raw tonic streaming of the same messages: {raw_gbs:.2} GB/s; ratio {ratio:.2} (median of 5 pairs; goal >= 0.8)"
    ));
    ctx.report.insert("dense".into(), json!({"push_gb_s": push_gbs, "raw_gb_s": raw_gbs, "ratio": ratio}));
    Ok(())
}

/// 64 pushes of 1,000 random rows of a 2^20-row table `h` (seeded).
fn sparse_msgs(model: &str) -> Vec<pb::PushRequest> {
    let mut rng = accrete_core::rng::SplitMix64::new(42);
    (0..64)
        .map(|_| {
            let mut keys: Vec<u64> = (0..1000).map(|_| rng.next_u64() % (1 << 20)).collect();
            keys.sort_unstable();
            keys.dedup();
            let vals: Vec<f32> = keys.iter().map(|_| (rng.next_f64() - 0.5) as f32).collect();
            let grads = vec![pb::TensorChunk {
                tensor: "h".into(),
                keys: accrete_proto::keys_to_bytes(&keys),
                values: accrete_proto::f32s_to_bytes(&vals),
                ..Default::default()
            }];
            pb::PushRequest { model: model.into(), lineage_epoch: 0, grads, meta: None }
        })
        .collect()
}

/// Admin calls (tag, report metrics, commit, rollback) while one stream floods a
/// 2^20-row model that commits after every update: their latency, p50/p99/max. A call
/// that does not answer within 10 s counts as 10 s.
async fn admin(ctx: &mut Ctx) -> Result<()> {
    const DEADLINE: Duration = Duration::from_secs(10);
    let (_p, _url, mut c) = spawn_server(&ctx.dir.join("admin")).await?;
    let mut s = spec("admin", 0, pb::OptimizerKind::Adagrad, 20);
    s.kind = pb::ModelKind::Logistic as i32;
    s.hash_bits = 20;
    s.commit = Some(pb::CommitPolicy { every_updates: 1, every_secs: 0.0, keep_last: 20 });
    create(&mut c, s).await?;
    c.models.tag(pb::TagRequest { model: "admin".into(), version: 1, label: "base".into() }).await?;
    let msgs = sparse_msgs("admin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (mut fc, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pushed = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                stream_pushes(&mut fc, &msgs, 1).await?;
                pushed += msgs.len();
            }
            anyhow::Ok(pushed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // commits fall due
    let mut lat = Vec::new();
    let mut by_call = std::collections::BTreeMap::new();
    let started = Instant::now();
    for i in 0..5u64 {
        let model = || "admin".to_string();
        let calls: [(&str, u8); 4] = [("tag", 0), ("report_metrics", 1), ("commit", 2), ("rollback", 3)];
        for (name, which) in calls {
            let mut cc = c.clone();
            let t = Instant::now();
            let call = async move {
                match which {
                    0 => cc
                        .models
                        .tag(pb::TagRequest { model: model(), version: 1, label: format!("t{i}") })
                        .await
                        .map(|_| ()),
                    1 => {
                        let metrics = [("auc".to_string(), 0.5 + i as f64 / 100.0)].into();
                        cc.models
                            .report_metrics(pb::ReportMetricsRequest {
                                model: model(),
                                version: 1,
                                metrics,
                                replace: false,
                            })
                            .await
                            .map(|_| ())
                    }
                    2 => cc
                        .models
                        .commit(pb::CommitRequest { model: model(), reason: "bench".into(), ..Default::default() })
                        .await
                        .map(|_| ()),
                    _ => cc
                        .models
                        .rollback(pb::RollbackRequest {
                            model: model(),
                            to_version: 1,
                            reason: "bench".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                }
            };
            match tokio::time::timeout(DEADLINE, call).await {
                Ok(r) => {
                    r?;
                    lat.push(t.elapsed().as_secs_f64());
                }
                Err(_) => lat.push(DEADLINE.as_secs_f64()),
            }
            let worst = by_call.entry(name).or_insert(0.0f64);
            *worst = worst.max(lat[lat.len() - 1]);
        }
    }
    let span = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushed = flood.await??;
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let (p50, p99, max) = (q(0.5), q(0.99), lat[lat.len() - 1]);
    let worst: Vec<String> = by_call.iter().map(|(k, x)| format!("{k} {x:.3} s")).collect();
    ctx.say(format!(
        "admin calls (tag, report metrics, commit, rollback; {} calls) while one stream floods a 2^20-row commit-every-update model: p50 {:.3} s, p99 {:.3} s, max {:.3} s (goal: p99 <= 0.1 s); worst by call: {}; {pushed} pushes applied meanwhile ({:.0}/s)",
        lat.len(),
        p50,
        p99,
        max,
        worst.join(", "),
        pushed as f64 / span
    ));
    ctx.report.insert(
        "admin".into(),
        json!({"calls": lat.len(), "p50_s": p50, "p99_s": p99, "max_s": max, "pushes": pushed}),
    );
    Ok(())
}

/// Sparse 1,000-key pushes over two concurrent streams.
async fn sparse(ctx: &mut Ctx) -> Result<()> {
    let (_p, _url, mut c) = spawn_server(&ctx.dir.join("sparse")).await?;
    let mut s = spec("sparse", 0, pb::OptimizerKind::Adagrad, 0);
    s.kind = pb::ModelKind::Logistic as i32;
    s.hash_bits = 20;
    create(&mut c, s).await?;
    let msgs = sparse_msgs("sparse");
    let keys_per_round: usize = msgs.iter().map(|m| m.grads[0].keys.len() / 8).sum();
    let rounds = 150;
    stream_pushes(&mut c, &msgs, 10).await?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let (mut a, mut b) = (c.clone(), c.clone());
        let (ra, rb) = tokio::join!(stream_pushes(&mut a, &msgs, rounds), stream_pushes(&mut b, &msgs, rounds));
        ra?;
        rb?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let rate = (2 * rounds * keys_per_round) as f64 / best;
    ctx.say(format!(
        "sparse pushes of 1,000 keys (AdaGrad, 2^20 rows, 2 streams): {:.2} M key-updates/s (goal >= 5)",
        rate / 1e6
    ));
    ctx.report.insert("sparse".into(), json!({"key_updates_per_s": rate}));
    Ok(())
}

/// Commit after touching 1 % vs all of the largest model; rollback by size.
async fn commit_rollback(ctx: &mut Ctx) -> Result<()> {
    let (_p, _url, mut c) = spawn_server(&ctx.dir.join("commit")).await?;
    let mut rollbacks = Vec::new();
    let sizes: Vec<u64> =
        [1_000_000u64, 10_000_000, 100_000_000].into_iter().filter(|s| *s <= ctx.max_floats).collect();
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("m{i}");
        let t_create = create(&mut c, spec(&name, n as u32, pb::OptimizerKind::Sgd, 0)).await?;
        stream_pushes(&mut c, &dense_msgs(&name, 0, n / 100, 1e-3), 1).await?;
        let (t_small, v_small) = commit(&mut c, &name).await?;
        stream_pushes(&mut c, &dense_msgs(&name, 0, n, 1e-3), 1).await?;
        let (t_full, v_full) = commit(&mut c, &name).await?;
        let rollback = |to: u64| pb::RollbackRequest { model: name.clone(), to_version: to, ..Default::default() };
        // to version 1, which differs from the head in every chunk
        let t = Instant::now();
        let back = c.models.rollback(rollback(1)).await?.into_inner();
        let t_rb = t.elapsed().as_secs_f64();
        // between two versions that differ by 1 %
        stream_pushes(&mut c, &dense_msgs(&name, 0, n / 100, 1e-3), 1).await?;
        commit(&mut c, &name).await?;
        let t = Instant::now();
        c.models.rollback(rollback(back.version)).await?;
        let t_rb_small = t.elapsed().as_secs_f64();
        ctx.say(format!(
            "{n:>11} floats: create {t_create:.3} s; commit after touching 1 %: {t_small:.4} s ({} chunks, {} bytes); after touching all: {t_full:.3} s ({} chunks, {} bytes); ratio {:.3} (goal <= 0.05); rollback to a version differing in every chunk {t_rb:.3} s, by 1 % {t_rb_small:.4} s (ratio {:.3})",
            v_small.chunks_written,
            v_small.bytes_written,
            v_full.chunks_written,
            v_full.bytes_written,
            t_small / t_full,
            t_rb_small / t_rb,
        ));
        rollbacks.push(json!({"floats": n, "create_s": t_create, "commit_1pct_s": t_small, "commit_full_s": t_full,
            "ratio": t_small / t_full, "rollback_s": t_rb, "rollback_1pct_s": t_rb_small,
            "bytes_1pct": v_small.bytes_written, "bytes_full": v_full.bytes_written}));
    }
    ctx.report.insert("commit_rollback".into(), json!(rollbacks));
    Ok(())
}

/// RSS holding a 10^7-float Adam model.
async fn rss(ctx: &mut Ctx) -> Result<()> {
    let (p, _url, mut c) = spawn_server(&ctx.dir.join("rss")).await?;
    let (base, _) = rss_kib(p.0.id())?;
    create(&mut c, spec("adam", 10_000_000, pb::OptimizerKind::Adam, 0)).await?;
    let created = rss_kib(p.0.id())?.0;
    stream_pushes(&mut c, &dense_msgs("adam", 0, 10_000_000, 1e-3), 1).await?;
    let pushed = rss_kib(p.0.id())?.0;
    commit(&mut c, "adam").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = rss_kib(p.0.id())?;
    ctx.say(format!(
        "  (RSS over the empty server's: after create {} MiB, after pushes to every float {} MiB, after a commit {} MiB)",
        (created - base) / 1024,
        (pushed - base) / 1024,
        (rss - base) / 1024
    ));
    let model_kib = 10_000_000u64 * 4 * 3 / 1024;
    let ratio = (rss - base) as f64 / model_kib as f64;
    ctx.say(format!(
        "server RSS with a 10^7-float Adam model: {} MiB over an empty server's {} MiB (weights + slots: {} MiB), ratio {ratio:.2} (goal <= 1.5); peak {} MiB",
        (rss - base) / 1024, base / 1024, model_kib / 1024, hwm / 1024
    ));
    ctx.report.insert(
        "rss".into(),
        json!({"rss_kib": rss, "base_kib": base, "peak_kib": hwm, "model_kib": model_kib, "ratio": ratio}),
    );
    Ok(())
}
