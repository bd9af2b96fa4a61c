//! The Python client against real servers: its example (a numpy training loop, then
//! predictions, a rollback, a watch, and a fenced older incarnation) against one server;
//! and its routing over a cluster of three `accrete server --peers` processes, where a
//! model in three partitions made by the CLI is trained by `cluster_example.py` given one
//! server that is not the model's home, then checked through the CLI: the same versions
//! through every server, every partition's updates, the CLI's predictions equal to the
//! Python client's, a push of partition 0's rows counted on every partition, and a down
//! partition's server named in the error. Needs a Python with grpcio, grpcio-tools and
//! numpy: `ACCRETE_PYTHON` names it (`.ci/run` makes one), else `python3`.
mod common;

use accrete_core::partition::{Partitioning, Placement};
use common::procs::{ok, spawn_server, spawn_server_at};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The Python to run, or `None` (the test is skipped) without the packages it needs.
fn python() -> Option<String> {
    let python = std::env::var("ACCRETE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ready = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        common::missing_tool(&format!("{python} with grpcio, grpcio-tools and numpy"));
        return None;
    }
    Some(python)
}

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../accrete-python")
}

/// Runs `python ARGS` beside the client; returns stdout, failing the test with both
/// streams when it fails.
fn run_python(python: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python).args(args).current_dir(client_dir()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{python} {:?} failed:\n{stdout}\n{stderr}", args.first());
    stdout.into_owned()
}

#[tokio::test]
async fn the_python_example_trains_against_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let Some(python) = python() else { return };
    let stdout = run_python(&python, &["example.py", "--server", &s.url]);
    assert!(stdout.contains("learned w within"), "{stdout}");
    assert!(stdout.contains("head 7 (policy: policy)"), "the kind of a version: {stdout}");
    assert!(stdout.contains("a push of the older one is refused"), "{stdout}");
    assert!(stdout.contains("served predictions within"), "{stdout}");
    assert!(stdout.contains("watched VERSION_EVENT_KIND_ROLLED_BACK"), "{stdout}");
}

const MODEL: &str = "py-routed";
const PUSHES: u64 = 300;

/// Ports nobody listens on now (the peers list must name them before any server starts).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// `accrete ARGS --json --server http://ADDR` parsed.
fn json(addr: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ok(&format!("http://{addr}"), &[args, &["--json", "--reconnect-secs", "10"]].concat()))
        .unwrap()
}

/// `accrete model predict MODEL` of a LIBSVM file through server `addr`, one value a row.
fn cli_predictions(addr: &str, input: &Path, version: Option<u64>) -> Vec<f32> {
    let v = version.map(|v| v.to_string());
    let mut args = vec!["model", "predict", MODEL, "--format", "libsvm", "--input", input.to_str().unwrap()];
    if let Some(v) = &v {
        args.extend(["--version", v.as_str()]);
    }
    ok(&format!("http://{addr}"), &args).lines().map(|l| l.parse().unwrap()).collect()
}

/// The largest difference between the CLI's predictions and the Python client's.
fn max_diff(cli: &[f32], python: &Value) -> f32 {
    let python: Vec<f32> = python.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(cli.len(), python.len(), "one prediction per holdout row from both");
    cli.iter().zip(&python).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[tokio::test]
async fn the_python_client_routes_a_partitioned_model_over_a_cluster() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = free_ports(3).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = addrs.join(",");
    let mut servers = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        servers.push(Some(spawn_server_at(&tmp.path().join(format!("s{i}")), a, &["--peers", &peers]).await));
    }
    let spec =
        ["--kind", "logistic", "--hash-bits", "14", "--optimizer", "adagrad", "--lr", "0.1", "--partitions", "3"];
    let policy = ["--commit-every-updates", "100", "--commit-every-secs", "0"];
    ok(&format!("http://{}", addrs[0]), &[&["model", "create", MODEL][..], &spec, &policy].concat());
    let show = json(&addrs[0], &["model", "show", MODEL]);
    let primaries: Vec<String> =
        show["partitions"].as_array().unwrap().iter().map(|p| p["primary"].as_str().unwrap().to_string()).collect();
    let (mut distinct, mut all) = (primaries.clone(), addrs.clone());
    distinct.sort();
    all.sort();
    assert_eq!(distinct, all, "3 partitions, one on each server");
    // The Python client is given partition 1's server: the home (partition 0's) it finds.
    let (home, entry, third) = (&primaries[0], &primaries[1], &primaries[2]);

    let holdout = tmp.path().join("holdout.libsvm");
    let pushes = PUSHES.to_string();
    let args = ["cluster_example.py", "--server", &format!("http://{entry}"), "--model", MODEL, "--pushes", &pushes];
    let out = run_python(&python, &[&args[..], &["--holdout", holdout.to_str().unwrap(), "--json"]].concat());
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!((summary["entry"].as_str(), summary["home"].as_str()), (Some(entry.as_str()), Some(home.as_str())));
    assert_eq!(summary["partitions"], serde_json::json!(primaries), "the partitions' servers as the CLI shows them");

    // The rows of each tensor the client routes by are the core's plan.
    let mut core = accrete_core::ModelSpec::new(MODEL, accrete_core::ModelKind::Logistic);
    (core.hash_bits, core.partitions) = (14, 3);
    let layout = accrete_core::layout(&core);
    for (t, placement) in layout.iter().zip(Partitioning::plan(&layout, 3).tensors) {
        let starts = match placement {
            Placement::Rows { starts } => starts,
            Placement::Whole { .. } => vec![0, t.rows],
        };
        assert_eq!(summary["starts"][t.name], serde_json::json!(starts), "row ranges of {}: {out}", t.name);
    }
    assert_eq!(summary["starts"]["h"], serde_json::json!([0, 5461, 10922, 16384]));

    // It learned: holdout accuracy well above the base rate.
    let (accuracy, base) = (summary["accuracy"].as_f64().unwrap(), summary["base_rate"].as_f64().unwrap());
    assert!(accuracy > base + 0.2, "accuracy {accuracy}, base rate {base}: {out}");

    // The same versions through every server: global commits, by the policy while the
    // client pushed and by its commit, with every push counted once.
    let versions: Vec<Value> = addrs.iter().map(|a| json(a, &["model", "versions", MODEL])).collect();
    assert!(versions.iter().all(|v| *v == versions[0]), "versions differ between servers: {versions:?}");
    let vs = versions[0].as_array().unwrap();
    let kinds: Vec<&str> = vs.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"policy") && kinds.len() >= 3, "{kinds:?}");
    let head = vs.last().unwrap();
    assert_eq!(head["version"], summary["version"]);
    assert_eq!((head["kind"].as_str(), head["updates"].as_u64()), (Some("manual"), Some(PUSHES)), "{head}");

    // Every partition's local model, asked of its own server, applied every push and
    // holds every global version.
    let local = |i: usize| if i == 0 { MODEL.to_string() } else { format!("{MODEL}#{i}") };
    for (i, server) in primaries.iter().enumerate() {
        let m = json(server, &["model", "show", &local(i)]);
        assert_eq!(m["updates"].as_u64(), Some(PUSHES), "partition {i} on {server}: {m}");
        assert_eq!(m["head_version"], summary["version"], "partition {i} on {server}: {m}");
    }

    // The CLI (the Rust client, scoring a partitioned model itself) through the third
    // server, live and at the committed version, gives the Python client's predictions.
    let version = summary["version"].as_u64().unwrap();
    let live = cli_predictions(third, &holdout, None);
    let at_version = cli_predictions(third, &holdout, Some(version));
    assert_eq!(live.len(), 500);
    let spread = live.iter().fold(0f32, |m, x| m.max(*x)) - live.iter().fold(1f32, |m, x| m.min(*x));
    assert!(spread > 0.5, "trained predictions spread over [0, 1]: {spread}");
    let (d_live, d_version) = (max_diff(&live, &summary["live"]), max_diff(&at_version, &summary["at_version"]));
    assert!(d_live <= 1e-5 && d_version <= 1e-5, "CLI vs Python: live {d_live}, version {version} {d_version}");

    // A push whose values all fall on partition 0 (the bias) is an update on every
    // partition (`PushMeta.update` on the marks); a push without values is none.
    let check = format!(
        r#"
import json, numpy as np
from accrete_client import Client, local_name
c = Client("http://{entry}")
updates = lambda: [c.info(local_name("{MODEL}", p)).updates for p in range(3)]
c.push("{MODEL}", {{"b": np.array([0.01], np.float32)}})
after_update = updates()
c.push("{MODEL}", {{}})
v = c.commit("{MODEL}", reason="after a bias-only push")
print(json.dumps({{"after_update": after_update, "after_mark": updates(), "version": v.version, "updates": v.updates}}))
"#
    );
    let marks: Value = serde_json::from_str(run_python(&python, &["-c", &check]).trim()).unwrap();
    let n = PUSHES + 1;
    assert_eq!(marks["after_update"], serde_json::json!([n, n, n]), "{marks}");
    assert_eq!(marks["after_mark"], serde_json::json!([n, n, n]), "{marks}");
    assert_eq!((marks["version"].as_u64(), marks["updates"].as_u64()), (Some(version + 1), Some(n)), "{marks}");

    // Partition 2's server goes down: a pull or a push through the routed client fails,
    // naming the partition and its server; a call that needs only the others still works.
    let down = addrs.iter().position(|a| a == third).unwrap();
    drop(servers[down].take());
    let check = format!(
        r#"
import numpy as np, grpc
from accrete_client import Client
c = Client("http://{entry}")
calls = [("pull", lambda: c.pull("{MODEL}")), ("push", lambda: c.push("{MODEL}", {{"b": np.array([0.01], np.float32)}})),
         ("versions", lambda: len(c.versions("{MODEL}")))]
for name, call in calls:
    try:
        print(name, "ok", call())
    except grpc.RpcError as e:
        print(name, "failed", e)
"#
    );
    let out = run_python(&python, &["-c", &check]);
    let named = format!("UNAVAILABLE: model '{MODEL}' partition 2 (server {third})");
    for call in ["pull", "push"] {
        let line = out.lines().find(|l| l.starts_with(call)).unwrap_or_default();
        assert!(line.starts_with(&format!("{call} failed {named}")), "{call}: {out}");
    }
    assert!(out.contains(&format!("versions ok {}", version + 1)), "the home still answers: {out}");
}
