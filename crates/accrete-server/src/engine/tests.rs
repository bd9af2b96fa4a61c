//! The engine alone, with an injected clock: pushes, refusals that change nothing, the
//! barriers and their leases, and the commit policy's decisions.
use super::*;
use accrete_core::optim::LeKeys;
use accrete_core::{CommitPolicy, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec};

const LEASE: Duration = Duration::from_secs(5);
const LR: f32 = 0.5;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A linear model: `w` (4 dense), `h` (16 hashed rows), `b`, `norm`; plain SGD.
fn spec(consistency: ConsistencyMode, staleness: u32, commit: CommitPolicy) -> ModelSpec {
    ModelSpec {
        features: 4,
        hash_bits: 4,
        optimizer: OptimizerSpec::new(OptimizerKind::Sgd, LR),
        consistency,
        staleness,
        commit,
        ..ModelSpec::new("m", ModelKind::Linear)
    }
}

fn engine(spec: &ModelSpec, now: Instant) -> Engine {
    let head = VersionRecord { lineage_epoch: 1, ..VersionRecord::new(1, VersionKind::Created) };
    Engine::new(Arc::new(Shape::of(spec)), Params::zeros(spec), &head, vec![], LEASE, now)
}

fn asp() -> Engine {
    engine(&spec(ConsistencyMode::Asp, 0, CommitPolicy::default()), Instant::now())
}

fn meta(worker: &str, incarnation: u64, clock: u64) -> PushMeta {
    PushMeta { worker_id: worker.into(), incarnation, clock, rows: 1, ..Default::default() }
}

/// Pushes a gradient of `g` for the bias.
fn push(e: &mut Engine, epoch: u64, m: &PushMeta, g: f32, now: Instant) -> Result<Pushed> {
    let values = g.to_le_bytes();
    let grads = [Grad { slot: "", tensor: "b", offset: 0, keys: LeKeys(&[]), values: &values }];
    let shape = e.shape.clone();
    let checked = shape.check(&grads, m)?;
    e.push(&checked, epoch, now)
}

fn bias(e: &Engine) -> f32 {
    let t = e.params.tensor_index("b").unwrap();
    e.params.tensors[t].w[0]
}

#[test]
fn an_asp_push_is_applied_on_arrival_and_records_the_workers_progress() {
    let mut e = asp();
    let m = PushMeta { shard: "s0".into(), offset: 100, seq: 7, ..meta("w", 0, 1) };
    let pushed = push(&mut e, 1, &m, 1.0, Instant::now()).unwrap();
    assert_eq!(pushed.ack, PushAck { lineage_epoch: 1, head_version: 1, updates: 1 });
    assert_eq!(bias(&e), -LR);
    let progress = e.progress();
    assert_eq!((progress[0].shard.as_str(), progress[0].offset, progress[0].seq), ("s0", 100, 7));
}

#[test]
fn a_stale_epoch_is_refused_and_changes_nothing() {
    let mut e = asp();
    let refused = push(&mut e, 2, &meta("w", 0, 1), 1.0, Instant::now()).unwrap_err();
    assert!(matches!(refused, ServiceError::StaleLineage { pushed: 2, current: 1, .. }), "{refused}");
    assert_eq!((bias(&e), e.status().updates, e.status().since_commit), (0.0, 0, 0));
    assert!(e.progress().is_empty(), "a refused push records no progress");
    assert!(e.params.dirty_chunks(0).next().is_none());
    push(&mut e, 0, &meta("w", 0, 1), 1.0, Instant::now()).expect("epoch 0 is not checked");
}

#[test]
fn a_stale_incarnation_is_refused_and_changes_nothing() {
    let mut e = asp();
    let t0 = Instant::now();
    assert_eq!(e.join("w", 2, t0).incarnation, 2);
    let refused = push(&mut e, 1, &meta("w", 1, 1), 1.0, t0).unwrap_err();
    assert!(matches!(refused, ServiceError::StaleIncarnation { pushed: 1, current: 2, .. }), "{refused}");
    assert_eq!((bias(&e), e.status().updates), (0.0, 0));
    assert!(e.progress().is_empty());
    push(&mut e, 1, &meta("w", 2, 1), 1.0, t0).expect("the current incarnation pushes");
    push(&mut e, 1, &meta("w", 0, 2), 1.0, t0).expect("incarnation 0 is not fenced");
    assert_eq!(e.progress()[0].incarnation, 2);
}

#[test]
fn gradients_are_checked_against_the_layout_before_the_engine_sees_them() {
    let e = asp();
    let m = meta("w", 0, 1);
    let values = 1.0f32.to_le_bytes();
    let key = 16u64.to_le_bytes();
    let out_of_range = [Grad { slot: "", tensor: "h", offset: 0, keys: LeKeys(&key), values: &values }];
    let err = e.shape().check(&out_of_range, &m).unwrap_err().to_string();
    assert!(err.contains("key 16 is out of range"), "{err}");
    let ragged = [Grad { slot: "", tensor: "w", offset: 0, keys: LeKeys(&[]), values: &values[..3] }];
    let err = e.shape().check(&ragged, &m).unwrap_err().to_string();
    assert!(err.contains("not a multiple of 4"), "{err}");
    let past_end = [Grad { slot: "", tensor: "w", offset: 4, keys: LeKeys(&[]), values: &values }];
    let err = e.shape().check(&past_end, &m).unwrap_err().to_string();
    assert!(err.contains("outside its 4 floats"), "{err}");
    let bad_loss = PushMeta { loss_sum: f64::NAN, ..m };
    let err = e.shape().check(&[], &bad_loss).unwrap_err().to_string();
    assert!(err.contains("loss_sum NaN"), "{err}");
}

#[test]
fn the_time_policy_is_due_only_after_every_secs_with_updates() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_secs: 2.0, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    assert!(!e.commit_due(t0 + secs(10.0)), "no updates, no commit");
    push(&mut e, 1, &meta("w", 0, 1), 1.0, t0 + secs(1.0)).unwrap();
    assert!(!e.commit_due(t0 + secs(1.999)));
    assert!(e.policy_snapshot(t0 + secs(1.5)).is_none());
    assert!(e.commit_due(t0 + secs(2.0)));
    let snap = e.policy_snapshot(t0 + secs(2.0)).expect("due at 2 s");
    assert_eq!((snap.updates, snap.since_parent, snap.kind), (1, 1, VersionKind::Policy));
    assert!(!snap.chunks.is_empty());
    assert!(!e.commit_due(t0 + secs(30.0)), "nothing changed since the snapshot");
    push(&mut e, 1, &meta("w", 0, 2), 1.0, t0 + secs(3.0)).unwrap();
    assert!(!e.commit_due(t0 + secs(3.9)), "counted from the last commit, at 2 s");
    assert!(e.commit_due(t0 + secs(4.0)));
}

#[test]
fn update_count_snapshots_are_taken_at_exact_counts_and_wait_in_order() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 3, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    let due: Vec<bool> = (1..=7).map(|c| push(&mut e, 1, &meta("w", 0, c), 1.0, t0).unwrap().commit_due).collect();
    assert_eq!(due, [false, false, true, false, false, true, false]);
    assert!(e.commit_due(t0));
    let first = e.next_pending().unwrap();
    let second = e.next_pending().unwrap();
    assert!(e.next_pending().is_none());
    assert_eq!((first.updates, first.since_parent, first.workers[0].clock), (3, 3, 3));
    assert_eq!((second.updates, second.since_parent, second.workers[0].clock), (6, 3, 6));
    assert!(!e.commit_due(t0), "the time policy is off");
    let manual = e.snapshot(VersionKind::Manual, "commit", t0).unwrap();
    assert_eq!((manual.updates, manual.since_parent), (7, 1));
    assert!(e.snapshot(VersionKind::Manual, "commit", t0).is_none(), "nothing changed since");
}

#[test]
fn at_most_eight_snapshots_wait_and_later_updates_coalesce() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    for c in 1..=10 {
        assert!(push(&mut e, 1, &meta("w", 0, c), 1.0, t0).unwrap().commit_due);
    }
    let written: Vec<u64> = std::iter::from_fn(|| e.next_pending()).map(|s| s.updates).collect();
    assert_eq!(written, (1..=8).collect::<Vec<_>>());
    let rest = e.snapshot(VersionKind::Policy, "policy", t0).unwrap();
    assert_eq!((rest.updates, rest.since_parent), (10, 2));
}

#[test]
fn an_unwritten_snapshot_goes_into_the_next_commit() {
    let mut e = asp();
    let now = Instant::now();
    push(&mut e, 1, &meta("w", 0, 1), 1.0, now).unwrap();
    let snap = e.snapshot(VersionKind::Manual, "commit", now).unwrap();
    e.unwritten(&snap);
    let again = e.snapshot(VersionKind::Manual, "commit", now).unwrap();
    assert_eq!((again.chunks.len(), again.since_parent), (snap.chunks.len(), 1));
    e.committed(2, now);
    assert_eq!(e.status().head, 2);
}

#[test]
fn installed_content_starts_a_new_lineage() {
    let mut e = asp();
    let now = Instant::now();
    push(&mut e, 1, &meta("w", 0, 1), 1.0, now).unwrap();
    let restored = Params::zeros(&spec(ConsistencyMode::Asp, 0, CommitPolicy::default()));
    e.install(restored, 2, 3, now);
    assert_eq!(bias(&e), 0.0);
    let st = e.status();
    assert_eq!((st.head, st.epoch, st.updates, st.since_commit), (3, 2, 1, 0));
    assert!(matches!(push(&mut e, 1, &meta("w", 0, 2), 1.0, now), Err(ServiceError::StaleLineage { .. })));
    assert_eq!(push(&mut e, 2, &meta("w", 0, 2), 1.0, now).unwrap().ack.lineage_epoch, 2);
}

fn bsp(now: Instant) -> Engine {
    engine(&spec(ConsistencyMode::Bsp, 0, CommitPolicy::default()), now)
}

#[test]
fn bsp_applies_a_round_once_every_live_worker_is_in() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    assert_eq!(push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap().ack.updates, 0, "the round waits for b");
    assert!(!e.may_pull("a", 1, t0));
    let dup = push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap_err().to_string();
    assert!(dup.contains("already pushed clock 1"), "{dup}");
    let ahead = push(&mut e, 1, &meta("b", 1, 17), 1.0, t0).unwrap_err().to_string();
    assert!(ahead.contains("BSP is at round 0"), "{ahead}");
    assert_eq!(push(&mut e, 1, &meta("b", 1, 1), 1.0, t0).unwrap().ack.updates, 1);
    assert_eq!(bias(&e), -2.0 * LR, "one update with the summed gradients");
    assert!(e.may_pull("a", 1, t0) && e.may_pull("b", 1, t0));
    let past = push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap_err().to_string();
    assert!(past.contains("BSP is at round 1"), "{past}");
}

#[test]
fn a_push_from_outside_the_bsp_barrier_must_join_again() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    let refused = push(&mut e, 1, &meta("a", 0, 1), 1.0, t0).unwrap_err();
    assert!(matches!(refused, ServiceError::NotInBarrier { .. }), "{refused}");
    assert!(refused.to_string().contains("join again"));
    assert_eq!(e.join("a", 1, t0).clock, 0);
}

#[test]
fn a_stale_bsp_push_counts_in_its_round_as_an_empty_contribution() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap();
    let refused = push(&mut e, 7, &meta("b", 1, 1), 1.0, t0).unwrap_err();
    assert!(matches!(refused, ServiceError::StaleLineage { .. }), "{refused}");
    assert_eq!((e.status().updates, bias(&e)), (1, -LR), "the round went on with a's gradient alone");
    assert!(e.may_pull("b", 1, t0));
}

#[test]
fn an_expired_lease_completes_a_bsp_round_at_the_injected_time() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0 + secs(4.0)).unwrap();
    assert!(e.expire(t0 + LEASE).is_empty(), "b's lease lasts until 5 s");
    assert_eq!(e.status().updates, 0);
    assert_eq!(e.expire(t0 + LEASE + secs(0.001)), ["b".to_string()]);
    assert_eq!((e.status().updates, bias(&e)), (1, -LR), "b's departure completed the round");
    assert!(e.may_pull("a", 1, t0 + secs(5.1)));
    assert!(!e.heartbeat("b", t0 + secs(5.1)).member);
    assert!(matches!(push(&mut e, 1, &meta("b", 1, 1), 1.0, t0 + secs(6.0)), Err(ServiceError::NotInBarrier { .. })));
}

#[test]
fn heartbeats_keep_a_lease_and_a_departure_releases_the_round() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    assert!(e.heartbeat("b", t0 + secs(4.0)).member);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0 + secs(8.0)).unwrap();
    assert!(e.expire(t0 + secs(8.5)).is_empty(), "b's heartbeat at 4 s renewed it until 9 s");
    let left = e.leave("b", t0 + secs(8.6));
    assert_eq!((left.member, left.live), (true, 1));
    assert_eq!(e.status().updates, 1);
}

#[test]
fn ssp_holds_a_worker_that_runs_more_than_the_staleness_ahead() {
    let t0 = Instant::now();
    let mut e = engine(&spec(ConsistencyMode::Ssp, 1, CommitPolicy::default()), t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap();
    push(&mut e, 1, &meta("a", 1, 2), 1.0, t0).unwrap();
    assert_eq!(e.status().updates, 2, "SSP applies pushes on arrival");
    assert!(e.may_pull("a", 1, t0));
    assert!(!e.may_pull("a", 2, t0), "b at clock 0 is 2 behind");
    push(&mut e, 1, &meta("b", 1, 1), 1.0, t0).unwrap();
    assert!(e.may_pull("a", 2, t0));
    assert!(e.expire(t0 + LEASE + secs(1.0)).len() == 2, "pulls and pushes renewed neither after t0");
    assert!(e.may_pull("a", 9, t0 + LEASE + secs(1.0)), "no live worker holds anyone back");
}

#[test]
fn a_joining_worker_gets_its_recorded_progress_and_the_bsp_clock() {
    let t0 = Instant::now();
    let mut e = asp();
    let m = PushMeta { shard: "part-0".into(), offset: 42, ..meta("w", 0, 5) };
    push(&mut e, 1, &m, 1.0, t0).unwrap();
    let joined = e.join("w", 3, t0);
    assert_eq!((joined.clock, joined.offset, joined.shard.as_str()), (5, 42, "part-0"));
    assert_eq!((joined.lease_ms, joined.lineage_epoch, joined.live_workers), (5000, 1, 1));
    let mut b = bsp(t0);
    b.join("x", 1, t0);
    push(&mut b, 1, &meta("x", 1, 1), 1.0, t0).unwrap();
    assert_eq!(b.join("y", 1, t0).clock, 1, "a BSP joiner takes the applied round");
}

#[test]
fn a_restarted_partitions_barrier_joins_the_others_clock_and_an_open_one_is_held_to_its_rounds() {
    let t0 = Instant::now();
    // restarted: no round open, far behind the clock the other partitions gave
    let mut e = bsp(t0);
    let joined = e.join_at("a", 2, 1000, t0);
    assert_eq!(joined.clock, 1000);
    assert!(e.may_pull("a", 1000, t0));
    assert_eq!(push(&mut e, 1, &meta("a", 2, 1001), 1.0, t0).unwrap().ack.updates, 1, "the next round applies");
    assert_eq!(e.join_at("b", 1, u64::MAX, t0).clock, 1 << 48, "a clock from the network is bounded");
    // an open round: the partition is live, so a given clock is held to the rounds a push may run ahead
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap();
    assert_eq!(e.join_at("b", 2, 1000, t0).clock, 16);
    assert_eq!(e.status().updates, 1, "b counted in rounds 1..=16 (empty), so a's round applied");
}

#[test]
fn a_hold_keeps_rounds_from_completing_and_a_cut_applies_the_rounds_it_names() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap();
    e.hold_rounds();
    e.leave("b", t0);
    assert_eq!((e.status().updates, e.status().round), (0, 0), "held: b's departure completes nothing yet");
    // another partition had applied round 1 when held: the cut applies it here too
    e.rounds_through(1, t0).unwrap();
    assert_eq!((e.status().updates, e.status().round, bias(&e)), (1, 1, -LR));
    e.release_rounds(t0);
    // a cut that names no further round leaves a complete one to the hold's end
    e.join("b", 2, t0);
    push(&mut e, 1, &meta("a", 1, 2), 1.0, t0).unwrap();
    e.hold_rounds();
    e.leave("b", t0);
    e.rounds_through(1, t0).unwrap();
    assert_eq!(e.status().round, 1, "round 2 waits for the release");
    e.release_rounds(t0);
    assert_eq!((e.status().updates, e.status().round), (2, 2));
}

#[test]
fn a_rollback_abandons_what_the_old_lineage_still_held() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    push(&mut e, 1, &meta("w", 0, 1), 1.0, t0).unwrap();
    assert!(e.commit_due(t0), "an update-count snapshot waits");
    let restored = Params::zeros(&spec(ConsistencyMode::Asp, 0, policy));
    e.install(restored, 2, 3, t0);
    assert!(e.next_pending().is_none(), "the old lineage's snapshot is not written after the new head");
    assert!(!e.commit_due(t0));
    assert_eq!(bias(&e), 0.0);
}

#[test]
fn an_open_bsp_round_is_not_applied_to_installed_content() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    push(&mut e, 1, &meta("a", 1, 1), 1.0, t0).unwrap();
    let restored = Params::zeros(&spec(ConsistencyMode::Bsp, 0, CommitPolicy::default()));
    e.install(restored, 2, 3, t0);
    // b's push of the same clock completes the round: only b's gradient is applied
    push(&mut e, 2, &meta("b", 1, 1), 2.0, t0).unwrap();
    assert_eq!(bias(&e), -2.0 * LR, "a's gradient, computed on the old content, is dropped");
    assert_eq!(e.status().updates, 1, "the round still completes");
}

#[test]
fn a_failed_write_folds_the_snapshots_behind_it_into_the_next_commit() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    let hashed = |e: &mut Engine, key: u64| {
        let (values, key) = (1.0f32.to_le_bytes(), key.to_le_bytes());
        let grads = [Grad { slot: "", tensor: "h", offset: 0, keys: LeKeys(&key), values: &values }];
        let (shape, m) = (e.shape.clone(), meta("w", 0, 1));
        let checked = shape.check(&grads, &m).unwrap();
        e.push(&checked, 1, t0).unwrap();
    };
    hashed(&mut e, 3);
    hashed(&mut e, 9);
    let first = e.next_pending().unwrap();
    e.unwritten(&first);
    assert!(e.next_pending().is_none(), "the second snapshot lacks the first's changes: folded back");
    let snap = e.snapshot(VersionKind::Manual, "retry", t0).expect("both updates wait");
    assert_eq!(snap.since_parent, 2);
    let h = e.params.tensor_index("h").unwrap() as u32;
    assert!(snap.chunks.chunks.iter().any(|e| e.t == h && e.c == 0), "the changed chunk is written");
}

#[test]
fn joins_are_checked_and_the_newest_incarnation_wins() {
    let t0 = Instant::now();
    let mut e = asp();
    e.join("w", 6, t0);
    e.join("w", 5, t0); // a slower join of the same id, with the older incarnation
    let refused = push(&mut e, 1, &meta("w", 5, 1), 1.0, t0).unwrap_err();
    assert!(matches!(refused, ServiceError::StaleIncarnation { current: 6, .. }), "{refused}");
    assert!(e.check_join(&"x".repeat(300)).unwrap_err().to_string().contains("1 to 256 bytes"));
    assert!(e.check_join("").is_err());
    for i in 0..MAX_WORKERS {
        e.join(&format!("w{i}"), 1, t0);
    }
    let full = e.check_join("one-more").unwrap_err().to_string();
    assert!(full.contains("4096 worker ids"), "{full}");
    e.check_join("w7").expect("a known id may join again");
}

#[test]
fn a_push_whose_result_would_not_be_finite_is_refused_and_changes_nothing() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    // lr 0.5: -1.5e38 after one push of 3e38, -3e38 after two, -inf after three.
    for c in 1..=2 {
        push(&mut e, 1, &meta("w", 0, c), 3e38, t0).unwrap();
    }
    while e.next_pending().is_some() {}
    e.params.clear_dirty();
    let (w, status) = (bias(&e), e.status());
    let refused = push(&mut e, 1, &meta("w", 0, 3), 3e38, t0).unwrap_err();
    assert!(matches!(&refused, ServiceError::Update { .. }), "{refused}");
    assert!(refused.to_string().contains("tensor \"b\""), "{refused}");
    assert_eq!((bias(&e), e.status().updates, e.status().since_commit), (w, status.updates, status.since_commit));
    assert_eq!(e.progress()[0].clock, 2, "a refused push records no progress");
    assert_eq!(e.pending_len(), 0, "nor a version");
    assert!((0..e.params.tensors.len()).all(|t| e.params.dirty_chunks(t).next().is_none()));
}

#[test]
fn a_bsp_round_whose_sum_would_not_be_finite_is_dropped_whole() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    // Each gradient is finite; their sum (6e38) is not.
    push(&mut e, 1, &meta("a", 1, 1), 3e38, t0).unwrap();
    let dropped = push(&mut e, 1, &meta("b", 1, 1), 3e38, t0).unwrap_err().to_string();
    assert!(dropped.contains("BSP round 1") && dropped.contains("dropped"), "{dropped}");
    assert_eq!((bias(&e), e.status().updates), (0.0, 0));
    assert!(e.may_pull("a", 1, t0) && e.may_pull("b", 1, t0), "the barrier goes on");
    push(&mut e, 1, &meta("a", 1, 2), 1.0, t0).unwrap();
    push(&mut e, 1, &meta("b", 1, 2), 1.0, t0).unwrap();
    assert_eq!((bias(&e), e.status().updates), (-2.0 * LR, 1));
    // A round completed by a leave is dropped the same way, and handed to the runtime to log.
    e.join("c", 1, t0);
    push(&mut e, 1, &meta("a", 1, 3), 3e38, t0).unwrap();
    push(&mut e, 1, &meta("b", 1, 3), 3e38, t0).unwrap();
    assert!(e.take_dropped().is_empty(), "round 3 waits for c");
    e.leave("c", t0);
    let dropped: Vec<String> = e.take_dropped().iter().map(|d| d.to_string()).collect();
    assert!(dropped.len() == 1 && dropped[0].contains("BSP round 3"), "{dropped:?}");
    assert_eq!((bias(&e), e.status().updates), (-2.0 * LR, 1));
    assert!(e.may_pull("a", 3, t0));
}

#[test]
fn a_push_without_values_records_progress_but_is_no_update() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    let m = PushMeta { shard: "s".into(), offset: 10, ..meta("w", 0, 1) };
    let shape = e.shape.clone();
    let empty = [Grad { slot: "", tensor: "b", offset: 0, keys: LeKeys(&[]), values: &[] }];
    for grads in [&[][..], &empty[..]] {
        let pushed = e.push(&shape.check(grads, &m).unwrap(), 1, t0).unwrap();
        assert!(!pushed.commit_due);
        assert_eq!((pushed.ack.updates, e.status().since_commit), (0, 0));
    }
    assert_eq!((e.pending_len(), e.progress()[0].offset), (0, 10), "progress, but no version");
    // Under BSP a round nobody sent values to is no update either.
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    let shape = e.shape.clone();
    e.push(&shape.check(&[], &meta("a", 1, 1)).unwrap(), 1, t0).unwrap();
    assert_eq!(e.status().updates, 0);
    assert!(e.may_pull("a", 1, t0));
}

#[test]
fn while_versions_cannot_be_written_pushes_past_the_policy_bound_are_refused() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 2, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    for c in 1..=2 {
        push(&mut e, 1, &meta("w", 0, c), 1.0, t0).unwrap();
    }
    let snap = e.next_pending().unwrap();
    // The write failed (a full disk): the snapshot goes back into the live state.
    e.unwritten(&snap);
    e.write_failed(t0, "no space left on device".into());
    let refused = push(&mut e, 1, &meta("w", 0, 3), 1.0, t0).unwrap_err();
    assert!(matches!(refused, ServiceError::Uncommittable { uncommitted: 2, .. }), "{refused}");
    assert!(refused.to_string().contains("no space left on device"), "{refused}");
    assert_eq!((bias(&e), e.status().updates), (-2.0 * LR, 2), "a refused push changes nothing");
    // The policy tries again a second later, with everything not written.
    assert!(!e.commit_due(t0 + secs(0.5)));
    assert!(e.commit_due(t0 + secs(1.0)));
    let retry = e.policy_snapshot(t0 + secs(1.0)).expect("a retry is due");
    assert_eq!((retry.since_parent, retry.updates), (2, 2));
    e.committed(2, t0 + secs(1.0));
    push(&mut e, 1, &meta("w", 0, 3), 1.0, t0 + secs(1.0)).expect("accepted once a version is written");
    // Without a policy there is no bound to keep.
    let mut e = asp();
    e.write_failed(t0, "full".into());
    push(&mut e, 1, &meta("w", 0, 1), 1.0, t0).unwrap();
}

#[test]
fn waiting_snapshots_coalesce_into_one_with_the_newest_content() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let mut e = engine(&spec(ConsistencyMode::Asp, 0, policy), t0);
    let w = |v: f32| {
        let values = [v; 4].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        values
    };
    push(&mut e, 1, &meta("a", 0, 1), 1.0, t0).unwrap();
    let values = w(2.0);
    let grads = [Grad { slot: "", tensor: "w", offset: 0, keys: LeKeys(&[]), values: &values }];
    let m = meta("a", 0, 2);
    let shape = e.shape.clone();
    e.push(&shape.check(&grads, &m).unwrap(), 1, t0).unwrap();
    push(&mut e, 1, &meta("a", 0, 3), 1.0, t0).unwrap();
    assert_eq!(e.pending_len(), 3);
    let newest_b = {
        let mut last = e.pending.back().unwrap().chunks.chunks.clone();
        last.retain(|x| x.t as usize == e.params.tensor_index("b").unwrap());
        let r = last[0].range.clone();
        e.pending.back().unwrap().chunks.data[r].to_vec()
    };
    let one = e.coalesce_pending().unwrap();
    assert_eq!(e.pending_len(), 0);
    assert_eq!((one.updates, one.since_parent, one.workers[0].clock), (3, 3, 3));
    let tensors: Vec<u32> = one.chunks.chunks.iter().map(|x| x.t).collect();
    assert_eq!(tensors.len(), 2, "b and w, once each: {tensors:?}");
    let b = e.params.tensor_index("b").unwrap() as u32;
    let r = one.chunks.chunks.iter().find(|x| x.t == b).unwrap().range.clone();
    assert_eq!(one.chunks.data[r].to_vec(), newest_b, "the newest content of b");
}

#[test]
fn bsp_records_a_workers_offset_when_its_round_is_applied() {
    let t0 = Instant::now();
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    let at = |w: &str, clock: u64, offset: u64| PushMeta { shard: "s".into(), offset, ..meta(w, 1, clock) };
    push(&mut e, 1, &at("a", 1, 100), 1.0, t0).unwrap();
    // A commit now must not hold a's offset: its rows are not in the content yet.
    let snap = e.snapshot(VersionKind::Manual, "commit", t0);
    assert!(snap.is_none_or(|s| s.workers.iter().all(|w| w.offset == 0)), "offset recorded before its round applied");
    assert!(e.progress().iter().all(|w| w.offset == 0));
    push(&mut e, 1, &at("b", 1, 200), 1.0, t0).unwrap();
    let offsets: Vec<(String, u64)> = e.progress().iter().map(|w| (w.worker_id.clone(), w.offset)).collect();
    assert_eq!(offsets, [("a".to_string(), 100), ("b".to_string(), 200)]);
    // A round open at a rollback is dropped with its offsets: those rows are read again.
    push(&mut e, 1, &at("a", 2, 300), 1.0, t0).unwrap();
    e.install(Params::zeros(&spec(ConsistencyMode::Bsp, 0, CommitPolicy::default())), 2, 2, t0);
    push(&mut e, 2, &at("b", 2, 400), 1.0, t0).unwrap();
    let offsets: Vec<u64> = e.progress().iter().map(|w| w.offset).collect();
    assert_eq!(offsets, [100, 400], "a's rows of the dropped round are not counted as applied");
}

#[test]
fn a_part_of_an_update_without_values_here_counts_the_update_and_its_step() {
    // A partition's share of a push whose rows all fell on other partitions: the same
    // update and optimizer step count on every partition as on one server.
    let t0 = Instant::now();
    let mut e = asp();
    let part = PushMeta { update: true, ..meta("w", 0, 1) };
    let shape = e.shape.clone();
    let pushed = e.push(&shape.check(&[], &part).unwrap(), 1, t0).unwrap();
    assert_eq!((pushed.ack.updates, e.params.steps), (1, 1));
    assert_eq!(bias(&e), 0.0, "no value moved");
    assert!(e.params.dirty_chunks(0).next().is_none());
    push(&mut e, 1, &meta("w", 0, 2), 1.0, t0).unwrap();
    assert_eq!((e.status().updates, e.params.steps), (2, 2));
    // Under BSP, a round whose only pushes are such parts is one update too.
    let mut e = bsp(t0);
    e.join("a", 1, t0);
    let shape = e.shape.clone();
    e.push(&shape.check(&[], &PushMeta { update: true, ..meta("a", 1, 1) }).unwrap(), 1, t0).unwrap();
    assert_eq!((e.status().updates, e.params.steps), (1, 1));
}

/// Applies a snapshot's blobs over `base` (a stored version's content), as a reader of
/// the version it becomes does.
fn apply_snapshot(base: &mut Params, snap: &Snapshot) {
    for x in &snap.chunks.chunks {
        let blob = &snap.chunks.data[x.range.clone()];
        let (t, c) = (x.t as usize, x.c as usize);
        match x.delta {
            true => base.apply_delta(t, c, blob).unwrap(),
            false => base.decode_chunk(t, c, blob).unwrap(),
        }
    }
}

#[test]
fn sparse_rows_commit_as_delta_layers_and_waiting_ones_coalesce_to_the_same_content() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 1, ..Default::default() };
    let spec = ModelSpec {
        hash_bits: 16,
        optimizer: OptimizerSpec::new(OptimizerKind::Adagrad, LR),
        commit: policy,
        ..ModelSpec::new("m", ModelKind::Linear)
    };
    let mut e = engine(&spec, t0);
    let base = e.params.clone();
    let rows = |e: &mut Engine, keys: &[u64], seq: u64| {
        let kb: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        let vb: Vec<u8> = keys.iter().flat_map(|k| (*k as f32 * 0.01 + 0.5).to_le_bytes()).collect();
        let grads = [Grad { slot: "", tensor: "h", offset: 0, keys: LeKeys(&kb), values: &vb }];
        let shape = e.shape.clone();
        e.push(&shape.check(&grads, &meta("a", 0, seq)).unwrap(), 1, t0).unwrap();
    };
    rows(&mut e, &[3, 70_00, 20_000], 1);
    rows(&mut e, &[3, 5, 40_000], 2);
    // most of chunk 3: written whole
    rows(&mut e, &(49_152..65_000).collect::<Vec<_>>(), 3);
    rows(&mut e, &[49_152, 9], 4);
    assert_eq!(e.pending_len(), 4);
    let kinds: Vec<Vec<(u32, bool)>> =
        e.pending.iter().map(|s| s.chunks.chunks.iter().map(|x| (x.c, x.delta)).collect()).collect();
    assert_eq!(kinds[0], vec![(0, true), (1, true)], "a few rows: delta layers");
    assert_eq!(kinds[2], vec![(3, false)], "most of a chunk: whole");
    // one at a time, in order, they rebuild the live content
    let mut stepwise = base.clone();
    for s in &e.pending {
        apply_snapshot(&mut stepwise, s);
    }
    assert_eq!(stepwise.content_bits(), e.params.content_bits());
    // coalesced: deltas merged, a delta over a whole chunk folded into it
    let one = e.coalesce_pending().unwrap();
    let forms: Vec<(u32, bool)> = one.chunks.chunks.iter().map(|x| (x.c, x.delta)).collect();
    assert_eq!(forms, vec![(0, true), (1, true), (2, true), (3, false)]);
    let mut merged = base.clone();
    apply_snapshot(&mut merged, &one);
    assert_eq!(merged.content_bits(), e.params.content_bits());
}

#[test]
fn chunks_changed_since_the_head_include_waiting_snapshots_and_a_chunk_install_replaces_them() {
    let t0 = Instant::now();
    let policy = CommitPolicy { every_updates: 2, ..Default::default() };
    let spec = ModelSpec { hash_bits: 16, commit: policy, ..ModelSpec::new("m", ModelKind::Linear) };
    let mut e = engine(&spec, t0);
    let head = e.params.clone();
    let h = e.params.tensor_index("h").unwrap() as u32;
    let row = |e: &mut Engine, k: u64, seq: u64| {
        let (kb, vb) = (k.to_le_bytes(), 1.0f32.to_le_bytes());
        let grads = [Grad { slot: "", tensor: "h", offset: 0, keys: LeKeys(&kb), values: &vb }];
        let shape = e.shape.clone();
        e.push(&shape.check(&grads, &meta("a", 0, seq)).unwrap(), 1, t0).unwrap();
    };
    row(&mut e, 5, 1);
    row(&mut e, 20_000, 2); // the policy's snapshot now holds chunks 0 and 1
    row(&mut e, 40_000, 3); // dirty: chunk 2
    assert_eq!(e.pending_len(), 1);
    let changed: Vec<(u32, u32)> = e.changed_since_head().into_iter().collect();
    assert_eq!(changed, vec![(h, 0), (h, 1), (h, 2)]);
    // installing the head's content of exactly those chunks gives the head's content back
    let mut batch = ChunkBatch::default();
    for (t, c) in &changed {
        batch.push(*t, *c, |out| head.encode_chunk(*t as usize, *c as usize, out));
    }
    let mut short = ChunkBatch::default();
    short.push(h, 0, |out| out.extend_from_slice(&[0u8; 12]));
    assert!(e.install_chunks(&short, 0, 2, 2, t0).is_err(), "a chunk of the wrong size is refused");
    assert_eq!(e.status().epoch, 1, "and nothing changed");
    e.install_chunks(&batch, head.steps, 2, 2, t0).unwrap();
    assert_eq!(e.params.content_bits(), head.content_bits());
    assert!(e.changed_since_head().is_empty());
    assert_eq!((e.pending_len(), e.status().epoch, e.status().head), (0, 2, 2));
}

/// A push of changes (per-row training): per (tensor, slot), rows by key (or the bias).
fn push_changes(
    e: &mut Engine,
    m: &PushMeta,
    changes: &[(&str, &str, &[u64], &[f32])],
    now: Instant,
) -> Result<Pushed> {
    let bytes: Vec<(Vec<u8>, Vec<u8>)> = changes
        .iter()
        .map(|(_, _, k, v)| {
            (k.iter().flat_map(|k| k.to_le_bytes()).collect(), v.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let grads: Vec<Grad<'_>> = changes
        .iter()
        .zip(&bytes)
        .map(|((t, s, _, _), (k, v))| Grad { tensor: t, slot: s, offset: 0, keys: LeKeys(k), values: v })
        .collect();
    let shape = e.shape.clone();
    let m = PushMeta { changes: true, ..m.clone() };
    let checked = shape.check(&grads, &m)?;
    e.push(&checked, 1, now)
}

fn normalized(consistency: ConsistencyMode) -> Engine {
    let s = ModelSpec {
        optimizer: OptimizerSpec::new(OptimizerKind::Normalized, 0.0),
        ..spec(consistency, 0, CommitPolicy::default())
    };
    engine(&s, Instant::now())
}

/// The value of `tensor`'s `slot` ("" = weights) at `i`.
fn at(e: &Engine, tensor: &str, slot: &str, i: usize) -> f32 {
    let t = e.params.tensor_index(tensor).unwrap();
    match slot {
        "" => e.params.tensors[t].w[i],
        s => e.params.tensors[t].slots[e.params.slot_names.iter().position(|n| *n == s).unwrap()][i],
    }
}

#[test]
fn a_bsp_round_of_changes_averages_weights_over_their_writers_and_merges_each_slot_by_its_rule() {
    let t0 = Instant::now();
    let mut e = normalized(ConsistencyMode::Bsp);
    e.join("a", 1, t0);
    e.join("b", 1, t0);
    let a: [(&str, &str, &[u64], &[f32]); 5] = [
        ("h", "", &[3], &[0.5]),
        ("h", "accum", &[3], &[1.0]),
        ("h", "scale", &[3], &[2.0]),
        ("h", "trace", &[3], &[0.25]),
        ("b", "", &[], &[0.2]),
    ];
    let b: [(&str, &str, &[u64], &[f32]); 5] = [
        ("h", "", &[3, 5], &[0.1, -0.4]),
        ("h", "accum", &[3, 5], &[2.0, 1.0]),
        ("h", "scale", &[3, 5], &[1.5, 4.0]),
        ("h", "trace", &[3, 5], &[0.75, 0.1]),
        ("b", "", &[], &[0.4]),
    ];
    push_changes(&mut e, &meta("a", 1, 1), &a, t0).unwrap();
    assert_eq!(at(&e, "h", "", 3), 0.0, "the round waits for b");
    assert_eq!(push_changes(&mut e, &meta("b", 1, 1), &b, t0).unwrap().ack.updates, 1);
    // weights: the mean over the pushes that changed them; a weight one push changed gets it whole
    assert!((at(&e, "h", "", 3) - 0.3).abs() < 1e-6 && at(&e, "h", "", 5) == -0.4);
    assert!((at(&e, "b", "", 0) - 0.3).abs() < 1e-6);
    // sums add, running maxima keep the larger, decaying averages take the last value
    assert_eq!((at(&e, "h", "accum", 3), at(&e, "h", "accum", 5)), (3.0, 1.0));
    assert_eq!((at(&e, "h", "scale", 3), at(&e, "h", "scale", 5)), (2.0, 4.0));
    assert_eq!((at(&e, "h", "trace", 3), at(&e, "h", "trace", 5)), (0.75, 0.1));
}

#[test]
fn asp_changes_add_as_they_arrive_and_a_push_of_gradients_names_no_slot() {
    let t0 = Instant::now();
    let mut e = normalized(ConsistencyMode::Asp);
    let one: [(&str, &str, &[u64], &[f32]); 2] = [("h", "", &[3], &[0.5]), ("h", "scale", &[3], &[2.0])];
    push_changes(&mut e, &meta("a", 0, 1), &one, t0).unwrap();
    push_changes(&mut e, &meta("b", 0, 1), &one, t0).unwrap();
    assert_eq!((at(&e, "h", "", 3), at(&e, "h", "scale", 3)), (1.0, 2.0));
    // a slot the model lacks, or any slot in a push of gradients, is refused by name
    let bad: [(&str, &str, &[u64], &[f32]); 1] = [("h", "velocity", &[3], &[1.0])];
    let err = push_changes(&mut e, &meta("a", 0, 2), &bad, t0).unwrap_err().to_string();
    assert!(err.contains("\"velocity\"") && err.contains("accum, scale"), "{err}");
    let values = 1f32.to_le_bytes();
    let key = 3u64.to_le_bytes();
    let grads = [Grad { slot: "accum", tensor: "h", offset: 0, keys: LeKeys(&key), values: &values }];
    let err = e.shape.check(&grads, &meta("a", 0, 3)).unwrap_err().to_string();
    assert!(err.contains("carries no slots"), "{err}");
    // a negative change of a sum of squares, or a dense slot that is not whole
    let neg: [(&str, &str, &[u64], &[f32]); 1] = [("h", "accum", &[3], &[-1.0])];
    let err = push_changes(&mut e, &meta("a", 0, 4), &neg, t0).unwrap_err().to_string();
    assert!(err.contains("\"accum\" cannot take a negative"), "{err}");
    let neg: [(&str, &str, &[u64], &[f32]); 1] = [("h", "metanorm", &[3], &[-1.0])];
    let err = push_changes(&mut e, &meta("a", 0, 4), &neg, t0).unwrap_err().to_string();
    assert!(err.contains("\"metanorm\" cannot take a negative"), "{err}");
    let part: [(&str, &str, &[u64], &[f32]); 1] = [("w", "trace", &[], &[1.0, 2.0])];
    let err = push_changes(&mut e, &meta("a", 0, 5), &part, t0).unwrap_err().to_string();
    assert!(err.contains("whole dense tensor (4 floats), got 2"), "{err}");
    assert_eq!(at(&e, "h", "accum", 3), 0.0, "nothing refused changed anything");
    assert_eq!(at(&e, "w", "trace", 0), 0.0);
}

#[test]
fn asp_averages_a_weight_change_with_the_pushes_applied_since_its_pull_but_not_the_sums() {
    let t0 = Instant::now();
    let mut e = normalized(ConsistencyMode::Asp);
    let one: [(&str, &str, &[u64], &[f32]); 2] = [("h", "", &[3], &[0.5]), ("h", "accum", &[3], &[1.0])];
    let from = |w: &str, base: u64| PushMeta { base_updates: base, ..meta(w, 0, 1) };
    push_changes(&mut e, &from("a", 0), &one, t0).unwrap(); // update 1
    push_changes(&mut e, &from("a", 1), &one, t0).unwrap(); // update 2: its own push is not concurrent
    assert_eq!((at(&e, "h", "", 3), at(&e, "h", "accum", 3)), (1.0, 2.0));
    push_changes(&mut e, &from("b", 2), &one, t0).unwrap(); // update 3: nothing since its pull
    assert_eq!(at(&e, "h", "", 3), 1.5);
    // a pulled at 2 as b did: b's change came meanwhile, so a's weight change counts half
    push_changes(&mut e, &from("a", 2), &one, t0).unwrap();
    assert_eq!((at(&e, "h", "", 3), at(&e, "h", "accum", 3)), (1.75, 4.0), "the sum of squares adds whole");
    // c pulled at 2: a and b since, a third
    push_changes(&mut e, &from("c", 2), &one, t0).unwrap();
    assert!((at(&e, "h", "", 3) - (1.75 + 0.5 / 3.0)).abs() < 1e-6);
    // a weight nobody else changed since the pull takes its change whole
    let other: [(&str, &str, &[u64], &[f32]); 1] = [("h", "", &[9], &[0.5])];
    push_changes(&mut e, &from("d", 2), &other, t0).unwrap();
    assert_eq!(at(&e, "h", "", 9), 0.5);
    // a rollback or an import forgets them
    e.install(e.params.clone(), 1, 1, t0);
    push_changes(&mut e, &PushMeta { base_updates: 2, ..meta("a", 0, 1) }, &one, t0).unwrap();
    assert!((at(&e, "h", "", 3) - (1.75 + 0.5 / 3.0 + 0.5)).abs() < 1e-6);
}

#[test]
fn a_versions_progressive_tally_is_its_pushes_rows_once_whatever_becomes_of_its_snapshots() {
    let mut e = asp();
    let t0 = Instant::now();
    let mut hist = vec![0u32; 2 * accrete_core::progressive::BINS];
    hist[10] = 3; // three negatives scored low
    hist[256 + 200] = 1; // one positive scored high
    let m = PushMeta { rows: 4, hits: 4, loss_sum: 0.8, hist: hist.clone(), ..meta("w", 0, 1) };
    push(&mut e, 1, &m, 1.0, t0).unwrap();
    push(&mut e, 1, &m, 1.0, t0).unwrap();
    let snap = e.snapshot(VersionKind::Manual, "commit", t0).unwrap();
    let f = snap.tally.figures(true).unwrap();
    assert_eq!((f.rows, f.accuracy, f.auc), (8, Some(1.0), Some(1.0)));
    assert!((f.loss - 0.2).abs() < 1e-12);
    // a write that failed gives the rows back; the next snapshot holds them with the new ones
    e.unwritten(&snap);
    push(&mut e, 1, &m, 1.0, t0).unwrap();
    assert_eq!(e.snapshot(VersionKind::Manual, "commit", t0).unwrap().tally.rows, 12);
    // a rollback drops the rows of the content it replaces
    push(&mut e, 1, &m, 1.0, t0).unwrap();
    e.install(e.params.clone(), 2, 1, t0);
    push(&mut e, 2, &PushMeta { rows: 1, ..meta("w", 0, 2) }, 1.0, t0).unwrap();
    assert_eq!(e.snapshot(VersionKind::Manual, "commit", t0).unwrap().tally.rows, 1);
    // counts that cannot be are refused by name
    let bad = [
        (PushMeta { rows: 2, hits: 3, ..meta("w", 0, 3) }, "hits 3 is more than its rows 2"),
        (
            PushMeta { rows: 5, hist: hist.clone(), ..meta("w", 0, 3) },
            "summing to 4; expected 512 summing to its rows 5",
        ),
        (PushMeta { rows: 1, hist: vec![1], ..meta("w", 0, 3) }, "hist has 1 counts"),
    ];
    for (m, want) in bad {
        let err = push(&mut e, 2, &m, 1.0, t0).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// An `rls` model's push carries statistics only, and after each update the weights are
/// the least-squares fit of them: here, three rows on the line y = 2x + 1.
#[test]
fn an_rls_model_takes_only_statistics_and_its_weights_are_their_fit() {
    let t0 = Instant::now();
    let s = ModelSpec {
        features: 1,
        optimizer: OptimizerSpec::new(OptimizerKind::Rls, 0.0),
        ..ModelSpec::new("m", ModelKind::Linear)
    };
    let mut e = engine(&s, t0);
    let (x, y) = ([1f32, 2.0, 4.0], [3f32, 5.0, 9.0]);
    let mut norm = Vec::new();
    accrete_core::glm::batch_stats(&x, 1, &mut norm);
    let mut cov = vec![0f32; 8];
    accrete_core::lsq::add_rows(&mut cov, &x, &y, 1);
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (nb, cb) = (bytes(&norm), bytes(&cov));
    let stats = [
        Grad { slot: "", tensor: "norm", offset: 0, keys: LeKeys(&[]), values: &nb },
        Grad { slot: "", tensor: "cov", offset: 0, keys: LeKeys(&[]), values: &cb },
    ];
    let m = PushMeta { changes: true, ..meta("a", 0, 1) };
    let shape = e.shape.clone();
    e.push(&shape.check(&stats, &m).unwrap(), 0, t0).unwrap();
    // standardised x: mean 7/3, sd √(14/9); w = 2·sd, b = 2·mean + 1 (the prior, a
    // thousandth of a row against three, moves them by about 2e-3)
    let sd = (14f32 / 9.0).sqrt();
    assert!((at(&e, "w", "", 0) - 2.0 * sd).abs() < 1e-2, "{}", at(&e, "w", "", 0));
    assert!((bias(&e) - (2.0 * 7.0 / 3.0 + 1.0)).abs() < 1e-2, "{}", bias(&e));
    // weights or gradients are refused by name, and change nothing
    let one = 1f32.to_le_bytes();
    let w = [Grad { slot: "", tensor: "w", offset: 0, keys: LeKeys(&[]), values: &one }];
    let err = shape.check(&w, &meta("a", 0, 2)).unwrap_err().to_string();
    assert!(err.contains("tensor \"w\"") && err.contains("least-squares fit of its statistics"), "{err}");
    // a count that would be negative is refused before the engine sees it
    let mut neg = cov.clone();
    neg[0] = -1.0;
    let negb = bytes(&neg);
    let bad = [Grad { slot: "", tensor: "cov", offset: 0, keys: LeKeys(&[]), values: &negb }];
    let err = shape.check(&bad, &m).unwrap_err().to_string();
    assert!(err.contains("value 0") && err.contains("must not be negative"), "{err}");
    assert!((bias(&e) - (2.0 * 7.0 / 3.0 + 1.0)).abs() < 1e-2, "nothing refused changed anything");
    assert_eq!(e.updates, 1);
}
