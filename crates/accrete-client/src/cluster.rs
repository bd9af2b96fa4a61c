//! The cluster as a client sees it: the map of its servers, fetched once from the server
//! the client connects to (as Kafka and Redis Cluster clients do), the client of each
//! server, and the calls between servers of a global commit. Model calls go to the
//! model's home (partition 0's server, [`accrete_core::partition::servers_of`]); pulls
//! and pushes go to each partition's server (`split.rs`).
use crate::retry::retried;
use crate::split::Plan;
use crate::{Client, ClientError, Result};
use accrete_core::cluster::{CutOrder, HoldReport};
use accrete_core::partition::server_of;
use accrete_core::spec::{base_name, partition_of_name};
use accrete_core::{InputSignature, ModelInfo, ModelSpec, VersionRecord};
use accrete_proto::v1 as pb;
use std::sync::Mutex;

/// The servers of a cluster, as one of them answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// `host:port`, sorted: every server and client index it the same way.
    pub servers: Vec<String>,
    /// The index of the server that answered.
    pub me: usize,
    pub epoch: u64,
}

/// The map and a client per server, connected on first use.
#[derive(Debug)]
pub(crate) struct Routes {
    pub view: ClusterView,
    peers: Mutex<Vec<Option<Client>>>,
    /// Each model's partition plan, once looked up (`None`: one partition).
    plans: Mutex<std::collections::HashMap<String, Option<Plan>>>,
}

impl Routes {
    pub fn new(view: ClusterView) -> Routes {
        let n = view.servers.len();
        Routes { view, peers: Mutex::new(vec![None; n]), plans: Mutex::default() }
    }
}

impl Client {
    /// Asks the server for the cluster's map (a server that predates clusters, or one
    /// started without `--peers`, is a cluster of itself).
    pub async fn cluster_map(&mut self) -> Result<ClusterView> {
        match retried!(self, cluster, get_cluster_map, pb::ClusterMapRequest {}) {
            Ok(m) => Ok(ClusterView {
                me: (m.me as usize).min(m.servers.len().saturating_sub(1)),
                servers: m.servers,
                epoch: m.epoch,
            }),
            Err(ClientError::Server { code: "UNIMPLEMENTED", .. }) => {
                let me = self.url.trim_start_matches("http://").trim_start_matches("https://").to_string();
                Ok(ClusterView { servers: vec![me], me: 0, epoch: 0 })
            }
            Err(e) => Err(e),
        }
    }

    /// The cluster this client routes over (`None`: one server).
    pub fn cluster(&self) -> Option<&ClusterView> {
        self.routes.as_ref().map(|r| &r.view)
    }

    /// A client for the cluster `view` from one of its servers (a server reaching its
    /// peers): it connects to each on first use and rides out outages for `patience`.
    pub fn of_cluster(view: ClusterView, patience: std::time::Duration) -> Result<Client> {
        let Some(me) = view.servers.get(view.me) else {
            let n = view.servers.len();
            return Err(ClientError::Protocol(format!("a cluster map of {n} servers has no server {}", view.me)));
        };
        let mut c = Client::lazy_patient(&format!("http://{me}"), patience)?;
        c.routes = Some(std::sync::Arc::new(Routes::new(view)));
        Ok(c)
    }

    /// The client of server `i` of the cluster (this client for its own server). Its calls
    /// are not routed further.
    pub fn peer(&self, i: usize) -> Client {
        let Some(routes) = &self.routes else { return self.unrouted() };
        if i == routes.view.me {
            return self.unrouted();
        }
        let mut peers = routes.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &peers[i] {
            return c.clone();
        }
        let url = format!("http://{}", routes.view.servers[i]);
        let c = Client::lazy_patient(&url, self.patience()).unwrap_or_else(|_| self.unrouted());
        peers[i] = Some(c.clone());
        c
    }

    /// This client without its routes: calls go to its own server.
    pub(crate) fn unrouted(&self) -> Client {
        Client { routes: None, ..self.clone() }
    }

    /// The client of the server that holds partition `part` of a model of `parts`.
    pub fn partition_server(&self, model: &str, part: u32, parts: u32) -> (usize, Client) {
        let n = self.cluster().map_or(1, |v| v.servers.len());
        let i = server_of(base_name(model), part.min(parts.saturating_sub(1)), n);
        (i, self.peer(i))
    }

    /// The client of `model`'s home when that is another server than this client's: the
    /// server of partition 0, or of partition i for a partition's local name `NAME#i`
    /// (a call about one partition alone).
    pub(crate) fn home(&self, model: &str) -> Option<Client> {
        let routes = self.routes.as_ref()?;
        let i = server_of(base_name(model), partition_of_name(model), routes.view.servers.len());
        (i != routes.view.me).then(|| self.peer(i))
    }

    /// How `model` is split (`None`: one partition), asked of its home once.
    pub(crate) async fn plan_of(&mut self, model: &str) -> Result<Option<Plan>> {
        let Some(routes) = self.routes.clone() else { return Ok(None) };
        if let Some(p) = routes.plans.lock().unwrap_or_else(|e| e.into_inner()).get(model) {
            return Ok(p.clone());
        }
        let plan = Plan::of(&self.model_info(model).await?.spec);
        routes.plans.lock().unwrap_or_else(|e| e.into_inner()).insert(model.to_string(), plan.clone());
        Ok(plan)
    }

    /// `host:port` of server `i` (for errors that name it).
    pub fn server_name(&self, i: usize) -> String {
        match &self.routes {
            Some(r) => r.view.servers.get(i).cloned().unwrap_or_default(),
            None => self.url.trim_start_matches("http://").to_string(),
        }
    }

    // ------------------------------------------------------------ between servers

    /// Creates one partition's local model (a call between servers).
    pub async fn create_partition(
        &mut self,
        spec: &ModelSpec,
        request: &str,
        signature: Option<&InputSignature>,
    ) -> Result<ModelInfo> {
        let req = || pb::CreateModelRequest {
            spec: Some(spec.into()),
            request_id: request.to_string(),
            signature: signature.map(Into::into),
        };
        Ok(retried!(self, cluster, create_partition, req())?.try_into()?)
    }

    /// The first phase of a global commit on one partition: hold pushes, report.
    pub async fn hold(&mut self, model: &str, commit: u64) -> Result<HoldReport> {
        let req = pb::HoldRequest { model: model.to_string(), commit };
        Ok(self.cluster.hold(req).await?.into_inner().into())
    }

    /// The second phase: apply up to the cut, write the version, release.
    pub async fn commit_cut(&mut self, order: &CutOrder) -> Result<VersionRecord> {
        Ok(self.cluster.commit_cut(pb::CutRequest::from(order)).await?.into_inner().into())
    }

    /// The exact parameters (weights and slots) of version `version` of the local model
    /// `spec` on this client's server (a partition, gathered by its model's home).
    pub async fn export_params(&mut self, spec: &ModelSpec, version: u64) -> Result<accrete_core::Params> {
        let req = pb::ExportRequest { model: spec.name.clone(), version: Some(version), optimizer_state: true };
        let mut stream = self.models.export(req).await?.into_inner();
        let mut params = accrete_core::Params::zeros(spec);
        let bad = |m: String| ClientError::Protocol(format!("export of {:?} version {version}: {m}", spec.name));
        while let Some(msg) = stream.message().await? {
            let Some(pb::export_message::Item::Chunk(c)) = msg.item else { continue };
            let t = params.tensor_index(&c.tensor).ok_or_else(|| bad(format!("unknown tensor {:?}", c.tensor)))?;
            let slot = if c.slot.is_empty() {
                None
            } else {
                Some(
                    params
                        .slot_names
                        .iter()
                        .position(|s| *s == c.slot)
                        .ok_or_else(|| bad(format!("unknown slot {:?}", c.slot)))?,
                )
            };
            let ts = &mut params.tensors[t];
            let dst = match slot {
                None => &mut ts.w,
                Some(k) => &mut ts.slots[k],
            };
            let n = c.values.len() / 4;
            let at = c.offset as usize;
            let out = dst
                .get_mut(at..at + n)
                .ok_or_else(|| bad(format!("{}.{} at {at} is out of range", c.tensor, c.slot)))?;
            for (o, v) in out.iter_mut().zip(accrete_proto::iter_f32s(&c.values)) {
                *o = v;
            }
        }
        Ok(params)
    }

    /// Installs global version `to`'s content on one partition as version `at.0` under
    /// lineage epoch `at.1` (a rollback; with `rewind`, a recovery).
    pub async fn install(
        &mut self,
        model: &str,
        to: u64,
        at: (u64, u64),
        reason: &str,
        rewind: bool,
    ) -> Result<VersionRecord> {
        let req = || pb::InstallRequest {
            model: model.to_string(),
            to_version: to,
            at_version: at.0,
            lineage_epoch: at.1,
            reason: reason.to_string(),
            rewind,
        };
        Ok(retried!(self, cluster, install, req())?.into())
    }

    /// Imports one partition's share of a partitioned model's import (`params` in the
    /// partition's layout, weights and slots) as version `at.0` of its local model, under
    /// lineage epoch `at.1`.
    pub async fn import_params(
        &mut self,
        model: &str,
        params: &accrete_core::Params,
        at: (u64, u64),
        source: &str,
    ) -> Result<VersionRecord> {
        let header = pb::ImportHeader {
            model: model.to_string(),
            source: source.to_string(),
            request_id: String::new(),
            at_version: at.0,
            lineage_epoch: at.1,
        };
        let mut msgs = vec![pb::ImportMessage { item: Some(pb::import_message::Item::Header(header)) }];
        let chunk = crate::safetensors::IMPORT_CHUNK_FLOATS;
        for t in &params.tensors {
            let slots = t.slots.iter().zip(&params.slot_names).map(|(s, n)| (&s[..], *n));
            for (values, slot) in std::iter::once((&t.w[..], "")).chain(slots) {
                for (k, piece) in values.chunks(chunk).enumerate() {
                    let c = pb::TensorChunk {
                        tensor: t.spec.name.to_string(),
                        slot: slot.to_string(),
                        offset: (k * chunk) as u64,
                        values: piece.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
                        ..Default::default()
                    };
                    msgs.push(pb::ImportMessage { item: Some(pb::import_message::Item::Chunk(c)) });
                }
            }
        }
        Ok(self.models.import(tokio_stream::iter(msgs)).await?.into_inner().into())
    }

    /// Makes a partition keep the versions its home keeps (`keep`, the home's version
    /// log); returns how many it dropped.
    pub async fn retain(&mut self, model: &str, keep: &[u64]) -> Result<u64> {
        let req = pb::RetainRequest { model: model.to_string(), keep: keep.to_vec() };
        Ok(self.cluster.retain(req).await?.into_inner().dropped)
    }

    /// Drops partition i > 0 of a partitioned model (its local model `NAME#i`): the first
    /// step of the model's delete. Returns how many versions it dropped.
    pub async fn drop_partition(&mut self, model: &str) -> Result<u64> {
        let req = pb::ModelRef { name: model.to_string() };
        Ok(self.cluster.drop_partition(req).await?.into_inner().versions_dropped)
    }

    /// Ends a hold: the commit `made`, or aborted.
    pub async fn release(&mut self, model: &str, commit: u64, made: bool) -> Result<()> {
        let req = pb::ReleaseRequest { model: model.to_string(), commit, made };
        self.cluster.release(req).await?;
        Ok(())
    }
}
