//! Riding out a server's restart. A call that is safe to repeat is retried with capped
//! exponential backoff while the server cannot be reached, for as long as the client's
//! patience lasts (`--reconnect-secs`, five minutes by default; zero: fail at once). Each
//! outage is logged once when it starts and once when it ends, however many calls and
//! retries see it (clones of a client share it).
//!
//! Safe to repeat: reads, joins, leaves, predictions, opening a stream, and the mutating
//! calls that carry a request id ([`request_id`]; create, commit, rollback, import), which
//! the server acts on once. A tag is idempotent as it is (a label names one version).
//! Pushes, heartbeats and deletes are not retried here: a worker that loses its push stream
//! joins again and reads its rows again from where the server says its applied rows end;
//! a heartbeat is sent again on its own schedule; a retried delete would answer NOT_FOUND.
//!
//! The patience is one budget per outage, shared by a client's clones: a call that starts
//! late in an outage another clone saw begin gets what is left of it.
use crate::{ClientError, Result};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Calls `$client.$svc.$method(request)` through the client's retry policy: the request
/// expression is evaluated again for each attempt (a fresh request, a clone of the stub).
macro_rules! retried {
    ($client:expr, $svc:ident, $method:ident, $req:expr) => {{
        let c = &$client;
        c.retry
            .run(|| {
                let mut svc = c.$svc.clone();
                let req = $req;
                async move { svc.$method(req).await.map(tonic::Response::into_inner).map_err($crate::ClientError::from) }
            })
            .await
    }};
}
pub(crate) use retried;

/// How long a client rides out an unreachable server unless told otherwise.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(300);
/// The first wait after a failed attempt; doubled after each, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The retry policy of one client and the outage its clones share.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    url: Arc<str>,
    patience: Duration,
    /// When the current outage began (`None`: the server answers).
    outage: Arc<Mutex<Option<Instant>>>,
}

impl Retry {
    pub(crate) fn new(url: &str, patience: Duration) -> Retry {
        Retry { url: url.into(), patience, outage: Arc::default() }
    }

    pub(crate) fn patience(&self) -> Duration {
        self.patience
    }

    /// Runs `attempt` until it succeeds, fails with something other than an unreachable
    /// server, or the outage has lasted longer than the patience.
    pub(crate) async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut wait = FIRST_BACKOFF;
        loop {
            match attempt().await {
                Err(e) if e.is_unreachable() => {
                    let Some(outage) = self.failed(&e) else { return Err(self.gave_up(e)) };
                    // Not past the patience: a long wait is cut to end when it does.
                    let left = (outage + self.patience).saturating_duration_since(Instant::now());
                    tokio::time::sleep(jitter(wait).min(left)).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                // An answer, even a refusal, means the server is reachable.
                done => {
                    self.reached();
                    return done;
                }
            }
        }
    }

    /// Notes a failed attempt; the outage's start, or `None` when patience has run out.
    fn failed(&self, e: &ClientError) -> Option<Instant> {
        if self.patience.is_zero() {
            return None;
        }
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let since = *outage.get_or_insert_with(|| {
            tracing::warn!(
                server = %self.url,
                "server unreachable ({e}); retrying with backoff for up to {} s (--reconnect-secs)",
                self.patience.as_secs()
            );
            now
        });
        (now.duration_since(since) < self.patience).then_some(since)
    }

    /// A call went through: ends the outage, if there was one.
    pub(crate) fn reached(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = outage.take() {
            tracing::info!(server = %self.url, "server reachable again after {:.1} s", since.elapsed().as_secs_f64());
        }
    }

    fn gave_up(&self, e: ClientError) -> ClientError {
        if self.patience.is_zero() {
            return e;
        }
        ClientError::Unavailable(format!(
            "server {} unreachable for {} s; gave up (--reconnect-secs {}): {e}",
            self.url,
            self.patience.as_secs(),
            self.patience.as_secs()
        ))
    }
}

/// Up to a quarter more than `wait`, so clients that lost the same server do not all come
/// back in the same millisecond.
fn jitter(wait: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now()) % 256;
    wait + wait * r as u32 / 1024
}

/// A new request id: 128 random bits in hex. A mutating call keeps its id across retries,
/// so the server can tell a retry from a second request.
pub fn request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // RandomState's keys come from the OS's randomness; each new one differs.
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_until_patience_runs_out() {
        let retry = Retry::new("http://x", Duration::from_millis(300));
        let mut tries = 0;
        let started = Instant::now();
        let r: Result<()> = retry
            .run(|| {
                tries += 1;
                async { Err(ClientError::Unavailable("down".into())) }
            })
            .await;
        let e = r.unwrap_err();
        assert!(e.to_string().contains("gave up"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!((3..20).contains(&tries), "{tries} attempts");
        // Another kind of failure is not retried.
        let mut tries = 0;
        let r: Result<()> = retry
            .run(|| {
                tries += 1;
                async { Err(ClientError::NotFound("m".into())) }
            })
            .await;
        assert!(matches!(r, Err(ClientError::NotFound(_))) && tries == 1);
        // Without patience, the first failure is the answer, as it is.
        let retry = Retry::new("http://x", Duration::ZERO);
        let r: Result<()> = retry.run(|| async { Err(ClientError::Unavailable("down".into())) }).await;
        assert_eq!(r.unwrap_err().to_string(), "UNAVAILABLE: down");
    }
}
