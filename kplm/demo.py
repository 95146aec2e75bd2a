"""``make demo``: pretrain the tiny BERT of ``configs/bert_tiny_mlm.yaml`` on the bundled
WikiText-2 text, fine-tune it on the bundled SST-2 sentences, print what was reached."""
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
    pretrain_config = load_yaml("configs/bert_tiny_mlm.yaml")
    classify_config = load_yaml("configs/sst2_classification.yaml")
    try:
        metrics = pretrain(pretrain_config, overwrite=True)
        print()
        classified = finetune(classify_config, overwrite=True)
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
    print(f"   on data/wikitext2/train.txt: {metrics['vocabulary_size']:,} WordPieces learned on the "
          f"fly, {metrics['steps']} steps in {metrics['wall_seconds']:.0f} s "
          f"({metrics['tokens_per_second'] / 1000:.1f}k tokens/s).")
    print(f"   train loss {metrics['first_logged_loss']:.3f} (first log) -> "
          f"{metrics['train']['loss']:.3f};  validation loss {v['loss']:.3f}, masked-token "
          f"accuracy {v['accuracy']:.3f}, perplexity {v['perplexity']:.1f}")
    print(f"2. Fine-tuned it as a sentiment classifier on data/sst2/train.tsv "
          f"({classified['train_steps']} steps, {classified['wall_seconds']:.0f} s).")
    print(f"   SST-2 dev: accuracy {c['accuracy']:.3f}  macro-F1 {c['macro_f1']:.3f}  "
          f"MCC {c['matthews_correlation']:.3f}  (majority baseline {majority['accuracy']:.3f})")
    print(f"Runs: {pretrain_config['run_dir']}, {classify_config['run_dir']}")
    print("TensorBoard: .venv/bin/tensorboard --logdir runs/")
    print(f"Try:  echo 'a warm , funny film' | .venv/bin/kplm predict {classify_config['run_dir']}")
    print("=" * 76)
    return 0


if __name__ == "__main__":
    sys.exit(main())
