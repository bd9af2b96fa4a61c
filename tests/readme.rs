//! README.md as a newcomer follows it: every `console` block, top to bottom, in one
//! directory, against a real server, with `accrete` on the PATH. A command must exit 0,
//! and the lines printed under it in the README must be what it prints (numbers to 4
//! significant digits). `model watch` streams until Ctrl-C: it runs for a few seconds, is
//! interrupted, and must have printed the versions it promises.
mod common;

use common::procs::{spawn_server, BIN};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A command of the README and the output it shows under it.
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The `$ ` commands of the README's console blocks (a trailing `\` continues a command).
fn steps(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    let mut continued = false;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_console = line.trim() == "```console";
            continued = false;
            continue;
        }
        if !in_console {
            continue;
        }
        if continued {
            let s = steps.last_mut().unwrap();
            s.command.push('\n');
            s.command.push_str(line);
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step { line: i + 1, command: cmd.to_string(), expected: Vec::new() });
        } else if let Some(s) = steps.last_mut() {
            s.expected.push(line.to_string());
        }
        continued = line.ends_with('\\');
    }
    steps
}

fn same(expected: &str, got: &str) -> bool {
    match (expected.trim().parse::<f64>(), got.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= 1e-4 * a.abs().max(1.0),
        _ => expected.trim() == got.trim(),
    }
}

fn shell(dir: &Path, url: &str, command: &str) -> Command {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut c = Command::new("bash");
    c.args(["-o", "pipefail", "-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .env("ACCRETE_SERVER", url)
        .env("NO_COLOR", "1")
        .env("ACCRETE_RECONNECT_SECS", "0");
    c
}

#[tokio::test]
async fn the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() >= 20, "only {} commands found in README.md's console blocks", steps.len());
    let tmp = tempfile::tempdir().unwrap();
    let server = spawn_server(&tmp.path().join("server-data")).await;
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    for s in &steps {
        let at = format!("README.md:{} `{}`", s.line, s.command);
        if s.command.contains("model watch") {
            // streams until Ctrl-C: give it a few seconds, then interrupt it
            let child = shell(&work, &server.url, &format!("timeout -s INT 3 {}", s.command))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.lines().count() >= 2, "{at} printed {text:?} in 3 s");
            continue;
        }
        let out = shell(&work, &server.url, &s.command).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{at} failed ({}):\n{stdout}\n{stderr}", out.status);
        if !s.expected.is_empty() {
            let got: Vec<&str> = stdout.lines().collect();
            let matches = got.len() == s.expected.len() && s.expected.iter().zip(&got).all(|(e, g)| same(e, g));
            assert!(matches, "{at} printed {got:?}; the README shows {:?}", s.expected);
        }
    }
    // and the state the README leaves is what it says
    let tagged = shell(&work, &server.url, "accrete model versions ctr --json").output().unwrap();
    let versions: serde_json::Value = serde_json::from_slice(&tagged.stdout).unwrap();
    let v3 = versions.as_array().unwrap().iter().find(|v| v["version"] == 3).expect("version 3 of ctr");
    assert_eq!(v3["tags"], serde_json::json!(["good"]));
    let fl = shell(&work, &server.url, "accrete model versions fl --json").output().unwrap();
    let fl: serde_json::Value = serde_json::from_slice(&fl.stdout).unwrap();
    assert!(fl.as_array().unwrap().iter().any(|v| v["metrics"]["auc"].as_f64().is_some_and(|a| a > 0.6)), "{fl}");
    // the three workers of the `for … & done; wait` line (whose status `wait` hides)
    // trained every row of flights/train.csv
    let head = fl.as_array().unwrap().iter().max_by_key(|v| v["version"].as_u64()).unwrap();
    let rows: u64 = head["workers"].as_array().unwrap().iter().map(|w| w["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 261_877, "{head}");
    assert!(work.join("quality.png").exists());
    drop(server);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn readme_commands_are_found_with_their_output() {
    let s = steps("text\n```console\n$ a \\\n    b\n$ c\n9.5\n```\n```python\n$ no\n```\n");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].command, "a \\\n    b");
    assert_eq!((s[1].command.as_str(), s[1].expected.clone()), ("c", vec!["9.5".to_string()]));
    assert!(same("9.999989", "9.99999") && !same("9.999989", "9.5"));
}
