//! How a command reaches the server: `--server` and `--reconnect-secs`, shared by the
//! model commands, workers and the evaluator.
use accrete_client::Client;
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct ServerConn {
    /// Server URL.
    #[arg(long, global = true, env = "ACCRETE_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Seconds to ride out an unreachable server (a restart, a rescheduled pod) with
    /// retries and backoff before giving up; 0 fails at once.
    #[arg(long, global = true, env = "ACCRETE_RECONNECT_SECS", default_value_t = 300)]
    pub reconnect_secs: u64,
}

impl ServerConn {
    pub fn patience(&self) -> Duration {
        Duration::from_secs(self.reconnect_secs)
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_patiently(&self.server, self.patience()).await?)
    }
}
