"""Checkpoints of a training run, written atomically and resumable to the exact step.

A checkpoint is a directory ``checkpoints/step-00000420/`` holding a ``tf.train.Checkpoint``
(``ckpt.index`` + ``ckpt.data-*``: the model's weights, the optimizer's slots and step, the
random-number generators' states and the input pipeline's position) and ``state.json``
(the step, batches read, recoveries so far). It is written under a temporary name in the same
directory, flushed to disk, and renamed: a process killed at any moment leaves either the
complete checkpoint or none. The newest ``keep`` are kept; a damaged newest one (truncated,
corrupted, half-deleted) is skipped with a warning in favour of the one before.
"""
import json
import os
import re
import shutil
import warnings

_NAME = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"
STATE = "state.json"
PREFIX = "ckpt"


def checkpoint_of(model, iterator=None):
    """The ``tf.train.Checkpoint`` of everything a run needs to continue exactly: the model, its
    optimizer (slots, step, loss scale), every random seed generator's state (Keras keeps them as
    model variables that ``tf.train.Checkpoint(model=...)`` does not track) and, when given, the
    input pipeline's iterator."""
    import tensorflow as tf
    from keras.src.backend.common import global_state

    seeds = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
    shared = global_state.get_global_attribute("global_seed_generator")
    if shared is not None:
        seeds.append(shared.state.value)
    parts = {"model": model, "optimizer": model.optimizer, "seeds": seeds}
    if iterator is not None:
        parts["iterator"] = iterator
    return tf.train.Checkpoint(**parts)


class CheckpointDirectory:
    """The ``checkpoints/`` directory of a run.

    Args:
        directory: str. Where the ``step-N`` directories live.
        keep: int. Newest checkpoints kept.
        write: bool. False on the workers of a multi-worker run that are not the chief: they
            take part in saving (collective reads) into a scratch directory that is deleted.

    Example:
    >>> import tempfile, keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> store = CheckpointDirectory(tempfile.mkdtemp(), keep=2)
    >>> for step in (10, 20, 30):
    ...     _ = store.save(checkpoint_of(model), step, {"batches": step})
    >>> [s for s, _ in store.complete()]
    [30, 20]
    >>> store.restore(checkpoint_of(model))["step"]
    30
    """

    def __init__(self, directory, keep=3, write=True):
        self.directory, self.keep, self.write = directory, keep, write

    def complete(self):
        """``[(step, path)]`` of the complete checkpoints, newest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found, reverse=True)

    def save(self, checkpoint, step, state):
        """Write ``checkpoint`` and ``state`` (a JSON-able dict) as the checkpoint of ``step``;
        returns its path. Atomic: temporary directory, fsync, rename."""
        import tempfile
        os.makedirs(self.directory, exist_ok=True)
        final = os.path.join(self.directory, f"step-{step:08d}")
        if not self.write:  # a multi-worker non-chief: save (collectives) and throw away
            scratch = tempfile.mkdtemp(prefix="kplm-worker-ckpt-")
            try:
                checkpoint.write(os.path.join(scratch, PREFIX))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return final
        tmp = os.path.join(self.directory, f"{_TMP_PREFIX}step-{step:08d}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        checkpoint.write(os.path.join(tmp, PREFIX))
        with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as f:
            json.dump({**state, "step": step}, f, indent=2, sort_keys=True)
        _fsync_tree(tmp)
        old = None
        if os.path.exists(final):  # the same step saved again: swap by renames, then delete
            old = os.path.join(self.directory, f"{_TMP_PREFIX}old-step-{step:08d}-{os.getpid()}")
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(self.directory)
        self._prune()
        return final

    def discard_after(self, step):
        """Delete the checkpoints newer than ``step`` (an abandoned trajectory), each renamed
        away first so that none is ever seen half-deleted."""
        for found, path in self.complete():
            if found > step:
                doomed = os.path.join(self.directory,
                                      f"{_TMP_PREFIX}discard-{found:08d}-{os.getpid()}")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def clear(self):
        """Delete every checkpoint (a run that does not resume starts an empty directory)."""
        self.discard_after(-1)

    def _prune(self):
        for _, path in self.complete()[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)
        for name in os.listdir(self.directory):  # leftovers of processes killed mid-save
            if name.startswith(_TMP_PREFIX):
                pid = name.rsplit("-", 1)[-1]
                if pid != str(os.getpid()) and not _alive(pid):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def restore(self, checkpoint, before=None, accept=None):
        """Restore the newest complete checkpoint (with step < ``before`` when given, and for
        which ``accept()`` returns True after restoring) into ``checkpoint``; returns its state
        dict, or None when there is none. A damaged one is skipped with a warning."""
        skipped = []
        for step, path in self.complete():
            if before is not None and step >= before:
                continue
            try:
                with open(os.path.join(path, STATE), encoding="utf-8") as f:
                    state = json.load(f)
                status = checkpoint.read(os.path.join(path, PREFIX))
                status.assert_existing_objects_matched()
                status.expect_partial()  # e.g. a recovery restores all but the data position
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                warnings.warn(f"checkpoint {path} cannot be restored ({reason}); "
                              "falling back to the previous one", RuntimeWarning, stacklevel=2)
                skipped.append(path)
                continue
            if accept is not None and not accept():
                skipped.append(path)
                continue
            state["path"] = path
            return state
        return None

    @staticmethod
    def latest(directory):
        """The path of the newest complete checkpoint in ``directory``, or None."""
        found = CheckpointDirectory(directory).complete()
        return found[0][1] if found else None


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(directory):
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
