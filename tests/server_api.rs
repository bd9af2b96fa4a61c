//! The parameter server through its real gRPC API: optimizers, concurrency, versions,
//! rollback, import/export, retention, watch, health/reflection, and refusals that change
//! nothing. Real sled in temp dirs, real sockets on ephemeral ports.
mod common;

use accrete_client::safetensors;
use accrete_proto::v1 as pb;
use common::*;
use tonic::Code;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[tokio::test]
async fn each_optimizer_matches_values_computed_by_hand() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let g1 = [1.0f32, 2.0, -1.0, 0.5];
    let g2 = [0.5f32, -1.0, 1.0, 2.0];
    // Hand-written update rules in f64, two steps from w = 0.
    type Rule = fn(f64, f64) -> f64;
    let cases: Vec<(pb::OptimizerKind, f32, Rule)> = vec![
        (pb::OptimizerKind::Sgd, 0.1, |a, b| -0.1 * a - 0.1 * b),
        // momentum 0.9: v1 = a, w1 = -0.1a; v2 = 0.9a + b, w2 = w1 - 0.1 v2
        (pb::OptimizerKind::Momentum, 0.1, |a, b| -0.1 * a - 0.1 * (0.9 * a + b)),
        // adagrad eps 1e-6: s1 = a², w1 = -0.1 a/(|a|+eps); s2 = a²+b², w2 = w1 - 0.1 b/(sqrt(s2)+eps)
        (pb::OptimizerKind::Adagrad, 0.1, |a, b| {
            -0.1 * a / (a.abs() + 1e-6) - 0.1 * b / ((a * a + b * b).sqrt() + 1e-6)
        }),
        (pb::OptimizerKind::Adam, 0.1, |a, b| {
            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
            let (m1, v1) = ((1.0 - b1) * a, (1.0 - b2) * a * a);
            let w1 = -0.1 * (m1 / (1.0 - b1)) / ((v1 / (1.0 - b2)).sqrt() + eps);
            let (m2, v2) = (b1 * m1 + (1.0 - b1) * b, b2 * v1 + (1.0 - b2) * b * b);
            w1 - 0.1 * (m2 / (1.0 - b1 * b1)) / ((v2 / (1.0 - b2 * b2)).sqrt() + eps)
        }),
        // FTRL alpha 0.1, beta 1, l1 = l2 = 0: w = -z / ((1 + sqrt(n)) / 0.1)
        (pb::OptimizerKind::Ftrl, 0.1, |a, b| {
            let (n1, z1) = (a * a, a);
            let w1 = -z1 / ((1.0 + n1.sqrt()) / 0.1);
            let n2 = n1 + b * b;
            let z2 = z1 + b - ((n2.sqrt() - n1.sqrt()) / 0.1) * w1;
            -z2 / ((1.0 + n2.sqrt()) / 0.1)
        }),
    ];
    for (kind, lr, rule) in cases {
        let name = format!("opt-{}", kind.as_str_name().to_lowercase());
        create(&mut c, linear(&name, 4, kind, lr)).await;
        for g in [&g1, &g2] {
            c.params.push(push_req(&name, 0, vec![dense("w", 0, g)])).await.unwrap();
        }
        let w = tensor(&mut c, &name, "w").await;
        for i in 0..4 {
            let want = rule(g1[i] as f64, g2[i] as f64);
            assert!((w[i] as f64 - want).abs() < 1e-5, "{name}: w[{i}] = {}, by hand {want}", w[i]);
        }
    }
}

#[tokio::test]
async fn sixteen_concurrent_clients_lose_no_update() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut spec = linear("sum", 8, pb::OptimizerKind::Sgd, 1.0);
    spec.hash_bits = 10;
    create(&mut c, spec).await;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let mut c = s.client().await;
        tasks.push(tokio::spawn(async move {
            // SGD lr 1: w -= g, so pushing -(i+1) adds i+1
            let g = -((i + 1) as f32);
            for _ in 0..100 {
                let grads = vec![dense("w", 0, &[g; 8]), rows("h", &[i, 1000], &[g, g])];
                c.params.push(push_req("sum", 0, grads)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 100.0 * (1..=16).sum::<i32>() as f32; // 13600, exact in f32
    assert_eq!(tensor(&mut c, "sum", "w").await, vec![total; 8]);
    let h = tensor(&mut c, "sum", "h").await;
    assert_eq!(h[1000], total);
    for i in 0..16 {
        assert_eq!(h[i], 100.0 * (i + 1) as f32);
    }
    let info = c.models.get_model_info(pb::ModelRef { name: "sum".into() }).await.unwrap().into_inner();
    assert_eq!(info.updates, 1600);
}

#[tokio::test]
async fn rollback_restores_content_bitwise_and_refuses_stale_lineage() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut spec = linear("r", 5, pb::OptimizerKind::Adam, 0.05);
    spec.init = Some(pb::InitSpec { seed: 11, scale: 0.1 });
    create(&mut c, spec).await;
    let (r0, _) = pull_all(&mut c, "r", None).await;
    c.params.push(push_req("r", r0.lineage_epoch, vec![dense("w", 0, &[1.0, 2.0, 3.0, 4.0, 5.0])])).await.unwrap();
    let v2 = commit(&mut c, "r").await;
    let at_v2 = pull_all(&mut c, "r", None).await.1;
    c.params.push(push_req("r", r0.lineage_epoch, vec![dense("w", 0, &[-3.0; 5])])).await.unwrap();
    let v3 = commit(&mut c, "r").await;
    assert_ne!(bits(&tensor(&mut c, "r", "w").await), bits(&at_v2[0].1));

    let rb = c
        .models
        .rollback(pb::RollbackRequest {
            model: "r".into(),
            to_version: v2.version,
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rb.parent, rb.content_of), (Some(v3.version), v2.version));
    assert!(rb.reason.contains("rollback to 2"), "{}", rb.reason);
    assert_eq!(rb.chunks_written, 0, "a rollback writes a manifest, not parameters");
    let (live, tensors) = pull_all(&mut c, "r", None).await;
    assert_eq!(live.lineage_epoch, r0.lineage_epoch + 1);
    for ((_, a), (_, b)) in tensors.iter().zip(&at_v2) {
        assert_eq!(bits(a), bits(b));
    }
    // The exported head is v2's content, bitwise, with the optimizer state.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("head.st"), dir.path().join("v2.st"));
    safetensors::export(&mut c.typed, "r", None, true, &a).await.unwrap();
    safetensors::export(&mut c.typed, "r", Some(v2.version), true, &b).await.unwrap();
    let (ha, hb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let data = |h: &[u8]| h[8 + u64::from_le_bytes(h[..8].try_into().unwrap()) as usize..].to_vec();
    assert_eq!(data(&ha), data(&hb));

    let stale = c.params.push(push_req("r", r0.lineage_epoch, vec![dense("w", 0, &[1.0; 5])])).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(stale.message().contains(&format!("current epoch is {}", live.lineage_epoch)), "{}", stale.message());
    assert_eq!(bits(&tensor(&mut c, "r", "w").await), bits(&at_v2[0].1), "a refused push changed the model");
    c.params.push(push_req("r", live.lineage_epoch, vec![dense("w", 0, &[1.0; 5])])).await.unwrap();

    let vs = versions(&mut c, "r").await;
    assert_eq!(vs.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(vs.iter().map(|v| v.parent).collect::<Vec<_>>(), vec![None, Some(1), Some(2), Some(3)]);
}

#[tokio::test]
async fn import_makes_a_new_version_from_an_export() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut a = linear("a", 3, pb::OptimizerKind::Sgd, 0.1);
    a.hash_bits = 4;
    a.init = Some(pb::InitSpec { seed: 1, scale: 1.0 });
    let mut b = a.clone();
    b.name = "b".into();
    b.init = Some(pb::InitSpec { seed: 2, scale: 1.0 });
    create(&mut c, a).await;
    create(&mut c, b).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.safetensors");
    safetensors::export(&mut c.typed, "a", None, false, &f).await.unwrap();
    let (entries, _, meta) = safetensors::read_header(&f).unwrap();
    assert_eq!(entries.iter().map(|e| e.name()).collect::<Vec<_>>(), vec!["w", "h", "b", "norm"]);
    assert_eq!(meta["accrete.model"], "a");
    let before = pull_all(&mut c, "b", None).await.0;
    let v = safetensors::import(&mut c.typed, "b", &f).await.unwrap();
    assert_eq!((v.version, v.parent, v.lineage_epoch), (2, Some(1), before.lineage_epoch + 1));
    assert!(v.reason.starts_with("import"));
    let (ta, tb) = (pull_all(&mut c, "a", None).await.1, pull_all(&mut c, "b", None).await.1);
    assert_eq!(ta, tb);
    // An import whose shapes do not fit is refused and changes nothing.
    let mut small = linear("small", 2, pb::OptimizerKind::Sgd, 0.1);
    small.hash_bits = 4;
    create(&mut c, small).await;
    let e = safetensors::import(&mut c.typed, "small", &f).await.unwrap_err();
    assert!(e.to_string().contains("tensor \"w\" is 3x1, model \"small\" has it 2x1"), "{e}");
    assert_eq!(versions(&mut c, "small").await.len(), 1);
    // A transposed matrix has the right number of floats but not the model's shape.
    let mut soft = linear("soft", 3, pb::OptimizerKind::Sgd, 0.1);
    (soft.kind, soft.classes) = (pb::ModelKind::Softmax as i32, 2);
    create(&mut c, soft).await;
    let g = dir.path().join("soft.safetensors");
    safetensors::export(&mut c.typed, "soft", None, false, &g).await.unwrap();
    let bytes = std::fs::read(&g).unwrap();
    let at = bytes.windows(13).position(|w| w == b"\"shape\":[3,2]").expect("w's shape in the header");
    let mut flipped = bytes.clone();
    flipped[at..at + 13].copy_from_slice(b"\"shape\":[2,3]");
    std::fs::write(&g, flipped).unwrap();
    let e = safetensors::import(&mut c.typed, "soft", &g).await.unwrap_err().to_string();
    assert!(e.contains("tensor \"w\" is 2x3, model \"soft\" has it 3x2"), "{e}");
    assert_eq!(versions(&mut c, "soft").await.len(), 1);
    // AdaGrad's sums of squares, and the statistics' counts, cannot be negative.
    create(&mut c, linear("g", 2, pb::OptimizerKind::Adagrad, 0.1)).await;
    use pb::import_message::Item;
    let header = pb::ImportMessage {
        item: Some(Item::Header(pb::ImportHeader { model: "g".into(), source: "t".into(), ..Default::default() })),
    };
    let chunk = |tensor: &str, slot: &str, v: &[f32]| pb::ImportMessage {
        item: Some(Item::Chunk(pb::TensorChunk { slot: slot.into(), ..dense(tensor, 0, v) })),
    };
    let cases = [
        (chunk("w", "accum", &[1.0, -1.0]), "slot \"accum\": value -1 at 1 is negative"),
        (chunk("norm", "", &[1.0, -2.0, 0.0, 0.0, 0.0, 0.0]), "statistics count or M2: value -2 at 1 is negative"),
        // what the client sends when it cannot read the rest of its file
        (pb::ImportMessage { item: None }, "only TensorChunk messages may follow"),
    ];
    for (bad, needle) in cases {
        let msgs = vec![header.clone(), chunk("w", "", &[1.0, 2.0]), bad];
        let e = c.models.import(tokio_stream::iter(msgs)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    }
    assert_eq!(versions(&mut c, "g").await.len(), 1);
}

#[tokio::test]
async fn export_messages_fit_the_server_limit_and_a_stock_client() {
    use pb::models_client::ModelsClient;
    // A stock client (4 MiB receive limit) against the default 64 MiB server limit, and a
    // client at the limit of a server with a 64 KiB limit.
    let tmp = tempfile::tempdir().unwrap();
    let small = TestServer::start_in(tmp.path().join("small"), 64 << 10).await;
    let default = TestServer::start().await;
    for (s, receive) in [(&default, 4 << 20), (&small, 64 << 10)] {
        let mut c = s.client().await;
        let mut spec = linear("big", 4, pb::OptimizerKind::Adagrad, 0.1);
        spec.hash_bits = 21; // 8 MiB of weights, 8 MiB of sums of squares
        create(&mut c, spec).await;
        let mut stock = ModelsClient::connect(s.url.clone()).await.unwrap().max_decoding_message_size(receive);
        let req = pb::ExportRequest { model: "big".into(), version: None, optimizer_state: true };
        let mut stream = stock.export(req).await.unwrap().into_inner();
        let (mut messages, mut floats) = (0, 0);
        while let Some(m) = stream.message().await.unwrap_or_else(|e| panic!("limit {receive}: {e}")) {
            if let Some(pb::export_message::Item::Chunk(c)) = m.item {
                floats += c.values.len() / 4;
            }
            messages += 1;
        }
        assert_eq!(floats, 2 * ((1 << 21) + 4 + 1 + 12), "limit {receive}: every weight and slot");
        assert!(messages > 4, "{messages}");
    }
}

#[tokio::test]
async fn commit_policy_and_retention_keep_tagged_versions() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut spec = linear("p", 4, pb::OptimizerKind::Sgd, 0.1);
    spec.commit = Some(pb::CommitPolicy { every_updates: 5, every_secs: 0.0, keep_last: 3 });
    create(&mut c, spec).await;
    c.models.tag(pb::TagRequest { model: "p".into(), version: 1, label: "initial".into() }).await.unwrap();
    for _ in 0..40 {
        c.params.push(push_req("p", 0, vec![dense("w", 0, &[1.0; 4])])).await.unwrap();
        // let the background policy commit land before more updates arrive
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let info = |c: &mut common::Conn| {
        let mut c = c.clone();
        async move { c.models.get_model_info(pb::ModelRef { name: "p".into() }).await.unwrap().into_inner() }
    };
    // Wait for the last policy commit and its retention pass: a version is listed from the
    // moment it is written, and the versions it displaces until retention has run.
    for _ in 0..100 {
        let (vs, pending) = (versions(&mut c, "p").await, info(&mut c).await.uncommitted_updates);
        if pending < 5 && vs.len() <= 4 && vs.last().unwrap().updates + pending == 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let vs = versions(&mut c, "p").await;
    let nums: Vec<u64> = vs.iter().map(|v| v.version).collect();
    assert_eq!(nums[0], 1, "the tagged version is kept: {nums:?}");
    assert_eq!(nums.len(), 4, "tagged + the last 3: {nums:?}");
    assert!(vs.iter().skip(1).all(|v| v.reason == "policy" && v.updates_since_parent >= 5), "{vs:?}");
    assert_eq!(vs.last().unwrap().updates + info(&mut c).await.uncommitted_updates, 40);
    let gone =
        c.params.pull(pb::PullRequest { model: "p".into(), version: Some(2), ..Default::default() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("no version 2"), "{}", gone.message());
    // The tagged version still loads.
    let v1 = pull_all(&mut c, "p", Some(1)).await.1;
    assert_eq!(v1[0].1, vec![0.0; 4]);
    // Pushes without values are no updates: they make no policy version, so they cannot
    // push real versions out through keep_last.
    let before = (versions(&mut c, "p").await, info(&mut c).await.updates);
    for grads in [vec![], vec![dense("w", 0, &[])]] {
        for _ in 0..5 {
            let ack = c.params.push(push_req("p", 0, grads.clone())).await.unwrap().into_inner();
            assert_eq!(ack.updates, before.1);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!((versions(&mut c, "p").await, info(&mut c).await.updates), before, "empty pushes changed the model");
    // The time policy commits too.
    let mut spec = linear("t", 4, pb::OptimizerKind::Sgd, 0.1);
    spec.commit = Some(pb::CommitPolicy { every_updates: 0, every_secs: 0.2, keep_last: 0 });
    create(&mut c, spec).await;
    c.params.push(push_req("t", 0, vec![dense("w", 0, &[1.0; 4])])).await.unwrap();
    for _ in 0..100 {
        if versions(&mut c, "t").await.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(versions(&mut c, "t").await.len(), 2);
}

#[tokio::test]
async fn retention_frees_disk_space() {
    // Two models of 2^20 floats each get 30 commits that each rewrite everything; one keeps
    // the last 2 versions. Measured on the reopened data dir.
    let tmp = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for keep_last in [0u32, 2] {
        let dir = tmp.path().join(format!("keep{keep_last}"));
        let s = TestServer::start_in(dir.clone(), 64 << 20).await;
        let mut c = s.client().await;
        let mut spec = linear("big", 1 << 20, pb::OptimizerKind::Sgd, 0.1);
        spec.commit = Some(pb::CommitPolicy { keep_last, ..Default::default() });
        create(&mut c, spec).await;
        for i in 0..30 {
            c.params.push(push_req("big", 0, vec![dense("w", 0, &vec![i as f32 + 1.0; 1 << 20])])).await.unwrap();
            commit(&mut c, "big").await;
        }
        assert_eq!(versions(&mut c, "big").await.len(), if keep_last == 0 { 31 } else { 2 });
        s.stop().await;
        let s = TestServer::start_in(dir.clone(), 64 << 20).await;
        s.stop().await;
        sizes.push(dir_size(&dir));
    }
    // Chunks are in pack files, deleted once no version needs them; sled (records and
    // manifests) reclaims lazily, so the bound leaves it room: keeping 2 of 31 versions
    // holds ~1/15 of the chunks.
    assert!(
        sizes[1] * 5 < sizes[0],
        "disk use with --keep-last 2: {} bytes, keeping all: {} bytes",
        sizes[1],
        sizes[0]
    );
}

#[tokio::test]
async fn deleting_a_model_gives_its_disk_back_and_keeps_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = TestServer::start_in(dir.clone(), 64 << 20).await;
    let mut c = s.client().await;
    let mut keep = linear("keep", 4, pb::OptimizerKind::Adam, 0.1);
    keep.hash_bits = 10;
    create(&mut c, keep).await;
    c.params.push(push_req("keep", 0, vec![dense("w", 0, &[1.0, 2.0, 3.0, 4.0])])).await.unwrap();
    commit(&mut c, "keep").await;
    let (versions_before, params_before) = (versions(&mut c, "keep").await, pull_all(&mut c, "keep", Some(2)).await.1);
    create(&mut c, linear("big", 1 << 22, pb::OptimizerKind::Sgd, 0.1)).await;
    for i in 0..4 {
        c.params.push(push_req("big", 0, vec![dense("w", 0, &vec![i as f32 + 1.0; 1 << 22])])).await.unwrap();
        commit(&mut c, "big").await;
    }
    let grown = du(&dir);
    assert!(grown > 64 << 20, "{grown}");
    c.models.delete_model(pb::ModelRef { name: "big".into() }).await.unwrap();
    let deleted = du(&dir);
    assert!(deleted * 4 < grown, "{deleted} bytes on disk after the delete, {grown} before");
    // The other model is whole, and the store goes on writing.
    assert_eq!(versions(&mut c, "keep").await, versions_before);
    assert_eq!(pull_all(&mut c, "keep", Some(2)).await.1, params_before);
    c.params.push(push_req("keep", 0, vec![dense("w", 0, &[1.0; 4])])).await.unwrap();
    commit(&mut c, "keep").await;
    create(&mut c, linear("new", 4, pb::OptimizerKind::Sgd, 0.1)).await;
    s.stop().await;
    let s = TestServer::start_in(dir.clone(), 64 << 20).await;
    let mut c = s.client().await;
    assert_eq!(versions(&mut c, "keep").await.len(), 3);
    assert_eq!(pull_all(&mut c, "keep", Some(2)).await.1, params_before);
    assert_eq!(versions(&mut c, "new").await.len(), 1);
}

/// Bytes the files under `p` take on disk (allocated blocks, as `du` counts them).
fn du(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| if e.path().is_dir() { du(&e.path()) } else { e.metadata().unwrap().blocks() * 512 })
        .sum()
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { dir_size(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

#[tokio::test]
async fn refused_requests_name_the_problem_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(tmp.path().join("d"), 64 << 10).await;
    let mut c = s.client().await;
    let mut spec = linear("m", 4, pb::OptimizerKind::Adagrad, 0.1);
    spec.hash_bits = 8;
    spec.init = Some(pb::InitSpec { seed: 5, scale: 0.5 });
    create(&mut c, spec.clone()).await;
    let before = pull_all(&mut c, "m", None).await;

    let dup = c
        .models
        .create_model(pb::CreateModelRequest { spec: Some(spec.clone()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains("\"m\""));

    let mut bad = spec.clone();
    // initial weights that cannot be finite: refused by name, nothing is created
    let mut huge = linear("huge", 4, pb::OptimizerKind::Sgd, 0.1);
    huge.init = Some(pb::InitSpec { seed: 5, scale: 3e38 });
    let e = c.models.create_model(pb::CreateModelRequest { spec: Some(huge), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("init.scale") && e.message().contains("at most 1e6"), "{}", e.message());
    let e = c.models.get_model_info(pb::ModelRef { name: "huge".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "a refused create stores nothing");
    bad.name = "bad".into();
    bad.optimizer.as_mut().unwrap().lr = -1.0;
    let e = c.models.create_model(pb::CreateModelRequest { spec: Some(bad), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("optimizer.lr"), "{}", e.message());

    // a name too long to echo whole in a status header still gets its status
    let huge = "n".repeat(200_000);
    let e = c.models.get_model_info(pb::ModelRef { name: huge }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", &e.message()[..e.message().len().min(100)]);
    assert!(e.message().contains("more bytes"), "{}", e.message().len());

    let cases: Vec<(pb::PushRequest, Code, &str)> = vec![
        (push_req("nope", 0, vec![dense("w", 0, &[1.0])]), Code::NotFound, "\"nope\""),
        (push_req("m", 0, vec![dense("w", 2, &[1.0; 4])]), Code::InvalidArgument, "outside its 4 floats"),
        (push_req("m", 0, vec![dense("zz", 0, &[1.0])]), Code::InvalidArgument, "\"zz\""),
        (push_req("m", 0, vec![rows("h", &[256], &[1.0])]), Code::InvalidArgument, "key 256 is out of range"),
        (push_req("m", 0, vec![rows("h", &[1, 2], &[1.0])]), Code::InvalidArgument, "2 keys"),
        // a valid first gradient and a NaN in the second: neither is applied
        (push_req("m", 0, vec![dense("w", 0, &[1.0; 4]), dense("b", 0, &[f32::NAN])]), Code::InvalidArgument, "NaN"),
        (push_req("m", 0, vec![dense("w", 0, &[f32::INFINITY])]), Code::InvalidArgument, "NaN or infinite"),
        (push_req("m", 99, vec![dense("w", 0, &[1.0])]), Code::Aborted, "epoch"),
        (push_req("m", 0, vec![dense("w", 0, &vec![1.0; 20_000])]), Code::ResourceExhausted, "limit of 65536 bytes"),
        // past 4x the limit the transport refuses it before any handler: the same code
        (push_req("m", 0, vec![dense("w", 0, &vec![1.0; 80_000])]), Code::ResourceExhausted, "limit of 65536 bytes"),
        // keys of an older client (varints) are never read as a dense update
        (
            push_req("m", 0, vec![pb::TensorChunk { varint_keys: vec![1], ..rows("h", &[], &[1.0]) }]),
            Code::InvalidArgument,
            "little-endian u64",
        ),
        (
            push_req("m", 0, vec![pb::TensorChunk { keys: vec![1, 0, 0].into(), ..rows("h", &[], &[1.0]) }]),
            Code::InvalidArgument,
            "not a multiple of 8",
        ),
    ];
    for (req, code, needle) in cases {
        let e = c.params.push(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(needle), "{:?} does not mention {needle:?}", e.message());
    }
    // the same through a push stream and an import
    let huge = push_req("m", 0, vec![dense("w", 0, &vec![1.0; 80_000])]);
    let mut acks = c.params.push_stream(tokio_stream::iter(vec![huge])).await.unwrap().into_inner();
    let e = acks.message().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("a message is") && e.message().contains("limit of 65536 bytes"), "{}", e.message());
    use pb::import_message::Item;
    let header = pb::ImportMessage {
        item: Some(Item::Header(pb::ImportHeader { model: "m".into(), source: "t".into(), ..Default::default() })),
    };
    let chunk = pb::ImportMessage { item: Some(Item::Chunk(dense("w", 0, &vec![1.0; 80_000]))) };
    let e = c.models.import(tokio_stream::iter(vec![header, chunk])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    // statistics are pushed whole; a loss that the version records could not store
    let mut nan_loss = push_req("m", 0, vec![dense("w", 0, &[1.0; 4])]);
    nan_loss.meta = Some(pb::PushMeta { worker_id: "w1".into(), loss_sum: f64::NAN, ..Default::default() });
    let more: Vec<(pb::PushRequest, &str)> = vec![
        (push_req("m", 0, vec![rows("norm", &[0], &[1.0; 4])]), "pushed whole"),
        (nan_loss, "loss_sum NaN is not a finite, non-negative number"),
    ];
    for (req, needle) in more {
        let e = c.params.push(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{:?} does not mention {needle:?}", e.message());
    }
    // a spec whose size overflows 64 bits is refused by name
    let mut huge = spec.clone();
    (huge.name, huge.kind, huge.features, huge.hidden, huge.classes) =
        ("huge".into(), pb::ModelKind::Mlp as i32, u32::MAX, u32::MAX - 46_342, 46_341);
    let e = c.models.create_model(pb::CreateModelRequest { spec: Some(huge), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("layout"), "{}", e.message());
    // predicting 2^32 - 1 empty rows would need 16 GiB of answers: refused before allocating
    let rows_req = pb::FeatureRows { rows: u32::MAX, features: 4, ..Default::default() };
    let e = c
        .params
        .predict(pb::PredictRequest { model: "m".into(), rows: Some(rows_req), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("4294967295 rows"), "{}", e.message());

    for (name, value, needle) in [("auc\"} 1\nx{", 0.5, "letters, digits"), ("auc", f64::NAN, "finite")] {
        let req = pb::ReportMetricsRequest {
            model: "m".into(),
            version: 1,
            metrics: [(name.to_string(), value)].into(),
            replace: false,
        };
        let e = c.models.report_metrics(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    }

    let mut bytes = dense("w", 0, &[1.0]);
    bytes.values = bytes::Bytes::from_static(&[0, 0, 0]);
    let e = c.params.push(push_req("m", 0, vec![bytes])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = c
        .models
        .rollback(pb::RollbackRequest {
            model: "m".into(),
            to_version: 999_999,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("999999"), "{}", e.message());
    let e =
        c.params.pull(pb::PullRequest { model: "m".into(), version: Some(7), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.params.pull(pb::PullRequest { model: "m".into(), ema: true, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.models.tag(pb::TagRequest { model: "m".into(), version: 3, label: "x".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let after = pull_all(&mut c, "m", None).await;
    assert_eq!(after.0.updates, before.0.updates);
    assert_eq!(after.1, before.1, "a refused request changed the parameters");
    assert_eq!(versions(&mut c, "m").await.len(), 1);
}

#[tokio::test]
async fn a_push_whose_result_would_not_be_finite_is_refused_whole_and_exports_import_back() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    // Finite gradients, one step each finite, two together past f32's range.
    let big = 3e38f32;
    for (kind, slot) in [
        (pb::OptimizerKind::Sgd, None),
        (pb::OptimizerKind::Momentum, None),
        (pb::OptimizerKind::Adagrad, Some("accum")),
        (pb::OptimizerKind::Adam, Some("v")),
    ] {
        let name = format!("f-{}", kind.as_str_name().to_lowercase());
        let mut spec = linear(&name, 4, kind, 1.0);
        spec.hash_bits = 4;
        create(&mut c, spec.clone()).await;
        // Adam's and AdaGrad's slots overflow on g² at once; SGD's and momentum's weight on the second.
        let first = c.params.push(push_req(&name, 0, vec![dense("w", 0, &[0.5, big, 0.0, 0.0])])).await;
        if slot.is_none() {
            first.expect("one step of 3e38 is finite");
        }
        let before = pull_all(&mut c, &name, None).await;
        // A valid first gradient, then one that diverges: neither is applied.
        let grads = vec![rows("h", &[3], &[1.0]), dense("w", 0, &[0.5, big, 0.0, 0.0])];
        let e = c.params.push(push_req(&name, 0, grads)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {}", e.message());
        let m = e.message();
        assert!(m.contains("tensor \"w\"") && m.contains("index 1") && m.contains("nothing changed"), "{name}: {m}");
        if let Some(slot) = slot {
            assert!(m.contains(&format!("slot \"{slot}\"")), "{name}: {m}");
        }
        let after = pull_all(&mut c, &name, None).await;
        assert_eq!(after.0.updates, before.0.updates, "{name}");
        assert_eq!(after.1, before.1, "{name}: a refused push changed the parameters");
        // What is stored is finite, so its export imports back.
        commit(&mut c, &name).await;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.safetensors");
        safetensors::export(&mut c.typed, &name, None, true, &f).await.unwrap();
        safetensors::import(&mut c.typed, &name, &f).await.expect("an export imports back");
    }
    // Hyper-parameters that cannot give finite weights are refused by name.
    let e = c
        .models
        .create_model(pb::CreateModelRequest {
            spec: Some(linear("lr", 4, pb::OptimizerKind::Sgd, 1e38)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("optimizer.lr") && e.message().contains("at most 1e6"), "{}", e.message());
}

#[tokio::test]
async fn a_push_computed_against_a_deleted_model_is_refused_by_the_one_created_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = TestServer::start_in(dir.clone(), 64 << 20).await;
    let mut c = s.client().await;
    let spec = linear("m", 2, pb::OptimizerKind::Sgd, 0.1);
    create(&mut c, spec.clone()).await;
    let rb = pb::RollbackRequest { model: "m".into(), to_version: 1, reason: "t".into(), ..Default::default() };
    c.models.rollback(rb).await.unwrap();
    let old_epoch = pull_all(&mut c, "m", None).await.0.lineage_epoch;
    assert_eq!(old_epoch, 2);
    c.models.delete_model(pb::ModelRef { name: "m".into() }).await.unwrap();
    create(&mut c, spec.clone()).await;
    let new_epoch = pull_all(&mut c, "m", None).await.0.lineage_epoch;
    assert_eq!(new_epoch, 3, "a model created again starts past the deleted one's epochs");
    for stale in [1, old_epoch] {
        let e = c.params.push(push_req("m", stale, vec![dense("w", 0, &[1.0, 1.0])])).await.unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{}", e.message());
        assert!(e.message().contains("earlier model of this name"), "{}", e.message());
        assert_eq!(e.metadata().get("accrete-lineage-epoch").unwrap(), &new_epoch.to_string());
    }
    assert_eq!(tensor(&mut c, "m", "w").await, vec![0.0, 0.0], "a stale push changed the new model");
    c.params.push(push_req("m", new_epoch, vec![dense("w", 0, &[1.0, 1.0])])).await.unwrap();
    // The floor survives a restart.
    c.models.delete_model(pb::ModelRef { name: "m".into() }).await.unwrap();
    s.stop().await;
    let s = TestServer::start_in(dir, 64 << 20).await;
    let mut c = s.client().await;
    create(&mut c, spec).await;
    assert_eq!(pull_all(&mut c, "m", None).await.0.lineage_epoch, 4);
}

#[tokio::test]
async fn watch_streams_version_events_with_catch_up() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    create(&mut c, linear("w", 2, pb::OptimizerKind::Sgd, 0.1)).await;
    c.params.push(push_req("w", 0, vec![dense("w", 0, &[1.0, 1.0])])).await.unwrap();
    commit(&mut c, "w").await;
    let req = pb::WatchRequest { model: "w".into(), after_version: Some(0) };
    let mut stream = c.models.watch_versions(req).await.unwrap().into_inner();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(stream.message().await.unwrap().unwrap().version.unwrap().version);
    }
    assert_eq!(seen, vec![1, 2], "catch-up replays the retained versions");
    c.params.push(push_req("w", 0, vec![dense("w", 0, &[1.0, 1.0])])).await.unwrap();
    commit(&mut c, "w").await;
    c.models
        .rollback(pb::RollbackRequest { model: "w".into(), to_version: 1, reason: String::new(), ..Default::default() })
        .await
        .unwrap();
    c.models.tag(pb::TagRequest { model: "w".into(), version: 4, label: "good".into() }).await.unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let ev = stream.message().await.unwrap().unwrap();
        kinds.push((pb::VersionEventKind::try_from(ev.kind).unwrap(), ev.version.unwrap().version));
    }
    use pb::VersionEventKind as K;
    assert_eq!(kinds, vec![(K::Created, 3), (K::RolledBack, 4), (K::Tagged, 4)]);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("w.safetensors");
    safetensors::export(&mut c.typed, "w", Some(1), false, &f).await.unwrap();
    safetensors::import(&mut c.typed, "w", &f).await.unwrap();
    let ev = stream.message().await.unwrap().unwrap();
    assert_eq!((pb::VersionEventKind::try_from(ev.kind).unwrap(), ev.version.unwrap().version), (K::Imported, 5));
    // a replay tells each version by what made it, an import as an import
    let req = pb::WatchRequest { model: "w".into(), after_version: Some(2) };
    let mut replay = c.models.watch_versions(req).await.unwrap().into_inner();
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let ev = replay.message().await.unwrap().unwrap();
        let v = ev.version.unwrap();
        replayed.push((pb::VersionEventKind::try_from(ev.kind).unwrap(), v.version, v.kind));
    }
    use pb::VersionKind as V;
    assert_eq!(
        replayed,
        vec![
            (K::Created, 3, V::Manual as i32),
            (K::RolledBack, 4, V::Rollback as i32),
            (K::Imported, 5, V::Import as i32)
        ]
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::{server_reflection_request::MessageRequest, ServerReflectionRequest};
    let s = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(s.url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let r =
        health.check(tonic_health::pb::HealthCheckRequest { service: "accrete.v1.Parameters".into() }).await.unwrap();
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = format!("{:?}", resp.message().await.unwrap().unwrap());
    assert!(msg.contains("accrete.v1.Models") && msg.contains("accrete.v1.Parameters"), "{msg}");
}

#[tokio::test]
async fn pulls_serve_ranges_keys_versions_and_the_ema() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut spec = linear("e", 6, pb::OptimizerKind::Sgd, 1.0);
    spec.hash_bits = 4;
    spec.classes = 0;
    spec.ema_decay = 0.5;
    create(&mut c, spec).await;
    c.params
        .push(push_req("e", 0, vec![dense("w", 2, &[-2.0, -4.0]), rows("h", &[3, 9], &[-1.0, -3.0])]))
        .await
        .unwrap();
    let slices = vec![
        pb::PullSlice { tensor: "w".into(), offset: 1, len: 3, ..Default::default() },
        pb::PullSlice { tensor: "h".into(), keys: accrete_proto::keys_to_bytes(&[9, 3, 0]), ..Default::default() },
    ];
    let pull = |ema: bool, version: Option<u64>| pb::PullRequest {
        model: "e".into(),
        version,
        slices: slices.clone(),
        ema,
        ..Default::default()
    };
    let r = c.params.pull(pull(false, None)).await.unwrap().into_inner();
    let vals: Vec<Vec<f32>> = r.tensors.iter().map(|t| accrete_proto::bytes_to_f32s(&t.values).unwrap()).collect();
    assert_eq!(vals, vec![vec![0.0, 2.0, 4.0], vec![3.0, 1.0, 0.0]]);
    assert_eq!((r.version, r.updates), (1, 1));
    // EMA with decay 0.5 from zero weights: half way to the new weights
    let r = c.params.pull(pull(true, None)).await.unwrap().into_inner();
    let vals: Vec<Vec<f32>> = r.tensors.iter().map(|t| accrete_proto::bytes_to_f32s(&t.values).unwrap()).collect();
    assert_eq!(vals, vec![vec![0.0, 1.0, 2.0], vec![1.5, 0.5, 0.0]]);
    // version 1 is the initial content
    let r = c.params.pull(pull(false, Some(1))).await.unwrap().into_inner();
    assert!(r.tensors.iter().all(|t| accrete_proto::bytes_to_f32s(&t.values).unwrap().iter().all(|v| *v == 0.0)));
    let bad = pb::PullRequest {
        slices: vec![pb::PullSlice {
            tensor: "h".into(),
            keys: accrete_proto::keys_to_bytes(&[16]),
            ..Default::default()
        }],
        ..pull(false, None)
    };
    let e = c.params.pull(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("key 16"), "{}", e.message());
}

#[tokio::test]
async fn a_pull_with_slots_serves_the_optimizer_state_of_each_slice() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut spec = linear("a", 4, pb::OptimizerKind::Adam, 0.1);
    spec.hash_bits = 4;
    spec.ema_decay = 0.5;
    create(&mut c, spec).await;
    c.params.push(push_req("a", 0, vec![dense("w", 1, &[2.0, -4.0]), rows("h", &[3], &[-1.0])])).await.unwrap();
    let req = pb::PullRequest {
        model: "a".into(),
        slices: vec![
            pb::PullSlice { tensor: "w".into(), offset: 1, len: 2, ..Default::default() },
            pb::PullSlice { tensor: "h".into(), keys: accrete_proto::keys_to_bytes(&[3, 0]), ..Default::default() },
        ],
        slots: true,
        ..Default::default()
    };
    let r = c.params.pull(req.clone()).await.unwrap().into_inner();
    let got: Vec<(String, String, Vec<f32>)> = r
        .tensors
        .iter()
        .map(|t| (t.tensor.clone(), t.slot.clone(), accrete_proto::bytes_to_f32s(&t.values).unwrap()))
        .collect();
    let names: Vec<(&str, &str)> = got.iter().map(|(t, s, _)| (t.as_str(), s.as_str())).collect();
    assert_eq!(names, [("w", ""), ("w", "m"), ("w", "v"), ("h", ""), ("h", "m"), ("h", "v")], "no EMA among the slots");
    // Adam's first step: m = (1 - 0.9) g, v = (1 - 0.999) g^2
    let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(&got[1].2, &[0.2, -0.4]), "{:?}", got[1].2);
    assert!(close(&got[2].2, &[0.004, 0.016]), "{:?}", got[2].2);
    assert!(close(&got[4].2, &[-0.1, 0.0]), "{:?}", got[4].2);
    assert!(close(&got[5].2, &[0.001, 0.0]), "{:?}", got[5].2);
    // the weights are those of a pull without slots
    let plain = c.params.pull(pb::PullRequest { slots: false, ..req }).await.unwrap().into_inner();
    assert_eq!(plain.tensors.len(), 2);
    assert_eq!((&plain.tensors[0].values, &plain.tensors[1].values), (&r.tensors[0].values, &r.tensors[3].values));
}

#[tokio::test]
async fn push_stream_acks_each_push_and_stops_at_the_first_refusal() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    create(&mut c, linear("s", 3, pb::OptimizerKind::Sgd, 1.0)).await;
    let mut msgs: Vec<pb::PushRequest> = (0..50).map(|_| push_req("s", 0, vec![dense("w", 0, &[-1.0; 3])])).collect();
    msgs.push(push_req("s", 0, vec![dense("w", 0, &[f32::NAN; 3])]));
    msgs.extend((0..10).map(|_| push_req("s", 0, vec![dense("w", 0, &[-1.0; 3])])));
    let mut acks = c.params.push_stream(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let mut n = 0;
    let err = loop {
        match acks.message().await {
            Ok(Some(a)) => {
                n += 1;
                assert_eq!(a.updates, n);
            }
            Ok(None) => panic!("the stream ended without reporting the refused push"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, 50);
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(tensor(&mut c, "s", "w").await, vec![50.0; 3], "pushes after the refusal were not applied");
}

#[tokio::test]
async fn worker_progress_is_recorded_with_versions() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    create(&mut c, linear("wp", 2, pb::OptimizerKind::Sgd, 0.1)).await;
    for (i, off) in [(1, 100u64), (2, 250)] {
        let mut req = push_req("wp", 0, vec![dense("w", 0, &[1.0, 1.0])]);
        req.meta = Some(pb::PushMeta {
            worker_id: "w0".into(),
            shard: "part-0.csv".into(),
            offset: off,
            pass: 1,
            clock: i,
            rows: 10,
            loss_sum: 6.9,
            incarnation: 0,
            seq: i,
            update: false,
            changes: false,
            base_updates: 0,
            hits: 0,
            hist: Vec::new(),
        });
        c.params.push(req).await.unwrap();
    }
    let v = commit(&mut c, "wp").await;
    assert_eq!(v.workers.len(), 1);
    let w = &v.workers[0];
    assert_eq!(
        (w.worker_id.as_str(), w.shard.as_str(), w.offset, w.pass, w.clock, w.rows, w.pushes, w.seq),
        ("w0", "part-0.csv", 250, 1, 2, 20, 2, 2)
    );
    assert!((w.loss_sum - 13.8).abs() < 1e-9);
    assert_eq!(v.kind, pb::VersionKind::Manual as i32);
}

#[tokio::test]
async fn a_newer_incarnation_fences_the_older_one_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = TestServer::start_in(dir.clone(), 64 << 20).await;
    let mut c = s.client().await;
    create(&mut c, linear("inc", 2, pb::OptimizerKind::Sgd, 0.1)).await;
    let join = |c: &mut common::Conn| {
        let mut c = c.clone();
        async move {
            let req = pb::JoinRequest {
                model: "inc".into(),
                worker_id: "w".into(),
                shard: String::new(),
                ..Default::default()
            };
            c.params.join(req).await.unwrap().into_inner().incarnation
        }
    };
    let push = |incarnation: u64, seq: u64| {
        let mut req = push_req("inc", 0, vec![dense("w", 0, &[1.0, 1.0])]);
        req.meta = Some(pb::PushMeta { worker_id: "w".into(), incarnation, seq, ..Default::default() });
        req
    };
    let long =
        pb::JoinRequest { model: "inc".into(), worker_id: "x".repeat(300), shard: String::new(), ..Default::default() };
    let e = c.params.join(long).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("1 to 256 bytes"), "{}", e.message());
    let first = join(&mut c).await;
    c.params.push(push(first, 1)).await.unwrap();
    let second = join(&mut c).await;
    assert!(second > first, "incarnations grow: {first} then {second}");
    let before = tensor(&mut c, "inc", "w").await;
    let e = c.params.push(push(first, 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains(&format!("incarnation {first}")) && e.message().contains("\"w\""), "{}", e.message());
    assert_eq!(tensor(&mut c, "inc", "w").await, before, "a fenced push changes nothing");
    c.params.push(push(second, 1)).await.unwrap();
    let v = commit(&mut c, "inc").await;
    assert_eq!((v.workers[0].incarnation, v.workers[0].seq), (second, 1));
    // the incarnation is durable: after a restart the old one stays fenced, and the next
    // join gives a newer one still
    drop(c);
    s.stop().await;
    let s = TestServer::start_in(dir, 64 << 20).await;
    let mut c = s.client().await;
    let e = c.params.push(push(first, 3)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(join(&mut c).await > second);
}

/// A server with a 2-float linear BSP model "b" that `workers` have joined.
async fn bsp_model(workers: &[&str]) -> (tempfile::TempDir, TestServer, common::Conn) {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(tmp.path().join("d"), 64 << 20).await;
    let mut c = s.client().await;
    let mut spec = linear("b", 2, pb::OptimizerKind::Sgd, 0.1);
    spec.consistency = Some(pb::Consistency { mode: pb::ConsistencyMode::Bsp as i32, staleness: 0 });
    create(&mut c, spec).await;
    for w in workers {
        let join =
            pb::JoinRequest { model: "b".into(), worker_id: w.to_string(), shard: w.to_string(), ..Default::default() };
        assert_eq!(c.params.join(join).await.unwrap().into_inner().clock, 0);
    }
    (tmp, s, c)
}

/// A push of gradient [1, 1] to "b" from `worker` for its `clock`-th batch.
fn bsp_push(worker: &str, clock: u64, epoch: u64) -> pb::PushRequest {
    let mut r = push_req("b", epoch, vec![dense("w", 0, &[1.0, 1.0])]);
    r.meta = Some(pb::PushMeta { worker_id: worker.into(), clock, rows: 1, ..Default::default() });
    r
}

/// Under BSP a push belongs to the next rounds: a clock from a round already applied (which
/// no other worker would ever fill) or far ahead is refused by name, and changes nothing.
#[tokio::test]
async fn bsp_refuses_clocks_outside_the_next_rounds() {
    let (_tmp, _s, mut c) = bsp_model(&["a"]).await;
    for clock in [0, 17, u64::MAX] {
        let e = c.params.push(bsp_push("a", clock, 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(&format!("pushed clock {clock}, but BSP is at round 0")), "{}", e.message());
    }
    assert_eq!(tensor(&mut c, "b", "w").await, vec![0.0, 0.0], "a refused push changed the model");
    // the one live worker's round 1 is complete: applied at once
    c.params.push(bsp_push("a", 1, 0)).await.unwrap();
    assert_eq!(tensor(&mut c, "b", "w").await, vec![-0.1, -0.1]);
    let e = c.params.push(bsp_push("a", 1, 0)).await.unwrap_err();
    assert!(e.message().contains("BSP is at round 1"), "{}", e.message());
    // a worker that is not in the barrier is told to join again
    let e = c.params.push(bsp_push("z", 2, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("join again"), "{}", e.message());
    // a leave says whether there was anything to leave
    let leave = |w: &str| pb::WorkerRef { model: "b".into(), worker_id: w.into() };
    c.params.leave(leave("a")).await.expect("a joined");
    for w in ["z", "a"] {
        let e = c.params.leave(leave(w)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{w}: {}", e.message());
        assert!(e.message().contains(&format!("worker {w:?} is not in the model's barrier")), "{}", e.message());
    }
}

/// Under BSP, a push computed before a rollback is refused, but it still counts in its
/// round (empty): the worker's clock has moved on, and the others must not wait for it.
#[tokio::test]
async fn bsp_rounds_complete_across_a_rollback() {
    let (_tmp, _s, mut c) = bsp_model(&["a", "b"]).await;
    c.params.push(bsp_push("a", 1, 1)).await.unwrap();
    let rb = pb::RollbackRequest { model: "b".into(), to_version: 1, reason: "test".into(), ..Default::default() };
    c.models.rollback(rb).await.unwrap();
    let e = c.params.push(bsp_push("b", 1, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{}", e.message());
    let info = c.models.get_model_info(pb::ModelRef { name: "b".into() }).await.unwrap().into_inner();
    // a's gradient belonged to the old lineage (the rollback dropped it) and b's counted
    // empty: round 1 completed with no values, which is no update
    assert_eq!(info.updates, 0, "round 1 applied gradients of the old lineage");
    // and both may pull for clock 1 at once (BSP holds a pull until its round is complete)
    let pull = pb::PullRequest { model: "b".into(), worker_id: "a".into(), clock: 1, ..Default::default() };
    tokio::time::timeout(std::time::Duration::from_secs(5), c.params.pull(pull)).await.expect("pull held").unwrap();
}
