"""kplm's training loop: read it from the top to know what one run does.

``train(model, dataset, ...)`` trains a compiled Keras model on an endless ``tf.data.Dataset``
of global batches. No ``fit``: one loop in plain Python around one ``tf.function``.

1. **Input.** One iterator over the dataset, owned by the loop (``Feed``). Each replica takes
   its rows of the global batch inside the step, so the iterator is a plain ``tf.data``
   iterator on every strategy: its state (shuffle buffer, position in every file) goes into
   the checkpoint, and a resumed run reads the next batch an uninterrupted run would read, in
   the same time at step 10 and at step 10,000. Pipelines that run Python
   (``from_generator``) cannot be saved; those resume by reading and dropping the batches
   already trained on.
2. **Steps.** ``TrainStep`` (``kplm.training.step``) runs ``strategy.run(step)`` for several
   steps per ``tf.function`` call (``steps_per_execution``, never across a log, validation or
   checkpoint), and returns each step's own loss, terms, gradient norm and whether the
   non-finite gate skipped it.
3. **Bookkeeping, per step, in Python.** Skipped steps are counted (a warning each;
   ``max_skipped_steps`` in a row hand over to the loss guard); the loss guard checks each
   step's loss (non-finite, or above ``max_loss``); the monitor adds the step to its window.
4. **Due events, in this order:** the train log (every ``log_every`` steps), the validation and
   the end of a validation interval (every ``eval_every`` steps: Keras callbacks'
   ``on_epoch_end``, the best weights, early stopping), then the checkpoint (every
   ``checkpoint_every`` steps, on a signal, and at the end). Everything a user sees of a
   step is written before the checkpoint that covers it, and the checkpoint holds the rest
   (the monitor's open window, the interval's running means, the history): a run killed at
   any moment and run again writes the same TensorBoard scalars, validations, best weights
   and metrics as one never stopped.
5. **Loss guard.** A bad step restores the newest checkpoint from before it whose weights are
   finite, and training goes on with the batches after the offending one (the iterator is not
   rewound). After ``max_recoveries`` recoveries the run stops with a ``TrainingError``. No
   checkpoint with a non-finite weight is written.
6. **Signals.** SIGTERM and SIGINT write a checkpoint at the current step and stop with
   ``Interrupted``; the same command continues from there.

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
import time
import warnings

import keras
import tensorflow as tf

from kplm.errors import KplmError, TrainingWarning, clip
from kplm.finite import non_finite_weights, require_finite
from kplm.training.checkpoints import CheckpointDirectory, checkpoint_of
from kplm.training.step import TrainStep, metric_values


class TrainingError(KplmError):
    """Training cannot go on (e.g. the loss stayed non-finite after every allowed recovery)."""


class Interrupted(KplmError):
    """SIGTERM / SIGINT stopped training after a checkpoint was written."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class Feed:
    """The run's input: one iterator over ``dataset`` (global batches), whose position can be
    checkpointed when the pipeline allows it (``checkpointable``)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.iterator = iter(dataset)
        self.batches = 0  # batches handed to training (for state.json)
        self.checkpointable = self._can_checkpoint()

    def _can_checkpoint(self):
        """Whether the iterator's state can be saved: not when the pipeline runs Python
        (``from_generator``: the csv/jsonl/conll/squad sources)."""
        from kplm._compat import iterator_is_saveable
        return iterator_is_saveable(self.dataset)

    def skip(self, batches):
        """Read and drop ``batches`` batches (resume when the position cannot be restored)."""
        for _ in range(batches):
            next(self.iterator)
        self.batches += batches


class TrainResult:
    """What ``train`` returns: ``step`` (optimizer steps done), ``history`` ({key: one value
    per validation interval}: the interval's mean loss and metrics, ``val_*``),
    ``resumed_from`` (the checkpoint step, or None), ``restore_seconds``, ``recoveries``
    ([(bad_step, restored_step)]), ``skipped_steps`` (the steps whose update the non-finite
    gate skipped, resumed runs' included), ``best_step`` (with ``best=``)."""

    def __init__(self):
        self.step, self.history, self.resumed_from = 0, {}, None
        self.restore_seconds, self.recoveries, self.skipped_steps = 0.0, [], []
        self.best_step = None


class _Bad(Exception):
    """A step the loss guard refuses: ``(step, loss, what)``."""


class _RunState:
    """What a checkpoint holds besides the tensors (``state.json``): the counters of the run,
    the validation history, the open interval's loss sums, the monitor's window."""

    def __init__(self):
        self.batches, self.recoveries, self.skipped, self.history = 0, [], [], {}
        self.interval = {"sums": {}, "steps": 0}
        self.in_a_row = 0
        self.stopped = False  # ended early (patience, a callback): a resume trains no further

    def to_json(self, monitor):
        return {"batches": self.batches, "recoveries": [list(r) for r in self.recoveries],
                "skipped_steps": list(self.skipped), "history": self.history,
                "interval": self.interval, "in_a_row": self.in_a_row,
                "stopped": self.stopped,
                "monitor": monitor.state() if monitor is not None else None}

    def load(self, saved, monitor):
        self.batches = saved.get("batches", 0)
        self.recoveries = [tuple(r) for r in saved.get("recoveries", [])]
        self.skipped = list(saved.get("skipped_steps", []))
        self.history = {k: list(v) for k, v in (saved.get("history") or {}).items()}
        interval = saved.get("interval") or {}
        self.interval = {"sums": dict(interval.get("sums", {})), "steps": interval.get("steps", 0)}
        self.in_a_row = saved.get("in_a_row", 0)
        self.stopped = bool(saved.get("stopped", False))
        if monitor is not None:
            monitor.load_state(saved.get("monitor"))


@contextlib.contextmanager
def _signals_to(flag):
    """Route SIGTERM/SIGINT to ``flag["signal"]`` while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("signal") is not None and signum == signal.SIGINT:  # a second Ctrl-C: now
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _due(step, every):
    return every and step % every == 0


def train(model, dataset, *, steps, eval_every, checkpoint_dir, checkpoint_every=None, keep=3,
          validation_data=None, callbacks=(), strategy=None, accumulation_steps=1,
          clip_norm=None, jit_compile=False, steps_per_execution=1, monitor=None, best=None,
          patience=None, max_loss=None, max_recoveries=3, max_skipped_steps=10, resume=True,
          write=True, echo=None):
    """Train a compiled ``model`` on ``dataset`` (an endless ``tf.data.Dataset`` of global
    batches) for ``steps`` optimizer steps; validate on ``validation_data`` every
    ``eval_every`` steps; checkpoint into ``checkpoint_dir`` every ``checkpoint_every`` steps
    (default ``eval_every``), keeping ``keep``; resume from its newest checkpoint when
    ``resume``.

    ``accumulation_steps`` micro-batches per step, gradients clipped to ``clip_norm``, the
    per-replica step compiled with XLA when ``jit_compile``, up to ``steps_per_execution``
    steps per call. ``monitor`` (a ``TrainingMonitor``) gets every step; ``best`` (a
    ``BestWeights``) keeps the weights of the best validation, and ``patience`` validations
    without a better one end the run. ``callbacks`` are Keras callbacks, called as ``fit``
    calls them (batch hooks once per call). ``write=False`` (multi-worker non-chief) keeps
    checkpoints off the disk. Returns a ``TrainResult``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    shown_dir = clip(checkpoint_dir, 100)  # as error lines quote it
    if type(model).train_step is not keras.Model.train_step:
        raise TrainingError(f"{type(model).__name__} overrides train_step, which kplm's loop "
                            "does not run (it has its own step): put the loss in compute_loss "
                            "(or loss_terms), or train it with model.fit")
    checkpoint_every = checkpoint_every or eval_every
    log_every = monitor.log_every if monitor is not None else None

    # --- the pieces: input, step, checkpoint, callbacks ----------------------------------------
    feed = Feed(dataset)
    step_fn = TrainStep(model, strategy, accumulation_steps, clip_norm, jit_compile)
    step_fn.build(dataset)
    checkpoint = checkpoint_of(model, feed.iterator if feed.checkpointable else None)
    store = CheckpointDirectory(checkpoint_dir, keep=keep, write=write)
    callbacks = keras.callbacks.CallbackList(list(callbacks), model=model)
    state, result, flag = _RunState(), TrainResult(), {"signal": None}
    saved_at = {"step": None}

    def now():
        return int(model.optimizer.iterations.numpy())

    def save(step):
        require_finite(model, f"the checkpoint of step {step} in {shown_dir}")
        state.batches = feed.batches
        state.stopped = bool(getattr(model, "stop_training", False))
        store.save(checkpoint, step, state.to_json(monitor))
        saved_at["step"] = step

    def restore(before=None):
        restored = store.restore(checkpoint if before is None else checkpoint_of(model),
                                 before=before, accept=lambda: not non_finite_weights(
                                     model.weights))
        if restored is not None:
            state.load(restored, monitor)
            saved_at["step"] = restored["step"]
        return restored

    # --- start, or continue where the newest checkpoint left off -------------------------------
    model.stop_training = False  # not a flag an earlier train() or fit() left (saved below)
    if not resume:
        store.clear()  # a new run: another run's checkpoints must not be pruned into or restored
    restored = None
    if store.checkpoints():
        start = time.perf_counter()
        restored = restore()
        if restored is not None:
            if feed.checkpointable:
                feed.batches = state.batches
            else:
                feed.skip(state.batches)
            result.restore_seconds = time.perf_counter() - start
            result.resumed_from = restored["step"]
            if echo:
                echo(f"resuming from {restored['path']} (step {restored['step']}, restored in "
                     f"{result.restore_seconds:.1f} s)")
    if restored is None and store.read_any:
        # a checkpoint was read but refused (non-finite weights, or a read that failed half
        # way): the model holds its values now, so starting over from step 0 is not possible
        raise TrainingError(f"no checkpoint in {shown_dir} can be restored (see the warnings "
                            "above); move it away to start the run again")
    if monitor is not None:
        monitor.truncate(now())  # what a killed run logged after its checkpoint goes
        monitor.begin(model, now())
    if restored is None:  # a new run, or every checkpoint damaged: start from step 0
        save(now())  # a loss-guard recovery always has a checkpoint to go back to

    # --- the loop --------------------------------------------------------------------------------
    callbacks.on_train_begin()
    model.stop_training = state.stopped  # a run that had stopped early, resumed: it stays so
    with _signals_to(flag):
        while now() < steps and not model.stop_training:
            step = now()
            if step % eval_every == 0 and state.interval["steps"] == 0:
                callbacks.on_epoch_begin(step // eval_every)
            due = [e for e in (log_every, eval_every, checkpoint_every) if e]
            n = min([steps_per_execution, steps - step] + [e - step % e for e in due])
            out = step_fn.run(feed.iterator, n)
            feed.batches += len(out)  # every batch read, whatever the guard finds below
            try:
                logs = _account(out, step, state, monitor, max_loss, max_skipped_steps, echo)
            except _Bad as bad:
                _recover(bad.args, state, feed, store, restore, monitor, model, max_recoveries,
                         shown_dir, echo)
                continue
            step = now()
            callbacks.on_train_batch_end(step % eval_every - 1 if step % eval_every else
                                         eval_every - 1, logs)
            if monitor is not None and (_due(step, log_every) or step == steps):
                monitor.log(step, metric_values(model))
            if _due(step, eval_every) or step == steps:
                _end_interval(step, eval_every, step_fn, validation_data, state, callbacks,
                              monitor, best, patience, model)
            signum = flag["signal"]  # read once: a signal may land between two reads
            if (_due(step, checkpoint_every) or signum is not None or step == steps) \
                    and saved_at["step"] != step:
                if non_finite_weights(model.weights):
                    _recover((step, float(out.loss[-1]), "non-finite weights"), state, feed,
                             store, restore, monitor, model, max_recoveries, shown_dir, echo)
                    continue
                save(step)
            if signum is not None and step < steps:
                name = signal.Signals(signum).name
                raise Interrupted(f"{name} at step {step}: checkpoint written to "
                                  f"{shown_dir}; run the same command again to continue", signum)
    final = now()
    if saved_at["step"] != final:  # stopped early (a callback, or patience)
        save(final)
    callbacks.on_train_end()
    result.step, result.history = final, {k: list(v) for k, v in state.history.items()}
    result.recoveries, result.skipped_steps = list(state.recoveries), list(state.skipped)
    if best is not None:
        result.best_step = best.step
    return result


def _account(out, step, state, monitor, max_loss, max_skipped_steps, echo):
    """Book the steps of one call: skipped updates, the loss guard, the interval's sums, the
    monitor's window. Returns the logs of the last step (for Keras' batch hooks)."""
    logs = {}
    for i in range(len(out)):
        loss = float(out.loss[i])
        terms = {name: float(values[i]) for name, values in out.terms.items()}
        if out.skipped[i]:  # the gate kept the weights: this batch is not a step
            state.in_a_row += 1
            state.skipped.append(step + 1)
            message = (f"non-finite gradients at step {step + 1}: update skipped "
                       f"({state.in_a_row} in a row, trainer.max_skipped_steps="
                       f"{max_skipped_steps})")
            warnings.warn(message, TrainingWarning, stacklevel=3)
            if echo:
                echo(message)
            if monitor is not None:
                monitor.record(loss, skipped=True)
            logs = {"loss": loss, "skipped_step": 1.0}
            if state.in_a_row > max_skipped_steps:
                raise _Bad(step + 1, loss, f"{state.in_a_row} non-finite steps in a row")
            continue
        state.in_a_row = 0
        step += 1
        if not math.isfinite(loss):  # a loss scaler's skip, or a model with its own loss
            raise _Bad(step, loss, "a non-finite loss")
        if max_loss is not None and loss > max_loss:
            raise _Bad(step, loss, f"a loss of {loss:.4g} above trainer.max_loss={max_loss}")
        sums = state.interval["sums"]
        sums["loss"] = sums.get("loss", 0.0) + loss
        if len(terms) > 1:
            for name, value in terms.items():
                sums[f"{name}_loss"] = sums.get(f"{name}_loss", 0.0) + value
        state.interval["steps"] += 1
        if monitor is not None:
            monitor.record(loss, terms if len(terms) > 1 else None,
                           grad_norm=float(out.grad_norm[i]))
        logs = {"loss": loss, **({f"{k}_loss": v for k, v in terms.items()}
                                 if len(terms) > 1 else {})}
    return logs


def _end_interval(step, eval_every, step_fn, validation_data, state, callbacks, monitor, best,
                  patience, model):
    """The end of a validation interval (a Keras epoch): the interval's means, the validation,
    ``on_epoch_end``, the best weights, early stopping."""
    interval = state.interval
    logs = {k: v / interval["steps"] for k, v in interval["sums"].items()} \
        if interval["steps"] else {}
    logs.update(metric_values(model))
    if validation_data is not None:
        loss, terms, metrics = step_fn.evaluate(validation_data)
        logs["val_loss"] = loss
        if len(terms) > 1:
            logs.update({f"val_{k}_loss": v for k, v in terms.items()})
        logs.update({f"val_{k}": v for k, v in metrics.items()})
    else:
        model.reset_metrics()
    for callback in callbacks.callbacks:  # one dict: a callback may add metrics (BLEU, ...)
        callback.on_epoch_end((step - 1) // eval_every, logs)
    if monitor is not None:
        monitor.validation(step, {k[4:]: v for k, v in logs.items() if k.startswith("val_")})
    if best is not None:
        best.update(model, step, logs)
        if patience and best.step is not None and (step - best.step) // eval_every >= patience:
            model.stop_training = True
    for key, value in logs.items():
        state.history.setdefault(key, []).append(float(value))
    state.interval = {"sums": {}, "steps": 0}


def _recover(bad, state, feed, store, restore, monitor, model, max_recoveries, shown_dir, echo):
    """The loss guard: back to the newest good checkpoint before the bad step; the batches in
    between are skipped (the iterator is not rewound)."""
    bad_step, loss, what = bad
    recoveries = list(state.recoveries)
    if len(recoveries) >= max_recoveries:
        raise TrainingError(
            f"{what} at step {bad_step}, after {len(recoveries)} recoveries "
            f"(trainer.max_recoveries={max_recoveries}); stopped. The last good "
            f"checkpoint is in {shown_dir}: lower the learning rate or check "
            "the data around this step")
    restored = restore(before=bad_step)
    if restored is None:
        raise TrainingError(f"{what} at step {bad_step} and no checkpoint with "
                            f"finite weights before it in {shown_dir}")
    # checkpoints after the restored one belong to the abandoned trajectory
    store.discard_after(restored["step"])
    state.recoveries = recoveries + [(bad_step, restored["step"])]
    state.in_a_row = 0
    if monitor is not None:  # the abandoned steps leave TensorBoard too
        monitor.close()
        monitor.truncate(restored["step"])
        monitor.begin(model, restored["step"])
    warnings.warn(f"{what} at step {bad_step}: restored the checkpoint of step "
                  f"{restored['step']} and skipped the "
                  f"{feed.batches - restored.get('batches', 0)} batch(es) since "
                  f"({len(state.recoveries)}/{max_recoveries} recoveries)",
                  TrainingWarning, stacklevel=3)
    if echo:
        echo(f"recovered from {what} at step {bad_step}: back to step "
             f"{restored['step']}, skipping the batches in between")
    return restored
