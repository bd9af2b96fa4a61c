//! The `accrete` binary: one program, a subcommand per role. Flags are parsed here (clap,
//! with `env` for what a container sets); library crates get plain config structs.
mod compare;
mod conn;
mod datasets;
mod eval_cmd;
mod model_cmd;
mod output;
mod poison;
mod quickstart;
mod worker_cmd;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "accrete", version, about = "A parameter server for models that keep learning while data arrives")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on the flights data shipped inside the binary (start here).
    Quickstart(quickstart::QuickstartArgs),
    /// Run a parameter server.
    Server(ServerArgs),
    /// Create, inspect, version, roll back, import and export models.
    Model(model_cmd::ModelArgs),
    /// Train a model on a data shard (CSV or LIBSVM, plain or .gz, file or directory).
    Worker(worker_cmd::WorkerArgs),
    /// Score every version of a model on holdout data; optionally gate quality with rollbacks.
    Evaluator(eval_cmd::EvaluatorArgs),
    /// Cut a dataset into N shards (contiguous stretches, or round-robin; CSV header kept in each).
    Split(worker_cmd::SplitArgs),
    /// Write a dataset shipped inside the binary (flights, california) as CSV files,
    /// split for training and testing.
    Data(datasets::DataArgs),
    /// Benchmarks with ratios measured in one run.
    Bench(accrete_bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "ACCRETE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the server's sled database (created if missing).
    #[arg(long, env = "ACCRETE_DATA_DIR", default_value = "accrete-data")]
    data_dir: PathBuf,
    /// Largest request or response message in bytes; bigger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ACCRETE_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    max_message_bytes: usize,
    /// Serve the dashboard (models, versions, quality chart) and /metrics on this address.
    #[arg(long, env = "ACCRETE_HTTP")]
    http: Option<SocketAddr>,
    /// sled page cache in bytes (the live parameters are held apart from it).
    #[arg(long, env = "ACCRETE_CACHE_BYTES", default_value_t = 16 << 20)]
    cache_bytes: u64,
    /// Milliseconds a worker that sends nothing (heartbeats every third of this, pulls,
    /// pushes) stays in its model's SSP/BSP barrier before the others go on without it.
    #[arg(long, env = "ACCRETE_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    lease_ms: u64,
    /// Every server of the cluster as host:port, comma-separated, this one included (the
    /// same list on every server); without it the server is a cluster of its own.
    #[arg(long, env = "ACCRETE_PEERS")]
    peers: Option<String>,
    /// This server's host:port as --peers names it, when that is not the listen address
    /// (listening on 0.0.0.0, behind a DNS name).
    #[arg(long, env = "ACCRETE_ADVERTISE")]
    advertise: Option<String>,
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colour codes only for a terminal, and never with NO_COLOR set (https://no-color.org):
    // redirected logs stay plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let cli = Cli::parse();
    // (not for the long-running roles: a server must reach its stop's commit)
    if !matches!(cli.command, Command::Server(_) | Command::Quickstart(_)) {
        quiet_on_closed_stdout();
    }
    // A worker's loop (parse, pull, compute, push) runs on one thread: no CPU spent waking
    // runtime threads, and no cross-thread hand-off on each pull's round trip (~25 % of the
    // wall time with batches of 50). Its heartbeats have a thread of their own.
    let mut builder = match cli.command {
        Command::Worker(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Server(a) => serve(a).await,
            Command::Quickstart(a) => quickstart::run(a).await,
            Command::Model(a) => model_cmd::run(a).await,
            Command::Bench(a) => accrete_bench::run(a).await,
            Command::Worker(a) => worker_cmd::worker(a).await,
            Command::Split(a) => worker_cmd::split(a),
            Command::Data(a) => datasets::run(a),
            Command::Evaluator(a) => eval_cmd::evaluator(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `accrete model predict … | head`: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::printable(&causes(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `println!` panics when its reader closed the pipe (`accrete model versions x | head`):
/// that panic ends the command quietly, as a closed pipe ends any Unix tool. Every other
/// panic is reported as before.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info)
    }));
}

/// An error and its causes on one line, each said once: an error whose message already
/// quotes its cause (`nofile.csv: No such file or directory (os error 2)`) does not get
/// the cause appended again.
fn causes(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

/// The output was closed by its reader (a pipe into `head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn serve(a: ServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let config = accrete_server::ServerConfig {
        data_dir: a.data_dir,
        max_message_bytes: a.max_message_bytes,
        cache_bytes: a.cache_bytes,
        lease: std::time::Duration::from_millis(a.lease_ms),
        peers: a.peers,
        advertise: a.advertise,
    };
    let http = match a.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--http): {e}"))?,
        ),
        None => None,
    };
    // The bound addresses, on stdout (logs go to stderr): with port 0, how to find it.
    // Said once the data dir is open, so a refused or slow open never looks started.
    let (grpc_addr, http_addr) = (listener.local_addr().ok(), http.as_ref().and_then(|l| l.local_addr().ok()));
    let ready = move || {
        if let Some(addr) = grpc_addr {
            println!("accrete server listening on {addr}");
        }
        if let Some(addr) = http_addr {
            println!("dashboard and /metrics on http://{addr}/");
        }
    };
    accrete_server::serve_then(config, listener, http, shutdown_signal(), ready).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
