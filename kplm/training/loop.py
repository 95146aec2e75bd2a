"""The training loop around Keras ``fit``: exact resume, atomic checkpoints, loss guard, signals.

``train(model, dataset, ...)`` calls ``model.fit`` as a user would, and adds what a long run
needs:

- **Exact resume.** The input pipeline is read through one iterator that lives across ``fit``
  calls, and a checkpoint holds that iterator's state (``tf.data`` iterator checkpointing: the
  shuffle buffer and the position in every file), the weights, the optimizer, the step and the
  random generators. A resumed run reads the next batch an uninterrupted run would read, at the
  same learning rate: its losses and weights equal the uninterrupted run's. Restoring costs the
  same at step 10 and at step 10,000, because nothing is replayed. Keras' ``BackupAndRestore``
  instead restarts the interrupted epoch.
- **Mid-interval resume.** Keras epochs are kplm's validation intervals. A run resumed between two
  validations first trains the rest of that interval as a short ``fit``, then goes on.
- **Non-finite gate.** kplm's train step (``kplm.training.step``) skips the update of a step
  whose gradients or loss are non-finite on any replica: the weights, the optimizer's slots
  and its step stay as they were, and the next batch is trained as that step. Each skip is a
  warning naming the step; ``max_skipped_steps`` skips in a row hand over to the loss guard.
- **Loss guard.** A loss above ``max_loss``, too many skipped steps in a row, or non-finite
  weights at a checkpoint stop ``fit``, restore the newest checkpoint from before it whose
  weights are finite, and go on with the batches after the offending one: the batches in
  between are skipped (the data iterator is not rewound). After ``max_recoveries`` recoveries
  the run stops with a ``TrainingError``. No checkpoint with a non-finite weight is written.
- **Signals.** SIGTERM and SIGINT during training write a checkpoint at the current step and stop
  with ``Interrupted``; the same command continues from there.

Example:
>>> import keras, numpy as np, tensorflow as tf, tempfile
>>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
>>> ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1))).repeat().batch(8)
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
>>> model.compile(optimizer="sgd", loss="mse")
>>> result = train(model, ds, steps=20, eval_every=10, checkpoint_dir=tempfile.mkdtemp())
>>> result.step, len(result.history["loss"])
(20, 2)
"""
import contextlib
import math
import signal
import threading
import warnings

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.distribute import input_lib

from kplm.errors import KplmError, clip
from kplm.finite import non_finite_weights, require_finite
from kplm.training.checkpoints import CheckpointDirectory, checkpoint_of
from kplm.training.step import SKIPPED, STEP_LOSS, install, is_installed


class TrainingError(KplmError):
    """Training cannot go on (e.g. the loss stayed non-finite after every allowed recovery)."""


class Interrupted(KplmError):
    """SIGTERM / SIGINT stopped training after a checkpoint was written."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class PositionedData:
    """A training dataset read through one iterator whose position can be checkpointed.

    ``keras_input()`` is what ``fit`` takes: every ``fit`` call continues where the last one
    stopped, instead of starting the dataset over. The dataset is distributed with the strategy
    (global batches split across replicas, files or data sharded across workers).
    """

    def __init__(self, dataset, strategy=None):
        self.strategy = strategy or tf.distribute.get_strategy()
        if (isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and dataset.options().experimental_distribute.auto_shard_policy
                == tf.data.experimental.AutoShardPolicy.AUTO):
            # every worker reads the stream and keeps its share of each global batch: correct
            # whatever the number of files (sharding by file fails with fewer files than workers)
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            dataset = dataset.with_options(options)
        self.dataset = dataset
        self.distributed = self.strategy.experimental_distribute_dataset(dataset)
        self.iterator = iter(self.distributed)
        self.batches = 0  # batches handed to training (for state.json)
        self._probe = None
        self.checkpointable = self._can_checkpoint()

    def _can_checkpoint(self):
        """Whether the iterator's state can be saved: not when the pipeline runs Python
        (``from_generator``: the csv/jsonl/conll/squad sources), nor under a multi-replica
        strategy. Then a resume re-reads and skips the batches already trained on (the input
        pipeline only, no training), which costs time in proportion to them."""
        from tensorflow.python.trackable.base import Trackable
        if not isinstance(self.iterator, Trackable):
            # tf.distribute's iterators (MirroredStrategy, MultiWorkerMirroredStrategy) cannot
            # be checkpointed (TensorFlow 2.21): those runs resume by skipping.
            return False
        try:
            self.dataset._as_serialized_graph(  # what saving the iterator needs
                external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL)
            return True
        except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError):
            return False

    def skip(self, batches):
        """Read and drop ``batches`` batches (resume when the position cannot be restored)."""
        for _ in range(batches):
            next(self.iterator)
        self.batches += batches

    def keras_input(self, model):
        """The object to pass to ``model.fit``: it hands Keras the persistent iterator."""
        # Under a tf.distribute strategy, Keras' fit() first pulls one batch to build the model
        # symbolically (TensorFlowTrainer._maybe_symbolic_build); that batch must not come from
        # the training position, so the first iter() of that fit() gets a throwaway iterator.
        probe = getattr(model, "_distribute_strategy", None) is not None
        return _KerasInput(self, probe)

    def _probe_iterator(self):
        if self._probe is None:
            self._probe = iter(self.distributed)
        return self._probe


class _KerasInput(input_lib.DistributedDataset):
    """Looks like a distributed dataset to Keras; ``iter()`` gives the run's iterator."""

    def __init__(self, data, probe):  # no super().__init__: a thin view of PositionedData
        self._data, self._probe_pending = data, probe

    def __iter__(self):
        if self._probe_pending:
            self._probe_pending = False
            return self._data._probe_iterator()
        return self._data.iterator

    @property
    def element_spec(self):
        return self._data.distributed.element_spec

    @property
    def cardinality(self):
        return np.int64(-1)  # infinite: fit() is always given steps_per_epoch


class _StopFit(Exception):
    """Raised by the keeper to leave ``fit`` at once (no validation of a partial interval)."""


class TrainResult:
    """What ``train`` returns: ``step`` (optimizer steps done), ``history`` (Keras' history of
    every ``fit`` call, merged), ``resumed_from`` (the checkpoint step, or None),
    ``restore_seconds``, ``recoveries`` ([(bad_step, restored_step)]), ``skipped_steps``
    (the steps whose update the non-finite gate skipped, resumed runs' included)."""

    def __init__(self):
        self.step, self.history, self.resumed_from = 0, {}, None
        self.restore_seconds, self.recoveries, self.skipped_steps = 0.0, [], []


class _Keeper(keras.callbacks.Callback):
    """Per step: counts skipped updates, checks the loss, writes due checkpoints (only with
    finite weights), and answers signals."""

    def __init__(self, save, checkpoint_every, max_loss, max_skipped_steps, echo=None):
        super().__init__()
        self._save, self.checkpoint_every, self.max_loss = save, checkpoint_every, max_loss
        self.max_skipped_steps, self.echo = max_skipped_steps, echo
        self.bad = None  # (step, loss, what) of the first bad step
        self.signal = None
        self.saved = None  # the step of the newest checkpoint
        self.skipped = []  # steps whose update the gate skipped
        self.in_a_row = 0

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(self.model.optimizer.iterations.numpy())
        self.data.batches += 1
        # kplm's step reports the step's own loss; a model with its own train_step, Keras'
        # running mean (a non-finite step still makes it non-finite)
        loss = float(logs.get(STEP_LOSS, logs.get("loss", 0.0)))
        if float(logs.get(SKIPPED, 0.0)) > 0:  # the gate kept the weights: step is not done
            self.in_a_row += 1
            self.skipped.append(step + 1)
            message = (f"non-finite gradients at step {step + 1}: update skipped "
                       f"({self.in_a_row} in a row, trainer.max_skipped_steps="
                       f"{self.max_skipped_steps})")
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if self.echo:
                self.echo(message)
            if self.in_a_row > self.max_skipped_steps:
                self.bad = (step + 1, loss, f"{self.in_a_row} non-finite steps in a row")
                raise _StopFit
        else:
            self.in_a_row = 0
            if not math.isfinite(loss):  # a loss scaler's skip, or a model without kplm's step
                self.bad = (step, loss, "a non-finite loss")
                raise _StopFit
            if self.max_loss is not None and loss > self.max_loss:
                self.bad = (step, loss, f"a loss of {loss:.4g} above "
                                        f"trainer.max_loss={self.max_loss}")
                raise _StopFit
        signum = self.signal  # read once: a signal may land between two reads
        if (step % self.checkpoint_every == 0 or signum is not None) and step != self.saved:
            if non_finite_weights(self.model.weights):
                self.bad = (step, loss, "non-finite weights")
                raise _StopFit
            self._save(step)
        if signum is not None:
            raise _StopFit


@contextlib.contextmanager
def _signals_to(keeper):
    """Route SIGTERM/SIGINT to ``keeper.signal`` while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if keeper.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: now
            raise KeyboardInterrupt
        keeper.signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _fit_of(model):
    """``model.fit``, or Keras' own for a keras_hub task without a preprocessor: keras_hub's
    ``PipelineModel.fit`` maps its (here: identity) preprocessing over the input, which would
    replace the run's positioned iterator with a fresh pipeline."""
    try:
        from keras_hub.src.utils.pipeline_model import PipelineModel
    except ImportError:  # pragma: no cover - keras_hub is a dependency
        return model.fit
    if isinstance(model, PipelineModel) and getattr(model, "preprocessor", None) is None:
        return lambda *args, **kwargs: keras.Model.fit(model, *args, **kwargs)
    return model.fit


def _weights_finite(model):
    return not non_finite_weights(model.weights)


def _has_keras_train_step(model):
    """Whether ``model`` trains with Keras' own ``train_step`` (no override of its own)."""
    return getattr(type(model), "train_step", None) is getattr(keras.Model, "train_step", None)


def train(model, dataset, *, steps, eval_every, checkpoint_dir, checkpoint_every=None, keep=3,
          validation_data=None, callbacks=(), strategy=None, max_loss=None, max_recoveries=3,
          max_skipped_steps=10, resume=True, write=True, echo=None):
    """Train a compiled ``model`` on ``dataset`` (an endless ``tf.data.Dataset`` of global
    batches) for ``steps`` optimizer steps with ``fit``, validating every ``eval_every`` steps,
    checkpointing into ``checkpoint_dir`` every ``checkpoint_every`` steps (default
    ``eval_every``), resuming from its newest checkpoint when ``resume``.

    ``callbacks`` run after kplm's checkpoint keeper, in order; ``write=False`` (multi-worker
    non-chief) keeps checkpoints off the disk. A model compiled without kplm's train step is
    given it (``kplm.training.step.install``: the non-finite gate). Returns a ``TrainResult``.
    """
    import time

    if not is_installed(model) and _has_keras_train_step(model):
        install(model)  # a model with its own train_step keeps it (and goes without the gate)
    shown_dir = clip(checkpoint_dir, 100)  # as error lines quote it
    checkpoint_every = checkpoint_every or eval_every
    data = PositionedData(dataset, strategy)
    store = CheckpointDirectory(checkpoint_dir, keep=keep, write=write)
    optimizer = model.optimizer
    with (strategy or tf.distribute.get_strategy()).scope():
        optimizer.build(model.trainable_variables)  # slots exist before they are restored
    checkpoint = checkpoint_of(model, data.iterator if data.checkpointable else None)
    result = TrainResult()
    recoveries = []

    def state():
        return {"batches": data.batches, "recoveries": [list(r) for r in recoveries],
                "skipped_steps": list(keeper.skipped)}

    def step_now():
        return int(optimizer.iterations.numpy())

    def save(step):
        require_finite(model, f"the checkpoint of step {step} in {shown_dir}")
        store.save(checkpoint, step, state())
        keeper.saved = step

    keeper = _Keeper(save, checkpoint_every, max_loss, max_skipped_steps, echo)
    keeper.data = data
    if not resume:
        store.clear()  # a new run: another run's checkpoints must not be pruned into or restored
    restored = None
    if store.complete():
        start = time.perf_counter()
        restored = store.restore(checkpoint, accept=lambda: _weights_finite(model))
        result.restore_seconds = time.perf_counter() - start
        if restored is not None:
            if data.checkpointable:
                data.batches = restored.get("batches", 0)
            else:
                data.skip(restored.get("batches", 0))
                result.restore_seconds = time.perf_counter() - start
            recoveries.extend(tuple(r) for r in restored.get("recoveries", []))
            keeper.skipped = list(restored.get("skipped_steps", []))
            result.resumed_from = keeper.saved = restored["step"]
            if echo:
                echo(f"resuming from {restored['path']} (step {restored['step']}, restored in "
                     f"{result.restore_seconds:.1f} s)")
    if restored is None and store.read_any:
        # a checkpoint was read but refused (non-finite weights, or a read that failed half
        # way): the model holds its values now, so starting over from step 0 is not possible
        raise TrainingError(f"no checkpoint in {shown_dir} can be restored (see the warnings "
                            "above); move it away to start the run again")
    if restored is None:  # a new run, or every checkpoint damaged: start from step 0
        save(step_now())  # a loss-guard recovery always has a checkpoint to go back to

    with _signals_to(keeper):
        while step_now() < steps:
            step = step_now()
            if step % eval_every == 0 and steps - step >= eval_every:
                per_epoch, epochs = eval_every, (steps - step) // eval_every
            else:  # resumed (or recovered) between two validations, or a last short interval
                per_epoch, epochs = min(eval_every - step % eval_every, steps - step), 1
            keeper.bad = None
            try:
                _fit_of(model)(data.keras_input(model), steps_per_epoch=per_epoch,
                               epochs=epochs, validation_data=validation_data,
                               callbacks=[keeper, *callbacks], verbose=0, shuffle=False)
            except _StopFit:
                pass
            # Keras' History callback (model.history) keeps the epochs finished before a stop.
            for key, values in getattr(model.history, "history", {}).items():
                if key not in (STEP_LOSS, SKIPPED):  # per-step values, not epoch means
                    result.history.setdefault(key, []).extend(values)
            if keeper.signal is not None and step_now() < steps:
                if keeper.saved != step_now():  # the signal came during a validation
                    save(step_now())
                name = signal.Signals(keeper.signal).name
                raise Interrupted(f"{name} at step {step_now()}: checkpoint written to "
                                  f"{shown_dir}; run the same command again to continue",
                                  keeper.signal)
            if keeper.bad is not None:
                bad_step, loss, what = keeper.bad
                keeper.in_a_row = 0
                if len(recoveries) >= max_recoveries:
                    raise TrainingError(
                        f"{what} at step {bad_step}, after {len(recoveries)} recoveries "
                        f"(trainer.max_recoveries={max_recoveries}); stopped. The last good "
                        f"checkpoint is in {shown_dir}: lower the learning rate or check "
                        "the data around this step")
                batches_read = data.batches
                restored = store.restore(checkpoint_of(model), before=bad_step,
                                         accept=lambda: _weights_finite(model))
                if restored is None:
                    raise TrainingError(f"{what} at step {bad_step} and no checkpoint with "
                                        f"finite weights before it in {shown_dir}")
                # checkpoints after the restored one belong to the abandoned trajectory: a later
                # resume must not start from them
                store.discard_after(restored["step"])
                keeper.saved = restored["step"]
                keeper.skipped = list(restored.get("skipped_steps", []))
                recoveries.append((bad_step, restored["step"]))
                warnings.warn(f"{what} at step {bad_step}: restored the checkpoint of step "
                              f"{restored['step']} and skipped the "
                              f"{batches_read - restored.get('batches', 0)} batch(es) since "
                              f"({len(recoveries)}/{max_recoveries} recoveries)",
                              RuntimeWarning, stacklevel=2)
                if echo:
                    echo(f"recovered from {what} at step {bad_step}: back to step "
                         f"{restored['step']}, skipping the batches in between")
                continue
            if model.stop_training:  # a user callback (early stopping) ended the run
                break
    final = step_now()
    if keeper.saved != final:
        save(final)
    result.step, result.recoveries = final, list(recoveries)
    result.skipped_steps = list(keeper.skipped)
    return result
