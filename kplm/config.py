"""Configs: plain YAML that maps 1:1 onto constructor arguments, checked before anything runs.

A section such as ``backbone: {name: encoder, num_layers: 2}`` names a registered component with
``name:``; its sibling keys are the component's constructor arguments, checked against the
constructor's annotated signature (unknown keys get the key path and a suggestion, wrong types
the expected type). Defaults live in code; the resolved config, defaults filled in, is written
into the run directory.

Example:
    >>> from kplm.config import apply_overrides
    >>> apply_overrides({"trainer": {"steps": 10}}, ["trainer.steps=20", "seed=3"])
    {'trainer': {'steps': 20}, 'seed': 3}
"""
import difflib
import inspect
import math
import os
import types
import typing

import yaml

from kplm.checks import check_limits
from kplm.errors import ConfigError, clip, listed, reading, require_utf8_argument, shown

_MISSING = inspect.Parameter.empty


#: Configs are small: a file larger than this is refused before YAML parses it.
MAX_CONFIG_BYTES = 4 << 20
#: The most values a config may expand to (aliases counted as often as they are used), and its
#: deepest nesting: a YAML alias bomb or a self-referencing alias is refused, not expanded.
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the
    last silently); keys merged in with ``<<: *anchor`` may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeConstructor reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {shown(key)} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text, where):
    """Parse YAML ``text`` safely (no Python tags, no duplicate keys, no alias bombs); errors
    name ``where`` (a file, or ``--set KEY=VALUE``) and the line."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}{line}: invalid YAML: {clip(problem)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested more than {MAX_CONFIG_DEPTH} "
                          "levels deep") from None
    _check_size(data, where)
    return data


def _check_size(data, where):
    """Refuse a parsed config holding more than ``MAX_CONFIG_VALUES`` values once its aliases are
    expanded, or nested deeper than ``MAX_CONFIG_DEPTH`` (walked without recursion, stopping at
    the limit, so a bomb costs no more than a normal config)."""
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: the YAML expands to more than {MAX_CONFIG_VALUES:,} "
                              "values (aliases of aliases?); refusing it")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where}: the YAML is nested more than {MAX_CONFIG_DEPTH} levels "
                              "deep (or an alias refers to itself); refusing it")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def load_yaml(path):
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    with reading(path, "config file", error=ConfigError):
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES:,} bytes, too large for a "
                          "config")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: invalid UTF-8 (byte 0x{raw[e.start]:02x}); configs "
                          "are UTF-8 text") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise ConfigError(f"{path}:{line}: a NUL byte; configs are text")
    data = parse_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(config, overrides):
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides or ():
        require_utf8_argument(item, f"--set {shown(item)}", ConfigError)
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE, e.g. trainer.steps=100")
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None  # noqa: S506
        except (yaml.YAMLError, RecursionError):
            value = raw  # not YAML: the string itself
        _check_size(value, f"--set {clip(key, 60)}")
        node = config
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                section = ".".join(parts[:i + 1])
                raise ConfigError(f"--set {shown(item)}: '{clip(section, 60)}' is not a section")
            node = child
        node[parts[-1]] = value
    return config


def flatten(config, prefix=""):
    """A nested config as ``{"trainer.steps": 400, ...}`` (lists stay values).

    >>> flatten({"trainer": {"steps": 4, "decay": "linear"}, "seed": 0})
    {'trainer.steps': 4, 'trainer.decay': 'linear', 'seed': 0}
    """
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: config}


def suggest(key, candidates):
    close = difflib.get_close_matches(str(key)[:100], list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_key(path, key, candidates):
    full = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key '{clip(full, 80)}'.{suggest(key, candidates)} "
                       f"Expected one of: {listed(sorted(candidates), 160)}")


def _type_name(annotation):
    if annotation is _MISSING or annotation is typing.Any:
        return "any value"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value, annotation, path):
    """Return ``value`` converted to ``annotation`` or raise ``ConfigError`` naming ``path``."""
    if annotation is _MISSING or annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    bad = ConfigError(f"config key '{path}': expected {_type_name(annotation)}, got "
                      f"{shown(value)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, path)
            except ConfigError:
                continue
        raise bad
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{path}': expected one of {', '.join(map(repr, args))}, "
                          f"got {shown(value)}.{suggest(value, [str(a) for a in args])}")
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if args and isinstance(value, str) and args[0] is str:
                return [value]  # a single path for a list of paths
            raise bad
        return [check_value(v, args[0], f"{path}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise bad
        if len(args) == 2:  # dict[K, V]: each key and value as annotated
            def key(k):  # YAML reads `1:` as a number: a name all the same where K is str
                return str(k) if args[0] is str and isinstance(k, (int, float)) else k
            return {check_value(key(k), args[0], f"{path} (a key)"): check_value(
                v, args[1], f"{path}.{k}") for k, v in value.items()}
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2 ** 63:
                raise ConfigError(f"config key '{path}': {shown(value)} is out of range")
            return value
        raise bad
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise bad
        if not math.isfinite(number):
            raise ConfigError(f"config key '{path}': expected a finite number, got {shown(value)}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise bad
    return value


def signature_of(cls):
    """(parameters, type hints) of ``cls.__init__`` without self and **kwargs."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    params = {n: p for n, p in sig.parameters.items()
              if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, hints


def _annotation(param, hints):
    """A parameter's type: its annotation, or for an unannotated one (a Keras callback's) the
    type of its default when that is a plain bool, int, float or str (an int default accepts
    floats too: ``min_delta=0``)."""
    annotation = hints.get(param.name, _MISSING)
    if annotation is _MISSING and type(param.default) in (bool, int, float, str):
        annotation = type(param.default)
        if annotation is int:
            annotation = typing.Union[int, float]
    return annotation


def check_arguments(cls, options, path, provided=()):
    """Check ``options`` against ``cls``'s constructor; return them with defaults filled in.

    ``provided`` names arguments kplm supplies itself (e.g. ``vocabulary_size`` of a backbone):
    they are not required in the config, and not accepted from it either.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"config key '{path}': expected a mapping, got {shown(options)}")
    params, hints = signature_of(cls)
    allowed = [n for n in params if n not in provided]
    resolved = {}
    for key, value in options.items():
        if key not in allowed:
            if key in provided:
                raise ConfigError(f"config key '{path}.{key}' is set by kplm itself; remove it")
            raise unknown_key(path, key, allowed)
        resolved[key] = check_value(value, _annotation(params[key], hints), f"{path}.{key}")
    for name in allowed:
        if name in resolved:
            continue
        default = params[name].default
        if default is _MISSING:
            raise ConfigError(f"config key '{path}.{name}' is required "
                              f"({_type_name(hints.get(name, _MISSING))})")
        resolved[name] = default
    check_limits(getattr(cls, "limits", None), resolved, path)
    if callable(getattr(cls, "check_config", None)):  # checks beyond limits (kplm.checks)
        cls.check_config(resolved, path)
    return resolved


def check_section(section, kind, path, registry, provided=()):
    """Check a ``{name: ..., **options}`` section naming a registered component of ``kind``.

    Returns ``(component_class, {"name": name, **resolved_options})``.
    """
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"config key '{path}': expected a mapping with 'name:', got "
                          f"{shown(section)}")
    if "name" not in section:
        raise ConfigError(f"config key '{path}.name' is required: which {kind.replace('_', ' ')} "
                          f"to use ({', '.join(registry.names(kind))})")
    name = section["name"]
    if not isinstance(name, str):
        raise ConfigError(f"config key '{path}.name': expected a {kind.replace('_', ' ')} name, "
                          f"got {shown(name)}")
    try:
        cls = registry.get(kind, name)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config key '{path}.name': {e}") from None
    options = {k: v for k, v in section.items() if k != "name"}
    return cls, {"name": name, **check_arguments(cls, options, path, provided)}


def check_keys(mapping, allowed, path):
    """Refuse keys of ``mapping`` not in ``allowed``, with a suggestion."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"config key '{path or '<top>'}': expected a mapping, got "
                          f"{shown(mapping)}")
    for key in mapping:
        if key not in allowed:
            raise unknown_key(path, key, allowed)


def write_yaml(config, path):
    """Write ``config`` atomically (temporary name, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)


def check_run_header(raw, top_level_keys):
    """The keys every run config shares: returns ``(run_dir, seed)`` after refusing unknown
    top-level keys."""
    check_keys(raw, top_level_keys, "")
    run_dir = raw.get("run_dir")
    if run_dir is None or run_dir == "":
        raise ConfigError("config key 'run_dir' is required: the directory this run writes")
    if not isinstance(run_dir, str):
        raise ConfigError(f"config key 'run_dir': expected a directory path, got {shown(run_dir)}")
    if "\0" in run_dir:
        raise ConfigError(f"config key 'run_dir': {shown(run_dir)} holds a NUL character")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"config key 'seed': expected int, got {shown(seed)}")
    if not 0 <= seed < 2 ** 32:
        raise ConfigError(f"config key 'seed' must be in [0, 2**32), got {shown(seed)}")
    return run_dir, seed


def check_data(raw, splits, registry):
    """``data: {train: SOURCE, <split>: SOURCE, ...}`` -> ``{split: (class, section)}``."""
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config key 'data': expected a mapping of split names to data "
                          f"sources, got {shown(data)}")
    if not isinstance(data, dict) or data.get("train") is None:
        raise ConfigError("config key 'data.train' is required: the training data source")
    check_keys(data, splits, "data")
    return {split: check_section(data[split], "data_source", f"data.{split}", registry)
            for split in splits if data.get(split) is not None}


def check_callbacks(raw, registry):
    """``callbacks: [{name: ...}, ...]`` -> ``[(class, section)]``."""
    callbacks = raw.get("callbacks") or []
    if not isinstance(callbacks, list):
        raise ConfigError("config key 'callbacks': expected a list of {name: ...} sections")
    return [check_section(c, "callback", f"callbacks[{i}]", registry)
            for i, c in enumerate(callbacks)]


def check_run_keys(config):
    """Refuse top-level keys that no run config has, for the commands that read a few sections
    of a pretraining or fine-tuning config (``tokenizer train``, ``data prepare``): they ignore
    the others, but a misspelt key is still an error, not silently skipped."""
    from kplm.training.finetune import TOP_LEVEL_KEYS as finetune_keys
    from kplm.training.pretrain import TOP_LEVEL_KEYS as pretrain_keys
    check_keys(config, sorted(set(pretrain_keys) | set(finetune_keys)), "")
