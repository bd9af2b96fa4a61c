//! Renewing a worker's lease in the model's barrier while it trains: on a thread of its
//! own with its own connection (so a long batch or a blocked pipe read on the worker's
//! single-threaded runtime does not let the lease lapse), or as a task of the caller's
//! runtime when no server URL is given. Heartbeats go on through a server's restart (the
//! thread's connection is made again on the next beat); a failing streak is logged once.
use crate::WorkerConfig;
use accrete_client::{Client, ClientError};
use std::time::Duration;

/// Renews the worker's lease in the background until dropped.
pub(crate) enum Heartbeat {
    Task(tokio::task::JoinHandle<()>),
    /// Dropping the sender ends the thread's loop.
    Thread(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>),
}

/// Which worker of which model beats.
#[derive(Clone)]
struct Who {
    model: String,
    worker: String,
}

impl Heartbeat {
    pub(crate) fn start(config: &WorkerConfig, client: &Client, lease_ms: u64) -> Heartbeat {
        let who = Who { model: config.model.clone(), worker: config.worker_id.clone() };
        let every = Duration::from_millis((lease_ms / 3).max(100));
        let Some(url) = config.heartbeat_server.clone() else {
            return Heartbeat::Task(tokio::spawn(beat(client.clone(), who, every, None)));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_who = who.clone();
        // In a cluster, the thread's client routes as the worker's does (a partitioned
        // model's lease is renewed on every partition), over connections of its own.
        let view = client.cluster().cloned();
        let thread = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(async move {
                    let c = match view {
                        Some(v) => Client::of_cluster(v, Duration::ZERO),
                        None => Client::lazy(&url),
                    };
                    match c {
                        Ok(c) => beat(c, thread_who, every, Some(rx)).await,
                        Err(e) => tracing::warn!("heartbeat connection: {e}"),
                    }
                }),
                Err(e) => tracing::warn!("heartbeat runtime: {e}"),
            }
        });
        if let Err(e) = thread {
            tracing::warn!("cannot start the heartbeat thread ({e}); heartbeats share the worker's runtime");
            return Heartbeat::Task(tokio::spawn(beat(client.clone(), who, every, None)));
        }
        Heartbeat::Thread(tx)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Heartbeat::Task(t) = self {
            t.abort();
        }
    }
}

async fn beat(mut client: Client, who: Who, every: Duration, mut stop: Option<tokio::sync::oneshot::Receiver<()>>) {
    let mut failing = false;
    loop {
        match stop.as_mut() {
            Some(rx) => tokio::select! {
                _ = rx => return,
                _ = tokio::time::sleep(every) => {}
            },
            None => tokio::time::sleep(every).await,
        }
        match client.heartbeat(&who.model, &who.worker).await {
            Ok(_) => failing = false,
            // The worker's own calls log an outage, and it joins again after one.
            Err(e) if e.is_unreachable() || matches!(e, ClientError::NotInBarrier(_)) => {
                tracing::debug!(error = %e, "heartbeat failed");
                failing = true;
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "heartbeat refused");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
