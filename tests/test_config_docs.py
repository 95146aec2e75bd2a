"""docs/configs.md is the config reference: every key a built-in component, the trainer or a
fine-tuning section accepts is named there, so a key added to the code without its line in the
reference fails here."""
import os
import re

import pytest

from conftest import ROOT

DOC = open(os.path.join(ROOT, "docs", "configs.md"), encoding="utf-8").read()


def _missing(cls):
    from kplm.config import signature_of
    accepted, _ = signature_of(cls)
    return [k for k in accepted if not re.search(rf"\b{re.escape(k)}\b", DOC)]


def _builtin_components():
    from kplm.plugins import get_registry, list_plugins
    builtin = {r["name"] for r in list_plugins() if r["builtin"]}
    registry = get_registry()
    for row in list_plugins():
        if row["name"] in builtin:
            for kind, names in row["components"].items():
                for name in names:
                    yield kind, name, registry.get(kind, name)


def test_every_builtin_component_key_is_in_the_config_reference():
    missing = {f"{kind} {name}": keys for kind, name, cls in _builtin_components()
               if (keys := _missing(cls))}
    assert not missing, f"keys docs/configs.md does not name: {missing}"
    # the names themselves too
    for kind, name, _ in _builtin_components():
        assert re.search(rf"\b{re.escape(name)}\b", DOC), f"{kind} {name!r} is not in docs/configs.md"


@pytest.mark.parametrize("section", ["trainer", "finetune", "distillation"])
def test_every_section_key_is_in_the_config_reference(section):
    from kplm import TrainerConfig
    from kplm.training.distillation import DistillationOptions
    from kplm.training.finetune import FinetuneOptions
    cls = {"trainer": TrainerConfig, "finetune": FinetuneOptions,
           "distillation": DistillationOptions}[section]
    assert not _missing(cls), f"{section} keys docs/configs.md does not name: {_missing(cls)}"
