"""``make demo``: pretrain the tiny BERT of ``configs/bert_tiny_mlm.yaml`` on the bundled
WikiText-2 text and print what it trained and the metrics it reached."""
import os
import sys

from kplm.config import load_yaml
from kplm.errors import KplmError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    from kplm.commands import import_tensorflow_quietly
    import_tensorflow_quietly()
    os.chdir(ROOT)  # the config's data paths are relative to the repository
    config = load_yaml("configs/bert_tiny_mlm.yaml")
    from kplm.training.pretrain import pretrain
    try:
        metrics = pretrain(config, overwrite=True)
    except KplmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    run_dir = config["run_dir"]
    backbone = config["backbone"]
    print()
    print("=" * 72)
    print(f"Pretrained a {backbone['num_layers']}-layer, {backbone['hidden_dim']}-wide BERT encoder "
          f"({metrics['parameters']:,} parameters)")
    print(f"with masked LM on data/wikitext2/train.txt, vocabulary {metrics['vocabulary_size']:,} "
          f"WordPieces learned on the fly, {metrics['steps']} steps in {metrics['wall_seconds']:.0f} s "
          f"({metrics['tokens_per_second'] / 1000:.1f}k tokens/s).")
    print(f"  train loss        {metrics['first_logged_loss']:.3f} (first log) -> "
          f"{metrics['train']['loss']:.3f}")
    v = metrics["validation"]
    print(f"  validation loss   {v['loss']:.3f}   masked-token accuracy {v['accuracy']:.3f}   "
          f"perplexity {v['perplexity']:.1f}")
    print(f"Run directory: {run_dir}  (backbone + tokenizer for fine-tuning, checkpoints)")
    print(f"TensorBoard:   .venv/bin/tensorboard --logdir {run_dir}/tensorboard")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    sys.exit(main())
