#!/usr/bin/env python3
"""accrete against Vowpal Wabbit, river and scikit-learn, on the same data and splits, in
one run. Prints a Markdown table (wall time, rows/s, holdout or progressive logloss and
AUC, peak RSS, wall time as a ratio to Vowpal Wabbit's) and writes it, with JSON, to --out.

    pip install vowpalwabbit==9.11.9 river scikit-learn numpy
    cargo build --release
    python crates/accrete-python/benchmark.py --accrete target/release/accrete

Scenarios:
  (a) flights, seeded random 80/20 split (Python random.Random(0).shuffle), one pass;
  (b) flights replayed in time order with progressive validation (test, then train);
  (c) a seeded synthetic stream of 1M rows, 20 categorical features with Zipf values.
accrete runs as 1 server + 2 workers on loopback (processes started here), once with its
defaults and once with settings tuned per scenario (SETTINGS, labelled tuned); every system
reads its own data files, parsing included in the time. Features for flights: carrier,
origin, dest, month, day, hour, tailnum, flight, crosses carrier x hour and origin x dest.
"""
import argparse, csv, gzip, json, math, os, random, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
FLIGHTS = os.path.join(HERE, "..", "accrete", "data", "flights.csv.gz")
CATS = ["carrier", "origin", "dest", "month", "day", "hour", "tailnum", "flight"]
CROSS = [("carrier", "hour"), ("origin", "dest")]


def auc(y, p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    ranks, i = [0.0] * len(p), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and p[order[j + 1]] == p[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(y)
    neg = len(y) - pos
    return (sum(r for r, t in zip(ranks, y) if t) - pos * (pos + 1) / 2) / (pos * neg)


def logloss(y, p):
    e = 1e-15
    return -sum(math.log(min(max(q, e), 1 - e)) if t else math.log(min(max(1 - q, e), 1 - e)) for t, q in zip(y, p)) / len(y)


def hwm(pid):
    """The peak RSS (VmHWM) of a running process, in MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


def watch(procs):
    """Waits for processes, sampling their peak RSS every 10 ms (the rusage of a child
    forked from this big Python process would report this process's size)."""
    peak = 0.0
    while any(p.poll() is None for p in procs):
        peak = max([peak] + [hwm(p.pid) for p in procs if p.poll() is None])
        time.sleep(0.01)
    return peak


def run(cmd, **kw):
    """Runs a command; returns (seconds, peak RSS in MiB, stdout)."""
    t = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, **kw)
        rss = watch([p])
        secs = time.time() - t
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[:3]} failed: {err.read().decode()[-500:]}")
        out.seek(0)
        return secs, rss, out.read().decode()


# ---------------------------------------------------------------- data

def features(r, cats, cross):
    f = [f"{c}={r[c]}" for c in cats]
    f += [f"{a}={r[a]}^{b}={r[b]}" for a, b in cross]
    return f


def vw_line(y, feats):
    esc = lambda s: s.replace(" ", "_").replace(":", "_").replace("|", "_")
    return f"{1 if y else -1} |f " + " ".join(esc(x) for x in feats)


def write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def prepare(d, synthetic_rows):
    rows = []
    with gzip.open(FLIGHTS, "rt") as f:
        r = csv.DictReader(f)
        header = r.fieldnames
        for row in r:
            if row["arr_delay"] not in ("", "NA"):
                rows.append(row)
    label = lambda r: float(r["arr_delay"]) > 15
    sets = {}
    # (a) random split
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    n = int(len(shuffled) * 0.8)
    sets["a"] = (shuffled[:n], shuffled[n:])
    # (b) time order, all rows. The file is not in time order (months run 1, 10, 11, 12, 2,
    # ...), so sort by (time_hour, sched_dep_time) as the shared data's flights_vw.py does
    # (stable: ties keep file order); every system then reads the same sorted b_train files.
    sets["b"] = (sorted(rows, key=lambda r: (r["time_hour"], int(r["sched_dep_time"] or 0))), None)
    out = {}
    for k, (train, test) in sets.items():
        paths = {}
        for name, part in (("train", train), ("test", test)):
            if part is None:
                continue
            write(f"{d}/{k}_{name}.csv", header, [[r[c] for c in header] for r in part])
            with open(f"{d}/{k}_{name}.vw", "w") as f:
                for r in part:
                    f.write(vw_line(label(r), features(r, CATS, CROSS)) + "\n")
            paths[name] = part
        out[k] = {"train_rows": len(train), "test_rows": len(test) if test else 0, "cats": CATS, "cross": CROSS, "label": "arr_delay>15",
                  "y_test": [int(label(r)) for r in test] if test else None, "y_train": [int(label(r)) for r in train]}
    # (c) synthetic Zipf stream
    import numpy as np
    rng = np.random.default_rng(0)
    nf, vocab = 20, 100_000
    vals = np.minimum(rng.zipf(1.3, size=(synthetic_rows, nf)), vocab)
    w = rng.normal(0, 0.6, size=(nf, vocab + 1))
    z = w[np.arange(nf), vals].sum(axis=1) - 0.5
    y = (rng.random(synthetic_rows) < 1 / (1 + np.exp(-z))).astype(int)
    cats = [f"f{i}" for i in range(nf)]
    n = int(synthetic_rows * 0.8)
    for name, lo, hi in (("train", 0, n), ("test", n, synthetic_rows)):
        with open(f"{d}/c_{name}.csv", "w") as f:
            f.write(",".join(cats + ["y"]) + "\n")
            for i in range(lo, hi):
                f.write(",".join(str(v) for v in vals[i]) + f",{y[i]}\n")
        with open(f"{d}/c_{name}.vw", "w") as f:
            for i in range(lo, hi):
                f.write(f"{1 if y[i] else -1} |f " + " ".join(f"f{j}={vals[i][j]}" for j in range(nf)) + "\n")
    out["c"] = {"train_rows": n, "test_rows": synthetic_rows - n, "cats": cats, "cross": [], "label": "y",
                "y_test": [int(v) for v in y[n:]], "y_train": [int(v) for v in y[:n]]}
    return out


# ---------------------------------------------------------------- systems

def vw(d, k, info):
    py = sys.executable
    base = [py, "-m", "vowpalwabbit", "--loss_function", "logistic", "--link", "logistic", "-b", "20", "--quiet"]
    if info["test_rows"]:
        secs, rss, _ = run(base + ["-d", f"{d}/{k}_train.vw", "-f", f"{d}/{k}.vwmodel"])
        run([py, "-m", "vowpalwabbit", "-t", "-i", f"{d}/{k}.vwmodel", "-d", f"{d}/{k}_test.vw", "-p", f"{d}/{k}.vwpred", "--quiet"])
        y = info["y_test"]
    else:
        secs, rss, _ = run(base + ["-d", f"{d}/{k}_train.vw", "-p", f"{d}/{k}.vwpred"])
        y = info["y_train"]
    p = [float(l.split()[0]) for l in open(f"{d}/{k}.vwpred")]
    return secs, rss, y, p


PEER = r'''
import csv, sys, json
kind, train, test, cats, cross, label, out = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6], sys.argv[7]
def lab(r):
    if ">" in label:
        c, t = label.split(">"); return int(float(r[c]) > float(t))
    return int(r[label])
def feats(r):
    return [f"{c}={r[c]}" for c in cats] + [f"{a}={r[a]}^{b}={r[b]}" for a, b in cross]
preds = []
if kind == "river":
    from river import linear_model, optim
    m = linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    for r in csv.DictReader(open(train)):
        x = {f: 1 for f in feats(r)}
        if test == "-":
            preds.append(m.predict_proba_one(x).get(True, 0.5))
        m.learn_one(x, bool(lab(r)))
    if test != "-":
        for r in csv.DictReader(open(test)):
            preds.append(m.predict_proba_one({f: 1 for f in feats(r)}).get(True, 0.5))
else:
    import numpy as np
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import SGDClassifier
    h = FeatureHasher(n_features=1 << 20, input_type="string", alternate_sign=False)
    m = SGDClassifier(loss="log_loss", learning_rate="optimal")
    batch, ys = [], []
    def flush():
        X = h.transform(batch)
        if test == "-" and hasattr(m, "coef_"):
            preds.extend(m.predict_proba(X)[:, 1])
        elif test == "-":
            preds.extend([0.5] * len(batch))
        m.partial_fit(X, ys, classes=[0, 1])
        batch.clear(); ys.clear()
    for r in csv.DictReader(open(train)):
        batch.append(feats(r)); ys.append(lab(r))
        if len(batch) == 1000:
            flush()
    if batch:
        flush()
    if test != "-":
        rows = [feats(r) for r in csv.DictReader(open(test))]
        for i in range(0, len(rows), 10000):
            preds.extend(m.predict_proba(h.transform(rows[i:i + 10000]))[:, 1])
with open(out, "w") as f:
    f.write("\n".join(str(float(p)) for p in preds))
'''


def peer(kind, d, k, info):
    test = f"{d}/{k}_test.csv" if info["test_rows"] else "-"
    out = f"{d}/{k}.{kind}pred"
    secs, rss, _ = run([sys.executable, "-c", PEER, kind, f"{d}/{k}_train.csv", test, json.dumps(info["cats"]), json.dumps(info["cross"]), info["label"], out])
    p = [float(l) for l in open(out) if l.strip()]
    return secs, rss, info["y_test"] if info["test_rows"] else info["y_train"], p


# accrete's settings per scenario (optimizer, learning rate, rows per batch, consistency).
# Gradients are sums over a batch. One pass over a fixed split: AdaGrad. A time-ordered
# stream that drifts: constant-rate SGD, small batches, and ssp:0 so that the two workers'
# shards (rows dealt round-robin) advance through time together; under ASP one worker runs
# ahead and the model mixes two periods of the stream.
SETTINGS = {"a": ("adagrad", "0.1", "1000", "asp"), "b": ("sgd", "0.01", "50", "ssp:0"), "c": ("adagrad", "0.2", "1000", "asp")}


def accrete(binary, d, k, info, workers=2, tuned=False):
    """accrete with its defaults (no --optimizer, --lr, --consistency or --batch), or with
    the SETTINGS tuned per scenario."""
    shutil.rmtree(f"{d}/{k}_server", ignore_errors=True)  # a fresh server for each run
    # port 0: the server says which port it got on its first line of output
    srv = subprocess.Popen([binary, "server", "--listen", "127.0.0.1:0", "--data-dir", f"{d}/{k}_server"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = srv.stdout.readline()
    if not line.startswith("accrete server listening on "):
        srv.kill()
        raise RuntimeError(f"accrete server did not start: {line!r}")
    url = "http://" + line.split()[-1]
    try:
        for _ in range(200):
            if subprocess.run([binary, "model", "list", "--server", url], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        progressive = not info["test_rows"]
        create, batch = [binary, "model", "create", "m", "--kind", "logistic", "--hash-bits", "20", "--server", url], []
        if tuned:
            # tuned: a drifting stream tracked by a constant learning rate; one pass by AdaGrad
            opt, lr, b, consistency = SETTINGS[k]
            create += ["--optimizer", opt, "--lr", lr, "--consistency", consistency]
            batch = ["--batch", b]
        subprocess.run(create, check=True, capture_output=True)
        subprocess.run([binary, "split", "--input", f"{d}/{k}_train.csv", "--shards", str(workers), "--out", f"{d}/{k}_shards"], check=True, capture_output=True)
        cols = ["--label", info["label"], "--categorical", ",".join(info["cats"])]
        if info["cross"]:
            cols += ["--cross", ",".join(f"{a}:{b}" for a, b in info["cross"])]
        t = time.time()
        procs = []
        for i, shard in enumerate(sorted(os.listdir(f"{d}/{k}_shards"))):
            extra = ["--progressive-out", f"{d}/{k}_prog{i}.tsv"] if progressive else []
            procs.append(subprocess.Popen([binary, "worker", "--model", "m", "--shard", f"{d}/{k}_shards/{shard}", "--server", url] + batch + cols + extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rss = watch(procs)
        secs = time.time() - t
        if any(p.returncode != 0 for p in procs):
            raise RuntimeError("an accrete worker failed")
        if progressive:
            y, pr = [], []
            for i in range(workers):
                for line in open(f"{d}/{k}_prog{i}.tsv"):
                    a, b = line.split("\t")
                    y.append(int(float(a))); pr.append(float(b))
        else:
            out = subprocess.run([binary, "model", "predict", "m", "--input", f"{d}/{k}_test.csv", "--server", url] + cols, check=True, capture_output=True, text=True).stdout
            pr = [float(l) for l in out.split()]
            y = info["y_test"]
        # the server and one worker (the peak of any one process, as for the peers)
        return secs, max(rss, hwm(srv.pid)), y, pr
    finally:
        srv.kill(); srv.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--accrete", default=os.path.join(HERE, "..", "..", "target", "release", "accrete"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--synthetic-rows", type=int, default=1_000_000)
    ap.add_argument("--skip", default="", help="comma-separated systems to skip: vw, accrete, accrete-tuned, river, sklearn")
    ap.add_argument("--repeat", type=int, default=3, help="runs per system and scenario; the table shows the median wall time")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="accrete-bench-")
    info = prepare(d, args.synthetic_rows)
    names = {"a": "(a) flights, random 80/20, one pass", "b": "(b) flights in time order, progressive", "c": f"(c) synthetic Zipf, {args.synthetic_rows:,} rows"}
    systems = [("vw", "Vowpal Wabbit 9.11.9", lambda k: vw(d, k, info[k])), ("accrete", "accrete 1 server + 2 workers, defaults", lambda k: accrete(args.accrete, d, k, info[k])),
               ("accrete-tuned", "accrete 1 server + 2 workers, tuned", lambda k: accrete(args.accrete, d, k, info[k], tuned=True)),
               ("river", "river LogisticRegression", lambda k: peer("river", d, k, info[k])), ("sklearn", "scikit-learn SGDClassifier partial_fit", lambda k: peer("sklearn", d, k, info[k]))]
    skip = set(s for s in args.skip.split(",") if s)
    if skip - {key for key, _, _ in systems}:
        ap.error(f"--skip {args.skip}: the systems are vw, accrete, accrete-tuned, river, sklearn")
    rows = []
    for k in "abc":
        base = None
        for key, name, f in systems:
            if key in skip:
                continue
            runs = sorted((f(k) for _ in range(max(1, args.repeat))), key=lambda r: r[0])
            secs, rss, y, p = runs[len(runs) // 2]
            rss = max(r[1] for r in runs)
            spread = (runs[0][0], runs[-1][0])
            base = base or secs
            if key == "accrete-tuned":
                name += " ({} {}, batch {}, {})".format(*SETTINGS[k])
            n = info[k]["train_rows"]
            rows.append({"scenario": names[k], "system": name, "seconds": secs, "rows_per_s": n / secs, "logloss": logloss(y, p), "auc": auc(y, p), "peak_rss_mib": rss, "time_vs_vw": secs / base, "seconds_min_max": spread})
            r = rows[-1]
            print(f"{names[k]:<42} {name:<60} {secs:7.2f} s ({spread[0]:.2f}-{spread[1]:.2f}) {r['rows_per_s']:>10,.0f} rows/s  logloss {r['logloss']:.4f}  AUC {r['auc']:.4f}  RSS {rss:7.1f} MiB  x{r['time_vs_vw']:.2f}", flush=True)
    table = [f"| scenario | system | wall s (median of {max(1, args.repeat)}) | rows/s | logloss | AUC | peak RSS MiB | time / VW |", "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['scenario']} | {r['system']} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | {r['logloss']:.4f} | {r['auc']:.4f} | {r['peak_rss_mib']:.0f} | {r['time_vs_vw']:.2f} |" for r in rows]
    print("\n" + "\n".join(table))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        open(os.path.join(args.out, "benchmark.md"), "w").write("\n".join(table) + "\n")
        json.dump(rows, open(os.path.join(args.out, "benchmark.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
