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
import os
import types
import typing

import yaml

from kplm.errors import ConfigError

_MISSING = inspect.Parameter.empty


def load_yaml(path):
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(config, overrides):
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.steps=100")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = config
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                section = ".".join(parts[:i + 1])
                raise ConfigError(f"--set {item!r}: '{section}' is not a section")
            node = child
        node[parts[-1]] = value
    return config


def suggest(key, candidates):
    close = difflib.get_close_matches(str(key), list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_key(path, key, candidates):
    full = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key '{full}'.{suggest(key, candidates)} "
                       f"Expected one of: {', '.join(sorted(candidates))}")


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
    bad = ConfigError(f"config key '{path}': expected {_type_name(annotation)}, got {value!r}")
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
                          f"got {value!r}.{suggest(value, [str(a) for a in args])}")
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if args and isinstance(value, str) and args[0] is str:
                return [value]  # a single path for a list of paths
            raise bad
        return [check_value(v, args[0], f"{path}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
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


def check_arguments(cls, options, path, provided=()):
    """Check ``options`` against ``cls``'s constructor; return them with defaults filled in.

    ``provided`` names arguments kplm supplies itself (e.g. ``vocabulary_size`` of a backbone):
    they are not required in the config, and not accepted from it either.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"config key '{path}': expected a mapping, got {options!r}")
    params, hints = signature_of(cls)
    allowed = [n for n in params if n not in provided]
    resolved = {}
    for key, value in options.items():
        if key not in allowed:
            if key in provided:
                raise ConfigError(f"config key '{path}.{key}' is set by kplm itself; remove it")
            raise unknown_key(path, key, allowed)
        resolved[key] = check_value(value, hints.get(key, _MISSING), f"{path}.{key}")
    for name in allowed:
        if name in resolved:
            continue
        default = params[name].default
        if default is _MISSING:
            raise ConfigError(f"config key '{path}.{name}' is required "
                              f"({_type_name(hints.get(name, _MISSING))})")
        resolved[name] = default
    return resolved


def check_section(section, kind, path, registry, provided=()):
    """Check a ``{name: ..., **options}`` section naming a registered component of ``kind``.

    Returns ``(component_class, {"name": name, **resolved_options})``.
    """
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"config key '{path}': expected a mapping with 'name:', got {section!r}")
    if "name" not in section:
        raise ConfigError(f"config key '{path}.name' is required: which {kind.replace('_', ' ')} "
                          f"to use ({', '.join(registry.names(kind))})")
    name = section["name"]
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
        raise ConfigError(f"config key '{path or '<top>'}': expected a mapping, got {mapping!r}")
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
    if not isinstance(run_dir, str) or not run_dir:
        raise ConfigError("config key 'run_dir' is required: the directory this run writes")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"config key 'seed': expected int, got {seed!r}")
    return run_dir, seed


def check_data(raw, splits, registry):
    """``data: {train: SOURCE, <split>: SOURCE, ...}`` -> ``{split: (class, section)}``."""
    data = raw.get("data")
    if not isinstance(data, dict) or "train" not in data:
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
