//! The models a server holds, by name, and the event bus of their version history.
use crate::error::{Result, ServiceError};
use crate::model::{Context, ModelHandle};
use accrete_core::VersionEvent;
use accrete_core::{InputSignature, ModelSpec};
use accrete_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{broadcast, Notify};

pub struct Registry {
    /// What every model shares: store, event bus, the commit-policy task's wake-up, lease.
    ctx: Context,
    models: RwLock<HashMap<String, Arc<ModelHandle>>>,
    /// Serialises creates and deletes (name checks and the store write happen together).
    admin: Mutex<()>,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Set before the stop's last commit: pushes are refused from then on, so every
    /// applied push is in that commit.
    closed: std::sync::atomic::AtomicBool,
    /// The cluster this server is one of (`None`: started without `--peers`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Registry {
    /// Loads every model's head version. Blocking.
    pub fn open(store: Store, lease: std::time::Duration) -> Result<Registry> {
        Registry::open_in(store, lease, None)
    }

    /// [`Registry::open`] for a server of a cluster.
    pub fn open_in(
        store: Store,
        lease: std::time::Duration,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Registry> {
        let (events, _) = broadcast::channel(4096);
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        let servers = cluster.as_ref().map(|c| c.map.servers.clone()).unwrap_or_default().into();
        let ctx = Context { store, events, policy: Arc::new(Notify::new()), lease, instance, servers };
        let mut models = HashMap::new();
        for rec in ctx.store.models()? {
            let name = rec.spec.name.clone();
            let handle = ModelHandle::load(&ctx, rec)?;
            tracing::info!(model = %name, version = handle.head_version(), "loaded");
            models.insert(name, Arc::new(handle));
        }
        let (stopping, _) = tokio::sync::watch::channel(false);
        Ok(Registry {
            ctx,
            models: RwLock::new(models),
            admin: Mutex::new(()),
            stopping,
            closed: Default::default(),
            cluster,
        })
    }

    /// The cluster this server is one of, if it was started with `--peers`.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// The commit-policy task's wake-up, notified by pushes that make a commit due.
    pub fn policy_wake(&self) -> Arc<Notify> {
        self.ctx.policy.clone()
    }

    pub fn get(&self, name: &str) -> Result<Arc<ModelHandle>> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        models.get(name).cloned().ok_or_else(|| ServiceError::ModelNotFound(name.to_string()))
    }

    /// The models users see here: those whose home this server is (a partition of a
    /// split model on another server is not listed), by name.
    pub fn homes(&self) -> Vec<Arc<ModelHandle>> {
        self.list().into_iter().filter(|h| h.spec().partition == 0).collect()
    }

    /// All models, by name (every partition held here).
    pub fn list(&self) -> Vec<Arc<ModelHandle>> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = models.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Creates a model and commits its initial parameters. Blocking. A retry of the call
    /// that created it (the same non-empty `request` id) is answered with the model.
    pub fn create(
        &self,
        spec: ModelSpec,
        request: &str,
        signature: Option<InputSignature>,
    ) -> Result<Arc<ModelHandle>> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(h) = self.get(&spec.name) {
            if !request.is_empty() && h.record.request == request {
                tracing::info!(model = %spec.name, request, "a retried create: the model it made is the answer");
                return Ok(h);
            }
            return Err(ServiceError::ModelExists(spec.name));
        }
        let name = spec.name.clone();
        let handle = Arc::new(ModelHandle::create(&self.ctx, spec, request, signature)?);
        self.models.write().unwrap_or_else(|e| e.into_inner()).insert(name, handle.clone());
        Ok(handle)
    }

    /// Deletes a model and its history. Blocking.
    pub fn delete(&self, name: &str) -> Result<u64> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let handle = self.get(name)?;
        let n = handle.delete()?;
        self.models.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        Ok(n)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<VersionEvent> {
        self.ctx.events.subscribe()
    }

    /// Tells long-lived streams that the server is stopping.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// A graceful stop's last commit: every model whose live state moved past its head
    /// gets a version holding it, so a stop loses nothing that was applied. Says so for
    /// each; a model whose commit fails is logged with what it loses. Blocking.
    pub fn commit_at_stop(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        // a partitioned model's versions are global: asked for before the stop
        // (`Cluster::commit_before_stop`), never made by one partition alone
        for h in self.list().into_iter().filter(|h| h.spec().parts() == 1) {
            match h.commit(accrete_core::VersionKind::Policy, "graceful stop", "") {
                Ok((rec, true)) => tracing::info!(
                    model = %h.name(),
                    version = rec.version,
                    updates = rec.updates_since_parent,
                    "stopping: committed the uncommitted updates"
                ),
                Ok((_, false)) => {}
                Err(e) => tracing::error!(
                    model = %h.name(),
                    uncommitted = h.status().since_commit,
                    error = %e,
                    "stopping: the uncommitted updates could not be committed and are lost"
                ),
            }
        }
    }

    /// The stop's last commit has begun: no more pushes.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when the server begins to stop.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}
