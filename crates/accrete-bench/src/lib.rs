//! `accrete bench`: benchmarks of the parameter server (alone and as a cluster), the
//! worker and the evaluator, with ratios measured in the same run (these machines are
//! shared and noisy, so absolute times are only context). Benchmarks may use the wire
//! types directly: they measure the transport as well as the system.

mod cluster;
mod evaluator;
mod server;
mod sink;
mod storage;
mod worker;

use clap::{Args, Subcommand};
use std::net::SocketAddr;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Parameter-server benchmarks (push, commit, rollback, memory, disk).
    Server {
        /// Largest model for the commit and rollback scenarios (floats).
        #[arg(long, default_value_t = 100_000_000)]
        max_floats: u64,
        /// Print one JSON object with every figure.
        #[arg(long)]
        json: bool,
        /// Scenarios to run (apply, dense, admin, sparse, commit, rss, disk, hashed); all by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// A model split over 1, 2 and 3 server processes (issue 13): push and pull
    /// throughput as ratios to one server, commits while pushers run, RSS per
    /// server.
    Cluster {
        /// Concurrent pushers (each a joined worker with its own connections).
        #[arg(long, default_value_t = 2)]
        pushers: usize,
        /// Commits in the commit scenario (on 1 server, then on 3).
        #[arg(long, default_value_t = 30)]
        commits: usize,
        /// Print one JSON object with every figure.
        #[arg(long)]
        json: bool,
    },
    /// Worker throughput without the network: parse, hash and compute gradients of a
    /// hashed logistic model over a CSV (the flights data by default).
    Worker {
        /// CSV to read (default: the flights data shipped in the binary's source tree).
        #[arg(long)]
        input: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Evaluator throughput: versions of a 10^6-parameter (2^20 hashed rows) logistic model
    /// scored per second on a 50,000-row holdout of the flights data.
    Evaluator {
        #[arg(long, default_value_t = 20)]
        versions: u64,
    },
    /// (internal) Serve the raw-streaming sink that the push benchmark compares with.
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.cmd {
        BenchCmd::Server { max_floats, json, only } => server::server_bench(max_floats, json, &only).await,
        BenchCmd::Cluster { pushers, commits, json } => cluster::cluster_bench(pushers, commits, json).await,
        BenchCmd::Sink { listen } => sink::serve_sink(listen).await,
        BenchCmd::Worker { input, batch } => worker::worker_bench(input, batch),
        BenchCmd::Evaluator { versions } => evaluator::evaluator_bench(versions).await,
    }
}

/// The flights data shipped in the binary's source tree.
pub(crate) fn flights() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../accrete/data/flights.csv.gz"))
}
