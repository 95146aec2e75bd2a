#!/usr/bin/env python
"""Masked-LM training throughput: kplm vs keras_hub's BertMaskedLM, plus kplm's data-pipeline cost.

Every measurement runs in its own Python process (fresh TensorFlow, no shared caches or thread
pools) and the processes are interleaved -- kplm, keras_hub, kplm, keras_hub ... -- for ``--rounds``
rounds, so slow drifts of the machine hit both systems alike. Inside a process the model trains with
``model.fit`` on pre-made tensors; the first steps (tracing/compilation and warm-up) are dropped and
the following steps are timed in ``--windows`` windows of ``--seconds`` seconds each.

Parts:

1. ``train``: for each shape, kplm ``MaskedLM(Encoder(...))`` and keras_hub
   ``BertMaskedLM(BertBackbone(...))`` on identical random token-id batches (seq 128, 20 masked
   positions, vocabulary 30522, dropout 0.1, AdamW(1e-4)). Reports tokens/s, the kplm/keras_hub
   ratio and the model-FLOPs utilisation (MFU) against an fp32 4096x4096 matmul peak measured in the
   same run.
2. ``pipeline``: kplm's model (tiny shape, batch 32) fed by kplm's real-text ``tf.data`` pipeline
   (in-graph WordPiece tokenization of data/wikitext2/train.txt, packing, dynamic masking) vs the
   same model fed pre-tokenized, pre-masked tensors taken from that pipeline. Reports both tokens/s
   and the overhead. The WordPiece vocabulary is learned once and cached in a temporary directory.

FLOPs per token (training = 3 x forward, matmuls only), as in the peer baselines:
``6*L*(4*H^2 + 2*H*FFN) + 12*L*S*H + 6*(H^2 + H*V)*P/S`` with P = 20 masked positions of S = 128.
MFU = tokens/s * FLOPs/token / matmul peak.

Usage::

    python benchmarks/bench_mlm.py                       # defaults (`make bench`), ~10-15 min on 2 cores
    python benchmarks/bench_mlm.py --quick               # one round, short windows (~4 min)
    python benchmarks/bench_mlm.py --shapes tiny --rounds 3 --seconds 8 --jit --out bench.jsonl

One JSON line per measurement goes to stdout (or to ``--out FILE``); progress goes to stderr; a
summary table is printed at the end.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORPUS = os.path.join(REPO, "data", "wikitext2", "train.txt")

# name: (layers, hidden, heads, ffn, batch)
SHAPES = {
    "tiny": (2, 128, 2, 512, 32),
    "mini": (4, 256, 4, 1024, 32),
    "small": (4, 512, 8, 2048, 16),
}
SEQ = 128
N_MASK = 20  # ceil(0.15 * 128), kplm's default max_predictions
VOCAB = 30522  # BERT's vocabulary, as in the peer baselines
MASK_ID = 103  # [MASK] in BERT's vocabulary
N_BATCHES = 32  # distinct pre-made batches, cycled
MEMORY_COPIES = (1, 8)  # the corpus repeated this many times for the pipeline-memory rows
BATCHES_PER_COPY = 60  # ~ one pass of wikitext2 train.txt at batch 32 x 128
PIPELINE_VOCAB = 8000
MATMUL_N = 4096
SYSTEMS = ("kplm", "kplm_loop", "keras_hub")
#: kplm: kplm's model under Keras' fit; kplm_loop: the same model trained by kplm's own loop
#: (kplm.training.loop.train: the step of kplm runs, several steps per call;
#: KPLM_BENCH_STEPS_PER_EXECUTION sets how many).
STEPS_PER_EXECUTION = int(os.environ.get("KPLM_BENCH_STEPS_PER_EXECUTION", "10"))


def flops_per_token(L, H, F, V, S=SEQ, n_mask=N_MASK):
    """Model FLOPs per trained token: matmuls only, backward = 2 x forward."""
    layers = L * (4 * H * H + 2 * H * F)
    attention = 12 * L * S * H
    head = H * H + H * V  # transform dense + tied decoder, on the masked positions only
    return 6 * layers + attention + 6 * head * n_mask / S


# ----------------------------------------------------------------------------------------------
# Workers (each runs in its own process and prints one JSON line on stdout)
# ----------------------------------------------------------------------------------------------
def _setup_env():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


def _peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_matmul(a):
    """fp32 matmul GFLOP/s (2*N^3 per product), as the peers' matmul_peak.py: 2 warm-up runs,
    then ``--matmul-reps`` timed ones. MATMUL_N (4096) defines the peak; 2048 is for reference."""
    _setup_env()
    import tensorflow as tf
    res = {"kind": "matmul", "dtype": "float32", "reps": a.matmul_reps}
    for n in (2048, MATMUL_N):
        x = tf.random.normal((n, n))
        y = tf.random.normal((n, n))
        run = lambda: tf.linalg.matmul(x, y).numpy()  # noqa: E731
        run(); run()  # warm-up
        ts = []
        for _ in range(a.matmul_reps):
            t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
        flops = 2.0 * n ** 3
        if n == MATMUL_N:
            res.update(n=n, gflops_best=flops / min(ts) / 1e9,
                       gflops_median=flops / statistics.median(ts) / 1e9)
        else:
            res[f"gflops_best_{n}"] = flops / min(ts) / 1e9
    res.update(intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
               cpus=os.cpu_count(), loadavg=os.getloadavg(), tf=tf.__version__)
    return res


def worker_vocab(a):
    _setup_env()
    from kplm.data.text_files import TextFiles
    from kplm.tokenizers.wordpiece import WordPiece
    t = time.perf_counter()
    tok = WordPiece(vocabulary_size=PIPELINE_VOCAB)
    tok.train(TextFiles(paths=[CORPUS]).texts(), progress=False)
    tok.save(a.vocab_dir)
    return {"kind": "vocab", "tokens": len(tok.tokens), "train_s": time.perf_counter() - t,
            "corpus": os.path.relpath(CORPUS, REPO), "dir": a.vocab_dir}


def _random_batches(B, V, seed=0):
    """N_BATCHES identical-for-everyone random MLM batches, stacked [N_BATCHES, B, ...]."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = N_BATCHES * B
    ids = rng.integers(1000, V, size=(n, SEQ), dtype=np.int32)
    pos = np.stack([np.sort(rng.choice(SEQ, N_MASK, replace=False)) for _ in range(n)])
    pos = pos.astype(np.int32)
    labels = np.take_along_axis(ids, pos, axis=1)
    masked = ids.copy()
    np.put_along_axis(masked, pos, MASK_ID, axis=1)
    x = {"token_ids": masked, "segment_ids": np.zeros_like(ids),
         "padding_mask": np.ones_like(ids), "mask_positions": pos}
    w = np.ones_like(labels, dtype=np.float32)
    split = lambda t: t.reshape((N_BATCHES, B) + t.shape[1:])  # noqa: E731
    return {k: split(v) for k, v in x.items()}, split(labels), split(w)


def _tensor_dataset(x, y, w):
    """Pre-batched arrays [N, B, ...] -> a cached, repeating dataset of those N batches."""
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    return ds.cache().repeat().prefetch(tf.data.AUTOTUNE)


def _build_model(system, L, H, NH, F, V, jit):
    import keras
    keras.utils.set_random_seed(0)
    if system in ("kplm", "kplm_loop"):
        from kplm.models.encoder import Encoder
        from kplm.models.masked_lm import MaskedLM
        backbone = Encoder(vocabulary_size=V, num_layers=L, num_heads=NH, hidden_dim=H,
                           intermediate_dim=F, sequence_length=SEQ, dropout=0.1)
        model = MaskedLM(backbone)
        # kplm's own defaults: masked-token-mean cross-entropy, accuracy + perplexity.
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=jit)
    elif system == "keras_hub":
        import keras_hub
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=V, num_layers=L, num_heads=NH, hidden_dim=H, intermediate_dim=F,
            max_sequence_length=SEQ, dropout=0.1)
        model = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                      jit_compile=jit)
    else:
        raise ValueError(system)
    return model


def _timed_fit(model, ds, *, window_s, windows, warmup_steps, warmup_s, loop=False, jit=False):
    """Train until ``windows`` windows of >= ``window_s`` seconds have been timed after warm-up.

    Step 1 (tracing/compilation) and the warm-up (>= ``warmup_steps`` further steps and
    >= ``warmup_s`` seconds) are not timed. Returns (list of (steps, seconds), first step seconds,
    warm-up seconds).
    """
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = time.perf_counter()
            self.first = None
            self.steps = 0
            self.start = None
            self.start_step = None
            self.done = []
            self.warmup = None

        def count(self):  # steps so far: one per batch hook under fit
            return self.steps + 1

        def on_train_batch_end(self, batch, logs=None):
            t = time.perf_counter()
            self.steps = self.count()
            if self.first is None:
                self.first = t
                return
            if self.start is None:
                if self.steps - 1 >= warmup_steps and t - self.first >= warmup_s:
                    self.start, self.start_step = t, self.steps
                    self.warmup = t - self.first
                return
            if t - self.start >= window_s:
                self.done.append((self.steps - self.start_step, t - self.start))
                self.start, self.start_step = t, self.steps
                if len(self.done) >= windows:
                    self.model.stop_training = True

    class LoopTimer(Timer):
        def count(self):  # optimizer steps (kplm's loop: several per batch hook)
            return int(self.model.optimizer.iterations.numpy())

    if loop:
        from kplm.training.loop import train
        timer = LoopTimer()
        scratch = tempfile.mkdtemp(prefix="kplm-bench-")
        try:
            train(model, ds, steps=10 ** 9, eval_every=10 ** 9, checkpoint_dir=scratch,
                  callbacks=[timer], steps_per_execution=STEPS_PER_EXECUTION,
                  jit_compile=jit)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        timer = Timer()
        model.fit(ds, epochs=1, steps_per_epoch=10 ** 9, verbose=0, callbacks=[timer])
    return timer.done, timer.first - timer.t0, timer.warmup


def _train_result(a, model, windows, first_s, warmup_s, B, L, H, NH, F, V, extra):
    import keras
    import tensorflow as tf
    tok_per_step = B * SEQ
    rates = [steps * tok_per_step / secs for steps, secs in windows]
    fpt = flops_per_token(L, H, F, V)
    res = {"kind": "train", "system": a.system, "shape": a.shape, "jit_compile": bool(a.jit),
           "feed": a.feed, "round": a.round, "L": L, "H": H, "heads": NH, "FFN": F, "batch": B,
           "seq": SEQ, "masked": N_MASK, "vocab": V, "params": int(model.count_params()),
           "tokens_per_s": statistics.median(rates), "tokens_per_s_windows": rates,
           "steps_per_window": [s for s, _ in windows],
           "step_ms": 1000 * tok_per_step / statistics.median(rates),
           "first_step_s": first_s, "warmup_s": warmup_s,
           "model_flops_per_token": fpt,
           "achieved_gflops": statistics.median(rates) * fpt / 1e9,
           "peak_rss_mb": _peak_rss_mb(), "loadavg": os.getloadavg(),
           "tf": tf.__version__, "keras": keras.__version__}
    res.update(extra)
    return res


def worker_train(a):
    _setup_env()
    import keras_hub
    L, H, NH, F, B = SHAPES[a.shape]
    x, y, w = _random_batches(B, VOCAB)
    ds = _tensor_dataset(x, y, w)
    model = _build_model(a.system, L, H, NH, F, VOCAB, bool(a.jit))
    wins, first_s, warm_s = _timed_fit(model, ds, window_s=a.seconds, windows=a.windows,
                                       warmup_steps=a.warmup_steps, warmup_s=a.warmup_s,
                                       loop=a.system == "kplm_loop", jit=bool(a.jit))
    return _train_result(a, model, wins, first_s, warm_s, B, L, H, NH, F, VOCAB,
                         {"keras_hub": keras_hub.__version__})


def worker_pipeline(a):
    """kplm, tiny shape, fed by the real-text pipeline (feed=pipeline) or tensors from it."""
    _setup_env()
    import numpy as np
    import tensorflow as tf
    from kplm.data.text_files import TextFiles
    from kplm.objectives.masked_lm import MaskedLMObjective
    from kplm.tokenizers.wordpiece import WordPiece

    L, H, NH, F, B = SHAPES[a.shape]
    tok = WordPiece.load(a.vocab_dir)
    V = len(tok.tokens)
    obj = MaskedLMObjective(mask_rate=0.15)
    assert obj.max_predictions_for(SEQ) == N_MASK
    pipe = obj.dataset(TextFiles(paths=[CORPUS]).build(), tok, batch_size=B,
                       sequence_length=SEQ, seed=0, training=True)
    extra = {}
    if a.feed == "pipeline":
        # The pipeline on its own (no model): how fast it can produce batches on this machine.
        it = iter(pipe)
        next(it)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            next(it); n += 1
        extra["pipeline_alone_tokens_per_s"] = n * B * SEQ / (time.perf_counter() - t0)
        del it
        ds = pipe
    else:
        batches = list(pipe.take(N_BATCHES).as_numpy_iterator())
        x = {k: np.stack([b[0][k] for b in batches]) for k in batches[0][0]}
        y = np.stack([b[1] for b in batches])
        w = np.stack([b[2] for b in batches])
        extra["mean_masked_per_row"] = float(w.sum() / (N_BATCHES * B))
        ds = _tensor_dataset(x, y, w)
    model = _build_model("kplm", L, H, NH, F, V, bool(a.jit))
    wins, first_s, warm_s = _timed_fit(model, ds, window_s=a.seconds, windows=a.windows,
                                       warmup_steps=a.warmup_steps, warmup_s=a.warmup_s)
    extra["tf_data_threads"] = "default"
    return _train_result(a, model, wins, first_s, warm_s, B, L, H, NH, F, V, extra)


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def worker_memory(a):
    """The real-text training pipeline (as ``feed=pipeline``) on the corpus repeated
    ``--copies`` times, read for about one pass (``copies`` x the batches one copy fills):
    resident memory after the first batch and at its highest while reading. Flat in corpus
    size means the peak does not grow with ``copies``."""
    _setup_env()
    import tensorflow as tf  # noqa: F401  (imported before the baseline reading)
    from kplm.data.text_files import TextFiles
    from kplm.objectives.masked_lm import MaskedLMObjective
    from kplm.tokenizers.wordpiece import WordPiece

    B = SHAPES["tiny"][-1]
    tok = WordPiece.load(a.vocab_dir)
    scratch = tempfile.mkdtemp(prefix="kplm-bench-mem-")
    try:
        corpus = os.path.join(scratch, "corpus.txt")
        with open(CORPUS, "rb") as f:
            text = f.read()
        with open(corpus, "wb") as f:
            for _ in range(a.copies):
                f.write(text)
        pipe = MaskedLMObjective(mask_rate=0.15).dataset(
            TextFiles(paths=[corpus]).build(), tok, batch_size=B, sequence_length=SEQ, seed=0,
            training=True)
        it = iter(pipe)
        next(it)
        first = peak = _rss_mb()
        n, t0 = a.copies * a.batches_per_copy, time.perf_counter()
        for _ in range(n):
            next(it)
            peak = max(peak, _rss_mb())
        return {"kind": "memory", "copies": a.copies, "corpus_mb": len(text) * a.copies / 2 ** 20,
                "batches": n, "seconds": time.perf_counter() - t0,
                "rss_after_first_batch_mb": first, "rss_peak_mb": peak,
                "growth_mb": peak - first}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


WORKERS = {"matmul": worker_matmul, "vocab": worker_vocab, "train": worker_train,
           "pipeline": worker_pipeline, "memory": worker_memory}


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
class Driver:
    def __init__(self, a):
        self.a = a
        self.results = []
        self.out = open(a.out, "w") if a.out else sys.stdout
        self.t0 = time.perf_counter()

    def log(self, msg):
        sys.stderr.write(f"[{time.perf_counter() - self.t0:6.0f}s] {msg}\n")
        sys.stderr.flush()

    def emit(self, rec):
        self.results.append(rec)
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()

    def run(self, worker, label, **kw):
        a = self.a
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
               "--seconds", str(a.seconds), "--windows", str(a.windows),
               "--warmup-steps", str(a.warmup_steps), "--warmup-s", str(a.warmup_s),
               "--matmul-reps", str(a.matmul_reps)]
        for k, v in kw.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        env = dict(os.environ, KERAS_BACKEND="tensorflow",
                   TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                               timeout=a.timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            rec = json.loads(lines[-1]) if p.returncode == 0 and lines else None
            err = None if rec else f"exit {p.returncode}: {p.stderr.strip()[-2000:]}"
        except subprocess.TimeoutExpired:
            rec, err = None, f"timed out after {a.timeout} s"
        wall = time.perf_counter() - t
        if rec is None:
            rec = {"kind": "error", "worker": worker, **kw, "error": err}
            self.log(f"{label}: FAILED ({wall:.0f} s)\n{err}")
        else:
            rec["process_wall_s"] = wall
            self.log(f"{label}: {self._brief(rec)} ({wall:.0f} s)")
        self.emit(rec)
        return rec

    @staticmethod
    def _brief(r):
        if r["kind"] == "matmul":
            return (f"{MATMUL_N}: {r['gflops_best']:.0f} GFLOP/s best, {r['gflops_median']:.0f} "
                    f"median; 2048: {r['gflops_best_2048']:.0f} best")
        if r["kind"] == "vocab":
            return f"{r['tokens']} tokens in {r['train_s']:.1f} s"
        if r["kind"] == "memory":
            return (f"{r['corpus_mb']:.1f} MB corpus, {r['batches']} batches in "
                    f"{r['seconds']:.0f} s: RSS {r['rss_after_first_batch_mb']:.0f} MB after the "
                    f"first batch, peak {r['rss_peak_mb']:.0f} MB")
        w = ", ".join(f"{x / 1e3:.2f}k" for x in r["tokens_per_s_windows"])
        return f"{r['tokens_per_s'] / 1e3:.2f}k tok/s (windows {w}; first step {r['first_step_s']:.1f} s)"

    def main(self):
        a = self.a
        shapes = [s for s in a.shapes.split(",") if s]
        for s in shapes:
            if s not in SHAPES:
                sys.exit(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
        jits = [0, 1] if a.jit else [0]
        do_pipe = not a.no_pipeline
        n_proc = (a.rounds * (1 + len(shapes) * len(jits) * len(SYSTEMS) + (2 if do_pipe else 0))
                  + 1 + (len(MEMORY_COPIES) if do_pipe else 0))
        self.log(f"{n_proc + do_pipe} processes: shapes {shapes}, rounds {a.rounds}, "
                 f"{a.windows} x {a.seconds:g} s windows, jit {jits}, pipeline {do_pipe}")
        vocab_dir, own_vocab = a.vocab_cache, False
        if do_pipe:
            if not vocab_dir:
                vocab_dir, own_vocab = tempfile.mkdtemp(prefix="kplm_bench_vocab_"), True
            if os.path.exists(os.path.join(vocab_dir, "vocab.txt")):
                self.log(f"vocabulary: reusing {vocab_dir}")
            else:
                os.makedirs(vocab_dir, exist_ok=True)
                self.run("vocab", "vocabulary", vocab_dir=vocab_dir)
        try:
            for r in range(a.rounds):
                self.run("matmul", f"round {r + 1} matmul", round=r)
                for shape in shapes:
                    for jit in jits:
                        for system in SYSTEMS:
                            self.run("train", f"round {r + 1} {shape:5s} jit={jit} {system:9s}",
                                     system=system, shape=shape, jit=jit, round=r)
                if do_pipe:
                    for feed in ("tensors", "pipeline"):
                        self.run("pipeline", f"round {r + 1} tiny  kplm feed={feed:8s}",
                                 system="kplm", shape="tiny", feed=feed, jit=0, round=r,
                                 vocab_dir=vocab_dir)
            if do_pipe:
                for copies in MEMORY_COPIES:
                    self.run("memory", f"pipeline memory, corpus x{copies}", copies=copies,
                             vocab_dir=vocab_dir)
            self.run("matmul", "final matmul", round=a.rounds)
        finally:
            if own_vocab:
                shutil.rmtree(vocab_dir, ignore_errors=True)
        self.summarize(shapes, jits, do_pipe)
        if self.out is not sys.stdout:
            self.out.close()

    def summarize(self, shapes, jits, do_pipe):
        R = self.results
        mm = [r for r in R if r["kind"] == "matmul"]
        peak = max((r["gflops_best"] for r in mm), default=float("nan"))
        lines = ["", f"fp32 {MATMUL_N}^2 matmul peak (best of {len(mm)} runs): {peak:.0f} GFLOP/s"
                 f"  [per-run best: {', '.join('%.0f' % r['gflops_best'] for r in mm)}]", ""]
        hdr = (f"{'shape':6s} {'L x H, FFN, batch':20s} {'jit':>3s} {'kplm tok/s':>12s} "
               f"{'keras_hub tok/s':>16s} {'kplm/kh':>8s} {'loop tok/s':>12s} {'loop/kh':>8s} "
               f"{'MFU kplm':>9s} {'MFU kh':>7s}")
        lines += [hdr, "-" * len(hdr)]

        def pick(**kw):
            return [r for r in R if r["kind"] == "train" and all(r.get(k) == v for k, v in kw.items())]

        def fmt(vals):
            if not vals:
                return "n/a"
            m = statistics.median(vals)
            spread = f" ±{(max(vals) - min(vals)) / 2 / m * 100:.0f}%" if len(vals) > 1 else ""
            return f"{m / 1e3:.2f}k{spread}"

        summary = []
        for shape in shapes:
            L, H, NH, F, B = SHAPES[shape]
            for jit in jits:
                k = [r["tokens_per_s"] for r in pick(system="kplm", shape=shape, jit_compile=bool(jit), feed="random")]
                h = [r["tokens_per_s"] for r in pick(system="keras_hub", shape=shape, jit_compile=bool(jit), feed="random")]
                lp = [r["tokens_per_s"] for r in pick(system="kplm_loop", shape=shape, jit_compile=bool(jit), feed="random")]
                lm = statistics.median(lp) if lp else float("nan")
                fpt = flops_per_token(L, H, F, VOCAB)
                km = statistics.median(k) if k else float("nan")
                hm = statistics.median(h) if h else float("nan")
                ratio = km / hm if k and h else float("nan")
                loop_ratio = lm / hm if lp and h else float("nan")
                mfu = lambda t: t * fpt / (peak * 1e9)  # noqa: E731
                desc = f"{L}x{H}, {F}, {B}"
                lines.append(f"{shape:6s} {desc:20s} {jit:>3d} {fmt(k):>12s} "
                             f"{fmt(h):>16s} {ratio:>8.3f} {fmt(lp):>12s} {loop_ratio:>8.3f} "
                             f"{mfu(km) * 100:>8.1f}% {mfu(hm) * 100:>6.1f}%")
                summary.append({"kind": "summary", "part": "train", "shape": shape,
                                "jit_compile": bool(jit), "kplm_tokens_per_s": km,
                                "keras_hub_tokens_per_s": hm, "ratio_kplm_over_keras_hub": ratio,
                                "kplm_loop_tokens_per_s": lm,
                                "ratio_kplm_loop_over_keras_hub": loop_ratio,
                                "mfu_kplm": mfu(km), "mfu_keras_hub": mfu(hm),
                                "model_flops_per_token": fpt, "matmul_peak_gflops": peak,
                                "kplm_runs": k, "keras_hub_runs": h})
        lines.append("(tok/s: median over rounds, ± half the spread between rounds; kplm: kplm's "
                     "model under fit; loop: kplm's own training loop, "
                     f"{STEPS_PER_EXECUTION} steps per call; MFU against the matmul peak above)")
        if do_pipe:
            t = [r["tokens_per_s"] for r in pick(feed="tensors")]
            p = [r["tokens_per_s"] for r in pick(feed="pipeline")]
            alone = [r["pipeline_alone_tokens_per_s"] for r in pick(feed="pipeline")]
            if t and p:
                tm, pm = statistics.median(t), statistics.median(p)
                over = (tm / pm - 1) * 100
                V = next(r["vocab"] for r in pick(feed="pipeline"))
                lines += ["", f"Pipeline cost (kplm, tiny 2x128, batch 32, WordPiece vocab {V}, "
                              "wikitext2 train.txt):",
                          f"  pre-made tensors        {fmt(t):>12s} tok/s",
                          f"  real-text tf.data feed  {fmt(p):>12s} tok/s",
                          f"  overhead                {over:+.1f}% step time "
                          f"({(1 - pm / tm) * 100:.1f}% fewer tokens/s)",
                          f"  pipeline alone (no model) {statistics.median(alone) / 1e3:.1f}k tok/s"]
                summary.append({"kind": "summary", "part": "pipeline", "shape": "tiny",
                                "tensors_tokens_per_s": tm, "pipeline_tokens_per_s": pm,
                                "overhead_pct_step_time": over,
                                "throughput_loss_pct": (1 - pm / tm) * 100,
                                "pipeline_alone_tokens_per_s": statistics.median(alone),
                                "tensors_runs": t, "pipeline_runs": p})
        memory = sorted((r for r in R if r["kind"] == "memory"), key=lambda r: r["copies"])
        if memory:
            lines += ["", "Pipeline memory (tiny, batch 32 x 128; the corpus repeated, read for "
                          "about one pass):"]
            for r in memory:
                lines.append(f"  corpus x{r['copies']:<3d} {r['corpus_mb']:6.1f} MB "
                             f"{r['batches']:5d} batches: peak RSS {r['rss_peak_mb']:6.0f} MB "
                             f"(+{r['growth_mb']:.0f} MB after the first batch)")
            small, large = memory[0], memory[-1]
            summary.append({"kind": "summary", "part": "pipeline_memory",
                            "copies": [r["copies"] for r in memory],
                            "rss_peak_mb": [r["rss_peak_mb"] for r in memory],
                            "peak_ratio_largest_over_smallest":
                                large["rss_peak_mb"] / small["rss_peak_mb"]})
        errors = [r for r in R if r["kind"] == "error"]
        if errors:
            lines += ["", f"{len(errors)} measurement(s) FAILED; see the JSON lines."]
        lines.append(f"total wall time {time.perf_counter() - self.t0:.0f} s")
        for s in summary:
            self.emit(s)
        print("\n".join(lines), flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,mini,small",
                   help=f"comma-separated subset of {','.join(SHAPES)} (default: all)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of one timed window in seconds (default 5; --quick 2.5)")
    p.add_argument("--windows", type=int, default=3, help="timed windows per process (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="one round, shorter windows and warm-up (a smoke run, ~4 min)")
    p.add_argument("--jit", action="store_true", help="also measure jit_compile=True (XLA)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the pipeline-cost part")
    p.add_argument("--out", help="write the JSON lines here instead of stdout")
    p.add_argument("--vocab-cache", help="directory to keep the learned WordPiece vocabulary "
                   "in (reused when present); default: a temporary directory, removed at the end")
    p.add_argument("--timeout", type=float, default=900, help="per-process limit in seconds")
    p.add_argument("--warmup-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--warmup-s", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--matmul-reps", type=int, default=7, help=argparse.SUPPRESS)
    # worker-only arguments
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--feed", default="random", help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--vocab-dir", help=argparse.SUPPRESS)
    p.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--batches-per-copy", type=int, default=BATCHES_PER_COPY,
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.rounds = 1
        a.seconds = a.seconds or 2.5
        a.windows = min(a.windows, 2)
        a.matmul_reps = min(a.matmul_reps, 4)
    a.seconds = a.seconds or 5.0
    if a.warmup_steps is None:
        a.warmup_steps = 2 if a.quick else 4
    if a.warmup_s is None:
        a.warmup_s = 1.0 if a.quick else 2.0
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        # Workers take --jit 0/1; the driver's --jit is a flag.
        i = argv.index("--jit") if "--jit" in argv else None
        jit = 0
        if i is not None:
            jit = int(argv[i + 1])
            argv = argv[:i] + argv[i + 2:]
        a = parse_args(argv)
        a.jit = jit
        print(json.dumps(WORKERS[a.worker](a)), flush=True)
        return
    Driver(parse_args(argv)).main()


if __name__ == "__main__":
    main()
