//! The evaluator as a user runs it: real server, worker and evaluator processes on the
//! flights data shipped in the repository.
mod common;

use common::data::{labelled_flights, shuffle, write_csv, COLS};
use common::procs::{create_flights_model, ok, spawn_cli, spawn_server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A copy of a shard whose labels are flipped at the source (a broken upstream job): every
/// delayed flight is written as on time and the other way round.
fn poisoned(shard: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shard).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let delay = header.split(',').position(|c| c == "arr_delay").unwrap();
    let rows: Vec<String> = lines
        .map(|l| {
            let mut f: Vec<String> = l.split(',').map(str::to_string).collect();
            let late = f[delay].parse::<f64>().unwrap() > 15.0;
            f[delay] = if late { "0" } else { "100" }.into();
            f.join(",")
        })
        .collect();
    let out = shard.with_extension("poisoned.csv");
    write_csv(&out, header, &rows);
    out
}

/// Shuffled labelled flights: (three training shards, a 20,000-row holdout).
fn data(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let (header, mut rows) = labelled_flights();
    shuffle(&mut rows, 1);
    let holdout = dir.join("holdout.csv");
    write_csv(&holdout, &header, &rows[..20_000]);
    let rest = &rows[20_000..];
    let n = rest.len() / 3;
    let shards: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("shard{i}.csv"))).collect();
    for (i, s) in shards.iter().enumerate() {
        write_csv(s, &header, &rest[i * n..(i + 1) * n]);
    }
    (shards, holdout)
}

fn versions(url: &str, model: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&ok(url, &["model", "versions", model, "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn train(url: &str, model: &str, shard: &Path, cols: &[&str]) {
    let mut args = vec!["worker", "--model", model, "--shard", shard.to_str().unwrap(), "--worker-id", "w"];
    args.extend(cols);
    ok(url, &args);
}

/// Waits until every version of the model has an AUC and no version came for a moment.
fn settle(url: &str, model: &str) -> Vec<serde_json::Value> {
    let mut last = 0;
    for _ in 0..200 {
        let vs = versions(url, model);
        let all = vs.iter().all(|v| v["metrics"].get("auc").is_some());
        if all && vs.len() == last {
            return vs;
        }
        last = vs.len();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the evaluator did not catch up: {:?}", versions(url, model));
}

#[tokio::test]
async fn once_scores_every_version_and_the_plot_is_a_png() {
    let tmp = tempfile::tempdir().unwrap();
    let (shards, holdout) = data(tmp.path());
    let s = spawn_server(&tmp.path().join("data")).await;
    create_flights_model(&s.url, "fl", &["--commit-every-updates", "5"]);
    let mut args = vec!["worker", "--model", "fl", "--shard", shards[0].to_str().unwrap(), "--batch", "500"];
    args.extend(COLS);
    ok(&s.url, &args);
    ok(&s.url, &["model", "commit", "fl"]);
    // Policy commits coalesce when the disk falls behind; top up to 20 versions for sure.
    let small = tmp.path().join("small.csv");
    let text = std::fs::read_to_string(&shards[0]).unwrap();
    std::fs::write(&small, text.lines().take(301).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    // (each run under a worker id of its own: a worker id that finished its passes over a
    // shard resumes at their end, with nothing left to train)
    for run in 0..40 {
        if versions(&s.url, "fl").len() >= 20 {
            break;
        }
        let id = format!("topup-{run}");
        let mut args =
            vec!["worker", "--model", "fl", "--shard", small.to_str().unwrap(), "--worker-id", &id, "--epochs", "2"];
        args.extend(COLS);
        ok(&s.url, &args);
        ok(&s.url, &["model", "commit", "fl"]);
    }
    let n = versions(&s.url, "fl").len();
    let mut args = vec!["evaluator", "--model", "fl", "--holdout", holdout.to_str().unwrap(), "--once"];
    args.extend(COLS);
    let out = ok(&s.url, &args);
    assert!(out.contains(&format!("scored {n} versions")), "{out}");
    let vs = versions(&s.url, "fl");
    assert!(vs.iter().all(|v| v["metrics"]["auc"].is_number()
        && v["metrics"]["logloss"].is_number()
        && v["metrics"]["accuracy"].is_number()));
    let best = vs.iter().map(|v| v["metrics"]["auc"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best > 0.68, "best AUC {best}");
    // nothing left to score
    assert!(ok(&s.url, &args).contains("scored 0 versions"));
    // each score was stored with its baseline (always predicting the base rate), which
    // a trained version beats
    let last = &vs[vs.len() - 1]["metrics"];
    assert!(last["logloss"].as_f64().unwrap() < last["baseline_logloss"].as_f64().unwrap(), "{last}");
    // --rescore replaces what was stored (here: scored on the training shard instead),
    // each version once, told as JSON events
    let auc = |vs: &[serde_json::Value]| vs.iter().map(|v| v["metrics"]["auc"].as_f64().unwrap()).collect::<Vec<_>>();
    let before = auc(&vs);
    let mut re =
        vec!["evaluator", "--model", "fl", "--holdout", shards[0].to_str().unwrap(), "--once", "--rescore", "--json"];
    re.extend(COLS);
    let out = ok(&s.url, &re);
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rescored = events.iter().filter(|e| e["event"] == "scored" && e["rescored"] == true).count();
    assert_eq!(rescored, n, "{out}");
    assert_eq!(events.last().unwrap()["scored"], n, "{out}");
    let after = auc(&versions(&s.url, "fl"));
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(changed >= n - 1, "only {changed} of {n} stored AUCs changed: {before:?} -> {after:?}");
    let png = tmp.path().join("q.png");
    ok(&s.url, &["model", "plot", "fl", "--out", png.to_str().unwrap()]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 5000);
    let show = ok(&s.url, &["model", "show", "fl"]);
    assert!(show.contains("best version"), "{show}");
}

#[tokio::test]
async fn the_gate_rolls_back_a_poisoned_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (shards, holdout) = data(tmp.path());
    let s = spawn_server(&tmp.path().join("data")).await;
    let create = |name: &str| create_flights_model(&s.url, name, &["--commit-every-updates", "10"]);
    // the run without poison: clean shards 0 and 2
    create("clean");
    train(&s.url, "clean", &shards[0], &COLS);
    train(&s.url, "clean", &shards[2], &COLS);
    ok(&s.url, &["model", "commit", "clean"]);
    let mut args = vec!["evaluator", "--model", "clean", "--holdout", holdout.to_str().unwrap(), "--once"];
    args.extend(COLS);
    ok(&s.url, &args);
    let clean_auc = versions(&s.url, "clean").last().unwrap()["metrics"]["auc"].as_f64().unwrap();

    create("p");
    let mut args = vec!["evaluator", "--model", "p", "--holdout", holdout.to_str().unwrap(), "--gate", "auc:0.01"];
    args.extend(COLS);
    let mut evaluator = spawn_cli(&s.url, &args);
    train(&s.url, "p", &shards[0], &COLS);
    let before = settle(&s.url, "p");
    let poison_from = before.last().unwrap()["version"].as_u64().unwrap() + 1;
    let t0 = Instant::now();
    train(&s.url, "p", &poisoned(&shards[1]), &COLS);
    let mut after = settle(&s.url, "p");
    let rollback = after.iter().find(|v| v["reason"].as_str().unwrap().contains("quality gate")).cloned();
    let rollback = rollback.unwrap_or_else(|| panic!("no gate rollback in {after:?}"));
    let reacted = rollback["version"].as_u64().unwrap() - poison_from;
    eprintln!("gate reaction: rollback version {} came {reacted} versions after the first poisoned one, {:.2} s after the poison started", rollback["version"], t0.elapsed().as_secs_f64());
    train(&s.url, "p", &shards[2], &COLS);
    ok(&s.url, &["model", "commit", "p"]);
    after = settle(&s.url, "p");
    let final_auc = after.last().unwrap()["metrics"]["auc"].as_f64().unwrap();
    eprintln!("final AUC {final_auc:.4} with poison and the gate, {clean_auc:.4} without poison");
    assert!((final_auc - clean_auc).abs() <= 0.01, "final AUC {final_auc:.4} vs {clean_auc:.4} without poison");
    let _ = evaluator.kill();
    let _ = evaluator.wait();
}

/// A poisoned shard whose versions were all made before the evaluator reached them (it
/// was down, or slower than the workers): gated on AUC and accuracy, it rolls back once,
/// to the last good version; the poisoned lineage is scored but never judged or
/// restored, and a second run rolls back nothing.
#[tokio::test]
async fn a_poisoned_backlog_is_rolled_back_once_to_the_last_good_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (shards, holdout) = data(tmp.path());
    let s = spawn_server(&tmp.path().join("data")).await;
    create_flights_model(&s.url, "bk", &["--commit-every-updates", "10"]);
    let mut eval = vec!["evaluator", "--model", "bk", "--holdout", holdout.to_str().unwrap(), "--once", "--json"];
    eval.extend(["--gate", "auc:0.01,accuracy:0.02"]);
    eval.extend(COLS);
    let events = |out: &str, kind: &str| -> Vec<serde_json::Value> {
        let all = out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        all.filter(|e| e["event"] == kind).collect()
    };
    train(&s.url, "bk", &shards[0], &COLS);
    ok(&s.url, &["model", "commit", "bk"]);
    assert!(events(&ok(&s.url, &eval), "rolled_back").is_empty(), "clean versions roll nothing back");
    let good = versions(&s.url, "bk");
    let last_good = good.last().unwrap()["version"].as_u64().unwrap();
    let good_accuracy = good.last().unwrap()["metrics"]["accuracy"].as_f64().unwrap();
    train(&s.url, "bk", &poisoned(&shards[1]), &COLS);
    ok(&s.url, &["model", "commit", "bk"]);
    let poisoned_versions = versions(&s.url, "bk").len() - good.len();
    assert!(poisoned_versions >= 5, "{poisoned_versions} poisoned versions");
    let out = ok(&s.url, &eval);
    let rollbacks = events(&out, "rolled_back");
    assert_eq!(rollbacks.len(), 1, "{out}");
    assert_eq!(rollbacks[0]["to"], last_good, "{out}");
    assert_eq!(events(&out, "scored").len(), poisoned_versions, "every poisoned version is scored: {out}");
    assert!(events(&out, "held").is_empty(), "the rolled-back versions are not judged: {out}");
    let vs = versions(&s.url, "bk");
    let head = vs.last().unwrap();
    assert_eq!((head["kind"].as_str(), head["content_of"].as_u64()), (Some("rollback"), Some(last_good)), "{head}");
    let worst = vs.iter().filter_map(|v| v["metrics"]["accuracy"].as_f64()).fold(1.0, f64::min);
    assert!(worst < good_accuracy - 0.1, "the poison showed: accuracy {worst:.3} against {good_accuracy:.3}");
    // a second run scores the rollback (the last good content) and rolls nothing back
    let again = ok(&s.url, &eval);
    assert!(events(&again, "rolled_back").is_empty(), "{again}");
    let head = versions(&s.url, "bk").last().unwrap().clone();
    assert_eq!(head["metrics"]["accuracy"].as_f64(), Some(good_accuracy), "{head}");
}

#[tokio::test]
async fn a_window_of_recent_rows_tracks_a_stream() {
    let tmp = tempfile::tempdir().unwrap();
    // flights in time order: every fifth row goes to the holdout stream
    let (header, rows) = labelled_flights();
    let rows = &rows[..90_000];
    let (train, holdout) = (tmp.path().join("train.csv"), tmp.path().join("holdout.csv"));
    std::fs::write(&train, format!("{header}\n")).unwrap();
    std::fs::write(&holdout, format!("{header}\n")).unwrap();
    let append = |chunk: &[String], offset: usize| {
        let mut tr = std::fs::OpenOptions::new().append(true).open(&train).unwrap();
        let mut ho = std::fs::OpenOptions::new().append(true).open(&holdout).unwrap();
        for (i, l) in chunk.iter().enumerate() {
            writeln!(if (offset + i) % 5 == 4 { &mut ho } else { &mut tr }, "{l}").unwrap();
        }
    };
    let s = spawn_server(&tmp.path().join("data")).await;
    create_flights_model(&s.url, "st", &["--commit-every-updates", "10"]);
    append(&rows[..30_000], 0);
    let mut args = vec![
        "evaluator",
        "--model",
        "st",
        "--holdout",
        holdout.to_str().unwrap(),
        "--holdout-follow",
        "--window",
        "3000",
    ];
    args.extend(COLS);
    let mut evaluator = spawn_cli(&s.url, &args);
    let mut args = vec!["worker", "--model", "st", "--shard", train.to_str().unwrap(), "--follow", "--batch", "500"];
    args.extend(COLS);
    let mut worker = spawn_cli(&s.url, &args);
    for (i, chunk) in rows[30_000..].chunks(30_000).enumerate() {
        settle(&s.url, "st");
        append(chunk, 30_000 * (i + 1));
    }
    let vs = settle(&s.url, "st");
    let aucs: Vec<f64> = vs.iter().skip(1).map(|v| v["metrics"]["auc"].as_f64().unwrap()).collect();
    assert!(vs.len() >= 6, "{} versions", vs.len());
    let offsets: Vec<u64> =
        vs.iter().filter_map(|v| v["workers"].get(0).map(|w| w["offset"].as_u64().unwrap())).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets.last() > offsets.first(), "offsets {offsets:?}");
    let (lo, hi) = aucs.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    assert!(hi - lo > 0.005, "the windowed metric did not move: {aucs:?}");
    eprintln!("windowed AUC over {} versions: {:.4}..{:.4}", aucs.len(), lo, hi);
    for p in [&mut worker, &mut evaluator] {
        let _ = std::process::Command::new("kill").args(["-INT", &p.id().to_string()]).status();
        let _ = p.wait();
    }
}

/// A version whose weights overflow (here imported: every weight f32::MAX, so every
/// prediction is infinite) is marked diverged, keeps its finite scores only, and the gate
/// rolls the model back to the best version before it.
#[tokio::test]
async fn the_gate_rolls_back_a_diverged_version() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let create = ["model", "create", "d", "--kind", "linear", "--hash-bits", "4", "--optimizer", "sgd"];
    ok(&s.url, &create);
    let file = tmp.path().join("d.safetensors");
    ok(&s.url, &["model", "export", "d", "--out", file.to_str().unwrap()]);
    let mut bytes = std::fs::read(&file).unwrap();
    let data = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for w in bytes[data..].chunks_exact_mut(4) {
        w.copy_from_slice(&f32::MAX.to_le_bytes());
    }
    std::fs::write(&file, bytes).unwrap();
    ok(&s.url, &["model", "import", "d", "--from", file.to_str().unwrap()]);
    let holdout = tmp.path().join("h.csv");
    let rows: Vec<String> = (0..50).map(|i| format!("{},v{}", i % 3, i % 5)).collect();
    write_csv(&holdout, "y,c", &rows);
    let args = ["evaluator", "--model", "d", "--holdout", holdout.to_str().unwrap(), "--label", "y"];
    ok(&s.url, &[&args[..], &["--categorical", "c", "--once", "--gate", "rmse:0.1"]].concat());
    let vs = versions(&s.url, "d");
    assert_eq!(vs.len(), 3, "{vs:?}");
    assert!(vs[0]["metrics"]["rmse"].as_f64().is_some_and(f64::is_finite), "{vs:?}");
    assert_eq!(vs[1]["metrics"]["diverged"].as_f64(), Some(1.0), "{vs:?}");
    assert!(vs[1]["metrics"].get("rmse").is_none(), "an infinite rmse was stored: {vs:?}");
    let reason = vs[2]["reason"].as_str().unwrap();
    assert!(reason.starts_with("rollback to 1") && reason.contains("quality gate"), "{reason}");
    // run again: the diverged version counts as scored, and nothing more is rolled back
    ok(&s.url, &[&args[..], &["--categorical", "c", "--once", "--gate", "rmse:0.1"]].concat());
    assert_eq!(versions(&s.url, "d").len(), 3);
}
