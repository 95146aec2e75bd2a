"""The ELECTRA plugin package (plugins/kplm-electra), pip-installed like a third party's: listed by
``kplm plugins``, and ``kplm pretrain`` with ``objective: {name: electra}`` writes a backbone that
``kplm finetune`` starts from with the plugin no longer installed. (The package's own tests, in
plugins/kplm-electra/tests, check the objective itself, its options included.)
"""
import json
import math
import os

import pytest
import yaml

from kplm.testing import tiny_vocabulary
from test_example_plugin import ROOT, TRAIN, kplm, pip_install, plugins_json

ELECTRA = os.path.join(ROOT, "plugins", "kplm-electra")
VALIDATION = os.path.join(ROOT, "data", "wikitext2", "validation.txt")
SST2 = os.path.join(ROOT, "data", "sst2", "train.tsv")


@pytest.fixture(scope="module")
def electra_site(tmp_path_factory):
    return pip_install(ELECTRA, tmp_path_factory, "kplm-electra")


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tiny_vocabulary()) + "\n", encoding="utf-8")
    return str(path)


def pretrain_config(directory, vocabulary, **objective):
    config = {
        "run_dir": os.path.join(directory, "electra"), "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary": vocabulary},
        "data": {"train": {"name": "text_files", "paths": [TRAIN]},
                 "validation": {"name": "text_files", "paths": [VALIDATION]}},
        "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                     "intermediate_dim": 64, "sequence_length": 32, "dropout": 0.0},
        "objective": {"name": "electra", "shuffle_buffer": 200, **objective},
        "trainer": {"steps": 8, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 1,
                    "eval_every": 8, "validation_steps": 2, "log_every": 4},
    }
    path = os.path.join(directory, "electra.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path, config["run_dir"]


def test_plugins_lists_electra(electra_site):
    listing = plugins_json([electra_site])
    assert listing["failed"] == []
    rows = {row["name"]: row for row in listing["plugins"]}
    assert rows["electra"] == {
        "name": "electra", "distribution": "kplm-electra", "version": "0.1.0",
        "builtin": False, "components": {"objective": ["electra"]}, "adds_commands": False}


@pytest.mark.slow
def test_pretrain_with_electra_then_finetune_from_it(electra_site, vocabulary, tmp_path):
    config, run_dir = pretrain_config(str(tmp_path), vocabulary)
    result = kplm("pretrain", config, sites=[electra_site])
    assert result.returncode == 0, result.stderr
    assert "with electra for 8 steps" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for split in ("train", "validation"):
        assert set(summary[split]) == {"loss", "generator_loss", "discriminator_loss",
                                       "generator_accuracy", "discriminator_accuracy",
                                       "replaced_share"}, summary
        values = summary[split]
        assert values["loss"] == pytest.approx(
            values["generator_loss"] + 50 * values["discriminator_loss"], rel=1e-3)
        assert 0.05 < values["replaced_share"] < 0.2  # 15 % chosen, most of them replaced
        assert values["discriminator_loss"] < math.log(2)  # it learned something already
    resolved = yaml.safe_load(open(os.path.join(run_dir, "config.yaml"), encoding="utf-8"))
    assert resolved["objective"]["discriminator_weight"] == 50.0  # defaults written out
    # The run's backbone is the discriminator, a plain kplm Encoder: nothing of the plugin in it.
    saved = json.load(open(os.path.join(run_dir, "backbone.json"), encoding="utf-8"))
    assert saved["class_name"] == "Encoder" and "kplm_electra" not in json.dumps(saved)

    # Fine-tune from it without the plugin, the backbone frozen: its weights must be the run's.
    train = tmp_path / "sst2.tsv"
    with open(SST2, encoding="utf-8") as f:
        train.write_text("".join(next(f) for _ in range(161)), encoding="utf-8")
    finetune = {
        "run_dir": str(tmp_path / "sst2"), "seed": 0, "init_from": run_dir,
        "data": {"train": {"name": "csv", "paths": [str(train)],
                           "columns": {"text": "sentence", "label": "label"}}},
        "head": {"name": "sequence_classification"},
        "finetune": {"freeze_backbone": True},
        "trainer": {"steps": 4, "batch_size": 16, "eval_every": 4, "log_every": 2},
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(finetune), encoding="utf-8")
    tuned = kplm("finetune", str(path))
    assert tuned.returncode == 0, tuned.stderr
    assert _token_embedding(os.path.join(run_dir, "backbone.weights.h5")).tolist() == \
        _token_embedding(os.path.join(str(tmp_path / "sst2"), "model.weights.h5")).tolist()


def _token_embedding(weights_file):
    """The token embedding table in a Keras weights file (the only [vocabulary, 32] array)."""
    import h5py
    found = []
    with h5py.File(weights_file, "r") as f:
        f.visititems(lambda name, item: found.append(item[()]) if isinstance(item, h5py.Dataset)
                     and item.shape == (len(tiny_vocabulary()), 32) else None)
    assert len(found) == 1, weights_file
    return found[0]
