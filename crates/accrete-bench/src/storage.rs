//! The storage scenarios of `accrete bench server`: disk use after 100 commits of 1 % of
//! a dense model with `--keep-last 10`; a 2^24-row hashed AdaGrad model's commit after
//! touching 1 % random rows vs all of them (time, bytes), and its disk after 1,000 such
//! commits with `--keep-last 10` against the content those versions hold.
use crate::server::{commit, create, dense_msgs, dir_bytes, spawn_server, spec, stream_pushes, Ctx};
use accrete_proto::v1 as pb;
use anyhow::Result;
use serde_json::json;

/// Disk use after 100 commits of 1 % changes with --keep-last 10.
pub(crate) async fn disk(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir.join("disk");
    let n = 10_000_000u64;
    {
        let (_p, _url, mut c) = spawn_server(&dir).await?;
        create(&mut c, spec("disk", n as u32, pb::OptimizerKind::Sgd, 10)).await?;
        for i in 0..100u64 {
            let start = (i % 100) * (n / 100);
            stream_pushes(&mut c, &dense_msgs("disk", start, n / 100, 1e-3), 1).await?;
            commit(&mut c, "disk").await?;
        }
    }
    let before = dir_bytes(&dir);
    {
        let (_p, _url, mut c) = spawn_server(&dir).await?;
        let v = c.models.list_versions(pb::ModelRef { name: "disk".into() }).await?.into_inner().versions.len();
        ctx.say(format!(
            "disk after 100 commits of 1 % of a 10^7-float model, --keep-last 10: {} MiB ({v} versions kept; weights are {} MiB); reopened: {} MiB",
            before >> 20,
            (n * 4) >> 20,
            dir_bytes(&dir) >> 20
        ));
        c.models.delete_model(pb::ModelRef { name: "disk".into() }).await?;
        ctx.report.insert("disk".into(), json!({"bytes": before, "weights_bytes": n * 4, "versions": v}));
    }
    let deleted = dir_bytes(&dir);
    spawn_server(&dir).await?;
    let reopened = dir_bytes(&dir);
    ctx.say(format!("disk after deleting that model: {} MiB; reopened: {} MiB", deleted >> 20, reopened >> 20));
    ctx.report.insert("disk_after_delete".into(), json!({"bytes": deleted, "reopened_bytes": reopened}));
    Ok(())
}

/// Pushes of gradients at `keys` (sorted) of table `h`, 65,536 keys per message.
fn key_msgs(model: &str, keys: &[u64], g: f32) -> Vec<pb::PushRequest> {
    keys.chunks(1 << 16)
        .map(|ks| {
            let grads = vec![pb::TensorChunk {
                tensor: "h".into(),
                keys: accrete_proto::keys_to_bytes(ks),
                values: accrete_proto::f32s_to_bytes(&vec![g; ks.len()]),
                ..Default::default()
            }];
            pb::PushRequest { model: model.into(), lineage_epoch: 0, grads, meta: None }
        })
        .collect()
}

/// `n` distinct random rows of `rows`, sorted.
fn random_rows(rng: &mut accrete_core::rng::SplitMix64, rows: u64, n: usize) -> Vec<u64> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    while seen.len() < n {
        seen.insert(rng.next_u64() % rows);
    }
    let mut keys: Vec<u64> = seen.into_iter().collect();
    keys.sort_unstable();
    keys
}

/// A 2^24-row hashed AdaGrad model (logistic): commit after touching 1 % random rows vs
/// after touching every row; then the disk after 1,000 such commits with --keep-last 10,
/// against the content those 10 versions hold (the model once, plus what each of the
/// nine newer ones changed, as written).
pub(crate) async fn hashed(ctx: &mut Ctx) -> Result<()> {
    const BITS: u32 = 24;
    const COMMITS: usize = 1000;
    let rows = 1u64 << BITS;
    let touched = (rows / 100) as usize;
    let dir = ctx.dir.join("hashed");
    let mut rng = accrete_core::rng::SplitMix64::new(11);
    let all: Vec<u64> = (0..rows).collect();
    let (small, full, written) = {
        let (_p, _url, mut c) = spawn_server(&dir).await?;
        let mut s = spec("hashed", 0, pb::OptimizerKind::Adagrad, 10);
        s.kind = pb::ModelKind::Logistic as i32;
        s.hash_bits = BITS;
        create(&mut c, s).await?;
        let mut full = Vec::new();
        for _ in 0..3 {
            stream_pushes(&mut c, &key_msgs("hashed", &all, 1e-3), 1).await?;
            full.push(commit(&mut c, "hashed").await?);
        }
        let mut small = Vec::new();
        for i in 0..COMMITS {
            let keys = random_rows(&mut rng, rows, touched);
            stream_pushes(&mut c, &key_msgs("hashed", &keys, 1e-3), 1).await?;
            let (t, v) = commit(&mut c, "hashed").await?;
            if i < 20 {
                small.push((t, v));
            }
        }
        let versions = c.models.list_versions(pb::ModelRef { name: "hashed".into() }).await?.into_inner().versions;
        // what the nine newest versions wrote over the oldest kept
        let written: u64 = versions.iter().rev().take(9).map(|v| v.bytes_written).sum();
        (small, full, written)
    };
    let med = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let t_small = med(small.iter().map(|x| x.0).collect());
    let b_small = med(small.iter().map(|x| x.1.bytes_written as f64).collect());
    let t_full = med(full.iter().map(|x| x.0).collect());
    let b_full = med(full.iter().map(|x| x.1.bytes_written as f64).collect());
    // key (8 bytes) + weight + one AdaGrad slot
    let bound = 2.0 * touched as f64 * 16.0;
    let disk = dir_bytes(&dir);
    spawn_server(&dir).await?;
    let reopened = dir_bytes(&dir);
    let content = rows * 8 + written;
    ctx.say(format!(
        "2^24-row hashed AdaGrad model, commit after touching 1 % random rows ({touched}): {t_small:.4} s, {:.2} MB (bound 2 x rows x (key + weight + slot) = {:.2} MB: {:.2} of it); after touching every row: {t_full:.3} s, {:.1} MB; time ratio {:.3} (goal <= 0.05); medians of 20 and 3",
        b_small / 1e6,
        bound / 1e6,
        b_small / bound,
        b_full / 1e6,
        t_small / t_full
    ));
    ctx.say(format!(
        "  disk after {COMMITS} such commits, --keep-last 10: {} MiB, {} MiB after a reopen; the 10 versions hold {} MiB (the model once, {} MiB, + the nine newer ones' changes, {} MiB): ratio {:.2} (goal <= 2)",
        disk >> 20,
        reopened >> 20,
        content >> 20,
        (rows * 8) >> 20,
        written >> 20,
        reopened as f64 / content as f64
    ));
    ctx.report.insert(
        "hashed".into(),
        json!({"commit_1pct_s": t_small, "bytes_1pct": b_small, "bound_bytes": bound, "commit_full_s": t_full,
            "bytes_full": b_full, "ratio": t_small / t_full, "disk_bytes": disk, "reopened_bytes": reopened,
            "content_bytes": content}),
    );
    Ok(())
}
