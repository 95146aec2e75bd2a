"""docs/configs.md is the config reference: every key a built-in component, the trainer or a
fine-tuning section accepts is named there, so a key added to the code without its line in the
reference fails here."""
import os
import re

import pytest

from conftest import ROOT

DOC = open(os.path.join(ROOT, "docs", "configs.md"), encoding="utf-8").read()
ROWS = [line for line in DOC.splitlines() if line.startswith("|")]


def _missing(cls, rows):
    """The keys ``cls`` accepts that none of the table ``rows`` names."""
    from kplm.config import signature_of
    accepted, _ = signature_of(cls)
    text = " ".join(rows)
    return [k for k in accepted if not re.search(rf"\b{re.escape(k)}\b", text)]


def _rows_naming(name):
    """The reference's rows that describe the component ``name`` (``{name: NAME, ...}``)."""
    return [row for row in ROWS if re.search(rf"name: {re.escape(name)}\b", row)]


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
    components = list(_builtin_components())
    unnamed = [f"{kind} {name}" for kind, name, _ in components if not _rows_naming(name)]
    assert not unnamed, f"no {{name: ...}} in docs/configs.md's tables for: {unnamed}"
    missing = {f"{kind} {name}": keys for kind, name, cls in components
               if (keys := _missing(cls, _rows_naming(name)))}
    assert not missing, f"keys docs/configs.md's row does not name: {missing}"


@pytest.mark.parametrize("section", ["trainer", "finetune", "distillation"])
def test_every_section_key_is_in_the_config_reference(section):
    from kplm import TrainerConfig
    from kplm.training.distillation import DistillationOptions
    from kplm.training.finetune import FinetuneOptions
    cls = {"trainer": TrainerConfig, "finetune": FinetuneOptions,
           "distillation": DistillationOptions}[section]
    rows = [row for row in ROWS if row.startswith(f"| `{section}`")]
    assert rows and not _missing(cls, rows), \
        f"{section} keys docs/configs.md's row does not name: {_missing(cls, rows)}"
