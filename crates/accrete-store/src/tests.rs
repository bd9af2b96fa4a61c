//! Store tests on a real sled database in a temp dir.
use super::*;
use accrete_core::{ModelKind, ModelSpec};

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
        // chunks of version 2 written, but its record never landed
        let mut b = sled::Batch::default();
        b.insert(&piece_key(2, 0, 0, 0), &b"x"[..]);
        s.tree(1, 'c').unwrap().apply_batch(b).unwrap();
        s.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s.tree(1, 'c').unwrap().get(piece_key(2, 0, 0, 0)).unwrap().is_none());
    assert!(s.tree(1, 'c').unwrap().get(piece_key(1, 0, 0, 0)).unwrap().is_some());
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
    m2.tensors[0][0] = 2;
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
    let m = Manifest { tensors: vec![vec![1, 2, 3], vec![], vec![9]] };
    let b = m.encode();
    assert_eq!(Manifest::decode(&b), Some(m));
    assert_eq!(Manifest::decode(&b[..b.len() - 1]), None);
    assert_eq!(Manifest::decode(&[]), None);
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
    m2.tensors[0][1] = 2;
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
        let ctree = s.tree(1, 'c').unwrap();
        for k in ctree.scan_prefix(chunk_key(2, 0, 1)).keys() {
            ctree.remove(k.unwrap()).unwrap();
        }
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
        assert!(s.tree(1, 'c').unwrap().scan_prefix(chunk_key(2, 0, 1)).next().is_some());
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s.tree(1, 'c').unwrap().scan_prefix(chunk_key(2, 0, 1)).next().is_none(), "orphan chunk collected");
    let m = s.manifest(1, 1, "m").unwrap().unwrap();
    s.load_params(1, "m", &m, &mut Params::zeros(&spec())).expect("version 1 untouched");
    // and retention itself frees only what no kept version references
    let mut m3 = Manifest::full(&p, 1);
    m3.tensors[0][2] = 3;
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
