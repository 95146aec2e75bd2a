"""The plugin manager: built-in plugins, then installed ones (entry-point group ``kplm``).

Environment:
    KPLM_LOAD_PLUGINS     comma-separated entry-point names: load only these installed plugins
                          ("" loads none).
    KPLM_DISABLE_PLUGINS  comma-separated plugin names (built-in module names or entry-point names)
                          not to load.
    KPLM_STRICT_PLUGINS   "1": a plugin that fails to load is an error instead of a report.

A name in KPLM_LOAD_PLUGINS or KPLM_DISABLE_PLUGINS that no installed plugin has is a warning
(``kplm plugins`` lists it as failed), and an error in strict mode.

The plugin manager (and the registry filled from it) is the only global state in kplm.
"""
import contextlib
import importlib
import importlib.metadata
import inspect
import os
import sys
import traceback
import warnings

import pluggy

from kplm import hookspecs
from kplm.errors import PluginError, PluginWarning, clip, listed, shown
from kplm.registry import KINDS, Registry

#: The hooks a plugin implements (``kplm.hookspecs``).
_HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("register_"))

DEFAULT_PLUGINS = (
    "kplm.data.text_files",
    "kplm.data.jsonl",
    "kplm.data.csv_files",
    "kplm.data.squad",
    "kplm.data.conll",
    "kplm.data.parallel_text",
    "kplm.data.tfrecord",
    "kplm.data.mixture",
    "kplm.tokenizers.wordpiece",
    "kplm.tokenizers.byte_bpe",
    "kplm.tokenizers.sentencepiece",
    "kplm.models",
    "kplm.pretrained",
    "kplm.objectives.masked_lm",
    "kplm.objectives.next_sentence",
    "kplm.objectives.causal_lm",
    "kplm.objectives.span_corruption",
    "kplm.objectives.denoising",
    "kplm.objectives.distillation",
    "kplm.heads.sequence_classification",
    "kplm.heads.question_answering",
    "kplm.heads.token_classification",
    "kplm.heads.regression",
    "kplm.heads.seq2seq",
    "kplm.training.callbacks",
    "kplm.commands",
)

ENTRY_POINT_GROUP = "kplm"


class PluginFailure:
    """A plugin that failed to load or to register: kept for ``kplm plugins``."""

    def __init__(self, name, distribution, error, tb=""):
        self.name, self.distribution, self.error, self.traceback = name, distribution, error, tb

    def to_dict(self):
        return {"name": self.name, "distribution": self.distribution, "error": self.error}


class _State:
    pm = None
    registry = None
    failures = []
    info = {}  # plugin name -> {"distribution", "version", "builtin"}


def _env_list(var):
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _strict():
    value = os.environ.get("KPLM_STRICT_PLUGINS", "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise PluginError(f"KPLM_STRICT_PLUGINS must be 1 or 0 (true/false, yes/no), got "
                          f"{shown(os.environ['KPLM_STRICT_PLUGINS'])}")
    return value in _TRUE


def _fail(failure):
    if _strict():
        raise PluginError(f"plugin {failure.name} ({failure.distribution}) failed: {failure.error}")
    _State.failures.append(failure)


def _not_installed(var, name, installed):
    """``var`` names a plugin no installed distribution provides: a warning (listed by
    ``kplm plugins``), an error in strict mode. A typo must not silently load nothing."""
    error = (f"{var} names plugin {shown(name)}, which is not installed (installed: "
             f"{listed(sorted(installed), 100) or 'none'})")
    _fail(PluginFailure(name, "not installed", error))
    warnings.warn(error, PluginWarning, stacklevel=3)


def get_plugin_manager():
    """The process-wide ``pluggy.PluginManager``, with built-in and installed plugins loaded."""
    if _State.pm is not None:
        return _State.pm
    _strict()  # refuses a KPLM_STRICT_PLUGINS value it cannot read, before anything loads
    pm = pluggy.PluginManager("kplm")
    pm.add_hookspecs(hookspecs)
    _State.failures, _State.info = [], {}
    disabled = _env_list("KPLM_DISABLE_PLUGINS") or set()
    from kplm import __version__

    for module_name in DEFAULT_PLUGINS:
        if module_name in disabled:
            continue
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
        _State.info[module_name] = {"distribution": "kplm", "version": __version__, "builtin": True}

    only = _env_list("KPLM_LOAD_PLUGINS")
    entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    installed = {ep.name for ep in entry_points}
    for name in sorted((only or set()) - installed - set(DEFAULT_PLUGINS)):
        _not_installed("KPLM_LOAD_PLUGINS", name, installed)
    for name in sorted(disabled - installed - set(DEFAULT_PLUGINS)):
        _not_installed("KPLM_DISABLE_PLUGINS", name, installed)
    # pluggy's load_setuptools_entrypoints stops at the first failing plugin, so
    # each entry point is loaded on its own and its failure recorded.
    for ep in entry_points:
        if ep.name in disabled or (only is not None and ep.name not in only):
            continue
        dist = ep.dist.metadata["Name"] if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if pm.get_plugin(ep.name) is not None:
            holder = _State.info.get(ep.name, {})
            if holder.get("distribution") == dist:
                continue  # one distribution seen twice on the path
            _fail(PluginFailure(ep.name, f"{dist} {version}", (
                f"its entry point name {ep.name!r} is taken by "
                f"{'kplm itself' if holder.get('builtin') else holder.get('distribution', '?')}"
                "; rename the entry point")))
            continue
        try:
            with contextlib.redirect_stdout(sys.stderr):  # a print at import is not output
                plugin = ep.load()
            pm.register(plugin, name=ep.name)
            try:
                pm.check_pending()  # a @hookimpl of no kplm hook (a misspelled name)
                if not pm.get_hookcallers(plugin):
                    raise PluginError(f"it implements no kplm hook ({', '.join(_HOOKS)}), "
                                      "or its functions lack @kplm.hookimpl")
            except Exception:
                pm.unregister(plugin)
                raise
        except (Exception, SystemExit) as e:  # a third-party plugin's import-time failure
            # (an exit() at import too) is isolated
            error = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
            _fail(PluginFailure(ep.name, f"{dist} {version}", clip(error, 300),
                                traceback.format_exc()))
            continue
        _State.info[ep.name] = {"distribution": dist, "version": version, "builtin": False}
    _State.pm = pm
    return pm


def get_registry():
    """The registry of every component the loaded plugins registered."""
    if _State.registry is not None:
        return _State.registry
    pm = get_plugin_manager()
    registry = Registry()
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(name, component, _kind=kind, _plugin=plugin):
                registry.register(_kind, name, component, _plugin)

            try:
                if inspect.isgenerator(impl.function(register=register)):
                    raise PluginError(f"its {hook_name} hook is a generator (it yields), so it "
                                      "never ran; call register(name, component) instead")
            except (Exception, SystemExit) as e:
                info = _State.info.get(plugin, {})
                if info.get("builtin") or (_strict() and isinstance(e, PluginError)):
                    raise
                error = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
                _fail(PluginFailure(plugin, _dist_label(plugin), error, traceback.format_exc()))
                _unload(pm, registry, plugin)
    _State.registry = registry
    return registry


def _unload(pm, registry, plugin):
    """Remove a failed plugin: its hooks, what it registered so far, its listing."""
    registry.forget_plugin(plugin)
    if pm.get_plugin(plugin) is not None:
        pm.unregister(name=plugin)
    _State.info.pop(plugin, None)


def register_commands(cli):
    """Let every plugin add its commands to ``cli``; a third-party plugin whose hook fails is
    reported (``kplm plugins``) instead of taking the launcher down."""
    pm = get_plugin_manager()
    impls = pm.hook.register_commands.get_hookimpls()
    builtin = [i for i in impls if _State.info.get(i.plugin_name, {}).get("builtin")]
    for impl in builtin + [i for i in impls if i not in builtin]:  # kplm's own first
        before = _commands_of(cli)
        try:
            impl.function(cli=cli)
            replaced = sorted(name for name, command in before.items()
                              if _commands_of(cli).get(name) is not command)
            if replaced and impl not in builtin:
                _restore_commands(cli, before)
                raise PluginError(f"it replaces the command{'s' * (len(replaced) > 1)} "
                                  f"'{', '.join(replaced)}'; a plugin adds commands of new names")
        except (Exception, SystemExit) as e:
            if impl in builtin or _strict():
                if isinstance(e, PluginError):
                    raise
                raise PluginError(f"plugin {impl.plugin_name} failed to add its commands: "
                                  f"{type(e).__name__}: {e}") from e
            error = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
            _fail(PluginFailure(impl.plugin_name, _dist_label(impl.plugin_name), error,
                                traceback.format_exc()))


def _commands_of(cli):
    """``{"name": command, "group name": command, ...}``: the launcher's commands and its
    groups' (``tokenizer train``), to tell a plugin's new commands from replaced ones."""
    found = {}
    for name, command in getattr(cli, "commands", {}).items():
        found[name] = command
        for sub, inner in getattr(command, "commands", {}).items():
            found[f"{name} {sub}"] = inner
    return found


def _restore_commands(cli, before):
    """Put the launcher's commands back as ``before`` held them: a plugin that replaced some
    is unloaded, its new ones with it."""
    for name in set(_commands_of(cli)) - set(before):
        group, _, sub = name.rpartition(" ")
        owner = cli if not group else cli.commands.get(group)
        if owner is not None and group in ("", *before):
            owner.commands.pop(sub, None)
    for name, command in before.items():
        group, _, sub = name.rpartition(" ")
        owner = cli if not group else cli.commands.get(group)
        if owner is not None and owner.commands.get(sub) is not command:
            owner.commands[sub] = command


def plugin_in_traceback(tb):
    """``"NAME (DISTRIBUTION VERSION)"`` of the third-party plugin whose code the deepest frame
    of traceback ``tb`` that belongs to one ran in, or None (kplm's own code, a library's)."""
    import inspect
    if _State.pm is None:
        return None
    places = {}
    for name, info in _State.info.items():
        plugin = _State.pm.get_plugin(name)
        module = inspect.getmodule(plugin) if plugin is not None else None
        path = getattr(module, "__file__", None)
        if info.get("builtin") or not path:
            continue
        root = os.path.dirname(os.path.abspath(path))
        if os.path.basename(path) != "__init__.py" and module.__name__.count(".") == 0:
            root = os.path.abspath(path)  # a one-module plugin: that file only
        places[root] = name
    found = None
    while tb is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        for root, name in places.items():
            if filename == root or filename.startswith(root + os.sep):
                found = name
        tb = tb.tb_next
    return f"{found} ({_dist_label(found)})" if found else None


def _dist_label(plugin):
    info = _State.info.get(plugin, {})
    return f"{info.get('distribution', '?')} {info.get('version', '?')}"


def plugin_failures():
    """Plugins that failed to load or register (empty in strict mode, which raises instead)."""
    get_registry()
    return list(_State.failures)


def list_plugins():
    """One dict per loaded plugin: name, distribution, version, builtin, and its components."""
    registry = get_registry()
    rows = []
    for name, info in _State.info.items():
        components = {}
        for entry in registry.entries():
            if entry.plugin == name:
                components.setdefault(entry.kind, []).append(entry.name)
        commands = [impl for impl in get_plugin_manager().hook.register_commands.get_hookimpls()
                    if impl.plugin_name == name]
        rows.append({"name": name, **info, "components": components,
                     "adds_commands": bool(commands)})
    return rows


def add_plugin(plugin, name, distribution="(added in-process)"):
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under ``name`` in
    the running process, as if it were installed; the registry is rebuilt on next use. Used by
    ``kplm.testing.registered``. Returns False, changing nothing, when ``plugin`` itself is
    already loaded (an installed package's entry point), True when it was added."""
    pm = get_plugin_manager()
    if pm.is_registered(plugin):
        return False
    if pm.get_plugin(name) is not None:
        raise PluginError(f"a plugin named {name!r} is already loaded")
    pm.register(plugin, name=name)
    _State.info[name] = {"distribution": distribution, "version": "", "builtin": False}
    _State.registry = None
    return True


def remove_plugin(name):
    """Undo ``add_plugin``: unregister ``name`` and rebuild the registry on next use."""
    pm = get_plugin_manager()
    if pm.get_plugin(name) is not None:
        pm.unregister(name=name)
    _State.info.pop(name, None)
    _State.registry = None


def reset():
    """Forget the loaded plugins (tests use this after changing the environment)."""
    _State.pm, _State.registry, _State.failures, _State.info = None, None, [], {}
