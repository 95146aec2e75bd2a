"""``kplm pretrain``: one function that reads top to bottom, from config to saved backbone."""
import os
import time

from kplm import runs
from kplm.config import (check_arguments, check_callbacks, check_data, check_run_header,
                         check_section)
from kplm.errors import ConfigError, DataError, shown
from kplm.training.distribute import check_batch_size
from kplm.training.runtime import (build, install_train_step, is_chief,
                                   restoring_precision_policy, start_run, strategy_for)
from kplm.training.trainer_config import TrainerConfig

TOP_LEVEL_KEYS = ["run_dir", "seed", "tokenizer", "data", "backbone", "objective", "objectives",
                  "trainer", "callbacks"]


class PretrainSpec:
    """A checked pretraining config: component classes plus their resolved arguments."""

    def __init__(self, raw):
        from kplm.plugins import get_registry

        registry = get_registry()
        self.run_dir, self.seed = check_run_header(raw, TOP_LEVEL_KEYS)
        from kplm.training.finetune import is_pretrained
        sources = check_data(raw, ["train", "validation"], registry)
        self.train_cls, self.train = sources["train"]
        self.validation_cls, self.validation = sources.get("validation", (None, None))
        self.backbone_cls, self.backbone = check_section(
            raw.get("backbone", {"name": "encoder"}), "backbone", "backbone", registry,
            provided=("vocabulary_size", "dtype"))
        self.tokenizer_cls = self.tokenizer = None
        if not is_pretrained(self.backbone_cls):
            self.tokenizer_cls, self.tokenizer = check_section(
                raw.get("tokenizer", {"name": "wordpiece"}), "tokenizer", "tokenizer", registry)
        elif raw.get("tokenizer") is not None:
            raise ConfigError(f"config key 'tokenizer': comes from backbone "
                              f"'{self.backbone['name']}' ({self.backbone.get('path')}); "
                              "remove it")
        self.objectives = check_objectives(raw, registry)
        self.objective = (self.objectives[0][1] if "objectives" not in raw else
                          [{**section, "weight": weight} for _, section, weight in self.objectives])
        self.objective_names = [section["name"] for _, section, _ in self.objectives]
        family = getattr(self.backbone_cls, "family", "encoder")
        if is_pretrained(self.backbone_cls):  # a checkpoint: its files say what it holds
            loader = self.backbone_cls(**{k: v for k, v in self.backbone.items() if k != "name"})
            loader.check()
            family = loader.family()
        check_family(family, self.backbone["name"], self.objectives)
        check_sequence_length(self.backbone.get("sequence_length"), self.objectives)
        self.trainer = check_arguments(TrainerConfig, raw.get("trainer"), "trainer")
        self.callbacks = check_callbacks(raw, registry)

    def resolved(self):
        """The config with every default filled in, as written to ``run_dir/config.yaml``."""
        return {"run_dir": self.run_dir, "seed": self.seed, "tokenizer": self.tokenizer,
                "data": {"train": self.train, "validation": self.validation},
                "backbone": self.backbone,
                ("objectives" if isinstance(self.objective, list) else "objective"):
                    self.objective,
                "trainer": self.trainer,
                "callbacks": [c for _, c in self.callbacks]}


def check_objectives(raw, registry):
    """``objective: SECTION`` or ``objectives: [SECTION | NAME, ...]`` (each with an optional
    ``weight:``) -> ``[(class, section, weight)]``."""
    if "objectives" not in raw:
        cls, section = check_section(raw.get("objective", {"name": "masked_lm"}), "objective",
                                     "objective", registry)
        return [(cls, section, 1.0)]
    if "objective" in raw:
        raise ConfigError("config keys 'objective' and 'objectives': give one of them")
    entries = raw["objectives"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("config key 'objectives': expected a list of objectives, e.g. "
                          "[masked_lm, next_sentence_prediction]")
    checked = []
    for i, entry in enumerate(entries):
        path = f"objectives[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            raise ConfigError(f"config key '{path}': expected a name or a mapping with 'name:', "
                              f"got {shown(entry)}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ConfigError(f"config key '{path}.weight': expected a number > 0, got {shown(weight)}")
        section = {k: v for k, v in entry.items() if k != "weight"}
        cls, section = check_section(section, "objective", path, registry)
        checked.append((cls, section, float(weight)))
    return checked


def check_family(family, backbone_name, objectives):
    """Refuse an objective that cannot train this ``family`` of backbone (``"encoder"``,
    ``"decoder"``, ``"encoder_decoder"``): a decoder for masked LM, say."""
    for cls, section, _ in objectives:
        families = getattr(cls, "families", ("encoder",))
        if family not in families:
            raise ConfigError(f"objective '{section['name']}' trains {' or '.join(families)} "
                              f"backbones; backbone '{backbone_name}' is "
                              f"{a_family(family)}")


def check_sequence_length(sequence_length, objectives):
    """Refuse a ``backbone.sequence_length`` shorter than an objective's
    ``min_sequence_length`` (a checkpoint's length is known only once it is loaded)."""
    for cls, section, _ in objectives:
        least = getattr(cls, "min_sequence_length", 1)
        if isinstance(sequence_length, int) and sequence_length < least:
            raise ConfigError(f"backbone.sequence_length must be >= {least} for objective "
                              f"'{section['name']}', got {sequence_length}")


def a_family(family):
    """``"an encoder"``, ``"a decoder"``, ``"an encoder-decoder"``."""
    name = family.replace("_", "-")
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def build_objective(spec):
    """The objective a checked spec names: one, or a ``CombinedObjective`` of a list."""
    parts = [build(cls, section) for cls, section, _ in spec.objectives]
    if isinstance(spec.objective, list):
        from kplm.objectives.combined import CombinedObjective
        return CombinedObjective(parts, [w for _, _, w in spec.objectives])
    return parts[0]


def pretrain(config, *, overwrite=False, echo=print, progress=True):
    """Pretrain a backbone as ``config`` (a dict, as read from YAML) says; return its metrics.

    Writes the run directory: ``config.yaml``, ``tokenizer/``, ``checkpoints/``,
    ``tensorboard/``, ``backbone.weights.h5`` + ``backbone.json``, ``metrics.json``.

    Example:
        metrics = kplm.pretrain(kplm.config.load_yaml("configs/bert_tiny_mlm.yaml"))
    """
    from kplm.outputs import in_place_outputs
    with restoring_precision_policy(), in_place_outputs():  # no half-made run_dir on failure
        return _pretrain(config, overwrite=overwrite, echo=echo, progress=progress)


def _pretrain(config, *, overwrite=False, echo=print, progress=True):
    # --- check everything before touching the disk --------------------------------------------
    spec = PretrainSpec(config)
    trainer = TrainerConfig(**spec.trainer)
    train_source = build(spec.train_cls, spec.train)
    validation_source = build(spec.validation_cls, spec.validation) if spec.validation else None
    objective = build_objective(spec)
    loader = tokenizer = None
    if spec.tokenizer_cls is None:  # a pretrained backbone brings its tokenizer
        loader = build(spec.backbone_cls, spec.backbone)
        loader.check()
    else:
        tokenizer = build(spec.tokenizer_cls, spec.tokenizer)
    train_source.check()
    if validation_source is not None:
        validation_source.check()
    callbacks = [build(cls, section) for cls, section in spec.callbacks]

    import keras

    # The strategy comes first: a multi-worker strategy must exist before any TensorFlow op runs.
    strategy = strategy_for(trainer.strategy)
    write = is_chief(strategy)
    check_batch_size(trainer.batch_size, trainer.gradient_accumulation_steps, strategy)
    run_dir = spec.run_dir
    config_text, resuming = start_run(run_dir, overwrite, spec.resolved(), write=write)
    keras.utils.set_random_seed(spec.seed)

    # --- tokenizer: given, or learned from the training data, or the interrupted run's ---------
    if resuming and loader is None:
        tokenizer = runs.load_tokenizer(run_dir)
    elif (tokenizer is not None and tokenizer.tokens is None
          and hasattr(train_source, "tokenizer_dir")):  # prepared shards bring their tokenizer
        from kplm.plugins import get_registry
        tokenizer = get_registry().get("tokenizer", train_source.manifest["tokenizer"]["name"]) \
            .load(train_source.tokenizer_dir)
    elif tokenizer is not None and tokenizer.tokens is None:
        if echo:
            echo(f"learning a {spec.tokenizer['name']} vocabulary from data.train")
        tokenizer.train(train_source.texts(), progress=progress,
                        total_bytes=getattr(train_source, "size_bytes", lambda: None)())

    for source in (train_source, validation_source):  # shards hold ids of one tokenizer
        if source is not None and hasattr(source, "check_tokenizer") and tokenizer is not None:
            source.check_tokenizer(tokenizer)

    # --- model, optimizer, compile, under the distribution strategy ---------------------------
    if trainer.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{trainer.mixed_precision}")
    with strategy.scope():
        if loader is not None:
            backbone, tokenizer = loader.load()
        else:
            backbone = build(spec.backbone_cls, {**spec.backbone,
                                                  "vocabulary_size": len(tokenizer.tokens)})
        if write and not resuming:
            tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
        model = objective.build_model(backbone)
        from kplm.training.optimizer import build_optimizer
        optimizer = build_optimizer(trainer)
        if trainer.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, jit_compile=trainer.jit_compile)
    install_train_step(model, trainer)

    # --- data: tokenized, packed and masked in tf.data ----------------------------------------
    sequence_length = backbone.sequence_length
    try:
        train_ds = objective.dataset(train_source.build(), tokenizer,
                                     batch_size=trainer.batch_size,
                                     sequence_length=sequence_length, seed=spec.seed,
                                     training=True)
    except DataError as e:
        raise DataError(f"data.train: {e}") from None
    validation_ds = None
    if validation_source is not None:
        validation_ds = objective.dataset(validation_source.build(), tokenizer,
                                          batch_size=trainer.batch_size,
                                          sequence_length=sequence_length, seed=spec.seed,
                                          training=False)
        if trainer.validation_steps:
            validation_ds = validation_ds.take(trainer.validation_steps)
        validation_ds = validation_ds.cache()

    # --- callbacks and the training loop --------------------------------------------------------
    from kplm.training.logging import TrainingMonitor, flops_per_token, peak_flops
    from kplm.training.loop import train
    tokens_per_row = objective.tokens_per_row(sequence_length)
    monitor = TrainingMonitor(os.path.join(run_dir, runs.TENSORBOARD),
                              trainer.batch_size * tokens_per_row, trainer.batch_size,
                              trainer.log_every, trainer.steps, config_text=config_text,
                              echo=echo, flops_per_token=flops_per_token(model, backbone),
                              peak_flops=peak_flops(trainer, strategy), write=write)
    if echo:
        echo(f"pretraining {spec.backbone['name']} ({backbone.count_params():,} parameters, "
             f"vocabulary {len(tokenizer.tokens):,}) with {' + '.join(spec.objective_names)} for "
             f"{trainer.steps} steps of {trainer.batch_size} x {sequence_length} tokens "
             f"on {strategy.num_replicas_in_sync} replica(s)")
    start = time.perf_counter()
    try:
        result = train(model, train_ds, steps=trainer.steps, eval_every=trainer.eval_every,
                       checkpoint_dir=os.path.join(run_dir, runs.CHECKPOINTS),
                       checkpoint_every=trainer.checkpoint_every, keep=trainer.keep_checkpoints,
                       validation_data=validation_ds, callbacks=[monitor, *callbacks],
                       strategy=strategy, max_loss=trainer.max_loss,
                       max_recoveries=trainer.max_recoveries,
                       max_skipped_steps=trainer.max_skipped_steps, resume=resuming, write=write,
                       echo=echo)
    finally:
        monitor.close()
    wall = time.perf_counter() - start
    history = result.history

    # --- save what fine-tuning needs ----------------------------------------------------------
    metrics = {
        "steps": result.step,
        "train": {k: float(v[-1]) for k, v in history.items() if not k.startswith("val_")},
        "validation": {k[4:]: float(v[-1]) for k, v in history.items()
                       if k.startswith("val_")},
        "resumed_from_step": result.resumed_from,
        "restore_seconds": result.restore_seconds,
        "recoveries": [list(r) for r in result.recoveries],
        "skipped_steps": result.skipped_steps,
        "first_logged_loss": monitor.history[0][1]["loss"] if monitor.history else None,
        "tokens_per_second": monitor.last_throughput,
        "wall_seconds": wall,
        "parameters": int(backbone.count_params()),
        "vocabulary_size": len(tokenizer.tokens),
    }
    if write:
        runs.save_backbone(backbone, run_dir)
        runs.write_json(os.path.join(run_dir, runs.METRICS), metrics)
    if echo:
        echo(f"done in {wall:.0f} s; run directory {run_dir}")
    return metrics
