//! Model-level calls: create, list, show, delete, commit, versions, tag, rollback, metrics
//! and the stream of version events. Every call here rides out a server's restart
//! ([`crate::retry`]); create, commit and rollback carry a request id so a retry is not
//! acted on twice, and a watch resumes after the last version it delivered.
use crate::retry::{request_id, retried};
use crate::{Client, ClientError, Result};
use accrete_core::view::ModelView;
use accrete_core::{EventKind, InputSignature, ModelInfo, ModelSpec, VersionEvent, VersionRecord};
use accrete_proto::v1 as pb;
use std::collections::BTreeMap;

fn model_ref(name: &str) -> pb::ModelRef {
    pb::ModelRef { name: name.to_string() }
}

/// The version record of an answer that must hold one.
fn version_of(v: Option<pb::VersionInfo>) -> Result<VersionRecord> {
    v.map(Into::into).ok_or_else(|| ClientError::Protocol("the server's answer holds no version".into()))
}

impl Client {
    /// The client for calls about `model`: its home server's in a cluster (which
    /// coordinates its versions), else this one.
    pub fn at_home(&self, model: &str) -> Client {
        self.home(model).unwrap_or_else(|| self.clone())
    }

    /// Creates a model; its initial parameters become version 1.
    /// With a `signature`, the columns its workers must read are fixed from the start
    /// (else the first worker's are recorded).
    pub async fn create_model(&mut self, spec: &ModelSpec, signature: Option<&InputSignature>) -> Result<ModelInfo> {
        let (spec, request_id) = (pb::ModelSpec::from(spec), request_id());
        let signature = signature.map(pb::InputSignature::from);
        let req = || pb::CreateModelRequest {
            spec: Some(spec.clone()),
            request_id: request_id.clone(),
            signature: signature.clone(),
        };
        let c = self.at_home(&spec.name);
        Ok(retried!(c, models, create_model, req())?.try_into()?)
    }

    /// Every model; in a cluster, every server's (each lists the models whose home it is).
    pub async fn list_models(&mut self) -> Result<Vec<ModelInfo>> {
        let servers = self.cluster().map_or(1, |c| c.servers.len());
        let mut all: Vec<ModelInfo> = Vec::new();
        for i in 0..servers {
            let c = if servers == 1 { self.clone() } else { self.peer(i) };
            let r = retried!(c, models, list_models, pb::ListModelsRequest {})?;
            for m in r.models {
                all.push(m.try_into()?);
            }
        }
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all.dedup_by(|a, b| a.spec.name == b.spec.name);
        Ok(all)
    }

    pub async fn model_info(&mut self, name: &str) -> Result<ModelInfo> {
        let c = self.at_home(name);
        Ok(retried!(c, models, get_model_info, model_ref(name))?.try_into()?)
    }

    /// What a worker, the evaluator or predict need to know of a model.
    pub async fn model_view(&mut self, name: &str) -> Result<ModelView> {
        Ok(ModelView::of(&self.model_info(name).await?.spec))
    }

    /// Deletes a model and its history; returns how many versions were dropped. Not
    /// retried: a retry after a lost answer would find no model (NOT_FOUND).
    pub async fn delete_model(&mut self, name: &str) -> Result<u64> {
        Ok(self.at_home(name).models.delete_model(model_ref(name)).await?.into_inner().versions_dropped)
    }

    /// Commits the live parameters; returns the head and whether a version was made (an
    /// unchanged model is not committed).
    pub async fn commit(&mut self, model: &str, reason: &str) -> Result<(VersionRecord, bool)> {
        let request_id = request_id();
        let req = || pb::CommitRequest { model: model.into(), reason: reason.into(), request_id: request_id.clone() };
        let c = self.at_home(model);
        let r = retried!(c, models, commit, req())?;
        Ok((version_of(r.version)?, r.created))
    }

    /// Retained versions, oldest first.
    pub async fn versions(&mut self, model: &str) -> Result<Vec<VersionRecord>> {
        let c = self.at_home(model);
        let r = retried!(c, models, list_versions, model_ref(model))?;
        Ok(r.versions.into_iter().map(Into::into).collect())
    }

    pub async fn tag(&mut self, model: &str, version: u64, label: &str) -> Result<VersionRecord> {
        // Idempotent without a request id: the label already on this version is an answer.
        let req = || pb::TagRequest { model: model.into(), version, label: label.into() };
        let c = self.at_home(model);
        Ok(retried!(c, models, tag, req())?.into())
    }

    /// Makes a new head holding `to`'s content, under a new lineage epoch.
    pub async fn rollback(&mut self, model: &str, to: u64, reason: &str) -> Result<VersionRecord> {
        let request_id = request_id();
        let req = || pb::RollbackRequest {
            model: model.into(),
            to_version: to,
            reason: reason.into(),
            request_id: request_id.clone(),
        };
        let c = self.at_home(model);
        Ok(retried!(c, models, rollback, req())?.into())
    }

    /// Stores metrics with a version: merged with earlier ones, or replacing them all
    /// (`replace`: a rescore, whose stale marks must not stay).
    pub async fn report_metrics(
        &mut self,
        model: &str,
        version: u64,
        metrics: &BTreeMap<String, f64>,
        replace: bool,
    ) -> Result<VersionRecord> {
        // Idempotent: the same metrics merged (or put in place) again change nothing.
        let req = || pb::ReportMetricsRequest {
            model: model.into(),
            version,
            metrics: metrics.iter().map(|(k, x)| (k.clone(), *x)).collect(),
            replace,
        };
        let c = self.at_home(model);
        Ok(retried!(c, models, report_metrics, req())?.into())
    }

    /// Version events of `model` (every model when `None`), as they happen; with `after`,
    /// the retained versions newer than it first. The watch rides out the server's
    /// restarts and a lag on its side: it watches again from the last version it delivered
    /// of each model (tags and scores made meanwhile are not replayed).
    pub async fn watch(&mut self, model: Option<&str>, after: Option<u64>) -> Result<Watch> {
        // Where each model's delivered versions end: `after`, or the heads now. A single
        // model's stream opens at its head, so a version made meanwhile is not missed.
        let mut floors = BTreeMap::new();
        let first = match model {
            Some(m) => {
                let floor = match after {
                    Some(a) => a,
                    None => self.model_info(m).await?.head_version,
                };
                floors.insert(m.to_string(), floor);
                Some(floor)
            }
            None => {
                let models = self.list_models().await?;
                floors.extend(models.into_iter().map(|m| (m.spec.name, after.unwrap_or(m.head_version))));
                after
            }
        };
        let client = model.map_or_else(|| self.clone(), |m| self.at_home(m));
        let mut w = Watch { client, model: model.map(str::to_string), floors, events: None };
        w.open(first).await?;
        Ok(w)
    }
}

/// A stream of version events that rides out the server's restarts.
pub struct Watch {
    client: Client,
    model: Option<String>,
    /// Per model, the newest version delivered (or known when the watch began); a model
    /// created since the watch began has none (its versions are all new).
    floors: BTreeMap<String, u64>,
    events: Option<tonic::Streaming<pb::VersionEvent>>,
}

impl Watch {
    /// Opens the stream with the server's backlog after `after` (retried while the
    /// server is down).
    async fn open(&mut self, after: Option<u64>) -> Result<()> {
        let model = self.model.clone().unwrap_or_default();
        let req = || pb::WatchRequest { model: model.clone(), after_version: after };
        let c = &self.client;
        let events = c
            .retry
            .run(|| {
                let mut svc = c.models.clone();
                let req = req();
                async move { Ok(svc.watch_versions(req).await?.into_inner()) }
            })
            .await?;
        self.events = Some(events);
        Ok(())
    }

    /// Opens the stream again after a break: from the lowest floor, or from the start for
    /// an every-model watch (models may have been created meanwhile). A model whose head
    /// is now below its floor was deleted and created again: its versions are all new.
    async fn reopen(&mut self) -> Result<()> {
        let heads: Vec<(String, u64)> = match &self.model {
            Some(m) => match self.client.model_info(m).await {
                Ok(i) => vec![(m.clone(), i.head_version)],
                Err(ClientError::NotFound(_)) => vec![],
                Err(e) => return Err(e),
            },
            None => self.client.list_models().await?.into_iter().map(|m| (m.spec.name, m.head_version)).collect(),
        };
        for (name, head) in heads {
            if self.floors.get(&name).is_some_and(|f| head < *f) {
                self.floors.remove(&name);
            }
        }
        let after = match &self.model {
            Some(m) => self.floors.get(m).copied().unwrap_or(0),
            None => 0,
        };
        self.open(Some(after)).await
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<VersionEvent>> {
        loop {
            let events = self.events.as_mut()?;
            let e = match events.message().await {
                Ok(Some(e)) => e,
                Ok(None) => return None,
                Err(s) => {
                    let e = ClientError::from(s);
                    if !(matches!(e, ClientError::WatchLagged(_))
                        || e.is_unreachable() && !self.client.patience().is_zero())
                    {
                        return Some(Err(e));
                    }
                    tracing::info!(server = %self.client.url, "watch: {e}; watching again after the last version seen");
                    self.events = None;
                    if let Err(e) = self.reopen().await {
                        return Some(Err(e));
                    }
                    continue;
                }
            };
            let ev = match VersionEvent::try_from(e) {
                Ok(ev) => ev,
                Err(e) => return Some(Err(e.into())),
            };
            let floor = self.floors.get(&ev.model).copied().unwrap_or(0);
            if ev.kind.is_new_version() {
                if ev.version.version <= floor {
                    continue; // delivered before the stream was opened again
                }
                self.floors.insert(ev.model.clone(), ev.version.version);
            } else if ev.kind == EventKind::Deleted {
                // A model created again under this name counts its versions from 1.
                self.floors.remove(&ev.model);
            }
            return Some(Ok(ev));
        }
    }
}
