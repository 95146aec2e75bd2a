"""Every hook is documented; every shipped component has a docstring with an example."""
import os

from kplm import hookspecs
from kplm.plugins import get_registry

from conftest import ROOT


def test_every_hook_is_documented():
    doc = open(os.path.join(ROOT, "docs", "plugins.md"), encoding="utf-8").read()
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks
    for name in hooks:
        assert f"`{name}(" in doc, f"{name} is not documented in docs/plugins.md"


def test_builtin_components_document_themselves():
    registry = get_registry()
    for entry in registry.entries():
        if entry.kind == "callback":
            continue  # Keras' own classes
        cls = entry.load()
        assert cls.__doc__ and "Example" in cls.__doc__, f"{entry.kind} {entry.name}"
        assert "Args:" in cls.__doc__ or entry.kind == "backbone", f"{entry.kind} {entry.name}"


DOCTEST_MODULES = [
    "kplm", "kplm.config", "kplm.metrics", "kplm.registry", "kplm.data.text_files",
    "kplm.data.jsonl", "kplm.data.csv_files", "kplm.data.packing", "kplm.objectives.masking",
    "kplm.objectives.masked_lm", "kplm.tokenizers.wordpiece", "kplm.models.encoder",
    "kplm.models.masked_lm", "kplm.models.classifier", "kplm.training.optimizer",
    "kplm.training.trainer_config", "kplm.heads.sequence_classification", "kplm.heads.regression",
    "kplm.pretrained", "kplm.pretrained.torch_zip",
    "kplm.objectives.sentence_pairs", "kplm.objectives.next_sentence", "kplm.objectives.combined",
    "kplm.models.pretrainer", "kplm.models.token_loss",
    "kplm.tokenizers.sentencepiece", "kplm.objectives.noising", "kplm.objectives.span_corruption",
    "kplm.objectives.denoising",
    "kplm.models.decoder", "kplm.models.causal_lm", "kplm.objectives.causal_lm",
    "kplm.models.encoder_decoder", "kplm.models.seq2seq_lm", "kplm.data.parallel_text",
    "kplm.heads.seq2seq", "kplm.data.prepare", "kplm.training.distribute", "kplm.training.step",
    "kplm.training.loop", "kplm.training.checkpoints", "kplm.training.logging",
]


def test_docstring_examples_run():
    import doctest
    import importlib
    failures = {}
    for name in DOCTEST_MODULES:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        if result.failed:
            failures[name] = result.failed
    assert not failures
