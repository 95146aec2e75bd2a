"""What a run directory says about its run, for ``kplm runs`` and ``kplm report``.

Read from the files a run leaves (``kplm.runs``) and its TensorBoard scalars
(``kplm.events``), without TensorFlow, so that a table of a hundred runs answers at once:

- **kind**: ``pretrain`` (with its objective) or ``finetune`` (with its head);
- **status**: ``finished`` (``metrics.json``); ``running`` (``status.json`` names a live
  process on this host); ``failed at step N`` (the error the loop ended with); ``interrupted at
  step N`` (killed, Ctrl-C, or the machine went away: it resumes from its last checkpoint);
- **steps** done and configured, the **best validation metric** (a fine-tuning head's own
  metric, the one that chose the saved weights; validation loss for pretraining),
  **tokens/s** (the mean of the logged throughput), **wall time**, and where the run was
  **initialised from** (``init_from``, a checkpoint, a preset, or random).

Example:
>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> find_runs(root)                     # nothing under root holds a run
[]
"""
import os
import re

from kplm import runs

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
#: What a fine-tuning run's best weights are chosen by, when its head cannot be looked up (a
#: plugin that is no longer installed): the first of these the run logged.
_FALLBACK_METRICS = ("accuracy", "f1", "pearson", "bleu", "span_accuracy", "loss")
_RUN_FILES = (runs.METRICS, runs.CHECKPOINTS, runs.TENSORBOARD, runs.STATUS)


def is_run(path):
    """Whether ``path`` is a kplm training run directory (its ``config.yaml`` and something it
    trained: checkpoints, scalars, metrics or a status)."""
    return (os.path.isfile(os.path.join(path, runs.CONFIG))
            and any(os.path.exists(os.path.join(path, name)) for name in _RUN_FILES))


def find_runs(root, max_depth=6):
    """The run directories at or under ``root`` (sorted; a run's own folders are not searched,
    nor hidden ones such as kplm's ``.NAME.tmp-PID`` siblings; links are not followed)."""
    found = []

    def walk(path, depth):
        if is_run(path):
            found.append(path)
            return
        if depth >= max_depth:
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            walk(entry.path, depth + 1)
    walk(root, 0)
    return found


def _read_json(path):
    import json
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def read_config(run_dir):
    """The run's resolved ``config.yaml`` as a dict ({} when it cannot be read)."""
    import yaml
    try:
        with open(os.path.join(run_dir, runs.CONFIG), encoding="utf-8") as f:
            value = yaml.safe_load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}


def checkpoint_steps(run_dir):
    """The steps of the run's complete checkpoints (``checkpoints/step-N`` with its index)."""
    steps = []
    try:
        entries = os.listdir(os.path.join(run_dir, runs.CHECKPOINTS))
    except OSError:
        return steps
    for name in entries:
        match = _STEP_DIR.match(name)
        if match and os.path.exists(os.path.join(run_dir, runs.CHECKPOINTS, name, "ckpt.index")):
            steps.append(int(match.group(1)))
    return sorted(steps)


def _section_name(section):
    return section.get("name") if isinstance(section, dict) else None


def kind_of(config):
    """``("finetune", head name)`` or ``("pretrain", objective name(s))``."""
    if isinstance(config.get("head"), dict):
        return "finetune", _section_name(config["head"]) or "?"
    objective = config.get("objective")
    if isinstance(objective, dict):
        name = _section_name(objective) or "?"
        parts = objective.get("objectives")
        if name == "combined" and isinstance(parts, list):
            name = "+".join(str(_section_name(p) or "?") for p in parts)
        return "pretrain", name
    if isinstance(config.get("objectives"), list):
        return "pretrain", "+".join(str(_section_name(p) or "?") for p in config["objectives"])
    return "pretrain", "?"


def initialised_from(config):
    """Where the run's weights started: ``init_from`` (a run), the backbone's checkpoint or
    preset, or ``random`` (a new backbone)."""
    if config.get("init_from"):
        return f"run {config['init_from']}"
    backbone = config.get("backbone")
    if isinstance(backbone, dict):
        name = backbone.get("name")
        where = backbone.get("path") or backbone.get("preset")
        if where:
            kept = backbone.get("keep_layers")
            return f"{name} {where}" + (f" (layers {kept})" if kept else "")
        return f"random ({name})"
    return "random"


def head_metric(head_name):
    """``(metric, mode)`` a fine-tuning head chooses its best weights by, or None when the head
    is not registered here."""
    try:
        from kplm.plugins import get_registry
        cls = get_registry().get("head", head_name)
    except Exception:  # a plugin head no longer installed: fall back on the logged metrics
        return None
    metric = getattr(cls, "metric", None)
    return (metric, getattr(cls, "metric_mode", "max")) if isinstance(metric, str) else None


def _alive(status):
    import socket
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _best(points, mode):
    values = [v for _, _, v in points]
    return (max if mode == "max" else min)(values) if values else None


def summarize(run_dir, scalars=None):
    """One run's row: a dict with ``run``, ``kind``, ``task``, ``status``, ``state``,
    ``step``, ``total_steps``, ``best_metric``, ``best_value``, ``tokens_per_second``,
    ``wall_seconds``, ``initialised_from`` and ``error`` (failed runs). ``scalars``: the run's
    ``kplm.events.scalars`` if already read."""
    from kplm.events import scalars as read_scalars
    config = read_config(run_dir)
    kind, task = kind_of(config)
    head = _read_json(os.path.join(run_dir, runs.HEAD_CONFIG))
    if not config:  # config.yaml missing or damaged: what head.json says, else unknown
        kind, task = (("finetune", str(head.get("name", "?"))) if head is not None
                      else ("?", "config.yaml unreadable"))
    metrics = _read_json(os.path.join(run_dir, runs.METRICS))
    status = _read_json(os.path.join(run_dir, runs.STATUS)) or {}
    scalars = read_scalars(run_dir) if scalars is None else scalars
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    total = trainer.get("steps") if isinstance(trainer.get("steps"), int) else None
    checkpoints = checkpoint_steps(run_dir)
    logged = max((points[-1][0] for points in scalars.values() if points), default=0)
    step = max([logged] + checkpoints[-1:])

    row = {"run": run_dir, "kind": kind, "task": task, "step": step, "total_steps": total,
           "initialised_from": initialised_from(config) if config else "?", "error": None,
           "last_checkpoint": checkpoints[-1] if checkpoints else None}
    if metrics is not None:
        row["state"] = "finished"
        step = metrics.get("train_steps", metrics.get("steps", step))
        row["step"] = step if isinstance(step, int) else row["step"]
    elif os.path.exists(os.path.join(run_dir, runs.METRICS)):
        row["state"] = "damaged"  # written at the end of a run, unreadable now
    elif status.get("state") == "running" and _alive(status):
        row["state"] = "running"
    elif status.get("state") == "failed":
        row["state"] = "failed"
        row["error"] = status.get("error")
    elif row["last_checkpoint"] is None and not scalars:
        row["state"] = "not started"
    else:
        row["state"] = "interrupted"
    row["status"] = {"finished": "finished", "running": f"running, step {row['step']}",
                     "failed": f"failed at step {row['step']}",
                     "interrupted": f"interrupted at step {row['step']}",
                     "not started": "not started",
                     "damaged": "finished? metrics.json unreadable"}[row["state"]]
    if row["state"] != "finished":  # what an interrupted --overwrite keeps until this one ends
        parent, name = os.path.split(os.path.abspath(run_dir))
        aside = sorted(n for n in _listdir(parent) if n.startswith(f".{name}.old-"))
        if aside:
            row["status"] += f" (the run it replaces waits in {aside[-1]})"

    # the best validation metric
    name, mode, value = None, "min", None
    if kind == "finetune":
        found = head_metric(task)
        if found is None:
            logged_names = {t.split("/", 1)[1] for t in scalars if t.startswith("validation/")}
            if metrics and isinstance(metrics.get("validation"), dict):
                logged_names |= set(metrics["validation"])
            name = next((m for m in _FALLBACK_METRICS if m in logged_names), None)
            mode = "min" if name == "loss" else "max"
        else:
            name, mode = found
    else:
        name, mode = "loss", "min"
    if name:
        saved = (metrics or {}).get("validation")
        if isinstance(saved, dict) and isinstance(saved.get(name), (int, float)):
            value = float(saved[name])  # what the saved weights score
        else:
            value = _best(scalars.get(f"validation/{name}", []), mode)
    row["best_metric"], row["best_value"] = (name, value) if value is not None else (None, None)

    throughput = [v for _, _, v in scalars.get("train/tokens_per_second", [])]
    row["tokens_per_second"] = (sum(throughput) / len(throughput) if throughput
                                else (metrics or {}).get("tokens_per_second"))
    wall = (metrics or {}).get("wall_seconds")
    if not isinstance(wall, (int, float)):  # unfinished: from its start (this session's)
        times = [w for points in scalars.values() for _, w, _ in points]
        started = status.get("started")
        if isinstance(started, (int, float)) and times:
            wall = max(max(times), status.get("time", 0)) - started
        else:
            wall = max(times) - min(times) if len(times) > 1 else None
            wall = wall or None
    row["wall_seconds"] = wall
    return row


def _duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def table_cells(row):
    """The printed cells of a row: run, kind, status, steps, best, tokens/s, wall, init."""
    steps = f"{row['step']}/{row['total_steps']}" if row["total_steps"] else str(row["step"])
    best = (f"{row['best_metric']} {row['best_value']:.4g}" if row["best_metric"] else "-")
    tokens = (f"{row['tokens_per_second']:,.0f}" if row["tokens_per_second"] is not None
              else "-")
    status = row["status"] + (f": {row['error']}" if row["error"] else "")
    return [row["run"], f"{row['kind']} ({row['task']})", status, steps, best, tokens,
            _duration(row["wall_seconds"]), row["initialised_from"]]


HEADERS = ["run", "kind", "status", "steps", "best validation", "tokens/s", "wall",
           "initialised from"]


def _cut(text, limit=80):
    """``text`` on one line, at most ``limit`` characters, keeping its end (a path's last
    folders say more than its first)."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def format_table(rows, root=None):
    """The rows as an aligned text table (each cell on one line, long ones keeping their end);
    with ``root``, runs are named relative to it."""
    import os
    cells = [HEADERS]
    for row in rows:
        line = table_cells(row)
        if root is not None:
            line[0] = os.path.relpath(row["run"], root)
        cells.append([_cut(c) for c in line])
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in cells)
