"""The training monitor: TensorBoard scalars and console lines, keyed by the optimizer step."""
import glob
import os
import time

import keras
import tensorflow as tf

from kplm.training.optimizer import current_learning_rate


class TrainingMonitor:
    """Writes ``train/<metric>`` every ``log_every`` steps and ``validation/<metric>`` after each
    evaluation into ``log_dir/{train,validation}``, plus ``train/learning_rate``,
    ``train/grad_norm``, ``train/tokens_per_second``, ``train/examples_per_second``,
    ``train/skipped_steps`` and, when the accelerator's peak is known, ``train/mfu`` (model
    FLOPs utilisation); prints the same on the console.

    ``train/loss`` (and ``train/<term>_loss`` for models with several losses) is the mean of
    the steps' own losses since the previous log; steps whose update the non-finite gate
    skipped are left out and counted in ``train/skipped_steps``. The other metrics are running
    means since the last validation. Scalars are keyed by the optimizer's step.

    The training loop (``kplm.training.loop.train(..., monitor=...)``) feeds it: ``record``
    after every step, ``log`` at every ``log_every``-th step, ``validation`` after each
    evaluation. Its window is part of each checkpoint (``state`` / ``load_state``), and a
    resumed run first cuts the event files back to the checkpoint's step (``truncate``): the
    resumed run's TensorBoard scalars are the uninterrupted run's, even after a SIGKILL.

    Args:
        log_dir: str. The run's ``tensorboard/`` directory.
        tokens_per_step: int. Tokens in one global batch (batch size x sequence length).
        examples_per_step: int. Rows in one global batch.
        log_every: int. Steps between train logs.
        total_steps: int. For the console's ``step N/total``.
        config_text: str or None. Resolved config, written once as text.
        echo: callable taking a line, or None for silence.
        flops_per_token: float or None. Training FLOPs per token (forward + backward), for MFU.
        peak_flops: float or None. Peak FLOP/s of all replicas together, for MFU.
        write: bool. False keeps TensorBoard files off the disk (multi-worker non-chiefs).
    """

    def __init__(self, log_dir, tokens_per_step, examples_per_step, log_every, total_steps,
                 config_text=None, echo=print, flops_per_token=None, peak_flops=None, write=True):
        self.log_dir = log_dir
        self.tokens_per_step, self.examples_per_step = tokens_per_step, examples_per_step
        self.log_every, self.total_steps = log_every, total_steps
        self.config_text, self.echo = config_text, echo
        self.flops_per_token, self.peak_flops, self.write = flops_per_token, peak_flops, write
        self.history = []  # (step, values) of every train log of this process
        self.first_loss = None  # the run's first logged loss (kept across resumes)
        self.last_throughput = None
        self._train = self._validation = None
        self._window = {"sums": {}, "steps": 0, "skipped": 0, "norm": 0.0}
        self._clock = None

    # --- state kept in each checkpoint -----------------------------------------------------------
    def state(self):
        """The open window (and the first logged loss), as JSON-able values."""
        return {"window": self._window, "first_loss": self.first_loss}

    def load_state(self, state):
        state = state or {}
        window = state.get("window") or {}
        self._window = {"sums": dict(window.get("sums", {})), "steps": window.get("steps", 0),
                        "skipped": window.get("skipped", 0), "norm": window.get("norm", 0.0),
                        "norms": window.get("norms", 0)}
        self.first_loss = state.get("first_loss")

    def truncate(self, step):
        """Drop every event logged after ``step`` from the event files (a resumed run logs those
        steps again). Each file is rewritten to a sibling and renamed over it."""
        if not self.write:
            return
        self.close()  # the writers' files are rewritten: opened again by begin()
        # only the two folders this monitor writes: other event files are not kplm's to touch
        paths = [p for split in ("train", "validation") for p in
                 glob.glob(os.path.join(self.log_dir, split, "events.out.tfevents.*"))]
        for path in sorted(paths):
            if ".tmp-" in os.path.basename(path):
                continue
            keep, dropped = [], 0
            try:
                for record in tf.data.TFRecordDataset(path):
                    event = tf.compat.v1.Event.FromString(record.numpy())
                    # step 0: everything goes (the config text is written again)
                    if event.HasField("summary") and (event.step > step or step == 0):
                        dropped += 1
                    else:
                        keep.append(record.numpy())
            except tf.errors.DataLossError:  # a record cut by a kill: the rest is dropped
                dropped += 1
            if not dropped:
                continue
            tmp = os.path.join(os.path.dirname(path),
                               f".{os.path.basename(path)}.tmp-{os.getpid()}")
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in keep:
                    writer.write(record)
            os.replace(tmp, path)

    # --- what the loop calls ---------------------------------------------------------------------
    def begin(self, model, step):
        """Open the writers (once); the throughput clock starts now."""
        self.model = model
        if self._train is None:
            if self.write:
                self._train = tf.summary.create_file_writer(f"{self.log_dir}/train")
                self._validation = tf.summary.create_file_writer(f"{self.log_dir}/validation")
            else:
                self._train = self._validation = tf.summary.create_noop_writer()
            if self.config_text and step == 0:
                with self._train.as_default():
                    tf.summary.text("config", f"```\n{self.config_text}\n```", step=0)
        self._clock = (step, time.perf_counter())

    def record(self, loss, terms=None, skipped=False, grad_norm=None):
        """One step's own loss (and its terms) into the window; a skipped step is counted."""
        if skipped:
            self._window["skipped"] += 1
            return
        sums = self._window["sums"]
        sums["loss"] = sums.get("loss", 0.0) + float(loss)
        for name, value in (terms or {}).items():
            sums[f"{name}_loss"] = sums.get(f"{name}_loss", 0.0) + float(value)
        if grad_norm is not None and grad_norm >= 0:  # -1: not computed (several replicas)
            self._window["norm"] += float(grad_norm)
            self._window["norms"] = self._window.get("norms", 0) + 1
        self._window["steps"] += 1

    def log(self, step, metrics=None):
        """Write the window ending at ``step``: its mean losses, ``metrics`` (running means),
        the learning rate, throughput and MFU."""
        window = self._window
        values = {}
        if window["steps"]:
            values.update({k: v / window["steps"] for k, v in window["sums"].items()})
            if window.get("norms"):
                values["grad_norm"] = window["norm"] / window["norms"]
        values.update({k: float(v) for k, v in (metrics or {}).items()})
        values["skipped_steps"] = float(window["skipped"])
        values["learning_rate"] = current_learning_rate(self.model.optimizer)
        start_step, start = self._clock or (step, time.perf_counter())
        now = time.perf_counter()
        steps = step - start_step
        if steps > 0:
            seconds = max(now - start, 1e-9)
            values["tokens_per_second"] = self.tokens_per_step * steps / seconds
            values["examples_per_second"] = self.examples_per_step * steps / seconds
            self.last_throughput = values["tokens_per_second"]
            if self.flops_per_token and self.peak_flops:
                values["mfu"] = (self.flops_per_token * values["tokens_per_second"]
                                 / self.peak_flops)
        self._clock = (step, now)
        self._window = {"sums": {}, "steps": 0, "skipped": 0, "norm": 0.0}
        with self._train.as_default():
            for name, value in values.items():
                tf.summary.scalar(f"train/{name}", value, step=step)
        self._train.flush()
        self.history.append((step, values))
        if self.first_loss is None and "loss" in values:
            self.first_loss = values["loss"]
        if self.echo:
            self.echo(f"step {step}/{self.total_steps}  " + _format(values))
        return values

    def validation(self, step, values):
        """Write one evaluation's ``values`` (without the ``val_`` prefix)."""
        if not values:
            return
        with self._validation.as_default():
            for name, value in values.items():
                tf.summary.scalar(f"validation/{name}", float(value), step=step)
        self._validation.flush()
        if self.echo:
            self.echo(f"validation at step {step}  " + _format(values))
        self._clock = (step, time.perf_counter())  # evaluation is not training time

    def close(self):
        if self._train is not None:
            self._train.close()
            self._validation.close()
            self._train = self._validation = None


def _format(values):
    parts = []
    for name, value in values.items():
        if name == "tokens_per_second":
            parts.append(f"{value / 1000:.1f}k tok/s")
        elif name == "examples_per_second" or (name == "skipped_steps" and not value):
            continue
        elif name == "mfu":
            parts.append(f"MFU {value:.1%}")
        elif name == "learning_rate":
            parts.append(f"lr {value:.2e}")
        else:
            parts.append(f"{name} {value:.4g}")
    return "  ".join(parts)


#: Dense peak TFLOP/s per device, (16-bit mixed precision, float32 as TensorFlow runs it: TF32
#: on tensor cores from Ampere on), from the vendors' data sheets. Matched by substring of the
#: device name TensorFlow reports, first match wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS = (
    ("H200", (989.0, 494.0)), ("H100 PCIe", (756.0, 378.0)), ("H100", (989.0, 494.0)),
    ("A100", (312.0, 156.0)), ("L40S", (362.0, 183.0)), ("L4", (121.0, 60.0)),
    ("A10G", (70.0, 35.0)), ("A10", (125.0, 62.5)), ("V100", (125.0, 15.7)),
    ("T4", (65.0, 8.1)),
)


def flops_per_token(model, backbone=None, sequence_length=None):
    """Training FLOPs per token, PaLM's estimate: ``6 N + 12 L d s`` (``N`` trainable parameters,
    ``L`` layers, ``d`` hidden size, ``s`` the length of the rows trained on, else the
    backbone's ``sequence_length``; forward + backward, with attention).

    Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> flops_per_token(model)
    60
    """
    n = sum(int(keras.ops.size(v)) for v in model.trainable_variables)
    attention = 0
    layers = getattr(backbone, "num_layers", None)
    hidden = getattr(backbone, "hidden_dim", None)
    length = sequence_length or getattr(backbone, "sequence_length", None)
    if layers and hidden and length:
        attention = 12 * layers * hidden * length
    return 6 * n + attention


def peak_flops(trainer, strategy):
    """Peak FLOP/s of all replicas together: ``trainer.peak_tflops`` per replica if given, else
    the data-sheet figure of a known GPU for the run's precision; None when unknown (CPUs)."""
    replicas = strategy.num_replicas_in_sync
    if trainer.peak_tflops:
        return trainer.peak_tflops * 1e12 * replicas
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
    for key, (half, single) in PEAK_TFLOPS:
        if key in name:
            return (half if trainer.mixed_precision else single) * 1e12 * replicas
    return None
