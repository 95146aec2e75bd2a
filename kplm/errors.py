"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback.

Messages quote user values through ``shown()`` (a bounded ``repr``), so a hostile value (a YAML
alias bomb, a megabyte string) never turns into a megabyte error line, and wrap file reads in
``reading()``, so a missing or damaged file is one line naming it.

Example:
    >>> shown("x" * 1000)[:12], len(shown("x" * 1000)) <= 200
    ("'xxxxxxxxxxx", True)
"""
import contextlib
import reprlib
import zlib

#: The most characters of a user value an error message quotes.
SHOWN_LIMIT = 200


class KplmError(Exception):
    """A user-facing error: bad config, bad data, unknown component. Printed as one line."""


class ConfigError(KplmError):
    """A config key is unknown, mistyped or has a value of the wrong type."""


class DataError(KplmError):
    """A data file is missing, unreadable, empty or malformed."""


class PluginError(KplmError):
    """A plugin failed to load or registered something it should not."""


class KplmWarning(UserWarning):
    """Something kplm noticed and went on without: the CLI prints it as one ``Warning:`` line."""


class TrainingWarning(KplmWarning, RuntimeWarning):
    """A run went on past a fault (a step skipped, a checkpoint that cannot be restored, a
    recovery): a ``RuntimeWarning``, shown by the CLI as one ``Warning:`` line."""


class PluginWarning(KplmWarning):
    """A plugin setting names a plugin that is not installed, or a plugin failed to load."""


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 3, 6, 6, 6, 6
_repr.maxstring = _repr.maxother = SHOWN_LIMIT - 20
_repr.maxlong = 40


def shown(value, limit=SHOWN_LIMIT):
    """``repr(value)`` for an error message: nested containers elided (``...``), long strings cut,
    at most ``limit`` characters, on one line. Costs the same for an alias bomb as for ``3``."""
    try:
        text = _repr.repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def clip(text, limit=SHOWN_LIMIT):
    """``text`` on one line (newlines as ``\\n``) and cut to ``limit`` characters (``...``)."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def listed(names, limit=SHOWN_LIMIT):
    """``"a, b, c"`` of ``names``, or its start and ``... (N in all)`` when longer than
    ``limit`` characters."""
    names = [str(n) for n in names]
    text = ", ".join(names)
    if len(text) <= limit:
        return text
    kept = []
    for name in names:
        if len(", ".join(kept + [name])) > limit - 20:
            break
        kept.append(name)
    return f"{', '.join(kept)}, ... ({len(names)} in all)"


def in_files(source):
    """`` (FILE, ...)`` naming the files a data source reads (a source, or its config section:
    its ``paths``, or its ``path`` for prepared shards), for its error messages; ``""`` for a
    source without either."""
    def get(key):
        return source.get(key) if isinstance(source, dict) else getattr(source, key, None)
    paths = get("paths") or ([get("path")] if isinstance(get("path"), str) else None)
    if not isinstance(paths, (list, tuple)) or not paths:
        return ""
    return f" ({listed(paths, 160)})"


def about_data(key, source, error):
    """A ``DataError`` of ``error`` (about ``source``'s examples) under ``key`` (``data.train``,
    ``--data``), naming the source's files unless the message starts with one of them
    (``FILE:LINE: ...``)."""
    files = tuple(getattr(source, "files", None) or ()) if not isinstance(source, dict) else ()
    named = bool(files) and str(error).startswith(files)
    return DataError(f"{key}{'' if named else in_files(source)}: {error}")


def require_utf8_argument(value, where, error=KplmError):
    """Refuse (``error`` naming ``where``) a command-line argument holding bytes that are not
    UTF-8 (Python keeps them as lone surrogates: a tokenizer traceback later). Returns it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes of another encoding in the shell's argument
        raise error(f"{where}: not valid UTF-8 text") from None
    return value


def require_utf8_text(value, where):
    """Refuse (``DataError`` naming ``where``) a string holding an unpaired UTF-16 surrogate
    (JSON's ``"\\ud83d"`` alone, a cut emoji in scraped text): no UTF-8 text, it fails deep in
    TensorFlow. Returns ``value``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: holds an unpaired surrogate (\\u{ord(value[e.start]):04x} at "
                        f"character {e.start + 1}), which is not text; fix or drop it") from None
    return value


def describe(error):
    """The first line of an exception from a library (h5py, json, ...), clipped: what a
    ``KplmError`` quotes of it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return clip(text, 120)


@contextlib.contextmanager
def reading(path, what="file", error=DataError):
    """Turn what a missing, unreadable or damaged file raises while it is read inside the block
    (``OSError`` from open or h5py, ``ValueError``/``KeyError`` from a parser or Keras loading
    weights of another shape, ``UnicodeDecodeError``, ``EOFError``) into one ``error`` line
    naming ``path`` and ``what`` it should be.

    Example:
        with reading(weights, "backbone weights (.weights.h5)"):
            backbone.load_weights(weights)
    """
    try:
        yield
    except KplmError:
        raise
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected {what}") from None
    except PermissionError:
        raise error(f"{path}: permission denied (reading {what})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: invalid UTF-8 at byte {e.start} (reading {what})") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError, RecursionError, zlib.error) as e:
        raise error(f"{path}: cannot read {what}: {describe(e)}") from None
