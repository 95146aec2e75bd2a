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


def doctest_modules():
    """Every module of the ``kplm`` package: a docstring example anywhere is run (a list kept by
    hand forgets new modules)."""
    import pkgutil

    import kplm
    return ["kplm"] + sorted(m.name for m in pkgutil.walk_packages(kplm.__path__, "kplm.")
                             if not m.name.endswith("__main__"))  # runs the CLI on import


def test_docstring_examples_run():
    import doctest
    import importlib
    failures = {}
    for name in doctest_modules():
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        if result.failed:
            failures[name] = result.failed
    assert not failures
