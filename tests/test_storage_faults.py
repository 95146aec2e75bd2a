"""Checkpoints that survive the disk: a full disk, a read-only directory, a file-size limit and
every checkpoint damaged.

Each fault is real where the machine allows it (a small tmpfs, remounted read-only, needs root
with mount rights; ``RLIMIT_FSIZE`` works for anyone) and injected otherwise. The fault lands
mid-run, after some good checkpoints: the run must stop at the first failed save with one line
naming the directory and the cause, keep the older checkpoints, leave no ``.tmp-*`` behind,
and never train on without checkpoints.
"""
import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def _model():
    import keras
    keras.utils.set_random_seed(0)
    # 64 x 256 floats: each checkpoint is about 200 KB (weights + Adam's two slots)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _data(drop=()):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 64)).astype("float32")
    y = x.sum(-1, keepdims=True) * 0.1
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat()


class _At:
    """Runs ``action`` once, after the optimizer step ``step`` (Keras callback)."""

    def __new__(cls, step, action):
        import keras

        class At(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if int(self.model.optimizer.iterations.numpy()) == step and action:
                    action()
                    action_done.append(step)

        action_done = []
        callback = At()
        callback.done = action_done
        return callback


def _mount_tmpfs(path, size):
    """Mount a tmpfs of ``size`` at ``path``; False where this machine does not allow it."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


@contextlib.contextmanager
def _tmpfs(path, size):
    """A tmpfs of ``size`` at ``path`` for the block; yields False (a plain directory) where
    this machine does not allow mounting."""
    real = _mount_tmpfs(path, size)
    try:
        yield real
    finally:
        if real:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _assert_stopped_cleanly(directory, error, cause, good_steps):
    from kplm.training.checkpoints import CheckpointDirectory
    message = str(error)
    assert "\n" not in message and len(message) < 500, message
    assert str(directory) in message and cause in message, message
    store = CheckpointDirectory(str(directory))
    assert [s for s, _ in store.good()] == good_steps
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]


def _train(directory, steps=20, callbacks=()):
    from kplm.training.loop import train
    return train(_model(), _data(), steps=steps, eval_every=steps,
                 checkpoint_dir=str(directory), checkpoint_every=5, keep=3,
                 callbacks=list(callbacks))


def test_full_disk_stops_at_the_first_failed_save_with_one_line(tmp_path, monkeypatch):
    from kplm.training.checkpoints import CheckpointWriteError
    mount = tmp_path / "small"
    directory = mount / "checkpoints"
    with _tmpfs(mount, "2m") as real:
        def fill():
            if real:  # leave 20 KB: the next checkpoint (about 200 KB) cannot fit
                stat = os.statvfs(mount)
                with open(mount / "filler", "wb") as f:
                    f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - 20_000, 0))
            else:
                import tensorflow as tf

                def no_space(self, *args, **kwargs):
                    raise tf.errors.ResourceExhaustedError(None, None,
                                                           "No space left on device")
                monkeypatch.setattr(tf.train.Checkpoint, "write", no_space)
        at = _At(7, fill)
        with pytest.raises(CheckpointWriteError) as raised:
            _train(directory, callbacks=[at])
        assert at.done == [7]
        _assert_stopped_cleanly(directory, raised.value, "No space left on device", [5, 0])


def test_read_only_checkpoint_directory_stops_with_one_line(tmp_path, monkeypatch):
    from kplm.training.checkpoints import CheckpointWriteError
    mount = tmp_path / "ro"
    directory = mount / "checkpoints"
    with _tmpfs(mount, "8m") as real:
        def read_only():
            if real:
                subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            elif os.geteuid() != 0:
                os.chmod(directory, 0o555)
            else:  # root without mount rights: permissions do not stop root, inject
                real_makedirs = os.makedirs

                def denied(path, *args, **kwargs):
                    if ".tmp-" in str(path):
                        raise PermissionError(13, "Permission denied", str(path))
                    return real_makedirs(path, *args, **kwargs)
                monkeypatch.setattr(os, "makedirs", denied)
        at = _At(7, read_only)
        with pytest.raises(CheckpointWriteError) as raised:
            _train(directory, callbacks=[at])
        cause = "Read-only file system" if real else "Permission denied"
        if not real and os.path.isdir(directory):
            os.chmod(directory, 0o755)  # readable again for the checks (and tmp_path cleanup)
        _assert_stopped_cleanly(directory, raised.value, cause, [5, 0])


_FSIZE_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, {tests!r})
    import test_storage_faults as t
    from kplm.errors import KplmError

    def limit():  # as `ulimit -f 64` (EFBIG, as on FAT32 or under a quota)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    try:
        t._train({directory!r}, callbacks=[t._At(7, limit)])
    except KplmError as e:
        print("ERROR " + str(e))
        sys.exit(3)
    print("FINISHED")
""")


def test_file_size_limit_mid_run_stops_instead_of_training_on(tmp_path):
    directory = tmp_path / "checkpoints"
    script = _FSIZE_SCRIPT.format(tests=os.path.dirname(__file__), directory=str(directory))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    errors = [line for line in done.stdout.splitlines() if line.startswith("ERROR ")]
    assert done.returncode == 3 and errors, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_stopped_cleanly(directory, errors[0][len("ERROR "):], "File too large", [5, 0])


def test_every_checkpoint_damaged_then_rerun_keeps_each_new_good_one(tmp_path):
    """The damaged, newer-numbered checkpoints must not count toward ``keep`` (they once had
    each new good checkpoint deleted right after it was written)."""
    from kplm.training.checkpoints import CheckpointDirectory
    directory = tmp_path / "checkpoints"
    _train(directory, steps=15)
    store = CheckpointDirectory(str(directory), keep=3)
    assert [s for s, _ in store.good()] == [15, 10, 5]
    for _, path in store.checkpoints():  # truncate every data file
        for name in os.listdir(path):
            if name.startswith("ckpt.data"):
                with open(os.path.join(path, name), "r+b") as f:
                    f.truncate(100)
    assert store.good() == []
    seen = []

    def look():
        seen.append([s for s, _ in store.good()])

    from kplm.training.loop import train
    model = _model()
    with pytest.warns(RuntimeWarning, match="cannot be restored"):
        result = train(model, _data(), steps=20, eval_every=20, checkpoint_dir=str(directory),
                       checkpoint_every=5, keep=3, callbacks=[_At(1, look), _At(6, look)])
    assert result.resumed_from is None and result.step == 20
    assert seen == [[0], [5, 0]]  # the fresh start's checkpoints stay
    assert [s for s, _ in store.good()] == [20, 15, 10] == [s for s, _ in store.checkpoints()]
    reference = _model()
    train(reference, _data(), steps=20, eval_every=20, checkpoint_dir=str(tmp_path / "clean"),
          checkpoint_every=5, keep=3)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_corrupted_byte_is_caught_by_the_checksum(tmp_path):
    from kplm.training.checkpoints import CheckpointDirectory, checkpoint_of
    model = _model()
    model.optimizer.build(model.trainable_variables)
    store = CheckpointDirectory(str(tmp_path), keep=3)
    store.save(checkpoint_of(model), 1, {"batches": 1})
    store.save(checkpoint_of(model), 2, {"batches": 2})
    path = store.checkpoints()[0][1]
    data = [n for n in os.listdir(path) if n.startswith("ckpt.data")][0]
    with open(os.path.join(path, data), "r+b") as f:  # same size, one byte flipped
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(RuntimeWarning, match="step-00000002 cannot be restored"):
        assert store.restore(checkpoint_of(model))["step"] == 1


def test_leftovers_with_this_pid_or_an_impossible_pid_are_cleaned_by_the_next_save(tmp_path):
    from kplm.training.checkpoints import CheckpointDirectory, checkpoint_of
    model = _model()
    model.optimizer.build(model.trainable_variables)
    for name in (f".tmp-step-00000007-{os.getpid()}",  # a container restarted with this PID
                 ".tmp-step-00000008-99999999999999999999"):  # no such process can exist
        os.makedirs(tmp_path / name)
    CheckpointDirectory(str(tmp_path)).save(checkpoint_of(model), 1, {"batches": 1})
    assert os.listdir(tmp_path) == ["step-00000001"]


def test_a_refused_checkpoint_is_not_followed_by_a_silent_restart(tmp_path):
    """A checkpoint that reads but is refused (non-finite weights, written by an older kplm)
    has put its values into the model: the run stops in one line instead of going on from them
    as if it were step 0."""
    from kplm.training.checkpoints import CheckpointDirectory, checkpoint_of
    from kplm.training.loop import TrainingError, train
    model = _model()
    model.optimizer.build(model.trainable_variables)
    model.layers[0].kernel.assign(np.full(model.layers[0].kernel.shape, np.nan, "float32"))
    CheckpointDirectory(str(tmp_path)).save(checkpoint_of(model, iter(_data())), 5,
                                            {"batches": 5})
    with pytest.warns(RuntimeWarning, match="step-00000005 is refused .non-finite weights"):
        with pytest.raises(TrainingError, match="no checkpoint in .* can be restored"):
            train(_model(), _data(), steps=10, eval_every=10, checkpoint_dir=str(tmp_path))
    assert [s for s, _ in CheckpointDirectory(str(tmp_path)).good()] == [5]


def test_a_model_with_its_own_train_step_is_refused_in_one_line(tmp_path):
    """kplm's loop runs its own step: a train_step override would be silently ignored."""
    import keras

    from kplm.training.loop import TrainingError, train

    class Own(keras.Sequential):
        def train_step(self, data):
            return super().train_step(data)

    model = Own([keras.Input((64,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TrainingError, match="overrides train_step") as error:
        train(model, _data(), steps=4, eval_every=4, checkpoint_dir=str(tmp_path))
    assert "\n" not in str(error.value) and not os.listdir(tmp_path)
