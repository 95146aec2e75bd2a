#!/usr/bin/env python
"""Causal-LM throughput: kplm's ``CausalLM(Decoder)`` vs keras_hub's ``GPT2CausalLM(GPT2Backbone)``
in training, and kplm's generation with and without the key/value cache.

Parts:

1. ``train``: both models on the same shape (tiny: 2 layers x 128 hidden, 2 heads, FFN 512,
   sequence 128, batch 32, vocabulary 8000, dropout 0.1, AdamW(1e-4)), each with its own
   compile defaults (kplm: weighted-mean cross-entropy, accuracy + perplexity; keras_hub:
   cross-entropy, weighted accuracy), trained with ``model.fit`` on the same pre-made random
   batches (in-memory tensors, cycled; no pipeline work). Both models live in one process;
   after one untimed fit each (tracing, warm-up), ``--rounds`` rounds alternate them (the order
   flips every round), each fit timing at least ``--seconds`` seconds and ``--min-steps`` steps
   after dropping its first step. Reports the median tokens/s over rounds (per wall-clock second
   and per CPU-second of the process) and the ratios kplm / keras_hub.
2. ``generate``: kplm's model (same shape) generates greedily from a batch of ``--gen-batch``
   4-token prompts to total lengths 32, 64 and 128 (no early stop), with the cache
   (``call_with_cache``: one new position per step) and without it (the whole prefix recomputed
   per step). The first call of each (length, mode) traces and is not timed; then ``--reps``
   calls are. Reports generated tokens/s and wall/CPU seconds per batch; the cached cost should
   grow about linearly with the length, the uncached one about quadratically.

Usage::

    python benchmarks/bench_clm.py                  # `make bench-clm`: ~3-4 minutes on 2 cores
    python benchmarks/bench_clm.py --quick          # 2 rounds of 2 s, 1 rep: ~2 minutes
    python benchmarks/bench_clm.py --rounds 5 --seconds 6 --out clm.jsonl

One JSON line per measurement goes to stdout (or ``--out FILE``); progress and the summary table
go to stderr. Single-process numbers on a shared 2-core machine move by +-10 %: compare the two
systems within one run, not across runs.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LAYERS, HIDDEN, HEADS, FFN, SEQ, BATCH, VOCAB = 2, 128, 2, 512, 128, 32, 8000
N_BATCHES = 16  # distinct pre-made batches, cycled
PROMPT = 4  # prompt tokens per row in the generation part
SYSTEMS = ("kplm", "keras_hub")


def log(msg, t0=[time.perf_counter()]):  # noqa: B006  (start time of the run)
    sys.stderr.write(f"[{time.perf_counter() - t0[0]:6.0f}s] {msg}\n")
    sys.stderr.flush()


def build(system):
    import keras
    keras.utils.set_random_seed(0)
    optimizer = keras.optimizers.AdamW(1e-4)
    if system == "kplm":
        from kplm.models.causal_lm import CausalLM
        from kplm.models.decoder import Decoder
        model = CausalLM(Decoder(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                                 hidden_dim=HIDDEN, intermediate_dim=FFN, sequence_length=SEQ,
                                 dropout=0.1))
        model.compile(optimizer=optimizer)  # kplm's defaults: loss, accuracy, perplexity
    else:
        import keras_hub
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=HIDDEN,
            intermediate_dim=FFN, dropout=0.1, max_sequence_length=SEQ)
        model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        model.compile(optimizer=optimizer)  # keras_hub's defaults: loss, weighted accuracy
    return model


def batches():
    """The same random next-token batches for both systems: ``N_BATCHES`` pre-made batches in
    memory, cycled (no pipeline work)."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    rows = rng.integers(5, VOCAB, size=(N_BATCHES, BATCH, SEQ + 1), dtype=np.int32)
    x = {"token_ids": rows[..., :-1], "padding_mask": np.ones_like(rows[..., :-1])}
    y, w = rows[..., 1:], np.ones(rows[..., 1:].shape, np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y, w)).repeat().prefetch(tf.data.AUTOTUNE)


def timed_fit(model, ds, seconds, min_steps, skip=1):
    """Fit until ``seconds`` and ``min_steps`` steps have passed after the first ``skip`` steps
    (the first includes creating the data iterator). Returns (timed steps, wall seconds, CPU
    seconds of this process, all its threads)."""
    import keras

    class Timer(keras.callbacks.Callback):
        steps, start = 0, None

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == skip:
                self.start, self.cpu = time.perf_counter(), time.process_time()
            elif self.start is not None and self.steps - skip >= min_steps and \
                    time.perf_counter() - self.start >= seconds:
                self.elapsed = time.perf_counter() - self.start
                self.cpu = time.process_time() - self.cpu
                self.model.stop_training = True

    timer = Timer()
    model.fit(ds, epochs=1, steps_per_epoch=10 ** 9, verbose=0, callbacks=[timer])
    return timer.steps - skip, timer.elapsed, timer.cpu


def bench_train(a, emit):
    ds = batches()
    models = {}
    for system in SYSTEMS:
        t = time.perf_counter()
        models[system] = build(system)
        timed_fit(models[system], ds, 2.0, 2)  # trace + warm up, not reported
        log(f"{system}: built and warmed up in {time.perf_counter() - t:.1f} s "
            f"({models[system].count_params():,} parameters)")
    rates = {s: [] for s in SYSTEMS}
    cpu_rates = {s: [] for s in SYSTEMS}
    for r in range(a.rounds):
        order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
        for system in order:
            steps, secs, cpu = timed_fit(models[system], ds, a.seconds, a.min_steps)
            tokens = steps * BATCH * SEQ
            rates[system].append(tokens / secs)
            cpu_rates[system].append(tokens / cpu)
            emit({"kind": "train", "system": system, "round": r, "steps": steps,
                  "seconds": secs, "cpu_seconds": cpu, "tokens_per_s": tokens / secs,
                  "tokens_per_cpu_s": tokens / cpu, "loadavg": os.getloadavg()})
            log(f"round {r + 1} {system:9s} {tokens / secs / 1e3:7.2f}k tok/s, "
                f"{tokens / cpu / 1e3:6.2f}k tok per CPU-s ({steps} steps)")
    return rates, cpu_rates


def bench_generate(a, emit):
    import numpy as np
    model = build("kplm")
    rng = np.random.default_rng(1)
    results = {}
    modes = [True, False] + (["xla"] if a.xla else [])  # "xla": cached, compiled with XLA
    for length in a.lengths:
        ids = np.zeros((a.gen_batch, length), np.int32)
        ids[:, :PROMPT] = rng.integers(5, VOCAB, size=(a.gen_batch, PROMPT))
        mask = np.zeros_like(ids)
        mask[:, :PROMPT] = 1
        for cache in modes:
            model.generate_jit_compile = cache == "xla"
            model.set_sampler("greedy", use_cache=bool(cache))
            prompt = {"token_ids": ids, "padding_mask": mask}
            t = time.perf_counter()
            first = model.generate(dict(prompt), stop_token_ids=None)["token_ids"]
            trace_s = time.perf_counter() - t
            times, cpus = [], []
            for _ in range(a.reps):
                t, c = time.perf_counter(), time.process_time()
                out = model.generate(dict(prompt), stop_token_ids=None)["token_ids"]
                times.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            assert np.array_equal(out, first)
            secs, cpu = statistics.median(times), statistics.median(cpus)
            new_tokens = a.gen_batch * (length - PROMPT)
            results[(length, cache)] = (secs, cpu, out)
            emit({"kind": "generate", "length": length, "cache": cache, "batch": a.gen_batch,
                  "prompt": PROMPT, "seconds": secs, "seconds_all": times, "cpu_seconds": cpu,
                  "cpu_seconds_all": cpus, "first_call_s": trace_s,
                  "tokens_per_s": new_tokens / secs, "loadavg": os.getloadavg()})
            log(f"generate length {length:3d} cache={cache!s:5s} {secs:6.2f} s per batch "
                f"({cpu:.2f} CPU-s), {new_tokens / secs:8.0f} new tok/s "
                f"(first call {trace_s:.1f} s)")
        same = np.array_equal(results[(length, True)][2], results[(length, False)][2])
        emit({"kind": "generate_check", "length": length, "cached_equals_uncached": same})
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per fit (at least)")
    p.add_argument("--min-steps", type=int, default=8, help="timed steps per fit (at least)")
    p.add_argument("--reps", type=int, default=3, help="timed generate calls per case")
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--lengths", default="32,64,128")
    p.add_argument("--quick", action="store_true", help="2 rounds of 2 s, 1 rep")
    p.add_argument("--xla", action="store_true",
                   help="also time cached generation compiled with XLA")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-generate", action="store_true")
    p.add_argument("--out", help="write the JSON lines here instead of stdout")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.seconds, a.min_steps, a.reps = 2, 2.0, 3, 1
    a.lengths = [int(n) for n in a.lengths.split(",")]
    if max(a.lengths) > SEQ or min(a.lengths) <= PROMPT:
        sys.exit(f"--lengths must be within ({PROMPT}, {SEQ}]")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    out = open(a.out, "w") if a.out else sys.stdout

    def emit(record):
        out.write(json.dumps(record) + "\n")
        out.flush()

    import keras
    import keras_hub
    import tensorflow as tf
    emit({"kind": "setup", "tf": tf.__version__, "keras": keras.__version__,
          "keras_hub": keras_hub.__version__, "cpus": os.cpu_count(),
          "loadavg": os.getloadavg(), "shape": {"layers": LAYERS, "hidden": HIDDEN,
                                                "heads": HEADS, "ffn": FFN, "seq": SEQ,
                                                "batch": BATCH, "vocab": VOCAB}})
    lines = [""]

    def med(v):
        return statistics.median(v)

    def spread(v):
        return f"±{(max(v) - min(v)) / 2 / med(v) * 100:.0f}%"
    if not a.no_train:
        rates, cpu_rates = bench_train(a, emit)
        ratio = med(rates["kplm"]) / med(rates["keras_hub"])
        cpu_ratio = med(cpu_rates["kplm"]) / med(cpu_rates["keras_hub"])
        emit({"kind": "summary_train",
              "median_tokens_per_s": {s: med(v) for s, v in rates.items()},
              "median_tokens_per_cpu_s": {s: med(v) for s, v in cpu_rates.items()},
              "ratio": ratio, "ratio_cpu": cpu_ratio})
        lines += [f"training, {LAYERS} x {HIDDEN}, FFN {FFN}, seq {SEQ}, batch {BATCH}, "
                  f"vocab {VOCAB} ({a.rounds} rounds x >= {a.seconds:g} s, >= {a.min_steps} "
                  "steps):",
                  f"  {'':28s} {'tok/s (wall)':>16s} {'tok per CPU-s':>16s}"]
        for system, label in (("kplm", "kplm CausalLM(Decoder)"),
                              ("keras_hub", "keras_hub GPT2CausalLM")):
            lines.append(f"  {label:28s} {med(rates[system]) / 1e3:8.2f}k "
                         f"{spread(rates[system]):>5s} {med(cpu_rates[system]) / 1e3:9.2f}k "
                         f"{spread(cpu_rates[system]):>5s}")
        lines += [f"  {'ratio kplm / keras_hub':28s} {ratio:9.3f} {cpu_ratio:16.3f}", ""]
    if not a.no_generate:
        results = bench_generate(a, emit)
        base = a.lengths[0]
        lines.append(f"greedy generation, batch {a.gen_batch}, {PROMPT}-token prompts, median of "
                     f"{a.reps} (s: wall seconds per batch; cpu: CPU seconds; x: CPU relative to "
                     f"length {base}):")
        lines.append(f"  {'length':>6s} | {'cached s':>8s} {'cpu':>6s} {'x':>5s} {'tok/s':>6s} | "
                     f"{'uncached s':>10s} {'cpu':>6s} {'x':>5s} {'tok/s':>6s} | {'speed-up':>8s}")
        for n in a.lengths:
            (cs, cc, _), (us, uc, _) = results[(n, True)], results[(n, False)]
            new = a.gen_batch * (n - PROMPT)
            lines.append(f"  {n:6d} | {cs:8.3f} {cc:6.2f} {cc / results[(base, True)][1]:5.2f} "
                         f"{new / cs:6.0f} | {us:10.3f} {uc:6.2f} "
                         f"{uc / results[(base, False)][1]:5.2f} {new / us:6.0f} | "
                         f"{uc / cc:7.1f}x")
        same = all((results[(n, True)][2] == results[(n, False)][2]).all() for n in a.lengths)
        lines.append(f"  (cached tokens equal uncached ones at every length: {same})")
        if a.xla:
            lines.append("  cached with XLA (generate_jit_compile=True): " + ", ".join(
                f"length {n}: {results[(n, 'xla')][0]:.3f} s, {results[(n, 'xla')][1]:.2f} CPU-s "
                f"(x{results[(n, 'xla')][1] / results[(base, 'xla')][1]:.2f})"
                for n in a.lengths))
    lines.append(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    sys.stderr.write("\n".join(lines) + "\n")
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
