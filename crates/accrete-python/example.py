"""Your own training loop in numpy, with accrete keeping the parameters: linear regression
on synthetic data. Each step pulls the latest weights, computes the gradient of the
squared loss of a mini-batch in numpy, and pushes it; the server applies SGD and keeps
versions. Run against a server: python example.py --server http://127.0.0.1:50051"""
import argparse
import sys

import grpc
import numpy as np

from accrete_client import Client, version_kind


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="http://127.0.0.1:50051")
    ap.add_argument("--model", default="numpy-linear")
    args = ap.parse_args()
    c = Client(args.server)
    rng = np.random.default_rng(0)
    w_true, b_true = rng.normal(size=8).astype(np.float32), np.float32(0.5)
    x = rng.normal(size=(4096, 8)).astype(np.float32)
    y = x @ w_true + b_true + rng.normal(scale=0.01, size=4096).astype(np.float32)
    c.create_model(args.model, kind="linear", features=8, optimizer="sgd", lr=0.05, commit_every_updates=50)
    for step in range(300):
        p = c.pull(args.model)
        w, b = p["w"][:, 0], p["b"][0, 0]
        i = rng.integers(0, len(x), size=64)
        err = x[i] @ w + b - y[i]
        # gradient of the mean of 1/2 (prediction - y)^2 over the batch
        gw, gb = x[i].T @ err / len(i), np.array([err.mean()], dtype=np.float32)
        c.push(args.model, {"w": gw, "b": gb}, epoch=p["_epoch"], rows=len(i), loss_sum=float((err**2).sum()))
    p = c.pull(args.model)
    w, b = p["w"][:, 0], p["b"][0, 0]
    c.commit(args.model, reason="python example")
    dist = float(np.abs(w - w_true).max())
    versions = c.versions(args.model)
    print(f"learned w within {dist:.4f} of the truth, b = {b:.4f} (true {b_true}); {len(versions)} versions, head {versions[-1].version} ({version_kind(versions[-1])}: {versions[-1].reason})")
    if dist > 0.05 or abs(b - b_true) > 0.05:
        print("FAIL: the model did not learn the synthetic weights", file=sys.stderr)
        return 1
    # Query the model the server keeps: predictions of the latest parameters...
    x_new = rng.normal(size=(5, 8)).astype(np.float32)
    served = c.predict(args.model, dense=x_new)[:, 0]
    err = float(np.abs(served - (x_new @ w_true + b_true)).max())
    print(f"served predictions within {err:.4f} of the truth")
    # ...and a rollback to the first version, seen by a watcher of the model's versions.
    head = versions[-1].version
    events = c.watch(args.model, after_version=head)
    rolled = c.rollback(args.model, 1, reason="python example")
    kind, v = next(events)
    print(f"watched {kind} to version {v.version} ({v.reason}); predictions are now {c.predict(args.model, dense=x_new)[0, 0]:.4f}")
    if err > 0.1 or v.version != rolled.version or kind != "VERSION_EVENT_KIND_ROLLED_BACK":
        print("FAIL: predictions or the watched rollback are wrong", file=sys.stderr)
        return 1
    # A worker's pushes carry its incarnation: joining again fences the older process.
    zero = {"w": np.zeros(8, np.float32), "b": np.zeros(1, np.float32)}
    first = c.join(args.model, "py-worker").incarnation
    second = c.join(args.model, "py-worker").incarnation
    c.push(args.model, zero, worker_id="py-worker", incarnation=second, seq=1)
    try:
        c.push(args.model, zero, worker_id="py-worker", incarnation=first, seq=1)
        fenced = "accepted"
    except grpc.RpcError as e:
        fenced = "refused" if e.code() == grpc.StatusCode.FAILED_PRECONDITION else f"failed with {e.code()}"
    print(f"incarnation {first} -> {second}: a push of the older one is {fenced}")
    if fenced != "refused" or second <= first:
        print("FAIL: an older incarnation's push was not refused", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
