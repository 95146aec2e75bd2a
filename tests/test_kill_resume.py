"""SIGKILL at any moment, then the same command: everything a user sees equals the run that was
never stopped (TensorBoard scalars, validations, best weights and best step, metrics.json).

One fine-tuning run is killed three times in a row, each time in a different place, and the
fourth start finishes it:

1. mid-window: after step 3 of the logging window 1-4, whose first half is in the checkpoint
   of step 2;
2. during the validation of step 4 (computed, not yet logged, nor the best weights written);
3. while writing the checkpoint of step 6 (its files half written under a temporary name).

The runs happen in subprocesses running this file (``python test_kill_resume.py RUN_DIR
WHERE``), since SIGKILL ends the process.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
#: Scalars that measure time, not training: they differ between any two runs.
TIMED = {"tokens_per_second", "examples_per_second", "mfu"}


def config(run_dir):
    sst = os.path.join(ROOT, "data", "sst2")
    columns = {"text": "sentence", "label": "label"}
    return {
        "run_dir": run_dir, "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary_size": 300},
        "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                     "intermediate_dim": 64, "sequence_length": 32, "dropout": 0.1},
        "data": {"train": {"name": "csv", "paths": [os.path.join(sst, "train.tsv")],
                           "columns": columns},
                 "validation": {"name": "csv", "paths": [os.path.join(sst, "dev.tsv")],
                                "columns": columns}},
        "head": {"name": "sequence_classification"},
        "trainer": {"steps": 8, "batch_size": 16, "learning_rate": 1e-3, "eval_every": 4,
                    "checkpoint_every": 2, "validation_steps": 2, "log_every": 4,
                    "steps_per_execution": 1}}


def main(run_dir, where):
    """Fine-tune; SIGKILL this process at ``where`` (``window``, ``validation``,
    ``checkpoint`` or ``none``), or fail (``error``: a callback raises after step 5)."""
    import keras

    from kplm.training import checkpoints
    from kplm.training.finetune import FinetuneJob, finetune

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if where == "window" and int(self.model.optimizer.iterations.numpy()) == 3:
                die()
            if where == "error" and int(self.model.optimizer.iterations.numpy()) == 5:
                raise RuntimeError("a callback failed at step 5")

        def on_epoch_end(self, epoch, logs=None):  # validation done, nothing of it written
            if where == "validation" and int(self.model.optimizer.iterations.numpy()) == 4:
                die()

    options = FinetuneJob.loop_options

    def loop_options(self, model, run_dir, write):
        out = options(self, model, run_dir, write)
        out["callbacks"] = [Kill(), *out.get("callbacks", [])]
        return out

    FinetuneJob.loop_options = loop_options
    save = checkpoints.CheckpointDirectory.save

    def half_save(self, checkpoint, step, state):
        if where == "checkpoint" and step == 6:
            tmp = os.path.join(self.directory, f".tmp-step-{step:08d}-{os.getpid()}")
            os.makedirs(tmp)
            checkpoint.write(os.path.join(tmp, checkpoints.PREFIX))
            die()
        return save(self, checkpoint, step, state)

    checkpoints.CheckpointDirectory.save = half_save
    finetune(config(run_dir), echo=None, progress=False)


def scalars(run_dir):
    """{(split, tag, step): value} of every scalar in the run's event files; a (tag, step)
    logged twice is an error."""
    import tensorflow as tf
    found = {}
    for split in ("train", "validation"):
        folder = os.path.join(run_dir, "tensorboard", split)
        for name in sorted(os.listdir(folder)):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name != "scalars":
                        continue
                    key = (split, value.tag, event.step)
                    assert key not in found, f"{key} logged twice"
                    found[key] = float(tf.make_ndarray(value.tensor))
    return found


def run(run_dir, where, expect_killed, expect_failure=False):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, HERE, run_dir, where], env=env, text=True,
                          capture_output=True, timeout=300)
    if expect_killed:
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    elif expect_failure:
        assert done.returncode not in (0, -signal.SIGKILL), done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_at_window_validation_and_checkpoint_then_resume_equals_uninterrupted(tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    run(reference, "none", expect_killed=False)
    from kplm.events import scalars as read_without_tensorflow
    from kplm.run_summary import summarize
    for where in ("window", "validation", "checkpoint"):
        run(killed, where, expect_killed=True)
        # `kplm runs`: a process that is gone, its last checkpoint kept
        row = summarize(killed)
        assert row["state"] == "interrupted" and row["status"].startswith("interrupted at step")
        assert row["last_checkpoint"] in (2, 4) and row["step"] >= row["last_checkpoint"]
    run(killed, "none", expect_killed=False)
    assert summarize(killed)["state"] == "finished"
    # kplm.events (TensorBoard's protos, no TensorFlow) reads what TensorFlow's reader reads,
    # the killed run's repeated steps resolved to the last value written
    for run_dir in (reference, killed):
        ours = {(tag.split("/")[0], tag, step): value
                for tag, points in read_without_tensorflow(run_dir).items()
                for step, _, value in points}
        theirs = scalars(reference)
        assert sorted(k for k in ours if k[1].split("/")[-1] not in TIMED) == sorted(
            k for k in theirs if k[1].split("/")[-1] not in TIMED)
        if run_dir == reference:
            assert ours == pytest.approx(theirs, rel=1e-6)

    def metrics(run_dir):
        with open(os.path.join(run_dir, "metrics.json")) as f:
            values = json.load(f)
        for key in ("wall_seconds", "resumed_from_step", "restore_seconds", "peak_memory_mb"):
            values.pop(key)
        return values

    got, want = metrics(killed), metrics(reference)
    assert got["best_step"] == want["best_step"]
    assert json.dumps(got, sort_keys=True) == json.dumps(
        {**want, **{k: got[k] for k in ("validation", "baseline")}}, sort_keys=True)
    assert got["validation"] == pytest.approx(want["validation"], rel=1e-5)
    got, want = scalars(killed), scalars(reference)
    got = {k: v for k, v in got.items() if k[1].split("/")[-1] not in TIMED}
    want = {k: v for k, v in want.items() if k[1].split("/")[-1] not in TIMED}
    assert sorted(got) == sorted(want)
    assert ("train", "train/loss", 4) in want and ("validation", "validation/accuracy", 4) in want
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    import h5py

    def read(path):
        arrays = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, item: arrays.append(item[()])
                         if isinstance(item, h5py.Dataset) else None)
        return arrays

    for a, b in zip(read(os.path.join(killed, "model.weights.h5")),
                    read(os.path.join(reference, "model.weights.h5"))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
