"""The registry: every component kplm uses is looked up here by kind and name."""
import difflib
import importlib

from kplm.errors import KplmError, PluginError

#: kind -> (hook name, base class path or None). Base classes are checked at registration for
#: classes and at first use for lazy ``"module:attr"`` entries.
KINDS = {
    "objective": ("register_objectives", "kplm.components:Objective"),
    "head": ("register_heads", "kplm.components:Head"),
    "data_source": ("register_data_sources", "kplm.components:DataSource"),
    "backbone": ("register_backbones", "keras:Model|kplm.components:PretrainedBackbone"),
    "tokenizer": ("register_tokenizers", "kplm.components:Tokenizer"),
    "callback": ("register_callbacks", "keras.callbacks:Callback"),
}


class UnknownComponentError(KplmError):
    """A config names a component no plugin registered."""


def _import(path):
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Entry:
    """One registered component: its name, the plugin that registered it, the object or its path."""

    def __init__(self, kind, name, component, plugin):
        self.kind, self.name, self.plugin = kind, name, plugin
        self._component = component
        self._checked = False

    @property
    def target(self):
        c = self._component
        return c if isinstance(c, str) else f"{c.__module__}:{c.__qualname__}"

    def load(self):
        """Import (if lazy) and check the component; errors name the plugin."""
        if isinstance(self._component, str):
            try:
                self._component = _import(self._component)
            except Exception as e:
                raise PluginError(
                    f"{self.kind} '{self.name}' (plugin {self.plugin}) could not be imported from "
                    f"{self._component}: {type(e).__name__}: {e}") from e
        if not self._checked:
            _check_base(self.kind, self.name, self._component, self.plugin)
            self._checked = True
        return self._component


def _check_base(kind, name, obj, plugin):
    base_paths = KINDS[kind][1].split("|")
    bases = tuple(_import(path) for path in base_paths)
    if not (isinstance(obj, type) and issubclass(obj, bases)):
        expected = " or ".join(path.replace(":", ".") for path in base_paths)
        raise PluginError(
            f"plugin {plugin} registered {kind} '{name}' as {obj!r}, which is not a subclass of "
            f"{expected}")
    limits = getattr(obj, "limits", None)  # checked against every config: a bad rule now
    if isinstance(limits, dict):
        from kplm.checks import check_rules
        try:
            check_rules(limits)
        except ValueError as e:
            raise PluginError(f"plugin {plugin} registered {kind} '{name}' whose limits are "
                              f"not kplm's rules: {e}") from None
    if "name" not in vars(obj):
        obj.name = name


class Registry:
    """Components by kind and name. Filled by the plugin manager through the ``register_*`` hooks.

    Example:
        >>> from kplm.plugins import get_registry
        >>> "masked_lm" in get_registry().names("objective")
        True
    """

    def __init__(self):
        self._entries = {kind: {} for kind in KINDS}

    def register(self, kind, name, component, plugin):
        if kind not in KINDS:
            raise PluginError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"plugin {plugin}: {kind} name {name!r} must be a snake_case identifier")
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} '{name}' is registered twice: by plugin {existing.plugin} and by plugin "
                f"{plugin}; disable one with KPLM_DISABLE_PLUGINS")
        entry = Entry(kind, name, component, plugin)
        # Classes with a kplm base are checked now; lazy entries and Keras bases at first use, so
        # that registering never imports TensorFlow.
        if not isinstance(component, str) and KINDS[kind][1].startswith("kplm."):
            entry.load()
        self._entries[kind][name] = entry

    def forget_plugin(self, plugin):
        """Drop every entry ``plugin`` registered (used when its registration fails midway)."""
        for entries in self._entries.values():
            for name in [n for n, e in entries.items() if e.plugin == plugin]:
                del entries[name]

    def names(self, kind):
        return sorted(self._entries[kind])

    def entries(self, kind=None):
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def entry(self, kind, name):
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(kind, name)) from None

    def get(self, kind, name):
        """The component class registered as ``name``; unknown names get a suggestion."""
        return self.entry(kind, name).load()

    def _unknown_message(self, kind, name):
        known = self.names(kind)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (f"unknown {kind.replace('_', ' ')} '{name}'.{hint} "
                f"Registered: {', '.join(known) or '(none)'}")
