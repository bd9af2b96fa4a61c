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
use accrete_core::partition::server_of;
use accrete_core::spec::{base_name, local_name};
use accrete_core::{InputSignature, ModelSpec, VersionKind, VersionRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod content;
mod install;

pub use content::whole_spec;

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
    /// Per model, each partition's server instance at the last commit made: another one
    /// means that server restarted and lost what it had not committed.
    instances: Mutex<HashMap<String, Vec<u64>>>,
    /// Commits waiting for the model's commit lock.
    queued: AtomicU64,
    /// Models a commit is wanted for at once (a worker joined again).
    wanted: Mutex<std::collections::HashSet<String>>,
    /// Per model after a failed policy commit: the pause, and when the policy may try again.
    backoff: Mutex<HashMap<String, (Duration, Instant)>>,
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
            instances: Mutex::default(),
            queued: AtomicU64::new(0),
            wanted: Mutex::default(),
            backoff: Mutex::default(),
        })
    }

    /// The server index of a model's home (its partition 0).
    pub fn home_of(&self, name: &str) -> usize {
        server_of(base_name(name), 0, self.map.servers.len())
    }

    pub fn is_home(&self, name: &str) -> bool {
        self.home_of(name) == self.map.me
    }

    /// `host:port` of server i.
    pub fn server(&self, i: usize) -> &str {
        self.map.servers.get(i).map_or("?", String::as_str)
    }

    fn partition_server(&self, name: &str, part: u32, parts: u32) -> usize {
        server_of(base_name(name), part.min(parts.saturating_sub(1)), self.map.servers.len())
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
        // the model exists: this create's retry (its request id) is answered with it
        if let Ok(h) = reg.get(&spec.name) {
            if !request.is_empty() && h.record.request == request {
                return Ok(h);
            }
            return Err(ServiceError::ModelExists(spec.name));
        }
        let parts = spec.parts();
        for p in 1..parts {
            let ps = spec.partition_spec(p);
            let i = self.partition_server(&spec.name, p, parts);
            // a partition left by an earlier create that did not finish is taken as it is
            // if it is this model's; otherwise the create is refused, naming it
            let existing = if i == self.map.me {
                let (r, ps2, req, sig) = (reg.clone(), ps.clone(), request.to_string(), signature.clone());
                match blocking(move || r.create(ps2, &req, sig).map(|_| ())).await {
                    Ok(()) => None,
                    Err(ServiceError::ModelExists(_)) => Some(reg.get(&ps.name)?.spec().whole()),
                    Err(e) => return Err(e),
                }
            } else {
                match self.peer(i).create_partition(&ps, request, signature.as_ref()).await {
                    Ok(_) => None,
                    Err(ClientError::AlreadyExists(_)) => {
                        let info =
                            self.peer(i).model_info(&ps.name).await.map_err(|e| self.named(e, &spec.name, p, i))?;
                        Some(info.spec.whole())
                    }
                    Err(e) => return Err(self.named(e, &spec.name, p, i)),
                }
            };
            if let Some(have) = existing.filter(|have| *have != spec) {
                return Err(ServiceError::Invalid(format!(
                    "model {:?}: partition {p} on server {} exists with another spec ({} {}) than this create's, left by a \
                     create that did not finish; delete the model through its home and create it again",
                    spec.name,
                    self.server(i),
                    have.kind.as_str(),
                    have.hash_bits
                )));
            }
        }
        let (reg, req) = (reg.clone(), request.to_string());
        blocking(move || reg.create(spec, &req, signature)).await
    }

    /// A partitioned model's delete, before its home's: drops every other partition (one
    /// already gone counts as dropped, so a delete that failed half-way can be retried).
    pub async fn drop_partitions(&self, reg: &Arc<Registry>, h: &Arc<ModelHandle>) -> Result<()> {
        let lock = self.commit_lock(h.name());
        let _serial = lock.lock().await;
        let parts = h.spec().parts();
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            let r = if i == self.map.me {
                let r = reg.clone();
                blocking(move || r.delete(&local).map(|_| ())).await
            } else {
                self.peer(i).drop_partition(&local).await.map(|_| ()).map_err(|e| match e {
                    ClientError::NotFound(m) => ServiceError::ModelNotFound(m),
                    e => self.named(e, h.name(), p, i),
                })
            };
            match r {
                Ok(()) | Err(ServiceError::ModelNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Global commits, rollbacks and recoveries waiting for another on the same model
    /// (the coordinator's queue).
    pub fn waiting(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    fn commit_lock(&self, model: &str) -> Arc<tokio::sync::Mutex<Instant>> {
        let mut all = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(model.to_string()).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Instant::now()))).clone()
    }

    /// Is a policy commit of the partitioned model `h` (whose home this is) due?
    pub fn policy_due(&self, h: &ModelHandle, now: Instant) -> bool {
        let paused = self.backoff.lock().unwrap_or_else(|e| e.into_inner()).get(h.name()).is_some_and(|b| now < b.1);
        if paused {
            return false;
        }
        if self.wanted.lock().unwrap_or_else(|e| e.into_inner()).remove(h.name()) {
            return true;
        }
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

    /// Notes how a policy commit of `model` ended: after a failure the policy waits a
    /// pause that doubles with each failure in a row (0.2 s to 5 s); a success ends it.
    /// Returns the pause.
    pub fn policy_result(&self, model: &str, ok: bool) -> Duration {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            backoff.remove(model);
            return Duration::ZERO;
        }
        let pause = backoff.get(model).map_or(Duration::from_millis(200), |b| (b.0 * 2).min(Duration::from_secs(5)));
        backoff.insert(model.to_string(), (pause, Instant::now() + pause));
        pause
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
        self.queued.fetch_add(1, Ordering::Relaxed);
        let mut last = lock.lock().await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let parts = h.spec().parts();
        let id = self.next_commit.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // every partition is held at once: the hold lasts one round trip, not P
        let mut remote = Vec::new();
        let mut results: Vec<Option<Result<HoldReport>>> = (0..parts).map(|_| None).collect();
        for p in 0..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            if i == self.map.me {
                results[p as usize] = Some(reg.get(&local).and_then(|m| m.hold(id)));
            } else {
                let mut c = self.peer(i);
                remote.push((p, i, tokio::spawn(async move { c.hold(&local, id).await })));
            }
        }
        for (p, i, t) in remote {
            let r = match t.await {
                Ok(r) => r.map_err(|e| self.named(e, h.name(), p, i)),
                Err(e) => Err(ServiceError::Internal(format!("hold task: {e}"))),
            };
            results[p as usize] = Some(r);
        }
        let mut reports: Vec<HoldReport> = Vec::with_capacity(parts as usize);
        let mut failed = None;
        for r in results.into_iter().flatten() {
            match r {
                Ok(r) => reports.push(r),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            self.release_all(reg, h.name(), parts, id, false).await;
            return Err(e);
        }
        let instances: Vec<u64> = reports.iter().map(|r| r.server_instance).collect();
        let known = self.instances.lock().unwrap_or_else(|e| e.into_inner()).get(h.name()).cloned();
        if let Some(p) = known.and_then(|k| k.iter().zip(&instances).position(|(a, b)| a != b)) {
            let why = format!("partition {p}'s server restarted");
            return Err(self.abort_and_recover(reg, h, id, &why, " and lost what it had not committed;").await);
        }
        if let Some(p) = reports.iter().position(|r| r.lineage_epoch != reports[0].lineage_epoch) {
            // a rollback or import that reached only some partitions: no version may mix
            // two lineages, so the model goes back to its latest global version everywhere
            let why = format!(
                "partition {p} is at lineage epoch {} and the home at {} (a rollback or import did not finish)",
                reports[p].lineage_epoch, reports[0].lineage_epoch
            );
            return Err(self.abort_and_recover(reg, h, id, &why, ";").await);
        }
        let changed = reports.iter().any(|r| r.since_commit > 0);
        if !changed {
            self.release_all(reg, h.name(), parts, id, false).await;
            return Ok((h.version(h.head_version())?, false));
        }
        let cut = cut_of(&reports);
        let round = reports.iter().map(|r| r.round).max().unwrap_or(0);
        let version = reports.iter().map(|r| r.last_version).max().unwrap_or(0) + 1;
        let order = |p: u32| CutOrder {
            model: local_name(h.name(), p),
            commit: id,
            version,
            cut: cut.clone(),
            reason: reason.to_string(),
            kind,
            wait_ms: CUT_WAIT.as_millis() as u64,
            round,
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
            self.release_all(reg, h.name(), parts, id, false).await;
            // a cut that some partition cannot reach (a batch that reached only some
            // partitions) would fail every commit from now on: recover
            if let Err(r) = self.recover_locked(reg, h, &e.to_string()).await {
                tracing::error!(model = %h.name(), error = %r, "recovery failed");
            }
            return Err(e);
        }
        let rec = match h.commit_cut(order(0)).await {
            Ok(rec) => rec,
            Err(e) => {
                self.release_all(reg, h.name(), parts, id, false).await;
                return Err(e);
            }
        };
        // the commit is made: every partition's hold ends with its cut committed
        self.release_all(reg, h.name(), parts, id, true).await;
        self.instances.lock().unwrap_or_else(|e| e.into_inner()).insert(h.name().to_string(), instances);
        self.holds.record(started.elapsed());
        *last = Instant::now();
        self.retain_all(reg, h).await;
        Ok((rec, true))
    }

    /// A held commit that must not be made (`why`): every hold ends aborted, the model
    /// recovers to its latest global version, and the caller is told to commit again
    /// (`after` follows `why` in what it is told).
    async fn abort_and_recover(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        id: u64,
        why: &str,
        after: &str,
    ) -> ServiceError {
        self.release_all(reg, h.name(), h.spec().parts(), id, false).await;
        match self.recover_locked(reg, h, why).await {
            Ok(rec) => ServiceError::Unavailable(format!(
                "model {:?}: {why}{after} the model was recovered to version {} (workers rewind); commit again",
                h.name(),
                rec.content_of
            )),
            Err(e) => e,
        }
    }

    /// Retention is global: after the home's (its own, in the version it just wrote),
    /// every other partition keeps exactly the versions the home's log lists. A failure
    /// is logged; the next commit's retention catches up.
    async fn retain_all(&self, reg: &Arc<Registry>, h: &Arc<ModelHandle>) {
        let hh = h.clone();
        let keep: Vec<u64> = match blocking(move || hh.versions()).await {
            Ok(vs) => vs.iter().map(|r| r.version).collect(),
            Err(e) => return tracing::warn!(model = %h.name(), error = %e, "retention: cannot list the versions"),
        };
        let parts = h.spec().parts();
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            let r = if i == self.map.me {
                match reg.get(&local) {
                    Ok(m) => {
                        let keep = keep.clone();
                        blocking(move || m.retain_listed(&keep).map(|n| n as u64)).await
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.peer(i).retain(&local, &keep).await.map_err(|e| self.named(e, h.name(), p, i))
            };
            if let Err(e) = r {
                tracing::warn!(model = %h.name(), partition = p, error = %e, "retention on a partition failed (the next commit retries)");
            }
        }
    }

    /// Ends every partition's hold at once (the home's own last).
    async fn release_all(&self, reg: &Arc<Registry>, model: &str, parts: u32, id: u64, made: bool) {
        let mut remote = Vec::new();
        for p in 1..parts {
            let i = self.partition_server(model, p, parts);
            let local = local_name(model, p);
            if i == self.map.me {
                if let Ok(m) = reg.get(&local) {
                    m.release(id, made);
                }
            } else {
                let mut c = self.peer(i);
                remote.push((p, tokio::spawn(async move { c.release(&local, id, made).await })));
            }
        }
        for (p, t) in remote {
            if let Ok(Err(e)) = t.await {
                tracing::warn!(model, partition = p, error = %e, "could not release a hold (it expires by itself)");
            }
        }
        let i = self.partition_server(model, 0, parts);
        if i == self.map.me {
            if let Ok(m) = reg.get(model) {
                m.release(id, made);
            }
        } else if let Err(e) = self.peer(i).release(model, id, made).await {
            tracing::warn!(model, partition = 0, error = %e, "could not release a hold (it expires by itself)");
        }
    }

    /// A graceful stop's first step, while this server still answers: a global commit of
    /// every partitioned model it holds a partition of, so the stop loses nothing.
    pub async fn commit_before_stop(&self, reg: &Arc<Registry>) {
        let mut models: Vec<String> =
            reg.list().iter().filter(|h| h.spec().parts() > 1).map(|h| base_name(h.name()).to_string()).collect();
        models.dedup();
        for m in models {
            let mut c = self.client.clone();
            match tokio::time::timeout(Duration::from_secs(10), c.commit(&m, "graceful stop of a partition's server"))
                .await
            {
                Ok(Ok((rec, made))) => {
                    tracing::info!(model = %m, version = rec.version, made, "stopping: global commit")
                }
                Ok(Err(e)) => tracing::error!(model = %m, error = %e, "stopping: the global commit failed"),
                Err(_) => tracing::error!(model = %m, "stopping: the global commit did not end within 10 s"),
            }
        }
    }

    /// After a start: every partitioned model whose home this is may have lost what its
    /// home had not committed, so each goes back to its latest global version (retried
    /// while its partitions' servers are not up yet).
    pub async fn recover_at_start(self: Arc<Self>, reg: Arc<Registry>) {
        for h in reg.homes().into_iter().filter(|h| h.spec().parts() > 1) {
            for attempt in 0..120 {
                match self.recover(&reg, &h, "its home server restarted").await {
                    Ok(_) => break,
                    Err(e) if attempt % 10 == 0 => {
                        tracing::warn!(model = %h.name(), error = %e, "recovery at start: retrying")
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// A worker joined the home again (a new incarnation): its pushes may wait for the
    /// next commit (the incarnation gate), so one is due.
    pub fn want_commit(&self, model: &str) {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner()).insert(model.to_string());
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
