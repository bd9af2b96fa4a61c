//! The commit policy's one task per server: it wakes on a tick (every 100 ms) and when a
//! push reaches a model's update-count policy (the registry's `Notify`), expires the
//! workers' leases, asks each model's engine whether a commit is due, and runs the commit
//! on a blocking thread — or else, when a model's commits wrote delta layers, a step of
//! its compaction.
//!
//! One task for the server rather than one per model: models come and go with
//! creates and deletes, and a single loop over the registry sees them without spawning or
//! stopping anything. At most one policy commit runs per model at a time: the task keeps
//! the set of models whose commit is running, and a finished commit reports back on a
//! channel (even if it panicked), which also makes the task look again at once, so
//! snapshots taken while it wrote are not left waiting for the next tick.
use crate::model::ModelHandle;
use crate::registry::Registry;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the task looks at every model without being woken.
const TICK: Duration = Duration::from_millis(100);

/// Runs until aborted (at shutdown). Commits already running finish on their threads.
pub async fn run(reg: Arc<Registry>) {
    let wake = reg.policy_wake();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut running: HashSet<u64> = HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
            Some(id) = done_rx.recv() => {
                running.remove(&id);
            }
        }
        let now = Instant::now();
        let unix_ms = accrete_store::now_unix_ms();
        for h in reg.list() {
            h.sample_rate(now, unix_ms);
            h.expire_leases(now);
            h.expire_hold(now);
            if running.contains(&h.record.id) {
                continue;
            }
            let home_of_split = h.spec().parts() > 1 && h.spec().partition == 0;
            match reg.cluster().filter(|c| home_of_split && c.is_home(h.name())) {
                Some(c) if c.policy_due(&h, now) => {
                    running.insert(h.record.id);
                    spawn_global_commit(reg.clone(), c.clone(), h, done_tx.clone());
                    continue;
                }
                Some(_) => {}
                None if h.commit_due(now) => {
                    running.insert(h.record.id);
                    spawn_commit(h, done_tx.clone());
                    continue;
                }
                None => {}
            }
            if h.compaction_due() {
                running.insert(h.record.id);
                spawn_compaction(h, done_tx.clone());
            }
        }
    }
}

/// Reports a model's policy commit as finished when dropped (also on a panic).
struct Done {
    model: u64,
    tx: mpsc::UnboundedSender<u64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        // The task is gone at shutdown; nothing to report to then.
        let _ = self.tx.send(self.model);
    }
}

fn spawn_commit(h: Arc<ModelHandle>, tx: mpsc::UnboundedSender<u64>) {
    let done = Done { model: h.record.id, tx };
    tokio::task::spawn_blocking(move || {
        let _done = done;
        if let Err(e) = h.policy_commit() {
            tracing::error!(model = %h.name(), error = %e, "policy commit failed");
        }
        // Under a steady flow of commits the model is never idle: its compaction steps
        // come after its commits.
        compact(&h);
    });
}

/// One step of a model's compaction (`model/compact.rs`), counted as its policy work: a
/// model compacts or commits from the policy, not both at once.
fn spawn_compaction(h: Arc<ModelHandle>, tx: mpsc::UnboundedSender<u64>) {
    let done = Done { model: h.record.id, tx };
    tokio::task::spawn_blocking(move || {
        let _done = done;
        compact(&h);
    });
}

/// A step of a model's compaction if one is due, then the store's disk reclaim if its
/// file has grown far past its data.
fn compact(h: &ModelHandle) {
    if h.compaction_due() {
        if let Err(e) = h.compact_step() {
            tracing::error!(model = %h.name(), error = %e, "compaction failed");
        }
    }
    if let Err(e) = h.reclaim_disk() {
        tracing::error!(error = %e, "giving disk back failed");
    }
}

/// A partitioned model's policy commit: a global commit coordinated from its home.
fn spawn_global_commit(
    reg: Arc<Registry>,
    c: Arc<crate::cluster::Cluster>,
    h: Arc<ModelHandle>,
    tx: mpsc::UnboundedSender<u64>,
) {
    let done = Done { model: h.record.id, tx };
    tokio::spawn(async move {
        let _done = done;
        let r = c.commit(&reg, &h, accrete_core::VersionKind::Policy, "policy").await;
        // a failure (a partition's server down) is retried after a growing pause, not
        // at once: the next tick would find the policy due again
        let pause = c.policy_result(h.name(), r.is_ok());
        if let Err(e) = r {
            tracing::warn!(model = %h.name(), error = %e, retry_in = ?pause, "global policy commit failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Grad;
    use accrete_core::optim::LeKeys;
    use accrete_core::push::PushMeta;
    use accrete_core::{ModelKind, ModelSpec, VersionKind};
    use accrete_store::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_taken_back_to_back_are_written_in_order_at_exact_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let reg = Arc::new(Registry::open(store, crate::model::DEFAULT_LEASE).unwrap());
        let mut spec = ModelSpec { features: 2, ..ModelSpec::new("m", ModelKind::Linear) };
        spec.commit.every_updates = 2;
        let h = reg.create(spec, "", None).unwrap();
        let task = tokio::spawn(run(reg.clone()));
        let g = 1.0f32.to_le_bytes();
        let grads = [Grad { slot: "", tensor: "b", offset: 0, keys: LeKeys(&[]), values: &g }];
        for _ in 0..7 {
            h.push(0, &grads, &PushMeta::default()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let versions = loop {
            let vs = h.versions().unwrap();
            if vs.len() >= 4 || Instant::now() > deadline {
                break vs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        task.abort();
        let made: Vec<(u64, u64, u64)> =
            versions.iter().skip(1).map(|v| (v.version, v.updates, v.updates_since_parent)).collect();
        assert_eq!(made, [(2, 2, 2), (3, 4, 2), (4, 6, 2)], "{versions:?}");
        assert!(versions.iter().skip(1).all(|v| v.kind == VersionKind::Policy));
        assert_eq!(h.status().since_commit, 1, "the 7th update waits for the next count");
    }

    /// A tag, a commit and a rollback answer while a push flood keeps a commit-every-update
    /// model's committer busy, instead of waiting for the flood to end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_calls_are_not_starved_by_a_push_flood() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let reg = Arc::new(Registry::open(store, crate::model::DEFAULT_LEASE).unwrap());
        let mut spec = ModelSpec { hash_bits: 16, ..ModelSpec::new("m", ModelKind::Logistic) };
        spec.commit.every_updates = 1;
        let h = reg.create(spec, "", None).unwrap();
        let task = tokio::spawn(run(reg.clone()));
        let (stop, flooding, pushes) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
        let flood = {
            let (h, stop, flooding, pushes) = (h.clone(), stop.clone(), flooding.clone(), pushes.clone());
            std::thread::spawn(move || {
                // rows spread over the table: every version writes several chunks
                let keys: Vec<u8> = (0..256u64).flat_map(|k| (k * 257 % (1 << 16)).to_le_bytes()).collect();
                let values: Vec<u8> = (0..256).flat_map(|_| 0.01f32.to_le_bytes()).collect();
                let grads = [Grad { slot: "", tensor: "h", offset: 0, keys: LeKeys(&keys), values: &values }];
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    h.push(0, &grads, &PushMeta::default()).unwrap();
                    pushes.fetch_add(1, Ordering::Relaxed);
                }
                flooding.store(false, Ordering::Relaxed);
            })
        };
        // the committer is busy: versions are being written
        while h.versions().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let admin = h.clone();
        tokio::task::spawn_blocking(move || {
            admin.tag(1, "base")?;
            admin.commit(accrete_core::VersionKind::Manual, "during the flood", "")?;
            admin.rollback(1, "during the flood", "")
        })
        .await
        .unwrap()
        .unwrap();
        let flood_still_running = flooding.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
        task.abort();
        assert!(
            flood_still_running,
            "the admin calls waited for the push flood to end ({} pushes)",
            pushes.load(Ordering::Relaxed)
        );
        assert!(h.versions().unwrap().iter().any(|v| v.tags == ["base"]));
    }
}
