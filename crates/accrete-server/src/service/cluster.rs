//! The `Cluster` service: the cluster's map for clients, and the calls between servers
//! (creating a partition, the two phases of a global commit, ending a hold).
use super::{blocking, info_of, rpc_span, version_info, Reply, Service};
use crate::error::ServiceError;
use crate::model::At;
use accrete_core::cluster::CutOrder;
use accrete_core::{InputSignature, ModelSpec};
use accrete_proto::v1 as pb;
use accrete_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response};
use tracing::Instrument;

#[tonic::async_trait]
impl Cluster for Service {
    async fn get_cluster_map(&self, _: Request<pb::ClusterMapRequest>) -> Reply<pb::ClusterMap> {
        let map = match self.reg.cluster() {
            Some(c) => pb::ClusterMap { servers: c.map.servers.clone(), me: c.map.me as u32, epoch: c.map.epoch },
            // a server of its own: clients keep the URL they have
            None => pb::ClusterMap { servers: vec![], me: 0, epoch: 0 },
        };
        Ok(Response::new(map))
    }

    async fn create_partition(&self, req: Request<pb::CreateModelRequest>) -> Reply<pb::ModelInfo> {
        let pb::CreateModelRequest { spec, request_id, signature } = req.into_inner();
        let span = rpc_span("create_partition", spec.as_ref().map_or("", |s| &s.name));
        async move {
            let spec = spec.ok_or_else(|| ServiceError::Invalid("spec is required".into()))?;
            let spec = ModelSpec::try_from(spec).map_err(ServiceError::from)?;
            if spec.partition == 0 {
                return Err(ServiceError::Invalid(format!("{:?} is not a partition's spec", spec.name)).into());
            }
            let reg = self.reg.clone();
            let info = blocking(move || {
                let signature = signature.map(InputSignature::from).filter(|s| !s.is_empty());
                info_of(&*reg.create(spec, &request_id, signature)?)
            })
            .await?;
            Ok(Response::new(info))
        }
        .instrument(span)
        .await
    }

    async fn hold(&self, req: Request<pb::HoldRequest>) -> Reply<pb::HoldReport> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        Ok(Response::new((&h.hold(req.commit)?).into()))
    }

    async fn commit_cut(&self, req: Request<pb::CutRequest>) -> Reply<pb::VersionInfo> {
        let order = CutOrder::try_from(req.into_inner()).map_err(ServiceError::from)?;
        let span = rpc_span("commit_cut", &order.model);
        async move {
            let h = self.reg.get(&order.model)?;
            let rec = h.commit_cut(order).await?;
            Ok(Response::new(version_info(&h, &rec)))
        }
        .instrument(span)
        .await
    }

    async fn install(&self, req: Request<pb::InstallRequest>) -> Reply<pb::VersionInfo> {
        let req = req.into_inner();
        let span = rpc_span("install", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            let at = At { version: req.at_version, epoch: req.lineage_epoch };
            let (to, reason, rewind) = (req.to_version, req.reason, req.rewind);
            let rec = super::on_model(&h, move |h| h.install_version(to, at, &reason, rewind, "")).await?;
            Ok(Response::new(version_info(&h, &rec)))
        }
        .instrument(span)
        .await
    }

    async fn retain(&self, req: Request<pb::RetainRequest>) -> Reply<pb::RetainResponse> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        if h.spec().partition == 0 {
            let msg = format!("model {:?} keeps its own versions: it is not a partition i > 0", req.model);
            return Err(crate::error::ServiceError::Invalid(msg).into());
        }
        let dropped = blocking(move || h.retain_listed(&req.keep)).await?;
        Ok(Response::new(pb::RetainResponse { dropped: dropped as u64 }))
    }

    async fn drop_partition(&self, req: Request<pb::ModelRef>) -> Reply<pb::DeleteModelResponse> {
        let name = req.into_inner().name;
        let span = rpc_span("drop_partition", &name);
        async move {
            if accrete_core::spec::partition_of_name(&name) == 0 {
                return Err(ServiceError::Invalid(format!("{name:?} is not a partition i > 0 (NAME#i)")).into());
            }
            let (reg, model) = (self.reg.clone(), name.clone());
            let n = blocking(move || reg.delete(&model)).await?;
            tracing::info!(model = %name, versions = n, "partition dropped (its model is being deleted)");
            Ok(Response::new(pb::DeleteModelResponse { name, versions_dropped: n }))
        }
        .instrument(span)
        .await
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Reply<pb::ReleaseResponse> {
        let req = req.into_inner();
        self.reg.get(&req.model)?.release(req.commit, req.made);
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}
