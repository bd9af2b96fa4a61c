//! The Python client's example (a numpy training loop, then predictions, a rollback, a
//! watch, and a fenced older incarnation) against a real server. Needs a
//! Python with grpcio, grpcio-tools and numpy: `ACCRETE_PYTHON` names it (`.ci/run` makes
//! one), else `python3`.
mod common;

use common::procs::spawn_server;

#[tokio::test]
async fn the_python_example_trains_against_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let python = std::env::var("ACCRETE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ready = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        return common::missing_tool(&format!("{python} with grpcio, grpcio-tools and numpy"));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../accrete-python");
    let out = std::process::Command::new(&python)
        .arg("example.py")
        .args(["--server", &s.url])
        .current_dir(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{python} example.py failed (it needs grpcio, grpcio-tools and numpy; .ci/run installs them):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("learned w within"), "{stdout}");
    assert!(stdout.contains("head 7 (policy: policy)"), "the kind of a version: {stdout}");
    assert!(stdout.contains("a push of the older one is refused"), "{stdout}");
    assert!(stdout.contains("served predictions within"), "{stdout}");
    assert!(stdout.contains("watched VERSION_EVENT_KIND_ROLLED_BACK"), "{stdout}");
}
