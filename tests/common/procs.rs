//! Real `accrete` processes for scenario tests: a server on a port the OS picked, and CLI
//! runs against it. Every child is killed when its handle drops, so a failing test leaves
//! nothing behind.
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_accrete");

pub struct Proc {
    pub child: Child,
    pub url: String,
    /// The dashboard's URL when started with `--http`.
    pub http: Option<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `accrete server` on `dir` and waits until it answers.
pub async fn spawn_server(dir: &Path) -> Proc {
    spawn_server_with(dir, &[]).await
}

/// [`spawn_server`] with extra flags. The server binds port 0 (`--http 127.0.0.1:0` too, if
/// given) and the addresses it got are read from its first lines of output, so no other
/// process can take a port between choosing and binding it.
pub async fn spawn_server_with(dir: &Path, extra: &[&str]) -> Proc {
    spawn_server_at(dir, "127.0.0.1:0", extra).await
}

/// [`spawn_server_with`] on a given address: a restart on the port of an earlier run
/// (`addr` from its URL), where its clients look for it.
pub async fn spawn_server_at(dir: &Path, addr: &str, extra: &[&str]) -> Proc {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["server", "--listen", addr, "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let line = next();
    let addr = line.strip_prefix("accrete server listening on ").unwrap_or_else(|| panic!("server said {line:?}"));
    let url = format!("http://{addr}");
    let http = extra.contains(&"--http").then(|| {
        let line = next();
        line.strip_prefix("dashboard and /metrics on ")
            .unwrap_or_else(|| panic!("server said {line:?}"))
            .trim_end_matches('/')
            .to_string()
    });
    // nothing more is printed on stdout; keep the pipe drained all the same
    std::thread::spawn(move || lines.for_each(drop));
    let p = Proc { child, url, http };
    for _ in 0..200 {
        if accrete_client::Client::connect(&p.url).await.is_ok() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server process did not come up on {}", p.url);
}

/// Runs the CLI with `--server url` appended.
pub fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN).args(args).args(["--server", url]).output().unwrap()
}

/// Runs the CLI and returns stdout, failing the test with stderr when it fails.
pub fn ok(url: &str, args: &[&str]) -> String {
    let out = cli(url, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `model create NAME` of the logistic model the flights scenarios train (2^20 hashed rows,
/// AdaGrad 0.1), with `extra` flags (consistency, commit policy).
pub fn create_flights_model(url: &str, name: &str, extra: &[&str]) -> String {
    let spec = ["--kind", "logistic", "--hash-bits", "20", "--optimizer", "adagrad", "--lr", "0.1"];
    ok(url, &[&["model", "create", name][..], &spec, extra].concat())
}

/// Starts a CLI process in the background (stdout and stderr captured).
pub fn spawn_cli(url: &str, args: &[&str]) -> Child {
    Command::new(BIN).args(args).args(["--server", url]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}
