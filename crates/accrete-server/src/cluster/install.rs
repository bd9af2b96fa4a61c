//! A partitioned model's installs, coordinated from its home: a rollback, and a recovery
//! (the whole model back to its latest global version, the workers rewinding to its
//! offsets), land on every partition as one new version number and one new lineage
//! epoch; the home's version last, so the version is listed only once every partition
//! has it.
use super::{blocking, Cluster};
use crate::error::{Result, ServiceError};
use crate::model::{At, ModelHandle};
use crate::registry::Registry;
use accrete_core::spec::local_name;
use accrete_core::VersionRecord;
use std::sync::Arc;

impl Cluster {
    /// Rolls a partitioned model back on every partition to `to` (workers keep their
    /// offsets). A retry of the same request (non-empty id) is answered with the version
    /// the first made, as on one server.
    pub async fn rollback(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        to: u64,
        why: &str,
        request: &str,
    ) -> Result<VersionRecord> {
        let lock = self.commit_lock(h.name());
        let _serial = lock.lock().await;
        if let Some(rec) = h.answer_of(request)? {
            return Ok(rec);
        }
        // only a version the home lists is the model's (a partition may hold one left by
        // an aborted commit): refused here, before any partition moves
        let hh = h.clone();
        blocking(move || hh.version(to)).await?;
        let reason = if why.is_empty() { format!("rollback to {to}") } else { format!("rollback to {to}: {why}") };
        self.install_all(reg, h, to, &reason, false, request).await
    }

    /// A recovery: a partition lost updates (its server restarted, or a batch reached only
    /// some partitions), so the whole model goes back to its latest global version, and
    /// the workers to the offsets that version recorded.
    pub async fn recover(&self, reg: &Arc<Registry>, h: &Arc<ModelHandle>, why: &str) -> Result<VersionRecord> {
        let lock = self.commit_lock(h.name());
        let _serial = lock.lock().await;
        self.recover_locked(reg, h, why).await
    }

    pub(super) async fn recover_locked(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        why: &str,
    ) -> Result<VersionRecord> {
        let to = h.head_version();
        tracing::warn!(model = %h.name(), to, why, "recovery: the model goes back to its latest global version");
        let rec = self.install_all(reg, h, to, &format!("recovery to {to}: {why}"), true, "").await?;
        self.instances.lock().unwrap_or_else(|e| e.into_inner()).remove(h.name());
        Ok(rec)
    }

    /// Installs version `to`'s content on every partition as one new version number (after
    /// every partition's newest), the others first and the home last (so the version is
    /// listed only once every partition has it).
    pub(super) async fn install_all(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        to: u64,
        reason: &str,
        rewind: bool,
        request: &str,
    ) -> Result<VersionRecord> {
        let parts = h.spec().parts();
        let at = self.next_install(reg, h).await?;
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            if i == self.map.me {
                let (m, why) = (reg.get(&local)?, reason.to_string());
                blocking(move || m.install_version(to, at, &why, rewind, "")).await?;
            } else {
                self.peer(i)
                    .install(&local, to, (at.version, at.epoch), reason, rewind)
                    .await
                    .map_err(|e| self.named(e, h.name(), p, i))?;
            }
        }
        let (hh, reason, request) = (h.clone(), reason.to_string(), request.to_string());
        let rec = blocking(move || hh.install_version(to, at, &reason, rewind, &request)).await?;
        self.retain_all(reg, h).await;
        Ok(rec)
    }

    /// Where a version installed on every partition lands: the next number after every
    /// partition's newest (an aborted commit may have left one a version ahead), and the
    /// next lineage epoch after every partition's (an install that failed half-way may
    /// have moved some on), so that after it every partition is at the same epoch.
    pub(super) async fn next_install(&self, reg: &Arc<Registry>, h: &Arc<ModelHandle>) -> Result<At> {
        let parts = h.spec().parts();
        let s = h.status();
        let (mut version, mut epoch) = (s.head, s.epoch);
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let local = local_name(h.name(), p);
            let (v, e) = if i == self.map.me {
                let s = reg.get(&local)?.status();
                (s.head, s.epoch)
            } else {
                let info = self.peer(i).model_info(&local).await.map_err(|e| self.named(e, h.name(), p, i))?;
                (info.head_version, info.lineage_epoch)
            };
            (version, epoch) = (version.max(v), epoch.max(e));
        }
        match (version.checked_add(1), epoch.checked_add(1)) {
            (Some(version), Some(epoch)) => Ok(At { version, epoch }),
            _ => Err(ServiceError::Invalid(format!(
                "model {:?}: version or lineage epoch numbers are exhausted",
                h.name()
            ))),
        }
    }
}
