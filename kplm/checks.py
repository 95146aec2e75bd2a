"""Declarative limits on a component's numeric arguments, in one place.

A component class states its limits next to its signature, as a ``limits`` mapping of argument
name to one rule or a tuple of rules::

    limits = {"num_layers": ">= 1", "dropout": "[0, 1)",
              "hidden_dim": (">= 1", "multiple of num_heads")}

Rules: a comparison (``">= 1"``, ``"> 0"``, ``"<= steps"``), an interval (``"[0, 1)"``,
``"(0, 1]"``), or ``"multiple of NAME"``; a bound may be a number or another argument's name.
A rule may end with a reason in parentheses, shown in the error: ``">= 6 (5 special tokens and
one learned)"``. ``None`` values (optional arguments left unset) and rules naming an argument
that is unset are skipped.

``kplm.config.check_arguments`` applies a class's limits to a config section before anything
runs, so a bad value is one line naming its config key; constructors call ``check_limits`` too,
for Python callers. A class may add a classmethod ``check_config(section, path)`` for checks
limits cannot state (an activation name Keras must know); it runs right after them. No
TensorFlow here.

Example:
    >>> check_limits({"dropout": "[0, 1)"}, {"dropout": 0.1}, "backbone")
    >>> check_limits({"dropout": "[0, 1)"}, {"dropout": 1.5}, "backbone")
    Traceback (most recent call last):
    ...
    kplm.errors.ConfigError: backbone.dropout must be in [0, 1), got 1.5
"""
import functools
import math
import operator
import re

from kplm.errors import ConfigError, shown

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_RULE = re.compile(r"^\s*(?P<rule>.+?)(?:\s+\((?P<why>[^()]*)\))?\s*$")
_INTERVAL = re.compile(r"^(?P<lo_open>[\[(])\s*(?P<lo>[^,]+?)\s*,\s*(?P<hi>[^,]+?)\s*"
                       r"(?P<hi_open>[\])])$")


@functools.lru_cache(maxsize=None)
def _parse(rule):
    """``rule`` -> ``(checks, text, why)``; ``checks`` is a list of ``(op, bound)``."""
    match = _RULE.match(rule)
    text, why = match.group("rule"), match.group("why")
    interval = _INTERVAL.match(text)
    if interval:
        lo_op = ">" if interval.group("lo_open") == "(" else ">="
        hi_op = "<" if interval.group("hi_open") == ")" else "<="
        return ([(lo_op, _bound(interval.group("lo"))), (hi_op, _bound(interval.group("hi")))],
                f"in {text}", why)
    if text.startswith("multiple of "):
        return [("multiple", _bound(text[len("multiple of "):]))], f"a {text}", why
    for op in (">=", "<=", ">", "<"):
        if text.startswith(op):
            return [(op, _bound(text[len(op):]))], text, why
    raise ValueError(f"unknown limit rule {rule!r}")


def _bound(text):
    text = text.strip()
    try:
        return float(text) if any(c in text for c in ".eE") or text in ("inf", "-inf") \
            else int(text)
    except ValueError:
        if not text.isidentifier():
            raise ValueError(f"limit bound {text!r} is neither a number nor an argument name")
        return text  # another argument of the same section


def check_rules(limits):
    """Raise ``ValueError`` naming the first rule of ``limits`` (argument name -> rule or list
    of rules) that is not one of kplm's (``">= 1"``, ``"[0, 1)"``, ``"multiple of num_heads"``,
    with an optional ``" (why)"``)."""
    for name, rules in limits.items():
        for rule in (rules,) if isinstance(rules, str) else rules:
            try:
                if not isinstance(rule, str) or not _RULE.match(rule):
                    raise ValueError(f"unknown limit rule {rule!r}")
                _parse(rule)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None


def check_limits(limits, values, path):
    """Check ``values`` (argument name -> value) against ``limits``; raise ``ConfigError``
    naming ``path.name`` (the config key) for the first value outside them."""
    for name, rules in (limits or {}).items():
        value = values.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # unset, or a type check_value reports
        if isinstance(value, float) and math.isinf(value):  # "> 0" would let it through
            raise ConfigError(f"{path}.{name} must be a finite number, got {value}")
        for rule in (rules,) if isinstance(rules, str) else rules:
            checks, text, why = _parse(rule)
            for op, bound in checks:
                key = None
                if isinstance(bound, str):
                    key, bound = bound, values.get(bound)
                    if bound is None or isinstance(bound, bool):
                        continue
                if op == "multiple":
                    if bound <= 0:
                        continue  # the bound's own limit reports it
                    ok = value % bound == 0
                else:
                    ok = not math.isnan(value) and _COMPARE[op](value, bound)
                if not ok:
                    raise ConfigError(_message(path, name, value, text, why, key, bound))


def _message(path, name, value, text, why, key, bound):
    full = f"{path}.{name}" if path else name
    if key is not None:  # the rule names another argument: show both
        other = f"{path}.{key}" if path else key
        text = text.replace(key, f"{other} ({shown(bound)})")
    reason = f" ({why})" if why else ""
    return f"{full} must be {text}{reason}, got {shown(value)}"


def check_activation(name, path):
    """Refuse an ``activation`` Keras does not know (``gelu_approximate`` is kplm's name for
    the tanh form), naming ``path.activation``."""
    if name is None or name == "gelu_approximate":
        return
    import keras
    try:
        keras.activations.get(name)
    except (ValueError, TypeError):
        raise ConfigError(f"config key '{path}.activation': unknown activation {shown(name)} "
                          "(e.g. gelu, gelu_approximate, relu, silu)") from None
