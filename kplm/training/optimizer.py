"""Optimizer and learning-rate schedule for kplm training runs."""
import math

import keras

#: Variables whose names contain one of these are not weight-decayed (BERT's exclusions).
NO_DECAY = ["bias", "gamma", "beta", "layer_norm", "LayerNorm"]


@keras.saving.register_keras_serializable(package="kplm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then ``linear``/``cosine`` decay to
    ``end`` at ``total_steps`` (or ``constant``).

    Example:
    >>> schedule = WarmupDecay(1e-3, warmup_steps=10, total_steps=110, decay="linear")
    >>> [round(float(schedule(s)), 6) for s in (0, 5, 10, 60, 110)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """

    def __init__(self, peak, warmup_steps, total_steps, decay="linear", end=0.0):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.decay, self.end = decay, end

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup = self.peak * step / warm
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.decay == "linear":
            decayed = self.end + (self.peak - self.end) * (1.0 - progress)
        elif self.decay == "cosine":
            decayed = self.end + (self.peak - self.end) * 0.5 * (
                1.0 + keras.ops.cos(math.pi * progress))
        else:
            decayed = keras.ops.convert_to_tensor(self.peak, "float32")
        return keras.ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "decay": self.decay, "end": self.end}


class ScaledAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate is multiplied by ``scale`` for the variables in
    ``scaled_variables`` (e.g. a pretrained backbone under a freshly initialised head)."""

    def __init__(self, *args, scaled_variables=(), scale=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        # update_step sees the backend variables (tf.Variable named "<keras path>:0").
        self._scaled_ids = {id(v) for v in scaled_variables}
        self._scaled_ids |= {id(getattr(v, "value", v)) for v in scaled_variables}
        self._scaled_names = {f"{v.path}:0" for v in scaled_variables}
        self.scale = scale

    def update_step(self, gradient, variable, learning_rate):
        if id(variable) in self._scaled_ids or getattr(variable, "name", None) in self._scaled_names:
            learning_rate = learning_rate * self.scale
        return super().update_step(gradient, variable, learning_rate)


def build_optimizer(trainer, scaled_variables=(), scale=1.0):
    """AdamW with warmup + decay and BERT's weight-decay exclusions; ``scaled_variables`` train
    at ``scale`` times the learning rate. (``trainer.clip_norm`` is applied by kplm's train
    step, to the gradient summed over every replica: ``kplm.training.step``.)"""
    schedule = WarmupDecay(trainer.learning_rate, trainer.warmup_steps, trainer.steps,
                           trainer.decay, trainer.learning_rate * trainer.end_learning_rate_fraction)
    optimizer = ScaledAdamW(scaled_variables=scaled_variables, scale=scale,
        learning_rate=schedule, weight_decay=trainer.weight_decay, beta_1=trainer.beta_1,
        beta_2=trainer.beta_2, epsilon=trainer.epsilon)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


def current_learning_rate(optimizer):
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
