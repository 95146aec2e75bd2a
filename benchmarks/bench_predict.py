"""Prediction speed of finished fine-tuning runs, e.g. a distilled student against its teacher.

    .venv/bin/python benchmarks/bench_predict.py runs/minilm_sst2 runs/sst2_student_2x128 \\
        --data data/sst2/dev.tsv

Each run's head reads ``--data`` with the run's own validation source (its columns, so the
text is what the run was evaluated on), then ``FinetunedRun.predict`` answers every row,
``--rounds`` times after one warm-up call; the best round counts (rows per second, end to end:
tokenizing, packing, sorting by length, the model, post-processing). ``model`` times the model
alone on the same rows padded to the run's sequence length (``predict_on_batch``). The last
column is each run's speed over the first run's. A JSON line per run goes to ``--out``.
"""
import argparse
import json
import os
import time


def measure(run_dir, data, rounds, batch_size):
    from kplm.runs import FinetunedRun
    run = FinetunedRun(run_dir)
    source = run.source([data])
    fields = [run.head.text_field] + ([run.head.pair_field]
                                      if getattr(run.head, "pair_field", None) else [])
    rows = [{f: ex[f].decode() for f in fields} for ex in source.build().as_numpy_iterator()]
    run.predict(rows, batch_size=batch_size)  # warm-up: traces the tokenizer and the model
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run.predict(rows, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)

    import tensorflow as tf
    texts = tf.data.Dataset.from_tensor_slices({f: [r[f] for r in rows] for f in fields})
    batches = list(run.head.dataset(texts, run.tokenizer, batch_size=batch_size,
                                    sequence_length=run.sequence_length, training=False,
                                    with_labels=False))
    for x in batches[:1]:
        run.model.predict_on_batch(x)
    alone = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for x in batches:
            run.model.predict_on_batch(x)
        alone = min(alone, time.perf_counter() - start)
    return {"run": run_dir, "rows": len(rows), "parameters": int(run.model.count_params()),
            "rows_per_s": len(rows) / best, "model_rows_per_s": len(rows) / alone}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="finished fine-tuning run directories")
    parser.add_argument("--data", required=True, help="a file the runs' validation source reads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="append one JSON line per run")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = [measure(r, args.data, args.rounds, args.batch_size) for r in args.runs]
    first = results[0]
    print("| run | parameters | predict rows/s | model alone rows/s | predict vs first |")
    print("|---|---|---|---|---|")
    for r in results:
        r["speedup"] = r["rows_per_s"] / first["rows_per_s"]
        r["model_speedup"] = r["model_rows_per_s"] / first["model_rows_per_s"]
        print(f"| {r['run']} | {r['parameters']:,} | {r['rows_per_s']:,.0f} | "
              f"{r['model_rows_per_s']:,.0f} | {r['speedup']:.1f}x |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps({"benchmark": "predict", "date": time.strftime("%Y-%m-%d"),
                                    "data": args.data, "batch_size": args.batch_size, **r})
                        + "\n")


if __name__ == "__main__":
    main()
