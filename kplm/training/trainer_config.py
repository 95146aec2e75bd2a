"""The ``trainer:`` section of a run config (no TensorFlow needed to check it)."""
from typing import Literal, Optional

from kplm.checks import check_limits
from kplm.errors import ConfigError


class TrainerConfig:
    """How to train: steps, batch size, optimizer, schedule, evaluation, logging, hardware.

    Args:
        steps: int. Optimizer steps in the whole run. Defaults to 1000.
        batch_size: int. Global batch size (split across replicas). Defaults to 32.
        learning_rate: float. Peak learning rate. Defaults to 5e-4.
        warmup_steps: int. Linear warmup from 0. Defaults to 0.
        decay: ``"linear"``, ``"cosine"`` or ``"constant"`` after warmup. Defaults to ``"linear"``.
        end_learning_rate_fraction: float. Final rate as a share of the peak. Defaults to 0.0.
        weight_decay: float. AdamW decoupled weight decay (not on biases or layer norms).
            Defaults to 0.01.
        beta_1, beta_2, epsilon: AdamW moments. Defaults to 0.9, 0.999, 1e-6.
        clip_norm: float or None. Global gradient-norm clipping. Defaults to 1.0.
        eval_every: int. Steps between validations (and Keras epochs). Defaults to 100.
        validation_steps: int or None. Validation batches per evaluation; None reads the whole
            validation set. Defaults to None.
        log_every: int. Steps between TensorBoard/console logs. Defaults to 10.
        checkpoint_every: int or None. Steps between checkpoints; None means ``eval_every``.
        keep_checkpoints: int. Newest checkpoints kept. Defaults to 3.
        gradient_accumulation_steps: int. Split every global batch into this many micro-batches
            and apply one update for their sum, normalised by the batch's true number of target
            tokens (so k micro-batches of b rows equal one batch of k*b rows). Defaults to 1.
        max_loss: float or None. A training loss above this bound counts as a spike: like a
            non-finite loss, it restores the last good checkpoint and skips the batches since.
            Defaults to None (only non-finite losses).
        max_recoveries: int. Recoveries from non-finite or spiking losses before the run stops.
            Defaults to 3.
        max_skipped_steps: int. Steps in a row whose update the non-finite gate may skip (a
            NaN or inf gradient: the weights stay as they were) before the loss guard restores
            the last good checkpoint. Defaults to 10.
        peak_tflops: float or None. The accelerator's peak TFLOP/s per replica, for model FLOPs
            utilisation; None looks the device up in a table of known ones. Defaults to None.
        strategy: ``"auto"``, ``"default"``, ``"mirrored"``, ``"multi_worker"`` or ``"tpu"``.
            ``auto`` picks multi_worker when ``TF_CONFIG`` is set, tpu when one is found,
            mirrored with more than one GPU, default otherwise. Defaults to ``"auto"``.
        mixed_precision: None, ``"bfloat16"``, ``"float16"`` (with dynamic loss scaling) or
            ``"auto"`` (bfloat16 where a short probe at start-up finds it faster, see
            ``kplm.training.precision``); logits and losses stay float32. Defaults to None.
        jit_compile: bool. Compile train steps with XLA. Defaults to False (slower start on CPU).
        steps_per_execution: int. Steps run by one call into TensorFlow when nothing (a log, a
            validation, a checkpoint) is due in between: fewer round trips from Python, which
            counts on small models. Defaults to 10.

    Example:
    >>> TrainerConfig(steps=200, eval_every=100).validations
    2
    """

    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {
        "steps": ">= 1", "batch_size": (">= 1", "multiple of gradient_accumulation_steps"),
        "learning_rate": "> 0", "warmup_steps": "[0, steps]",
        "end_learning_rate_fraction": "[0, 1]", "weight_decay": ">= 0", "beta_1": "[0, 1)",
        "beta_2": "[0, 1)", "epsilon": "> 0", "clip_norm": "> 0", "eval_every": ">= 1",
        "validation_steps": ">= 1", "log_every": ">= 1", "checkpoint_every": ">= 1",
        "keep_checkpoints": ">= 1", "gradient_accumulation_steps": ">= 1", "max_loss": "> 0",
        "max_recoveries": ">= 0", "max_skipped_steps": ">= 0", "peak_tflops": "> 0",
        "steps_per_execution": ">= 1",
    }

    def __init__(
        self,
        steps: int = 1000,
        batch_size: int = 32,
        learning_rate: float = 5e-4,
        warmup_steps: int = 0,
        decay: Literal["linear", "cosine", "constant"] = "linear",
        end_learning_rate_fraction: float = 0.0,
        weight_decay: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        clip_norm: Optional[float] = 1.0,
        eval_every: int = 100,
        validation_steps: Optional[int] = None,
        log_every: int = 10,
        checkpoint_every: Optional[int] = None,
        keep_checkpoints: int = 3,
        gradient_accumulation_steps: int = 1,
        max_loss: Optional[float] = None,
        max_recoveries: int = 3,
        max_skipped_steps: int = 10,
        peak_tflops: Optional[float] = None,
        strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto",
        mixed_precision: Optional[Literal["auto", "bfloat16", "float16"]] = None,
        jit_compile: bool = False,
        steps_per_execution: int = 10,
    ):
        check_limits(self.limits, locals(), "trainer")
        for key, value in (("steps", steps), ("batch_size", batch_size),
                           ("eval_every", eval_every), ("log_every", log_every),
                           ("keep_checkpoints", keep_checkpoints),
                           ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if value < 1:
                raise ConfigError(f"config key 'trainer.{key}' must be >= 1, got {value}")
        if learning_rate <= 0:
            raise ConfigError(f"config key 'trainer.learning_rate' must be > 0, got {learning_rate}")
        if warmup_steps < 0 or warmup_steps > steps:
            raise ConfigError(f"config key 'trainer.warmup_steps' must be within [0, steps={steps}],"
                              f" got {warmup_steps}")
        eval_every = min(eval_every, steps)
        if steps % eval_every:
            raise ConfigError(f"config key 'trainer.steps' ({steps}) must be a multiple of "
                              f"'trainer.eval_every' ({eval_every})")
        if batch_size % gradient_accumulation_steps:
            raise ConfigError(f"config key 'trainer.batch_size' ({batch_size}) must be a multiple "
                              f"of 'trainer.gradient_accumulation_steps' "
                              f"({gradient_accumulation_steps})")
        for key, value in (("max_recoveries", max_recoveries),
                           ("max_skipped_steps", max_skipped_steps)):
            if value < 0:
                raise ConfigError(f"config key 'trainer.{key}' must be >= 0, got {value}")
        for key, value in (("max_loss", max_loss), ("peak_tflops", peak_tflops)):
            if value is not None and value <= 0:
                raise ConfigError(f"config key 'trainer.{key}' must be > 0, got {value}")
        self.steps, self.batch_size = steps, batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_loss, self.max_recoveries, self.peak_tflops = max_loss, max_recoveries, peak_tflops
        self.max_skipped_steps = max_skipped_steps
        self.learning_rate, self.warmup_steps, self.decay = learning_rate, warmup_steps, decay
        self.end_learning_rate_fraction = end_learning_rate_fraction
        self.weight_decay, self.beta_1, self.beta_2, self.epsilon = (
            weight_decay, beta_1, beta_2, epsilon)
        self.clip_norm = clip_norm
        self.eval_every, self.validation_steps, self.log_every = (
            eval_every, validation_steps, log_every)
        self.checkpoint_every = checkpoint_every or eval_every
        self.keep_checkpoints = keep_checkpoints
        self.strategy, self.mixed_precision, self.jit_compile = (
            strategy, mixed_precision, jit_compile)
        self.steps_per_execution = steps_per_execution

    @property
    def validations(self):
        """Validation intervals in the run (``steps / eval_every``)."""
        return self.steps // self.eval_every
