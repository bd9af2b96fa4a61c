//! Round trips of the conversions, and the structural checks of wire input.
use crate::v1 as pb;
use accrete_core::features::Batch;
use accrete_core::push::Gradient;
use accrete_core::{
    ConsistencyMode, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec, VersionKind, VersionRecord, WorkerProgress,
};

#[test]
fn specs_round_trip() {
    let mut s = ModelSpec::new("m", ModelKind::Softmax);
    s.features = 4;
    s.classes = 3;
    s.optimizer = OptimizerSpec::new(OptimizerKind::Adam, 0.002);
    s.consistency = ConsistencyMode::Ssp;
    s.staleness = 2;
    s.commit.every_updates = 7;
    let back = ModelSpec::try_from(pb::ModelSpec::from(&s)).unwrap();
    assert_eq!(back, s);
    let e = ModelSpec::try_from(pb::ModelSpec { name: "x".into(), ..Default::default() }).unwrap_err();
    assert!(e.0.contains("\"x\"") && e.0.contains("spec.kind"), "{e}");
}

#[test]
fn versions_keep_their_kind_and_progress() {
    let mut v = VersionRecord::new(5, VersionKind::Rollback);
    v.parent = Some(4);
    v.content_of = 2;
    v.workers.push(WorkerProgress { worker_id: "w".into(), incarnation: 3, seq: 9, ..Default::default() });
    v.metrics.insert("auc".into(), 0.7);
    let wire = pb::VersionInfo::from(("m", &v));
    assert_eq!(wire.model, "m");
    assert_eq!(VersionRecord::from(wire), v);
}

#[test]
fn keys_travel_as_fixed_width_bytes() {
    let g = Gradient { tensor: "h", keys: &[1, u32::MAX, 7], values: &[0.5; 3], ..Default::default() };
    let c = pb::TensorChunk::from(&g);
    assert_eq!(c.keys.len(), 24);
    let keys = accrete_core::optim::LeKeys(&c.keys);
    assert_eq!(keys.iter().collect::<Vec<_>>(), vec![1, u32::MAX as u64, 7]);
    assert!(!accrete_core::optim::LeKeys(&c.keys[1..]).whole());
}

#[test]
fn feature_rows_are_checked_for_structure() {
    let mut b = Batch::new(2);
    b.dense = vec![1.0, 2.0];
    b.idx = vec![3];
    b.val = vec![1.0];
    b.row_ptr = vec![0, 1];
    b.labels = vec![1.0];
    let wire = pb::FeatureRows::from(&b);
    let back = Batch::try_from(&wire).unwrap();
    assert_eq!((back.dense, back.idx, back.row_ptr), (b.dense, b.idx, b.row_ptr));
    let broken = pb::FeatureRows { row_ptr: vec![0, 2], ..wire };
    assert!(Batch::try_from(&broken).is_err());
}

#[test]
fn a_batch_pulls_its_hashed_rows_and_its_dense_tensors_whole() {
    let mut spec = ModelSpec::new("m", ModelKind::Logistic);
    spec.features = 2;
    spec.hash_bits = 4;
    let view = accrete_core::view::ModelView::of(&spec);
    let req = super::batch_pull(&view, &[3, 1], Some(7), Some(("w", 2)), false);
    assert_eq!((req.model.as_str(), req.version, req.worker_id.as_str(), req.clock), ("m", Some(7), "w", 2));
    let h = req.slices.iter().find(|s| s.tensor == "h").unwrap();
    assert_eq!(accrete_core::optim::LeKeys(&h.keys).iter().collect::<Vec<_>>(), vec![3, 1]);
    assert!(req.slices.iter().filter(|s| s.tensor != "h").all(|s| s.keys.is_empty()));
    assert_eq!(req.slices.last().unwrap().tensor, "norm");
    let no_rows = super::batch_pull(&view, &[], None, None, false);
    assert!(!no_rows.slices.iter().any(|s| s.tensor == "h"), "no hashed rows, no slice of the table");
}

#[test]
fn a_version_from_a_server_without_kinds_is_told_by_its_reason() {
    let old = pb::VersionInfo { version: 4, reason: "rollback to 2: quality gate".into(), ..Default::default() };
    assert_eq!(VersionRecord::from(old).kind, VersionKind::Rollback);
    let manual =
        pb::VersionInfo { kind: pb::VersionKind::Manual as i32, reason: "rollback drill".into(), ..Default::default() };
    assert_eq!(VersionRecord::from(manual).kind, VersionKind::Manual, "a sent kind wins");
}

#[test]
fn an_unknown_consistency_mode_is_refused_by_name() {
    let mut s = pb::ModelSpec::from(&ModelSpec::new("m", ModelKind::Linear));
    s.consistency = Some(pb::Consistency { mode: 77, staleness: 0 });
    let e = ModelSpec::try_from(s).unwrap_err();
    assert!(e.0.contains("consistency.mode 77"), "{e}");
}
