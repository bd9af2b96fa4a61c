//! `deploy/docker-compose.yml` run as local processes: its three servers, the create-model
//! job, the two workers and the evaluator, each with the command line the file gives it
//! (service names mapped to `127.0.0.1` ports, container paths to temp files made from the
//! flights data, `--follow` dropped so the workers finish), and the cluster they form
//! trains the model: every server lists the same versions, over three partitions. The
//! create-model job also runs again, as compose runs it on every `up`.
mod common;
mod compose;

use common::data::{labelled_flights, shuffle, write_csv};
use common::procs::BIN;
use compose::Service;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Training rows (dealt into the compose file's two shards) and holdout rows.
const TRAIN_ROWS: usize = 20_000;
const HOLDOUT_ROWS: usize = 5_000;
/// Bounds on waiting, never on speed: a wait that runs out fails with the logs.
const PATIENCE: Duration = Duration::from_secs(240);

/// The running processes; all are killed when it drops, and a failing test prints the
/// end of each one's log.
#[derive(Default)]
struct Procs(Vec<(String, Child, PathBuf)>);

impl Procs {
    fn push(&mut self, name: &str, child: Child, log: PathBuf) {
        self.0.push((name.to_string(), child, log));
    }

    fn get(&mut self, name: &str) -> &mut Child {
        &mut self.0.iter_mut().find(|(n, ..)| n == name).unwrap().1
    }

    /// Kills every process started after the first `keep`.
    fn stop_after(&mut self, keep: usize) {
        for (_, child, _) in &mut self.0[keep..] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self, name: &str) -> String {
        let (.., log) = self.0.iter().find(|(n, ..)| n == name).unwrap();
        std::fs::read_to_string(log).unwrap_or_default()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child, log) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {name} (last lines of {}):", log.display());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

/// Where the compose file's names point on this machine.
struct Host {
    dir: PathBuf,
    /// `server-N:50051` → `127.0.0.1:PORT`
    servers: Vec<(String, String)>,
}

impl Host {
    /// One argument of a command line (or an environment value) as it runs here.
    fn map(&self, service: &str, arg: &str) -> String {
        let mut arg = arg.to_string();
        for (name, addr) in &self.servers {
            arg = arg.replace(name.as_str(), addr);
        }
        if arg == "0.0.0.0:50051" {
            // the server's own listen address: the port its name maps to
            arg = self.servers.iter().find(|(n, _)| n.starts_with(&format!("{service}:"))).unwrap().1.clone();
        } else if let Some(port) = arg.strip_prefix("0.0.0.0:") {
            assert!(port.parse::<u16>().is_ok(), "{service}: {arg}");
            arg = "127.0.0.1:0".into();
        }
        // the container paths of the volumes
        let mounts =
            [("/data", format!("data-{service}")), ("/shards", "shards".into()), ("/holdout", "holdout".into())];
        if arg.starts_with('/') {
            let (from, to) = mounts
                .iter()
                .find(|(from, _)| arg == *from || arg.starts_with(&format!("{from}/")))
                .unwrap_or_else(|| panic!("{service}: no host path for {arg}"));
            arg = format!("{}{}", self.dir.join(to).display(), &arg[from.len()..]);
        }
        arg
    }

    /// The service's command as it runs here (without `--follow`: the workers finish).
    fn command(&self, s: &Service) -> Command {
        let mut c = Command::new(BIN);
        c.args(s.command.iter().filter(|a| *a != "--follow").map(|a| self.map(&s.name, a)));
        for (k, v) in &s.env {
            c.env(k, self.map(&s.name, v));
        }
        c
    }

    /// `http://` of the server of this compose name.
    fn url(&self, name: &str) -> String {
        format!("http://{}", self.servers.iter().find(|(n, _)| n.starts_with(&format!("{name}:"))).unwrap().1)
    }

    fn log(&self, name: &str) -> (PathBuf, Stdio, Stdio) {
        let path = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&path).unwrap();
        (path, f.try_clone().unwrap().into(), f.into())
    }
}

/// Ports nobody listens on now (the peers list must name them before any server starts).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// The shards (as `accrete split` writes them, as the compose file's header says) and the
/// holdout, from shuffled flights.
fn data(dir: &Path) {
    let (header, mut rows) = labelled_flights();
    shuffle(&mut rows, 7);
    let train = dir.join("train.csv");
    write_csv(&train, &header, &rows[..TRAIN_ROWS]);
    std::fs::create_dir_all(dir.join("holdout")).unwrap();
    write_csv(&dir.join("holdout/holdout.csv"), &header, &rows[TRAIN_ROWS..TRAIN_ROWS + HOLDOUT_ROWS]);
    let out = Command::new(BIN)
        .args(["split", "--input", train.to_str().unwrap(), "--shards", "2", "--out"])
        .arg(dir.join("shards"))
        .output()
        .unwrap();
    assert!(out.status.success(), "split: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts a server and waits until its port answers.
fn start_server(host: &Host, s: &Service, procs: &mut Procs) {
    let (log, _, err) = host.log(&s.name);
    let mut child = host.command(s).stdout(Stdio::piped()).stderr(err).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    procs.push(&s.name, child, log);
    assert!(first.starts_with("accrete server listening on "), "{}: said {first:?}", s.name);
    std::thread::spawn(move || lines.for_each(drop));
    let addr = host.url(&s.name).trim_start_matches("http://").to_string();
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(start.elapsed() < PATIENCE, "{} does not answer on {addr}", s.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a service to completion as compose runs one with `restart: on-failure`: again
/// after a failure, a few times.
fn run_job(host: &Host, s: &Service) -> String {
    let mut last = String::new();
    for _ in 0..5 {
        let out = host.command(s).output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{} failed five times; last: {last}", s.name);
}

/// `accrete ARGS --server URL --json` parsed.
fn json(url: &str, args: &[&str]) -> serde_json::Value {
    let out =
        Command::new(BIN).args(args).args(["--json", "--reconnect-secs", "10", "--server", url]).output().unwrap();
    assert!(out.status.success(), "{args:?} via {url}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The versions of `flights` (numbers, kinds, updates, scores) through one server.
fn versions(url: &str) -> Vec<serde_json::Value> {
    json(url, &["model", "versions", "flights"]).as_array().unwrap().clone()
}

fn numbers(vs: &[serde_json::Value]) -> Vec<u64> {
    vs.iter().map(|v| v["version"].as_u64().unwrap()).collect()
}

/// The compose file's services and its servers running here, each on its own port and
/// data dir (the temp dir also gets the data the clients read).
fn start_cluster(dir: &Path) -> (Vec<Service>, Host, Procs) {
    let services = compose::deploy_services();
    let names: Vec<String> = services.iter().filter(|s| s.role() == "server").map(|s| s.name.clone()).collect();
    assert_eq!(names.len(), 3, "compose runs 3 servers");
    let ports = free_ports(names.len());
    let host = Host {
        dir: dir.to_path_buf(),
        servers: names.iter().zip(&ports).map(|(n, p)| (format!("{n}:50051"), format!("127.0.0.1:{p}"))).collect(),
    };
    let mut procs = Procs::default();
    for s in services.iter().filter(|s| s.role() == "server") {
        start_server(&host, s, &mut procs);
    }
    (services, host, procs)
}

/// The `http://` URLs of the servers, in compose order.
fn urls(host: &Host) -> Vec<String> {
    host.servers.iter().map(|(_, a)| format!("http://{a}")).collect()
}

fn service<'a>(services: &'a [Service], name: &str) -> &'a Service {
    services.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name}"))
}

#[test]
fn the_compose_cluster_trains_a_partitioned_model() {
    let tmp = tempfile::tempdir().unwrap();
    data(tmp.path());
    let (services, host, mut procs) = start_cluster(tmp.path());
    let servers = host.servers.len();
    run_job(&host, service(&services, "create-model"));

    let clients: Vec<&Service> = services.iter().filter(|s| ["worker", "evaluator"].contains(&s.role())).collect();
    assert_eq!(clients.len(), 3, "two workers and an evaluator");
    for s in &clients {
        let (log, out, err) = host.log(&s.name);
        procs.push(&s.name, host.command(s).stdout(out).stderr(err).spawn().unwrap(), log);
    }
    // the workers read their shard once and exit
    let start = Instant::now();
    for s in clients.iter().filter(|s| s.role() == "worker") {
        let status = loop {
            if let Some(status) = procs.get(&s.name).try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < PATIENCE, "{} did not finish", s.name);
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{} failed ({status}): {}", s.name, procs.log(&s.name));
    }

    // the evaluator scores the versions the workers' commits made
    let urls = urls(&host);
    let evaluator = clients.iter().find(|s| s.role() == "evaluator").unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = procs.get(&evaluator.name).try_wait().unwrap() {
            panic!("the evaluator exited ({status}): {}", procs.log(&evaluator.name));
        }
        let vs = versions(&urls[0]);
        let mut trained = vs.iter().filter(|v| v["updates"].as_u64() > Some(0)).peekable();
        if trained.peek().is_some() && trained.all(|v| v["metrics"].get("auc").is_some()) {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the evaluator did not score the trained versions: {vs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    procs.stop_after(servers); // the clients stop; the servers stay

    let vs = versions(&urls[0]);
    for v in &vs {
        let auc = v["metrics"].get("auc").and_then(|a| a.as_f64());
        eprintln!("version {} {} updates {} auc {auc:?}", v["version"], v["kind"], v["updates"]);
    }
    assert!(vs.len() >= 2, "versions {:?}", numbers(&vs));
    for url in &urls[1..] {
        assert_eq!(numbers(&versions(url)), numbers(&vs), "the versions through {url}");
    }
    // the head holds every row both workers read
    let head = vs.iter().max_by_key(|v| v["version"].as_u64()).unwrap();
    let rows: u64 = head["workers"].as_array().unwrap().iter().map(|w| w["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, TRAIN_ROWS as u64, "rows in the head version: {head}");

    let mut addrs: Vec<&str> = host.servers.iter().map(|(_, a)| a.as_str()).collect();
    addrs.sort();
    for url in &urls {
        let show = json(url, &["model", "show", "flights"]);
        let parts = show["partitions"].as_array().unwrap_or_else(|| panic!("no partitions: {show}"));
        let mut on: Vec<&str> = parts.iter().map(|p| p["primary"].as_str().unwrap()).collect();
        on.sort();
        assert_eq!(on, addrs, "the 3 partitions through {url} are not one on each server: {show}");
    }
}

/// compose runs create-model again on every `up` (and after a failure): `--if-absent`
/// makes a second run find the model and succeed, whichever server it starts at.
#[test]
fn the_create_model_job_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (services, host, _procs) = start_cluster(tmp.path());
    let create = service(&services, "create-model");
    run_job(&host, create);
    let out = host.command(create).output().unwrap();
    assert!(out.status.success(), "create-model run again: {}", String::from_utf8_lossy(&out.stderr));
    let urls = urls(&host);
    assert_eq!(numbers(&versions(&urls[0])), [1], "a second run created nothing");
}
