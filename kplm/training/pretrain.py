"""``kplm pretrain``: the pretraining config, and what a pretraining run adds to the shared
``kplm.training.run.run`` (the tokenizer it learns, the objective's model and data, the
backbone it saves)."""
import os

from kplm import runs
from kplm.config import (check_arguments, check_callbacks, check_data, check_run_header,
                         check_section)
from kplm.errors import ConfigError, DataError, shown
from kplm.training.run import Job, common_metrics, run
from kplm.training.runtime import build, is_pretrained
from kplm.training.trainer_config import TrainerConfig

TOP_LEVEL_KEYS = ["run_dir", "seed", "tokenizer", "data", "backbone", "objective", "objectives",
                  "trainer", "callbacks"]


class PretrainSpec:
    """A checked pretraining config: component classes plus their resolved arguments."""

    def __init__(self, raw):
        from kplm.plugins import get_registry

        registry = get_registry()
        self.run_dir, self.seed = check_run_header(raw, TOP_LEVEL_KEYS)
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
        if is_pretrained(self.backbone_cls) and self.backbone.get("sequence_length") is None:
            self.backbone.pop("sequence_length", None)  # unset: the section reads as before
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


class PretrainJob(Job):
    """``kplm pretrain``: what pretraining adds to ``kplm.training.run.run``."""

    kind = "pretraining"

    def __init__(self, config):
        self.config = config

    def check(self):
        self.spec = spec = PretrainSpec(self.config)
        self.trainer = TrainerConfig(**spec.trainer)
        self.train_source = build(spec.train_cls, spec.train)
        self.validation_source = (build(spec.validation_cls, spec.validation)
                                  if spec.validation else None)
        self.objective = build_objective(spec)
        if hasattr(self.objective, "check"):  # what it reads besides the data (a teacher)
            self.objective.check()
        self.loader = self.tokenizer = None
        if spec.tokenizer_cls is None:  # a pretrained backbone brings its tokenizer
            self.loader = build(spec.backbone_cls, spec.backbone)
            self.loader.check()
        else:
            self.tokenizer = build(spec.tokenizer_cls, spec.tokenizer)
        self.train_source.check()
        if self.validation_source is not None:
            self.validation_source.check()
        explicit = self.config.get("tokenizer")
        explicit = ["name"] if isinstance(explicit, str) else list(explicit or ())
        if (self.tokenizer is not None and self.tokenizer.tokens is None
                and hasattr(self.train_source, "check_tokenizer_section")):
            # prepared shards bring their tokenizer: a setting of another would be ignored
            self.train_source.check_tokenizer_section(spec.tokenizer, explicit)
        self.callbacks = [build(cls, section) for cls, section in spec.callbacks]

    def resolved(self):
        return self.spec.resolved()

    def prepare(self, run_dir, resuming, write, echo, progress):
        """The tokenizer: given, or learned from the training data, or the interrupted run's."""
        spec, source, tokenizer = self.spec, self.train_source, self.tokenizer
        if resuming and self.loader is None:
            tokenizer = runs.load_tokenizer(run_dir)
        elif (tokenizer is not None and tokenizer.tokens is None
              and source.tokenizer_dir is not None):  # prepared shards bring their tokenizer
            from kplm.plugins import get_registry
            tokenizer = get_registry().get("tokenizer", source.manifest["tokenizer"]["name"]) \
                .load(source.tokenizer_dir)
        elif tokenizer is not None and tokenizer.tokens is None:
            if echo:
                echo(f"learning a {spec.tokenizer['name']} vocabulary from data.train")
            tokenizer.train(source.texts(), progress=progress,
                            total_bytes=getattr(source, "size_bytes", lambda: None)())
        if tokenizer is not None:  # shards hold ids of one tokenizer
            for each in (source, self.validation_source):
                if each is not None:
                    each.check_tokenizer(tokenizer)
        self.tokenizer = tokenizer

    def build(self, run_dir, resuming, write):
        if self.loader is not None:
            self.backbone, self.tokenizer = self.loader.load()
            self.row_length = self.loader.row_length(self.backbone)
        else:
            self.backbone = build(self.spec.backbone_cls, {
                **self.spec.backbone, "vocabulary_size": len(self.tokenizer.tokens)})
            self.row_length = self.backbone.sequence_length
        if write and not resuming:
            self.tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
        model = self.objective.build_model(self.backbone)
        self.head_note = None
        if self.loader is not None and not resuming:  # a resumed run restores its own heads
            # a distiller's student holds the heads (its teacher keeps its own)
            self.head_note = self.loader.initialize_heads(getattr(model, "student", model))
        return model

    def datasets(self):
        """Tokenized, packed and masked in tf.data."""
        trainer, objective = self.trainer, self.objective
        options = dict(batch_size=trainer.batch_size,
                       sequence_length=self.row_length, seed=self.spec.seed)
        try:
            train_ds = objective.dataset(self.train_source.build(), self.tokenizer,
                                         training=True, **options)
        except DataError as e:
            raise DataError(f"data.train: {e}") from None
        validation_ds = None
        if self.validation_source is not None:
            validation_ds = objective.dataset(self.validation_source.build(), self.tokenizer,
                                              training=False, **options)
        return train_ds, validation_ds

    def tokens_per_row(self):
        return self.objective.tokens_per_row(self.row_length)

    def describe(self, model, strategy):
        spec, trainer = self.spec, self.trainer
        return (f"pretraining {spec.backbone['name']} ({self.backbone.count_params():,} "
                f"parameters, vocabulary {len(self.tokenizer.tokens):,}) with "
                f"{' + '.join(spec.objective_names)} for {trainer.steps} steps of "
                f"{trainer.batch_size} x {self.row_length} tokens on "
                f"{strategy.num_replicas_in_sync} replica(s)"
                + (f"; {self.head_note}" if getattr(self, "head_note", None) else ""))

    def loop_options(self, model, run_dir, write):
        return {"callbacks": self.callbacks}

    def finish(self, model, result, monitor, wall, run_dir, write):
        """Save what fine-tuning needs: the backbone."""
        history = result.history
        metrics = {
            "steps": result.step,
            "train": {k: float(v[-1]) for k, v in history.items() if not k.startswith("val_")},
            "validation": {k[4:]: float(v[-1]) for k, v in history.items()
                           if k.startswith("val_")},
            **common_metrics(result, wall),
            "first_logged_loss": monitor.first_loss,
            "tokens_per_second": monitor.last_throughput,
            "parameters": int(self.backbone.count_params()),
            "vocabulary_size": len(self.tokenizer.tokens),
        }
        if write:
            runs.save_backbone(self.backbone, run_dir)
        return metrics


def pretrain(config, *, overwrite=False, echo=print, progress=True):
    """Pretrain a backbone as ``config`` (a dict, as read from YAML) says; return its metrics.

    Writes the run directory: ``config.yaml``, ``tokenizer/``, ``checkpoints/``,
    ``tensorboard/``, ``backbone.weights.h5`` + ``backbone.json``, ``metrics.json``.

    Example:
        metrics = kplm.pretrain(kplm.config.load_yaml("configs/bert_tiny_mlm.yaml"))
    """
    return run(PretrainJob(config), overwrite=overwrite, echo=echo, progress=progress)
