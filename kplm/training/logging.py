"""The training monitor: TensorBoard scalars and console lines, keyed by the optimizer step."""
import time

import keras
import tensorflow as tf

from kplm.training.optimizer import current_learning_rate


class TrainingMonitor(keras.callbacks.Callback):
    """Writes ``train/<metric>`` every ``log_every`` steps and ``validation/<metric>`` after each
    evaluation into ``log_dir/{train,validation}``, plus ``train/learning_rate``,
    ``train/tokens_per_second`` and ``train/examples_per_second``; prints the same on the console.

    Scalars are keyed by the optimizer's step, so a resumed run continues its curves.

    Args:
        log_dir: str. The run's ``tensorboard/`` directory.
        tokens_per_step: int. Tokens in one global batch (batch size x sequence length).
        examples_per_step: int. Rows in one global batch.
        log_every: int. Steps between train logs.
        total_steps: int. For the console's ``step N/total``.
        config_text: str or None. Resolved config, written once as text.
        echo: callable taking a line, or None for silence.
    """

    def __init__(self, log_dir, tokens_per_step, examples_per_step, log_every, total_steps,
                 config_text=None, echo=print):
        super().__init__()
        self.log_dir = log_dir
        self.tokens_per_step, self.examples_per_step = tokens_per_step, examples_per_step
        self.log_every, self.total_steps = log_every, total_steps
        self.config_text, self.echo = config_text, echo
        self.history = []  # (step, {"loss": ...}) of every train log, for tests and metrics.json
        self.last_throughput = None

    def on_train_begin(self, logs=None):
        self._train = tf.summary.create_file_writer(f"{self.log_dir}/train")
        self._validation = tf.summary.create_file_writer(f"{self.log_dir}/validation")
        self._window_step = self._step()
        self._window_start = time.perf_counter()
        if self.config_text:
            with self._train.as_default():
                tf.summary.text("config", f"```\n{self.config_text}\n```", step=self._step())

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step % self.log_every and step != self.total_steps:
            return
        now = time.perf_counter()
        steps = step - self._window_step
        seconds = max(now - self._window_start, 1e-9)
        self._window_step, self._window_start = step, now
        values = {k: float(v) for k, v in (logs or {}).items()}
        values["learning_rate"] = current_learning_rate(self.model.optimizer)
        if steps > 0:
            values["tokens_per_second"] = self.tokens_per_step * steps / seconds
            values["examples_per_second"] = self.examples_per_step * steps / seconds
            self.last_throughput = values["tokens_per_second"]
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
        self._train.close()
        self._validation.close()


def _format(values):
    parts = []
    for name, value in values.items():
        if name == "tokens_per_second":
            parts.append(f"{value / 1000:.1f}k tok/s")
        elif name == "examples_per_second":
            continue
        elif name == "learning_rate":
            parts.append(f"lr {value:.2e}")
        else:
            parts.append(f"{name} {value:.4g}")
    return "  ".join(parts)
