//! The dashboard and `/metrics` of a real server, the page rendered in headless Chromium
//! (Debian's `chromium`; `.ci/run` installs it). The screenshot is kept in
//! `target/test-artifacts/dashboard.png`.
mod common;

use common::procs::{ok, spawn_server_with};
use std::io::{Read, Write};
use std::process::Command;

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn dashboard_and_metrics_show_versions_and_quality() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server_with(&tmp.path().join("data"), &["--http", "127.0.0.1:0"]).await;
    let http = s.http.clone().unwrap().trim_start_matches("http://").to_string();
    let data = tmp.path().join("d.csv");
    let mut rows = String::from("x,c,y\n");
    let mut rng = accrete_core::rng::SplitMix64::new(3);
    for _ in 0..4000 {
        let x = rng.next_f64();
        let c = rng.next_u64() % 5;
        let y = (x + c as f64 * 0.1 + rng.next_f64() * 0.5 > 0.9) as u8;
        rows.push_str(&format!("{x},{c},{y}\n"));
    }
    std::fs::write(&data, rows).unwrap();
    let d = data.to_str().unwrap();
    // first by name, never trained: the page must still open on the model that is active
    ok(&s.url, &["model", "create", "aaa-idle", "--kind", "linear", "--features", "1"]);
    ok(
        &s.url,
        &[
            "model",
            "create",
            "dash",
            "--kind",
            "logistic",
            "--features",
            "1",
            "--hash-bits",
            "8",
            "--optimizer",
            "adagrad",
            "--lr",
            "0.1",
            "--commit-every-updates",
            "4",
        ],
    );
    ok(
        &s.url,
        &[
            "worker",
            "--model",
            "dash",
            "--shard",
            d,
            "--label",
            "y",
            "--numeric",
            "x",
            "--categorical",
            "c",
            "--batch",
            "200",
        ],
    );
    ok(&s.url, &["model", "rollback", "dash", "--to", "3"]);
    ok(
        &s.url,
        &[
            "evaluator",
            "--model",
            "dash",
            "--holdout",
            d,
            "--label",
            "y",
            "--numeric",
            "x",
            "--categorical",
            "c",
            "--once",
        ],
    );
    let versions: serde_json::Value =
        serde_json::from_str(&ok(&s.url, &["model", "versions", "dash", "--json"])).unwrap();
    let n = versions.as_array().unwrap().len();

    let metrics = get(&http, "/metrics");
    assert!(metrics.contains("200 OK") && metrics.contains("accrete_pushes_total{model=\"dash\"} 20"), "{metrics}");
    assert!(metrics.contains(&format!("accrete_head_version{{model=\"dash\"}} {n}")), "{metrics}");
    assert!(metrics.contains("accrete_version_metric{model=\"dash\",metric=\"auc\""), "{metrics}");
    let api = get(&http, "/api/models/dash/versions");
    assert!(api.contains("\"reason\":\"rollback to 3\""), "{api}");
    let models = get(&http, "/api/models");
    assert!(models.contains("\"workers\":0") && models.contains("\"pushes_per_sec\""), "{models}");

    // The page as served, before any script runs: the most recently active model, its
    // chart with the head and the best version marked, the rollback labelled with its
    // target and drawn as a new branch from it, the baseline, the legend naming only
    // what is drawn, and AUC ticks within [0, 1].
    let page = get(&http, "/");
    let body = page.split("<script>").next().unwrap();
    assert!(body.contains("dash — quality: auc by version"), "{body}");
    assert_eq!(body.matches("<circle class=\"point\"").count(), n, "one point per scored version: {body}");
    assert!(body.contains("class=\"mark head\"") && body.contains("class=\"mark best\""), "{body}");
    assert!(body.contains("<text class=\"rblabel\"") && body.contains("↩ 3</text>"), "{body}");
    assert_eq!(body.matches("class=\"lineage jump\"").count(), 1, "the rollback's line starts at version 3");
    assert!(body.contains("<polyline class=\"baseline\""), "the baseline is drawn");
    let ticks: Vec<f64> = body
        .split("text-anchor=\"end\">")
        .skip(1)
        .filter_map(|t| t.split('<').next().and_then(|v| v.parse().ok()))
        .collect();
    assert!(!ticks.is_empty() && ticks.iter().all(|t| (0.0..=1.0).contains(t)), "AUC ticks {ticks:?}");
    // another metric (lower is better, with its stored baseline) and the time axis
    let ll = get(&http, "/?model=dash&metric=logloss&x=time");
    assert!(ll.contains("logloss by time") && ll.contains("lower is better"), "{ll}");
    assert!(ll.contains("<polyline class=\"baseline\"") && ll.contains("time (UTC)"), "{ll}");
    // a model with no score says how to get one, and its table has no chart legend
    let idle = get(&http, "/?model=aaa-idle");
    assert!(idle.contains("No version of aaa-idle is scored yet") && !idle.contains("<svg"), "{idle}");
    // the fragment the script refreshes is the same body
    let frag = get(&http, "/fragment?model=dash");
    assert!(frag.contains("dash — quality") && !frag.contains("<script>"), "{frag}");

    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(chromium) = chromium else {
        return common::missing_tool("headless Chromium (Debian's chromium package)");
    };
    let url = format!("http://{http}/?model=dash");
    let profile = tmp.path().join("chromium");
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        "--virtual-time-budget=5000",
    ];
    let dom = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    // the rendered document, without the script that renders it
    let dom = dom.split("<script>").next().unwrap_or_default();
    // after the scripts ran (and refreshed it) the page shows the same
    assert_eq!(dom.matches("<circle class=\"point\"").count(), n, "one chart point per scored version: {dom}");
    assert_eq!(dom.matches("<line class=\"rollback\"").count(), 1, "the rollback is marked");
    assert!(dom.contains("<span class=\"badge head\">head</span>"), "{dom}");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let out = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "screenshot of {} bytes", bytes.len());
}
