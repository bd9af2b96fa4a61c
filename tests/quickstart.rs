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
    let auc_of = |v: &serde_json::Value| v["metrics"]["auc"].as_f64();
    let best = vs.iter().filter_map(auc_of).fold(f64::NEG_INFINITY, f64::max);
    assert!(best_line.contains(&format!("(auc {best:.4}")), "{best_line} vs best AUC {best}");
    // the poisoned shard: the versions it made score worse, and the gate rolled the model
    // back on its own to a version from before it
    let ended = field("the stream ended at version ");
    let first_poisoned = 1 + ended.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).expect(&ended);
    let head = vs.last().unwrap();
    assert_eq!(head["kind"], "rollback", "{head}\n{text}");
    // the content it holds, through rollbacks of rollbacks
    let mut restored = head["content_of"].as_u64().unwrap();
    while let Some(c) = vs.iter().find(|v| v["version"] == restored).and_then(|v| v["content_of"].as_u64()) {
        restored = c;
    }
    assert!(restored < first_poisoned, "the head holds version {restored}'s content, made by the poison: {vs:?}");
    // every poisoned version fails the gate (`auc:0.02,accuracy:0.02`) against the content
    // restored: a version with the poisoned worker's last few rows may lose accuracy alone
    let of = |v: &serde_json::Value, m: &str| v["metrics"][m].as_f64();
    let restored_v = vs.iter().find(|v| v["version"] == restored).unwrap();
    let (restored_auc, restored_acc) = (of(restored_v, "auc").unwrap(), of(restored_v, "accuracy").unwrap());
    let poisoned: Vec<&serde_json::Value> =
        vs.iter().filter(|v| v["version"].as_u64().unwrap() >= first_poisoned && v["content_of"].is_null()).collect();
    assert!(!poisoned.is_empty(), "{vs:?}");
    for v in &poisoned {
        let (auc, acc) = (of(v, "auc"), of(v, "accuracy"));
        let (auc, acc) = auc.zip(acc).unwrap_or_else(|| panic!("poisoned version not scored: {v}"));
        assert!(
            auc < restored_auc - 0.02 || acc < restored_acc - 0.02,
            "poisoned {v} against restored AUC {restored_auc}, accuracy {restored_acc}"
        );
    }
    assert!(field("quality gate ").contains("rolled back"), "{text}");
    assert_eq!(vs[0]["kind"], "created");
    assert!(vs.iter().any(|v| v["kind"] == "policy") && vs.iter().any(|v| v["kind"] == "manual"), "{vs:?}");
}
