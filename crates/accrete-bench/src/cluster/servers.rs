//! `accrete bench cluster`, the processes: a cluster of servers started with `--peers`
//! on loopback, joined pushers with their own connections, the servers' `/metrics`,
//! RSS and CPU time.
use super::*;
/// A pusher as the servers know it: a joined worker numbering its pushes.
pub(super) struct Worker {
    pub(super) id: String,
    pub(super) incarnation: u64,
    pub(super) seq: u64,
}

impl Worker {
    pub(super) fn push<'a>(&mut self, g: &'a Grad) -> Push<'a> {
        self.seq += 1;
        let meta = PushMeta {
            worker_id: self.id.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            shard: self.id.clone(),
            rows: KEYS as u64,
            ..Default::default()
        };
        let grads = vec![
            Gradient { tensor: "h", keys: &g.keys, values: &g.values, ..Default::default() },
            Gradient { tensor: "b", values: std::slice::from_ref(&g.bias), ..Default::default() },
        ];
        Push { model: MODEL, lineage_epoch: 0, grads, meta: Some(meta) }
    }
}

/// A cluster of `n` server processes holding the model in `n` partitions, and one client
/// (own connections) per pusher.
pub(super) struct Servers {
    pub(super) n: usize,
    pub(super) procs: Vec<Proc>,
    /// Each server's dashboard and /metrics address.
    pub(super) http: Vec<String>,
    pub(super) client: Client,
    pub(super) spec: ModelSpec,
    pub(super) view: ModelView,
    /// RSS of each server before the model was created, and after (KiB).
    pub(super) empty_kib: Vec<u64>,
    pub(super) created_kib: Vec<u64>,
    pub(super) pushers: Vec<(Client, Worker)>,
}

/// The text of `GET /metrics` at `addr` (HTTP/1.1, read to the end).
pub(super) async fn scrape(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), get).await.context("GET /metrics: no answer within 10 s")?
}

/// The cluster's hold meters, if the servers export them: per local model, (holds,
/// seconds held, pushes held); and the coordinators' global commit seconds (p50, p99,
/// count) from the server that has some.
#[derive(Default)]
pub(super) struct HoldMeters {
    pub(super) parts: std::collections::BTreeMap<String, (f64, f64, f64)>,
    pub(super) commits: Option<(f64, f64, f64)>,
}

pub(super) async fn hold_meters(s: &Servers) -> Result<HoldMeters> {
    let mut out = HoldMeters::default();
    for addr in &s.http {
        let text = scrape(addr).await?;
        let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let mut summary = (0.0, 0.0, 0.0);
        for line in text.lines() {
            let model =
                || line.split_once("{model=\"").and_then(|(_, r)| r.split_once('"')).map(|(m, _)| m.to_string());
            let slot = if line.starts_with("accrete_cluster_holds_total{") {
                0
            } else if line.starts_with("accrete_cluster_hold_seconds_total{") {
                1
            } else if line.starts_with("accrete_cluster_pushes_held_total{") {
                2
            } else {
                if line.starts_with("accrete_cluster_commit_seconds{quantile=\"0.5\"}") {
                    summary.0 = value(line);
                } else if line.starts_with("accrete_cluster_commit_seconds{quantile=\"0.99\"}") {
                    summary.1 = value(line);
                } else if line.starts_with("accrete_cluster_commit_seconds_count") {
                    summary.2 = value(line);
                }
                continue;
            };
            let Some(m) = model() else { continue };
            let e = out.parts.entry(m).or_default();
            match slot {
                0 => e.0 = value(line),
                1 => e.1 = value(line),
                _ => e.2 = value(line),
            }
        }
        if summary.2 > 0.0 {
            out.commits = Some(summary);
        }
    }
    Ok(out)
}

pub(super) fn kib_of(p: &Proc) -> Result<(u64, u64)> {
    rss_kib(p.0.id())
}

/// The last lines of each server log, for an error.
pub(super) fn tails(logs: &[PathBuf]) -> String {
    let mut out = String::new();
    for l in logs {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("--- {} (last lines)\n", l.display());
        for line in &lines[lines.len().saturating_sub(8)..] {
            out += line;
            out.push('\n');
        }
    }
    out
}

pub(super) async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, f).await.with_context(|| format!("{what}: no answer within {DEADLINE:?}"))
}

/// Starts `n` servers of one cluster, creates the model over them and joins the pushers.
pub(super) async fn start(dir: &Path, n: usize, pushers: usize, logs: &mut Vec<PathBuf>) -> Result<Servers> {
    // gRPC and HTTP (/metrics) ports, all bound at once so that none repeats
    let listeners =
        (0..2 * n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    let mut addrs =
        listeners.iter().map(|l| l.local_addr().map(|a| a.to_string())).collect::<std::io::Result<Vec<_>>>()?;
    drop(listeners);
    let http = addrs.split_off(n);
    let peers = addrs.join(",");
    let exe = std::env::current_exe()?;
    let mut procs = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let log = dir.join(format!("{n}-servers-{i}.log"));
        let child = Command::new(&exe)
            .args(["server", "--listen", a, "--http", &http[i], "--peers", &peers, "--data-dir"])
            .arg(dir.join(format!("{n}-servers-{i}")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        procs.push(Proc(child));
        logs.push(log);
    }
    let started = Instant::now();
    for (a, p) in addrs.iter().zip(&mut procs) {
        while tokio::net::TcpStream::connect(a).await.is_err() {
            if let Some(status) = p.0.try_wait()? {
                bail!("server {a} exited ({status}) before listening");
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!("server {a} did not listen within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let empty_kib = procs.iter().map(|p| kib_of(p).map(|k| k.0)).collect::<Result<Vec<_>>>()?;
    let url = format!("http://{}", addrs[0]);
    let mut client = within("connect", Client::connect(&url)).await??;
    let seen = client.cluster().map_or(1, |v| v.servers.len());
    if seen != n {
        bail!("the client sees {seen} servers in the cluster map of {url}, not {n}");
    }
    let mut spec = ModelSpec::new(MODEL, ModelKind::Logistic);
    spec.hash_bits = HASH_BITS;
    spec.optimizer = OptimizerSpec::new(OptimizerKind::Adagrad, 0.05);
    spec.commit = CommitPolicy { every_updates: 0, every_secs: 0.0, keep_last: 10 };
    spec.partitions = n as u32;
    let info = within("create", client.create_model(&spec, None)).await??;
    if info.spec.parts() != n as u32 {
        bail!("model created with {} partitions, not {n}", info.spec.parts());
    }
    let view = within("model view", client.model_view(MODEL)).await??;
    let mut ps = Vec::new();
    for i in 0..pushers {
        let mut c = within("connect", Client::connect(&url)).await??;
        let id = format!("bench-{i}");
        let joined = within("join", c.join(MODEL, &id, &id, None)).await??;
        ps.push((c, Worker { id, incarnation: joined.incarnation, seq: 0 }));
    }
    let created_kib = procs.iter().map(|p| kib_of(p).map(|k| k.0)).collect::<Result<Vec<_>>>()?;
    Ok(Servers { n, procs, http, client, spec: info.spec, view, empty_kib, created_kib, pushers: ps })
}

impl Servers {
    /// Every pusher streams `per` pushes; returns the seconds from the first send to the
    /// last ack (the streams are opened before).
    pub(super) async fn push_round(&mut self, grads: &Arc<Vec<Grad>>, per: usize) -> Result<f64> {
        let mut streams = Vec::new();
        for (c, _) in &mut self.pushers {
            streams.push(within("open push stream", c.push_stream_for(&self.spec)).await??);
        }
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (i, (stream, (c, mut w))) in streams.into_iter().zip(std::mem::take(&mut self.pushers)).enumerate() {
            let grads = grads.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..per {
                    let g = &grads[(k + i * 29) % grads.len()];
                    if stream.send(&w.push(g)).await.is_err() {
                        break;
                    }
                }
                (stream.finish().await, c, w)
            }));
        }
        let mut failed = None;
        for task in tasks {
            let (r, c, w) = within("push round", task).await??;
            self.pushers.push((c, w));
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e).context(format!("pushes to {} servers", self.n));
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// Every pusher's client pulls the rows of `per` pushes, one pull after another.
    pub(super) async fn pull_round(&self, grads: &Arc<Vec<Grad>>, per: usize) -> Result<f64> {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (i, (c, _)) in self.pushers.iter().enumerate() {
            let (mut c, view, grads) = (c.clone(), self.view.clone(), grads.clone());
            tasks.push(tokio::spawn(async move {
                for k in 0..per {
                    let g = &grads[(k + i * 29) % grads.len()];
                    let p = c.pull_batch(&view, &g.keys, None, None).await?;
                    if p.tensors.h.len() != g.keys.len() {
                        bail!("a pull of {} rows answered {} values", g.keys.len(), p.tensors.h.len());
                    }
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            within("pull round", task).await???;
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// CPU seconds used so far by this process (the client) and by the servers.
    pub(super) fn cpu(&self) -> Result<(f64, f64)> {
        let servers = self.procs.iter().map(|p| cpu_secs(&p.0.id().to_string())).sum::<Result<f64>>()?;
        Ok((cpu_secs("self")?, servers))
    }

    /// (seconds, client CPU seconds, servers' CPU seconds) of a round that took `secs`
    /// and began at CPU times `before`.
    pub(super) fn cpu_since(&self, secs: f64, before: (f64, f64)) -> Result<(f64, f64, f64)> {
        let now = self.cpu()?;
        Ok((secs, now.0 - before.0, now.1 - before.1))
    }

    /// (RSS, peak) of each server in KiB.
    pub(super) fn rss(&self) -> Result<Vec<(u64, u64)>> {
        self.procs.iter().map(kib_of).collect()
    }
}

/// CPU seconds (user + system) of a process, all its threads, from `/proc/PID/stat`
/// (clock ticks of 1/100 s, Linux's USER_HZ).
pub(super) fn cpu_secs(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<u64> = after.split_whitespace().skip(11).take(2).map(|x| x.parse().unwrap_or(0)).collect();
    Ok(f.iter().sum::<u64>() as f64 / 100.0)
}
