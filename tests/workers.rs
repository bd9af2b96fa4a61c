//! Workers against data shards, as a user runs them: real server and worker processes,
//! real data (the flights file shipped in the repository), the seed example, consistency
//! modes with a worker killed mid-run, bad rows, and follow mode.
mod common;

use accrete_proto::v1 as pb;
use common::data::{labelled_flights, read_gz, shuffle, write_csv, COLS, HOUSING};
use common::procs::{cli, create_flights_model, ok, spawn_cli, spawn_server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flights with a label, shuffled with a seeded generator and split 80/20, like the
/// reference figures' seeded random split (not the same permutation).
fn flights_split(dir: &Path) -> (PathBuf, PathBuf) {
    let (header, mut rows) = labelled_flights();
    shuffle(&mut rows, 0);
    let cut = rows.len() * 4 / 5;
    let (train, test) = (dir.join("train.csv"), dir.join("test.csv"));
    write_csv(&train, &header, &rows[..cut]);
    write_csv(&test, &header, &rows[cut..]);
    (train, test)
}

fn split(input: &Path, out: &Path) {
    let o = std::process::Command::new(common::procs::BIN)
        .arg("split")
        .arg("--input")
        .arg(input)
        .args(["--shards", "3", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "split: {}", String::from_utf8_lossy(&o.stderr));
}

/// The shard files `split` wrote, in name order.
fn parts_of(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    parts.sort();
    parts
}

fn labels(test: &Path) -> Vec<f32> {
    let text = std::fs::read_to_string(test).unwrap();
    let mut lines = text.lines();
    let delay = lines.next().unwrap().split(',').position(|c| c == "arr_delay").unwrap();
    lines.map(|l| (l.split(',').nth(delay).unwrap().parse::<f32>().unwrap() > 15.0) as u8 as f32).collect()
}

fn auc_of(url: &str, model: &str, test: &Path) -> f64 {
    let mut args = vec!["model", "predict", model, "--input", test.to_str().unwrap()];
    args.extend(COLS);
    let out = ok(url, &args);
    let p: Vec<f32> = out.lines().map(|l| l.parse().unwrap()).collect();
    let y = labels(test);
    assert_eq!(p.len(), y.len(), "one prediction per row");
    accrete_core::metrics::auc(&y, &p)
}

#[tokio::test]
async fn seed_example_y_equals_2x_predicts_10_at_5() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let (train, test) = (tmp.path().join("lin.csv"), tmp.path().join("lin_test.csv"));
    std::fs::write(&train, "x,y\n1,2\n2,4\n3,6\n4,8\n").unwrap();
    std::fs::write(&test, "x,y\n5,10\n").unwrap();
    ok(
        &s.url,
        &["model", "create", "lin", "--kind", "linear", "--features", "1", "--optimizer", "sgd", "--lr", "0.01"],
    );
    let t = train.to_str().unwrap();
    ok(
        &s.url,
        &[
            "worker",
            "--model",
            "lin",
            "--shard",
            t,
            "--label",
            "y",
            "--numeric",
            "x",
            "--epochs",
            "1000",
            "--batch",
            "4",
        ],
    );
    let out =
        ok(&s.url, &["model", "predict", "lin", "--input", test.to_str().unwrap(), "--label", "y", "--numeric", "x"]);
    let p: f64 = out.trim().parse().unwrap();
    assert!((p - 10.0).abs() <= 0.1, "y = 2x predicts {p} at x = 5");
}

#[tokio::test]
async fn three_workers_reach_the_reference_auc_in_every_consistency_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = flights_split(tmp.path());
    let s = spawn_server(&tmp.path().join("data")).await;
    let shards = tmp.path().join("shards");
    split(&train, &shards);
    let parts = parts_of(&shards);
    assert_eq!(parts.len(), 3);
    for mode in ["asp", "ssp:2", "bsp"] {
        let name = format!("fl-{}", mode.replace(':', ""));
        create_flights_model(&s.url, &name, &["--consistency", mode]);
        let workers: Vec<_> = parts
            .iter()
            .map(|p| {
                let mut args = vec!["worker", "--model", &name, "--shard", p.to_str().unwrap(), "--epochs", "1"];
                args.extend(COLS);
                spawn_cli(&s.url, &args)
            })
            .collect();
        for w in workers {
            let out = w.wait_with_output().unwrap();
            assert!(out.status.success(), "{mode} worker failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let auc = auc_of(&s.url, &name, &test);
        // Vowpal Wabbit reaches 0.6957 with these features on a seeded random split.
        assert!(auc >= 0.69, "{mode}: holdout AUC {auc:.4}");
        eprintln!("{mode}: holdout AUC {auc:.4}");
    }
}

#[tokio::test]
async fn bsp_goes_on_when_a_worker_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = flights_split(tmp.path());
    let s = spawn_server(&tmp.path().join("data")).await;
    let shards = tmp.path().join("shards");
    split(&train, &shards);
    let parts = parts_of(&shards);
    create_flights_model(&s.url, "b", &["--consistency", "bsp"]);
    let mut workers: Vec<_> = parts
        .iter()
        .map(|p| {
            let mut args = vec!["worker", "--model", "b", "--shard", p.to_str().unwrap(), "--batch", "200"];
            args.extend(COLS);
            spawn_cli(&s.url, &args)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut victim = workers.remove(0);
    victim.kill().unwrap(); // SIGKILL: no leave, the lease must expire
    victim.wait().unwrap();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "a surviving worker failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(auc_of(&s.url, "b", &test) > 0.66);
}

#[tokio::test]
async fn bad_rows_are_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let f = tmp.path().join("bad.csv");
    std::fs::write(&f, "x,c,y\n1,a,1\n2,b\n3,c,1\nzz,d,0\n4,e,\n5,f,1\n").unwrap();
    ok(&s.url, &["model", "create", "m", "--kind", "logistic", "--features", "1", "--hash-bits", "8"]);
    let base = [
        "worker",
        "--model",
        "m",
        "--shard",
        f.to_str().unwrap(),
        "--label",
        "y",
        "--numeric",
        "x",
        "--categorical",
        "c",
    ];
    let out = cli(&s.url, &[&base[..], &["--on-bad-row", "fail"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:3: expected 3 fields, found 2"), "{err}");
    let out = ok(&s.url, &base);
    assert!(
        out.contains("3 rows") && out.contains("2 bad rows skipped") && out.contains("1 rows without a label"),
        "{out}"
    );
    // LIBSVM: a bad token
    let l = tmp.path().join("bad.libsvm");
    std::fs::write(&l, "1 1:0.5\n0 2:x\n1 2:1\n").unwrap();
    ok(&s.url, &["model", "create", "s", "--kind", "logistic", "--features", "2"]);
    let out = cli(&s.url, &["worker", "--model", "s", "--shard", l.to_str().unwrap(), "--on-bad-row", "fail"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.libsvm:2") && err.contains("\"2:x\""), "{err}");
    // Bytes from a file that would drive the terminal are escaped, not echoed.
    let e = tmp.path().join("esc.csv");
    std::fs::write(&e, b"x\x1b[2J\x1b[31m,c,y\n1,a,1\n").unwrap();
    let args = ["worker", "--model", "m", "--shard", e.to_str().unwrap(), "--label", "y", "--numeric", "x"];
    let out = cli(&s.url, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not in the header"), "{err}");
    assert!(!err.contains('\x1b') && err.contains("\\u{1b}[2J"), "{err:?}");
}

#[tokio::test]
async fn follow_mode_trains_on_appended_rows_and_records_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let f = tmp.path().join("stream.csv");
    std::fs::write(&f, "x,y\n1,2\n2,4\n").unwrap();
    ok(&s.url, &["model", "create", "f", "--kind", "linear", "--features", "1", "--commit-every-updates", "1"]);
    let w = spawn_cli(
        &s.url,
        &[
            "worker",
            "--model",
            "f",
            "--shard",
            f.to_str().unwrap(),
            "--label",
            "y",
            "--follow",
            "--batch",
            "2",
            "--worker-id",
            "w1",
        ],
    );
    let offsets = |url: &str| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(&ok(url, &["model", "versions", "f", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["workers"].get(0).map(|w| w["offset"].as_u64().unwrap()))
            .collect()
    };
    let wait_for = |url: &str, want: u64| {
        for _ in 0..100 {
            if offsets(url).last().copied() == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no version recorded offset {want}: {:?}", offsets(url));
    };
    wait_for(&s.url, 12); // "x,y\n1,2\n2,4\n"
    let mut file = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    file.write_all(b"3,6\n4,8\n").unwrap();
    wait_for(&s.url, 20);
    let status = std::process::Command::new("kill").args(["-INT", &w.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success(), "Ctrl-C did not stop the worker cleanly: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 rows"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn a_restarted_worker_resumes_from_its_recorded_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let f = tmp.path().join("rows.csv");
    std::fs::write(&f, "x,y\n1,2\n2,4\n3,6\n4,8\n").unwrap();
    ok(&s.url, &["model", "create", "r", "--kind", "linear", "--features", "1", "--commit-every-updates", "1"]);
    let args =
        ["worker", "--model", "r", "--shard", f.to_str().unwrap(), "--label", "y", "--batch", "2", "--worker-id", "r1"];
    let mut w = spawn_cli(&s.url, &[&args[..], &["--follow"]].concat());
    let recorded = |url: &str| -> Option<u64> {
        let v: serde_json::Value = serde_json::from_str(&ok(url, &["model", "versions", "r", "--json"])).unwrap();
        v.as_array().unwrap().last()?["workers"].get(0).map(|w| w["offset"].as_u64().unwrap())
    };
    for _ in 0..100 {
        if recorded(&s.url) == Some(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded(&s.url), Some(20));
    w.kill().unwrap(); // kill -9
    w.wait().unwrap();
    std::fs::OpenOptions::new().append(true).open(&f).unwrap().write_all(b"5,10\n6,12\n7,14\n").unwrap();
    let out = ok(&s.url, &args);
    assert!(out.contains(": 3 rows"), "the restarted worker should train only the 3 new rows: {out}");
    assert_eq!(recorded(&s.url), Some(35));
}

#[tokio::test]
async fn california_housing_linear_regression_beats_the_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let (header, mut rows) = read_gz(HOUSING);
    shuffle(&mut rows, 0);
    let cut = rows.len() * 4 / 5;
    let (train, test) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    std::fs::write(&train, format!("{header}\n{}\n", rows[..cut].join("\n"))).unwrap();
    std::fs::write(&test, format!("{header}\n{}\n", rows[cut..].join("\n"))).unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    ok(
        &s.url,
        &["model", "create", "house", "--kind", "linear", "--features", "8", "--optimizer", "adagrad", "--lr", "0.05"],
    );
    ok(
        &s.url,
        &[
            "worker",
            "--model",
            "house",
            "--shard",
            train.to_str().unwrap(),
            "--label",
            "MedHouseVal",
            "--epochs",
            "5",
            "--batch",
            "32",
        ],
    );
    let out = ok(&s.url, &["model", "predict", "house", "--input", test.to_str().unwrap(), "--label", "MedHouseVal"]);
    let p: Vec<f32> = out.lines().map(|l| l.parse().unwrap()).collect();
    let label = |r: &String| r.rsplit(',').next().unwrap().parse::<f32>().unwrap();
    let y: Vec<f32> = rows[cut..].iter().map(label).collect();
    let mean = rows[..cut].iter().map(label).sum::<f32>() / cut as f32;
    let rmse = accrete_core::metrics::rmse(&y, &p);
    let base = accrete_core::metrics::rmse(&y, &vec![mean; y.len()]);
    eprintln!("california housing: RMSE {rmse:.4}, predicting the mean {base:.4}");
    assert!(rmse < 0.8 * base, "RMSE {rmse:.4} vs predicting the mean {base:.4}");
}

/// The applied updates of a model, all time.
async fn updates_of(url: &str, model: &str) -> u64 {
    let mut c = common::connect(url).await.unwrap();
    let info = c.models.get_model_info(accrete_proto::v1::ModelRef { name: model.into() }).await.unwrap();
    info.into_inner().updates
}

/// A worker reading a pipe whose producer pauses is blocked in `read`; its heartbeats go
/// on from their own thread and keep it in the BSP barrier, so the other worker waits for
/// it. A worker that really goes silent (SIGSTOP) loses its lease after `--lease-ms`, and
/// the other finishes alone.
#[tokio::test]
async fn a_worker_blocked_reading_a_pipe_keeps_its_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::procs::spawn_server_with(&tmp.path().join("data"), &["--lease-ms", "10000"]).await;
    let create = ["model", "create", "p", "--kind", "logistic", "--hash-bits", "16", "--optimizer", "sgd"];
    ok(&s.url, &[&create[..], &["--lr", "0.05", "--consistency", "bsp"]].concat());
    let rows: Vec<String> = (0..20_000).map(|i| format!("{},v{}", i % 2, i % 7)).collect();
    let file = tmp.path().join("b.csv");
    write_csv(&file, "y,x", &rows);
    let fifo = tmp.path().join("a.csv");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        return common::missing_tool("mkfifo");
    }
    // Read and write: the pipe never lacks a reader, and opening it does not block.
    let mut pipe = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    pipe.write_all(format!("y,x\n{}\n", rows[..10].join("\n")).as_bytes()).unwrap();
    let worker = |shard: &Path, id: &str| {
        let args = ["worker", "--model", "p", "--batch", "10", "--label", "y", "--categorical", "x", "--worker-id", id];
        spawn_cli(&s.url, &[&args[..], &["--shard", shard.to_str().unwrap()]].concat())
    };
    let mut a = worker(&fifo, "a");
    // b starts once a has joined the barrier and pushed its batch: started together, b
    // could join first and run rounds alone until a's process got going (it once ran 25
    // under the suite's load).
    let joined = Instant::now();
    while updates_of(&s.url, "p").await < 1 {
        assert!(joined.elapsed() < Duration::from_secs(60), "worker a never pushed its first batch");
        assert!(a.try_wait().unwrap().is_none(), "worker a exited before pushing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = worker(&file, "b");
    // Over one and a half leases (long ones: under the whole suite's load on 2 cores, a
    // heartbeat thread once stalled past 3 s, and once past 5 s): worker a has pushed its
    // one batch and waits for rows.
    tokio::time::sleep(Duration::from_millis(15000)).await;
    let held = updates_of(&s.url, "p").await;
    assert!(held <= 2, "worker b went on without a ({held} updates): a lost its lease while blocked on the pipe");
    assert!(a.try_wait().unwrap().is_none(), "worker a exited while its pipe was open");

    let stop = std::process::Command::new("kill").args(["-STOP", &a.id().to_string()]).status().unwrap();
    assert!(stop.success());
    let out = tokio::task::spawn_blocking(move || b.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "worker b failed: {}", String::from_utf8_lossy(&out.stderr));
    let after = updates_of(&s.url, "p").await;
    assert!(after >= 1990, "worker b trained alone once a's lease expired: {after} updates");
    // Woken up, a finds its push refused (it is out of the barrier): those rows must be
    // trained again, and a pipe cannot give them back, so it says so and fails rather
    // than lose them silently.
    let cont = std::process::Command::new("kill").args(["-CONT", &a.id().to_string()]).status().unwrap();
    assert!(cont.success());
    pipe.write_all(format!("{}\n", rows[10..110].join("\n")).as_bytes()).unwrap();
    drop(pipe);
    let out = tokio::task::spawn_blocking(move || a.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "worker a lost the rows of its refused push: {stderr}");
    assert!(
        stderr.contains("not in the model's barrier") && stderr.contains("a pipe cannot be read again"),
        "{stderr}"
    );
}

/// `--shard /dev/stdin` trains on what is piped in, every run (a pipe has no offset to
/// resume from), and asks for the column kinds rather than sampling the pipe.
#[tokio::test]
async fn a_worker_trains_on_its_standard_input() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    for m in ["p", "q"] {
        ok(&s.url, &["model", "create", m, "--kind", "logistic", "--hash-bits", "10"]);
    }
    let run = |model: &str, kinds: &[&str]| {
        let mut child = std::process::Command::new(common::procs::BIN)
            .args(["worker", "--model", model, "--shard", "/dev/stdin", "--label", "y", "--server", &s.url])
            .args(kinds)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // (a worker that refuses to start may have closed its end already)
        let _ = child.stdin.take().unwrap().write_all(b"y,c\n1,a\n0,b\n1,a\n");
        child.wait_with_output().unwrap()
    };
    for _ in 0..2 {
        let out = run("p", &["--categorical", "c"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": 3 rows"),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // (a model with no recorded columns yet: p's are `--label y --categorical c` now)
    let out = run("q", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("/dev/stdin:1: cannot tell numeric from categorical"), "{stderr}");
}

/// A rollback while a worker trains: the rows applied before it are not trained again
/// (the rollback abandons them with their lineage), and the rows of the pushes it made
/// stale — the refused one and those queued behind it — are trained exactly once. Counted
/// by the rows the model's input statistics hold.
#[tokio::test]
async fn a_rollback_under_load_trains_the_refused_rows_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (header, rows) = read_gz(HOUSING);
    let train = tmp.path().join("train.csv");
    std::fs::write(&train, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    ok(&s.url, &["model", "create", "house", "--kind", "linear", "--features", "8", "--lr", "0.001"]);
    let args =
        ["worker", "--model", "house", "--shard", train.to_str().unwrap(), "--label", "MedHouseVal", "--batch", "8"];
    let mut w = spawn_cli(&s.url, &args);
    // Three rollbacks, each while pushes are in flight.
    for at in [300, 600, 900] {
        for _ in 0..500 {
            if updates_of(&s.url, "house").await >= at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(w.try_wait().unwrap().is_none(), "the worker finished before the rollback at {at} updates");
        ok(&s.url, &["model", "rollback", "house", "--to", "1", "--reason", "test"]);
    }
    let out = w.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "worker: {stderr}");
    ok(&s.url, &["model", "commit", "house"]);
    let mut c = common::connect(&s.url).await.unwrap();
    let vs = common::versions(&mut c, "house").await;
    // Every row is applied once, all lineages together: the last rollback's record says
    // how many were before it, and the content after it holds the others.
    let rollback = vs.iter().rev().find(|v| v.kind == pb::VersionKind::Rollback as i32).expect("a rollback version");
    let applied_before: u64 = rollback.workers.iter().map(|w| w.rows).sum();
    assert!(applied_before > 0);
    let norm = common::tensor(&mut c, "house", "norm").await;
    let counted = norm[0] as u64;
    assert_eq!(
        counted,
        rows.len() as u64 - applied_before,
        "rows in the model after the rollback: {counted}; the shard has {}, {applied_before} were applied before it",
        rows.len()
    );
}

/// A model keeps the columns its first worker read: predict and the evaluator need no
/// column flags, other columns are refused with both sets shown (by the server for a
/// worker, by the command for predict), and a worker that trained no row fails.
#[tokio::test]
async fn a_model_keeps_its_input_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let rows: String = (0..400).map(|i| format!("{},{},c{},{}\n", i % 7, i % 3, i % 5, (i % 7 > 3) as u8)).collect();
    let (train, test) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    std::fs::write(&train, format!("a,b,c,y\n{rows}")).unwrap();
    // predict data in another column order, without the label
    let unlabelled: String = (0..50).map(|i| format!("c{},{},{}\n", i % 5, i % 3, i % 7)).collect();
    std::fs::write(&test, format!("c,b,a\n{unlabelled}")).unwrap();
    ok(&s.url, &["model", "create", "m", "--kind", "logistic", "--hash-bits", "10"]);
    let shard = train.to_str().unwrap();
    ok(&s.url, &["worker", "--model", "m", "--shard", shard, "--label", "y>0"]);
    let show: serde_json::Value = serde_json::from_str(&ok(&s.url, &["model", "show", "m", "--json"])).unwrap();
    let sig = &show["signature"];
    assert_eq!((sig["label"].as_str(), sig["numeric"].clone()), (Some("y>0"), serde_json::json!(["a", "b"])), "{show}");
    assert_eq!(sig["categorical"], serde_json::json!(["c"]));
    // The same columns by name, or none: the same predictions.
    let test = test.to_str().unwrap();
    let named = ok(&s.url, &["model", "predict", "m", "--input", test, "--numeric", "a,b", "--categorical", "c"]);
    assert_eq!(named, ok(&s.url, &["model", "predict", "m", "--input", test]));
    assert_eq!(named.lines().count(), 50);
    // Other columns: refused, both shown.
    let out = cli(&s.url, &["model", "predict", "m", "--input", test, "--categorical", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--numeric a,b --categorical c") && err.contains("`csv --categorical c`"),
        "{err}"
    );
    let out = cli(&s.url, &["worker", "--model", "m", "--shard", shard, "--label", "y>3", "--worker-id", "other"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("reads its data as") && err.contains("y>3"), "{err}");
    // The evaluator scores with the model's columns.
    ok(&s.url, &["evaluator", "--model", "m", "--holdout", shard, "--once"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&s.url, &["model", "versions", "m", "--json"])).unwrap();
    assert!(v.as_array().unwrap().last().unwrap()["metrics"]["auc"].as_f64().is_some(), "{v}");
    // A worker that trained nothing fails, saying why.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "a,b,c,y\nx,y,c1,z\n").unwrap();
    let out = cli(&s.url, &["worker", "--model", "m", "--shard", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no rows trained (1 bad rows skipped"), "{err}");
    // Columns named at create are the signature from the start: a worker needs no flags,
    // and one that names others is refused before it trains.
    let cols = ["--label", "y>0", "--numeric", "a,b", "--categorical", "c"];
    ok(&s.url, &[&["model", "create", "n", "--kind", "logistic", "--hash-bits", "10"][..], &cols].concat());
    let show: serde_json::Value = serde_json::from_str(&ok(&s.url, &["model", "show", "n", "--json"])).unwrap();
    assert_eq!(show["signature"], sig.clone(), "{show}");
    let out = cli(&s.url, &["worker", "--model", "n", "--shard", shard, "--categorical", "c,a", "--label", "y>0"]);
    assert!(!out.status.success(), "a worker with other columns than the create's was accepted");
    ok(&s.url, &["worker", "--model", "n", "--shard", shard]);
    assert_eq!(ok(&s.url, &["model", "predict", "n", "--input", test]).lines().count(), 50);
    // a label alone is not a signature
    let out = cli(&s.url, &["model", "create", "o", "--kind", "logistic", "--hash-bits", "10", "--label", "y"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--numeric and/or --categorical"), "{err}");
}
