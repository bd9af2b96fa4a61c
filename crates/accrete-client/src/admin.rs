//! Model-level calls: create, list, show, delete, commit, versions, tag, rollback, metrics
//! and the stream of version events.
use crate::{Client, ClientError, Result};
use accrete_core::view::ModelView;
use accrete_core::{ModelInfo, ModelSpec, VersionEvent, VersionRecord};
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
    /// Creates a model; its initial parameters become version 1.
    pub async fn create_model(&mut self, spec: &ModelSpec) -> Result<ModelInfo> {
        let req = pb::CreateModelRequest { spec: Some(spec.into()) };
        Ok(self.models.create_model(req).await?.into_inner().try_into()?)
    }

    pub async fn list_models(&mut self) -> Result<Vec<ModelInfo>> {
        let r = self.models.list_models(pb::ListModelsRequest {}).await?.into_inner();
        Ok(r.models.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?)
    }

    pub async fn model_info(&mut self, name: &str) -> Result<ModelInfo> {
        Ok(self.models.get_model_info(model_ref(name)).await?.into_inner().try_into()?)
    }

    /// What a worker, the evaluator or predict need to know of a model.
    pub async fn model_view(&mut self, name: &str) -> Result<ModelView> {
        Ok(ModelView::of(&self.model_info(name).await?.spec))
    }

    /// Deletes a model and its history; returns how many versions were dropped.
    pub async fn delete_model(&mut self, name: &str) -> Result<u64> {
        Ok(self.models.delete_model(model_ref(name)).await?.into_inner().versions_dropped)
    }

    /// Commits the live parameters; returns the head and whether a version was made (an
    /// unchanged model is not committed).
    pub async fn commit(&mut self, model: &str, reason: &str) -> Result<(VersionRecord, bool)> {
        let req = pb::CommitRequest { model: model.into(), reason: reason.into() };
        let r = self.models.commit(req).await?.into_inner();
        Ok((version_of(r.version)?, r.created))
    }

    /// Retained versions, oldest first.
    pub async fn versions(&mut self, model: &str) -> Result<Vec<VersionRecord>> {
        let r = self.models.list_versions(model_ref(model)).await?.into_inner();
        Ok(r.versions.into_iter().map(Into::into).collect())
    }

    pub async fn tag(&mut self, model: &str, version: u64, label: &str) -> Result<VersionRecord> {
        let req = pb::TagRequest { model: model.into(), version, label: label.into() };
        Ok(self.models.tag(req).await?.into_inner().into())
    }

    /// Makes a new head holding `to`'s content, under a new lineage epoch.
    pub async fn rollback(&mut self, model: &str, to: u64, reason: &str) -> Result<VersionRecord> {
        let req = pb::RollbackRequest { model: model.into(), to_version: to, reason: reason.into() };
        Ok(self.models.rollback(req).await?.into_inner().into())
    }

    /// Stores metrics with a version (merged with earlier ones).
    pub async fn report_metrics(
        &mut self,
        model: &str,
        version: u64,
        metrics: &BTreeMap<String, f64>,
    ) -> Result<VersionRecord> {
        let req = pb::ReportMetricsRequest {
            model: model.into(),
            version,
            metrics: metrics.iter().map(|(k, x)| (k.clone(), *x)).collect(),
        };
        Ok(self.models.report_metrics(req).await?.into_inner().into())
    }

    /// Version events of `model` (every model when `None`), as they happen; with `after`,
    /// the retained versions newer than it first.
    pub async fn watch(&mut self, model: Option<&str>, after: Option<u64>) -> Result<Watch> {
        let req = pb::WatchRequest { model: model.unwrap_or_default().to_string(), after_version: after };
        Ok(Watch { events: self.models.watch_versions(req).await?.into_inner() })
    }
}

/// A stream of version events.
pub struct Watch {
    events: tonic::Streaming<pb::VersionEvent>,
}

impl Watch {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<VersionEvent>> {
        match self.events.message().await {
            Ok(Some(e)) => Some(VersionEvent::try_from(e).map_err(Into::into)),
            Ok(None) => None,
            Err(s) => Some(Err(s.into())),
        }
    }
}
