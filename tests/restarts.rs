//! Clients ride out server restarts, and every row counts exactly once: real processes, a
//! real kill -9 of the server and a restart on the same port and data dir, while workers,
//! an evaluator, a watch and the CLI keep going without being restarted themselves.
//! Retried mutating calls (create, commit, rollback, import) act once, across a restart.
mod common;

use accrete_proto::v1 as pb;
use common::data::{read_gz, shuffle, write_csv, HOUSING};
use common::procs::{cli, ok, spawn_server, spawn_server_at, Proc, BIN};
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Epochs each worker trains on its shard: a pass long enough for three kills.
const EPOCHS: u64 = 10;

/// `host:port` of a server's URL, to restart it where its clients look.
fn addr_of(p: &Proc) -> String {
    p.url.trim_start_matches("http://").to_string()
}

/// A CLI process whose stdout and stderr go to files in `dir` (named after `name`).
fn spawn_logged(url: &str, dir: &Path, name: &str, args: &[&str]) -> Child {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    Command::new(BIN).args(args).args(["--server", url]).stdout(out).stderr(err).spawn().unwrap()
}

fn log_of(dir: &Path, name: &str, which: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.{which}"))).unwrap_or_default()
}

/// The live update count, or `None` while the server does not answer.
async fn live_updates(url: &str) -> Option<u64> {
    let mut c = common::connect(url).await.ok()?;
    Some(c.models.get_model_info(pb::ModelRef { name: "m".into() }).await.ok()?.into_inner().updates)
}

/// The lowest incarnation among the two workers' progress in the head version (0 until
/// both have some): both have joined `n` times once it is `n`.
async fn both_joined(url: &str) -> u64 {
    let Ok(mut c) = common::connect(url).await else { return 0 };
    let Some(head) = versions(&mut c, "m").await.pop() else { return 0 };
    let of = |id: &str| head.workers.iter().find(|w| w.worker_id == id).map_or(0, |w| w.incarnation);
    of("w0").min(of("w1"))
}

/// Waits (bounded) until `child` exits; its status.
async fn exit_of(child: &mut Child, what: &str, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two workers train California housing (two shards, ten passes each) while the server is
/// killed with -9 three times and restarted. The workers are not restarted; they exit 0,
/// and the committed head counts every row exactly once: the dense model's input
/// statistics (`norm`, a count per feature) and each worker's recorded rows. With the
/// evaluator, which scores the last version after riding out the same kills.
async fn three_kills_during_two_workers_pass(consistency: &str, with_evaluator: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, logs) = (tmp.path().join("data"), tmp.path());
    let (header, mut rows) = read_gz(HOUSING);
    shuffle(&mut rows, 0);
    let shards: Vec<_> = (0..2).map(|i| tmp.path().join(format!("part-{i}.csv"))).collect();
    for (i, shard) in shards.iter().enumerate() {
        let mine: Vec<String> = rows.iter().skip(i).step_by(2).cloned().collect();
        write_csv(shard, &header, &mine);
    }
    let holdout = tmp.path().join("holdout.csv");
    write_csv(&holdout, &header, &rows[..2000]);
    let total_rows = rows.len() as u64 * EPOCHS;
    let mut p = spawn_server(&dir).await;
    let addr = addr_of(&p);
    let spec = [
        "--kind",
        "linear",
        "--features",
        "8",
        "--optimizer",
        "adagrad",
        "--lr",
        "0.05",
        "--commit-every-updates",
        "100",
    ];
    ok(&p.url, &[&["model", "create", "m", "--consistency", consistency][..], &spec].concat());
    let epochs = EPOCHS.to_string();
    let mut workers: Vec<Child> = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let (id, shard) = (format!("w{i}"), shard.to_str().unwrap());
            let args = ["worker", "--model", "m", "--shard", shard, "--label", "MedHouseVal", "--batch", "10"];
            spawn_logged(&p.url, logs, &id, &[&args[..], &["--epochs", &epochs, "--worker-id", &id]].concat())
        })
        .collect();
    let mut evaluator = with_evaluator.then(|| {
        let args = ["evaluator", "--model", "m", "--holdout", holdout.to_str().unwrap(), "--label", "MedHouseVal"];
        spawn_logged(&p.url, logs, "evaluator", &args)
    });
    let mut base = 0;
    for kill in 0..3 {
        // Both workers push again since the (re)start (each joined again: else one can be
        // killed twice within one of its retries, a single outage to it): each kill is in
        // the middle of the pass.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if live_updates(&p.url).await.is_some_and(|u| u >= base + 300) && both_joined(&p.url).await > kill {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill {kill}: no progress within 90 s of the restart:\n{}\n{}",
                log_of(logs, "w0", "err"),
                log_of(logs, "w1", "err")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, w) in workers.iter_mut().enumerate() {
            assert!(w.try_wait().unwrap().is_none(), "worker w{i} finished before kill {kill}: give it more data");
        }
        p.child.kill().unwrap(); // SIGKILL
        p.child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        p = spawn_server_at(&dir, &addr, &[]).await;
        base = live_updates(&p.url).await.expect("the restarted server answers");
    }
    for (i, w) in workers.iter_mut().enumerate() {
        let status = exit_of(w, &format!("worker w{i}"), 300).await;
        let (out, err) = (log_of(logs, &format!("w{i}"), "out"), log_of(logs, &format!("w{i}"), "err"));
        assert!(status.success() && out.contains("committed in version"), "w{i}: {status:?}\n{out}\n{err}");
        // It saw every kill, and said each outage once (not once per retry).
        let rejoins = err.matches("joined again").count();
        let outages = err.matches("server unreachable").count();
        assert!(rejoins >= 3, "w{i} joined again {rejoins} times after 3 kills:\n{err}");
        assert!((1..=3).contains(&outages), "w{i} logged {outages} outages for 3 kills:\n{err}");
    }
    let mut c = common::connect(&p.url).await.unwrap();
    let head = versions(&mut c, "m").await.pop().unwrap();
    for (i, shard) in shards.iter().enumerate() {
        let w = head.workers.iter().find(|w| w.worker_id == format!("w{i}")).expect("the worker's progress");
        let expected = rows.iter().skip(i).step_by(2).count() as u64 * EPOCHS;
        let end = std::fs::metadata(shard).unwrap().len();
        assert_eq!((w.rows, w.pass, w.offset), (expected, EPOCHS - 1, end), "w{i} in version {}", head.version);
    }
    let norm = pull_all(&mut c, "m", Some(head.version)).await.1.into_iter().find(|(n, _)| n == "norm").unwrap().1;
    let counts: Vec<u64> = norm[..8].iter().map(|x| *x as u64).collect();
    assert_eq!(counts, vec![total_rows; 8], "rows counted by the model's statistics, feature by feature");
    if let Some(e) = evaluator.as_mut() {
        // It rode out the kills too: the last version gets its score.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = versions(&mut c, "m").await;
            if v.iter().any(|v| v.version >= head.version && v.metrics.contains_key("rmse")) {
                break;
            }
            assert!(
                e.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "the evaluator did not score version {}: {}",
                head.version,
                log_of(logs, "evaluator", "err")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = e.kill();
        let _ = e.wait();
    }
}

#[tokio::test]
async fn asp_workers_and_the_evaluator_ride_out_three_kill_9s_and_count_every_row_once() {
    three_kills_during_two_workers_pass("asp", true).await;
}

#[tokio::test]
async fn bsp_workers_ride_out_three_kill_9s_and_count_every_row_once() {
    three_kills_during_two_workers_pass("bsp", false).await;
}

#[tokio::test]
async fn ssp_workers_ride_out_three_kill_9s_and_count_every_row_once() {
    three_kills_during_two_workers_pass("ssp:2", false).await;
}

/// A retried create, commit, rollback or import (the same request id: the client lost
/// the answer) acts once, also when the retry reaches a server restarted with kill -9.
#[tokio::test]
async fn retried_requests_act_once_across_a_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let addr = addr_of(&p);
    let mut c = common::connect(&p.url).await.unwrap();
    let spec = linear("m", 4, pb::OptimizerKind::Sgd, 0.1);
    let create =
        |id: &str| pb::CreateModelRequest { spec: Some(spec.clone()), request_id: id.into(), ..Default::default() };
    let first = c.models.create_model(create("c1")).await.unwrap().into_inner();
    let again = c.models.create_model(create("c1")).await.expect("a retried create is answered").into_inner();
    assert_eq!((first.head_version, again.head_version), (1, 1));
    let e = c.models.create_model(create("c2")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "another request for the same name");
    let push = || push_req("m", 0, vec![dense("w", 0, &[0.5; 4])]);
    let commit = |id: &str| pb::CommitRequest { model: "m".into(), request_id: id.into(), ..Default::default() };
    c.params.push(push()).await.unwrap();
    let v2 = c.models.commit(commit("k1")).await.unwrap().into_inner();
    c.params.push(push()).await.unwrap();
    let retried = c.models.commit(commit("k1")).await.unwrap().into_inner();
    assert_eq!(retried.version.as_ref().unwrap().version, 2, "the retry answers with the version the first made");
    assert!(retried.created && v2.created);
    let rollback = |id: &str| pb::RollbackRequest {
        model: "m".into(),
        to_version: 1,
        request_id: id.into(),
        ..Default::default()
    };
    let rb = c.models.rollback(rollback("r1")).await.unwrap().into_inner();
    assert_eq!(rb.version, 3);
    assert_eq!(c.models.rollback(rollback("r1")).await.unwrap().into_inner().version, 3);
    assert_eq!(versions(&mut c, "m").await.len(), 3, "one version each for the commit and the rollback");
    // The answers are lost with a kill -9; the retries reach the restarted server.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let p = spawn_server_at(&dir, &addr, &[]).await;
    let mut c = common::connect(&p.url).await.unwrap();
    assert_eq!(c.models.rollback(rollback("r1")).await.unwrap().into_inner().lineage_epoch, rb.lineage_epoch);
    assert_eq!(c.models.commit(commit("k1")).await.unwrap().into_inner().version.unwrap().version, 2);
    assert!(c.models.create_model(create("c1")).await.is_ok());
    assert_eq!(versions(&mut c, "m").await.len(), 3, "no retry made a version");
    // A new request id is a new request.
    assert_eq!(c.models.rollback(rollback("r2")).await.unwrap().into_inner().version, 4);
    // An import retried whole (same request id) makes one version.
    let file = tmp.path().join("m.safetensors");
    ok(&p.url, &["model", "export", "m", "--out", file.to_str().unwrap()]);
    let import = || {
        let body = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&body[8..8 + n]).unwrap();
        let mut msgs = vec![pb::ImportMessage {
            item: Some(pb::import_message::Item::Header(pb::ImportHeader {
                model: "m".into(),
                source: "t".into(),
                request_id: "i1".into(),
                at_version: 0,
                lineage_epoch: 0,
            })),
        }];
        for (name, e) in header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__") {
            let [a, b] = [0, 1].map(|i| e["data_offsets"][i].as_u64().unwrap() as usize + 8 + n);
            let chunk =
                pb::TensorChunk { tensor: name.clone(), values: body[a..b].to_vec().into(), ..Default::default() };
            msgs.push(pb::ImportMessage { item: Some(pb::import_message::Item::Chunk(chunk)) });
        }
        tokio_stream::iter(msgs)
    };
    let i1 = c.models.import(import()).await.unwrap().into_inner();
    let i2 = c.models.import(import()).await.unwrap().into_inner();
    assert_eq!((i1.version, i2.version), (5, 5));
    assert_eq!(versions(&mut c, "m").await.len(), 5);
    // Retention drops the version a rollback made, then a kill -9: its retry is still
    // answered with it, not acted on again.
    let mut kept = linear("k", 4, pb::OptimizerKind::Sgd, 0.1);
    kept.commit = Some(pb::CommitPolicy { keep_last: 2, ..Default::default() });
    common::create(&mut c, kept).await;
    let rollback =
        || pb::RollbackRequest { model: "k".into(), to_version: 1, request_id: "rk".into(), ..Default::default() };
    let rb = c.models.rollback(rollback()).await.unwrap().into_inner();
    for _ in 0..3 {
        c.params.push(push_req("k", rb.lineage_epoch, vec![dense("w", 0, &[0.5; 4])])).await.unwrap();
        common::commit(&mut c, "k").await;
    }
    assert!(versions(&mut c, "k").await.iter().all(|v| v.version != rb.version), "retention dropped it");
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let _p = spawn_server_at(&dir, &addr, &[]).await;
    let mut c = common::connect(&_p.url).await.unwrap();
    let before = versions(&mut c, "k").await;
    let again = c.models.rollback(rollback()).await.expect("answered from the stored request").into_inner();
    assert_eq!((again.version, again.lineage_epoch), (rb.version, rb.lineage_epoch));
    assert_eq!(versions(&mut c, "k").await, before, "the retry made no version");
}

/// The CLI waits out a server that is not up yet (logging it once), and with
/// `--reconnect-secs 0` fails at once, naming the server.
#[tokio::test]
async fn the_cli_rides_out_a_server_that_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let p = spawn_server(&dir).await;
    let (addr, url) = (addr_of(&p), p.url.clone());
    ok(&url, &["model", "create", "m", "--kind", "linear", "--features", "2"]);
    drop(p); // killed
    let started = Instant::now();
    let out = cli(&url, &["model", "versions", "m", "--reconnect-secs", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&addr), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "--reconnect-secs 0 waited");
    let waiting = Command::new(BIN)
        .args(["model", "versions", "m", "--json", "--server", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _p = spawn_server_at(&dir, &addr, &[]).await;
    let out = waiting.wait_with_output().unwrap();
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v[0]["version"], 1);
    assert_eq!(err.matches("server unreachable").count(), 1, "{err}");
    assert_eq!(err.matches("reachable again").count(), 1, "{err}");
}

/// `model watch` goes on through a kill -9: the versions made after the restart (one of
/// them before the watch is back) are printed once each.
#[tokio::test]
async fn a_watch_rides_out_a_kill_9_without_losing_or_repeating_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let addr = addr_of(&p);
    // SGD: the test pushes raw gradients (the default for this model, rls, takes statistics)
    ok(&p.url, &["model", "create", "m", "--kind", "linear", "--features", "2", "--optimizer", "sgd"]);
    let mut c = common::connect(&p.url).await.unwrap();
    let mut watch = spawn_logged(&p.url, tmp.path(), "watch", &["model", "watch", "m", "--json"]);
    let pushed_commit = |mut c: Conn| async move {
        c.params.push(push_req("m", 0, vec![dense("w", 0, &[0.5, 0.5])])).await.unwrap();
        commit(&mut c, "m").await.version
    };
    // The watch is subscribed once it has printed the version made after it started.
    let printed = |v: u64| {
        log_of(tmp.path(), "watch", "out")
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|j| j["version"] == v))
            .count()
    };
    let mut v = 0;
    for _ in 0..100 {
        v = pushed_commit(c.clone()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if printed(v) == 1 {
            break;
        }
    }
    assert_eq!(printed(v), 1, "{}", log_of(tmp.path(), "watch", "err"));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let p = spawn_server_at(&dir, &addr, &[]).await;
    c = common::connect(&p.url).await.unwrap();
    // Made at once: likely before the watch is back, so it comes from the catch-up.
    let a = pushed_commit(c.clone()).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let b = pushed_commit(c.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while printed(b) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let err = log_of(tmp.path(), "watch", "err");
    for version in [v, a, b] {
        assert_eq!(printed(version), 1, "version {version} printed once: {err}");
    }
}

/// A kill -9 after a worker's last push was acknowledged but before a version held it
/// (under BSP its last round waits for a second worker, which never pushes): the worker
/// sees the restarted server, reads its rows again, and exits 0 with them committed once.
#[tokio::test]
async fn a_restart_between_the_last_ack_and_its_commit_reads_the_rows_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let addr = addr_of(&p);
    ok(&p.url, &["model", "create", "m", "--kind", "linear", "--features", "1", "--consistency", "bsp"]);
    // A second member of the barrier that joins and never pushes: round 1 stays open.
    let mut c = common::connect(&p.url).await.unwrap();
    let join = pb::JoinRequest { model: "m".into(), worker_id: "idle".into(), ..Default::default() };
    c.params.join(join).await.unwrap();
    let shard = tmp.path().join("one-batch.csv");
    let rows: String = (0..50).map(|i| format!("{i},{}\n", 2 * i)).collect();
    std::fs::write(&shard, format!("x,y\n{rows}")).unwrap();
    let args = ["worker", "--model", "m", "--shard", shard.to_str().unwrap(), "--label", "y", "--batch", "100"];
    let mut worker = spawn_logged(&p.url, tmp.path(), "w", &args);
    // Its one push is acknowledged into round 1, and it waits for a version to hold it.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(worker.try_wait().unwrap().is_none(), "the worker did not wait: {}", log_of(tmp.path(), "w", "err"));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let p = spawn_server_at(&dir, &addr, &[]).await;
    let status = exit_of(&mut worker, "the worker", 120).await;
    let err = log_of(tmp.path(), "w", "err");
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("the server restarted before a version held them"), "{err}");
    let mut c = common::connect(&p.url).await.unwrap();
    let head = versions(&mut c, "m").await.pop().unwrap();
    let w = head.workers.iter().find(|w| w.shard.ends_with("one-batch.csv")).expect("the worker's progress");
    assert_eq!(w.rows, 50, "{head:?}");
    let norm = pull_all(&mut c, "m", Some(head.version)).await.1.into_iter().find(|(n, _)| n == "norm").unwrap().1;
    assert_eq!(norm[0], 50.0, "rows counted by the model's statistics");
}
