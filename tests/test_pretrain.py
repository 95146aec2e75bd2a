"""Pretraining end to end: loss goes down on real text, TensorBoard scalars, run directory."""
import copy
import glob
import json
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kplm.errors import KplmError
from kplm.runs import load_backbone, load_tokenizer
from kplm.training.pretrain import pretrain

from conftest import TINY, run_kplm


def read_scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    import tensorflow as tf
    out = {}
    for tag in acc.Tags()["tensors"]:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        out[tag] = [(s, v.item() if v.dtype.kind == "f" else v) for s, v in values]
    return out


def test_mlm_loss_goes_down_on_real_text(pretrained_run):
    metrics = pretrained_run["metrics"]
    assert metrics["steps"] == 60
    first, last = metrics["first_logged_loss"], metrics["train"]["loss"]
    assert last < first - 0.5, (first, last)
    assert metrics["validation"]["loss"] < np.log(metrics["vocabulary_size"])  # beats uniform
    assert 0 < metrics["validation"]["accuracy"] <= 1
    assert metrics["validation"]["perplexity"] == pytest.approx(
        np.exp(metrics["validation"]["loss"]), rel=0.05)


def test_tensorboard_has_named_scalars(pretrained_run):
    tb = os.path.join(pretrained_run["run_dir"], "tensorboard")
    train = read_scalars(os.path.join(tb, "train"))
    for tag in ("train/loss", "train/accuracy", "train/perplexity", "train/learning_rate",
                "train/tokens_per_second", "train/examples_per_second"):
        assert tag in train, sorted(train)
    assert [s for s, _ in train["train/loss"]] == list(range(5, 61, 5))
    assert b"masked_lm" in train["config"][0][1].ravel()[0]  # the resolved config, as text
    lr = dict(train["train/learning_rate"])
    assert lr[5] == pytest.approx(3e-3) and lr[60] == pytest.approx(0.0, abs=1e-9)
    validation = read_scalars(os.path.join(tb, "validation"))
    assert [s for s, _ in validation["validation/loss"]] == [30, 60]
    assert "validation/perplexity" in validation and "validation/accuracy" in validation


def test_run_directory_contract(pretrained_run):
    run_dir = pretrained_run["run_dir"]
    for name in ("config.yaml", "metrics.json", "backbone.json", "backbone.weights.h5",
                 "tokenizer/vocab.txt", "tokenizer/tokenizer.json",
                 "checkpoints/step-00000060/state.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert not glob.glob(os.path.join(run_dir, "**", "*.tmp*"), recursive=True)
    resolved = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    assert resolved["trainer"]["weight_decay"] == 0.01  # defaults written out
    checkpoints = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert checkpoints == ["step-00000000", "step-00000030", "step-00000060"]
    assert json.load(open(os.path.join(run_dir, "metrics.json")))["steps"] == 60


def test_saved_backbone_and_tokenizer_reload(pretrained_run):
    run_dir = pretrained_run["run_dir"]
    backbone = load_backbone(run_dir)
    tokenizer = load_tokenizer(run_dir)
    assert backbone.vocabulary_size == len(tokenizer.tokens)
    ids = np.array([tokenizer.build()(["the lobster is blue"])[0] + [0] * 3], "int32")
    inputs = {"token_ids": ids, "segment_ids": np.zeros_like(ids),
              "padding_mask": (ids > 0).astype("int32")}
    again = load_backbone(run_dir)
    np.testing.assert_allclose(backbone(inputs)["sequence_output"],
                               again(inputs)["sequence_output"], atol=1e-6)


def test_a_finished_run_is_done_and_another_config_refused(pretrained_run):
    """The same command on its finished run (as after a kill at its very end) trains nothing
    and answers the run's metrics; another config there is refused, naming the difference."""
    config = copy.deepcopy(pretrained_run["config"])
    run_dir = config["run_dir"]
    before = {n: os.path.getmtime(os.path.join(run_dir, n)) for n in os.listdir(run_dir)}
    lines = []
    metrics = pretrain(config, echo=lines.append, progress=False)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        assert metrics == json.load(f)
    assert lines == [f"run_dir {run_dir} already holds this run, finished: nothing to do (its "
                     "metrics: metrics.json; --overwrite trains it again)"]
    assert {n: os.path.getmtime(os.path.join(run_dir, n)) for n in os.listdir(run_dir)} == before
    config["trainer"] = {**config["trainer"], "learning_rate": 0.5}
    with pytest.raises(KplmError, match=r"already holds a finished run of another config "
                                        r"\(trainer.learning_rate: .* in the run, 0.5 now\)"):
        pretrain(config, echo=None, progress=False)


def test_too_little_text_is_refused(tmp_path, tiny_config):
    small = tmp_path / "small.txt"
    small.write_text("just a few words\n")
    tiny_config["data"] = {"train": {"name": "text_files", "paths": [str(small)]}}
    with pytest.raises(KplmError, match="data.train: too little text"):
        pretrain(tiny_config, echo=None, progress=False)


def _write_config(tmp_path, **trainer):
    config = json.loads(json.dumps(TINY))
    config["run_dir"] = str(tmp_path / "run")
    config["trainer"].update(trainer)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config["run_dir"]


@pytest.mark.slow
def test_cli_pretrain_with_clirunner(tmp_path):
    from kplm.cli import cli
    path, run_dir = _write_config(tmp_path, steps=10, eval_every=10, log_every=5)
    result = CliRunner().invoke(cli, ["pretrain", str(path), "--set", "trainer.batch_size=8"])
    assert result.exit_code == 0, result.output
    assert "step 10/10" in result.output and "validation at step 10" in result.output
    assert yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["trainer"]["batch_size"] == 8


@pytest.mark.slow
def test_cli_pretrain_as_subprocess(tmp_path):
    path, run_dir = _write_config(tmp_path, steps=10, eval_every=5, log_every=5)
    result = run_kplm("pretrain", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["validation"]["loss"] > 0
    assert os.path.exists(os.path.join(run_dir, "backbone.weights.h5"))
    again = run_kplm("pretrain", str(path), "--overwrite", "--set", "trainer.steps=5")
    assert again.returncode == 0, again.stderr
    assert json.load(open(os.path.join(run_dir, "metrics.json")))["steps"] == 5


@pytest.mark.slow
def test_mixed_precision_and_xla_switches_run_and_leave_no_global_state(tiny_config):
    import keras
    tiny_config["trainer"].update({"steps": 4, "eval_every": 4, "log_every": 2, "warmup_steps": 1,
                                   "validation_steps": 1, "mixed_precision": "bfloat16",
                                   "jit_compile": True})
    metrics = pretrain(tiny_config, echo=None, progress=False)
    assert np.isfinite(metrics["train"]["loss"]) and metrics["steps"] == 4
    backbone = load_backbone(tiny_config["run_dir"])
    assert backbone.dtype_policy.name == "mixed_bfloat16"  # the run's choice is saved with it
    assert keras.mixed_precision.global_policy().name == "float32"  # and not left behind


def test_mixed_precision_auto_follows_the_probe_and_records_its_choice(tiny_config, monkeypatch):
    """``auto`` takes the probe's answer (here forced: the real one depends on the CPU), prints
    it, saves the backbone with that policy and records it; config.yaml keeps ``auto``."""
    import keras

    from kplm.training import precision
    monkeypatch.setattr(precision, "probe", lambda strategy=None, **_: (
        "bfloat16", {"float32": 0.002, "bfloat16": 0.001}))
    tiny_config["trainer"].update({"steps": 2, "eval_every": 2, "log_every": 1,
                                   "warmup_steps": 1, "validation_steps": 1,
                                   "mixed_precision": "auto"})
    lines = []
    pretrain(tiny_config, echo=lines.append, progress=False)
    run_dir = tiny_config["run_dir"]
    assert any(line.startswith("mixed_precision auto: bfloat16 (matmul probe: float32 2.0 ms, "
                               "bfloat16 1.0 ms)") for line in lines), lines
    assert load_backbone(run_dir).dtype_policy.name == "mixed_bfloat16"
    recorded = json.load(open(os.path.join(run_dir, "precision.json")))
    assert recorded["mixed_precision"] == "bfloat16"
    saved = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    assert saved["trainer"]["mixed_precision"] == "auto"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_mixed_precision_auto_resumes_with_the_recorded_choice(tmp_path, monkeypatch):
    from kplm.training import precision

    def probed_again(*args, **kwargs):
        raise AssertionError("a resumed run must not probe again")
    monkeypatch.setattr(precision, "probe", probed_again)
    recorded = tmp_path / "precision.json"
    recorded.write_text('{"mixed_precision": "bfloat16"}')
    lines = []
    assert precision.resolve("auto", None, str(tmp_path), resuming=True, write=True,
                             echo=lines.append) == "bfloat16"
    assert lines == ["mixed_precision auto: bfloat16 (chosen when the run started)"]
    recorded.write_text('{"mixed_precision": "float32"}')
    assert precision.resolve("auto", None, str(tmp_path), resuming=True, write=True,
                             echo=None) is None
    for bad in ('{"mixed_precision": "int8"}', "[1]", "{not json"):
        recorded.write_text(bad)
        with pytest.raises(KplmError) as error:
            precision.resolve("auto", None, str(tmp_path), resuming=True, write=True, echo=None)
        assert "precision.json" in str(error.value) and "\n" not in str(error.value)
    assert precision.resolve("float16", None, str(tmp_path), resuming=True, write=True,
                             echo=None) == "float16"


def test_mixed_precision_auto_decides_on_the_default_strategy(tmp_path):
    """The real probe, on the strategy a single-device run gets (it has no device list)."""
    import tensorflow as tf

    from kplm.training import precision
    lines = []
    choice = precision.resolve("auto", tf.distribute.get_strategy(), str(tmp_path),
                               resuming=False, write=True, echo=lines.append)
    assert choice in (None, "bfloat16")
    recorded = json.load(open(tmp_path / "precision.json"))
    assert recorded["mixed_precision"] == (choice or "float32")
    assert lines and lines[0].startswith(f"mixed_precision auto: {choice or 'float32'} (")
