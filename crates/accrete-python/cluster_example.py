"""Your own training loop in numpy against a model split over a cluster: logistic
regression on synthetic hashed features. The client is given one server; it fetches the
cluster's map, finds the model's home and partitions, and sends each partition's pulls and
pushes straight to its server. Each step pulls only the table rows its batch touches,
computes the logloss gradient in numpy and pushes it; the servers apply AdaGrad and keep
global versions. Then it scores a holdout, with the live model and with the version it
committed (computed here from the rows pulled from every partition).

    accrete server --listen 127.0.0.1:50051 --peers 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 --data-dir d1 &
    accrete server --listen 127.0.0.1:50052 --peers 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 --data-dir d2 &
    accrete server --listen 127.0.0.1:50053 --peers 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 --data-dir d3 &
    python cluster_example.py --server http://127.0.0.1:50052

The model is created (3 partitions, 2^14 rows) unless it exists. `--holdout FILE` writes
the holdout rows as LIBSVM (`accrete model predict NAME --input FILE` scores the same
rows); `--json` prints a summary as the last line."""
import argparse
import json
import sys

import grpc
import numpy as np

from accrete_client import Client, version_kind


def rows(rng, vocab, w_true, n, per_row=8):
    """n synthetic rows: `per_row` table rows of `vocab` with values in [0.5, 1.5] (two
    decimals, so a LIBSVM file carries them exactly), and labels drawn from the true
    model. Returns (keys (n, per_row), values (n, per_row), labels (n,))."""
    pick = rng.integers(0, len(vocab), size=(n, per_row))
    keys = vocab[pick]
    values = np.round(rng.uniform(0.5, 1.5, size=(n, per_row)), 2).astype(np.float32)
    z = (w_true[pick] * values).sum(axis=1) - 0.3
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return keys, values, labels


def as_dicts(keys, values):
    """Rows as {table row: value} dicts (a row's repeated keys summed), as predict takes them."""
    out = []
    for ks, vs in zip(keys.tolist(), values.tolist()):
        d = {}
        for k, v in zip(ks, vs):
            d[k] = round(d.get(k, 0.0) + v, 2)
        out.append(d)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="http://127.0.0.1:50051")
    ap.add_argument("--model", default="py-hashed")
    ap.add_argument("--pushes", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--holdout", help="write the holdout rows here as LIBSVM")
    ap.add_argument("--json", action="store_true", help="print a summary as JSON, last")
    args = ap.parse_args()
    c = Client(args.server)
    try:
        info = c.info(args.model)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        c.create_model(args.model, kind="logistic", hash_bits=14, optimizer="adagrad", lr=0.1, partitions=3)
        info = c.info(args.model)
    bits = info.spec.hash_bits
    plan = c.plan(args.model)
    entry = c.entry()
    where = ", ".join(f"{p.index} on {p.primary}" for p in info.partitions)
    print(f"model {args.model}: {info.spec.partitions or 1} partitions ({where}); this client was given {entry}")

    rng = np.random.default_rng(0)
    vocab = rng.choice(1 << bits, size=600, replace=False).astype(np.uint64)  # rows on every partition
    w_true = rng.normal(scale=1.5, size=len(vocab)).astype(np.float32)
    worker = "py-cluster"
    incarnation = c.join(args.model, worker).incarnation
    loss, seen = 0.0, 0
    for seq in range(1, args.pushes + 1):
        keys, values, y = rows(rng, vocab, w_true, args.batch)
        uniq, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(keys.shape)
        p = c.pull(args.model, rows={"h": uniq})
        z = p["b"][0, 0] + (p["h"][inv, 0] * values).sum(axis=1)
        prob = 1 / (1 + np.exp(-z))
        batch_loss = float(-(y * np.log(prob + 1e-12) + (1 - y) * np.log(1 - prob + 1e-12)).sum())
        loss, seen = loss + batch_loss, seen + len(y)
        d = prob - y  # the summed logloss gradient by score, per row
        gh = np.zeros((len(uniq), 1), dtype=np.float32)
        np.add.at(gh[:, 0], inv.ravel(), (d[:, None] * values).ravel())
        grads = {"h": (uniq, gh), "b": np.array([d.sum()], dtype=np.float32)}
        c.push(args.model, grads, epoch=p["_epoch"], worker_id=worker, rows=len(y), loss_sum=batch_loss, incarnation=incarnation, seq=seq)
    head = c.commit(args.model, reason="python cluster example")
    print(f"{args.pushes} pushes of {args.batch} rows (progressive logloss {loss / max(seen, 1):.4f}); committed version {head.version} ({version_kind(head)})")

    keys, values, y = rows(rng, vocab, w_true, 500)
    holdout = as_dicts(keys, values)
    if args.holdout:
        with open(args.holdout, "w") as f:
            for label, row in zip(y, holdout):
                f.write(f"{int(label)} " + " ".join(f"{k + 1}:{v:.2f}" for k, v in row.items()) + "\n")
    live = c.predict(args.model, hashed=holdout)[:, 0]
    at_head = c.predict(args.model, hashed=holdout, version=head.version)[:, 0]
    accuracy = float(((live > 0.5) == (y > 0.5)).mean())
    base = float(max(y.mean(), 1 - y.mean()))
    print(f"holdout accuracy {accuracy:.3f} (base rate {base:.3f}); predictions of version {head.version} equal the live ones: {bool(np.array_equal(live, at_head))}")
    if args.json:
        summary = {
            "model": args.model, "entry": entry, "home": info.partitions[0].primary if info.partitions else entry,
            "partitions": [p.primary for p in info.partitions], "pushes": args.pushes, "version": head.version,
            "starts": {t: plan.tensors[t][3].tolist() for t in plan.tensors} if plan else {},
            "accuracy": accuracy, "base_rate": base, "live": live.tolist(), "at_version": at_head.tolist(),
        }
        print(json.dumps(summary))
    if accuracy < base + 0.05:
        print("FAIL: the model did not learn the synthetic weights", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
