//! `accrete bench cluster`, the commit scenario: paced pushers and a probe push every few
//! milliseconds, first without commits, then with global commits one after another; what
//! a commit costs end to end and what a push waits for it.
use super::*;

/// A probe push's share for each partition: (local model, keys renumbered, values, bias).
type ProbeParts = Vec<(String, Vec<u32>, Vec<f32>, Option<f32>)>;

fn probe_parts(spec: &ModelSpec, grads: &[Grad]) -> Result<Vec<ProbeParts>> {
    let whole = spec.whole();
    let layout = accrete_core::layout(&whole);
    let plan = Partitioning::plan(&layout, whole.parts());
    let h = layout.iter().position(|t| t.name == "h").context("no tensor h")?;
    let starts = match &plan.tensors[h] {
        Placement::Rows { starts } => starts.clone(),
        Placement::Whole { .. } => vec![0, 1 << HASH_BITS],
    };
    Ok(grads
        .iter()
        .map(|g| {
            (0..whole.parts())
                .map(|p| {
                    let (lo, hi) = (starts[p as usize], starts[p as usize + 1]);
                    let (mut keys, mut values) = (Vec::new(), Vec::new());
                    for (k, v) in g.keys.iter().zip(&g.values) {
                        if (lo..hi).contains(&(*k as u64)) {
                            keys.push((*k as u64 - lo) as u32);
                            values.push(*v);
                        }
                    }
                    (local_name(&whole.name, p), keys, values, (p == 0).then_some(g.bias))
                })
                .collect()
        })
        .collect())
}

/// Pushers stream at `rate` pushes/s each; a probe sends a unary push (no worker: held for a whole
/// hold) every [`PROBE_EVERY`]; first [`STEADY`] without commits, then `commits` global
/// commits [`COMMIT_GAP`] apart.
pub(super) async fn commit_hold(
    s: &mut Servers,
    grads: &Arc<Vec<Grad>>,
    commits: usize,
    rate: f64,
) -> Result<serde_json::Value> {
    let parts = s.spec.parts();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut pushers = Vec::new();
    for (i, (mut c, mut w)) in std::mem::take(&mut s.pushers).into_iter().enumerate() {
        let stream = within("open push stream", c.push_stream_for(&s.spec)).await??;
        let (grads, stop, sent) = (grads.clone(), stop.clone(), sent.clone());
        pushers.push(tokio::spawn(async move {
            let mut k = i * 29;
            let started = Instant::now();
            // `rate` pushes/s, sent in bunches each tick (timers have millisecond grain); a
            // worker pushes as it computes batches, so a held push holds it: ticks missed
            // meanwhile are not made up.
            let mut tick = tokio::time::interval(PACE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut owed = 0.0;
            'run: while !stop.load(Ordering::Relaxed) && started.elapsed() < DEADLINE {
                tick.tick().await;
                owed += rate * PACE_TICK.as_secs_f64();
                while owed >= 1.0 {
                    if stream.send(&w.push(&grads[k % grads.len()])).await.is_err() {
                        break 'run;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                    owed -= 1.0;
                }
            }
            (stream.finish().await, c, w)
        }));
    }
    // the probe
    let probe_data = Arc::new(probe_parts(&s.spec, grads)?);
    let clients: Arc<Vec<Client>> =
        Arc::new((0..parts).map(|p| s.client.partition_server(MODEL, p, parts).1).collect());
    let samples: Arc<Mutex<Vec<(Instant, f64, bool)>>> = Arc::default();
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (probe_stop, samples) = (probe_stop.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut inflight = Vec::new();
            let started = Instant::now();
            let mut k = 0usize;
            while !probe_stop.load(Ordering::Relaxed) && started.elapsed() < DEADLINE {
                tick.tick().await;
                let (data, clients, samples) = (probe_data.clone(), clients.clone(), samples.clone());
                let which = k % data.len();
                k += 1;
                inflight.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let mut acks = Vec::new();
                    for (p, c) in clients.iter().enumerate() {
                        let (mut c, data) = (c.clone(), data.clone());
                        acks.push(tokio::spawn(async move {
                            let (model, keys, values, bias) = &data[which][p];
                            let mut grads = vec![Gradient { tensor: "h", keys, values, ..Default::default() }];
                            if let Some(b) = bias {
                                grads.push(Gradient {
                                    tensor: "b",
                                    values: std::slice::from_ref(b),
                                    ..Default::default()
                                });
                            }
                            c.push(&Push { model, lineage_epoch: 0, grads, meta: None }).await
                        }));
                    }
                    let mut ok = true;
                    for a in acks {
                        ok &= matches!(a.await, Ok(Ok(_)));
                    }
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push((t, t.elapsed().as_secs_f64(), ok));
                }));
                inflight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
            }
            for h in inflight {
                let _ = tokio::time::timeout(DEADLINE, h).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a0 = (Instant::now(), sent.load(Ordering::Relaxed));
    tokio::time::sleep(STEADY).await;
    let a1 = (Instant::now(), sent.load(Ordering::Relaxed));
    let meters_before = hold_meters(s).await?;
    let c0 = (Instant::now(), sent.load(Ordering::Relaxed));
    let mut times = Vec::new();
    let mut windows = Vec::new();
    let mut made = 0;
    let mut failures = Vec::new();
    for _ in 0..commits {
        let t = Instant::now();
        match tokio::time::timeout(DEADLINE, s.client.commit(MODEL, "bench")).await {
            Ok(Ok((_, created))) => made += created as u64,
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push(format!("no answer within {DEADLINE:?}")),
        }
        times.push(t.elapsed().as_secs_f64());
        windows.push((t, Instant::now()));
        tokio::time::sleep(COMMIT_GAP).await;
    }
    let b1 = (Instant::now(), sent.load(Ordering::Relaxed));
    let meters_after = hold_meters(s).await?;
    probe_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    within("probe", probe).await??;
    let mut failed = None;
    for task in pushers {
        let (r, c, w) = within("pushers", task).await??;
        s.pushers.push((c, w));
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e).context("pushes during the commit scenario");
    }
    if let Some(e) = failures.first() {
        bail!("{} of {commits} global commits failed; the first: {e}", failures.len());
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let bad = samples.iter().filter(|s| !s.2).count();
    if bad > 0 {
        bail!("{bad} of {} probe pushes failed", samples.len());
    }
    let phase = |from: Instant, to: Instant| {
        let mut v: Vec<f64> = samples.iter().filter(|s| s.0 >= from && s.0 < to).map(|s| s.1).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (steady, during) = (phase(a0.0, a1.0), phase(c0.0, b1.0));
    let slowest_steady = steady.last().copied().unwrap_or(0.0);
    let slower = during.iter().filter(|x| **x > slowest_steady).count();
    // Per commit, the slowest probe sent while it ran: a probe sent just after the first
    // hold waits until every partition it reaches released it, so this is about the
    // longest hold (within a probe interval), plus a push's own latency.
    let mut held: Vec<f64> = windows
        .iter()
        .map(|(from, to)| samples.iter().filter(|s| s.0 >= *from && s.0 < *to).map(|s| s.1).fold(0.0, f64::max))
        .collect();
    held.sort_by(f64::total_cmp);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let steady_secs = (a1.0 - a0.0).as_secs_f64();
    let commit_secs = (b1.0 - c0.0).as_secs_f64();
    let (rate_a, rate_b) = ((a1.1 - a0.1) as f64 / steady_secs, (b1.1 - c0.1) as f64 / commit_secs);
    // The servers' own meters over the commit phase, where they exist: per partition,
    // holds, mean hold, pushes held.
    let mut partitions = serde_json::Map::new();
    for (m, after) in &meters_after.parts {
        let before = meters_before.parts.get(m).copied().unwrap_or_default();
        let (holds, secs, pushes) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        partitions.insert(
            m.clone(),
            json!({"holds": holds, "held_s": secs, "mean_hold_s": secs / holds.max(1.0), "pushes_held_counter": pushes}),
        );
    }
    Ok(json!({
        "servers": s.n,
        "commits": commits,
        "versions_made": made,
        "commit_gap_s": COMMIT_GAP.as_secs_f64(),
        "commit_s": times,
        "commit_p50_s": quantile(&sorted, 0.5),
        "commit_p99_s": quantile(&sorted, 0.99),
        "commit_max_s": sorted.last().copied().unwrap_or(f64::NAN),
        "commit_time_share": times.iter().sum::<f64>() / commit_secs,
        "pusher_rate_per_s": rate,
        "slowest_probe_per_commit_s": held,
        "hold_estimate_p50_s": quantile(&held, 0.5),
        "hold_estimate_p99_s": quantile(&held, 0.99),
        "probe_every_s": PROBE_EVERY.as_secs_f64(),
        "probes_steady": steady.len(),
        "probes_commits": during.len(),
        "probe_steady_p50_s": quantile(&steady, 0.5),
        "probe_steady_p99_s": quantile(&steady, 0.99),
        "probe_steady_max_s": slowest_steady,
        "probe_commits_p50_s": quantile(&during, 0.5),
        "probe_commits_p99_s": quantile(&during, 0.99),
        "probe_commits_max_s": during.last().copied().unwrap_or(f64::NAN),
        "probe_commits_slower_share": slower as f64 / during.len().max(1) as f64,
        "pushes_per_s_steady": rate_a,
        "pushes_per_s_commits": rate_b,
        "pushes_commits_over_steady": rate_b / rate_a,
        "server_hold_meters": partitions,
        "coordinator_commit_s": meters_after.commits.map(|(p50, p99, n)| json!({"p50": p50, "p99": p99, "count": n})),
    }))
}
