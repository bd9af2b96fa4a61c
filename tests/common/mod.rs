//! Shared helpers of the cluster scenarios: a real server on `127.0.0.1:0` with a real
//! sled database in a temp dir, and small wire helpers.
#![allow(dead_code)]
pub mod cluster;
pub mod data;
pub mod procs;

/// Tests that need a tool beyond the Rust toolchain (headless Chromium, Python with grpcio)
/// skip with a message when it is missing, unless `ACCRETE_REQUIRE_EXTERNAL` is set, as
/// `.ci/run` does: there a missing tool fails the test.
pub fn missing_tool(what: &str) {
    if std::env::var_os("ACCRETE_REQUIRE_EXTERNAL").is_some() {
        panic!("{what} is required (ACCRETE_REQUIRE_EXTERNAL is set)");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let line = format!("SKIPPED: {test} ran nothing ({what} is not installed; .ci/run installs it) and shows as ok\n");
    // The harness captures a passing test's output: write to the process's own stderr,
    // so the skip reaches the terminal beside the test's "ok".
    // (a duplicate of fd 2 shares its offset, so a redirected log keeps the line)
    use std::io::Write;
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => drop(std::fs::File::from(fd).write_all(line.as_bytes())),
        Err(_) => eprint!("{line}"),
    }
}

use accrete_client::raw::RawClient;
use accrete_client::Client;
use accrete_proto::v1 as pb;
use accrete_proto::v1::models_client::ModelsClient;
use accrete_proto::v1::parameters_client::ParametersClient;
use std::path::PathBuf;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestServer {
    pub url: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), accrete_server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = TestServer::start_in(dir, 64 << 20).await;
        s._tmp = Some(tmp);
        s
    }

    /// Binds first, then hands the listener to the server: no port race.
    pub async fn start_in(dir: PathBuf, max_message_bytes: usize) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel();
        let config = accrete_server::ServerConfig { max_message_bytes, ..accrete_server::ServerConfig::new(&dir) };
        let task = tokio::spawn(accrete_server::run(config, listener, async {
            let _ = rx.await;
        }));
        TestServer { url, dir, _tmp: None, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> Conn {
        for _ in 0..100 {
            if let Ok(c) = connect(&self.url).await {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server at {} did not answer", self.url)
    }

    /// Graceful stop; returns the temp dir so the data can be reopened.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        self._tmp.take()
    }
}

/// A connection for tests of the wire contract: the generated stubs (`models`, `params`)
/// and the typed client of the roles (`typed`).
#[derive(Clone)]
pub struct Conn {
    pub models: ModelsClient<Channel>,
    pub params: ParametersClient<Channel>,
    pub typed: Client,
}

pub async fn connect(url: &str) -> Result<Conn, accrete_client::ClientError> {
    let RawClient { models, params, .. } = RawClient::connect(url).await?;
    Ok(Conn { models, params, typed: Client::connect(url).await? })
}

pub fn linear(name: &str, features: u32, optimizer: pb::OptimizerKind, lr: f32) -> pb::ModelSpec {
    pb::ModelSpec {
        name: name.into(),
        kind: pb::ModelKind::Linear as i32,
        features,
        optimizer: Some(pb::OptimizerSpec { kind: optimizer as i32, lr, ..Default::default() }),
        // no commit policy (all rules off): the scenarios commit when they mean to; a
        // model without `commit` gets the default policy (a version every 10 s)
        commit: Some(pb::CommitPolicy::default()),
        ..Default::default()
    }
}

pub async fn create(c: &mut Conn, spec: pb::ModelSpec) -> pb::ModelInfo {
    c.models.create_model(pb::CreateModelRequest { spec: Some(spec), ..Default::default() }).await.unwrap().into_inner()
}

pub fn dense(tensor: &str, offset: u64, values: &[f32]) -> pb::TensorChunk {
    pb::TensorChunk {
        tensor: tensor.into(),
        offset,
        values: accrete_proto::f32s_to_bytes(values),
        ..Default::default()
    }
}

pub fn rows(tensor: &str, keys: &[u64], values: &[f32]) -> pb::TensorChunk {
    pb::TensorChunk {
        tensor: tensor.into(),
        keys: accrete_proto::keys_to_bytes(keys),
        values: accrete_proto::f32s_to_bytes(values),
        ..Default::default()
    }
}

pub fn push_req(model: &str, epoch: u64, grads: Vec<pb::TensorChunk>) -> pb::PushRequest {
    pb::PushRequest { model: model.into(), lineage_epoch: epoch, grads, meta: None }
}

/// The whole live model, tensor by tensor, as f32 values.
pub async fn pull_all(c: &mut Conn, model: &str, version: Option<u64>) -> (pb::PullResponse, Vec<(String, Vec<f32>)>) {
    let r = c
        .params
        .pull(pb::PullRequest { model: model.into(), version, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let t = r.tensors.iter().map(|t| (t.tensor.clone(), accrete_proto::bytes_to_f32s(&t.values).unwrap())).collect();
    (r, t)
}

pub async fn tensor(c: &mut Conn, model: &str, name: &str) -> Vec<f32> {
    pull_all(c, model, None).await.1.into_iter().find(|(n, _)| n == name).unwrap().1
}

pub async fn versions(c: &mut Conn, model: &str) -> Vec<pb::VersionInfo> {
    c.models.list_versions(pb::ModelRef { name: model.into() }).await.unwrap().into_inner().versions
}

pub async fn commit(c: &mut Conn, model: &str) -> pb::VersionInfo {
    c.models
        .commit(pb::CommitRequest { model: model.into(), reason: String::new(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
}
