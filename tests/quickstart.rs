//! The README's first command, as a newcomer runs it, and its summary checked against the
//! versions it left behind.
mod common;

use common::procs::{ok, spawn_server, BIN};

#[tokio::test]
async fn quickstart_runs_and_its_summary_is_true() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("quickstart")
        .args(["--month-ms", "100"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| {
        text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name:?} in {text}")).to_string()
    };
    let versions_line = field("versions ");
    let best_line = field("best version ");
    assert!(field("rows trained ").contains("261881"), "{text}");
    let dir = tmp.path().join("accrete-quickstart");
    assert!(dir.join("quality.png").exists() && dir.join("continuous-vs-frozen.png").exists());
    // the story: learning on beats the model frozen after January, month after month
    let auc = |name: &str| -> f64 {
        let line = field(name);
        line.split_whitespace().nth(3).and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let (live, frozen) = (auc("continuous "), auc("frozen "));
    assert!(live > frozen + 0.01, "continuous {live} against frozen {frozen}: {text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("2013-") && l.contains(" / ")).count(), 11, "{text}");
    // the model it left behind
    let s = spawn_server(&dir.join("server")).await;
    let vs: serde_json::Value = serde_json::from_str(&ok(&s.url, &["model", "versions", "flights", "--json"])).unwrap();
    let vs = vs.as_array().unwrap();
    assert!(versions_line.contains(&format!(" {} (", vs.len())), "{versions_line} vs {} versions", vs.len());
    let best = vs
        .iter()
        .filter(|v| v["metrics"]["auc"].is_number())
        .max_by(|a, b| a["metrics"]["auc"].as_f64().unwrap().total_cmp(&b["metrics"]["auc"].as_f64().unwrap()))
        .unwrap();
    assert!(
        best_line.contains(&format!(
            "best version     {} (auc {:.4}",
            best["version"],
            best["metrics"]["auc"].as_f64().unwrap()
        )),
        "{best_line} vs {best}"
    );
    assert!(vs.last().unwrap()["reason"].as_str().unwrap().starts_with("rollback"));
    assert_eq!(vs.last().unwrap()["kind"], "rollback");
    assert_eq!(vs[0]["kind"], "created");
    assert!(vs.iter().any(|v| v["kind"] == "policy") && vs.iter().any(|v| v["kind"] == "manual"), "{vs:?}");
}
