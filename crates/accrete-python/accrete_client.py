"""A thin Python client of accrete.

The gRPC stubs are generated from proto/accrete/v1/accrete.proto with grpcio-tools the
first time this module is imported (into ./_generated beside it), so the wire contract has
one source. Bulk floats travel as little-endian float32 bytes, which numpy reads and
writes without copies.

    import numpy as np
    from accrete_client import Client
    c = Client("http://127.0.0.1:50051")
    c.create_model("m", kind="linear", features=8, optimizer="sgd", lr=0.05)
    p = c.pull("m")                      # numpy arrays, shape (rows, cols), by tensor
    c.push("m", {"w": grad_w, "b": grad_b}, epoch=p["_epoch"])   # the server's optimizer applies it
    c.predict("m", dense=x)              # scores rows with the live model (or a version)
    for event in c.watch("m"): ...       # new versions, rollbacks, as they happen
"""
import importlib
import os
import sys

import grpc
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
GENERATED = os.path.join(HERE, "_generated")


def _stubs():
    """Imports (generating first, if needed) accrete/v1/accrete_pb2{,_grpc}."""
    target = os.path.join(GENERATED, "accrete", "v1", "accrete_pb2.py")
    src = os.path.join(PROTO_ROOT, "accrete", "v1", "accrete.proto")
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(src):
        from grpc_tools import protoc

        os.makedirs(GENERATED, exist_ok=True)
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}", "accrete/v1/accrete.proto"]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {src}")
    if GENERATED not in sys.path:
        sys.path.insert(0, GENERATED)
    return importlib.import_module("accrete.v1.accrete_pb2"), importlib.import_module("accrete.v1.accrete_pb2_grpc")


pb, pb_grpc = _stubs()

KINDS = {"linear": pb.MODEL_KIND_LINEAR, "logistic": pb.MODEL_KIND_LOGISTIC, "softmax": pb.MODEL_KIND_SOFTMAX, "fm": pb.MODEL_KIND_FM, "mlp": pb.MODEL_KIND_MLP}
OPTIMIZERS = {"sgd": pb.OPTIMIZER_KIND_SGD, "momentum": pb.OPTIMIZER_KIND_MOMENTUM, "adagrad": pb.OPTIMIZER_KIND_ADAGRAD, "adam": pb.OPTIMIZER_KIND_ADAM, "ftrl": pb.OPTIMIZER_KIND_FTRL}


def _f32(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _keys(keys):
    """Row keys as the wire carries them: little-endian u64, 8 bytes each."""
    return np.ascontiguousarray(keys, dtype="<u8").tobytes()


def version_kind(v):
    """What made a version: "created", "policy", "manual", "rollback" or "import"."""
    return pb.VersionKind.Name(v.kind).removeprefix("VERSION_KIND_").lower()


class Client:
    """Both services of one server, over one channel."""

    def __init__(self, url="http://127.0.0.1:50051"):
        target = url.split("://", 1)[-1]
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)])
        self.models = pb_grpc.ModelsStub(self.channel)
        self.params = pb_grpc.ParametersStub(self.channel)

    def create_model(self, name, kind="linear", features=0, hash_bits=0, classes=0, hidden=0, factors=0, optimizer="sgd", lr=0.01, init_seed=0, commit_every_updates=None, commit_every_secs=None, keep_last=None):
        """Creates a model. Without any commit argument the server's default policy applies
        (a version every 10 s while updates arrive, the newest 100 kept); given ones are
        used as they are (0 = off; keep_last 0 keeps all), the others at those defaults."""
        spec = pb.ModelSpec(
            name=name, kind=KINDS[kind], features=features, hash_bits=hash_bits, classes=classes, hidden=hidden, factors=factors,
            optimizer=pb.OptimizerSpec(kind=OPTIMIZERS[optimizer], lr=lr), init=pb.InitSpec(seed=init_seed, scale=0.01),
        )
        if (commit_every_updates, commit_every_secs, keep_last) != (None, None, None):
            spec.commit.CopyFrom(pb.CommitPolicy(
                every_updates=commit_every_updates or 0,
                every_secs=10.0 if commit_every_secs is None else commit_every_secs,
                keep_last=100 if keep_last is None else keep_last,
            ))
        return self.models.CreateModel(pb.CreateModelRequest(spec=spec))

    def info(self, name):
        return self.models.GetModelInfo(pb.ModelRef(name=name))

    def pull(self, model, version=None, ema=False):
        """The model's tensors as numpy arrays of shape (rows, cols), and the pull's
        version and lineage epoch."""
        info = self.info(model)
        shapes = {t.name: (t.rows, t.cols) for t in info.tensors}
        req = pb.PullRequest(model=model, ema=ema)
        if version is not None:
            req.version = version
        r = self.params.Pull(req)
        out = {t.tensor: np.frombuffer(t.values, dtype="<f4").reshape(shapes[t.tensor]) for t in r.tensors}
        out["_version"], out["_epoch"] = r.version, r.lineage_epoch
        return out

    def join(self, model, worker_id, shard=""):
        """Joins the model's barrier as `worker_id`: the answer holds the worker's new
        incarnation (pass it to push; pushes of older incarnations are refused) and the
        offset recorded for it."""
        return self.params.Join(pb.JoinRequest(model=model, worker_id=worker_id, shard=shard))

    def push(self, model, grads, epoch=0, worker_id="python", rows=0, loss_sum=0.0, incarnation=0, seq=0):
        """Pushes gradients: {tensor: array} for dense tensors (whole), or
        {tensor: (keys, rows_array)} for rows of a hashed table. A joined worker passes
        its incarnation and numbers its pushes with `seq`."""
        chunks = []
        for name, g in grads.items():
            if isinstance(g, tuple):
                keys, values = g
                chunks.append(pb.TensorChunk(tensor=name, keys=_keys(keys), values=_f32(values)))
            else:
                chunks.append(pb.TensorChunk(tensor=name, offset=0, values=_f32(g)))
        meta = pb.PushMeta(worker_id=worker_id, rows=rows, loss_sum=loss_sum, incarnation=incarnation, seq=seq)
        return self.params.Push(pb.PushRequest(model=model, lineage_epoch=epoch, grads=chunks, meta=meta))

    def commit(self, model, reason=""):
        return self.models.Commit(pb.CommitRequest(model=model, reason=reason)).version

    def versions(self, model):
        return list(self.models.ListVersions(pb.ModelRef(name=model)).versions)

    def predict(self, model, dense=None, hashed=None, version=None):
        """Scores rows on the server: `dense` an array (rows, features) for the model's
        dense inputs (raw values; the server standardises them as in training), `hashed`
        a list of {table row: value} dicts, one per row, for its hashed table. Returns an
        array (rows, outputs): values, probabilities, or class probabilities."""
        dense = None if dense is None else np.asarray(dense, dtype="<f4")
        n = len(dense) if dense is not None else len(hashed or [])
        rows = pb.FeatureRows(rows=n, features=0 if dense is None else dense.shape[1])
        if dense is not None:
            rows.dense = _f32(dense)
        if hashed is not None:
            if len(hashed) != n:
                raise ValueError(f"{len(hashed)} hashed rows for {n} dense rows")
            ptr, idx, val = [0], [], []
            for row in hashed:
                idx.extend(int(k) for k in row)
                val.extend(float(v) for v in row.values())
                ptr.append(len(idx))
            rows.row_ptr.extend(ptr)
            rows.indices.extend(idx)
            rows.values = _f32(np.array(val, dtype=np.float32))
        req = pb.PredictRequest(model=model, rows=rows)
        if version is not None:
            req.version = version
        r = self.params.Predict(req)
        return np.frombuffer(r.values, dtype="<f4").reshape(n, max(r.outputs, 1))

    def rollback(self, model, to_version, reason=""):
        """Makes a new head version holding `to_version`'s parameters (a new lineage:
        pushes computed before it are refused with ABORTED). Returns the new version."""
        return self.models.Rollback(pb.RollbackRequest(model=model, to_version=to_version, reason=reason))

    def watch(self, model="", after_version=None):
        """Yields (kind, VersionInfo) for each new version of `model` ("" = every model) as
        it happens; with `after_version`, first the retained versions after it."""
        req = pb.WatchRequest(model=model)
        if after_version is not None:
            req.after_version = after_version
        for ev in self.models.WatchVersions(req):
            yield pb.VersionEventKind.Name(ev.kind), ev.version
