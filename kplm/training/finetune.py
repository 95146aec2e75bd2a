"""``kplm finetune`` / ``evaluate`` / ``predict``: a head on a (pretrained) backbone."""
import contextlib
import copy
import os
import time
from typing import Optional

from kplm import runs
from kplm.config import (check_arguments, check_callbacks, check_data, check_run_header,
                         check_section)
from kplm.errors import ConfigError, DataError, KplmError
from kplm.training.distribute import check_batch_size
from kplm.training.runtime import (build, install_train_step, is_chief,
                                   restoring_precision_policy, start_run, strategy_for)
from kplm.training.trainer_config import TrainerConfig

TOP_LEVEL_KEYS = ["run_dir", "seed", "init_from", "tokenizer", "data", "backbone", "head",
                  "finetune", "trainer", "callbacks"]
HEAD_CONFIG = "head.json"
MODEL_CONFIG = "model.json"
MODEL_WEIGHTS = "model.weights.h5"


def is_pretrained(backbone_cls):
    """True for backbones read from a checkpoint with their tokenizer (``hf``, ``keras_hub``)."""
    from kplm.components import PretrainedBackbone
    return isinstance(backbone_cls, type) and issubclass(backbone_cls, PretrainedBackbone)


class FinetuneOptions:
    """The ``finetune:`` section.

    Args:
        freeze_backbone: bool. Train the head only. Defaults to False.
        backbone_learning_rate_scale: float. The backbone's learning rate as a share of the
            head's (1.0: the same). Defaults to 1.0.
        early_stopping_patience: int or None. Stop after this many evaluations without a better
            validation metric; the best weights are kept either way. Defaults to None.
        sequence_length: int or None. Token length of the inputs; None: the backbone's.
    """

    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"backbone_learning_rate_scale": "[0, 1]", "early_stopping_patience": ">= 1",
              "sequence_length": ">= 2"}

    def __init__(self, freeze_backbone: bool = False, backbone_learning_rate_scale: float = 1.0,
                 early_stopping_patience: Optional[int] = None,
                 sequence_length: Optional[int] = None):
        from kplm.checks import check_limits
        check_limits(self.limits, locals(), "finetune")
        self.freeze_backbone = freeze_backbone
        self.backbone_learning_rate_scale = backbone_learning_rate_scale
        self.early_stopping_patience = early_stopping_patience
        self.sequence_length = sequence_length


class FinetuneSpec:
    """A checked fine-tuning config."""

    def __init__(self, raw):
        from kplm.plugins import get_registry

        registry = get_registry()
        self.run_dir, self.seed = check_run_header(raw, TOP_LEVEL_KEYS)
        self.init_from = raw.get("init_from")
        if self.init_from is not None:
            from kplm.pretrained import check_checkpoint
            check_checkpoint(self.init_from, "init_from")  # refuses what kplm cannot read
            for key in ("tokenizer", "backbone"):
                if raw.get(key) is not None:
                    raise ConfigError(f"config key '{key}': comes from init_from "
                                      f"({self.init_from}); remove it")
            self.tokenizer_cls = self.tokenizer = self.backbone_cls = self.backbone = None
        else:
            self.backbone_cls, self.backbone = check_section(
                raw.get("backbone", {"name": "encoder"}), "backbone", "backbone", registry,
                provided=("vocabulary_size", "dtype"))
            self.tokenizer_cls = self.tokenizer = None
            if not is_pretrained(self.backbone_cls):
                self.tokenizer_cls, self.tokenizer = check_section(
                    raw.get("tokenizer", {"name": "wordpiece"}), "tokenizer", "tokenizer",
                    registry)
            elif raw.get("tokenizer") is not None:
                raise ConfigError(f"config key 'tokenizer': comes from backbone "
                                  f"'{self.backbone['name']}' ({self.backbone.get('path')}); "
                                  "remove it")
        self.sources = check_data(raw, ["train", "validation", "test"], registry)
        if "head" not in raw:
            raise ConfigError(f"config key 'head' is required: which head to train "
                              f"({', '.join(registry.names('head'))})")
        self.head_cls, self.head = check_section(raw["head"], "head", "head", registry)
        self.check_head_family()
        self.finetune = check_arguments(FinetuneOptions, raw.get("finetune"), "finetune")
        self.trainer = check_arguments(TrainerConfig, raw.get("trainer"), "trainer")
        self.callbacks = check_callbacks(raw, registry)

    def check_head_family(self):
        """Refuse a head that cannot fine-tune the backbone's family (a classifier on a
        decoder, seq2seq on an encoder), as far as the config and checkpoint files tell."""
        families = getattr(self.head_cls, "families", None)
        if self.init_from is not None:
            from kplm.pretrained import checkpoint_family
            family, source = checkpoint_family(self.init_from), f"init_from {self.init_from}"
        elif is_pretrained(self.backbone_cls):
            source = f"backbone '{self.backbone['name']}'"
            try:
                family = build(self.backbone_cls, self.backbone).family()
            except KplmError:  # unreadable: its check() says so, before anything is written
                family = None
        else:
            family = getattr(self.backbone_cls, "family", "encoder")
            source = f"backbone '{self.backbone['name']}'"
        if families and family and family not in families:
            from kplm.training.pretrain import a_family
            raise ConfigError(f"head '{self.head['name']}' fine-tunes "
                              f"{' or '.join(f.replace('_', '-') for f in families)} backbones; "
                              f"{source} is {a_family(family)}")

    def resolved(self):
        return {"run_dir": self.run_dir, "seed": self.seed, "init_from": self.init_from,
                "tokenizer": self.tokenizer, "backbone": self.backbone,
                "data": {split: section for split, (_, section) in self.sources.items()},
                "head": self.head, "finetune": self.finetune, "trainer": self.trainer,
                "callbacks": [c for _, c in self.callbacks]}


def finetune(config, *, overwrite=False, echo=print, progress=True):
    """Fine-tune a head as ``config`` says; returns the evaluation metrics.

    Writes ``RUN_DIR``: ``config.yaml``, ``tokenizer/``, ``head.json``, ``model.json`` +
    ``model.weights.h5`` (the best weights by the validation metric), ``tensorboard/``,
    ``metrics.json``.

    Example:
        metrics = kplm.finetune(kplm.load_yaml("configs/sst2_classification.yaml"))
    """
    from kplm.outputs import in_place_outputs
    with restoring_precision_policy(), in_place_outputs():  # no half-made run_dir on failure
        return _finetune(config, overwrite=overwrite, echo=echo, progress=progress)


def _finetune(config, *, overwrite=False, echo=print, progress=True):
    # --- check everything before touching the disk --------------------------------------------
    spec = FinetuneSpec(config)
    trainer = TrainerConfig(**spec.trainer)
    options = FinetuneOptions(**spec.finetune)
    sources = {split: build(cls, section) for split, (cls, section) in spec.sources.items()}
    for source in sources.values():
        source.check()
    head = build(spec.head_cls, spec.head)
    for split, source in sources.items():
        try:
            head.prepare(source)
        except DataError as e:
            raise DataError(f"data.{split}: {e}") from None
    callbacks = [build(cls, section) for cls, section in spec.callbacks]
    if is_pretrained(spec.backbone_cls):
        build(spec.backbone_cls, spec.backbone).check()

    import keras

    # The strategy comes first: a multi-worker strategy must exist before any TensorFlow op runs.
    strategy = strategy_for(trainer.strategy)
    write = is_chief(strategy)
    check_batch_size(trainer.batch_size, trainer.gradient_accumulation_steps, strategy)
    run_dir = spec.run_dir
    resolved = spec.resolved()
    resolved["head"] = {"name": spec.head["name"], **head.get_config()}
    config_text, resuming = start_run(run_dir, overwrite, resolved, write=write)
    keras.utils.set_random_seed(spec.seed)

    # --- tokenizer: the pretrained checkpoint's, or given, or learned ----------------------------
    loader = None
    if spec.init_from:
        from kplm.pretrained import load_pretrained
        loader = lambda: load_pretrained(spec.init_from)  # noqa: E731
    elif is_pretrained(spec.backbone_cls):
        loader = build(spec.backbone_cls, spec.backbone).load
    tokenizer = None
    if loader is None and resuming:
        tokenizer = runs.load_tokenizer(run_dir)
    elif loader is None:
        tokenizer = build(spec.tokenizer_cls, spec.tokenizer)
        if tokenizer.tokens is None:
            tokenizer.train(sources["train"].texts(), progress=progress)
    if write:
        runs.write_json(os.path.join(run_dir, HEAD_CONFIG),
                        {"name": spec.head["name"], **head.get_config()})

    # --- model under the strategy ---------------------------------------------------------------
    if trainer.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{trainer.mixed_precision}")
    with strategy.scope():
        if loader is not None:
            backbone, tokenizer = loader()
        else:
            backbone = build(spec.backbone_cls, {**spec.backbone,
                                                 "vocabulary_size": len(tokenizer.tokens)})
        model = head.build_model(backbone)
        if write and not resuming:
            tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
        if options.freeze_backbone:
            backbone.trainable = False
        from kplm.training.optimizer import build_optimizer
        optimizer = build_optimizer(trainer, backbone.trainable_variables,
                                    options.backbone_learning_rate_scale)
        if trainer.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, jit_compile=trainer.jit_compile)
    install_train_step(model, trainer)

    sequence_length = options.sequence_length or backbone.sequence_length
    if sequence_length > backbone.sequence_length:
        raise ConfigError(f"config key 'finetune.sequence_length' ({sequence_length}) exceeds the "
                          f"backbone's sequence_length ({backbone.sequence_length})")

    def data(split, training):
        return head.dataset(sources[split].build(), tokenizer, batch_size=trainer.batch_size,
                            sequence_length=sequence_length, seed=spec.seed, training=training)

    train_ds = data("train", True)
    validation_ds = None
    if "validation" in sources:
        validation_ds = data("validation", False)
        if trainer.validation_steps:
            validation_ds = validation_ds.take(trainer.validation_steps)
        validation_ds = validation_ds.cache()

    # --- fit, keeping the best weights by the validation metric ---------------------------------
    from kplm.training.best_weights import BestWeights
    from kplm.training.logging import TrainingMonitor, flops_per_token, peak_flops
    from kplm.training.loop import train
    tokens_per_row = (head.tokens_per_row(sequence_length) if hasattr(head, "tokens_per_row")
                      else sequence_length)
    monitor = TrainingMonitor(os.path.join(run_dir, runs.TENSORBOARD),
                              trainer.batch_size * tokens_per_row, trainer.batch_size,
                              trainer.log_every, trainer.steps, config_text=config_text, echo=echo,
                              flops_per_token=flops_per_token(model, backbone),
                              peak_flops=peak_flops(trainer, strategy), write=write)
    best = os.path.join(run_dir, "best.weights.h5")
    extra, first = [], []
    if validation_ds is not None:
        if hasattr(head, "validation_callback"):
            # metrics fit() cannot compute (generation + BLEU): added to the logs before the
            # monitor (TensorBoard, console), the checkpoint and early stopping read them
            first.append(head.validation_callback(
                model, sources["validation"], tokenizer, batch_size=trainer.batch_size,
                sequence_length=sequence_length))
        extra.append(BestWeights(best, monitor=f"val_{head.metric}", mode=head.metric_mode,
                                 write=write))
        if options.early_stopping_patience:
            extra.append(keras.callbacks.EarlyStopping(
                monitor=f"val_{head.metric}", mode=head.metric_mode,
                patience=options.early_stopping_patience))
    if echo:
        source = (f"init_from {spec.init_from}" if spec.init_from else
                  f"backbone {spec.backbone['name']} {spec.backbone['path']}" if is_pretrained(
                      spec.backbone_cls) else "random initialisation")
        echo(f"fine-tuning {spec.head['name']} from {source} for {trainer.steps} steps of "
             f"{trainer.batch_size} examples")
    start = time.perf_counter()
    try:
        result = train(model, train_ds, steps=trainer.steps, eval_every=trainer.eval_every,
                       checkpoint_dir=os.path.join(run_dir, runs.CHECKPOINTS),
                       checkpoint_every=trainer.checkpoint_every, keep=trainer.keep_checkpoints,
                       validation_data=validation_ds,
                       callbacks=[*first, monitor, *extra, *callbacks], strategy=strategy,
                       max_loss=trainer.max_loss, max_recoveries=trainer.max_recoveries,
                       max_skipped_steps=trainer.max_skipped_steps,
                       resume=resuming, write=write, echo=echo)
    finally:
        monitor.close()
    wall = time.perf_counter() - start
    steps_done, best_step = result.step, result.step
    if os.path.exists(best):
        best_step = BestWeights.load(model, best)

    # --- save and evaluate ----------------------------------------------------------------------
    if write:
        _save_model(model, run_dir)
    metrics = {"wall_seconds": wall, "train_steps": steps_done, "best_step": best_step,
               "resumed_from_step": result.resumed_from,
               "recoveries": [list(r) for r in result.recoveries],
               "skipped_steps": result.skipped_steps}
    for split in ("validation", "test"):
        if split in sources:
            metrics[split] = head.evaluate(model, sources[split], tokenizer,
                                           batch_size=trainer.batch_size,
                                           sequence_length=sequence_length)
    evaluated = "test" if "test" in sources else "validation" if "validation" in sources else None
    if evaluated:
        metrics["baseline"] = head.baseline(sources["train"], sources[evaluated])
    if write:
        runs.write_json(os.path.join(run_dir, runs.METRICS), metrics)
        BestWeights.remove(best)  # only now: a run killed before metrics.json still has them
    if echo:
        echo(f"done in {wall:.0f} s; run directory {run_dir}")
    return metrics


def _save_model(model, run_dir):
    """``model.json`` + ``model.weights.h5``: the architecture and the weights, without the
    optimizer state (a fresh copy of the model holds the weights), each file atomically."""
    import keras

    from kplm.finite import require_finite
    require_finite(model, os.path.join(run_dir, MODEL_WEIGHTS))  # before anything is written
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # loaders recompile
    fresh = keras.saving.deserialize_keras_object(copy.deepcopy(config))
    fresh.set_weights(model.get_weights())
    weights = os.path.join(run_dir, MODEL_WEIGHTS)
    fresh.save_weights(weights + ".tmp.weights.h5")
    os.replace(weights + ".tmp.weights.h5", weights)
    runs.write_json(os.path.join(run_dir, MODEL_CONFIG), config)


# --- using a fine-tuned run ------------------------------------------------------------------
@contextlib.contextmanager
def _in_file(path):
    """Errors about a run directory's file name it (unless they already do)."""
    try:
        yield
    except KplmError as e:
        message = str(e)
        raise KplmError(message if path in message else f"{path}: {message}") from None


class FinetunedRun:
    """A fine-tuned run directory loaded for evaluation and prediction (portable: it reads only
    the run directory itself).

    Example:
        run = FinetunedRun("runs/sst2")
        run.predict([{"text": "a gripping , funny film"}])
    """

    def __init__(self, run_dir):
        import importlib

        import kplm.models.encoder  # noqa: F401  (serializable classes)
        from kplm.config import load_yaml
        from kplm.plugins import get_registry

        self.run_dir = run_dir
        path = os.path.join(run_dir, HEAD_CONFIG)
        if not os.path.exists(path):
            hint = (" (a pretraining run: it has a backbone.json)"
                    if os.path.exists(os.path.join(run_dir, runs.BACKBONE_CONFIG)) else "")
            raise KplmError(f"{run_dir}: not a fine-tuned run directory (no {HEAD_CONFIG})"
                            f"{hint}")
        for name in (MODEL_CONFIG, MODEL_WEIGHTS, runs.CONFIG):
            if not os.path.exists(os.path.join(run_dir, name)):
                raise KplmError(f"{run_dir}: no {name}; the fine-tuning run did not finish")
        # Everything read here is checked as a config is: a damaged or edited run directory is
        # one line naming the file, before the model is built.
        with _in_file(path):
            head_class, head_config = check_section(
                runs.read_json(path, "a saved head config"), "head", "head", get_registry())
            self.head = build(head_class, head_config)
        config_path = os.path.join(run_dir, runs.CONFIG)
        with _in_file(config_path):
            self.config = load_yaml(config_path)
            finetune = check_arguments(FinetuneOptions, self.config.get("finetune"), "finetune")
            data = self.config.get("data")
            if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
                raise ConfigError("config key 'data.train' is missing")
        if self.head.model_module:
            importlib.import_module(self.head.model_module)
        self.tokenizer = runs.load_tokenizer(run_dir)
        model_path = os.path.join(run_dir, MODEL_CONFIG)
        self.model = runs.rebuild(runs.read_json(model_path, "a saved model config"),
                                  model_path, "model")
        runs.load_weights(self.model, os.path.join(run_dir, MODEL_WEIGHTS), "model weights")
        self.sequence_length = (finetune["sequence_length"]
                                or self.model.backbone.sequence_length)

    def source(self, paths, split="validation"):
        """A data source like the run's ``data.<split>`` (same format options) over ``paths``."""
        from kplm.config import check_section
        from kplm.plugins import get_registry
        from kplm.config import signature_of
        from kplm.errors import ConfigError
        section = self.config["data"].get(split) or self.config["data"]["train"]
        registry = get_registry()
        with _in_file(os.path.join(self.run_dir, runs.CONFIG)):
            if not isinstance(section, dict) or not isinstance(section.get("name"), str):
                raise ConfigError(f"config key 'data.{split}': expected a data source section")
            section = dict(section)
            accepted, _ = signature_of(registry.get("data_source", section["name"]))
        if "paths" in accepted:
            section["paths"] = list(paths)
        elif {"source", "target"} <= set(accepted) and len(paths) == 2:
            section["source"], section["target"] = paths  # parallel text: --data SRC --data TGT
        else:
            raise ConfigError(f"--data: the run's data source '{section['name']}' takes "
                              + ("two files, --data SOURCE --data TARGET"
                                 if {"source", "target"} <= set(accepted) else "no paths"))
        cls, resolved = check_section(section, "data_source", f"data.{split}", registry)
        source = build(cls, resolved)
        source.check()
        return source

    def evaluate(self, source, batch_size=64):
        """The head's metrics over a data source."""
        return self.head.evaluate(self.model, source, self.tokenizer, batch_size=batch_size,
                                  sequence_length=self.sequence_length)

    def predict(self, examples, batch_size=64):
        """``examples``: dicts of the head's input fields -> one prediction dict each."""
        fields = [self.head.text_field] + ([self.head.pair_field]
                                           if getattr(self.head, "pair_field", None) else [])
        for i, ex in enumerate(examples):
            missing = [f for f in fields if f not in ex]
            if missing:
                raise DataError(f"input {i + 1}: missing {missing}")
        return self.head.predict(self.model, examples, self.tokenizer, batch_size=batch_size,
                                 sequence_length=self.sequence_length)
