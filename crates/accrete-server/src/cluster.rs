//! The cluster on the server side (static membership from `--peers`): which server is a
//! model's home, and the home's coordination of a partitioned model's calls — creating
//! its partitions, global commits, rollbacks — over the other servers, reached with the
//! typed client (`accrete_client::cluster`).
//!
//! A global commit is a consistent cut in two phases: every partition holds new pushes
//! and reports, per worker, the last batch it applied (`model/cut.rs`); the cut is the
//! furthest per worker; every partition applies exactly up to it and writes the live
//! state as the same version number; the home writes it last, so a version is listed
//! (the home's version log is the model's) only once every partition has it. One global
//! commit per model at a time.
use crate::error::{Result, ServiceError};
use crate::model::ModelHandle;
use crate::registry::Registry;
use accrete_client::{Client, ClientError, ClusterView};
use accrete_core::cluster::{cut_of, ClusterMap, CutOrder, HoldReport};
use accrete_core::partition::servers_of;
use accrete_core::spec::{base_name, local_name};
use accrete_core::{InputSignature, ModelSpec, VersionKind, VersionRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a partition waits for the pushes up to a cut: a worker's lease bounds it.
const CUT_WAIT: Duration = Duration::from_secs(10);
/// How long a call to another server rides out its outage.
const PEER_PATIENCE: Duration = Duration::from_secs(3);

pub struct Cluster {
    pub map: ClusterMap,
    /// Reaches the other servers.
    client: Client,
    next_commit: AtomicU64,
    /// One global commit per model at a time.
    commits: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Instant>>>>,
    /// Hold times of global commits coordinated here (seconds), for `/metrics`.
    pub holds: HoldTimes,
}

impl Cluster {
    pub fn new(map: ClusterMap) -> std::result::Result<Cluster, String> {
        let view = ClusterView { servers: map.servers.clone(), me: map.me, epoch: map.epoch };
        let client = Client::of_cluster(view, PEER_PATIENCE).map_err(|e| e.to_string())?;
        // commit ids grow across restarts of the coordinator
        let first = accrete_store::now_unix_ms().max(0) as u64 * 1000;
        Ok(Cluster {
            map,
            client,
            next_commit: AtomicU64::new(first),
            commits: Mutex::default(),
            holds: HoldTimes::default(),
        })
    }

    /// The server index of a model's home (its partition 0).
    pub fn home_of(&self, name: &str) -> usize {
        servers_of(base_name(name), 1, self.map.servers.len())[0]
    }

    pub fn is_home(&self, name: &str) -> bool {
        self.home_of(name) == self.map.me
    }

    /// `host:port` of server i.
    pub fn server(&self, i: usize) -> &str {
        self.map.servers.get(i).map_or("?", String::as_str)
    }

    fn partition_server(&self, name: &str, part: u32, parts: u32) -> usize {
        servers_of(base_name(name), parts, self.map.servers.len())[part as usize]
    }

    fn peer(&self, i: usize) -> Client {
        self.client.peer(i)
    }

    fn named(&self, e: ClientError, model: &str, part: u32, server: usize) -> ServiceError {
        let what = format!("model {model:?} partition {part} (server {})", self.server(server));
        match e {
            e if e.is_unreachable() => ServiceError::Unavailable(format!("{what}: {e}")),
            e => ServiceError::Internal(format!("{what}: {e}")),
        }
    }

    /// Creates a partitioned model: its partitions on their servers, then its home here.
    pub async fn create(
        &self,
        reg: &Arc<Registry>,
        spec: ModelSpec,
        request: &str,
        signature: Option<InputSignature>,
    ) -> Result<Arc<ModelHandle>> {
        spec.validate()?;
        let parts = spec.parts();
        for p in 1..parts {
            let ps = spec.partition_spec(p);
            let i = self.partition_server(&spec.name, p, parts);
            let made = if i == self.map.me {
                let (reg, ps, req, sig) = (reg.clone(), ps.clone(), request.to_string(), signature.clone());
                blocking(move || reg.create(ps, &req, sig).map(|_| ())).await
            } else {
                match self.peer(i).create_partition(&ps, request, signature.as_ref()).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(self.named(e, &spec.name, p, i)),
                }
            };
            made?;
        }
        let (reg, req) = (reg.clone(), request.to_string());
        blocking(move || reg.create(spec, &req, signature)).await
    }

    fn commit_lock(&self, model: &str) -> Arc<tokio::sync::Mutex<Instant>> {
        let mut all = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(model.to_string()).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Instant::now()))).clone()
    }

    /// Is a policy commit of the partitioned model `h` (whose home this is) due?
    pub fn policy_due(&self, h: &ModelHandle, now: Instant) -> bool {
        let st = h.status();
        if st.since_commit == 0 {
            return false;
        }
        let policy = h.spec().commit;
        if policy.every_updates > 0 && st.since_commit >= policy.every_updates {
            return true;
        }
        let lock = self.commit_lock(h.name());
        let last = lock.try_lock().map(|g| *g);
        policy.every_secs > 0.0
            && last.is_ok_and(|l| now.saturating_duration_since(l).as_secs_f64() >= policy.every_secs)
    }

    /// A global commit of the partitioned model `h` (this is its home). Returns the new
    /// version, or the head and `false` when no partition changed.
    pub async fn commit(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        kind: VersionKind,
        reason: &str,
    ) -> Result<(VersionRecord, bool)> {
        let lock = self.commit_lock(h.name());
        let mut last = lock.lock().await;
        let parts = h.spec().parts();
        let id = self.next_commit.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut reports: Vec<HoldReport> = Vec::with_capacity(parts as usize);
        let mut failed = None;
        for p in 0..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            let r = if i == self.map.me {
                reg.get(&local).and_then(|m| m.hold(id))
            } else {
                self.peer(i).hold(&local, id).await.map_err(|e| self.named(e, h.name(), p, i))
            };
            match r {
                Ok(r) => reports.push(r),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.release_all(reg, h.name(), parts, id).await;
            return Err(e);
        }
        let changed = reports.iter().any(|r| r.since_commit > 0);
        if !changed {
            self.release_all(reg, h.name(), parts, id).await;
            return Ok((h.version(h.head_version())?, false));
        }
        let cut = cut_of(&reports);
        let version = reports.iter().map(|r| r.last_version).max().unwrap_or(0) + 1;
        let order = |p: u32| CutOrder {
            model: local_name(h.name(), p),
            commit: id,
            version,
            cut: cut.clone(),
            reason: reason.to_string(),
            kind,
            wait_ms: CUT_WAIT.as_millis() as u64,
        };
        // the other partitions first, at once; the home's version last
        let mut tasks = Vec::new();
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let o = order(p);
            if i == self.map.me {
                let m = reg.get(&o.model)?;
                tasks.push((p, i, tokio::spawn(async move { m.commit_cut(o).await })));
            } else {
                let mut c = self.peer(i);
                let task =
                    tokio::spawn(
                        async move { c.commit_cut(&o).await.map_err(|e| ServiceError::Internal(e.to_string())) },
                    );
                tasks.push((p, i, task));
            }
        }
        let mut failed = None;
        for (p, i, t) in tasks {
            let r = t.await.map_err(|e| ServiceError::Internal(format!("commit task: {e}"))).and_then(|r| r);
            if let Err(e) = r {
                failed.get_or_insert(ServiceError::Unavailable(format!(
                    "model {:?}: global commit failed at partition {p} (server {}): {e}",
                    h.name(),
                    self.server(i)
                )));
            }
        }
        if let Some(e) = failed {
            self.release_all(reg, h.name(), parts, id).await;
            return Err(e);
        }
        let rec = h.commit_cut(order(0)).await?;
        self.holds.record(started.elapsed());
        *last = Instant::now();
        Ok((rec, true))
    }

    async fn release_all(&self, reg: &Arc<Registry>, model: &str, parts: u32, id: u64) {
        for p in 0..parts {
            let i = self.partition_server(model, p, parts);
            let local = local_name(model, p);
            if i == self.map.me {
                if let Ok(m) = reg.get(&local) {
                    m.release(id);
                }
            } else if let Err(e) = self.peer(i).release(&local, id).await {
                tracing::warn!(model, partition = p, error = %e, "could not release a hold (it expires by itself)");
            }
        }
    }

    /// Rolls a partitioned model back on every partition: the others first, the home
    /// last; every partition must make the same version number.
    pub async fn rollback(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        to: u64,
        reason: &str,
        request: &str,
    ) -> Result<VersionRecord> {
        let lock = self.commit_lock(h.name());
        let _serial = lock.lock().await;
        let parts = h.spec().parts();
        let mut made = Vec::new();
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            let rec = if i == self.map.me {
                let (m, why) = (reg.get(&local)?, reason.to_string());
                blocking(move || m.rollback(to, &why, "")).await?
            } else {
                self.peer(i).rollback(&local, to, reason).await.map_err(|e| self.named(e, h.name(), p, i))?
            };
            made.push(rec.version);
        }
        let (hh, reason, request) = (h.clone(), reason.to_string(), request.to_string());
        let rec = blocking(move || hh.rollback(to, &reason, &request)).await?;
        if let Some(v) = made.iter().find(|v| **v != rec.version) {
            tracing::error!(model = %h.name(), home = rec.version, other = v, "partitions made different rollback versions");
        }
        Ok(rec)
    }
}

/// How long global commits coordinated here held their partitions' pushes: the last
/// [`HoldTimes::KEPT`], for quantiles, and the running count and sum.
#[derive(Default)]
pub struct HoldTimes {
    inner: Mutex<(std::collections::VecDeque<f64>, u64, f64)>,
}

impl HoldTimes {
    const KEPT: usize = 1024;

    pub fn record(&self, d: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.len() == Self::KEPT {
            g.0.pop_front();
        }
        g.0.push_back(d.as_secs_f64());
        g.1 += 1;
        g.2 += d.as_secs_f64();
    }

    /// (count, sum of seconds, p50, p99) of the kept ones.
    pub fn summary(&self) -> (u64, f64, f64, f64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<f64> = g.0.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * p).round() as usize] };
        (g.1, g.2, q(0.5), q(0.99))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServiceError::Internal(format!("task failed: {e}")))?
}
