//! `accrete bench cluster` (issue 13): what splitting a hashed model over servers costs,
//! measured in one run against real server processes on loopback (`--peers`, one
//! partition per server), with 1, 2 and 3 servers alive at once and measured in turn:
//! - push throughput of a 2^20-row AdaGrad logistic model from concurrent pushers (each
//!   push 1,000 distinct random rows and the bias, like a worker's batch), routed by the
//!   typed client; pull throughput of the same rows; as ratios to one server;
//! - commits while paced pushers run, one server's local commit against the 3 servers'
//!   global one: end-to-end time, and what a push waits (the ack latency of probe pushes
//!   with and without commits);
//! - each server's RSS, against one server's and against the model's size.
//!
//! On paper, for 100 servers and a model of P = 100 partitions (the design as measured
//! here):
//! - a global commit: its home sends each other partition a hold, a cut order and, once
//!   every partition wrote the version, a release, each answered: 3 round trips, 6(P - 1)
//!   ≈ 600 messages (its own partition is local calls). Holds and releases go one
//!   partition after another, the cut orders at once, so every partition holds its pushes
//!   for ~P round trips plus the slowest partition's write and then the home's.
//! - the cluster map: 100 × ~20 bytes of `host:port` ≈ 2 KB, fetched once per client.
//! - the home (coordinator): O(P) messages per commit, none per push: pushes go straight
//!   to the partitions. But every batch reaches every partition (a progress mark where it
//!   touches none): a worker sends P messages per batch, and each server receives every
//!   worker's every batch, so a server's message rate does not fall with P; its bytes do.
mod commit;
mod servers;

use crate::server::{rss_kib, Proc};
use accrete_client::Client;
use accrete_core::partition::{Partitioning, Placement};
use accrete_core::push::{Gradient, Push, PushMeta};
use accrete_core::spec::local_name;
use accrete_core::view::ModelView;
use accrete_core::{CommitPolicy, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec};
use anyhow::{bail, Context, Result};
use commit::commit_hold;
use serde_json::json;
use servers::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = "hb";
const HASH_BITS: u32 = 20;
/// Distinct hashed rows per push.
const KEYS: usize = 1000;
/// Distinct pushes built before the timed loops (cycled).
const DISTINCT: usize = 64;
/// Cluster sizes measured.
const SIZES: [usize; 3] = [1, 2, 3];
/// Timed rounds per cluster size (the sizes alternate); the medians are the figures.
const ROUNDS: usize = 7;
/// Pushes per pusher per round, and pulls per puller per round.
const PUSHES_PER_ROUND: usize = 2000;
const PULLS_PER_ROUND: usize = 800;
/// The commit scenario: pushes without commits for this long, then the commits, this
/// far apart; a probe push sent this often throughout.
const STEADY: Duration = Duration::from_secs(3);
const COMMIT_GAP: Duration = Duration::from_millis(100);
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// The pushers' pace in the commit scenario, as a share of the 3-server throughput: a
/// saturated machine would measure its run queue, not the holds.
const PACE: f64 = 0.5;
const PACE_TICK: Duration = Duration::from_millis(5);
/// No call or round of the benchmark waits longer than this.
const DEADLINE: Duration = Duration::from_secs(60);
/// Weights and the AdaGrad slot of 2^20 rows, in bytes.
const MODEL_BYTES: u64 = (1 << HASH_BITS) * 2 * 4;

/// One prebuilt push's gradient.
struct Grad {
    keys: Vec<u32>,
    values: Vec<f32>,
    bias: f32,
}

fn grads(seed: u64) -> Vec<Grad> {
    let mut rng = accrete_core::rng::SplitMix64::new(seed);
    (0..DISTINCT)
        .map(|_| {
            let mut set = std::collections::BTreeSet::new();
            while set.len() < KEYS {
                set.insert((rng.next_u64() % (1 << HASH_BITS)) as u32);
            }
            let keys: Vec<u32> = set.into_iter().collect();
            let values = keys.iter().map(|_| ((rng.next_f64() - 0.5) * 0.1) as f32).collect();
            Grad { keys, values, bias: ((rng.next_f64() - 0.5) * 0.1) as f32 }
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The `q` quantile (nearest rank) of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub(crate) async fn cluster_bench(pushers: usize, commits: usize, as_json: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut logs = Vec::new();
    let r = run(tmp.path(), pushers.max(1), commits.max(1), as_json, &mut logs).await;
    if r.is_err() {
        eprintln!("{}", tails(&logs));
    }
    r
}

async fn run(dir: &Path, pushers: usize, commits: usize, as_json: bool, logs: &mut Vec<PathBuf>) -> Result<()> {
    let say = |s: String| {
        if !as_json {
            println!("{s}");
        }
    };
    let mut report = serde_json::Map::new();
    let grads = Arc::new(grads(42));
    let mut clusters = Vec::new();
    for n in SIZES {
        clusters.push(start(dir, n, pushers, logs).await.with_context(|| format!("starting {n} servers"))?);
    }
    say(format!(
        "accrete bench cluster: logistic model, 2^{HASH_BITS} hashed rows, AdaGrad, P = servers; {pushers} pushers, \
         each push {KEYS} distinct random rows + the bias; 127.0.0.1, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    for c in &mut clusters {
        c.push_round(&grads, 100).await?; // warm-up: connections, pages of the tables
        c.pull_round(&grads, 30).await?;
    }
    // Throughput: the cluster sizes alternate within each round, in a rotating order.
    let k = clusters.len();
    // (seconds, CPU seconds of the client, CPU seconds of the servers) per cluster and round
    let mut push_s = vec![vec![(0.0, 0.0, 0.0); ROUNDS]; k];
    let mut pull_s = push_s.clone();
    for r in 0..ROUNDS {
        for j in 0..k {
            let i = (r + j) % k;
            let cpu = clusters[i].cpu()?;
            let secs = clusters[i].push_round(&grads, PUSHES_PER_ROUND).await?;
            push_s[i][r] = clusters[i].cpu_since(secs, cpu)?;
        }
    }
    for r in 0..ROUNDS {
        for j in 0..k {
            let i = (r + j) % k;
            let cpu = clusters[i].cpu()?;
            let secs = clusters[i].pull_round(&grads, PULLS_PER_ROUND).await?;
            pull_s[i][r] = clusters[i].cpu_since(secs, cpu)?;
        }
    }
    let pushes = (pushers * PUSHES_PER_ROUND) as f64;
    let pulls = (pushers * PULLS_PER_ROUND) as f64;
    // memory, after training, before the commit scenario
    for c in &mut clusters {
        within("commit", c.client.commit(MODEL, "bench")).await??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss: Vec<Vec<(u64, u64)>> = clusters.iter().map(Servers::rss).collect::<Result<_>>()?;
    let one_kib = rss[0][0].0 as f64;

    say(String::new());
    say(format!(
        "{:>7} | {:>9} {:>11} {:>8} | {:>8} {:>11} {:>8}",
        "servers", "pushes/s", "rows/s", "vs 1", "pulls/s", "rows/s", "vs 1"
    ));
    let (mut rows, mut cpu_rows, mut mem_rows, mut push_rates) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, c) in clusters.iter().enumerate() {
        let secs = |v: &[(f64, f64, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        let push_ratios: Vec<f64> = (0..ROUNDS).map(|r| push_s[0][r].0 / push_s[i][r].0).collect();
        let pull_ratios: Vec<f64> = (0..ROUNDS).map(|r| pull_s[0][r].0 / pull_s[i][r].0).collect();
        let push_rate = pushes / median(&secs(&push_s[i]));
        let pull_rate = pulls / median(&secs(&pull_s[i]));
        // CPU microseconds per push (per pull): client, servers
        let per = |v: &[(f64, f64, f64)], n: f64| {
            let c: Vec<f64> = v.iter().map(|x| x.1 / n * 1e6).collect();
            let s: Vec<f64> = v.iter().map(|x| x.2 / n * 1e6).collect();
            (median(&c), median(&s))
        };
        let (push_cpu, pull_cpu) = (per(&push_s[i], pushes), per(&pull_s[i], pulls));
        cpu_rows.push(format!(
            "{:>7} | {:>9.0} {:>9.0} {:>9.0} | {:>9.0} {:>9.0} {:>9.0}",
            c.n,
            push_cpu.0,
            push_cpu.1,
            push_cpu.0 + push_cpu.1,
            pull_cpu.0,
            pull_cpu.1,
            pull_cpu.0 + pull_cpu.1
        ));
        let (push_ratio, pull_ratio) = (median(&push_ratios), median(&pull_ratios));
        push_rates.push(push_rate);
        let mib = |k: u64| k as f64 / 1024.0;
        for (s, ((kib, peak), (empty, created))) in
            rss[i].iter().zip(c.empty_kib.iter().zip(&c.created_kib)).enumerate()
        {
            mem_rows.push(format!(
                "{:>7} {:>6} | {:>7.1} {:>8.1} {:>8.1} {:>6.1} | {:>7.1} {:>7.2} {:>9.2}",
                c.n,
                s,
                mib(*empty),
                mib(*created),
                mib(*kib),
                mib(*peak),
                mib(kib.saturating_sub(*empty)),
                *kib as f64 / one_kib,
                kib.saturating_sub(*empty) as f64 * 1024.0 / MODEL_BYTES as f64
            ));
        }
        say(format!(
            "{:>7} | {:>9.0} {:>11} {:>8.2} | {:>8.0} {:>11} {:>8.2}",
            c.n,
            push_rate,
            format!("{:.2} M", push_rate * KEYS as f64 / 1e6),
            push_ratio,
            pull_rate,
            format!("{:.2} M", pull_rate * KEYS as f64 / 1e6),
            pull_ratio,
        ));
        let total: u64 = rss[i].iter().map(|r| r.0).sum();
        let over: u64 = rss[i].iter().zip(&c.empty_kib).map(|(r, e)| r.0.saturating_sub(*e)).sum();
        rows.push(json!({
            "servers": c.n,
            "partitions": c.spec.parts(),
            "pushes_per_s": push_rate,
            "rows_per_s": push_rate * KEYS as f64,
            "push_ratio_to_1": push_ratio,
            "push_round_s": secs(&push_s[i]),
            "push_cpu_us_client": push_cpu.0,
            "push_cpu_us_servers": push_cpu.1,
            "pulls_per_s": pull_rate,
            "pulled_rows_per_s": pull_rate * KEYS as f64,
            "pull_ratio_to_1": pull_ratio,
            "pull_round_s": secs(&pull_s[i]),
            "pull_cpu_us_client": pull_cpu.0,
            "pull_cpu_us_servers": pull_cpu.1,
            "rss_kib": rss[i].iter().map(|r| r.0).collect::<Vec<_>>(),
            "peak_kib": rss[i].iter().map(|r| r.1).collect::<Vec<_>>(),
            "empty_rss_kib": c.empty_kib,
            "created_rss_kib": c.created_kib,
            "rss_over_1_server": rss[i].iter().map(|r| r.0 as f64 / one_kib).collect::<Vec<_>>(),
            "rss_over_model_bytes": rss[i].iter().map(|r| r.0 as f64 * 1024.0 / MODEL_BYTES as f64).collect::<Vec<_>>(),
            "added_rss_over_model_bytes": rss[i].iter().zip(&c.empty_kib)
                .map(|(r, e)| r.0.saturating_sub(*e) as f64 * 1024.0 / MODEL_BYTES as f64).collect::<Vec<_>>(),
            "total_rss_kib": total,
            "total_added_rss_kib": over,
        }));
    }
    say(format!(
        "(medians of {ROUNDS} rounds of {} pushes / {} pulls of {KEYS} rows, the sizes alternating; rows/s: hashed \
         rows; \"vs 1\": median of the per-round ratios to 1 server, goal >= 0.9)",
        pushers * PUSHES_PER_ROUND,
        pushers * PULLS_PER_ROUND,
    ));
    say(String::new());
    say(format!(
        "CPU per push / per pull, microseconds (medians over rounds; from /proc, so other load on the machine counts \
         only in wall time):\n{:>7} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}\n{}",
        "servers",
        "push: cli",
        "servers",
        "total",
        "pull: cli",
        "servers",
        "total",
        cpu_rows.join("\n")
    ));
    say(String::new());
    say(format!(
        "RSS per server, MiB: empty, after create, after the rounds and a commit (peak); added over empty, / the \
         1-server RSS, added / the model's {} MiB (weights + AdaGrad slot)\n{:>7} {:>6} | {:>7} {:>8} {:>8} {:>6} | \
         {:>7} {:>7} {:>9}\n{}",
        MODEL_BYTES >> 20,
        "servers",
        "server",
        "empty",
        "created",
        "trained",
        "peak",
        "added",
        "/ 1 srv",
        "/ model",
        mem_rows.join("\n")
    ));
    report.insert(
        "setup".into(),
        json!({"hash_bits": HASH_BITS, "optimizer": "adagrad", "pushers": pushers, "keys_per_push": KEYS,
            "rounds": ROUNDS, "pushes_per_round": pushers * PUSHES_PER_ROUND, "pulls_per_round": pushers * PULLS_PER_ROUND,
            "model_bytes": MODEL_BYTES}),
    );
    report.insert("throughput".into(), json!(rows));

    // Commits with pushers running: one server's local commit, then the 3 servers' global one,
    // under the same offered load (a share of the 3-server throughput).
    let rate = push_rates.last().copied().unwrap_or(1000.0) * PACE / pushers as f64;
    let mut big = clusters.pop().context("no cluster")?;
    clusters.truncate(1); // the 2-server cluster stops
    let mut one = clusters.pop().context("no cluster")?;
    let local = commit_hold(&mut one, &grads, commits, rate).await?;
    drop(one);
    let global = commit_hold(&mut big, &grads, commits, rate).await?;
    let both = [&local, &global];
    let row = |label: &str, keys: &[&str], scale: f64, digits: usize| {
        let cell = |c: &serde_json::Value| {
            keys.iter()
                .map(|k| format!("{:.*}", digits, c[*k].as_f64().unwrap_or(f64::NAN) * scale))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        format!("  {label:<52} {:>22} {:>22}", cell(both[0]), cell(both[1]))
    };
    say(String::new());
    say(format!(
        "commits while {pushers} pushers send {rate:.0} pushes/s each ({:.0} % of the 3-server throughput above) and a \
         probe push (unary, not a worker's, {KEYS} rows split over the partitions) goes every {} ms; {STEADY:?} \
         without commits, then {commits} commits {} ms apart",
        PACE * 100.0,
        PROBE_EVERY.as_millis(),
        COMMIT_GAP.as_millis()
    ));
    say(format!("  {:<52} {:>22} {:>22}", "", "1 server (local)", "3 servers (global)"));
    say(row("commit end to end, ms: p50 / p99 / max", &["commit_p50_s", "commit_p99_s", "commit_max_s"], 1e3, 1));
    say(row(
        "slowest probe sent during each commit, ms: p50 / p99",
        &["hold_estimate_p50_s", "hold_estimate_p99_s"],
        1e3,
        1,
    ));
    say(row(
        "probe latency without commits, ms: p50 / p99 / max",
        &["probe_steady_p50_s", "probe_steady_p99_s", "probe_steady_max_s"],
        1e3,
        1,
    ));
    say(row(
        "probe latency during commits, ms: p50 / p99 / max",
        &["probe_commits_p50_s", "probe_commits_p99_s", "probe_commits_max_s"],
        1e3,
        1,
    ));
    say(row("probes during commits slower than any without, %", &["probe_commits_slower_share"], 100.0, 1));
    say(row("pushes/s sent without / during commits", &["pushes_per_s_steady", "pushes_per_s_commits"], 1.0, 0));
    say(row("share of the commit phase spent in commits, %", &["commit_time_share"], 100.0, 1));
    say(format!(
        "  (a probe's latency is until every partition acked it; a probe sent just after a partition is held waits \
         for its release, so the slowest probe per commit is about the longest any partition held pushes, +- {} ms)",
        PROBE_EVERY.as_millis()
    ));
    let meters = global["server_hold_meters"].as_object().cloned().unwrap_or_default();
    if meters.is_empty() {
        say("  (this build's servers export no hold meters on /metrics)".into());
    } else {
        let parts: Vec<String> = meters
            .iter()
            .map(|(m, v)| {
                format!(
                    "{m}: {:.0} holds, mean {:.1} ms, pushes-held counter +{:.0}",
                    v["holds"].as_f64().unwrap_or(0.0),
                    v["mean_hold_s"].as_f64().unwrap_or(0.0) * 1e3,
                    v["pushes_held_counter"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        say(format!("  the 3 servers' /metrics over the commits: {}", parts.join("; ")));
        let c = &global["coordinator_commit_s"];
        if !c.is_null() {
            say(format!(
                "  the home's global commits, first hold to last release (all {:.0} since it started): p50 {:.1} ms, \
                 p99 {:.1} ms",
                c["count"].as_f64().unwrap_or(0.0),
                c["p50"].as_f64().unwrap_or(0.0) * 1e3,
                c["p99"].as_f64().unwrap_or(0.0) * 1e3
            ));
        }
    }
    report.insert("commit_1_server".into(), local);
    report.insert("global_commit_3_servers".into(), global);
    if as_json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
