"""The training monitor: TensorBoard scalars and console lines, keyed by the optimizer step."""
import time

import keras
import tensorflow as tf

from kplm.training.optimizer import current_learning_rate
from kplm.training.step import SKIPPED, STEP_LOSS


class TrainingMonitor(keras.callbacks.Callback):
    """Writes ``train/<metric>`` every ``log_every`` steps and ``validation/<metric>`` after each
    evaluation into ``log_dir/{train,validation}``, plus ``train/learning_rate``,
    ``train/tokens_per_second``, ``train/examples_per_second`` and, when the accelerator's peak
    is known, ``train/mfu`` (model FLOPs utilisation); prints the same on the console.

    ``train/loss`` is the mean of the steps' own losses since the previous log (kplm's train
    step reports each step's loss; steps whose update the non-finite gate skipped are left out
    and counted in ``train/skipped_steps``); the other metrics are Keras' running means since
    the last validation.
    Scalars are keyed by the optimizer's step, so a resumed run continues its curves. The monitor
    may serve several ``fit`` calls; ``close()`` ends it.

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
        super().__init__()
        self.log_dir = log_dir
        self.tokens_per_step, self.examples_per_step = tokens_per_step, examples_per_step
        self.log_every, self.total_steps = log_every, total_steps
        self.config_text, self.echo = config_text, echo
        self.flops_per_token, self.peak_flops, self.write = flops_per_token, peak_flops, write
        self.history = []  # (step, {"loss": ...}) of every train log, for tests and metrics.json
        self.last_throughput = None
        self._train = self._validation = None

    def on_train_begin(self, logs=None):
        if self._train is None:
            if self.write:
                self._train = tf.summary.create_file_writer(f"{self.log_dir}/train")
                self._validation = tf.summary.create_file_writer(f"{self.log_dir}/validation")
            else:
                self._train = self._validation = tf.summary.create_noop_writer()
            if self.config_text:
                with self._train.as_default():
                    tf.summary.text("config", f"```\n{self.config_text}\n```",
                                    step=self._step())
        self._window_step = self._step()
        self._window_start = time.perf_counter()
        self._loss_sum, self._loss_n, self._skipped = 0.0, 0, 0  # the window's steps

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        logs = dict(logs or {})
        skipped = float(logs.pop(SKIPPED, 0.0)) > 0
        step_loss = logs.pop(STEP_LOSS, None)
        if skipped:
            self._skipped += 1
            return  # the step did not happen: it is logged with the next one that does
        if step_loss is not None:
            self._loss_sum += float(step_loss)
            self._loss_n += 1
        step = self._step()
        if step % self.log_every and step != self.total_steps:
            return
        now = time.perf_counter()
        steps = step - self._window_step
        seconds = max(now - self._window_start, 1e-9)
        self._window_step, self._window_start = step, now
        values = {k: float(v) for k, v in logs.items()}
        if self._loss_n:  # the window's mean of the steps' own losses
            values["loss"] = self._loss_sum / self._loss_n
        values["skipped_steps"] = float(self._skipped)
        self._loss_sum, self._loss_n, self._skipped = 0.0, 0, 0
        values["learning_rate"] = current_learning_rate(self.model.optimizer)
        if steps > 0:
            values["tokens_per_second"] = self.tokens_per_step * steps / seconds
            values["examples_per_second"] = self.examples_per_step * steps / seconds
            self.last_throughput = values["tokens_per_second"]
            if self.flops_per_token and self.peak_flops:
                values["mfu"] = (self.flops_per_token * values["tokens_per_second"]
                                 / self.peak_flops)
        with self._train.as_default():
            for name, value in values.items():
                tf.summary.scalar(f"train/{name}", value, step=step)
        self._train.flush()
        self.history.append((step, values))
        if self.echo:
            self.echo(f"step {step}/{self.total_steps}  " + _format(values))

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        values = {k[4:]: float(v) for k, v in (logs or {}).items() if k.startswith("val_")}
        if not values:
            return
        with self._validation.as_default():
            for name, value in values.items():
                tf.summary.scalar(f"validation/{name}", value, step=step)
        self._validation.flush()
        if self.echo:
            self.echo(f"validation at step {step}  " + _format(values))
        # The evaluation pass is not training time: restart the throughput window.
        self._window_start = time.perf_counter()

    def on_train_end(self, logs=None):
        self._train.flush()
        self._validation.flush()

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


def flops_per_token(model, backbone=None):
    """Training FLOPs per token, PaLM's estimate: ``6 N + 12 L d s`` (``N`` trainable parameters,
    ``L`` layers, ``d`` hidden size, ``s`` sequence length; forward + backward, with attention).

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
    length = getattr(backbone, "sequence_length", None)
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
