//! The `Models` service: create, list, describe and delete models; commit, list, tag and
//! score versions; roll back; export and import; watch version events.
use super::import::ImportFiller;
use super::{blocking, export, info_of, on_model, rpc_span, version_info, watch, BoxStream, Reply, Service};
use crate::error::{from_transport, ServiceError};
use accrete_core::{InputSignature, ModelSpec, VersionKind};
use accrete_proto::v1 as pb;
use accrete_proto::v1::models_server::Models;
use prost::Message;
use std::collections::BTreeMap;
use tonic::{Request, Response, Streaming};
use tracing::Instrument;

#[tonic::async_trait]
impl Models for Service {
    async fn create_model(&self, req: Request<pb::CreateModelRequest>) -> Reply<pb::ModelInfo> {
        let pb::CreateModelRequest { spec, request_id, signature } = req.into_inner();
        let span = rpc_span("create_model", spec.as_ref().map_or("", |s| &s.name));
        async move {
            let spec = spec.ok_or_else(|| ServiceError::Invalid("spec is required".into()))?;
            let mut spec = ModelSpec::try_from(spec).map_err(ServiceError::from)?;
            accrete_core::spec::validate_name(&spec.name).map_err(ServiceError::from)?;
            if spec.partition != 0 {
                return Err(ServiceError::Invalid(format!("model {:?}: spec.partition is set by servers, not at create", spec.name)).into());
            }
            let signature = signature.map(InputSignature::from).filter(|s| !s.is_empty());
            let h = match self.reg.cluster() {
                Some(c) => {
                    if spec.partitions == 0 {
                        // default: one partition per server
                        spec.partitions = c.map.servers.len() as u32;
                    }
                    if !c.is_home(&spec.name) {
                        let home = c.home_of(&spec.name);
                        return Err(ServiceError::Unavailable(format!(
                            "model {:?} lives on server {} (its home): create it there, or through a client that routes (accrete's CLI does)",
                            spec.name,
                            c.server(home)
                        ))
                        .into());
                    }
                    c.create(&self.reg, spec, &request_id, signature).await?
                }
                None => {
                    let reg = self.reg.clone();
                    blocking(move || reg.create(spec, &request_id, signature)).await?
                }
            };
            let info = on_model(&h, info_of).await?;
            tracing::info!(model = %h.name(), kind = h.spec().kind.as_str(), "created");
            Ok(Response::new(info))
        }
        .instrument(span)
        .await
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Reply<pb::ListModelsResponse> {
        let reg = self.reg.clone();
        async move {
            let models = blocking(move || reg.homes().iter().map(|h| info_of(h)).collect()).await?;
            Ok(Response::new(pb::ListModelsResponse { models }))
        }
        .instrument(rpc_span("list_models", ""))
        .await
    }

    async fn get_model_info(&self, req: Request<pb::ModelRef>) -> Reply<pb::ModelInfo> {
        let name = req.into_inner().name;
        let span = rpc_span("get_model_info", &name);
        async move {
            let h = self.reg.get(&name)?;
            Ok(Response::new(blocking(move || info_of(&h)).await?))
        }
        .instrument(span)
        .await
    }

    async fn delete_model(&self, req: Request<pb::ModelRef>) -> Reply<pb::DeleteModelResponse> {
        let name = req.into_inner().name;
        let span = rpc_span("delete_model", &name);
        async move {
            let h = self.reg.get(&name)?;
            self.whole_only(&h, "delete")?;
            if let Some(c) = self.coordinator(&h) {
                // its partitions first: a partition left behind would be taken up by a
                // later create of the same name, with this model's content
                c.drop_partitions(&self.reg, &h).await?;
            }
            let (reg, model) = (self.reg.clone(), name.clone());
            let n = blocking(move || reg.delete(&model)).await?;
            tracing::info!(model = %name, versions = n, "deleted");
            Ok(Response::new(pb::DeleteModelResponse { name, versions_dropped: n }))
        }
        .instrument(span)
        .await
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> Reply<pb::CommitResponse> {
        let req = req.into_inner();
        let span = rpc_span("commit", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            self.whole_only(&h, "commit")?;
            let reason = if req.reason.is_empty() { "commit".to_string() } else { format!("commit: {}", req.reason) };
            let (rec, created) = match self.coordinator(&h) {
                Some(c) => c.commit(&self.reg, &h, VersionKind::Manual, &reason).await?,
                None => on_model(&h, move |h| h.commit(VersionKind::Manual, &reason, &req.request_id)).await?,
            };
            Ok(Response::new(pb::CommitResponse { version: Some(version_info(&h, &rec)), created }))
        }
        .instrument(span)
        .await
    }

    async fn list_versions(&self, req: Request<pb::ModelRef>) -> Reply<pb::ListVersionsResponse> {
        let name = req.into_inner().name;
        let span = rpc_span("list_versions", &name);
        async move {
            let h = self.reg.get(&name)?;
            let versions = blocking(move || Ok(h.versions()?.iter().map(|v| version_info(&h, v)).collect())).await?;
            Ok(Response::new(pb::ListVersionsResponse { versions }))
        }
        .instrument(span)
        .await
    }

    async fn tag(&self, req: Request<pb::TagRequest>) -> Reply<pb::VersionInfo> {
        let req = req.into_inner();
        let span = rpc_span("tag", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            self.whole_only(&h, "tag")?;
            let rec = on_model(&h, move |h| h.tag(req.version, &req.label)).await?;
            Ok(Response::new(version_info(&h, &rec)))
        }
        .instrument(span)
        .await
    }

    async fn rollback(&self, req: Request<pb::RollbackRequest>) -> Reply<pb::VersionInfo> {
        let req = req.into_inner();
        let span = rpc_span("rollback", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            self.whole_only(&h, "rollback")?;
            let (to, reason, request) = (req.to_version, req.reason, req.request_id);
            let rec = match self.coordinator(&h) {
                Some(c) => c.rollback(&self.reg, &h, to, &reason, &request).await?,
                None => on_model(&h, move |h| h.rollback(to, &reason, &request)).await?,
            };
            tracing::info!(model = %h.name(), version = rec.version, to, epoch = rec.lineage_epoch, "rolled back");
            Ok(Response::new(version_info(&h, &rec)))
        }
        .instrument(span)
        .await
    }

    async fn report_metrics(&self, req: Request<pb::ReportMetricsRequest>) -> Reply<pb::VersionInfo> {
        let req = req.into_inner();
        let span = rpc_span("report_metrics", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            self.whole_only(&h, "metrics report")?;
            let metrics: BTreeMap<String, f64> = req.metrics.into_iter().collect();
            let rec = on_model(&h, move |h| h.report_metrics(req.version, &metrics, req.replace)).await?;
            Ok(Response::new(version_info(&h, &rec)))
        }
        .instrument(span)
        .await
    }

    type ExportStream = BoxStream<pb::ExportMessage>;

    async fn export(&self, req: Request<pb::ExportRequest>) -> Reply<Self::ExportStream> {
        let req = req.into_inner();
        let span = rpc_span("export", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            let version = req.version.unwrap_or_else(|| h.head_version());
            let (rec, params) = self.load_version(&h, version).await?;
            let params = match self.coordinator(&h) {
                Some(c) => c.gather(&self.reg, &h, version, params).await?,
                None => params,
            };
            let model = on_model(&h, info_of).await?;
            let header = pb::ExportHeader { model: Some(model), version: Some(version_info(&h, &rec)) };
            Ok(Response::new(export::stream(header, params, req.optimizer_state, self.limit)))
        }
        .instrument(span)
        .await
    }

    async fn import(&self, req: Request<Streaming<pb::ImportMessage>>) -> Reply<pb::VersionInfo> {
        let mut stream = req.into_inner();
        async move {
            let limit = self.limit;
            let header = match stream.message().await.map_err(|t| from_transport(t, limit))?.and_then(|m| m.item) {
                Some(pb::import_message::Item::Header(h)) => h,
                _ => return Err(ServiceError::Invalid("an import starts with an ImportHeader message".into()).into()),
            };
            tracing::Span::current().record("model", header.model.as_str());
            let h = self.reg.get(&header.model)?;
            let permit = self.heavy().await?;
            let at = match header.at_version {
                0 => {
                    self.whole_only(&h, "import")?;
                    crate::model::At::default()
                }
                _ if h.spec().partition == 0 => {
                    let msg = format!("import into model {:?}: at_version is only for a partition's share", h.name());
                    return Err(ServiceError::Invalid(msg).into());
                }
                version => crate::model::At { version, epoch: header.lineage_epoch },
            };
            // A partitioned model's home takes the whole model's parameters and splits them.
            let coordinator = self.coordinator(&h);
            let empty = match coordinator {
                Some(_) => accrete_core::Params::zeros(&crate::cluster::whole_spec(&h.spec().whole())),
                None => h.empty_params(),
            };
            let mut filler = ImportFiller::new(empty, h.name());
            while let Some(msg) = stream.message().await.map_err(|t| from_transport(t, limit))? {
                self.check_size(|| format!("import chunk for model {:?}", header.model), msg.encoded_len())?;
                match msg.item {
                    Some(pb::import_message::Item::Chunk(c)) => filler.add(&c)?,
                    _ => {
                        let e = ServiceError::Invalid("only TensorChunk messages may follow the ImportHeader".into());
                        return Err(e.into());
                    }
                }
            }
            let params = filler.finish()?;
            let rec = match coordinator {
                Some(c) => {
                    // the partitions' shares take permits on their servers: holding one
                    // here while waiting for them could deadlock two homes importing
                    // into each other's partitions
                    drop(permit);
                    c.import(&self.reg, &h, params, &header.source, &header.request_id).await?
                }
                None => on_model(&h, move |h| h.import_at(params, &header.source, &header.request_id, at)).await?,
            };
            tracing::info!(model = %h.name(), version = rec.version, "imported");
            Ok(Response::new(version_info(&h, &rec)))
        }
        .instrument(rpc_span("import", ""))
        .await
    }

    type WatchVersionsStream = BoxStream<pb::VersionEvent>;

    async fn watch_versions(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchVersionsStream> {
        let req = req.into_inner();
        let span = rpc_span("watch_versions", &req.model);
        async move {
            let rx = self.reg.subscribe();
            let models = if req.model.is_empty() { self.reg.list() } else { vec![self.reg.get(&req.model)?] };
            let backlog = match req.after_version {
                Some(after) => blocking(move || watch::backlog(&models, after)).await?,
                None => watch::Backlog::default(),
            };
            Ok(Response::new(watch::stream(rx, backlog, req.model, self.reg.stopping())))
        }
        .instrument(span)
        .await
    }
}
