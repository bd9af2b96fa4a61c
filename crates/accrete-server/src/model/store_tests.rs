//! A model's versions against an in-memory reference, through everything that touches
//! stored versions: sparse and dense commits (delta layers and whole chunks), rollbacks,
//! tags, retention, compaction steps, and reopening the store. Seeded: a failure names
//! its seed, and the same seed replays it.
use super::*;
use crate::engine::Grad;
use crate::registry::Registry;
use accrete_core::optim::LeKeys;
use accrete_core::rng::SplitMix64;
use accrete_core::{ModelKind, OptimizerKind, OptimizerSpec};
use std::collections::BTreeMap;

fn content(h: &ModelHandle) -> Vec<u32> {
    h.with_live(|c| c.params.content_bits())
}

fn stored(h: &ModelHandle, v: u64) -> Vec<u32> {
    let (_, p) = h.load_version(v).unwrap_or_else(|e| panic!("version {v}: {e}"));
    p.content_bits()
}

fn push_rows(h: &ModelHandle, keys: &[u64], g: f32) {
    let kb: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
    let vb: Vec<u8> = keys.iter().flat_map(|k| (g + (*k % 7) as f32 * 0.01).to_le_bytes()).collect();
    let grads = [Grad { slot: "", tensor: "h", offset: 0, keys: LeKeys(&kb), values: &vb }];
    let epoch = h.status().epoch;
    h.push(epoch, &grads, &PushMeta::default()).unwrap();
}

fn run(seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        Registry::open(store, DEFAULT_LEASE).unwrap()
    };
    let mut reg = open();
    let mut spec = ModelSpec {
        hash_bits: 16,
        optimizer: OptimizerSpec::new(OptimizerKind::Adagrad, 0.1),
        ..ModelSpec::new("m", ModelKind::Linear)
    };
    spec.init.seed = 5;
    spec.commit.every_secs = 0.0;
    spec.commit.keep_last = 4;
    let mut h = reg.create(spec, "", None).unwrap();
    // chains due for a new base at 4 layers (32 by default): the run compacts often
    h.rebase_layers.store(4, std::sync::atomic::Ordering::Relaxed);
    let mut rng = SplitMix64::new(seed);
    // version -> content bits, for every version the model lists
    let mut want: BTreeMap<u64, Vec<u32>> = BTreeMap::from([(1, content(&h))]);
    let mut compactions = 0;
    for op in 0..ops {
        let pick = rng.next_u64() % 100;
        let what = match pick {
            0..=49 => {
                let n = 1 + rng.next_u64() % 40;
                let keys: Vec<u64> = (0..n).map(|_| rng.next_u64() % (1 << 16)).collect();
                push_rows(&h, &keys, 0.5);
                "sparse push"
            }
            50..=52 => {
                // most of one chunk: written whole
                let c = rng.next_u64() % 4;
                let keys: Vec<u64> = (c * 16384..c * 16384 + 12000).collect();
                push_rows(&h, &keys, -0.25);
                "dense push"
            }
            53..=79 => {
                let (rec, made) = h.commit(VersionKind::Manual, "", "").unwrap();
                if made {
                    want.insert(rec.version, content(&h));
                }
                "commit"
            }
            80..=84 => {
                let listed: Vec<u64> = h.versions().unwrap().iter().map(|r| r.version).collect();
                let to = listed[(rng.next_u64() % listed.len() as u64) as usize];
                let rec = h.rollback(to, "", "").unwrap();
                assert_eq!(content(&h), want[&to], "seed {seed} op {op}: rollback to {to} loads its content");
                want.insert(rec.version, want[&to].clone());
                "rollback"
            }
            85..=87 => {
                let listed: Vec<u64> = h.versions().unwrap().iter().map(|r| r.version).collect();
                let v = listed[(rng.next_u64() % listed.len() as u64) as usize];
                h.tag(v, &format!("t{op}")).unwrap();
                "tag"
            }
            88..=95 => {
                let done = h.compact_step().unwrap();
                compactions += done.rebased;
                "compaction"
            }
            _ => {
                drop(h);
                drop(reg);
                reg = open();
                h = reg.get("m").unwrap();
                h.rebase_layers.store(4, std::sync::atomic::Ordering::Relaxed);
                "reopen"
            }
        };
        // the listed versions are the reference's (retention dropped the others), and
        // each reads back bit for bit
        let listed: Vec<u64> = h.versions().unwrap().iter().map(|r| r.version).collect();
        want.retain(|v, _| listed.contains(v));
        assert_eq!(listed, want.keys().copied().collect::<Vec<_>>(), "seed {seed} op {op} ({what})");
        if op % 10 == 0 || what != "sparse push" {
            for (v, bits) in &want {
                assert!(stored(&h, *v) == *bits, "seed {seed} op {op} ({what}): version {v} reads back differently");
            }
        }
    }
    assert!(compactions > 0, "seed {seed}: the run compacted nothing ({ops} ops)");
}

#[test]
fn every_retained_version_reads_back_bitwise_through_commits_rollbacks_retention_compaction_and_reopens() {
    for seed in 1..=4 {
        run(seed, 700);
    }
}

#[test]
fn retention_keeps_the_evaluators_best_version() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Store::open(dir.path(), 1 << 20).unwrap(), DEFAULT_LEASE).unwrap();
    let mut spec = ModelSpec { hash_bits: 8, ..ModelSpec::new("m", ModelKind::Logistic) };
    spec.commit.every_secs = 0.0;
    spec.commit.keep_last = 2;
    let h = reg.create(spec, "", None).unwrap();
    let mut made = Vec::new();
    for (i, auc) in [0.6, 0.9, 0.7, 0.5, 0.65, 0.55].into_iter().enumerate() {
        push_rows(&h, &[i as u64], 0.5);
        let (rec, _) = h.commit(VersionKind::Manual, "", "").unwrap();
        h.report_metrics(rec.version, &BTreeMap::from([("auc".to_string(), auc)]), false).unwrap();
        made.push(rec.version);
    }
    // a diverged version is never the best, whatever its other numbers say
    push_rows(&h, &[9], 0.5);
    let (rec, _) = h.commit(VersionKind::Manual, "", "").unwrap();
    let diverged = BTreeMap::from([("auc".to_string(), 0.99), (accrete_core::scoring::DIVERGED.to_string(), 1.0)]);
    h.report_metrics(rec.version, &diverged, false).unwrap();
    push_rows(&h, &[10], 0.5);
    let (last, _) = h.commit(VersionKind::Manual, "", "").unwrap();
    let listed: Vec<u64> = h.versions().unwrap().iter().map(|r| r.version).collect();
    assert_eq!(listed, vec![made[1], rec.version, last.version], "the best (auc 0.9) stays with the newest 2");
}
