"""One training run, from a checked config to saved results: the steps pretraining and
fine-tuning share.

``run(job)`` does, in this order: check everything (``job.check``) before touching the disk;
pick the strategy; create or resume the run directory; seed; the tokenizer
(``job.prepare``); the model, optimizer and compile under the strategy (``job.build``); the
datasets (``job.datasets``); the monitor; ``kplm.training.loop.train``; what the run leaves
behind (``job.finish``) and ``metrics.json``. A ``Job`` says only what differs:
``kplm.training.pretrain.PretrainJob`` and ``kplm.training.finetune.FinetuneJob``.
"""
import os
import re
import time

from kplm import runs
from kplm.errors import KplmError
from kplm.training.runtime import restoring_precision_policy, start_run, strategy_for


class Job:
    """What one kind of run adds to ``run``. Attributes set by ``check``: ``spec`` (with
    ``run_dir`` and ``seed``) and ``trainer`` (a ``TrainerConfig``); by ``build``:
    ``backbone`` and ``tokenizer``.
    """

    kind = "run"
    backbone = tokenizer = None

    def check(self):
        """Check the config and every input; nothing is written yet."""
        raise NotImplementedError

    def resolved(self):
        """The config with every default filled in (``run_dir/config.yaml``)."""
        raise NotImplementedError

    def prepare(self, run_dir, resuming, write, echo, progress):
        """Before the model: the tokenizer (given, learned, a checkpoint's, or the run's)."""

    def build(self, run_dir, resuming, write):
        """The compiled-to-be model (under the strategy's scope); sets ``backbone`` and
        ``tokenizer``."""
        raise NotImplementedError

    def optimizer(self):
        """The optimizer (under the strategy's scope)."""
        from kplm.training.optimizer import build_optimizer
        return build_optimizer(self.trainer)

    def datasets(self):
        """``(train, validation or None)``: an endless and a finite dataset of global batches."""
        raise NotImplementedError

    def tokens_per_row(self):
        """Tokens one training row holds (for tokens/s)."""
        return self.backbone.sequence_length

    def fewest_tokens_per_row(self):
        """The fewest tokens a training batch's rows may be cut to (the memory check's lower
        bound): ``tokens_per_row`` unless batches are cut to their rows' lengths."""
        return self.tokens_per_row()

    def describe(self, model, strategy):
        """The line printed when training starts."""
        return f"{self.kind} for {self.trainer.steps} steps"

    def loop_options(self, model, run_dir, write):
        """Extra ``train`` arguments: ``best``, ``patience``, ``callbacks``."""
        return {}

    def finish(self, model, result, monitor, wall, run_dir, write):
        """Save what the run leaves and return its metrics (written to ``metrics.json``)."""
        raise NotImplementedError

    def after_metrics(self, run_dir):
        """Once ``metrics.json`` is written (the run is finished): remove what only a resume
        needed."""


def run(job, *, overwrite=False, echo=print, progress=True):
    """Run ``job`` (a ``Job``); returns its metrics. A run that fails before its first
    checkpoint leaves ``run_dir`` as it was (``kplm.outputs.in_place_outputs``)."""
    from kplm.outputs import in_place_outputs
    with restoring_precision_policy(), in_place_outputs():
        try:
            return _run(job, overwrite=overwrite, echo=echo, progress=progress)
        except Exception as e:
            if type(e).__name__ != "DataLossError":  # tf.errors.DataLossError: TF was imported
                raise
            raise _damaged_data(job, e) from None


def _damaged_data(job, error):
    """A record of the run's data that fails its checksum as it is read (a TFRecord shard
    damaged after ``kplm data prepare`` checked it): one line naming the data's files."""
    from kplm.errors import DataError, clip, in_files
    data = job.resolved().get("data") or {}
    where = [f"data.{split}{in_files(section)}"
             for split, section in data.items() if isinstance(section, dict)]
    first = str(getattr(error, "message", error)).strip().splitlines()[0]
    first = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|\s+name:\s*$", "", first).strip()  # TF's
    return DataError(f"{', '.join(where) or 'the data'}: a damaged record ({clip(first, 160)}); "
                     "a TFRecord shard was changed after it was written: prepare it again "
                     "(kplm data prepare)")


def _run(job, *, overwrite, echo, progress):
    # --- check everything before touching the disk --------------------------------------------
    job.check()
    trainer, run_dir = job.trainer, job.spec.run_dir

    import keras

    from kplm.training.distribute import check_activation_memory, check_batch_size, is_chief

    # The strategy comes first: a multi-worker strategy must exist before any TensorFlow op runs.
    strategy = strategy_for(trainer.strategy)
    write = is_chief(strategy)
    check_batch_size(trainer.batch_size, trainer.gradient_accumulation_steps, strategy)
    config_text, plan = start_run(run_dir, overwrite, job.resolved(), write=write,
                                  finished=job.after_metrics, kind=job.kind)
    if plan == "finished":  # the same command again after the run ended: nothing to do
        if echo:
            echo(f"run_dir {run_dir} already holds this run, finished: nothing to do (its "
                 f"metrics: {runs.METRICS}; --overwrite trains it again)")
        path = os.path.join(run_dir, runs.METRICS)
        metrics = runs.read_json(path, "the run's metrics")
        if not isinstance(metrics, dict):
            raise KplmError(f"{path}: expected a JSON object of the run's metrics, not "
                            f"{type(metrics).__name__}")
        return metrics
    resuming = plan == "resume"
    keras.utils.set_random_seed(job.spec.seed)
    job.prepare(run_dir, resuming, write, echo, progress)

    # --- model, optimizer, compile, under the distribution strategy ---------------------------
    from kplm.training.precision import resolve
    trainer.mixed_precision = resolve(trainer.mixed_precision, strategy, run_dir,
                                      resuming=resuming, write=write, echo=echo)
    if trainer.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{trainer.mixed_precision}")
    with strategy.scope():
        model = job.build(run_dir, resuming, write)
    import tensorflow as tf
    if not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")):
        check_activation_memory(trainer.batch_size, trainer.gradient_accumulation_steps *
                                strategy.num_replicas_in_sync, job.backbone,
                                job.fewest_tokens_per_row(),
                                half_precision=bool(trainer.mixed_precision))
    with strategy.scope():
        optimizer = job.optimizer()
        if trainer.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)
    train_ds, validation_ds = job.datasets()
    if validation_ds is not None:
        if trainer.validation_steps:
            validation_ds = validation_ds.take(trainer.validation_steps)
        validation_ds = validation_ds.cache()

    # --- the loop ------------------------------------------------------------------------------
    from kplm.training.monitor import TrainingMonitor, flops_per_token, peak_flops
    row = job.tokens_per_row()  # the rows' length, not the position table's (512 in BERT)
    monitor = TrainingMonitor(os.path.join(run_dir, runs.TENSORBOARD),
                              trainer.batch_size * row, trainer.batch_size,
                              trainer.log_every, trainer.steps, config_text=config_text,
                              echo=echo, flops_per_token=flops_per_token(model, job.backbone, row),
                              peak_flops=peak_flops(trainer, strategy), write=write)
    options = job.loop_options(model, run_dir, write)
    callbacks = list(options.pop("callbacks", []))
    for callback in callbacks:  # callbacks that write a file write it into the run directory
        if hasattr(callback, "place"):
            callback.place(run_dir, resuming, write)
    if echo:
        echo(job.describe(model, strategy))
    status = {"total_steps": trainer.steps, "kind": job.kind, "started": time.time()}
    if write:
        runs.write_status(run_dir, "running", **status)
    try:
        metrics = _train_and_finish(job, model, train_ds, validation_ds, monitor, options,
                                    callbacks, strategy, resuming, run_dir, write, echo, status)
    except BaseException as e:
        if write:
            _record_failure(run_dir, e, status)
        raise
    return metrics


def _train_and_finish(job, model, train_ds, validation_ds, monitor, options, callbacks,
                      strategy, resuming, run_dir, write, echo, status):
    """The loop, then what the run leaves (``job.finish``, ``metrics.json``); returns the
    metrics."""
    from kplm.training.loop import train
    trainer = job.trainer
    start = time.perf_counter()
    try:
        result = train(model, train_ds, steps=trainer.steps, eval_every=trainer.eval_every,
                       checkpoint_dir=os.path.join(run_dir, runs.CHECKPOINTS),
                       checkpoint_every=trainer.checkpoint_every, keep=trainer.keep_checkpoints,
                       validation_data=validation_ds, callbacks=callbacks, strategy=strategy,
                       accumulation_steps=trainer.gradient_accumulation_steps,
                       clip_norm=trainer.clip_norm, jit_compile=trainer.jit_compile,
                       steps_per_execution=trainer.steps_per_execution, monitor=monitor,
                       max_loss=trainer.max_loss, max_recoveries=trainer.max_recoveries,
                       max_skipped_steps=trainer.max_skipped_steps, resume=resuming,
                       write=write, echo=echo, **options)
    finally:
        monitor.close()
    wall = time.perf_counter() - start

    # --- what the run leaves ---------------------------------------------------------------------
    metrics = job.finish(model, result, monitor, wall, run_dir, write)
    if write:
        runs.write_json(os.path.join(run_dir, runs.METRICS), metrics)
        runs.write_status(run_dir, "finished", **status)
        job.after_metrics(run_dir)
    if echo:
        echo(f"done in {wall:.0f} s; run directory {run_dir}")
    return metrics


def _record_failure(run_dir, error, status):
    """``status.json`` of a run the loop left by an exception: ``failed`` with the error's one
    line, or ``interrupted`` (Ctrl-C). Never raises: the original error is what matters."""
    from kplm.errors import clip, describe
    try:
        if isinstance(error, KeyboardInterrupt):
            runs.write_status(run_dir, "interrupted", **status)
        else:
            runs.write_status(run_dir, "failed", error=clip(describe(error), 300), **status)
    except Exception:  # a full or read-only disk: the run's own error is reported instead
        pass


def common_metrics(result, wall):
    """The metrics every run reports about its loop."""
    return {"resumed_from_step": result.resumed_from,
            "restore_seconds": result.restore_seconds,
            "recoveries": [list(r) for r in result.recoveries],
            "skipped_steps": result.skipped_steps,
            "wall_seconds": wall,
            "peak_memory_mb": peak_memory_mb()}


def peak_memory_mb():
    """The most memory this run used, in MiB: the accelerator's peak where TensorFlow reports
    one (the first GPU), else the process's peak resident set (host memory, as on a CPU)."""
    try:
        import tensorflow as tf
        if tf.config.list_logical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # no memory info for this device: the host's figure
        pass
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, else KiB
