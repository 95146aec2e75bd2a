"""Checkpoints of a training run, written atomically and resumable to the exact step.

A checkpoint is a directory ``checkpoints/step-00000420/`` holding a ``tf.train.Checkpoint``
(``ckpt.index`` + ``ckpt.data-*``: the model's weights, the optimizer's slots and step, the
random-number generators' states and the input pipeline's position) and ``state.json``
(the step, batches read, recoveries so far). It is written under a temporary name in the same
directory, flushed to disk, and renamed: a process killed at any moment leaves either the
complete checkpoint or none. ``state.json`` also lists every file's size and CRC-32, read
back from the disk after writing: a checkpoint counts only when they match. The newest ``keep``
good ones are kept; a damaged one (truncated, corrupted, half-deleted) never counts toward
``keep`` and is skipped with a warning in favour of the one before.

A write that fails (no space left, read-only directory, file-size limit, I/O error) raises
``CheckpointWriteError`` at once, naming the directory and the cause, and leaves the older
checkpoints and no temporary directory behind: a run never trains on without checkpoints.
"""
import json
import os
import re
import shutil
import warnings
import zlib

from kplm.errors import KplmError, TrainingWarning, clip

_NAME = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"
STATE = "state.json"
PREFIX = "ckpt"


class CheckpointWriteError(KplmError):
    """A checkpoint could not be written (disk full, read-only, file too large, I/O error)."""


def checkpoint_of(model, iterator=None):
    """The ``tf.train.Checkpoint`` of everything a run needs to continue exactly: the model, its
    optimizer (slots, step, loss scale), every random seed generator's state (Keras keeps them as
    model variables that ``tf.train.Checkpoint(model=...)`` does not track) and, when given, the
    input pipeline's iterator."""
    import tensorflow as tf

    from kplm._compat import global_seed_generator_state

    seeds = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
    shared = global_seed_generator_state()
    if shared is not None:
        seeds.append(shared)
    parts = {"model": model, "optimizer": model.optimizer, "seeds": seeds,
             # the running means of the open validation interval (exact across a resume)
             "metrics": [v.value for m in model.metrics for v in m.variables]}
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
    >>> [s for s, _ in store.checkpoints()]
    [30, 20]
    >>> store.restore(checkpoint_of(model))["step"]
    30
    """

    def __init__(self, directory, keep=3, write=True):
        self.directory, self.keep, self.write = directory, keep, write
        self.read_any = False  # whether restore() read a checkpoint into the objects

    def checkpoints(self):
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
        returns its path. Atomic: temporary directory, fsync, verify, rename. A failure raises
        ``CheckpointWriteError`` and leaves the directory as it was."""
        import tempfile
        final = os.path.join(self.directory, f"step-{step:08d}")
        if not self.write:  # a multi-worker non-chief: save (collectives) and throw away
            scratch = tempfile.mkdtemp(prefix="kplm-worker-ckpt-")
            try:
                checkpoint.write(os.path.join(scratch, PREFIX))
            except Exception as e:  # noqa: BLE001 - any write failure stops the run
                raise CheckpointWriteError(f"cannot write the checkpoint of step {step} in "
                                           f"{scratch}: {_cause(e)}") from None
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return final
        tmp = os.path.join(self.directory, f"{_TMP_PREFIX}step-{step:08d}-{os.getpid()}")
        old = None
        try:
            os.makedirs(self.directory, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            checkpoint.write(os.path.join(tmp, PREFIX))
            files = {name: _size_and_crc(os.path.join(tmp, name)) for name in os.listdir(tmp)}
            with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as f:
                json.dump({**state, "step": step, "files": files}, f, indent=2, sort_keys=True)
            _fsync_tree(tmp)
            if not verify(tmp, checksums=False):
                raise OSError("the written files do not read back as written")
            if os.path.exists(final):  # the same step saved again: swap by renames, then delete
                old = os.path.join(self.directory,
                                   f"{_TMP_PREFIX}old-step-{step:08d}-{os.getpid()}")
                os.rename(final, old)
            os.rename(tmp, final)
        except Exception as e:  # noqa: BLE001 - any write failure stops the run
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not os.path.exists(final):
                os.rename(old, final)  # the step's previous copy stays
            raise CheckpointWriteError(
                f"cannot write the checkpoint of step {step} in {clip(self.directory, 100)}: "
                f"{_cause(e)}; stopped, the older checkpoints are kept: fix the disk and run the "
                "same command again") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(self.directory)
        self._prune()
        return final

    def discard_after(self, step):
        """Delete the checkpoints newer than ``step`` (an abandoned trajectory), each renamed
        away first so that none is ever seen half-deleted."""
        for found, path in self.checkpoints():
            if found > step:
                doomed = os.path.join(self.directory,
                                      f"{_TMP_PREFIX}discard-{found:08d}-{os.getpid()}")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def clear(self):
        """Delete every checkpoint (a run that does not resume starts an empty directory)."""
        self.discard_after(-1)

    def good(self):
        """``[(step, path)]`` of the complete checkpoints whose files are all there with the
        sizes written (``verify`` without checksums), newest first."""
        return [(step, path) for step, path in self.checkpoints() if verify(path, checksums=False)]

    def _prune(self):
        """Keep the newest ``keep`` good checkpoints. Damaged ones never count: a damaged one
        older than the newest good one is deleted, a newer one is left until the same step is
        saved again. Leftovers of dead processes' saves are removed."""
        good = self.good()
        kept = {path for _, path in good[:self.keep]}
        newest_good = good[0][0] if good else None
        good_paths = {path for _, path in good}
        for step, path in self.checkpoints():
            if path in kept:
                continue
            if path in good_paths or (newest_good is not None and step < newest_good):
                shutil.rmtree(path, ignore_errors=True)
        for name in os.listdir(self.directory):  # leftovers of processes killed mid-save
            if name.startswith(_TMP_PREFIX):
                pid = name.rsplit("-", 1)[-1]
                # this process's own are leftovers too (no save is under way; in a container
                # every start may have the same PID)
                if pid == str(os.getpid()) or not _alive(pid):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def restore(self, checkpoint, before=None, accept=None):
        """Restore the newest complete checkpoint (with step < ``before`` when given, and for
        which ``accept()`` returns True after restoring) into ``checkpoint``; returns its state
        dict, or None when there is none. A damaged one is skipped with a warning."""
        skipped = []
        for step, path in self.checkpoints():
            if before is not None and step >= before:
                continue
            try:
                with open(os.path.join(path, STATE), encoding="utf-8") as f:
                    state = json.load(f)
                if not verify(path):
                    raise OSError("its files differ from the sizes and checksums written")
                self.read_any = True
                status = checkpoint.read(os.path.join(path, PREFIX))
                status.assert_existing_objects_matched()
                status.expect_partial()  # e.g. a recovery restores all but the data position
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                warnings.warn(f"checkpoint {path} cannot be restored ({reason}); "
                              "falling back to the previous one", TrainingWarning, stacklevel=2)
                skipped.append(path)
                continue
            if accept is not None and not accept():
                warnings.warn(f"checkpoint {path} is refused (non-finite weights); falling back "
                              "to the previous one", TrainingWarning, stacklevel=2)
                skipped.append(path)
                continue
            state.pop("files", None)
            state["path"] = path
            return state
        return None

    @staticmethod
    def latest(directory):
        """The path of the newest complete checkpoint in ``directory``, or None."""
        found = CheckpointDirectory(directory).good()
        return found[0][1] if found else None


def verify(path, checksums=True):
    """Whether the checkpoint directory ``path`` holds every file its ``state.json`` lists,
    with the size (and, with ``checksums``, the CRC-32) written. Checkpoints written before
    the list existed count when their ``state.json`` reads."""
    try:
        with open(os.path.join(path, STATE), encoding="utf-8") as f:
            files = json.load(f).get("files")
        if files is None:
            return os.path.exists(os.path.join(path, PREFIX + ".index"))
        for name, (size, crc) in files.items():
            file = os.path.join(path, name)
            if os.path.getsize(file) != size:
                return False
            if checksums and _size_and_crc(file)[1] != crc:
                return False
        return True
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _size_and_crc(path):
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return [size, crc]


def _cause(error):
    """One short line saying why a write failed: the system's words ("No space left on
    device", "File too large", "Read-only file system"), without TensorFlow's op decoration."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(getattr(error, "message", None) or error).strip()
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", text).strip()
    text = text.splitlines()[-1].strip() if text else ""
    text = text.rsplit("; ", 1)[-1].strip() or type(error).__name__
    return text[:200]


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, ProcessLookupError):
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
