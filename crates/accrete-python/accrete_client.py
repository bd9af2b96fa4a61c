"""A thin Python client of accrete, routing over a cluster as the Rust client does.

The gRPC stubs are generated from proto/accrete/v1/accrete.proto with grpcio-tools the
first time this module is imported (into ./_generated beside it), so the wire contract has
one source. Bulk floats travel as little-endian float32 bytes, which numpy reads and
writes without copies.

    import numpy as np
    from accrete_client import Client
    c = Client("http://127.0.0.1:50051")  # any server of a cluster
    c.create_model("m", kind="linear", features=8, optimizer="sgd", lr=0.05)
    p = c.pull("m")                      # numpy arrays, shape (rows, cols), by tensor
    c.push("m", {"w": grad_w, "b": grad_b}, epoch=p["_epoch"])   # the server's optimizer applies it
    q = c.pull("m", rows={"h": keys})    # only these rows of a hashed table (in keys' order)
    c.push("m", {"h": (keys, grad_rows)}, epoch=q["_epoch"])
    c.predict("m", dense=x)              # scores rows with the live model (or a version)
    for event in c.watch("m"): ...       # new versions, rollbacks, as they happen

Routing (issue 13; `crates/accrete-client/src/cluster.rs` and `split.rs` in Rust). On
its first call the client asks the server it was given for the cluster's map
(`Cluster.GetClusterMap`, once). A server started without `--peers` (or one that predates
clusters) is a cluster of itself: every call goes to it, as before. In a cluster of N
servers:

- A model's *home* is server `murmur3_32(name, seed 0) mod N` of the sorted map (the
  rule the proto states); model calls (create, info, commit, versions, tag, rollback,
  watch, join) go there. A local name `NAME#i` goes to partition i's server,
  `(murmur3_32(NAME) + i) mod N`.
- A model of P > 1 partitions (asked of its home once, then kept): the home's
  `ModelInfo.partitions` names each partition's server; its tensors say which are split
  (partition 0 holds only `row_begin..row_end` of them: the hashed table) and which live
  whole on partition 0. Partition i holds rows `i*R//P .. (i+1)*R//P` of a split tensor
  of R rows (`accrete_core::partition`), checked against partition 0's range and each
  partition's row count as the home reports them.
- A pull goes to every partition at once and the answers are put back in order; keys are
  renumbered from the first row of their partition (`np.searchsorted` over the ranges).
- A push goes to every partition: the rows and ranges it holds, or none (a progress mark,
  with the same meta: the worker's id, incarnation and seq reach every partition, which a
  global commit's cut needs). Every part of a push that carries values anywhere has
  `meta.update` set, so each partition counts the update and the optimizer step.
- A partitioned model's predictions are computed here from the rows pulled (dense inputs
  standardised with the model's `norm`), as the Rust client computes them.
- A failed call to a partition raises `PartitionError` (a `grpc.RpcError` with the
  server's code) naming the model, the partition and its server.
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
        import shutil
        import tempfile

        from grpc_tools import protoc

        # Generated aside, then renamed into place (the _pb2 module, which the check
        # above looks at, last): processes importing at once never read a partial file.
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".gen-", dir=GENERATED)
        try:
            args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", "accrete/v1/accrete.proto"]
            if protoc.main(args) != 0:
                raise RuntimeError(f"grpc_tools.protoc failed on {src}")
            for name in ("accrete_pb2_grpc.py", "accrete_pb2.py"):
                os.replace(os.path.join(tmp, "accrete", "v1", name), os.path.join(os.path.dirname(target), name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if GENERATED not in sys.path:
        sys.path.insert(0, GENERATED)
    return importlib.import_module("accrete.v1.accrete_pb2"), importlib.import_module("accrete.v1.accrete_pb2_grpc")


pb, pb_grpc = _stubs()

KINDS = {"linear": pb.MODEL_KIND_LINEAR, "logistic": pb.MODEL_KIND_LOGISTIC, "softmax": pb.MODEL_KIND_SOFTMAX, "fm": pb.MODEL_KIND_FM, "mlp": pb.MODEL_KIND_MLP}
OPTIMIZERS = {"sgd": pb.OPTIMIZER_KIND_SGD, "momentum": pb.OPTIMIZER_KIND_MOMENTUM, "adagrad": pb.OPTIMIZER_KIND_ADAGRAD, "adam": pb.OPTIMIZER_KIND_ADAM, "ftrl": pb.OPTIMIZER_KIND_FTRL, "normalized": pb.OPTIMIZER_KIND_NORMALIZED, "rls": pb.OPTIMIZER_KIND_RLS}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]


def _f32(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _keys(keys):
    """Row keys as the wire carries them: little-endian u64, 8 bytes each."""
    return np.ascontiguousarray(keys, dtype="<u8").tobytes()


def version_kind(v):
    """What made a version: "created", "policy", "manual", "rollback" or "import"."""
    return pb.VersionKind.Name(v.kind).removeprefix("VERSION_KIND_").lower()


def murmur3_32(data, seed=0):
    """MurmurHash3 x86 32-bit of `data` (bytes or str): the placement rule's hash."""
    if isinstance(data, str):
        data = data.encode()
    m = 0xFFFFFFFF
    rotl = lambda x, r: ((x << r) | (x >> (32 - r))) & m
    c1, c2, h, n = 0xCC9E2D51, 0x1B873593, seed & m, len(data)
    for i in range(0, n - n % 4, 4):
        k = rotl((int.from_bytes(data[i:i + 4], "little") * c1) & m, 15) * c2 & m
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & m
    tail = data[n - n % 4:]
    if tail:
        h ^= rotl((int.from_bytes(tail, "little") * c1) & m, 15) * c2 & m
    h ^= n
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & m
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & m
    return h ^ (h >> 16)


def local_name(base, part):
    """The local model of partition `part` on its server: NAME, then NAME#1, NAME#2, ..."""
    return base if part == 0 else f"{base}#{part}"


class PartitionError(grpc.RpcError):
    """A call to one partition's server failed. `code()` is the server's status code
    (UNAVAILABLE when the server is down), `details()` names the model, the partition and
    the server; the original error is `cause`."""

    def __init__(self, model, part, server, cause):
        super().__init__()
        self.model, self.partition, self.server, self.cause = model, part, server, cause

    def code(self):
        return self.cause.code() if hasattr(self.cause, "code") else grpc.StatusCode.UNKNOWN

    def details(self):
        inner = self.cause.details() if hasattr(self.cause, "details") else str(self.cause)
        return f"model {self.model!r} partition {self.partition} (server {self.server}): {inner}"

    def __str__(self):
        return f"{self.code().name}: {self.details()}"


class _Server:
    """The stubs of one server, over one channel."""

    def __init__(self, target):
        self.target = target
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.models = pb_grpc.ModelsStub(self.channel)
        self.params = pb_grpc.ParametersStub(self.channel)
        self.cluster = pb_grpc.ClusterStub(self.channel)


class _Plan:
    """Where a partitioned model's rows live: per tensor, the sorted row ranges
    (`begins`, the partition of each range) and the shape; each partition's server; the
    model's spec."""

    def __init__(self, base, spec, servers, tensors):
        self.base, self.spec, self.parts = base, spec, len(servers)
        self.servers = servers  # per partition: an index into the cluster map
        # name -> (rows, cols, sparse, begins (np.uint64, ranges + 1 entries), parts (np.int64))
        self.tensors = tensors

    def route(self, tensor, keys):
        """(partition of each key, key renumbered from its partition's first row)."""
        rows, _, _, begins, parts = self.tensors[tensor]
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) and int(keys.max()) >= rows:
            raise ValueError(f"model {self.base!r}: row {int(keys.max())} of {tensor!r} is out of range ({rows} rows)")
        at = np.searchsorted(begins, keys, side="right") - 1
        return parts[at], keys - begins[at]

    def ranges(self, tensor):
        """[(partition, first row, end row)] of a tensor, in row order."""
        rows, _, _, begins, parts = self.tensors[tensor]
        return [(int(parts[i]), int(begins[i]), int(begins[i + 1])) for i in range(len(parts))]


class Client:
    """accrete's services over one channel per server: the one given (its stubs are
    `models`, `params`), and, in a cluster, each other server's on first use."""

    def __init__(self, url="http://127.0.0.1:50051"):
        self.url = url
        entry = _Server(url.split("://", 1)[-1])
        self.channel, self.models, self.params = entry.channel, entry.models, entry.params
        self._entry = entry
        self._map = None  # (sorted servers, index of the entry server) once asked; servers [] = no cluster
        self._peers = {}
        self._plans = {}

    # ------------------------------------------------------------ routing

    def cluster(self):
        """The cluster's servers (host:port, sorted) as the entry server answered, or []
        for a server of its own. Asked once."""
        if self._map is None:
            try:
                m = self._entry.cluster.GetClusterMap(pb.ClusterMapRequest())
                servers = list(m.servers)
                self._map = (servers, min(m.me, len(servers) - 1)) if len(servers) > 1 else ([], 0)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._map = ([], 0)
        return self._map[0]

    def entry(self):
        """host:port of the server this client was given, as the cluster's map names it
        (the URL's, without a cluster)."""
        servers = self.cluster()
        return servers[self._map[1]] if servers else self._entry.target

    def _server(self, i):
        """The stubs of server `i` of the map (the entry server's own channel for itself)."""
        servers, me = self._map
        if i == me:
            return self._entry
        if i not in self._peers:
            self._peers[i] = _Server(servers[i])
        return self._peers[i]

    def _index_of(self, name):
        """The map index of the server of model `name` (its home; a local name NAME#i:
        partition i's), or None without a cluster."""
        servers = self.cluster()
        if not servers:
            return None
        base, _, i = name.partition("#")
        return (murmur3_32(base) + (int(i) if i.isdigit() else 0)) % len(servers)

    def _call(self, name, method, stub, req):
        """Calls `stub`.`method` on the server of model `name`; in a cluster, an error
        names the partition and the server."""
        i = self._index_of(name)
        if i is None:
            return getattr(getattr(self._entry, stub), method)(req)
        base, _, part = name.partition("#")
        return self._on(base, int(part) if part.isdigit() else 0, i, stub, method, req)

    def plan(self, model):
        """How `model` is split (None: one partition, or no cluster), asked once."""
        if not self.cluster():
            return None
        if model not in self._plans:
            info = self.info(model)
            self._plans[model] = self._plan_of(info) if info.spec.partitions > 1 else None
        return self._plans[model]

    def _plan_of(self, info):
        """The plan of a partitioned model from its home's ModelInfo: each partition's
        server (`partitions[i].primary`), which tensors are split (partition 0 holds only
        `row_begin..row_end` of them), and their row starts by the placement rule
        (`accrete_core::partition`: partition i of P holds rows i*R//P .. (i+1)*R//P),
        checked against partition 0's range and each partition's row count."""
        servers, base, parts = self.cluster(), info.spec.name, info.spec.partitions
        where = {p.index: p for p in info.partitions}
        if sorted(where) != list(range(parts)) or any(p.primary not in servers for p in where.values()):
            listed = sorted((i, p.primary) for i, p in where.items())
            raise RuntimeError(f"model {base!r}: its home lists partitions {listed}, the cluster map {servers}")
        tensors, held = {}, np.zeros(parts, dtype=np.int64)
        for t in info.tensors:
            if t.row_begin == 0 and t.row_end == t.rows:  # whole, on partition 0
                begins, owners = np.array([0, t.rows], dtype=np.uint64), np.array([0], dtype=np.int64)
            else:
                begins = np.array([i * t.rows // parts for i in range(parts + 1)], dtype=np.uint64)
                owners = np.arange(parts, dtype=np.int64)
                if (t.row_begin, t.row_end) != (0, int(begins[1])):
                    raise RuntimeError(f"model {base!r}: partition 0 holds rows {t.row_begin}..{t.row_end} of {t.name!r}, not 0..{int(begins[1])}")
            np.add.at(held, owners, np.diff(begins).astype(np.int64))
            tensors[t.name] = (t.rows, t.cols, t.sparse, begins, owners)
        told = [where[p].rows for p in range(parts)]
        if held.tolist() != told:
            raise RuntimeError(f"model {base!r}: partitions hold {told} rows, the placement rule gives {held.tolist()}")
        return _Plan(base, info.spec, [servers.index(where[p].primary) for p in range(parts)], tensors)

    def _on(self, base, part, i, stub, method, req):
        """One call to partition `part` of `base` on server `i`, its errors naming both."""
        server = self._server(i)
        try:
            return getattr(getattr(server, stub), method)(req)
        except grpc.RpcError as e:
            raise PartitionError(base, part, server.target, e) from e

    def _fan_out(self, plan, method, reqs):
        """Sends reqs[p] to partition p's server for every p with a request, all at once;
        returns the answers by partition, or raises the first failure (PartitionError)."""
        futures = {p: getattr(self._server(plan.servers[p]).params, method).future(r) for p, r in reqs.items()}
        out, failed = {}, None
        for p, f in futures.items():
            try:
                out[p] = f.result()
            except grpc.RpcError as e:
                failed = failed or PartitionError(plan.base, p, self._server(plan.servers[p]).target, e)
        if failed is not None:
            raise failed
        return out

    # ------------------------------------------------------------ model calls (at the home)

    def create_model(self, name, kind="linear", features=0, hash_bits=0, classes=0, hidden=0, factors=0, optimizer="sgd", lr=0.01, init_seed=0, commit_every_updates=None, commit_every_secs=None, keep_last=None, partitions=0):
        """Creates a model (at its home). Without any commit argument the server's default
        policy applies (a version every 10 s while updates arrive, the newest 100 kept);
        given ones are used as they are (0 = off; keep_last 0 keeps all), the others at
        those defaults. `partitions`: row ranges of the hashed table over the cluster's
        servers (0: one per server)."""
        spec = pb.ModelSpec(
            name=name, kind=KINDS[kind], features=features, hash_bits=hash_bits, classes=classes, hidden=hidden, factors=factors,
            optimizer=pb.OptimizerSpec(kind=OPTIMIZERS[optimizer], lr=lr), init=pb.InitSpec(seed=init_seed, scale=0.01), partitions=partitions,
        )
        if (commit_every_updates, commit_every_secs, keep_last) != (None, None, None):
            spec.commit.CopyFrom(pb.CommitPolicy(
                every_updates=commit_every_updates or 0,
                every_secs=10.0 if commit_every_secs is None else commit_every_secs,
                keep_last=100 if keep_last is None else keep_last,
            ))
        self._plans.pop(name, None)
        return self._call(name, "CreateModel", "models", pb.CreateModelRequest(spec=spec))

    def info(self, name):
        """The model's ModelInfo, from its home (a local name NAME#i: from its server)."""
        return self._call(name, "GetModelInfo", "models", pb.ModelRef(name=name))

    def commit(self, model, reason=""):
        """Commits the live parameters (a global commit of every partition); returns the head."""
        return self._call(model, "Commit", "models", pb.CommitRequest(model=model, reason=reason)).version

    def versions(self, model):
        """Retained versions, oldest first."""
        return list(self._call(model, "ListVersions", "models", pb.ModelRef(name=model)).versions)

    def tag(self, model, version, label):
        """Tags a version (kept by retention)."""
        return self._call(model, "Tag", "models", pb.TagRequest(model=model, version=version, label=label))

    def rollback(self, model, to_version, reason=""):
        """Makes a new head version holding `to_version`'s parameters (a new lineage:
        pushes computed before it are refused with ABORTED). Returns the new version."""
        return self._call(model, "Rollback", "models", pb.RollbackRequest(model=model, to_version=to_version, reason=reason))

    def watch(self, model="", after_version=None):
        """Yields (kind, VersionInfo) for each new version of `model` ("" = every model of
        the server given; in a cluster, of the entry server's homes) as it happens; with
        `after_version`, first the retained versions after it."""
        req = pb.WatchRequest(model=model)
        if after_version is not None:
            req.after_version = after_version
        for ev in self._call(model, "WatchVersions", "models", req) if model else self.models.WatchVersions(req):
            yield pb.VersionEventKind.Name(ev.kind), ev.version

    # ------------------------------------------------------------ data plane

    def join(self, model, worker_id, shard=""):
        """Joins the model's barrier as `worker_id`: the answer holds the worker's new
        incarnation (pass it to push; pushes of older incarnations are refused) and the
        offset recorded for it. A partitioned model's home gives the incarnation and every
        other partition takes it, so every partition fences the same pushes."""
        home = self._call(model, "Join", "params", pb.JoinRequest(model=model, worker_id=worker_id, shard=shard))
        plan = self.plan(model)
        for p in range(1, plan.parts if plan else 1):
            req = pb.JoinRequest(model=local_name(model, p), worker_id=worker_id, shard=shard, incarnation=home.incarnation)
            self._on(model, p, plan.servers[p], "params", "Join", req)
        return home

    def pull(self, model, version=None, ema=False, rows=None):
        """The model's tensors as numpy arrays of shape (rows, cols), and the pull's
        version and lineage epoch. `rows` {tensor: keys} pulls only those rows of a hashed
        table, shaped (len(keys), cols) in the keys' order; other tensors come whole."""
        plan = self.plan(model)
        if plan is not None:
            return self._pull_split(plan, version, ema, rows or {})
        info = self.info(model)
        shapes = {t.name: (t.rows, t.cols) for t in info.tensors}
        req = pb.PullRequest(model=model, ema=ema)
        if version is not None:
            req.version = version
        if rows:
            for t in info.tensors:
                s = pb.PullSlice(tensor=t.name, keys=_keys(rows[t.name])) if t.name in rows else pb.PullSlice(tensor=t.name)
                req.slices.append(s)
                if t.name in rows:
                    shapes[t.name] = (len(rows[t.name]), t.cols)
        r = self._call(model, "Pull", "params", req)
        out = {t.tensor: np.frombuffer(t.values, dtype="<f4").reshape(shapes[t.tensor]) for t in r.tensors}
        out["_version"], out["_epoch"] = r.version, r.lineage_epoch
        return out

    def _pull_split(self, plan, version, ema, rows):
        """A pull of a partitioned model: one request per partition, at once."""
        reqs = {p: pb.PullRequest(model=local_name(plan.base, p), ema=ema) for p in range(plan.parts)}
        if version is not None:
            for r in reqs.values():
                r.version = version
        routed = {}
        for name in plan.tensors:
            if name in rows:
                part, local = routed[name] = plan.route(name, rows[name])
                for p in np.unique(part):
                    reqs[int(p)].slices.append(pb.PullSlice(tensor=name, keys=_keys(local[part == p])))
            else:
                for p, _, _ in plan.ranges(name):
                    reqs[p].slices.append(pb.PullSlice(tensor=name))
        got = self._fan_out(plan, "Pull", {p: r for p, r in reqs.items() if r.slices or p == 0})
        chunks = {}  # (partition, tensor) -> values
        for p, r in got.items():
            for t in r.tensors:
                chunks[(p, t.tensor)] = np.frombuffer(t.values, dtype="<f4")
        out = {}
        for name, (n, cols, _, _, _) in plan.tensors.items():
            if name in rows:
                part, _ = routed[name]
                values = np.empty((len(part), cols), dtype=np.float32)
                for p in np.unique(part):
                    values[part == p] = chunks[(int(p), name)].reshape(-1, cols)
            else:
                values = np.concatenate([chunks[(p, name)] for p, _, _ in plan.ranges(name)]).reshape(n, cols)
            out[name] = values
        out["_version"], out["_epoch"] = got[0].version, got[0].lineage_epoch
        return out

    def push(self, model, grads, epoch=0, worker_id="python", rows=0, loss_sum=0.0, incarnation=0, seq=0):
        """Pushes gradients: {tensor: array} for dense tensors (whole), or
        {tensor: (keys, rows_array)} for rows of a hashed table. A joined worker passes
        its incarnation and numbers its pushes with `seq`. A partitioned model's push
        goes to every partition (its rows there, or a progress mark); the answer is
        partition 0's ack."""
        meta = pb.PushMeta(worker_id=worker_id, rows=rows, loss_sum=loss_sum, incarnation=incarnation, seq=seq)
        plan = self.plan(model)
        if plan is None:
            chunks = []
            for name, g in grads.items():
                if isinstance(g, tuple):
                    keys, values = g
                    chunks.append(pb.TensorChunk(tensor=name, keys=_keys(keys), values=_f32(values)))
                else:
                    chunks.append(pb.TensorChunk(tensor=name, offset=0, values=_f32(g)))
            return self._call(model, "Push", "params", pb.PushRequest(model=model, lineage_epoch=epoch, grads=chunks, meta=meta))
        return self._push_split(plan, grads, epoch, meta)

    def _push_split(self, plan, grads, epoch, meta):
        """A push of a partitioned model split by row range, sent to every partition."""
        parts = {p: [] for p in range(plan.parts)}
        carries = False
        for name, g in grads.items():
            if name not in plan.tensors:
                raise ValueError(f"model {plan.base!r} has no tensor {name!r}")
            cols = plan.tensors[name][1]
            if isinstance(g, tuple):
                keys, values = g
                values = np.asarray(values, dtype="<f4").reshape(-1, cols)
                part, local = plan.route(name, keys)
                if len(part) != len(values):
                    raise ValueError(f"model {plan.base!r}: {len(part)} keys of {name!r} for {len(values)} rows of values")
                for p in np.unique(part):
                    at = part == p
                    parts[int(p)].append(pb.TensorChunk(tensor=name, keys=_keys(local[at]), values=_f32(values[at])))
                carries |= values.size > 0
            else:
                flat = np.asarray(g, dtype="<f4").reshape(-1)
                for p, a, b in plan.ranges(name):
                    if b > a:
                        parts[p].append(pb.TensorChunk(tensor=name, offset=0, values=_f32(flat[a * cols:b * cols])))
                carries |= flat.size > 0
        if carries:
            meta.update = True
        reqs = {p: pb.PushRequest(model=local_name(plan.base, p), lineage_epoch=epoch, grads=chunks, meta=meta) for p, chunks in parts.items()}
        return self._fan_out(plan, "Push", reqs)[0]

    def predict(self, model, dense=None, hashed=None, version=None):
        """Scores rows: `dense` an array (rows, features) for the model's dense inputs
        (raw values; standardised as in training), `hashed` a list of {table row: value}
        dicts, one per row, for its hashed table. Returns an array (rows, outputs):
        values, probabilities, or class probabilities. The server scores them; a
        partitioned model is scored here from the rows pulled from its partitions."""
        dense = None if dense is None else np.asarray(dense, dtype="<f4")
        n = len(dense) if dense is not None else len(hashed or [])
        if hashed is not None and len(hashed) != n:
            raise ValueError(f"{len(hashed)} hashed rows for {n} dense rows")
        ptr, idx, val = [0], [], []
        for row in hashed or []:
            idx.extend(int(k) for k in row)
            val.extend(float(v) for v in row.values())
            ptr.append(len(idx))
        plan = self.plan(model)
        if plan is not None:
            ptr = ptr if hashed is not None else [0] * (n + 1)
            return self._predict_split(model, plan, n, dense, np.array(ptr, dtype=np.int64), np.array(idx, dtype=np.uint64), np.array(val, dtype=np.float32), version)
        rows = pb.FeatureRows(rows=n, features=0 if dense is None else dense.shape[1])
        if dense is not None:
            rows.dense = _f32(dense)
        if hashed is not None:
            rows.row_ptr.extend(ptr)
            rows.indices.extend(idx)
            rows.values = _f32(np.array(val, dtype=np.float32))
        req = pb.PredictRequest(model=model, rows=rows)
        if version is not None:
            req.version = version
        r = self._call(model, "Predict", "params", req)
        return np.frombuffer(r.values, dtype="<f4").reshape(n, max(r.outputs, 1))

    def _predict_split(self, model, plan, n, dense, ptr, idx, val, version):
        """Scores rows of a partitioned model with the rows they need, pulled from every
        partition (the math of accrete_core's `kinds::predict`, vectorised)."""
        spec = plan.spec
        f = spec.features
        if (0 if dense is None else dense.shape[1]) != f and n > 0:
            raise ValueError(f"predict with model {model!r}: rows have {0 if dense is None else dense.shape[1]} dense features, the model {f}")
        sparse = [t for t, s in plan.tensors.items() if s[2]]
        uniq, inv = np.unique(idx, return_inverse=True)
        p = self.pull(model, version=version, rows={t: uniq for t in sparse})
        x = np.zeros((n, f), dtype=np.float32) if dense is None else dense.copy()
        if f and "norm" in p:
            cnt, mean, m2 = p["norm"]
            safe = np.where((cnt > 1) & (m2 > 0), cnt, np.float32(1))
            sd = np.where((cnt > 1) & (m2 > 0), np.sqrt(m2 / safe), np.float32(1)).astype(np.float32)
            x = (x - mean) / sd
        x[np.isnan(x)] = 0.0
        row = np.repeat(np.arange(n), np.diff(ptr))

        def hashed_sum(table):
            """Σ value × table row, per input row: (n, table cols)."""
            out = np.zeros((n, table.shape[1]), dtype=np.float32)
            np.add.at(out, row, val[:, None] * table[inv])
            return out

        if spec.kind in (pb.MODEL_KIND_LINEAR, pb.MODEL_KIND_LOGISTIC, pb.MODEL_KIND_SOFTMAX):
            z = np.broadcast_to(p["b"][0], (n, p["b"].shape[1])).astype(np.float32)
            if "w" in p:
                z = z + x @ p["w"]
            if "h" in p:
                z = z + hashed_sum(p["h"])
            if spec.kind == pb.MODEL_KIND_LOGISTIC:
                z = 1 / (1 + np.exp(-z))
            elif spec.kind == pb.MODEL_KIND_SOFTMAX and z.shape[1] >= 2:
                z = _softmax(z)
        elif spec.kind == pb.MODEL_KIND_FM:
            vx = np.zeros((n, p["v"].shape[1]), dtype=np.float32)
            np.add.at(vx, row, val[:, None] * p["v"][inv])
            sq = np.zeros(n, dtype=np.float32)
            np.add.at(sq, row, ((val[:, None] * p["v"][inv]) ** 2).sum(axis=1))
            z = p["b"][0, 0] + hashed_sum(p["h"])[:, 0] + 0.5 * ((vx**2).sum(axis=1) - sq)
            z = (1 / (1 + np.exp(-z)))[:, None]
        elif spec.kind == pb.MODEL_KIND_MLP:
            a = np.tanh(x @ p["w1"] + p["b1"][0])
            z = a @ p["w2"] + p["b2"][0]
            z = _softmax(z) if z.shape[1] >= 2 else z
        else:
            raise ValueError(f"predict with model {model!r}: kind {pb.ModelKind.Name(spec.kind)} is not scored by this client")
        return np.ascontiguousarray(z, dtype=np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
