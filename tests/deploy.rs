//! The deployment files use the real CLI: every command line in `deploy/` (compose,
//! Kubernetes, the Dockerfile's CMD) names a real subcommand, and each of its flags is one
//! that subcommand accepts. (`.ci/run` also runs the offline validators: check-jsonschema
//! with the compose spec, kubernetes-validate --strict, hadolint.)
mod common;

use common::procs::BIN;

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every `command: [...]`, `args: [...]` and `CMD [...]` flow sequence of a file.
fn command_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = ["command:", "args:", "CMD"].iter().find_map(|k| l.strip_prefix(k))?;
            let rest = rest.trim();
            rest.starts_with('[')
                .then(|| serde_json::from_str::<Vec<String>>(rest).unwrap_or_else(|e| panic!("{l}: {e}")))
        })
        .collect()
}

#[test]
fn deploy_command_lines_match_the_cli() {
    let mut files = vec![deploy_dir().join("docker-compose.yml"), deploy_dir().join("Dockerfile")];
    files.extend(std::fs::read_dir(deploy_dir().join("k8s")).unwrap().map(|e| e.unwrap().path()));
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for cmd in command_lines(&text) {
            let sub: Vec<&str> = cmd.iter().take_while(|a| !a.starts_with("--")).map(|s| s.as_str()).collect();
            // positional arguments after the subcommand (e.g. a model name) are not commands
            let sub: Vec<&str> = match sub.first() {
                Some(&"model") => sub.iter().take(2).copied().collect(),
                _ => sub.iter().take(1).copied().collect(),
            };
            let help = std::process::Command::new(BIN).args(&sub).arg("--help").output().unwrap();
            assert!(help.status.success(), "{}: `accrete {}` is not a command", f.display(), sub.join(" "));
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in cmd.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{}: `accrete {}` has no flag {flag}",
                    f.display(),
                    sub.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} command lines found in deploy/");
}
