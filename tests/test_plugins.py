"""Hook registration, duplicate and unknown names, failure isolation, env switches."""
import importlib.metadata
import json
import sys
import types

import pytest

from kplm import plugins
from kplm.components import DataSource
from kplm.errors import PluginError
from kplm.registry import Registry, UnknownComponentError

from conftest import run_kplm


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    for var in ("KPLM_LOAD_PLUGINS", "KPLM_DISABLE_PLUGINS", "KPLM_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    plugins.reset()
    yield
    plugins.reset()


class FakeDist:
    def __init__(self, name):
        self.metadata = {"Name": name}
        self.version = "9.9"


class FakeEntryPoint:
    def __init__(self, name, load):
        self.name, self.value, self._load = name, f"{name}.module", load
        self.dist = FakeDist(f"kplm-{name}")

    def load(self):
        return self._load()


def fake_entry_points(monkeypatch, eps):
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        if group == "kplm":
            return eps
        return real(group=group, **kw)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def good_plugin():
    class Lines(DataSource):
        def __init__(self, paths: list[str]):
            self.paths = paths

    module = types.ModuleType("good")

    from kplm.hookspecs import hookimpl

    @hookimpl
    def register_data_sources(register):
        register("good_lines", Lines)
    module.register_data_sources = register_data_sources
    return module


def source_plugin(name, component):
    """A plugin module registering ``component`` as the data source ``name``."""
    module = types.ModuleType(f"plugin_{name}")
    from kplm.hookspecs import hookimpl

    @hookimpl
    def register_data_sources(register):
        register(name, component)
    module.register_data_sources = register_data_sources
    return module


def broken_import():
    raise ImportError("No module named 'missing_dependency'")


def test_builtins_register_through_hooks():
    registry = plugins.get_registry()
    assert {"masked_lm", "next_sentence_prediction",
            "sentence_order_prediction"} <= set(registry.names("objective"))
    assert registry.entry("objective", "sentence_order_prediction").plugin == \
        "kplm.objectives.next_sentence"
    assert {"text_files", "jsonl"} <= set(registry.names("data_source"))
    assert registry.entry("data_source", "text_files").plugin == "kplm.data.text_files"
    assert {"encoder", "decoder", "hf", "keras_hub"} <= set(registry.names("backbone"))
    assert registry.entry("backbone", "encoder_decoder").plugin == "kplm.models"
    assert registry.entry("head", "seq2seq").plugin == "kplm.heads.seq2seq"
    assert registry.entry("data_source", "parallel_text").plugin == "kplm.data.parallel_text"
    assert registry.entry("objective", "causal_lm").plugin == "kplm.objectives.causal_lm"
    assert registry.entry("backbone", "hf").plugin == "kplm.pretrained"
    assert registry.names("tokenizer") == ["byte_bpe", "gpt2_bpe", "sentencepiece", "wordpiece"]
    assert {"span_corruption", "denoising"} <= set(registry.names("objective"))
    assert registry.entry("objective", "span_corruption").plugin == \
        "kplm.objectives.span_corruption"


def test_duplicate_name_names_both_plugins():
    registry = Registry()
    registry.register("data_source", "lines", DataSource, "plugin_a")
    with pytest.raises(PluginError) as e:
        registry.register("data_source", "lines", DataSource, "plugin_b")
    assert "plugin_a" in str(e.value) and "plugin_b" in str(e.value)


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownComponentError) as e:
        plugins.get_registry().get("data_source", "text_file")
    message = str(e.value)
    assert "Did you mean 'text_files'?" in message
    assert "jsonl" in message and "text_files" in message


def test_wrong_base_class_refused():
    with pytest.raises(PluginError, match="not a subclass of kplm.components.DataSource"):
        Registry().register("data_source", "bad", dict, "plugin_x")


def test_lazy_backbone_checked_on_first_use():
    registry = Registry()
    registry.register("backbone", "nothing", "json:dumps", "plugin_y")
    with pytest.raises(PluginError, match="plugin_y"):
        registry.get("backbone", "nothing")


def test_failing_plugin_is_isolated_and_reported(monkeypatch):
    fake_entry_points(monkeypatch, [FakeEntryPoint("broken", broken_import),
                                    FakeEntryPoint("good", good_plugin)])
    registry = plugins.get_registry()
    assert "good_lines" in registry.names("data_source")  # loaded after the broken one
    (failure,) = plugins.plugin_failures()
    assert failure.name == "broken"
    assert failure.distribution == "kplm-broken 9.9"
    assert "missing_dependency" in failure.error


def test_strict_mode_raises(monkeypatch):
    fake_entry_points(monkeypatch, [FakeEntryPoint("broken", broken_import)])
    monkeypatch.setenv("KPLM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        plugins.get_registry()


def test_load_and_disable_switches(monkeypatch):
    fake_entry_points(monkeypatch, [FakeEntryPoint("broken", broken_import),
                                    FakeEntryPoint("good", good_plugin)])
    monkeypatch.setenv("KPLM_LOAD_PLUGINS", "good")
    assert "good_lines" in plugins.get_registry().names("data_source")
    assert plugins.plugin_failures() == []
    plugins.reset()
    monkeypatch.delenv("KPLM_LOAD_PLUGINS")
    monkeypatch.setenv("KPLM_DISABLE_PLUGINS", "broken,kplm.data.jsonl")
    registry = plugins.get_registry()
    assert "jsonl" not in registry.names("data_source")
    assert plugins.plugin_failures() == []


def test_duplicate_from_third_party_is_reported(monkeypatch):
    fake_entry_points(monkeypatch, [FakeEntryPoint(
        "dup", lambda: source_plugin("text_files", DataSource))])
    plugins.get_registry()
    (failure,) = plugins.plugin_failures()
    assert "kplm.data.text_files" in failure.error and "dup" in failure.error


def test_a_plugin_replacing_a_command_or_exiting_at_import_is_reported(monkeypatch):
    """A plugin adds commands of new names: one that replaces ``pretrain`` (or a group's
    ``tokenizer train``) is unloaded and reported, the built-in kept; an ``exit()`` at import
    takes down only that plugin, not every kplm command."""
    import click

    def hijack():
        module = types.ModuleType("hijack")
        from kplm.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            cli.add_command(click.command("pretrain")(lambda: print("hijacked")))
            cli.add_command(click.command("hello")(lambda: print("hello")))
        module.register_commands = register_commands
        return module

    def exits():
        sys.exit(3)

    fake_entry_points(monkeypatch, [FakeEntryPoint("hijack", hijack),
                                    FakeEntryPoint("exits", exits)])
    from kplm import commands
    group = click.Group("kplm")
    plugins.register_commands(group)
    assert group.commands["pretrain"] is commands.pretrain and "hello" not in group.commands
    failures = {f.name: f.error for f in plugins.plugin_failures()}
    assert "replaces the command 'pretrain'" in failures["hijack"], failures
    assert failures["exits"] == "SystemExit: 3"


def test_cli_help_and_plugins_import_only_the_standard_library_click_and_pluggy():
    """Start-up is counted in imports, not seconds: ``kplm --help`` and ``kplm plugins`` load
    no third-party package but click and pluggy (no TensorFlow, Keras, NumPy, YAML, ...), and
    kplm's own modules stay under a fixed count (the built-in plugins' registration modules)."""
    code = ("import sys; before = set(sys.modules); from click.testing import CliRunner; "
            "from kplm.cli import cli; "
            "r1 = CliRunner().invoke(cli, ['--help']); "
            "r2 = CliRunner().invoke(cli, ['plugins', '--all']); "
            "assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output); "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(' '.join(sorted(m for m in new if m not in sys.stdlib_module_names "
            "and not m.startswith('_')))); "
            "print(sum(m.startswith('kplm.') for m in sys.modules))")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    third_party, kplm_modules = out.stdout.strip().splitlines()
    assert set(third_party.split()) <= {"click", "pluggy", "kplm"}, third_party
    assert int(kplm_modules) <= 45, kplm_modules  # 39 today: a heavy import path shows here


def test_plugins_json_lists_builtins():
    result = run_kplm("plugins", "--json", "--all")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["kplm.objectives.masked_lm"]["components"] == {"objective": ["masked_lm"]}
    assert by_name["kplm.data.text_files"]["version"]


def _toy_plugin(module_name, objective_name):
    """A plugin module registering one objective: ``(module, objective class)``."""
    import types

    from kplm.components import Objective
    from kplm.hookspecs import hookimpl

    class Toy(Objective):
        pass

    module = types.ModuleType(module_name)

    @hookimpl
    def register_objectives(register):
        register(objective_name, Toy)
    module.register_objectives = register_objectives
    return module, Toy


def test_testing_registered_loads_a_plugin_module_for_a_block():
    """``kplm.testing.registered``: a plugin's tests use its components in-process."""
    from kplm.testing import registered
    module, toy = _toy_plugin("kplm_toy_plugin", "toy")
    with registered(module) as registry:
        assert registry.get("objective", "toy") is toy
        assert any(r["name"] == "kplm_toy_plugin" and not r["builtin"]
                   for r in plugins.list_plugins())
    assert "toy" not in plugins.get_registry().names("objective")
    assert "kplm_toy_plugin" not in [r["name"] for r in plugins.list_plugins()]


def test_testing_registered_uses_a_plugin_that_is_also_installed():
    """A plugin's tests run with the package installed too: ``registered`` finds its module
    already loaded (under its entry point's name) and neither fails nor unloads it."""
    from kplm.testing import registered
    module, toy = _toy_plugin("kplm_toy_installed", "toy_installed")
    assert plugins.add_plugin(module, "toy-entry-point")  # as an installed entry point loads it
    try:
        with registered(module) as registry:
            assert registry.get("objective", "toy_installed") is toy
        assert plugins.get_registry().get("objective", "toy_installed") is toy  # still loaded
    finally:
        plugins.remove_plugin("toy-entry-point")
    assert "toy_installed" not in plugins.get_registry().names("objective")


def test_a_bug_in_a_plugin_is_one_line_naming_the_plugin(monkeypatch, tmp_path):
    """A plugin's own exception (not a KplmError) is a bug in the plugin: one line naming it
    and its distribution, with --debug for the traceback; kplm's own bugs keep theirs."""
    import importlib

    import yaml
    from click.testing import CliRunner

    from kplm.cli import cli
    (tmp_path / "buggy_source.py").write_text(
        "import kplm\n\n"
        "class Lines(kplm.DataSource):\n"
        "    def __init__(self, paths: list[str]):\n"
        "        self.paths = paths\n\n"
        "    def check(self):\n"
        "        raise ValueError('boom')\n\n"
        "@kplm.hookimpl\n"
        "def register_data_sources(register):\n"
        "    register('buggy_lines', Lines)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, [FakeEntryPoint(
        "buggy", lambda: importlib.import_module("buggy_source"))])
    plugins.reset()  # importing the launcher loaded the plugins: again, with the fake one
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {
        "train": {"name": "buggy_lines", "paths": ["x.txt"]}}}))
    result = CliRunner().invoke(cli, ["pretrain", str(config)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == ("Error: plugin buggy (kplm-buggy 9.9) failed: ValueError: boom (a bug "
                         "in the plugin; kplm --debug ... shows where)"), result.output
    assert len(lines) == 1 and not (tmp_path / "run").exists()


def test_a_component_with_a_limit_rule_kplm_cannot_read_is_reported_at_registration(
        monkeypatch):
    class Lines(DataSource):
        limits = {"size": "between 1 and 5"}

        def __init__(self, paths: list[str], size: int = 2):
            self.paths, self.size = paths, size

    fake_entry_points(monkeypatch, [FakeEntryPoint("odd", lambda: source_plugin("odd_lines",
                                                                                Lines))])
    assert "odd_lines" not in plugins.get_registry().names("data_source")
    (failure,) = plugins.plugin_failures()
    assert "whose limits are not kplm's rules: size: unknown limit rule 'between 1 and 5'" in \
        failure.error


def test_plugins_that_would_register_nothing_are_reported(monkeypatch, capsys):
    """A misspelled hook, a hook that yields, functions without @hookimpl, an entry point named
    like a built-in plugin: each registered nothing without a word; now each is a failure
    ``kplm plugins`` lists. A print at import goes to stderr (``kplm plugins --json`` is
    stdout)."""
    from kplm.hookspecs import hookimpl

    def module_with(**functions):
        module = types.ModuleType("m")
        for name, function in functions.items():
            setattr(module, name, function)
        return module

    @hookimpl
    def register_objective(register):  # no such hook: register_objectives
        register("x", DataSource)

    @hookimpl
    def register_data_sources(register):
        yield register("gen_lines", DataSource)

    def plain(register):
        register("plain_lines", DataSource)

    def printing():
        print("hello from a plugin")
        return good_plugin()

    fake_entry_points(monkeypatch, [
        FakeEntryPoint("misspelled", lambda: module_with(register_objective=register_objective)),
        FakeEntryPoint("generator", lambda: module_with(
            register_data_sources=register_data_sources)),
        FakeEntryPoint("unmarked", lambda: module_with(register_data_sources=plain)),
        FakeEntryPoint("kplm.data.jsonl", good_plugin),
        FakeEntryPoint("printing", printing)])
    registry = plugins.get_registry()
    failures = {f.name: f.error for f in plugins.plugin_failures()}
    assert "unknown hook 'register_objective'" in failures["misspelled"], failures
    assert "its register_data_sources hook is a generator" in failures["generator"]
    assert "implements no kplm hook" in failures["unmarked"]
    assert "entry point name 'kplm.data.jsonl' is taken by kplm itself" in \
        failures["kplm.data.jsonl"]
    assert "printing" not in failures and "good_lines" in registry.names("data_source")
    assert "gen_lines" not in registry.names("data_source")
    captured = capsys.readouterr()
    assert "hello from a plugin" in captured.err and "hello" not in captured.out
