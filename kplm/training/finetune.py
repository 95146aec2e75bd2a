"""``kplm finetune``: the fine-tuning config, and what a fine-tuning run adds to the shared
``kplm.training.run.run`` (a head on a pretrained or fresh backbone, the best weights by the
validation metric, the evaluation). Loading a finished run is ``kplm.runs.FinetunedRun``."""
import copy
import os
from typing import Optional

from kplm import runs
from kplm.config import (check_arguments, check_callbacks, check_data, check_run_header,
                         check_section)
from kplm.errors import ConfigError, DataError, KplmError, about_data
from kplm.training.run import Job, common_metrics, run
from kplm.training.runtime import build, is_pretrained
from kplm.training.finetune_options import FinetuneOptions
from kplm.training.trainer_config import TrainerConfig

TOP_LEVEL_KEYS = ["run_dir", "seed", "init_from", "tokenizer", "data", "backbone", "head",
                  "finetune", "distillation", "trainer", "callbacks"]
BEST_WEIGHTS = "best.weights.h5"
BEST_ADAPTERS = "best.adapters.safetensors"


class FinetuneSpec:
    """A checked fine-tuning config."""

    def __init__(self, raw):
        from kplm.plugins import get_registry

        registry = get_registry()
        self.run_dir, self.seed = check_run_header(raw, TOP_LEVEL_KEYS)
        self.init_from = raw.get("init_from")
        self.distillation = None
        if raw.get("distillation") is not None:
            from kplm.training.distillation import DistillationOptions
            self.distillation = check_arguments(DistillationOptions, raw["distillation"],
                                                "distillation")
            if raw.get("tokenizer") is not None:
                raise ConfigError("config key 'tokenizer': a distilled student reads the "
                                  "teacher's token ids and takes its tokenizer "
                                  f"({self.distillation['teacher']}); remove it")
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
                if self.distillation is None:  # else the teacher's
                    self.tokenizer_cls, self.tokenizer = check_section(
                        raw.get("tokenizer", {"name": "wordpiece"}), "tokenizer", "tokenizer",
                        registry)
            elif self.backbone.pop("sequence_length", None) is not None:
                raise ConfigError("config key 'backbone.sequence_length': fine-tuning sets the "
                                  "length of its rows with finetune.sequence_length")
            elif raw.get("tokenizer") is not None:
                raise ConfigError(f"config key 'tokenizer': comes from backbone "
                                  f"'{self.backbone['name']}' ({self.backbone.get('path')}); "
                                  "remove it")
        self.sources = check_data(raw, ["train", "validation", "test", "transfer"], registry)
        if "transfer" in self.sources and self.distillation is None:
            raise ConfigError("config key 'data.transfer': unlabelled transfer text is read "
                              "only when distilling; add a 'distillation:' section or remove "
                              "it")
        if "head" not in raw:
            raise ConfigError(f"config key 'head' is required: which head to train "
                              f"({', '.join(registry.names('head'))})")
        self.head_cls, self.head = check_section(raw["head"], "head", "head", registry)
        self.check_head_family()
        self.finetune = check_arguments(FinetuneOptions, raw.get("finetune"), "finetune")
        if (self.finetune.get("lora_rank") is not None and self.init_from is None
                and not is_pretrained(self.backbone_cls)):
            raise ConfigError("config key 'finetune.lora_rank': LoRA adapts a pretrained "
                              "backbone (init_from, or a backbone such as hf or keras_hub); "
                              f"backbone '{self.backbone['name']}' starts from random weights")
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
                "head": self.head, "finetune": self.finetune,
                **({"distillation": self.distillation} if self.distillation else {}),
                "trainer": self.trainer,
                "callbacks": [c for _, c in self.callbacks]}


class FinetuneJob(Job):
    """``kplm finetune``: what fine-tuning adds to ``kplm.training.run.run``."""

    kind = "fine-tuning"

    def __init__(self, config):
        self.config = config

    def check(self):
        self.spec = spec = FinetuneSpec(self.config)
        self.trainer = TrainerConfig(**spec.trainer)
        self.options = FinetuneOptions(**spec.finetune)
        self.sources = {split: build(cls, section) for split, (cls, section)
                        in spec.sources.items()}
        for source in self.sources.values():
            source.check()
        self.head = build(spec.head_cls, spec.head)
        self.distillation = None
        if spec.distillation is not None:
            from kplm.training.distillation import (DistillationOptions, check_student_start,
                                                   check_teacher)
            self.distillation = DistillationOptions(**spec.distillation)
            check_teacher(self.distillation, spec.head["name"], self.head)
            check_student_start(spec, self.distillation)
        self.transfer = self.sources.pop("transfer", None)
        for split, source in self.sources.items():
            try:
                self.head.prepare(source)
            except DataError as e:
                raise about_data(f"data.{split}", source, e) from None
        if self.distillation is not None and self.distillation.cache and (
                self.head.distillation == "tokens"):
            raise ConfigError("config key 'distillation.cache': token classification runs its "
                              "teacher in the step (per-token outputs are not cached); remove "
                              "it")
        augment = self.distillation.augment if self.distillation is not None else 0
        if self.transfer is not None or augment:
            if self.head.distillation == "tokens":
                key = "data.transfer" if self.transfer is not None else "distillation.augment"
                raise ConfigError(f"config key '{key}': token classification distils on "
                                  "its labelled data only (an unlabelled sentence has no words "
                                  "to align); remove it")
            from kplm.training.distillation import TransferMixture
            self.train_source = TransferMixture(self.sources["train"], self.transfer, self.head,
                                                self.distillation.transfer_repeats,
                                                seed=spec.seed, augment=augment,
                                                replace=self.distillation.replace_words)
            self.train_source.check()
        else:
            self.train_source = self.sources["train"]
        self.callbacks = [build(cls, section) for cls, section in spec.callbacks]
        if is_pretrained(spec.backbone_cls):
            build(spec.backbone_cls, spec.backbone).check()

    def resolved(self):
        resolved = self.spec.resolved()
        resolved["head"] = {"name": self.spec.head["name"], **self.head.get_config()}
        return resolved

    def prepare(self, run_dir, resuming, write, echo, progress):
        """The tokenizer: the pretrained checkpoint's (at build), or given, or learned, or the
        interrupted run's."""
        spec = self.spec
        self.loader, self.echo = None, echo
        if spec.init_from:
            from kplm.pretrained import load_pretrained
            self.loader = lambda: load_pretrained(spec.init_from)  # noqa: E731
        elif is_pretrained(spec.backbone_cls):
            self.loader = build(spec.backbone_cls, spec.backbone).load
        if self.loader is None and resuming:
            self.tokenizer = runs.load_tokenizer(run_dir)
        elif self.loader is None and self.distillation is not None:
            from kplm.training.distillation import teacher_tokenizer
            self.tokenizer = teacher_tokenizer(self.distillation.teacher)
        elif self.loader is None:
            self.tokenizer = build(spec.tokenizer_cls, spec.tokenizer)
            if self.tokenizer.tokens is None:
                self.tokenizer.train(self.sources["train"].texts(), progress=progress)
        if write:
            runs.write_json(os.path.join(run_dir, runs.HEAD_CONFIG),
                            {"name": spec.head["name"], **self.head.get_config()})

    def build(self, run_dir, resuming, write):
        self.resuming, self.embedding_note, self.start_note = resuming, None, None
        self.run_dir, self.write = run_dir, write
        if self.loader is not None:
            self.backbone, self.tokenizer = self.loader()
        else:
            self.backbone = build(self.spec.backbone_cls, {
                **self.spec.backbone, "vocabulary_size": len(self.tokenizer.tokens)})
        model = self.student = self.head.build_model(self.backbone)
        self.adapted = None
        if self.options.lora_rank is not None:
            from kplm.models.lora import enable_lora
            self.adapted = enable_lora(self.backbone, self.options.lora_rank,
                                       self.options.lora_alpha, self.options.lora_targets)
        if self.distillation is not None:
            model = self._distiller(model)
        if write and not resuming:
            self.tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
        if self.options.freeze_backbone:
            self.backbone.trainable = False
        self.sequence_length = self.options.sequence_length or self.backbone.sequence_length
        if self.sequence_length > self.backbone.sequence_length:
            raise ConfigError(f"config key 'finetune.sequence_length' ({self.sequence_length}) "
                              f"exceeds the backbone's sequence_length "
                              f"({self.backbone.sequence_length})")
        return model

    def _distiller(self, student):
        """The student wrapped with the teacher (loaded, its tokenizer checked against the
        student's) for training."""
        from kplm.models.distiller import TaskDistiller
        from kplm.training.distillation import load_teacher
        options = self.distillation
        teacher = self.teacher = load_teacher(options.teacher, self.tokenizer)
        length = self.options.sequence_length or self.backbone.sequence_length
        if teacher.model.backbone.sequence_length < length:
            raise ConfigError(f"config key 'finetune.sequence_length': the student's rows "
                              f"({length} tokens) are longer than the teacher reads "
                              f"({teacher.model.backbone.sequence_length}); set "
                              "finetune.sequence_length")
        if options.select_weights is not None and not self.resuming:
            from kplm.models.distiller import select_weights
            select_weights(self.backbone, teacher.model.backbone, options.select_weights)
            self.start_note = ("the teacher's weights selected (its blocks "
                               f"{', '.join(map(str, options.select_weights))})")
        if options.project_embeddings and not self.resuming:
            from kplm.models.distiller import project_embeddings
            kept = project_embeddings(self.backbone, teacher.model.backbone)
            self.embedding_note = (f"embeddings projected from the teacher's ({kept:.0%} of "
                                   "their variance kept)")
        if options.replace_words:  # the neighbours of words in the teacher's embeddings
            from kplm.training.distillation import word_neighbours
            table = getattr(getattr(teacher.model.backbone, "token_embedding", None),
                            "embeddings", None)
            if table is None:
                raise ConfigError("config key 'distillation.replace_words': the teacher's "
                                  f"backbone ({type(teacher.model.backbone).__name__}) has no "
                                  "token embedding table to find neighbours in")
            self.train_source.neighbours = word_neighbours(list(self.tokenizer.tokens),
                                                           table.numpy())
        if options.hidden_weight:
            for who, backbone, model in (("student", self.backbone, student),
                                         ("teacher", teacher.model.backbone, teacher.model)):
                if not (hasattr(backbone, "transformer_layers")
                        and hasattr(model, "logits_from")):
                    raise ConfigError(f"config key 'distillation.hidden_weight': the {who}'s "
                                      f"model ({type(model).__name__} on "
                                      f"{type(backbone).__name__}) does not expose its layers' "
                                      "outputs; hidden-state distillation reads kplm encoders "
                                      "under kplm's heads")
        return TaskDistiller(student, teacher.model, kind=self.head.distillation,
                             temperature=options.temperature, gold_weight=options.gold_weight,
                             hidden_weight=options.hidden_weight)

    def _cached(self, source):
        """``source`` with the teacher's outputs, computed once into the run directory (a
        temporary directory on a worker that does not write)."""
        import tempfile

        from kplm.training.distillation import CACHE_FILE, CachedTeacherOutputs
        where = self.run_dir
        if not self.write:  # this worker's own copy, removed when the run finishes
            where = self.cache_scratch = tempfile.mkdtemp(prefix="kplm-teacher-")
        cache = CachedTeacherOutputs(source, os.path.join(where, CACHE_FILE))
        if self.echo and not os.path.exists(cache.path):
            self.echo(f"running the teacher once over a pass of the training rows into "
                      f"{cache.path}")
        written = cache.write(self.teacher.model, self.head, self.tokenizer,
                              batch_size=self.trainer.batch_size,
                              sequence_length=self.sequence_length)
        self.cache_note = (f"teacher outputs cached for {written:,} rows" if written
                           else "teacher outputs read from the cache")
        return cache

    def optimizer(self):
        from kplm.training.optimizer import build_optimizer
        return build_optimizer(self.trainer, self.backbone.trainable_variables,
                               self.options.backbone_learning_rate_scale)

    def _data(self, split, training):
        source = self.train_source if split == "train" else self.sources[split]
        if split == "train" and self.distillation is not None and self.distillation.cache:
            source = self._cached(source)
        batches = self.head.dataset(source.build(), self.tokenizer,
                                    batch_size=self.trainer.batch_size,
                                    sequence_length=self.sequence_length, seed=self.spec.seed,
                                    training=training)
        if not (self.options.length_bucketing and self.head.length_bucketing):
            return batches
        from kplm.data.bucketing import bucket_by_length
        return bucket_by_length(batches, sequence_length=self.sequence_length,
                                batch_size=self.trainer.batch_size,
                                width=self.options.bucket_width, training=training,
                                labels_follow=self.head.bucket_labels_follow)

    def datasets(self):
        validation = self._data("validation", False) if "validation" in self.sources else None
        return self._data("train", True), validation

    def tokens_per_row(self):
        return self.head.tokens_per_row(self.sequence_length)

    def fewest_tokens_per_row(self):
        """With length bucketing a batch is cut to its longest row, at least one bucket."""
        if self.options.length_bucketing and self.head.length_bucketing:
            return min(self.options.bucket_width, self.tokens_per_row())
        return self.tokens_per_row()

    def describe(self, model, strategy):
        spec = self.spec
        source = (f"init_from {spec.init_from}" if spec.init_from else
                  f"backbone {spec.backbone['name']} {spec.backbone['path']}" if is_pretrained(
                      spec.backbone_cls) else self.start_note or "random initialisation")
        line = (f"fine-tuning {spec.head['name']} from {source} for {self.trainer.steps} steps "
                f"of {self.trainer.batch_size} examples")
        options = self.distillation
        if options is not None:
            extras = [f"temperature {options.temperature:g}",
                      f"gold weight {options.gold_weight:g}"]
            if self.transfer is not None:
                extras.append("with transfer text")
            if options.augment:
                extras.append(f"{options.augment} perturbed copies of the training texts")
            neighbours = getattr(self.train_source, "neighbours", None)
            if options.replace_words and neighbours:
                extras.append(f"words replaced with probability {options.replace_words:g} by "
                              f"neighbours among {len(neighbours[0]):,} words")
            if options.hidden_weight:
                extras.append(f"hidden states weight {options.hidden_weight:g}")
            if self.embedding_note:
                extras.append(self.embedding_note)
            if getattr(self, "cache_note", None):
                extras.append(self.cache_note)
            line += f", distilling {options.teacher} ({', '.join(extras)})"
        return line

    def loop_options(self, model, run_dir, write):
        """The best weights by the validation metric, early stopping, and the head's own
        validation metrics (generation + BLEU) before the callbacks that read them."""
        from kplm.training.best_weights import BestWeights
        options = {"callbacks": list(self.callbacks)}
        self.best_path = os.path.join(run_dir, BEST_WEIGHTS)
        if "validation" in self.sources:
            head = self.head
            extra = head.validation_callback(self.student, self.sources["validation"],
                                             self.tokenizer, batch_size=self.trainer.batch_size,
                                             sequence_length=self.sequence_length)
            if extra is not None:
                options["callbacks"].insert(0, extra)
            if self.adapted:  # the trainable variables only, by path (kplm.models.lora)
                self.best_path = os.path.join(run_dir, BEST_ADAPTERS)
            options["best"] = BestWeights(
                self.best_path, monitor=f"val_{head.metric}", mode=head.metric_mode,
                write=write,
                variables=(lambda: self.student.trainable_variables) if self.adapted else None)
            options["patience"] = self.options.early_stopping_patience
        return options

    def finish(self, model, result, monitor, wall, run_dir, write):
        """The best weights, saved as the run's model, and evaluated."""
        from kplm.training.best_weights import BestWeights
        if getattr(self, "cache_scratch", None):  # a non-writing worker's teacher outputs
            import shutil
            shutil.rmtree(self.cache_scratch, ignore_errors=True)
        best_step = result.step
        if os.path.exists(self.best_path):
            best_step = BestWeights.load(
                model, self.best_path,
                variables=self.student.trainable_variables if self.adapted else None)
        model = self.student  # a distiller's teacher is not part of the run's model
        adapters = None
        if self.adapted:
            adapters = _save_adapters(model, self.adapted, self.options, self.spec, run_dir,
                                      write)
        elif write:
            _save_model(model, run_dir)
        metrics = {"train_steps": result.step, "best_step": best_step,
                   **common_metrics(result, wall), **({"lora": adapters} if adapters else {})}
        head, sources = self.head, self.sources
        for split in ("validation", "test"):
            if split in sources:
                metrics[split] = head.evaluate(model, sources[split], self.tokenizer,
                                               batch_size=self.trainer.batch_size,
                                               sequence_length=self.sequence_length)
        evaluated = "test" if "test" in sources else "validation" if "validation" in sources \
            else None
        if evaluated:
            metrics["baseline"] = head.baseline(sources["train"], sources[evaluated])
        return metrics

    def after_metrics(self, run_dir):
        """The best weights and the teacher's cached outputs, kept for a resume only: removed
        once ``metrics.json`` is written (also when a run killed just after it is started
        again: ``kplm.training.runtime.prepare_run_dir``)."""
        from kplm.training.best_weights import BestWeights
        from kplm.training.distillation import CACHE_FILE
        for name in (BEST_WEIGHTS, BEST_ADAPTERS):
            BestWeights.remove(os.path.join(run_dir, name))
        for name in (CACHE_FILE, CACHE_FILE + ".tmp"):
            if os.path.exists(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))


def finetune(config, *, overwrite=False, echo=print, progress=True):
    """Fine-tune a head as ``config`` says; returns the evaluation metrics.

    Writes ``RUN_DIR``: ``config.yaml``, ``tokenizer/``, ``head.json``, ``model.json`` +
    ``model.weights.h5`` (the best weights by the validation metric), ``tensorboard/``,
    ``metrics.json``.

    Example:
        metrics = kplm.finetune(kplm.load_yaml("configs/sst2_classification.yaml"))
    """
    return run(FinetuneJob(config), overwrite=overwrite, echo=echo, progress=progress)


def _save_adapters(model, adapted, options, spec, run_dir, write):
    """A LoRA run's ``adapters.safetensors`` (the trainable variables: LoRA factors, the adapted
    projections' biases, the head) and ``adapters.json`` (rank, scale, what they adapt, their
    size, the checkpoint they apply to); returns that summary (also in ``metrics.json``)."""
    from kplm.models import lora
    from kplm.finite import require_finite
    trainable = model.trainable_variables
    require_finite(trainable, os.path.join(run_dir, lora.ADAPTERS))
    total, _ = lora.count(model.weights)
    trained, factors = lora.count(trainable)
    summary = {"rank": options.lora_rank,
               "alpha": float(options.lora_alpha if options.lora_alpha is not None
                              else options.lora_rank),
               "adapted_layers": len(adapted),
               "targets": sorted({layer.name for layer in adapted}),
               "trainable_parameters": trained, "lora_parameters": factors,
               "model_parameters": total,
               "base": (f"init_from {spec.init_from}" if spec.init_from else
                        f"backbone {spec.backbone['name']} {spec.backbone.get('path') or ''}"
                        .rstrip())}
    if write:
        summary["bytes"] = lora.save_variables(trainable, os.path.join(run_dir, lora.ADAPTERS))
        runs.write_json(os.path.join(run_dir, lora.ADAPTERS_CONFIG), summary)
    return summary


def load_base(config, key="config"):
    """``(backbone, tokenizer)`` a fine-tuning config starts from: its ``init_from`` run or
    checkpoint, or its pretrained ``backbone`` section (hf, keras_hub, ...), loaded and checked
    as ``kplm finetune`` does. A LoRA run's adapters apply to it."""
    from kplm.plugins import get_registry
    if config.get("init_from"):
        from kplm.pretrained import check_checkpoint, load_pretrained
        check_checkpoint(config["init_from"], "init_from")
        return load_pretrained(config["init_from"])
    cls, section = check_section(config.get("backbone") or {}, "backbone", "backbone",
                                 get_registry(), provided=("vocabulary_size", "dtype"))
    if not is_pretrained(cls):
        raise ConfigError(f"{key}: backbone '{section['name']}' is not a checkpoint; LoRA "
                          "adapters need the pretrained weights they were trained on")
    section.pop("sequence_length", None)
    loader = build(cls, section)
    loader.check()
    return loader.load()


def _save_model(model, run_dir):
    """``model.json`` + ``model.weights.h5``: the architecture and the weights, without the
    optimizer state (a fresh copy of the model holds the weights), each file atomically."""
    import keras

    from kplm.finite import require_finite
    require_finite(model, os.path.join(run_dir, runs.MODEL_WEIGHTS))  # before anything is written
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # loaders recompile
    fresh = keras.saving.deserialize_keras_object(copy.deepcopy(config))
    fresh.set_weights(model.get_weights())
    weights = os.path.join(run_dir, runs.MODEL_WEIGHTS)
    fresh.save_weights(weights + ".tmp.weights.h5")
    os.replace(weights + ".tmp.weights.h5", weights)
    runs.write_json(os.path.join(run_dir, runs.MODEL_CONFIG), config)
