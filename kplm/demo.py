"""``make demo``: pretrain the tiny BERT of ``configs/bert_tiny_demo.yaml`` on the bundled
text, fine-tune it on the bundled SST-2 sentences, fine-tune the same shape from random
initialisation the same way, and print both side by side."""
import os
import sys

from kplm.config import load_yaml
from kplm.errors import KplmError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    """Pretrain the tiny BERT, fine-tune it on SST-2 sentiment, print what was reached."""
    # TensorFlow's C++ warnings (input-pipeline notes) are not the demo's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kplm.tf_import import import_tensorflow_quietly
    import_tensorflow_quietly()
    os.chdir(ROOT)  # the configs' data paths are relative to the repository
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain
    pretrain_config = load_yaml("configs/bert_tiny_demo.yaml")
    classify_config = load_yaml("configs/sst2_classification.yaml")
    classify_config["init_from"] = pretrain_config["run_dir"]
    scratch_config = from_scratch(classify_config, pretrain_config)
    try:
        metrics = pretrain(pretrain_config, overwrite=True)
        print()
        classified = finetune(classify_config, overwrite=True)
        print()
        scratch = finetune(scratch_config, overwrite=True)
    except KplmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    backbone = pretrain_config["backbone"]
    v = metrics["validation"]
    c = classified["validation"]
    majority = classified["baseline"]
    print()
    print("=" * 76)
    print(f"1. Pretrained a {backbone['num_layers']}-layer, {backbone['hidden_dim']}-wide BERT encoder "
          f"({metrics['parameters']:,} parameters) with masked LM")
    print(f"   on data/wikitext2/train.txt + the SST-2 training sentences: "
          f"{metrics['vocabulary_size']:,} WordPieces learned on the "
          f"fly, {metrics['steps']} steps in {metrics['wall_seconds']:.0f} s "
          f"({metrics['tokens_per_second'] / 1000:.1f}k tokens/s).")
    print(f"   train loss {metrics['first_logged_loss']:.3f} (first log) -> "
          f"{metrics['train']['loss']:.3f};  validation loss {v['loss']:.3f}, masked-token "
          f"accuracy {v['accuracy']:.3f}, perplexity {v['perplexity']:.1f}")
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
          "(docs/recipes.md: how this recipe was chosen)")
    print(f"Runs: {pretrain_config['run_dir']}, {classify_config['run_dir']}, "
          f"{scratch_config['run_dir']}")
    print("TensorBoard: .venv/bin/tensorboard --logdir runs/")
    print(f"Try:  echo 'a warm , funny film' | .venv/bin/kplm predict {classify_config['run_dir']}")
    print("=" * 76)
    return 0


def from_scratch(classify_config, pretrain_config):
    """The fine-tuning config ``classify_config`` with its ``init_from`` replaced by the
    pretraining run's tokenizer and a new backbone of the same shape: what pretraining is
    measured against.

    Example:
    >>> config = from_scratch({"run_dir": "runs/sst2", "init_from": "runs/pre", "head": {}},
    ...                       {"run_dir": "runs/pre", "backbone": {"name": "encoder"}})
    >>> config["run_dir"], config["backbone"], config["tokenizer"]["vocabulary"]
    ('runs/sst2_random_init', {'name': 'encoder'}, 'runs/pre/tokenizer/vocab.txt')
    """
    config = {k: v for k, v in classify_config.items() if k != "init_from"}
    config["run_dir"] = classify_config["run_dir"] + "_random_init"
    config["backbone"] = dict(pretrain_config["backbone"])
    tokenizer = {k: v for k, v in pretrain_config.get("tokenizer", {"name": "wordpiece"}).items()
                 if k not in ("vocabulary_size", "max_training_lines")}
    tokenizer["vocabulary"] = os.path.join(pretrain_config["run_dir"], "tokenizer", "vocab.txt")
    config["tokenizer"] = tokenizer
    return config


if __name__ == "__main__":
    sys.exit(main())
