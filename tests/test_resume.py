"""Exact resume: SIGTERM writes a checkpoint, SIGKILL loses nothing past the last one, and the
resumed run's losses and weights equal an uninterrupted run's; atomic checkpoints with fallback."""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from kplm.errors import KplmError
from kplm.training.pretrain import pretrain

from conftest import ROOT, TINY
from test_pretrain import read_scalars


@pytest.fixture(scope="module")
def resume_config(tmp_path_factory, tokenizer):
    """TINY with dropout (so the random generators' state matters), a fixed vocabulary (no
    tokenizer learning in every process), checkpoints every 10 steps, validation every 30."""
    base = tmp_path_factory.mktemp("resume")
    vocab = base / "vocab.txt"
    vocab.write_text("\n".join(tokenizer.tokens) + "\n")
    config = copy.deepcopy(TINY)
    config["tokenizer"] = {"name": "wordpiece", "vocabulary": str(vocab)}
    config["backbone"]["dropout"] = 0.1
    config["trainer"].update(steps=40, eval_every=20, checkpoint_every=10, log_every=5,
                             validation_steps=2)
    return base, config


def _uninterrupted(base, config):
    config = copy.deepcopy(config)
    config["run_dir"] = str(base / "uninterrupted")
    metrics = pretrain(config, echo=None, progress=False)
    return config["run_dir"], metrics


def _start(config_path, log_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "kplm", "pretrain", str(config_path)],
                            stdout=open(log_path, "a"), stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)


def _wait_for_checkpoint(process, run_dir, step, timeout=300):
    target = os.path.join(run_dir, "checkpoints", f"step-{step:08d}")
    deadline = time.time() + timeout
    while not os.path.isdir(target):
        assert process.poll() is None, "the run ended before the checkpoint"
        assert time.time() < deadline, f"no checkpoint {target} after {timeout} s"
        time.sleep(0.05)


def _steps(run_dir):
    return sorted(int(n.split("-")[1]) for n in os.listdir(os.path.join(run_dir, "checkpoints"))
                  if n.startswith("step-"))


def _weights(run_dir):
    from kplm.runs import load_backbone
    return [w.copy() for w in load_backbone(run_dir).get_weights()]


@pytest.mark.slow
def test_sigterm_and_sigkill_then_same_command_equals_uninterrupted_run(resume_config):
    base, config = resume_config
    reference_dir, reference = _uninterrupted(base, config)

    config = copy.deepcopy(config)
    config["run_dir"] = run_dir = str(base / "interrupted")
    config_path = base / "interrupted.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = base / "interrupted.log"

    # 1. SIGTERM after the step-10 checkpoint: a checkpoint at the current step, exit 143.
    process = _start(config_path, log)
    _wait_for_checkpoint(process, run_dir, 10)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    assert "SIGTERM at step" in log.read_text()
    terminated_at = _steps(run_dir)[-1]
    assert terminated_at >= 10 and not os.path.exists(os.path.join(run_dir, "metrics.json"))

    # 2. The same command resumes there; SIGKILL it after the step-30 checkpoint (mid-epoch:
    #    validation is every 20 steps), losing whatever it did past its last checkpoint.
    process = _start(config_path, log)
    _wait_for_checkpoint(process, run_dir, 30)
    process.kill()
    process.wait(timeout=60)
    assert f"(step {terminated_at}," in log.read_text()
    killed_at = _steps(run_dir)[-1]  # 30, or 40 where a fast CPU got there before the signal
    assert 30 <= killed_at <= 40 and not os.path.exists(os.path.join(run_dir, "metrics.json"))

    # 3. The same command again finishes the run.
    process = _start(config_path, log)
    assert process.wait(timeout=300) == 0, log.read_text()
    text = log.read_text()
    assert f"(step {killed_at}," in text
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["steps"] == 40 and metrics["resumed_from_step"] == killed_at

    # Weights, the final validation and the losses logged after the resume are the
    # uninterrupted run's.
    for got, want in zip(_weights(run_dir), _weights(reference_dir)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert metrics["validation"]["loss"] == pytest.approx(reference["validation"]["loss"],
                                                          rel=1e-5)
    want = dict(read_scalars(os.path.join(reference_dir, "tensorboard", "train"))["train/loss"])
    got = read_scalars(os.path.join(run_dir, "tensorboard", "train"))["train/loss"]
    after = [(s, v) for s, v in got if s > killed_at]
    assert [s for s, _ in after] == [s for s in sorted(want) if s > killed_at]
    for step, value in after:
        assert value == pytest.approx(want[step], rel=1e-4), step
    # TensorBoard continues the curves by optimizer step: every logged step, once per process
    # that reached it, and validation only at 20 and 40 (none at a signal's step).
    validation = read_scalars(os.path.join(run_dir, "tensorboard", "validation"))
    assert sorted({s for s, _ in validation["validation/loss"]}) == [20, 40]


def test_finished_run_dir_is_done_and_changed_config_names_the_key(resume_config, tmp_path):
    base, config = resume_config
    config = copy.deepcopy(config)
    config["run_dir"] = str(tmp_path / "run")
    config["trainer"].update(steps=4, eval_every=4, checkpoint_every=2, log_every=2,
                             warmup_steps=1)
    metrics = pretrain(config, echo=None, progress=False)
    assert pretrain(config, echo=None, progress=False) == json.loads(json.dumps(metrics))
    spelled = {**config, "run_dir": config["run_dir"] + os.sep}  # the same directory
    assert pretrain(spelled, echo=None, progress=False) == json.loads(json.dumps(metrics))
    config["trainer"]["steps"] = 8
    with pytest.raises(KplmError, match=r"already holds a finished run of another config "
                                        r"\(trainer.steps: 4 in the run, 8 now\)"):
        pretrain(config, echo=None, progress=False)
    config["trainer"]["steps"] = 4
    os.remove(os.path.join(config["run_dir"], "metrics.json"))  # as if killed before the end
    config["trainer"]["steps"] = 8
    with pytest.raises(KplmError, match=r"unfinished run with a different config "
                                        r"\(trainer.steps: 4 in the run, 8 now\)"):
        pretrain(config, echo=None, progress=False)


def _tiny_model(seed=0):
    import keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    from kplm.training.checkpoints import CheckpointDirectory, checkpoint_of
    model = _tiny_model()
    model.optimizer.build(model.trainable_variables)
    store = CheckpointDirectory(str(tmp_path), keep=3)
    saved = {}
    for step in (1, 2, 3, 4):
        for v in model.trainable_variables:
            v.assign(np.full(v.shape, float(step), "float32"))
        store.save(checkpoint_of(model), step, {"batches": step})
        saved[step] = [w.copy() for w in model.get_weights()]
    assert [s for s, _ in store.checkpoints()] == [4, 3, 2]  # newest 3 kept
    # a process killed mid-save leaves only a temporary directory: never a candidate
    os.makedirs(tmp_path / ".tmp-step-00000005-999999")
    (tmp_path / ".tmp-step-00000005-999999" / "ckpt.index").write_bytes(b"partial")
    # the newest is truncated, the one before lost its state file
    data = [n for n in os.listdir(tmp_path / "step-00000004") if n.startswith("ckpt.data")][0]
    path = tmp_path / "step-00000004" / data
    path.write_bytes(path.read_bytes()[:7])
    os.remove(tmp_path / "step-00000003" / "state.json")
    for v in model.trainable_variables:
        v.assign(np.zeros(v.shape, "float32"))
    with pytest.warns(RuntimeWarning, match="step-00000004 cannot be restored") as record:
        state = store.restore(checkpoint_of(model))
    assert any("step-00000003 cannot be restored" in str(w.message) for w in record)
    assert state["step"] == 2 and state["batches"] == 2
    for got, want in zip(model.get_weights(), saved[2]):
        np.testing.assert_array_equal(got, want)
    # the next save removes the dead process's leftovers
    store.save(checkpoint_of(model), 5, {"batches": 5})
    assert not os.path.exists(tmp_path / ".tmp-step-00000005-999999")


def _dataset(nan_batches=(), drop=()):
    """64 batches of 4 rows; ``nan_batches`` (0-based) hold a NaN target, so that their loss and
    gradients are non-finite on any CPU (a NaN *input* may give a finite loss on one CPU: a fused
    kernel maps it to 0); ``drop`` are left out."""
    import tensorflow as tf
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4, 3)).astype("float32")
    y = x.sum(-1, keepdims=True) * 0.5
    for i in nan_batches:
        y[i, 0, 0] = np.nan
    keep = [i for i in range(64) if i not in drop]
    return tf.data.Dataset.from_tensor_slices((x[keep], y[keep])).repeat()


def _plain_model(seed=0):
    """``_tiny_model`` without dropout: a skipped step still draws dropout masks, so only a
    deterministic model can equal a run that never saw the batch."""
    import keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, global_clipnorm=1.0), loss="mse",
                  metrics=["mae"])
    return model


def _assert_same_finite_weights(model, reference):
    for got, want in zip(model.get_weights(), reference.get_weights()):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_non_finite_gradients_skip_the_update_and_equal_a_run_without_the_batch(
        tmp_path, accumulation_steps):
    from kplm.training.loop import train
    # batch 13 is non-finite: the gate skips its update, so 30 steps read 31 batches
    model = _plain_model()
    with pytest.warns(RuntimeWarning, match=r"non-finite gradients at step 14: update skipped "
                                            r"\(1 in a row, trainer.max_skipped_steps=10\)"):
        result = train(model, _dataset(nan_batches=[13]), steps=30, eval_every=15,
                       checkpoint_dir=str(tmp_path / "a"), checkpoint_every=5,
                       accumulation_steps=accumulation_steps)
    assert result.step == 30 and result.recoveries == [] and result.skipped_steps == [14]
    assert int(model.optimizer.iterations) == 30  # Adam's bias correction did not advance
    reference = _plain_model()
    clean = train(reference, _dataset(drop=[13]), steps=30, eval_every=15,
                  checkpoint_dir=str(tmp_path / "b"), checkpoint_every=5,
                  accumulation_steps=accumulation_steps)
    assert clean.skipped_steps == [] and "step_loss" not in result.history
    _assert_same_finite_weights(model, reference)
    # the skipped batch stays out of the train metrics too (its metric update is undone)
    assert np.all(np.isfinite(result.history["mae"]))
    np.testing.assert_allclose(result.history["mae"], clean.history["mae"], rtol=1e-5)


def test_a_run_that_stopped_early_resumes_stopped(tmp_path):
    """A run ended early (patience, a callback) and killed before its end (the last evaluation,
    metrics.json) trains no further when run again: its stop is in the checkpoint."""
    import keras

    from kplm.training.loop import train

    class StopAtSecondInterval(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    model = _plain_model()
    stopped = train(model, _dataset(), steps=40, eval_every=5, checkpoint_dir=str(tmp_path),
                    checkpoint_every=5, callbacks=[StopAtSecondInterval()])
    assert stopped.step == 10
    weights = [w.copy() for w in model.get_weights()]
    again = _plain_model(seed=1)  # another process: the same command, without a stop this time
    resumed = train(again, _dataset(), steps=40, eval_every=5, checkpoint_dir=str(tmp_path),
                    checkpoint_every=5)
    assert resumed.resumed_from == 10 and resumed.step == 10
    for got, want in zip(again.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    # the flag does not leak into the next run of the same model object
    assert model.stop_training  # left by the callback
    fresh = train(model, _dataset(), steps=20, eval_every=5, checkpoint_dir=str(tmp_path / "b"),
                  checkpoint_every=5)
    assert fresh.step == 20 and int(model.optimizer.iterations) == 20


def test_too_many_skipped_steps_in_a_row_restore_the_last_good_checkpoint(tmp_path):
    from kplm.training.loop import train
    # batches 13-15 are non-finite; after 3 skips in a row (> 2) the guard goes back to the
    # checkpoint of step 10 and goes on with batch 16: batches 10-15 are left out
    model = _plain_model()
    with pytest.warns(RuntimeWarning, match="3 non-finite steps in a row at step 14: restored "
                                            "the checkpoint of step 10 and skipped the 6 batch"):
        result = train(model, _dataset(nan_batches=[13, 14, 15]), steps=30, eval_every=15,
                       checkpoint_dir=str(tmp_path / "a"), checkpoint_every=5,
                       max_skipped_steps=2)
    assert result.step == 30 and result.recoveries == [(14, 10)] and result.skipped_steps == []
    reference = _plain_model()
    train(reference, _dataset(drop=list(range(10, 16))), steps=30, eval_every=15,
          checkpoint_dir=str(tmp_path / "b"), checkpoint_every=5)
    _assert_same_finite_weights(model, reference)


def test_loss_guard_gives_up_after_max_recoveries_with_a_clear_message(tmp_path):
    from kplm.training.loop import TrainingError, train
    model = _tiny_model()
    with pytest.warns(RuntimeWarning):
        with pytest.raises(TrainingError, match=r"a loss of .* above trainer.max_loss=1e-06 at "
                                                r"step \d+, after 2 recoveries"):
            train(model, _dataset(), steps=30, eval_every=15, checkpoint_dir=str(tmp_path),
                  checkpoint_every=5, max_loss=1e-6, max_recoveries=2)


def test_pretrain_stops_with_a_clear_message_when_the_loss_keeps_spiking(resume_config, tmp_path):
    from kplm.training.loop import TrainingError
    base, config = resume_config
    config = copy.deepcopy(config)
    config["run_dir"] = str(tmp_path / "run")
    config["trainer"].update(steps=6, eval_every=6, checkpoint_every=2, log_every=2,
                             warmup_steps=1, max_loss=0.5, max_recoveries=1)
    with pytest.warns(RuntimeWarning, match="above trainer.max_loss=0.5 at step 1: restored the "
                                            "checkpoint of step 0"):
        with pytest.raises(TrainingError, match=r"at step 1, after 1 recoveries "
                                                r"\(trainer.max_recoveries=1\); stopped"):
            pretrain(config, echo=None, progress=False)
    assert not os.path.exists(os.path.join(config["run_dir"], "metrics.json"))


def test_python_fed_pipeline_resumes_by_skipping_and_sigterm_in_process(tmp_path):
    """A ``from_generator`` pipeline (csv, jsonl, conll, squad sources) cannot save its
    position: the resumed run re-reads and skips the batches done, and still equals the
    uninterrupted run."""
    import keras
    import tensorflow as tf

    from kplm.training.loop import Interrupted, train
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3)).astype("float32")

    def data():
        rows = tf.data.Dataset.from_generator(lambda: iter(range(40)),
                                              output_signature=tf.TensorSpec((), tf.int64))
        return rows.map(lambda i: (tf.gather(x, i), tf.reduce_sum(tf.gather(x, i))[None])) \
                   .repeat().batch(4)

    class Terminate(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    model = _tiny_model()
    with pytest.raises(Interrupted, match="SIGTERM at step 7") as stopped:
        train(model, data(), steps=20, eval_every=10, checkpoint_dir=str(tmp_path / "a"),
              callbacks=[Terminate()])
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    resumed = _tiny_model(seed=5)  # different initial weights: all restored
    result = train(resumed, data(), steps=20, eval_every=10, checkpoint_dir=str(tmp_path / "a"))
    assert result.resumed_from == 7 and result.step == 20  # checkpointed at once
    reference = _tiny_model()
    train(reference, data(), steps=20, eval_every=10, checkpoint_dir=str(tmp_path / "b"))
    for got, want in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# --- fine-tuning resumes too (csv source: a Python-fed pipeline, resumed by skipping) ---------

from kplm.hookspecs import hookimpl  # noqa: E402


def _terminate_at_step_class():
    import keras

    class TerminateAtStep(keras.callbacks.Callback):
        """Sends this process SIGTERM after optimizer step ``step`` (as a scheduler would)."""

        def __init__(self, step: int):
            super().__init__()
            self.step = step

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == self.step:
                os.kill(os.getpid(), signal.SIGTERM)

    return TerminateAtStep


@hookimpl
def register_callbacks(register):
    register("terminate_at_step", _terminate_at_step_class())


@pytest.mark.slow
def test_finetune_resumes_exactly_after_sigterm(tmp_path, tokenizer):
    import kplm.testing
    from kplm.training.finetune import finetune
    from kplm.training.loop import Interrupted
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokenizer.tokens) + "\n")
    sst = os.path.join(ROOT, "data", "sst2")
    columns = {"text": "sentence", "label": "label"}

    def config(name, callbacks=()):
        return {
            "run_dir": str(tmp_path / name), "seed": 0,
            "tokenizer": {"name": "wordpiece", "vocabulary": str(vocab)},
            "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                         "intermediate_dim": 64, "sequence_length": 32, "dropout": 0.1},
            "data": {"train": {"name": "csv", "paths": [os.path.join(sst, "train.tsv")],
                               "columns": columns},
                     "validation": {"name": "csv", "paths": [os.path.join(sst, "dev.tsv")],
                                    "columns": columns}},
            "head": {"name": "sequence_classification"},
            "trainer": {"steps": 8, "batch_size": 16, "learning_rate": 1e-3, "eval_every": 4,
                        "checkpoint_every": 2, "validation_steps": 2, "log_every": 2,
                        "steps_per_execution": 1},  # batch hooks after every step
            "callbacks": list(callbacks)}

    reference = finetune(config("reference"), echo=None, progress=False)
    module = sys.modules[__name__]
    with kplm.testing.registered(module):
        with pytest.raises(Interrupted, match="SIGTERM at step 5"):
            finetune(config("run", [{"name": "terminate_at_step", "step": 5}]), echo=None,
                     progress=False)
        metrics = finetune(config("run", [{"name": "terminate_at_step", "step": 5}]),
                           echo=None, progress=False)
    assert metrics["resumed_from_step"] == 5 and metrics["train_steps"] == 8
    assert metrics["best_step"] == reference["best_step"]
    assert metrics["validation"] == pytest.approx(reference["validation"], rel=1e-5)
    import h5py

    def read(path):  # every array of a weights file, in file order
        arrays = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, item: arrays.append(item[()])
                         if isinstance(item, h5py.Dataset) else None)
        return arrays

    got, want = (read(tmp_path / name / "model.weights.h5") for name in ("run", "reference"))
    assert len(got) == len(want) > 4
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_weights_are_never_checkpointed_and_train_ends_on_any_step_count(tmp_path):
    """A finite loss and gradient whose update overflows the weights: the checkpoint due at that
    step is not written; the guard goes back to the one before (the steps after the overflow
    are skipped by the gate meanwhile), and no checkpoint ever holds a non-finite weight."""
    import keras
    import tensorflow as tf

    from kplm.training.checkpoints import CheckpointDirectory
    from kplm.training.loop import train
    x = np.ones((40, 1, 3), "float32")
    y = np.zeros((40, 1, 1), "float32")  # a perfect fit from zero weights: no update ...
    y[9] = 1e15  # ... but batch 9 (step 10): loss 1e30, finite; the update makes weights inf
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    with pytest.warns(RuntimeWarning, match="non-finite weights at step 10: restored the "
                                            "checkpoint of step 5"):
        result = train(model, data, steps=23, eval_every=10, checkpoint_dir=str(tmp_path),
                       checkpoint_every=5, keep=5)
    assert result.step == 23 and result.recoveries == [(10, 5)]  # 23: a last short interval
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    steps = [s for s, _ in CheckpointDirectory(str(tmp_path)).checkpoints()]
    assert steps == [23, 20, 15, 10, 5] and not [n for n in os.listdir(tmp_path)
                                                  if n.startswith(".tmp-")]
