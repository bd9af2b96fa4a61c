//! The deployment files use the real CLI: every command line in `deploy/` (compose,
//! Kubernetes, the Dockerfile's CMD) names a real subcommand, and each of its flags is one
//! that subcommand accepts. (`.ci/run` also runs the offline validators: check-jsonschema
//! with the compose spec, kubernetes-validate --strict, hadolint.) The cluster's
//! membership is consistent: in compose and in the StatefulSet, every server gets the same
//! `--peers`, its own name in it as `--advertise`, and the clients start at named servers.
mod common;
mod compose;

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

#[test]
fn the_compose_servers_form_one_cluster() {
    let services = compose::deploy_services();
    let servers: Vec<&compose::Service> = services.iter().filter(|s| s.role() == "server").collect();
    assert_eq!(servers.len(), 3, "compose runs {} servers", servers.len());
    let peers = servers[0].flag("--peers").expect("server without --peers");
    let mut names: Vec<&str> = peers.split(',').collect();
    for s in &servers {
        assert_eq!(s.flag("--peers"), Some(peers), "{}: another --peers list", s.name);
        let me = s.flag("--advertise").unwrap_or_else(|| panic!("{}: no --advertise", s.name));
        // the name other containers reach it by is the service's, on the port it listens on
        assert_eq!(me, format!("{}:50051", s.name), "{}: --advertise", s.name);
        assert_eq!(s.flag("--listen"), Some("0.0.0.0:50051"), "{}: --listen", s.name);
        assert!(names.contains(&me), "{}: {me} is not in --peers {peers}", s.name);
        names.retain(|n| *n != me);
    }
    assert!(names.is_empty(), "--peers names servers compose does not run: {names:?}");
    let data: Vec<_> = servers.iter().map(|s| s.flag("--data-dir").unwrap()).collect();
    assert!(data.iter().all(|d| d.starts_with("/data")), "data dirs {data:?} are not on the volumes");

    let create = services.iter().find(|s| s.command.starts_with(&["model".into(), "create".into()])).unwrap();
    assert!(create.has("--if-absent"), "create-model runs again on a restart: it needs --if-absent");
    assert_eq!(create.flag("--partitions"), Some("3"), "one partition per server");
    let mut used = Vec::new();
    for c in services.iter().filter(|s| s.role() != "server") {
        let url = c.env("ACCRETE_SERVER").unwrap_or_else(|| panic!("{}: no ACCRETE_SERVER", c.name));
        let addr = url.strip_prefix("http://").unwrap_or(url);
        assert!(peers.split(',').any(|p| p == addr), "{}: {url} is not one of the servers", c.name);
        if ["worker", "evaluator"].contains(&c.role()) {
            used.push(addr);
        }
    }
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 3, "the workers and the evaluator start at different servers: {used:?}");
}

/// A `key: value` of a Kubernetes document, the first at any indent.
fn field<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    doc.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

#[test]
fn the_statefulset_peers_are_its_pods() {
    let text = std::fs::read_to_string(deploy_dir().join("k8s/server.yaml")).unwrap();
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let sts = docs.iter().find(|d| field(d, "kind") == Some("StatefulSet")).expect("no StatefulSet");
    let name = field(sts, "name").unwrap();
    let service = field(sts, "serviceName").unwrap();
    let replicas: usize = field(sts, "replicas").unwrap().parse().unwrap();
    assert_eq!(replicas, 3);
    let args = command_lines(sts).pop().unwrap();
    let flag = |f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].as_str());
    let pods: Vec<String> = (0..replicas).map(|i| format!("{name}-{i}.{service}:50051")).collect();
    assert_eq!(flag("--peers"), Some(pods.join(",").as_str()), "--peers are not the StatefulSet's pods");
    assert_eq!(flag("--advertise"), Some(format!("$(POD_NAME).{service}:50051").as_str()));
    assert!(
        sts.contains("name: POD_NAME") && sts.contains("fieldPath: metadata.name"),
        "POD_NAME is not the pod's name"
    );
    // the pods' DNS names come from a headless Service of that name
    let headless = docs
        .iter()
        .find(|d| field(d, "kind") == Some("Service") && field(d, "name") == Some(service))
        .unwrap_or_else(|| panic!("no Service {service}"));
    assert_eq!(field(headless, "clusterIP"), Some("None"), "Service {service} is not headless");
    // the clients' Service reaches the same pods
    for f in ["workers.yaml", "evaluator.yaml"] {
        let text = std::fs::read_to_string(deploy_dir().join("k8s").join(f)).unwrap();
        let url = field(&text, "value").unwrap();
        let host = url.trim_start_matches("http://").split(':').next().unwrap();
        assert!(
            docs.iter().any(|d| field(d, "kind") == Some("Service") && field(d, "name") == Some(host)),
            "{f}: {url} is no Service of server.yaml"
        );
    }
}
