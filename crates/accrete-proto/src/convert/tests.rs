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
    let g = Gradient { tensor: "h".into(), keys: vec![1, 1 << 40, 7], values: vec![0.5; 3], ..Default::default() };
    let c = pb::TensorChunk::from(&g);
    assert_eq!(c.keys.len(), 24);
    assert_eq!(crate::bytes_to_keys(&c.keys), Some(g.keys.clone()));
    assert_eq!(crate::bytes_to_keys(&c.keys[1..]), None);
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
