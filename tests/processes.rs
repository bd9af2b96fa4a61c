//! Scenarios with real `accrete` processes, as a user runs them: `kill -9` and restart on
//! the same data dir, SIGTERM shutdown, a data dir that is not ours, and the CLI's output.
mod common;

use accrete_proto::v1 as pb;
use common::*;
use std::process::Command;
use std::time::Duration;

use common::procs::{cli, spawn_server, BIN};

#[tokio::test]
async fn acknowledged_versions_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    let mut spec = linear("d", 50_000, pb::OptimizerKind::Adam, 0.01);
    spec.hash_bits = 12;
    spec.init = Some(pb::InitSpec { seed: 9, scale: 0.1 });
    create(&mut c, spec).await;
    let mut committed = Vec::new();
    for i in 0..3 {
        c.params
            .push(push_req("d", 0, vec![dense("w", 1000 * i, &[0.5; 700]), rows("h", &[i, 4000], &[1.0, -1.0])]))
            .await
            .unwrap();
        let v = commit(&mut c, "d").await;
        committed.push((v.version, pull_all(&mut c, "d", None).await.1));
    }
    // an update that is acknowledged but never committed may be lost
    c.params.push(push_req("d", 0, vec![dense("w", 0, &[9.0; 10])])).await.unwrap();
    let before = versions(&mut c, "d").await;
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    let mut p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    assert_eq!(versions(&mut c, "d").await, before);
    for (v, tensors) in &committed {
        let got = pull_all(&mut c, "d", Some(*v)).await.1;
        for ((name, a), (_, b)) in got.iter().zip(tensors) {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "version {v} tensor {name} differs after kill -9"
            );
        }
    }
    // The live state restarts from the head version, and the server serves again.
    assert_eq!(pull_all(&mut c, "d", None).await.1, committed[2].1);
    c.params.push(push_req("d", 0, vec![dense("w", 0, &[1.0; 10])])).await.unwrap();
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = spawn_server(&tmp.path().join("data")).await;
    let out = cli(&p.url, &["model", "create", "m", "--kind", "linear", "--features", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An open watch stream must not keep the server from stopping.
    let mut c = common::connect(&p.url).await.unwrap();
    let watch = c
        .models
        .watch_versions(pb::WatchRequest { model: "m".into(), after_version: None })
        .await
        .unwrap()
        .into_inner();
    let status = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut waited = 0;
    let code = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(waited < 200, "server did not exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    };
    assert!(code.success(), "exit status {code:?}");
    assert!(waited < 100, "stopping took the whole grace period: the watch stream held it");
    drop(watch);
}

/// Nothing applied is lost by a planned stop: SIGTERM commits what the policy had not,
/// and says so. Until then `model show` and `export` of the head say it is not committed.
#[tokio::test]
async fn a_graceful_stop_commits_what_was_not_committed() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let mut server = Command::new(BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("http://{}", line.trim().trim_start_matches("accrete server listening on "));
    let mut c = common::connect(&url).await.unwrap();
    create(&mut c, linear("g", 100, pb::OptimizerKind::Sgd, 0.1)).await;
    for i in 0..3 {
        c.params.push(push_req("g", 0, vec![dense("w", i * 10, &[1.0; 10])])).await.unwrap();
    }
    let live = pull_all(&mut c, "g", None).await.1;
    drop(c);
    let show = cli(&url, &["model", "show", "g"]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("updates 3 (3 uncommitted)"), "{show:?}");
    let export = cli(&url, &["model", "export", "g", "--out", tmp.path().join("g.st").to_str().unwrap()]);
    let note = String::from_utf8_lossy(&export.stderr);
    assert!(export.status.success() && note.contains("3 updates past version 1"), "{note}");

    // a worker that follows its shard keeps a push stream open: it must not hold the stop
    let shard = tmp.path().join("f.csv");
    let rows: String = (0..2000).map(|i| format!("{},c{}\n", i % 2, i % 9)).collect();
    std::fs::write(&shard, format!("y,c\n{rows}")).unwrap();
    let spec = ["model", "create", "f", "--kind", "logistic", "--hash-bits", "8", "--commit-every-secs", "0"];
    assert!(cli(&url, &spec).status.success());
    let follow = ["worker", "--model", "f", "--shard", shard.to_str().unwrap(), "--label", "y", "--categorical", "c"];
    let mut worker = common::procs::spawn_cli(&url, &[&follow[..], &["--follow", "--batch", "100"]].concat());
    let mut c = common::connect(&url).await.unwrap();
    for _ in 0..200 {
        let info = c.models.get_model_info(pb::ModelRef { name: "f".into() }).await.unwrap().into_inner();
        if info.updates >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);

    // SIGTERM, as systemd or Kubernetes stops a server
    let asked = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    // (waiting without blocking the runtime: this test's own idle connections must be able
    // to answer the server's closing handshake, as any live client does)
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let took = asked.elapsed();
    let _ = worker.kill();
    let _ = worker.wait();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(took < Duration::from_secs(8), "the stop took {took:?}: an open push stream held it\n{said}");
    assert!(said.contains("stopping: committed the uncommitted updates") && said.contains("model=g"), "{said}");
    assert!(!said.contains("calls still open after the grace period"), "{said}");
    let p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    let vs = versions(&mut c, "g").await;
    let head = vs.last().unwrap();
    assert_eq!((vs.len(), head.reason.as_str(), head.updates_since_parent), (2, "graceful stop", 3), "{vs:?}");
    assert_eq!(
        pull_all(&mut c, "g", None).await.1,
        live,
        "the live state after the restart is the one before the stop"
    );
}

/// A deploy job that creates its model may run again: `--if-absent` succeeds on the same
/// spec and still refuses another one, naming what differs.
#[tokio::test]
async fn create_if_absent_is_idempotent_for_the_same_spec_only() {
    let tmp = tempfile::tempdir().unwrap();
    let p = spawn_server(&tmp.path().join("data")).await;
    let spec =
        ["model", "create", "m", "--kind", "logistic", "--hash-bits", "12", "--optimizer", "adagrad", "--lr", "0.1"];
    for _ in 0..2 {
        let out = cli(&p.url, &[&spec[..], &["--if-absent"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let again = cli(&p.url, &spec);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("ALREADY_EXISTS"));
    let other = cli(&p.url, &["model", "create", "m", "--kind", "logistic", "--hash-bits", "14", "--if-absent"]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && err.contains("different spec (hash_bits, optimizer)"), "{err}");
    let mut c = common::connect(&p.url).await.unwrap();
    assert_eq!(versions(&mut c, "m").await.len(), 1, "nothing was created twice");
}

#[tokio::test]
async fn a_data_dir_that_is_not_ours_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("thesis.tex"), "precious").unwrap();
    let out =
        Command::new(BIN).args(["server", "--listen", "127.0.0.1:0", "--data-dir"]).arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an accrete data dir"), "{err}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("thesis.tex")).unwrap(), "precious");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let _first = spawn_server(&dir).await;
    let out = Command::new(BIN).args(["server", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use: another accrete server holds its database lock"), "{err}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("listening"), "a server that never served said it was listening: {said}");
}

#[tokio::test]
async fn cli_reports_tables_json_and_server_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = spawn_server(&tmp.path().join("data")).await;
    let ok = |args: &[&str]| {
        let out = cli(&p.url, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&["model", "create", "m", "--kind", "logistic", "--hash-bits", "8", "--optimizer", "adagrad", "--lr", "0.1"]);
    let list = ok(&["model", "list"]);
    assert!(list.starts_with("NAME") && list.contains("logistic"), "{list}");
    ok(&["model", "tag", "m", "1", "first"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&["model", "versions", "m", "--json"])).unwrap();
    assert_eq!(v[0]["version"], 1);
    assert_eq!(v[0]["parent"], serde_json::Value::Null);
    assert_eq!(v[0]["reason"], "create");
    assert_eq!(v[0]["tags"][0], "first");
    let show: serde_json::Value = serde_json::from_str(&ok(&["model", "show", "m", "--json"])).unwrap();
    assert_eq!(show["tensors"][0]["rows"], 256);
    let out = cli(&p.url, &["model", "show", "nosuch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NOT_FOUND") && err.contains("nosuch"), "{err}");
    let out = cli(&p.url, &["model", "create", "x", "--kind", "softmax", "--features", "3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("classes"), "{}", String::from_utf8_lossy(&out.stderr));
    // a reason too long for a table is cut there, whole in JSON (it once made the CLI panic)
    let long = "x".repeat(70_000);
    ok(&["model", "rollback", "m", "--to", "1", "--reason", &long]);
    let table = ok(&["model", "versions", "m"]);
    assert!(table.contains("…") && table.lines().all(|l| l.chars().count() < 1000), "{}", &table[..200]);
    let v: serde_json::Value = serde_json::from_str(&ok(&["model", "versions", "m", "--json"])).unwrap();
    assert_eq!(v[1]["reason"].as_str().unwrap().len(), "rollback to 1: ".len() + long.len());
    assert_eq!(v[1]["kind"], "rollback");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

/// kill -9 while retention runs (a commit after every push, `--keep-last 2`) and while
/// rollbacks come and go: after each restart, every listed version can be read back.
#[tokio::test]
async fn every_listed_version_reads_back_after_kill_9_during_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    let mut spec = linear("ret", 4, pb::OptimizerKind::Adagrad, 0.1);
    spec.hash_bits = 16;
    spec.commit = Some(pb::CommitPolicy { every_updates: 1, every_secs: 0.0, keep_last: 2 });
    create(&mut c, spec).await;
    let mut checked = 0;
    for round in 0..6u64 {
        let load = {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let keys: Vec<u64> = (0..64).map(|k| (k * 1021 + i * 7 + round) % (1 << 16)).collect();
                    let push = push_req("ret", 0, vec![rows("h", &keys, &[0.5; 64]), dense("w", 0, &[0.1; 4])]);
                    if c.params.push(push).await.is_err() {
                        return;
                    }
                    if i % 5 == 4 {
                        let head = versions(&mut c, "ret").await.last().map_or(1, |v| v.version);
                        let req = pb::RollbackRequest {
                            model: "ret".into(),
                            to_version: head.saturating_sub(1).max(1),
                            reason: String::new(),
                            ..Default::default()
                        };
                        if c.models.rollback(req).await.is_err() {
                            // the target was retained away meanwhile, or the server is gone
                        }
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(150 + 97 * round)).await;
        p.child.kill().unwrap(); // SIGKILL, in the middle of commits and retention
        p.child.wait().unwrap();
        let _ = load.await;
        p = spawn_server(&dir).await;
        c = common::connect(&p.url).await.unwrap();
        for v in versions(&mut c, "ret").await {
            let pulled = c
                .params
                .pull(pb::PullRequest { model: "ret".into(), version: Some(v.version), ..Default::default() })
                .await;
            assert!(
                pulled.is_ok(),
                "round {round}: listed version {} does not read back: {:?}",
                v.version,
                pulled.err()
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} versions checked");
}

/// Unmounts a test's tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: commits and tags answer RESOURCE_EXHAUSTED, pushes past the commit
/// policy's bound are refused instead of acknowledged, and once space is freed the server
/// commits again without a restart. Every acknowledged update is in a version, across a
/// kill -9.
#[tokio::test]
async fn a_full_disk_refuses_what_it_cannot_commit_and_recovers_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(tmp.path()).status();
    assert!(mounted.is_ok_and(|s| s.success()), "this test mounts a small tmpfs to fill: it needs root");
    let _mount = Mount(tmp.path().to_path_buf());
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    let mut spec = linear("m", 4, pb::OptimizerKind::Sgd, 0.01);
    spec.hash_bits = 18; // 1 MiB of weights in 16 chunks
    spec.commit = Some(pb::CommitPolicy { every_updates: 1, keep_last: 3, ..Default::default() });
    create(&mut c, spec).await;
    // Fill the disk.
    let ballast = tmp.path().join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        while f.write_all(&[1u8; 1 << 16]).is_ok() {}
        let _ = f.sync_all();
    }
    // Every push touches every chunk (a row in each: each version writes a delta layer per chunk).
    let keys: Vec<u64> = (0..16).map(|i| i * 16384 + 7).collect();
    let push = || push_req("m", 0, vec![rows("h", &keys, &[0.5; 16])]);
    let mut acked = 0u64;
    let mut refused = None;
    for _ in 0..400 {
        match c.params.push(push()).await {
            Ok(_) => acked += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("pushes were acknowledged although no version could be written");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{}", refused.message());
    assert!(refused.message().contains("pushes are refused until a commit succeeds"), "{}", refused.message());
    let e = c
        .models
        .commit(pb::CommitRequest { model: "m".into(), reason: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    // (the newest version: with delta layers many small versions fit, and retention may
    // drop older ones once space is back)
    let tag = |version| pb::TagRequest { model: "m".into(), version, label: "first".into() };
    let newest = versions(&mut c, "m").await.pop().unwrap().version;
    let e = c.models.tag(tag(newest)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    // Free the space: within a few seconds the policy writes what waits, and pushes,
    // commits and tags work again, with no restart.
    std::fs::remove_file(&ballast).unwrap();
    let mut back = false;
    for _ in 0..100 {
        if c.params.push(push()).await.is_ok() {
            acked += 1;
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "pushes were still refused 10 s after space was freed");
    let newest = versions(&mut c, "m").await.pop().unwrap().version;
    c.models.tag(tag(newest)).await.expect("a tag once space is freed");
    commit(&mut c, "m").await;
    let head = versions(&mut c, "m").await.pop().unwrap();
    let info = c.models.get_model_info(pb::ModelRef { name: "m".into() }).await.unwrap().into_inner();
    assert_eq!((head.updates, info.updates), (acked, acked), "every acknowledged update is in a version");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    assert_eq!(versions(&mut c, "m").await.pop().unwrap().updates, acked, "lost after kill -9");
}

/// Exit 0 means committed: once a worker has exited successfully, a kill -9 of the server
/// loses none of its rows — a committed version holds its last offset.
#[tokio::test]
async fn a_worker_exits_0_only_once_a_version_holds_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut p = spawn_server(&dir).await;
    let shard = tmp.path().join("y.csv");
    let rows: Vec<String> = (0..2000).map(|i| format!("{},{}", (i % 10) as f32, 2.0 * (i % 10) as f32)).collect();
    std::fs::write(&shard, format!("x,y\n{}\n", rows.join("\n"))).unwrap();
    let out = cli(&p.url, &["model", "create", "m", "--kind", "linear", "--features", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let args = ["worker", "--model", "m", "--shard", shard.to_str().unwrap(), "--label", "y", "--batch", "50"];
    let out = cli(&p.url, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("committed in version"), "{stdout}");
    p.child.kill().unwrap(); // SIGKILL, at once
    p.child.wait().unwrap();
    let p = spawn_server(&dir).await;
    let mut c = common::connect(&p.url).await.unwrap();
    let head = versions(&mut c, "m").await.pop().unwrap();
    let w = head.workers.iter().find(|w| w.shard.ends_with("y.csv")).expect("the worker's progress");
    assert_eq!((w.rows, w.offset), (2000, std::fs::metadata(&shard).unwrap().len()), "{head:?}");
}
