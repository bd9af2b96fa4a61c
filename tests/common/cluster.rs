//! A cluster of real `accrete server` processes with `--peers` on loopback ports, each on
//! its own data dir: killed with -9 and restarted on the same port and dir, with the CLI
//! (`--json`) run against any of them and the flights data dealt into shards.
use super::data::{labelled_flights, shuffle, write_csv};
use super::procs::BIN;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The flights columns the scenarios train on: one numeric input (its `norm` statistics
/// count every row the model took in) and hashed categoricals with crosses.
pub const COLS: [&str; 8] = [
    "--label",
    "arr_delay>15",
    "--numeric",
    "distance",
    "--categorical",
    "carrier,origin,dest,month,day,hour,tailnum,flight",
    "--cross",
    "carrier:hour,origin:dest",
];

/// Servers of one cluster (`--peers` names them all), their data dirs and logs.
pub struct Cluster {
    pub dir: PathBuf,
    /// `127.0.0.1:PORT` of each server, as `--peers` lists them.
    pub addrs: Vec<String>,
    procs: Vec<Option<Child>>,
}

impl Cluster {
    /// Starts `n` servers on free ports, data dirs under `dir`, and waits until each answers.
    pub fn start(dir: &Path, n: usize) -> Cluster {
        let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let addrs = held.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
        drop(held);
        let mut c = Cluster { dir: dir.to_path_buf(), addrs, procs: (0..n).map(|_| None).collect() };
        for i in 0..n {
            c.restart(i);
        }
        c
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.addrs.len()).map(|i| self.url(i)).collect()
    }

    /// The index of the server at `host:port`.
    pub fn index_of(&self, addr: &str) -> usize {
        self.addrs.iter().position(|a| a == addr).unwrap_or_else(|| panic!("{addr} is not one of {:?}", self.addrs))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("server-{i}.log"))
    }

    /// Starts server `i` (again) on its port and data dir; waits until it answers. Its
    /// stderr is appended to its log, so the runs before a kill stay readable.
    pub fn restart(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "server {i} is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        let mut child = Command::new(BIN)
            .args(["server", "--listen", &self.addrs[i], "--data-dir"])
            .arg(self.dir.join(format!("data-{i}")))
            .args(["--peers", &self.addrs.join(",")])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        self.procs[i] = Some(child);
        assert!(first.starts_with("accrete server listening on "), "server {i} said {first:?}: {}", self.log(i));
        std::thread::spawn(move || lines.for_each(drop));
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.addrs[i]).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "server {i} does not answer: {}", self.log(i));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of server `i` (`Child::kill` is SIGKILL), reaped.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.procs[i].take().unwrap_or_else(|| panic!("server {i} is not running"));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The end of every server's log (for a failing assertion's message).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.addrs.len() {
            let text = self.log(i);
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out += &format!("\n---- server {i} ({}), last lines:\n", self.addrs[i]);
            tail.iter().rev().for_each(|l| {
                out += l;
                out.push('\n')
            });
        }
        out
    }

    /// `host:port` of the server of each partition of `model`, in partition order, as
    /// `model show --json` through server 0 lists them.
    pub fn partitions(&self, model: &str) -> Vec<String> {
        let show = json(&self.url(0), &["model", "show", model]);
        let parts = show["partitions"].as_array().unwrap_or_else(|| panic!("no partitions: {show}"));
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                assert_eq!(p["index"].as_u64(), Some(i as u64), "{show}");
                p["primary"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// `accrete ARGS --json --server URL` (riding out an outage for 10 s at most).
pub fn run_json(url: &str, args: &[&str]) -> Output {
    Command::new(BIN).args(args).args(["--json", "--reconnect-secs", "10", "--server", url]).output().unwrap()
}

/// [`run_json`] parsed, failing the test with stderr when the command fails.
pub fn json(url: &str, args: &[&str]) -> Value {
    let out = run_json(url, args);
    assert!(out.status.success(), "{args:?} via {url}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {:?}", out.stdout))
}

/// `model versions NAME --json` through `url`.
pub fn versions(url: &str, model: &str) -> Vec<Value> {
    json(url, &["model", "versions", model]).as_array().unwrap().clone()
}

/// A worker process training `shard` (stdout and stderr to `NAME.out`/`.err` in `dir`).
pub fn spawn_worker(url: &str, dir: &Path, model: &str, id: &str, shard: &Path, extra: &[&str]) -> Child {
    let out = std::fs::File::create(dir.join(format!("{id}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{id}.err"))).unwrap();
    Command::new(BIN)
        .args(["worker", "--model", model, "--worker-id", id, "--shard"])
        .arg(shard)
        .args(COLS)
        .args(extra)
        .args(["--server", url])
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

/// What a worker process wrote to `NAME.out` or `NAME.err` in `dir`.
pub fn output_of(dir: &Path, id: &str, which: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{id}.{which}"))).unwrap_or_default()
}

/// Waits (bounded) until `child` exits; its status.
pub fn exit_of(child: &mut Child, what: &str, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deals `n` shards of `rows` labelled flights rows each (shuffled with `seed`) into `dir`;
/// their paths. Shard i holds rows `i*rows..(i+1)*rows` of the shuffle.
pub fn flights_shards(dir: &Path, n: usize, rows: usize, seed: u64) -> Vec<PathBuf> {
    let (header, mut all) = labelled_flights();
    shuffle(&mut all, seed);
    (0..n)
        .map(|i| {
            let path = dir.join(format!("shard-{i}.csv"));
            write_csv(&path, &header, &all[i * rows..(i + 1) * rows]);
            path
        })
        .collect()
}

/// The tensors of a safetensors file (weights and slots by their stored names) as f32s,
/// and its `__metadata__`.
pub fn read_safetensors(path: &Path) -> (Vec<(String, Vec<f32>)>, Value) {
    let body = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&body[8..8 + n]).unwrap();
    let mut tensors = Vec::new();
    for (name, e) in header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__") {
        let [a, b] = [0, 1].map(|i| e["data_offsets"][i].as_u64().unwrap() as usize + 8 + n);
        let values = body[a..b].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        tensors.push((name.clone(), values));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    (tensors, header["__metadata__"].clone())
}

/// The versions of the local model `name` (`NAME#i` is partition i) on the server at
/// `addr` alone, through the generated stubs: the routed client sends every `NAME#i` to
/// `NAME`'s home instead.
pub async fn local_versions(addr: &str, name: &str) -> Vec<accrete_proto::v1::VersionInfo> {
    let mut raw = accrete_client::raw::RawClient::connect(&format!("http://{addr}")).await.unwrap();
    let req = accrete_proto::v1::ModelRef { name: name.into() };
    let r = raw.models.list_versions(req).await.unwrap_or_else(|e| panic!("versions of {name} on {addr}: {e}"));
    r.into_inner().versions
}

/// The live state of the local model `name` on the server at `addr` alone.
pub async fn local_info(addr: &str, name: &str) -> accrete_proto::v1::ModelInfo {
    let mut raw = accrete_client::raw::RawClient::connect(&format!("http://{addr}")).await.unwrap();
    let req = accrete_proto::v1::ModelRef { name: name.into() };
    raw.models.get_model_info(req).await.unwrap_or_else(|e| panic!("info of {name} on {addr}: {e}")).into_inner()
}
