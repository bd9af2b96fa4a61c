//! Store tests on a real sled database in a temp dir.
use super::*;
use crate::keys::{be, layer_piece_key, piece_key};
use accrete_core::Params;
use accrete_core::{ModelKind, ModelSpec};
use std::collections::HashSet;

fn spec() -> ModelSpec {
    let mut s = ModelSpec::new("m", ModelKind::Linear);
    s.features = 40_000; // 3 chunks
    s.init.seed = 3;
    s
}

/// The record of model `id` with [`spec`], as created.
fn model_record(id: u64) -> ModelRecord {
    ModelRecord { id, spec: spec(), created_unix_ms: 0, first_epoch: 1, request: String::new(), signature: None }
}

fn version(v: u64, parent: Option<u64>) -> VersionRecord {
    VersionRecord { version: v, parent, reason: "commit".into(), lineage_epoch: 1, ..Default::default() }
}

fn all_chunks(p: &Params) -> ChunkBatch {
    let mut out = ChunkBatch::default();
    for t in 0..p.tensors.len() {
        for c in 0..p.tensors[t].chunks() {
            out.push(t as u32, c as u32, |b| p.encode_chunk(t, c, b));
        }
    }
    out
}

/// Whether model 1 has blob `r` indexed.
fn has(s: &Store, r: Ref) -> bool {
    s.loc(1, &r).is_some()
}

/// Rewrites model `id`'s blobs as format 2 stored them (in sled, 8 KiB pieces, trees `c`
/// and `d`), packs and index gone.
fn to_format_2(s: &Store, id: u64) {
    let mut buf = Vec::new();
    for (r, loc) in s.indexed(id) {
        assert!(matches!(s.packs.read(id, &loc, &mut buf).unwrap(), crate::packs::Read::Ok));
        for (i, piece) in buf.chunks(8192).enumerate() {
            let i = i as u32;
            match r {
                Ref::Base { t, c, v } => s.tree(id, 'c').unwrap().insert(piece_key(v, t, c, i), piece).unwrap(),
                Ref::Delta { t, c, hi, lo } => {
                    s.tree(id, 'd').unwrap().insert(layer_piece_key(hi, t, c, lo, i), piece).unwrap()
                }
            };
        }
    }
    s.tree(id, 'p').unwrap().clear().unwrap();
    s.flush().unwrap();
    s.packs.remove_model(id).unwrap();
}

#[test]
fn versions_survive_reopen_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.put_model(&model_record(1)).unwrap();
        s.write_version(1, &version(1, None), &Manifest::full(&p, 1), &all_chunks(&p)).unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.models().unwrap().len(), 1);
    let m = s.manifest(1, 1, "m").unwrap().unwrap();
    let mut q = Params::zeros(&spec());
    s.load_params(1, "m", &m, &mut q).unwrap();
    let bits = |p: &Params| p.tensors[0].w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&p), bits(&q));
}

#[test]
fn a_foreign_or_damaged_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    assert!(matches!(Store::open(dir.path(), 1 << 20), Err(StoreError::NotOurs(_))));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(MARKER), "something else").unwrap();
    assert!(matches!(Store::open(dir.path(), 1 << 20), Err(StoreError::Damaged { .. })));
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), 1 << 20).unwrap());
    let conf = dir.path().join("db").join("conf");
    std::fs::write(&conf, b"garbage garbage garbage").unwrap();
    let err = Store::open(dir.path(), 1 << 20).unwrap_err();
    assert!(err.to_string().contains("data dir"), "{err}");
}

#[test]
fn leftovers_of_a_crashed_commit_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.put_model(&model_record(1)).unwrap();
        s.write_version(1, &version(1, None), &Manifest::full(&p, 1), &all_chunks(&p)).unwrap();
        // chunks of version 2 written, but its record never landed; a pack nothing names
        let mut first = all_chunks(&p);
        first.chunks.truncate(1);
        s.write_chunks(1, 2, &first).unwrap();
        s.flush().unwrap();
        std::fs::write(s.packs.path(1, 999), b"a crash between a pack and its index").unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(!has(&s, Ref::Base { t: 0, c: 0, v: 2 }), "version 2's chunk");
    assert!(has(&s, Ref::Base { t: 0, c: 0, v: 1 }));
    assert_eq!(s.packs.list(1).unwrap().len(), 1, "only version 1's pack is left");
    assert_eq!(load(&s, 1, 1, &spec()), p.content_bits());
}

#[test]
fn dropping_versions_frees_only_unreferenced_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let p = Params::init(&spec());
    let m1 = Manifest::full(&p, 1);
    s.write_version(1, &version(1, None), &m1, &all_chunks(&p)).unwrap();
    // version 2 rewrites chunk 0 of tensor 0 only
    let mut m2 = m1.clone();
    m2.tensors[0][0] = Chain::whole(2);
    let mut first = all_chunks(&p);
    first.chunks.truncate(1);
    s.write_version(1, &version(2, Some(1)), &m2, &first).unwrap();
    let freed = s.drop_versions(1, "m", &[1], &[2]).unwrap();
    assert_eq!(freed, 1, "only chunk (0,0) of version 1 is unreferenced");
    assert_eq!(s.versions(1).unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), vec![2]);
    let mut q = Params::zeros(&spec());
    s.load_params(1, "m", &m2, &mut q).unwrap();
}

#[test]
fn manifest_encoding_roundtrips_and_rejects_truncation() {
    let layer = |hi, lo| Layer { hi, lo, bytes: 1000 };
    let m = Manifest {
        tensors: vec![
            vec![Chain::whole(1), Chain { base: 0, layers: vec![layer(2, 2), layer(5, 3)] }, Chain::whole(3)],
            vec![],
            vec![Chain { base: 9, layers: vec![layer(10, 10)] }],
        ],
    };
    let b = m.encode();
    assert_eq!(b.len(), m.encoded_len());
    assert_eq!(Manifest::decode(&b), Some(m.clone()));
    for cut in 0..b.len() {
        assert_eq!(Manifest::decode(&b[..cut]), None, "cut at {cut}");
    }
    assert_eq!(Manifest::decode(&manifest::encode_v2(&m)), Some(m.clone()), "format 2's encoding reads");
    let v2 = manifest::encode_v2(&m);
    assert!(b.len() * 2 < v2.len(), "{} bytes, {} in format 2", b.len(), v2.len());
    // format 1's manifests read as chains without layers
    let whole = Manifest { tensors: vec![vec![Chain::whole(1), Chain::whole(4)], vec![Chain::whole(2)]] };
    assert_eq!(Manifest::decode(&manifest::encode_v1(&whole)), Some(whole));
    let refs: Vec<Ref> = m.refs().collect();
    assert_eq!(refs.len(), 6, "bases above 0 and every layer: {refs:?}");
    assert!(refs.contains(&Ref::Delta { t: 0, c: 1, hi: 5, lo: 3 }));
}

/// Model `id`'s content after each of three commits (rows of chunk 1 of tensor 0 as
/// deltas, then chunk 2 whole), written as the server writes them over version 1, the
/// init spec. Returns the content of each version, 1 to 4.
fn delta_versions(s: &Store, id: u64) -> Vec<Params> {
    s.put_model(&model_record(id)).unwrap();
    let mut p = Params::init(&hashed());
    let h = p.tensor_index("h").unwrap();
    let mut m = Manifest::init(&p);
    s.write_version(id, &version(1, None), &m, &ChunkBatch::default()).unwrap();
    let mut contents = vec![p.clone()];
    for v in 2..=4u64 {
        p.begin_update();
        let rows: Vec<usize> = if v < 4 { vec![16384 + v as usize, 16384 + 900] } else { (32768..40000).collect() };
        let keys: Vec<u64> = rows.iter().map(|r| *r as u64).collect();
        p.apply_rows(h, &keys, &vec![0.25 * v as f32; keys.len()]);
        p.finish_update().unwrap();
        let mut batch = ChunkBatch::default();
        for t in 0..p.tensors.len() {
            for c in p.dirty_chunks(t).collect::<Vec<_>>() {
                let delta = p.commit_form(t, c) == Some(true);
                let bits = match p.change(t, c) {
                    Some(accrete_core::params::Change::Rows(b)) => b.to_vec(),
                    _ => vec![],
                };
                batch.push_blob(t as u32, c as u32, delta, |out| match delta {
                    true => p.encode_delta(t, c, &bits, out),
                    false => p.encode_chunk(t, c, out),
                });
                let e = batch.chunks.last().unwrap().clone();
                let chain = &mut m.tensors[t][c];
                match delta {
                    true => chain.layers.push(Layer { hi: v, lo: v, bytes: e.range.len() as u32 }),
                    false => *chain = Chain::whole(v),
                }
            }
        }
        p.clear_dirty();
        s.write_version(id, &version(v, Some(v - 1)), &m, &batch).unwrap();
        contents.push(p.clone());
    }
    contents
}

/// A hashed AdaGrad model (4 chunks of rows, an accumulator slot, seeded weights).
fn hashed() -> ModelSpec {
    let mut s = ModelSpec::new("m", ModelKind::Linear);
    s.hash_bits = 16;
    s.optimizer = accrete_core::OptimizerSpec::new(accrete_core::OptimizerKind::Adagrad, 0.1);
    s.init.seed = 3;
    s
}

fn load(s: &Store, id: u64, v: u64, spec: &ModelSpec) -> Vec<u32> {
    let m = s.manifest(id, v, "m").unwrap().unwrap();
    let mut q = Params::zeros(spec);
    q.tensors.iter_mut().for_each(|t| t.w.fill(7.0));
    s.load_params(id, "m", &m, &mut q).unwrap();
    q.content_bits()
}

#[test]
fn versions_read_as_init_spec_plus_layers_bitwise_and_retention_keeps_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let want = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let want = delta_versions(&s, 1);
        assert!(!has(&s, Ref::Base { t: 0, c: 0, v: 1 }), "version 1 is not stored");
        assert!(has(&s, Ref::Delta { t: 0, c: 1, hi: 3, lo: 3 }), "a layer");
        assert!(has(&s, Ref::Base { t: 0, c: 2, v: 4 }), "a whole chunk");
        let m3 = s.manifest(1, 3, "m").unwrap().unwrap();
        assert_eq!(m3.tensors[0][1].layers.len(), 2);
        want
    };
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for v in 1..=4 {
        assert_eq!(
            load(&s, 1, v, &hashed()),
            Params::content_bits(&want[v as usize - 1]),
            "version {v} after a reopen"
        );
    }
    // versions 2 and 3 go; 4 still reads through their layers
    s.drop_versions(1, "m", &[2, 3], &[1, 4]).unwrap();
    assert!(has(&s, Ref::Delta { t: 0, c: 1, hi: 2, lo: 2 }), "version 4 needs it");
    assert_eq!(load(&s, 1, 4, &hashed()), Params::content_bits(&want[3]));
    s.drop_versions(1, "m", &[4], &[1]).unwrap();
    assert_eq!(s.indexed(1).len(), 0, "nothing left but the init spec");
    assert_eq!(s.packs.list(1).unwrap(), Vec::<u64>::new(), "and no pack");
    assert_eq!(load(&s, 1, 1, &hashed()), Params::content_bits(&want[0]));
}

#[test]
fn a_crashed_commits_layers_are_removed_at_open_and_a_missing_layer_drops_its_version() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        delta_versions(&s, 1);
        let mut layer = ChunkBatch::default();
        layer.push_blob(0, 1, true, |b| b.extend_from_slice(b"x"));
        s.write_chunks(1, 5, &layer).unwrap();
        s.unindex(1, &Ref::Delta { t: 0, c: 1, hi: 3, lo: 3 });
        s.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(!has(&s, Ref::Delta { t: 0, c: 1, hi: 5, lo: 5 }));
    let listed: Vec<u64> = s.versions(1).unwrap().iter().map(|v| v.version).collect();
    assert_eq!(listed, vec![1, 2], "versions 3 and 4 read layer 3, which is gone");
}

#[test]
fn format_1_2_and_3_dirs_are_migrated_and_a_newer_format_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.put_model(&model_record(1)).unwrap();
        s.write_version(1, &version(1, None), &Manifest::full(&p, 1), &all_chunks(&p)).unwrap();
        // what format 1 wrote: its manifest encoding, chunks in sled, its marker
        let f1 = manifest::encode_v1(&Manifest::full(&p, 1));
        s.tree(1, 'f').unwrap().insert(be(1), f1).unwrap();
        to_format_2(&s, 1);
    }
    std::fs::write(dir.path().join(MARKER), "accrete data dir, format 1\n").unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(load(&s, 1, 1, &spec()), p.content_bits());
        assert!(s.tree(1, 'c').unwrap().is_empty(), "the chunks moved out of sled");
    }
    let marker = std::fs::read_to_string(dir.path().join(MARKER)).unwrap();
    assert_eq!(marker, format!("accrete data dir, format {FORMAT}\n"));
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(load(&s, 1, 1, &spec()), p.content_bits());
    drop(s);
    std::fs::write(dir.path().join(MARKER), "accrete data dir, format 9\n").unwrap();
    let e = Store::open(dir.path(), 1 << 20).unwrap_err();
    assert!(matches!(e, StoreError::NewerFormat { found: 9, .. }), "{e}");
    assert!(e.to_string().contains("newer accrete (on-disk format 9)"), "{e}");
    assert_eq!(std::fs::read_to_string(dir.path().join(MARKER)).unwrap(), "accrete data dir, format 9\n");

    // format 2: bases and delta layers in sled, moved twice by a crash before the marker
    let dir = tempfile::tempdir().unwrap();
    let want = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let want = delta_versions(&s, 1);
        to_format_2(&s, 1);
        want
    };
    std::fs::write(dir.path().join(MARKER), "accrete data dir, format 2\n").unwrap();
    drop(Store::open(dir.path(), 1 << 20).unwrap());
    std::fs::write(dir.path().join(MARKER), "accrete data dir, format 2\n").unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for v in 1..=4 {
        assert_eq!(load(&s, 1, v, &hashed()), want[v as usize - 1].content_bits(), "version {v}");
    }
    let named: HashSet<u64> = s.indexed(1).iter().map(|(_, l)| l.pack).collect();
    assert_eq!(s.packs.list(1).unwrap().len(), named.len(), "no pack that nothing names");

    // format 3: an index entry per blob (tree x), indexed by pack at open; the index of
    // a model deleted half-way (no record) is not read, only dropped
    s.to_blob_index(1);
    s.tree(99, 'x').unwrap().insert(b"garbage", &b"not a location"[..]).unwrap();
    s.flush().unwrap();
    drop(s);
    std::fs::write(dir.path().join(MARKER), "accrete data dir, format 3\n").unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for v in 1..=4 {
        assert_eq!(load(&s, 1, v, &hashed()), want[v as usize - 1].content_bits(), "version {v}");
    }
    assert!(s.tree(1, 'x').unwrap().is_empty(), "the per-blob index is gone");
    assert!(s.tree(99, 'x').unwrap().is_empty());
    drop(s);
    // a crash after the marker, before the old trees went: the next open drops them
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.tree(1, 'x').unwrap().insert(b"left", &b"over"[..]).unwrap();
        s.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s.tree(1, 'x').unwrap().is_empty(), "a leftover old tree is dropped at open");
    assert_eq!(load(&s, 1, 4, &hashed()), want[3].content_bits());
    assert_eq!(s.packs.list(1).unwrap().len(), named.len(), "every pack kept");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(MARKER)).unwrap(),
        format!("accrete data dir, format {FORMAT}\n")
    );
}

#[test]
fn a_pack_mostly_dropped_is_rewritten_and_a_damaged_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let p = Params::init(&spec());
    mostly_replaced(&s, &p);
    let [first, _] = s.packs.list(1).unwrap()[..] else { panic!("two packs") };
    let before = s.packs.size(1, first);
    s.drop_versions(1, "m", &[1], &[2]).unwrap();
    let packs = s.packs.list(1).unwrap();
    assert!(!packs.contains(&first), "rewritten: {packs:?}");
    let rewritten = *packs.iter().max().unwrap();
    assert!(s.packs.size(1, rewritten) * 2 < before, "{} of {before}", s.packs.size(1, rewritten));
    assert_eq!(load(&s, 1, 2, &spec()), p.content_bits());
    // a flipped bit in a pack is damage, named
    let path = s.packs.path(1, rewritten);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let m = s.manifest(1, 2, "m").unwrap().unwrap();
    let e = s.load_params(1, "m", &m, &mut Params::zeros(&spec())).unwrap_err();
    assert!(e.to_string().contains("chunk 2 of tensor 0 (version 1)") && e.to_string().contains("checksum"), "{e}");
}

#[test]
fn incarnations_only_grow_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.put_model(&model_record(7)).unwrap();
        assert_eq!(s.bump_incarnation(7, "w0").unwrap(), 1);
        assert_eq!(s.bump_incarnation(7, "w0").unwrap(), 2);
        assert_eq!(s.bump_incarnation(7, "w1").unwrap(), 1);
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.incarnations(7).unwrap(), vec![("w0".to_string(), 2), ("w1".to_string(), 1)]);
    assert_eq!(s.bump_incarnation(7, "w0").unwrap(), 3);
    s.delete_model(&model_record(7), 5).unwrap();
    assert_eq!(s.epoch_floor("m").unwrap(), 5, "the deleted model's last epoch is kept");
    assert_eq!(s.incarnations(7).unwrap(), vec![], "deleted with its model");
}

/// Versions 1 (full) and 2 (its own chunk 1 of tensor 0), as a commit writes them.
fn two_versions(s: &Store, p: &Params) {
    s.put_model(&model_record(1)).unwrap();
    s.write_version(1, &version(1, None), &Manifest::full(p, 1), &all_chunks(p)).unwrap();
    let mut m2 = Manifest::full(p, 1);
    m2.tensors[0][1] = Chain::whole(2);
    let mut chunk = ChunkBatch::default();
    chunk.push(0, 1, |b| p.encode_chunk(0, 1, b));
    s.write_version(1, &version(2, Some(1)), &m2, &chunk).unwrap();
}

#[test]
fn a_listed_version_whose_chunks_are_gone_is_dropped_at_open() {
    // what a crash in the middle of the old retention order (chunks first) could leave
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        two_versions(&s, &p);
        s.unindex(1, &Ref::Base { t: 0, c: 1, v: 2 });
        s.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let listed: Vec<u64> = s.versions(1).unwrap().iter().map(|v| v.version).collect();
    assert_eq!(listed, vec![1], "version 2 cannot be read, so it is not listed");
    for v in listed {
        let m = s.manifest(1, v, "m").unwrap().unwrap();
        s.load_params(1, "m", &m, &mut Params::zeros(&spec())).expect("every listed version loads");
    }
}

#[test]
fn retention_drops_records_before_chunks_and_open_collects_what_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        two_versions(&s, &p);
        // a crash after retention dropped version 2's records, before its chunks
        s.tree(1, 'v').unwrap().remove(be(2)).unwrap();
        s.tree(1, 'f').unwrap().remove(be(2)).unwrap();
        s.flush().unwrap();
        assert!(has(&s, Ref::Base { t: 0, c: 1, v: 2 }));
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(!has(&s, Ref::Base { t: 0, c: 1, v: 2 }), "orphan chunk collected");
    let m = s.manifest(1, 1, "m").unwrap().unwrap();
    s.load_params(1, "m", &m, &mut Params::zeros(&spec())).expect("version 1 untouched");
    // and retention itself frees only what no kept version references
    let mut m3 = Manifest::full(&p, 1);
    m3.tensors[0][2] = Chain::whole(3);
    let mut chunk = ChunkBatch::default();
    chunk.push(0, 2, |b| p.encode_chunk(0, 2, b));
    s.write_version(1, &version(3, Some(1)), &m3, &chunk).unwrap();
    let freed = s.drop_versions(1, "m", &[1], &[3]).unwrap();
    assert_eq!(freed, 1, "only version 1's chunk 2, which version 3 replaced; its other chunks are still version 3's");
    let m = s.manifest(1, 3, "m").unwrap().unwrap();
    s.load_params(1, "m", &m, &mut Params::zeros(&spec())).expect("the kept version loads");
}

#[test]
fn compaction_keeps_every_record_and_a_crash_during_it_leaves_one_whole_database() {
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    let bits = |s: &Store| {
        let m = s.manifest(1, 2, "m").unwrap().unwrap();
        let mut q = Params::zeros(&spec());
        s.load_params(1, "m", &m, &mut q).unwrap();
        q.tensors[0].w.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let want = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        two_versions(&s, &p);
        assert_eq!(s.bump_incarnation(1, "w").unwrap(), 1);
        let want = (s.versions(1).unwrap(), s.incarnations(1).unwrap(), bits(&s));
        s.compact().unwrap();
        assert_eq!((s.versions(1).unwrap(), s.incarnations(1).unwrap(), bits(&s)), want);
        assert!(s.new_model_id().unwrap() > 1, "no id of a live model comes back");
        // The store goes on writing after the swap.
        assert_eq!(s.bump_incarnation(1, "w").unwrap(), 2);
        want
    };
    let reopened = |what: &str| {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.versions(1).unwrap(), bits(&s)), (want.0.clone(), want.2.clone()), "{what}");
        assert!(!dir.path().join("db.compact").exists() && !dir.path().join("db.old").exists(), "{what}");
    };
    reopened("after a compaction");
    // A crash while copying: a partial copy beside the database is discarded.
    std::fs::create_dir(dir.path().join("db.compact")).unwrap();
    std::fs::write(dir.path().join("db.compact/db"), b"partial").unwrap();
    reopened("a partial copy");
    // A crash between the two renames: the whole copy takes the database's place.
    let copy = tempfile::tempdir().unwrap();
    let cp = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
        assert!(status.success());
    };
    cp(&dir.path().join("db"), &copy.path().join("db"));
    std::fs::rename(dir.path().join("db"), dir.path().join("db.old")).unwrap();
    cp(&copy.path().join("db"), &dir.path().join("db.compact"));
    reopened("between the renames");
}

/// Versions 1 (every chunk) and 2 (every chunk but tensor 0's last again): version 1's
/// pack is mostly dead once version 1 goes.
fn mostly_replaced(s: &Store, p: &Params) {
    s.put_model(&model_record(1)).unwrap();
    s.write_version(1, &version(1, None), &Manifest::full(p, 1), &all_chunks(p)).unwrap();
    let mut m2 = Manifest::full(p, 2);
    m2.tensors[0][2] = Chain::whole(1);
    let mut two = all_chunks(p);
    two.chunks.retain(|e| (e.t, e.c) != (0, 2));
    s.write_version(1, &version(2, Some(1)), &m2, &two).unwrap();
}

#[test]
fn a_pack_rewritten_at_open_is_kept() {
    // a crash after retention dropped version 1's records, before its blobs: the next
    // open frees them, which rewrites version 1's pack; the new pack must stay
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        mostly_replaced(&s, &p);
        s.tree(1, 'v').unwrap().remove(be(1)).unwrap();
        s.tree(1, 'f').unwrap().remove(be(1)).unwrap();
        s.flush().unwrap();
    }
    for open in ["the open that rewrites", "the next"] {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(load(&s, 1, 2, &spec()), p.content_bits(), "{open}");
        let named: HashSet<u64> = s.indexed(1).iter().map(|(_, l)| l.pack).collect();
        assert_eq!(s.packs.list(1).unwrap().into_iter().collect::<HashSet<_>>(), named, "{open}");
    }
}

#[test]
fn a_manifest_without_its_record_goes_and_a_damaged_index_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        mostly_replaced(&s, &p);
        // retention's unflushed drop, landed for the record only
        s.tree(1, 'v').unwrap().remove(be(1)).unwrap();
        s.flush().unwrap();
    }
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(s.manifest(1, 1, "m").unwrap().is_none());
        assert!(!has(&s, Ref::Base { t: 0, c: 0, v: 1 }), "its blobs went with it");
        assert!(has(&s, Ref::Base { t: 0, c: 2, v: 1 }), "version 2 still reads this one");
        s.damage_index(1, &Ref::Base { t: 0, c: 1, v: 2 }, b"short");
        s.flush().unwrap();
    }
    let e = Store::open(dir.path(), 1 << 20).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }) && e.to_string().contains("index entry of pack"), "{e}");
}

#[test]
fn a_blob_written_again_is_listed_by_its_newest_pack_only() {
    // (a compaction's base written again after a pass that failed before its manifests)
    let dir = tempfile::tempdir().unwrap();
    let p = Params::init(&spec());
    let r = Ref::Base { t: 0, c: 1, v: 2 };
    let (first, second) = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        two_versions(&s, &p);
        let mut blob = Vec::new();
        p.encode_chunk(0, 1, &mut blob);
        s.write_bases(1, &[(2, 0, 1, blob.clone())]).unwrap();
        let first = s.loc(1, &r).unwrap().pack;
        s.write_bases(1, &[(2, 0, 1, blob)]).unwrap();
        let second = s.loc(1, &r).unwrap().pack;
        assert!(second > first);
        let listed = s.tree(1, 'p').unwrap().get(be(first)).unwrap().unwrap();
        assert_eq!(&listed[..], &0u32.to_le_bytes()[..], "the first pack's entry lists nothing now");
        // the next deletion (with no load in flight) gives its disk back
        s.delete_blobs(1, &[]).unwrap();
        assert!(!s.packs.list(1).unwrap().contains(&first), "the pack nothing is live in went");
        assert!(s.tree(1, 'p').unwrap().get(be(first)).unwrap().is_none());
        (first, second)
    };
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.loc(1, &r).map(|l| l.pack), Some(second));
    assert!(!s.packs.list(1).unwrap().contains(&first));
    assert_eq!(load(&s, 1, 2, &spec()), p.content_bits());
}
