//! Learning quality without tuning (issue 15): per-row training on the worker's copy
//! equals the optimizer run row after row in one process, and its merge under BSP.
//! Real server and worker processes on real gRPC; the reference runs in this process.
mod common;

use accrete_core::glm::Link;
use accrete_core::local::{self, LocalGlm, Part, Scratch};
use accrete_core::{features::Batch, OptimizerKind, OptimizerSpec};
use accrete_proto::v1 as pb;
use common::procs::{ok, spawn_server};
use std::fmt::Write as _;
use std::path::Path;

const HASH_BITS: u32 = 7;

/// Seeded rows in LIBSVM form: 4 to 6 of 100 indices (read modulo the table, so some
/// rows of the table are shared), each index with its own scale from 0.001 to 1000, and
/// a label of `kind` from a hidden linear rule.
fn rows(kind: &str, n: usize, seed: u64) -> Vec<(f32, Vec<(u32, f32)>)> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as f32 / (1u64 << 31) as f32
    };
    (0..n)
        .map(|_| {
            let m = 4 + (next() * 3.0) as usize;
            let mut feats: Vec<(u32, f32)> = Vec::new();
            while feats.len() < m {
                let i = (next() * 100.0) as u32 + 1;
                if feats.iter().any(|(j, _)| *j == i) {
                    continue;
                }
                let scale = 10f32.powi((i % 7) as i32 - 3);
                feats.push((i, (next() * 2.0 - 1.0) * scale));
            }
            let z: f32 = feats.iter().map(|(i, x)| x / 10f32.powi((i % 7) as i32 - 3) * ((*i % 5) as f32 - 2.0)).sum();
            let y = match kind {
                "linear" => 3.0 * z + 1.0 + next() - 0.5,
                "logistic" => (z + next() - 0.5 > 0.0) as u8 as f32,
                _ => ((z + 3.0).clamp(0.0, 5.99) / 2.0) as u32 as f32,
            };
            (y, feats)
        })
        .collect()
}

fn write_libsvm(path: &Path, rows: &[(f32, Vec<(u32, f32)>)]) {
    let mut text = String::new();
    for (y, feats) in rows {
        write!(text, "{y}").unwrap();
        for (i, x) in feats {
            write!(text, " {i}:{x:e}").unwrap();
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The model's weights and optimizer slots, whole: (tensor, slot) → values.
async fn pull_all(url: &str, model: &str) -> Vec<((String, String), Vec<f32>)> {
    let mut c = common::connect(url).await.unwrap();
    let req = pb::PullRequest { model: model.into(), slots: true, ..Default::default() };
    let r = c.params.pull(req).await.unwrap().into_inner();
    r.tensors
        .iter()
        .map(|t| ((t.tensor.clone(), t.slot.clone()), accrete_proto::bytes_to_f32s(&t.values).unwrap()))
        .collect()
}

/// The reference: every row in order, on the whole table, in this process.
fn sequential(
    kind: &str,
    opt: OptimizerSpec,
    outputs: usize,
    data: &[(f32, Vec<(u32, f32)>)],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let link = match kind {
        "linear" => Link::Identity,
        "logistic" => Link::Logistic,
        _ => Link::Softmax,
    };
    let rows = 1usize << HASH_BITS;
    let mut batch = Batch::new(0);
    for (y, feats) in data {
        for (i, x) in feats {
            batch.idx.push((i - 1) & (rows as u32 - 1));
            batch.val.push(*x);
        }
        batch.finish_row(*y);
    }
    let slots = accrete_core::layout::optimizer_slots(opt.kind).len();
    let mut h: Vec<Vec<f32>> = (0..=slots).map(|_| vec![0f32; rows * outputs]).collect();
    let mut b: Vec<Vec<f32>> = (0..=slots).map(|_| vec![0f32; outputs]).collect();
    let (hw, hs) = h.split_first_mut().unwrap();
    let (bw, bs) = b.split_first_mut().unwrap();
    let mut m = LocalGlm {
        outputs,
        w: Part::none(),
        h: Part { w: hw, s: hs.iter_mut().map(|v| &mut v[..]).collect() },
        b: Part { w: bw, s: bs.iter_mut().map(|v| &mut v[..]).collect() },
    };
    local::train_rows(link, &opt, 1, &mut m, &batch, &batch.idx.clone(), &mut Scratch::default(), None).unwrap();
    (h, b)
}

/// Equal to float tolerance: the server adds each batch's change to the value it was taken
/// from, and the rounding of those f32 sums compounds through the adaptive rates.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs() / (1e-3 + w.abs())).fold(0f32, f32::max);
    assert!(worst < 1e-2, "{what}: largest relative difference {worst}\n got {got:?}\nwant {want:?}");
    assert!(want.iter().any(|w| *w != 0.0), "{what}: the reference moved nothing");
}

/// One worker training row by row, batch after batch through the server (pull with slots,
/// per-row training on its copy, push of the changes), ends where one process running
/// the same optimizer row after row on the whole model ends: weights and slots.
#[tokio::test]
async fn one_worker_training_row_by_row_equals_the_optimizer_run_sequentially() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let hb = HASH_BITS.to_string();
    let cases = [
        ("linear", "normalized", 1),
        ("logistic", "normalized", 1),
        ("softmax", "normalized", 3),
        ("logistic", "adagrad", 1),
        ("logistic", "ftrl", 1),
        ("linear", "sgd", 1),
    ];
    for (n, (kind, optimizer, outputs)) in cases.into_iter().enumerate() {
        let name = format!("m{n}");
        let data = rows(kind, 700, n as u64 + 1);
        let shard = tmp.path().join(format!("{name}.libsvm"));
        write_libsvm(&shard, &data);
        let mut create = vec!["model", "create", &name, "--kind", kind, "--hash-bits", &hb, "--optimizer", optimizer];
        let classes = outputs.to_string();
        if kind == "softmax" {
            create.extend(["--classes", &classes]);
        }
        if optimizer == "sgd" {
            // plain SGD on inputs up to 1000 needs a small rate (the point of `normalized`)
            create.extend(["--lr", "0.0000001"]);
        }
        ok(&s.url, &create);
        let shard_s = shard.to_str().unwrap();
        ok(&s.url, &["worker", "--model", &name, "--shard", shard_s, "--format", "libsvm", "--batch", "64"]);
        let got = pull_all(&s.url, &name).await;
        let kind_of = match optimizer {
            "normalized" => OptimizerKind::Normalized,
            "adagrad" => OptimizerKind::Adagrad,
            "ftrl" => OptimizerKind::Ftrl,
            _ => OptimizerKind::Sgd,
        };
        let lr = if optimizer == "sgd" { 1e-7 } else { 0.0 };
        let want = sequential(kind, OptimizerSpec::new(kind_of, lr), outputs, &data);
        let slots = accrete_core::layout::optimizer_slots(kind_of);
        for (tensor, want) in [("h", &want.0), ("b", &want.1)] {
            for (v, slot) in [""].iter().chain(slots).enumerate() {
                let values = got.iter().find(|((a, b), _)| a == tensor && b == slot).map(|(_, v)| v);
                let values = values.unwrap_or_else(|| panic!("{name}: no {tensor:?} slot {slot:?} pulled"));
                assert_close(&format!("{kind} {optimizer}: {tensor} {slot:?}"), values, &want[v]);
            }
        }
    }
}

/// One worker training a model of dense inputs by batch gradients waits for each push's
/// ack before its next pull, so it is the sequential optimizer: two runs end with the same
/// weights and optimizer state, bit for bit. With its pushes in flight, a pull could
/// overtake the worker's own last push, and the gradient taken there counted that push's
/// direction twice: runs ended apart, and worse (Fashion-MNIST's MLP, one worker, 20
/// epochs: 0.842–0.847, against 0.8604 waiting, which BSP's rounds also give).
#[tokio::test]
async fn one_worker_training_an_mlp_by_batch_gradients_is_sequential_and_repeatable() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    // dense rows: 16 features, 3 classes from a hidden rule
    let mut seed = 11u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as f32 / (1u64 << 31) as f32
    };
    let data: Vec<(f32, Vec<(u32, f32)>)> = (0..3000)
        .map(|_| {
            let x: Vec<(u32, f32)> = (1..=16).map(|i| (i, next() * 2.0 - 1.0)).collect();
            let z = x[0].1 + x[3].1 * x[5].1 - x[9].1;
            let y = if z < -0.3 {
                0.0
            } else if z < 0.3 {
                1.0
            } else {
                2.0
            };
            (y, x)
        })
        .collect();
    let shard = tmp.path().join("dense.libsvm");
    write_libsvm(&shard, &data);
    let mut runs = Vec::new();
    for name in ["first", "second"] {
        let create = ["model", "create", name, "--kind", "mlp", "--features", "16", "--classes", "3", "--hidden", "8"];
        ok(&s.url, &create);
        let before = pull_all(&s.url, name).await;
        let shard = shard.to_str().unwrap();
        let train = ["--format", "libsvm", "--batch", "10", "--epochs", "2"];
        let mut args = vec!["worker", "--model", name, "--shard", shard];
        args.extend(train);
        ok(&s.url, &args);
        let after = pull_all(&s.url, name).await;
        let (w0, w1) = (&before.iter().find(|(k, _)| k.0 == "w1" && k.1.is_empty()).unwrap().1, &after[0].1);
        assert_eq!(after[0].0 .0, "w1");
        assert_ne!(w0, w1, "{name}: training moved nothing");
        runs.push(after);
    }
    assert_eq!(runs[0].len(), runs[1].len());
    for ((key, a), (_, b)) in runs[0].iter().zip(&runs[1]) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(a) == bits(b), "{key:?}: two runs of one worker ended apart");
    }
}

/// Progressive validation across workers, per version: two workers on flights, their
/// rows tallied by the server into the versions they went into. Every row counts once,
/// and the versions' accuracy and loss, weighted by their rows, are those of the rows
/// the workers scored (their own `--progressive-out` files); each version has an AUC.
#[tokio::test]
async fn versions_record_the_progressive_figures_of_every_workers_rows() {
    use common::data::{labelled_flights, write_csv, COLS};
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let (header, rows) = labelled_flights();
    let input = tmp.path().join("fl.csv");
    write_csv(&input, &header, &rows[..40_000]);
    let shards = tmp.path().join("shards");
    let (inp, out) = (input.to_str().unwrap(), shards.to_str().unwrap());
    let split = std::process::Command::new(common::procs::BIN)
        .args(["split", "--input", inp, "--shards", "2", "--out", out])
        .output()
        .unwrap();
    assert!(split.status.success(), "{split:?}");
    ok(&s.url, &["model", "create", "pv", "--kind", "logistic", "--hash-bits", "18", "--commit-every-updates", "4"]);
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let shard = shards.join(format!("part-{i:05}.csv"));
            let prog = tmp.path().join(format!("prog{i}.tsv"));
            let mut args = vec!["worker", "--model", "pv", "--shard", shard.to_str().unwrap()];
            args.extend(["--progressive-out", prog.to_str().unwrap()]);
            args.extend(COLS);
            (common::procs::spawn_cli(&s.url, &args), prog)
        })
        .collect();
    let (mut y, mut p) = (Vec::new(), Vec::new());
    for (mut child, prog) in workers {
        assert!(child.wait().unwrap().success(), "a worker failed");
        for line in std::fs::read_to_string(prog).unwrap().lines() {
            let (a, b) = line.split_once('\t').unwrap();
            y.push(a.parse::<f32>().unwrap());
            p.push(b.parse::<f32>().unwrap());
        }
    }
    ok(&s.url, &["model", "commit", "pv"]);
    let vs: serde_json::Value = serde_json::from_str(&ok(&s.url, &["model", "versions", "pv", "--json"])).unwrap();
    let figures: Vec<&serde_json::Value> =
        vs.as_array().unwrap().iter().map(|v| &v["progressive"]).filter(|f| !f.is_null()).collect();
    assert!(figures.len() >= 5, "{vs}");
    let num = |f: &serde_json::Value, k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k} in {f}"));
    let rows: f64 = figures.iter().map(|f| num(f, "rows")).sum();
    assert_eq!(rows as usize, y.len(), "every row once: {vs}");
    let weighted = |k: &str| figures.iter().map(|f| num(f, k) * num(f, "rows")).sum::<f64>() / rows;
    let accuracy = y.iter().zip(&p).filter(|(y, p)| (**p >= 0.5) == (**y > 0.5)).count() as f64 / y.len() as f64;
    let loss = accrete_core::metrics::logloss(&y, &p);
    assert!((weighted("accuracy") - accuracy).abs() < 1e-3, "accuracy {} vs {accuracy}", weighted("accuracy"));
    assert!((weighted("loss") - loss).abs() < 1e-3, "loss {} vs {loss}", weighted("loss"));
    assert!(figures.iter().all(|f| (0.5..1.0).contains(&num(f, "auc"))), "{vs}");
}

/// Least squares in f64 over `(x, y)` rows, with the intercept: the coefficients, then the
/// intercept (normal equations, Gauss–Jordan with partial pivoting).
fn least_squares(rows: &[(Vec<f64>, f64)]) -> Vec<f64> {
    let m = rows[0].0.len() + 1;
    let mut a = vec![vec![0f64; m + 1]; m];
    for (x, y) in rows {
        let v: Vec<f64> = x.iter().copied().chain([1.0]).collect();
        for i in 0..m {
            for j in 0..m {
                a[i][j] += v[i] * v[j];
            }
            a[i][m] += v[i] * y;
        }
    }
    for c in 0..m {
        let p = (c..m).max_by(|i, j| a[*i][c].abs().total_cmp(&a[*j][c].abs())).unwrap();
        a.swap(c, p);
        for r in 0..m {
            if r != c {
                let k = a[r][c] / a[c][c];
                for j in c..=m {
                    a[r][j] -= k * a[c][j];
                }
            }
        }
    }
    (0..m).map(|i| a[i][m] / a[i][i]).collect()
}

/// A linear model over dense inputs takes `rls` by default and, trained by two workers at
/// once (ASP and BSP), serves the least-squares fit of all their rows: on inputs that are
/// correlated, heavy-tailed and far from zero, where per-coordinate steps crawl.
#[tokio::test]
async fn two_workers_fit_a_dense_linear_model_to_least_squares() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spawn_server(&tmp.path().join("data")).await;
    let mut rng = accrete_core::rng::SplitMix64::new(11);
    let rows: Vec<(Vec<f64>, f64)> = (0..4000)
        .map(|_| {
            let a = rng.next_normal();
            let b = 0.95 * a + 0.1 * rng.next_normal();
            let c = (2.0 * rng.next_normal()).exp();
            let d = 1000.0 + 5.0 * rng.next_normal();
            let y = 2.0 * a - 1.5 * b + 0.3 * c + 0.2 * d + rng.next_normal();
            (vec![a, b, c, d], y)
        })
        .collect();
    let want = least_squares(&rows);
    let csv = |rows: &[(Vec<f64>, f64)]| {
        let mut t = String::from("a,b,c,d,y\n");
        for (x, y) in rows {
            writeln!(t, "{},{},{},{},{y}", x[0], x[1], x[2], x[3]).unwrap();
        }
        t
    };
    let shards: Vec<_> = (0..2)
        .map(|i| {
            let p = tmp.path().join(format!("part{i}.csv"));
            std::fs::write(&p, csv(&rows[i * 2000..(i + 1) * 2000])).unwrap();
            p
        })
        .collect();
    let probe = tmp.path().join("probe.csv");
    std::fs::write(&probe, csv(&rows[..200])).unwrap();
    for consistency in ["asp", "bsp"] {
        let m = format!("ls_{consistency}");
        ok(&s.url, &["model", "create", &m, "--kind", "linear", "--features", "4", "--consistency", consistency]);
        let info: serde_json::Value = serde_json::from_str(&ok(&s.url, &["model", "show", &m, "--json"])).unwrap();
        assert_eq!(info["optimizer"]["kind"], "rls", "the default for dense linear regression: {info}");
        let cols = ["--label", "y", "--numeric", "a,b,c,d", "--batch", "250"];
        let workers: Vec<_> = shards
            .iter()
            .map(|shard| {
                let mut args = vec!["worker", "--model", &m, "--shard", shard.to_str().unwrap()];
                args.extend(cols);
                common::procs::spawn_cli(&s.url, &args)
            })
            .collect();
        for mut w in workers {
            assert!(w.wait().unwrap().success(), "{m}: a worker failed");
        }
        let out = ok(
            &s.url,
            &["model", "predict", &m, "--input", probe.to_str().unwrap(), "--label", "y", "--numeric", "a,b,c,d"],
        );
        let got: Vec<f64> = out.lines().map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
        assert_eq!(got.len(), 200, "{m}: {out}");
        // the label's noise is 1 and the predictions near 200: within f32 rounding of them
        let worst = rows.iter().zip(&got).map(|((x, _), got)| {
            let ls = x.iter().zip(&want).map(|(x, w)| x * w).sum::<f64>() + want[4];
            (got - ls).abs()
        });
        let worst = worst.fold(0f64, f64::max);
        eprintln!("{m}: largest difference from least squares {worst}");
        assert!(worst < 2e-3, "{m}: a prediction is {worst} from least squares' (fit {want:?})");
    }
}
