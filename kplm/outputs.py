"""One output rule for every command that writes: no user file is lost, no half-made output.

Every writer follows it: ``kplm export`` (all formats), ``predict -o``, ``evaluate -o``,
``tokenizer train -o``, ``data prepare -o``, the ``run_dir`` of ``pretrain`` / ``finetune``, and
plugin commands through ``kplm.atomic_output`` / ``kplm.check_output``.

1. **Check first, then touch the disk.** ``check_output`` decides all that can be decided before
   any work (file or directory, missing parent, the rules below) and creates nothing.
2. **Nothing is replaced without ``--overwrite``**: an existing non-empty directory (or file) is
   refused. ``--overwrite`` replaces only *a previous output of the same writer*: a directory
   holding nothing but the names that writer writes. It never applies to a kplm run
   (``config.yaml``, ``metrics.json``, ``checkpoints/``, ``head.json``, ``backbone.weights.h5``), a
   checkpoint or prepared shards (``manifest.json``), unless that is what the writer itself
   writes (a training run, ``data prepare``); nor to anything inside one (a run's ``export/``
   excepted); nor to an input of the command, a directory holding one, the working directory,
   the home directory or ``/``.
3. **Complete or absent.** ``atomic_output`` yields a temporary sibling ``.NAME.tmp-PID`` and
   renames it into place when the writer is done; a failure removes it. A previous output being
   replaced is moved aside to ``.NAME.old-PID`` and deleted once the new one is in place.
   Resumable outputs (a training run, prepared shards) are written in place instead
   (``open_in_place``): when the command fails before writing anything resumable, what it created
   is removed and a replaced previous output is put back; after that, the previous output stays
   aside until the new one is complete (a finished run, a complete manifest), whatever kills
   come between. Siblings of dead processes that match kplm's own pattern are cleaned by the
   next writer of the same path (``clean_stale``), and a moved-aside output whose path is
   missing is put back by the next check of it (``check_output``).

Every refusal is one line, an ``OutputError`` (a ``KplmError``) naming the path.

Example:
>>> import os, tempfile
>>> parent = tempfile.mkdtemp()
>>> out = os.path.join(parent, "out")
>>> with atomic_output(out) as tmp:       # a directory: write into tmp
...     _ = open(os.path.join(tmp, "a.txt"), "w").write("first")
>>> os.listdir(parent)                    # renamed into place, no temporary left
['out']
>>> with atomic_output(out) as tmp:       # doctest: +ELLIPSIS
...     pass
Traceback (most recent call last):
kplm.outputs.OutputError: output: .../out is not empty; pass --overwrite to replace ...
>>> with atomic_output(out, overwrite=True) as tmp:   # replaces a previous output of its own
...     _ = open(os.path.join(tmp, "a.txt"), "w").write("second")
>>> open(os.path.join(out, "a.txt")).read()
'second'
"""
import contextlib
import contextvars
import fnmatch
import glob
import os
import re
import shutil
import stat

from kplm.errors import ConfigError, clip

#: Any of these in a directory makes it a kplm run (``kplm.runs``, ``kplm.training.finetune``).
RUN_MARKERS = ("config.yaml", "metrics.json", "checkpoints", "head.json", "backbone.weights.h5")
#: Everything a training run writes into its ``run_dir`` (each also with its ``.tmp`` variants).
RUN_NAMES = RUN_MARKERS + ("tokenizer", "tensorboard", "backbone.json", "model.json",
                           "model.weights.h5", "best.weights.h5", "best.weights.h5.json",
                           "best.tmp.weights.h5", "export", "precision.json", "status.json",
                           "adapters.safetensors", "adapters.json",
                           "best.adapters.safetensors", "best.adapters.safetensors.json",
                           "teacher_outputs.tfrecord",  # distillation.cache, until the run ends
                           "*.csv")  # the csv_logger callback's log
#: What ``kplm data prepare`` writes (``kplm.data.prepare``).
SHARDS_NAMES = ("manifest.json", "tokenizer", "tokenizer_learned_with.json", "*.tfrecord")
_CHECKPOINT_MARKERS = ("ckpt.index", "checkpoint", "state.json")
_STEP = re.compile(r"^step-\d{8,}$")  # kplm.training.checkpoints' directories
#: ``.NAME.tmp-PID`` / ``.NAME.old-PID``, or for a file ``.NAME.tmp-PID.NAME`` (its suffix
#: kept: Keras, say, refuses to save weights to a name not ending in ``.weights.h5``)
_SIBLING = r"^\.{name}\.(tmp|old)-(\d+)(\.{name})?$"


class OutputError(ConfigError):
    """An output path the rule refuses (a ``ConfigError``: a bad value of ``--output``,
    ``run_dir``, ...); nothing was changed."""


#: The record an export holds (``kplm export``, through ``atomic_output(stamp=...)``): what it
#: was made from and what it holds, so the same command run again on its complete export (a
#: kill after the rename) answers "nothing to do" instead of refusing an output that exists.
EXPORT_STAMP = "kplm_export.json"


def show(path):
    """A path as a message quotes it: one line, at most ~200 characters (``kplm.errors.clip``)."""
    return clip(path)


def holds(path, strict=False):
    """``(kind, description)`` of the kplm output directory ``path`` is, one no other writer may
    replace: ``"run"``, ``"checkpoint"`` or ``"shards"``; None for anything else. ``strict``:
    only a run with ``config.yaml`` and another run file, or shards (no checkpoints)."""
    def has(name):
        return os.path.lexists(os.path.join(path, name))
    found = [name for name in RUN_MARKERS if has(name)]
    if strict and not (has("config.yaml") and any(has(n) for n in RUN_NAMES[1:])):
        found = []
    if found:
        return "run", f"a kplm run ({found[0]})"
    if has("manifest.json"):
        return "shards", "prepared shards (manifest.json)"
    if strict:
        return None
    for name in _CHECKPOINT_MARKERS:
        if has(name):
            return "checkpoint", f"a checkpoint ({name})"
    try:
        steps = [n for n in os.listdir(path) if _STEP.match(n)]
    except OSError:
        steps = []
    if steps:
        return "checkpoint", f"checkpoints ({steps[0]})"
    return None


def _matches(name, names):
    return any(name == p or fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".tmp*")
               for p in names)


def _inside(real):
    """``(ancestor, kind, description)`` when ``real`` lies among the files of a kplm run or
    prepared-shards directory (anything but a run's ``export/``), else None."""
    child, parent = real, os.path.dirname(real)
    while parent != child:
        held = holds(parent, strict=True)  # an ancestor: a user's config.yaml is not a run
        if held:
            first = os.path.basename(child)
            names = RUN_NAMES if held[0] == "run" else SHARDS_NAMES
            if first != "export" and _matches(first, names):
                return parent, held
        child, parent = parent, os.path.dirname(parent)
    return None


#: Inputs of the command running in this context (its config file, say), protected like
#: ``inputs``: the launcher names them with ``protecting()`` around a library call.
_PROTECTED = contextvars.ContextVar("kplm_protected_inputs", default=())


@contextlib.contextmanager
def protecting(paths):
    """Within the block, no output may be or contain one of ``paths`` (added to every
    ``check_output``'s ``inputs``): the launcher protects the config file it was given.

    Example:
    >>> import os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> config = os.path.join(run, "mlm.yaml")
    >>> _ = open(config, "w").write("run_dir: .")
    >>> with protecting([config]):  # doctest: +ELLIPSIS
    ...     check_output(run, overwrite=True)
    Traceback (most recent call last):
    kplm.outputs.OutputError: output: ... holds an input of this command (...); choose another directory
    """
    token = _PROTECTED.set(_PROTECTED.get() + tuple(paths))
    try:
        yield
    finally:
        _PROTECTED.reset(token)


def _protected(inputs):
    """``[(real path, what it is)]`` that no output may be, nor contain."""
    inputs = [*inputs, *_PROTECTED.get()]
    found = [(os.path.realpath(p), f"an input of this command ({show(p)})") for p in inputs if p]
    found += [(os.path.realpath(os.getcwd()), "the working directory"),
              (os.path.realpath(os.path.expanduser("~")), "the home directory"),
              (os.path.realpath(os.sep), "the root directory")]
    return found


def check_output(path, *, what="output", file=False, overwrite=False, inputs=(), names=None,
                 kind=None, resume=False):
    """Refuse ``path`` as an output when the rule says so (``OutputError``, one line); create
    nothing. Returns the absolute path.

    Args:
        path: str. The directory (or, with ``file=True``, the file) to write.
        what: str. How the message names it: ``"--output"``, ``"run_dir"``.
        file: bool. A single file instead of a directory. Its folder must exist.
        overwrite: bool. ``--overwrite``: a previous output may be replaced.
        inputs: paths the command reads; the output may not be one, nor hold one.
        names: names (``fnmatch`` patterns) of what this writer writes: with ``overwrite``, a
            directory holding anything else is refused. None: what the new output holds,
            checked by ``atomic_output`` when it is complete.
        kind: ``"run"`` or ``"shards"`` when the writer writes that kind of protected output.
        resume: bool. An existing output of ``kind`` is kept and written into (resumable
            writers, ``InPlaceOutput``); it is not replaced, so only its kind is checked. A
            symbolic link to a directory is accepted (its target is written).
    """
    if not path or not str(path).strip():
        raise OutputError(f"{what}: an empty path; expected a {'file' if file else 'directory'}")
    shown = show(path)
    absolute = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.islink(absolute) and not resume:  # a rename would replace the link itself
        raise OutputError(f"{what}: {shown} is a symbolic link; give the path it points to")
    real = os.path.realpath(absolute)
    if not os.path.lexists(real):  # a killed replacement moved it aside: judged as it was
        _put_back(real)
    parent = os.path.dirname(real)
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{what}: {show(existing)} is a file, so {shown} cannot be created")
    if file:
        if os.path.isdir(real) or str(path).endswith(("/", os.sep)):
            raise OutputError(f"{what}: {shown} is a directory, expected a file name")
        if os.path.lexists(real) and not os.path.isfile(real):
            # a device (/dev/null), a pipe or a socket: a rename would put a file in its place
            raise OutputError(f"{what}: {shown} is not a regular file (a device, a pipe or a "
                              "socket); expected a file name")
        if not os.path.isdir(parent):
            raise OutputError(f"{what}: folder {show(os.path.dirname(absolute))} does not exist; "
                              "create it first or choose another file")
    elif os.path.lexists(real) and not os.path.isdir(real):
        raise OutputError(f"{what}: {shown} is a file, expected a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: cannot write into {show(existing)} (permission denied)")
    inside = _inside(real)
    if inside:
        raise OutputError(f"{what}: {shown} is part of {inside[1][1]} in {show(inside[0])}; "
                          "choose a directory outside it")
    present = os.path.lexists(real) and (file or bool(os.listdir(real)))
    held = holds(real) if present and not file else None
    if held and held[0] != kind:
        raise OutputError(f"{what}: {shown} holds {held[1]}; --overwrite never replaces a run, "
                          "a checkpoint or prepared shards: choose another directory")
    if present and resume and held and not overwrite:
        return real  # resumed in place: nothing is replaced
    for protected, description in _protected(inputs):
        if real == protected:
            raise OutputError(f"{what}: {shown} is {description}; choose another "
                              f"{'file' if file else 'directory'}")
        if protected.startswith(real.rstrip(os.sep) + os.sep):
            raise OutputError(f"{what}: {shown} holds {description}; choose another directory")
    if not present:
        return real
    if names is not None and not file:
        foreign = sorted(n for n in os.listdir(real) if not _matches(n, names))
        if foreign:
            raise OutputError(f"{what}: {shown} holds {show(foreign[0])}"
                              f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}"
                              ", which this command does not write; --overwrite replaces only "
                              "a previous output of the same kind: choose another directory")
    if not overwrite:
        raise OutputError(f"{what}: {shown} {'exists' if file else 'is not empty'}; pass "
                          "--overwrite to replace it, or choose another "
                          f"{'file' if file else 'directory'}")
    return real


def sibling(path, tag, pid=None, file=False):
    """``PARENT/.NAME.tmp-PID`` (``tag="tmp"``) or ``.NAME.old-PID``: kplm's temporary names;
    with ``file``, ``.NAME.tmp-PID.NAME``, which keeps the file's suffix."""
    parent, name = os.path.split(os.path.abspath(path))
    pid = os.getpid() if pid is None else pid
    return os.path.join(parent, f".{name}.{tag}-{pid}" + (f".{name}" if file else ""))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _stale_siblings(path):
    """``(tag, sibling path)`` of each ``.NAME.tmp-PID`` / ``.NAME.old-PID`` of ``path`` whose
    process is gone, the newest first."""
    parent, name = os.path.split(path)
    pattern = re.compile(_SIBLING.format(name=re.escape(name)))
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    found = []
    for entry in entries:
        match = pattern.match(entry)
        if not match:
            continue
        # A sibling carrying this process's own PID is stale too: this command has not made
        # one yet, and in a container every start may run as the same PID (often 1).
        pid = int(match.group(2))
        if pid != os.getpid() and _alive(pid):
            continue
        stale = os.path.join(parent, entry)
        try:
            found.append((os.lstat(stale).st_mtime, match.group(1), stale))
        except OSError:
            continue
    return [(tag, stale) for _, tag, stale in sorted(found, reverse=True)]


def _put_back(path):
    """Put back the previous output a killed replacement moved aside (``.NAME.old-PID``) while
    ``path`` is missing: the state before that command."""
    for tag, stale in _stale_siblings(path):
        if tag == "old" and not os.path.lexists(path):
            os.rename(stale, path)


def clean_stale(path, *, started=None, names=None, complete=None):
    """Clean the siblings of ``path`` that a dead kplm process left (``.NAME.tmp-PID``,
    ``.NAME.old-PID``; nothing else is touched). A ``.old`` one (a previous output an
    interrupted ``--overwrite`` moved aside) is put back when ``path`` is missing, or when
    ``started(path)`` says the new output never started and ``path`` holds only ``names``. A
    resumable output (``complete`` given) keeps it until ``complete(path)``: the previous
    output is deleted only once the one replacing it is whole. Otherwise it is deleted.
    Returns the ``.old`` siblings kept."""
    path = os.path.realpath(path)
    kept = []
    for tag, stale in _stale_siblings(path):
        if tag == "tmp":
            _remove(stale)
            continue
        restore = not os.path.lexists(path)
        if not restore and started is not None and os.path.isdir(path) and not started(path):
            restore = names is not None and all(_matches(n, names) for n in os.listdir(path))
            if restore:
                _remove(path)
        if restore:
            os.rename(stale, path)
        elif complete is not None and not (os.path.isdir(path) and complete(path)):
            kept.append(stale)
        else:
            _remove(stale)
    return kept


def _make_parents(directory):
    """Create ``directory`` and its missing parents; return the top-most one created (or None)."""
    top, probe = None, os.path.abspath(directory)
    while not os.path.lexists(probe):
        top, probe = probe, os.path.dirname(probe)
    os.makedirs(directory, exist_ok=True)
    return top


@contextlib.contextmanager
def atomic_output(path, *, what="output", file=False, overwrite=False, inputs=(), names=None,
                  stamp=None, stamp_name=EXPORT_STAMP):
    """Check ``path`` (``check_output``), then yield a temporary sibling ``.NAME.tmp-PID`` to
    write into: a new empty directory, or with ``file=True`` a file name to create. When the
    block ends it is renamed to ``path``; a previous output replaced (``overwrite``) is moved
    aside first and deleted after. When the block raises, the temporary is removed and ``path``
    is as it was. ``stamp`` (a JSON object; directories only) is written into the finished
    directory as ``stamp_name`` before the rename (``write_stamp``), so the output appears with
    it. The writer a
    plugin command uses:

        with kplm.atomic_output(output, what="--output", overwrite=overwrite,
                                inputs=[run_dir]) as tmp:
            write_everything_into(tmp)
    """
    rule = dict(what=what, file=file, overwrite=overwrite, inputs=inputs, names=names)
    clean_stale(check_output(path, **rule))
    real = check_output(path, **rule)  # again: a cleaned-up .old sibling may have been put back
    created = None if file else _make_parents(os.path.dirname(real))
    tmp = sibling(real, "tmp", file=file)
    try:
        _remove(tmp)
        if not file:
            os.mkdir(tmp)
        yield tmp
        if stamp is not None and not file:
            write_stamp(tmp, stamp, stamp_name)
        if file:
            if os.path.lexists(tmp):
                check_output(real, **rule)  # nothing may have appeared meanwhile
                os.replace(tmp, real)
            return
        if os.path.isdir(real) and os.listdir(real):
            # checked again now that the new output is known: with names=None the old one may
            # hold only names the new one has, and nothing may have appeared meanwhile
            check_output(real, **{**rule, "names": os.listdir(tmp) if names is None else names})
            old = sibling(real, "old")
            os.rename(real, old)
            try:
                os.rename(tmp, real)
            except BaseException:
                os.rename(old, real)
                raise
            _remove(old)
        else:
            if os.path.isdir(real):
                os.rmdir(real)  # empty: nothing of the user's is lost
            os.rename(tmp, real)
    except BaseException:
        _remove(tmp)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


class InPlaceOutput:
    """A resumable output directory written in place (a training run, prepared shards).

    ``open()`` creates it (with missing parents) or, with ``replace``, first moves the previous
    output aside to ``.NAME.old-PID``. ``close(ok)``: on success the previous output is
    deleted (and any an earlier interrupted replacement left, ``clean_stale``); when
    ``started(path)`` says something resumable was written, it stays aside until a later
    command completes the new output; otherwise what ``open()`` did is undone: created
    directories removed, an existing empty one emptied again, the previous output put back.
    """

    def __init__(self, path, *, replace=False, started=None):
        self.path = os.path.realpath(path)  # a run_dir that is a symbolic link: its target
        self.replace, self.started = replace, started
        self.created = self.aside = None
        self.was_empty = False

    def open(self):
        if self.replace and os.path.isdir(self.path) and os.listdir(self.path):
            self.aside = sibling(self.path, "old")
            os.rename(self.path, self.aside)
        if os.path.isdir(self.path):
            self.was_empty = not os.listdir(self.path)
        else:
            self.created = _make_parents(self.path)
        return self

    def close(self, ok):
        if ok:  # the new output is whole: the previous ones go
            if self.aside is not None:
                _remove(self.aside)
            for tag, stale in _stale_siblings(self.path):
                if tag == "old":
                    _remove(stale)
            return
        if self.started is not None and os.path.isdir(self.path) and self.started(self.path):
            if self.aside is not None:  # resumable: the previous output waits until it is whole
                import warnings

                from kplm.errors import KplmWarning
                warnings.warn(f"the output {show(self.path)} replaces waits in "
                              f"{show(self.aside)} until the new one is complete (the same "
                              "command again completes it; delete it to discard it)",
                              KplmWarning, stacklevel=2)
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        elif self.was_empty and os.path.isdir(self.path):
            for name in os.listdir(self.path):
                _remove(os.path.join(self.path, name))
        if self.aside is not None:
            os.rename(self.aside, self.path)


_OPEN = contextvars.ContextVar("kplm_in_place_outputs", default=None)


def open_in_place(path, *, replace=False, started=None):
    """Open an ``InPlaceOutput``; the enclosing ``in_place_outputs()`` block closes it. Without
    one it stays open: a previous output moved aside is cleaned by the next ``clean_stale``."""
    output = InPlaceOutput(path, replace=replace, started=started).open()
    opened = _OPEN.get()
    if opened is not None:
        opened.append(output)
    return output


@contextlib.contextmanager
def in_place_outputs():
    """Close the ``open_in_place`` outputs opened inside the block: kept when it succeeds or
    they started, undone when it raises before they did (``kplm.pretrain`` wraps a run in it)."""
    opened = []
    token = _OPEN.set(opened)
    try:
        yield opened
    except BaseException:
        for output in reversed(opened):
            output.close(ok=False)
        raise
    else:
        for output in reversed(opened):
            output.close(ok=True)
    finally:
        _OPEN.reset(token)


def config_inputs(config, skip=("run_dir", "callbacks")):
    """The existing paths a config names (its data files, vocabularies, ``init_from``, ...): the
    inputs an output of that config may not replace. Globs are expanded."""
    found = []

    def walk(value, key=None):
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in skip:
                    walk(v, k)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and value.strip():
            path = os.path.expanduser(value)
            if os.path.lexists(path):
                found.append(path)
            elif glob.has_magic(path):
                found.extend(glob.glob(path))

    walk(config)
    return found


# --- the provenance of a complete output: the same command again has nothing to do ----------------

def _digest(entries):
    import hashlib
    import json
    return hashlib.sha256(json.dumps(sorted(entries)).encode("utf-8")).hexdigest()


def _file_digest(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listing(path, skip=(), times=True, contents=False):
    """``[relative name, size(, mtime)(, sha256)]`` of every entry under ``path`` (symbolic
    links as themselves, never followed), except the top-level names in ``skip``."""
    found = []
    for root, dirs, files in os.walk(path):
        if root == path:
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            try:
                info = os.lstat(full)
            except OSError:  # gone meanwhile
                continue
            entry = [os.path.relpath(full, path), info.st_size]
            if times:
                entry.append(info.st_mtime_ns)
            if contents:  # a link's target, a regular file's digest (never a pipe's read)
                entry.append(os.readlink(full) if os.path.islink(full) else
                             _file_digest(full) if stat.S_ISREG(info.st_mode) else "?")
            found.append(entry)
    return found


def source_state(path, skip=("export", "metrics.json", "status.json")):
    """A digest of the source ``path`` of an output: every file's relative name, size and
    modification time, except the top-level names in ``skip`` (what a finished run still
    changes: its exports, the metrics ``kplm evaluate`` adds). Any change to it changes this."""
    return _digest(_listing(path, skip))


def inputs_state(paths):
    """A digest of the input ``paths`` (files or directories) of an output: each one's absolute
    path and every file's relative name, size and modification time."""
    entries = []
    for path in paths:
        real = os.path.abspath(path)
        try:
            info = os.stat(real)
        except OSError:
            entries.append([real, None])
            continue
        entries.append([real, _listing(real) if os.path.isdir(real)
                        else [info.st_size, info.st_mtime_ns]])
    return _digest(entries)


def write_stamp(directory, record, name=EXPORT_STAMP):
    """Write ``record`` (a JSON object) into the complete ``directory`` as ``name``, with a
    digest of what the directory holds, contents included (``stamped`` compares both)."""
    import json
    entries = _listing(directory, skip=(name,), times=False, contents=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump({**record, "holds": _digest(entries)}, f, indent=2, sort_keys=True)


def stamped(directory, record, name=EXPORT_STAMP):
    """Whether ``directory`` holds the stamp ``record`` (``write_stamp``) and still holds what
    it held when stamped."""
    import json
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(found, dict) or {**found, "holds": None} != {**record, "holds": None}:
        return False  # another record: no need to read what the directory holds
    try:
        entries = _listing(directory, skip=(name,), times=False, contents=True)
    except OSError:  # a file it cannot read: not known to be the same
        return False
    return found["holds"] == _digest(entries)
