"""The run directory: the contract between pretraining, fine-tuning, evaluation and export.

``config.yaml`` (resolved), ``tokenizer/``, ``checkpoints/``, ``tensorboard/{train,validation}/``,
``metrics.json``, ``backbone.weights.h5`` + ``backbone.json`` (the pretrained backbone),
``status.json`` (running, failed or finished: ``write_status``).
"""
import contextlib
import importlib
import json
import os
import warnings

from kplm.errors import KplmError, describe, reading, shown
from kplm.finite import require_finite_input

CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
METRICS = "metrics.json"
BACKBONE_WEIGHTS = "backbone.weights.h5"
BACKBONE_CONFIG = "backbone.json"
HEAD_CONFIG = "head.json"  # a fine-tuned run: its head, its model and weights
MODEL_CONFIG = "model.json"
MODEL_WEIGHTS = "model.weights.h5"
STATUS = "status.json"


def json_text(data):
    """``data`` as the JSON text kplm writes (indented, keys sorted, a final newline)."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path, data):
    """Write JSON atomically (temporary name in the same directory, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json_text(data))
    os.replace(tmp, path)


def write_status(run_dir, state, **fields):
    """Record in ``run_dir/status.json`` what the training process is doing: ``running`` (with
    its pid and host, so that ``kplm runs`` tells a live run from one killed), ``failed`` (with
    the error, one line) or ``finished``. A run killed by a signal leaves ``running`` behind
    with a pid that is gone: ``kplm runs`` shows it as interrupted."""
    import socket
    import time
    write_json(os.path.join(run_dir, STATUS),
               {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                "time": time.time(), **fields})


def save_backbone(backbone, run_dir):
    """Save a backbone's config and weights into ``run_dir`` (each file atomically); a backbone
    with a non-finite weight is refused (``kplm.finite``) before anything is written."""
    import keras

    from kplm.finite import require_finite
    weights = os.path.join(run_dir, BACKBONE_WEIGHTS)
    require_finite(backbone, weights)
    backbone.save_weights(weights + ".tmp.weights.h5")
    os.replace(weights + ".tmp.weights.h5", weights)
    write_json(os.path.join(run_dir, BACKBONE_CONFIG), keras.saving.serialize_keras_object(backbone))


def read_json(path, what):
    """The JSON document in ``path`` (a run's ``backbone.json``, ``head.json``, ...); a missing,
    unreadable or invalid file is one ``KplmError`` line naming it and ``what`` it should be."""
    with reading(path, what, error=KplmError):
        with open(path, encoding="utf-8") as f:
            return json.load(f)


#: Top-level packages a run's JSON may name as the module defining its Keras classes: kplm and
#: its plugins (``kplm_<thing>``); keras and keras_hub import their own.
_TRUSTED_MODULES = ("kplm", "keras", "keras_hub")


def rebuild(config, path, what="model"):
    """The Keras model a run's JSON ``config`` (read from ``path``) describes, without weights.
    Its ``module`` is imported first (the class registers itself then), only when it is a kplm
    or plugin module; what the file gets wrong is one ``KplmError`` line naming it."""
    import keras

    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise KplmError(f"{path}: not a saved Keras {what} (expected a JSON object with "
                        "'class_name')")
    module = config.get("module")
    if module is not None:
        if not isinstance(module, str) or not _trusted(module):
            raise KplmError(f"{path}: names module {shown(module)}, which is not kplm's or a "
                            "kplm plugin's (kplm_*); refusing to import it")
        try:  # the backbone's class registers itself when its module is imported
            importlib.import_module(module)
        except ImportError as e:
            raise KplmError(f"{path}: the {what}'s module {module} cannot be imported "
                            f"({describe(e)}); is the plugin that defines it installed?") from None
    try:
        model = keras.saving.deserialize_keras_object(config)
    except KplmError as e:  # a constructor's check: the file holds a bad value
        raise KplmError(f"{path}: {e}") from None
    except Exception as e:  # whatever a damaged or edited file makes Keras raise
        raise KplmError(f"{path}: cannot rebuild the {what} from it: "
                        f"{type(e).__name__}: {describe(e)}") from e
    if not isinstance(model, keras.Model):
        raise KplmError(f"{path}: describes a {type(model).__name__}, not a Keras {what}")
    return model


def saved_family(config):
    """The ``family`` of the backbone class a saved ``backbone.json`` names (``"encoder"``
    unless the class says otherwise), or None when the class cannot be found."""
    if not isinstance(config, dict):
        return None
    module, name = config.get("module"), config.get("class_name")
    if not isinstance(module, str) or not isinstance(name, str) or not _trusted(module):
        return None
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return getattr(cls, "family", "encoder")


def _trusted(module):
    top = module.split(".")[0]
    return top in _TRUSTED_MODULES or top.startswith("kplm_")


def load_weights(model, path, what="weights"):
    """``model.load_weights(path)``; a missing, truncated or damaged ``.weights.h5`` file, or one
    of another architecture, is one ``KplmError`` line naming it. Keras only warns about
    layers it skips (weights left as initialised): that is refused too, not ignored."""
    with reading(path, f"{what} (.weights.h5)", error=KplmError), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = [w for w in caught if "Skipping" in str(w.message)
               or "could not be loaded" in str(w.message)]
    if skipped:
        raise KplmError(f"{path}: {what} do not match the model (another architecture?): "
                        f"{describe(skipped[0].message)}")
    for w in caught:  # anything else Keras had to say, as it would have said it
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    require_finite_input(model, f"{path} ({what})")
    return model


def load_backbone(run_dir):
    """Rebuild the backbone a run saved, with its trained weights.

    Example:
        backbone = kplm.load_backbone("runs/bert_tiny_mlm")
    """
    import kplm.models.encoder  # noqa: F401  (registers kplm's serializable classes)
    config_path = os.path.join(run_dir, BACKBONE_CONFIG)
    if not os.path.exists(config_path):
        raise KplmError(f"{run_dir}: no saved backbone ({BACKBONE_CONFIG}); is it a finished "
                        "pretraining run directory?")
    backbone = rebuild(read_json(config_path, "a saved backbone config"), config_path,
                       "backbone")
    return load_weights(backbone, os.path.join(run_dir, BACKBONE_WEIGHTS), "backbone weights")


def load_tokenizer(run_dir):
    """The tokenizer a run saved in ``run_dir/tokenizer``."""
    from kplm.plugins import get_registry
    path = os.path.join(run_dir, TOKENIZER)
    config_path = os.path.join(path, "tokenizer.json")
    if not os.path.isdir(path):
        raise KplmError(f"{run_dir}: no saved tokenizer ({TOKENIZER}/)")
    config = read_json(config_path, "a saved tokenizer config")
    name = config.get("name", "wordpiece") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise KplmError(f"{config_path}: expected a JSON object with the tokenizer's 'name'")
    try:
        cls = get_registry().get("tokenizer", name)
    except KplmError as e:
        raise KplmError(f"{config_path}: {e}") from None
    try:
        with reading(path, "a saved tokenizer", error=KplmError):
            return cls.load(path)
    except KplmError as e:
        message = str(e)
        raise KplmError(message if path in message else f"{path}: {message}") from None
    except (TypeError, AttributeError) as e:  # a value of the wrong type in tokenizer.json
        raise KplmError(f"{config_path}: cannot load the tokenizer: {describe(e)}") from e


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
        from kplm.config import check_arguments, check_section, load_yaml
        from kplm.errors import ConfigError
        from kplm.plugins import get_registry
        from kplm.training.finetune_options import FinetuneOptions

        self.run_dir = run_dir
        path = os.path.join(run_dir, HEAD_CONFIG)
        if not os.path.exists(path):
            hint = (" (a pretraining run: it has a backbone.json)"
                    if os.path.exists(os.path.join(run_dir, BACKBONE_CONFIG)) else "")
            raise KplmError(f"{run_dir}: not a fine-tuned run directory (no {HEAD_CONFIG})"
                            f"{hint}")
        from kplm.models import lora
        adapters_path = os.path.join(run_dir, lora.ADAPTERS_CONFIG)
        self.adapters = (read_json(adapters_path, "a LoRA adapters summary")
                         if os.path.exists(adapters_path) else None)
        needed = ((lora.ADAPTERS, CONFIG) if self.adapters is not None
                  else (MODEL_CONFIG, MODEL_WEIGHTS, CONFIG))
        for name in needed:
            if not os.path.exists(os.path.join(run_dir, name)):
                raise KplmError(f"{run_dir}: no {name}; the fine-tuning run did not finish")
        # Everything read here is checked as a config is: a damaged or edited run directory is
        # one line naming the file, before the model is built.
        with _in_file(path):
            head_class, head_config = check_section(
                read_json(path, "a saved head config"), "head", "head", get_registry())
            self.head = head_class(**{k: v for k, v in head_config.items() if k != "name"})
        config_path = os.path.join(run_dir, CONFIG)
        with _in_file(config_path):
            self.config = load_yaml(config_path)
            finetune = check_arguments(FinetuneOptions, self.config.get("finetune"), "finetune")
            data = self.config.get("data")
            if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
                raise ConfigError("config key 'data.train' is missing")
        if self.head.model_module:
            importlib.import_module(self.head.model_module)
        self.tokenizer = load_tokenizer(run_dir)
        if self.adapters is not None:
            self.model = self._adapted_model(config_path, adapters_path)
        else:
            model_path = os.path.join(run_dir, MODEL_CONFIG)
            self.model = rebuild(read_json(model_path, "a saved model config"),
                                 model_path, "model")
            load_weights(self.model, os.path.join(run_dir, MODEL_WEIGHTS), "model weights")
            self._check_head()
        from kplm.pretrained import check_tokenizer_fits
        check_tokenizer_fits(self.tokenizer, self.model.backbone, run_dir)
        self.sequence_length = (finetune["sequence_length"]
                                or self.model.backbone.sequence_length)

    def _check_head(self):
        """``head.json`` and ``model.json`` describe one model (an edited or swapped file would
        give answers of the wrong shape or kind without a word): the head's own model on the
        saved backbone must have the saved model's config."""
        def plain(config):  # layer names are numbered per process: not part of the model
            if isinstance(config, dict):
                return {k: plain(v) for k, v in config.items() if k != "name"}
            return [plain(v) for v in config] if isinstance(config, list) else config
        expected = self.head.build_model(self.model.backbone)
        have, want = plain(self.model.get_config()), plain(expected.get_config())
        if type(expected) is type(self.model) and have == want:
            return
        keys = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
        detail = (f"{type(self.model).__name__} in {MODEL_CONFIG}, {type(expected).__name__} "
                  f"from {HEAD_CONFIG}" if type(expected) is not type(self.model) else
                  ", ".join(f"{k}: {shown(have.get(k), 40)} in {MODEL_CONFIG}, "
                            f"{shown(want.get(k), 40)} from {HEAD_CONFIG}" for k in keys[:3]))
        raise KplmError(f"{self.run_dir}: {HEAD_CONFIG} does not match {MODEL_CONFIG} "
                        f"({detail}); one was edited or copied from another run")

    def _adapted_model(self, config_path, adapters_path):
        """A LoRA run's model: its head on the checkpoint it started from, the saved adapters
        loaded, then merged into the kernels (``kplm.models.lora.merged_copy``: as fast as a
        fully fine-tuned model, and what ``kplm export`` writes)."""
        from kplm.config import check_arguments
        from kplm.models import lora
        from kplm.training.finetune import load_base
        from kplm.training.finetune_options import FinetuneOptions
        with _in_file(config_path):
            options = check_arguments(FinetuneOptions, self.config.get("finetune"), "finetune")
            if options.get("lora_rank") is None:
                raise KplmError(f"{adapters_path} is there but finetune.lora_rank is not set")
            backbone, _ = load_base(self.config, key="the run's base checkpoint")
        model = self.head.build_model(backbone)
        lora.enable_lora(backbone, options["lora_rank"], options.get("lora_alpha"),
                         options.get("lora_targets"))
        lora.load_variables(model.trainable_variables,
                            os.path.join(self.run_dir, lora.ADAPTERS), "LoRA adapters")
        return lora.merged_copy(model)

    def source(self, paths, split="validation"):
        """A data source like the run's ``data.<split>`` (same format options) over ``paths``."""
        from kplm.config import check_section, signature_of
        from kplm.errors import ConfigError
        from kplm.plugins import get_registry
        section = self.config["data"].get(split) or self.config["data"]["train"]
        registry = get_registry()
        with _in_file(os.path.join(self.run_dir, CONFIG)):
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
        source = cls(**{k: v for k, v in resolved.items() if k != "name"})
        source.check()
        return source

    def evaluate(self, source, batch_size=64):
        """The head's metrics over a data source."""
        from kplm.errors import DataError, about_data
        try:
            return self.head.evaluate(self.model, source, self.tokenizer,
                                      batch_size=batch_size, sequence_length=self.sequence_length)
        except DataError as e:  # labels the run does not know, a label that is not a number
            raise about_data("--data", source, e) from None

    def predict(self, examples, batch_size=64):
        """``examples``: dicts of the head's input fields -> one prediction dict each."""
        fields = [self.head.text_field] + ([self.head.pair_field]
                                           if getattr(self.head, "pair_field", None) else [])
        for i, ex in enumerate(examples):
            missing = [f for f in fields if f not in ex]
            if missing:
                from kplm.errors import DataError
                raise DataError(f"input {i + 1}: missing {missing}")
        return self.head.predict(self.model, examples, self.tokenizer, batch_size=batch_size,
                                 sequence_length=self.sequence_length)
