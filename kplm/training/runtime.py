"""Pieces every training entry point shares: building components, strategies, run dirs."""
import contextlib
import os
import sys

from kplm import errors
from kplm.errors import KplmError


def build(cls, section):
    """Instantiate a component from its resolved config section."""
    return cls(**{k: v for k, v in section.items() if k != "name"})


def is_pretrained(backbone_cls):
    """True for backbones read from a checkpoint with their tokenizer (``hf``, ``keras_hub``)."""
    from kplm.components import PretrainedBackbone
    return isinstance(backbone_cls, type) and issubclass(backbone_cls, PretrainedBackbone)


def strategy_for(name):
    """The tf.distribute strategy a ``trainer.strategy`` setting names."""
    from kplm.training.distribute import strategy_for as pick
    return pick(name)


def is_chief(strategy):
    """Whether this process writes the run's files (always, except on multi-worker non-chiefs)."""
    from kplm.training.distribute import is_chief as chief
    return chief(strategy)


def prepare_run_dir(run_dir, overwrite, config_text, inputs=(), finished=None, kind=None):
    """Decide what to do with ``run_dir``, touching nothing (``kplm.outputs.check_output``):
    ``"new"`` (missing or empty), ``"resume"`` (an unfinished run of the same config with a
    checkpoint), ``"finished"`` (a finished run of the same config: nothing to do, so a
    command killed after it wrote ``metrics.json`` and run again ends as it would have) or
    ``"replace"`` (``overwrite``, or a run of the same config that stopped before its first
    checkpoint). Replacing never applies to a directory holding files a kplm run does
    not write, nor to an input of the config (``inputs``), nor to a run of another ``kind``
    (``"pretraining"``, ``"fine-tuning"``: ``kplm finetune --overwrite`` does not replace a
    pretrained model). Configs are compared without their ``run_dir`` (its spelling). Anything
    else is refused; a finished run first gets ``finished(run_dir)`` (``Job.after_metrics``: what a run killed right after writing its
    ``metrics.json`` had still to remove, so it ends as a run that was not killed)."""
    from kplm import outputs, runs
    from kplm.training.checkpoints import CheckpointDirectory

    check = dict(what="run_dir", kind="run", names=outputs.RUN_NAMES, inputs=inputs)
    outputs.check_output(run_dir, overwrite=overwrite, resume=True, **check)
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return "new"
    _check_kind(run_dir, kind)
    if overwrite:
        return "replace"
    shown = outputs.show(run_dir)

    def refuse(message):  # advises --overwrite only where --overwrite would be accepted
        outputs.check_output(run_dir, overwrite=True, **check)
        raise KplmError(message)

    config_path = os.path.join(run_dir, runs.CONFIG)
    if not os.path.exists(config_path):
        refuse(f"run_dir {shown} holds files of a kplm run but no {runs.CONFIG}; choose "
               "another run_dir or pass --overwrite")
    with open(config_path, "rb") as f:
        previous = f.read()
    try:
        previous = previous.decode("utf-8")
    except UnicodeDecodeError:
        refuse(f"run_dir {shown} holds a kplm run whose {runs.CONFIG} is not UTF-8 text "
               "(damaged); choose another run_dir or pass --overwrite")
    if os.path.exists(os.path.join(run_dir, runs.METRICS)):
        if finished is not None:
            finished(run_dir)
        if _same_config(previous, config_text):  # the same command again (killed at its end)
            return "finished"
        refuse(f"run_dir {shown} already holds a finished run of another config "
               f"({_first_difference(previous, config_text)}); choose another run_dir or pass "
               "--overwrite")
    if not _same_config(previous, config_text):
        refuse(f"run_dir {shown} holds an unfinished run with a different config "
               f"({_first_difference(previous, config_text)}); use the same config to resume "
               "it, or another run_dir, or --overwrite")
    if CheckpointDirectory(os.path.join(run_dir, runs.CHECKPOINTS)).checkpoints():
        return "resume"
    # stopped before its first checkpoint: started again, if nothing else is in the directory
    outputs.check_output(run_dir, overwrite=True, **check)
    return "replace"


def _check_kind(run_dir, kind):
    """Refuse a ``run_dir`` holding a run of another kind than ``kind``."""
    from kplm import outputs
    held = run_kind(run_dir)
    if kind in ("pretraining", "fine-tuning") and held not in (None, kind):
        raise KplmError(f"run_dir {outputs.show(run_dir)} holds a {held} run; a {kind} run never "
                        f"replaces it, --overwrite or not: choose another run_dir")


def run_kind(run_dir):
    """``"pretraining"`` or ``"fine-tuning"``: the kind of the run in ``run_dir`` as its
    ``head.json`` or ``config.yaml`` tells (``kplm.run_summary.kind_of``); None when neither
    does."""
    from kplm import runs
    from kplm.run_summary import kind_of, read_config
    if os.path.exists(os.path.join(run_dir, runs.HEAD_CONFIG)):
        return "fine-tuning"
    config = read_config(run_dir)
    if not config:
        return None
    kind, task = kind_of(config)
    if kind == "finetune":
        return "fine-tuning"
    return "pretraining" if task != "?" else None


def run_started(run_dir):
    """Whether ``run_dir`` holds something worth keeping: a checkpoint, or a finished run."""
    from kplm import runs
    from kplm.training.checkpoints import CheckpointDirectory
    return bool(os.path.exists(os.path.join(run_dir, runs.METRICS))
                or CheckpointDirectory(os.path.join(run_dir, runs.CHECKPOINTS)).checkpoints())


def _config_of(text):
    """A run's ``config.yaml`` text as a dict, without ``run_dir`` (the directory it is in,
    however it was spelled: ``runs/x``, ``runs/x/``, an absolute path)."""
    import yaml
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return {"<unreadable config.yaml>": text}
    config = dict(config) if isinstance(config, dict) else {"<config.yaml>": config}
    config.pop("run_dir", None)
    return config


def _same_config(previous_text, text):
    return previous_text == text or _config_of(previous_text) == _config_of(text)


def _first_difference(previous_text, text):
    from kplm.config import flatten as flat
    previous = _config_of(previous_text)
    if set(previous) & {"<config.yaml>", "<unreadable config.yaml>"}:
        return "the run's config.yaml is damaged: not a YAML mapping"
    old, new = flat(previous), flat(_config_of(text))
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            return (f"{key}: {errors.shown(old.get(key, '<absent>'), 80)} in the run, "
                    f"{errors.shown(new.get(key, '<absent>'), 80)} now")
    return "formatting"


def start_run(run_dir, overwrite, resolved, write=True, finished=None, kind=None):
    """Check, then create the run directory (or find the interrupted run to resume in it; or move
    a replaced run aside), write the resolved config into it, and silence the Keras warnings that
    are expected in kplm runs; returns ``(config as YAML text, plan)``, the plan one of
    ``prepare_run_dir``'s. ``write=False`` (a multi-worker non-chief) only looks; ``finished``,
    ``kind``: see ``prepare_run_dir``."""
    import warnings

    import yaml

    from kplm import outputs, runs
    from kplm.training.checkpoints import CheckpointDirectory
    # Expected: a pooler gets no gradient from a token-level objective.
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
    config_text = yaml.safe_dump(resolved, sort_keys=False)
    if not write:  # a multi-worker non-chief: as the chief will find it
        if os.path.isdir(run_dir):
            _check_kind(run_dir, kind)
        if not overwrite and _finished_with(run_dir, config_text):
            return config_text, "finished"
        return config_text, "resume" if CheckpointDirectory(
            os.path.join(run_dir, runs.CHECKPOINTS)).checkpoints() else "new"
    # a run an interrupted --overwrite moved aside waits (.NAME.old-PID) until this one ends
    outputs.clean_stale(run_dir, started=run_started, names=outputs.RUN_NAMES,
                        complete=lambda path: os.path.exists(os.path.join(path, runs.METRICS)))
    plan = prepare_run_dir(run_dir, overwrite, config_text, outputs.config_inputs(resolved),
                           finished=finished, kind=kind)
    if plan == "resume":  # its end deletes a run an interrupted --overwrite left aside
        outputs.open_in_place(run_dir, started=run_started)
    elif plan != "finished":
        # inside kplm.outputs.in_place_outputs() (pretrain, finetune), a run failing before its
        # first checkpoint leaves run_dir as it was; a replaced run waits in .NAME.old-PID
        # until the new one finishes
        outputs.open_in_place(run_dir, replace=plan == "replace", started=run_started)
        write_text(os.path.join(run_dir, runs.CONFIG), config_text)
    return config_text, plan


def _finished_with(run_dir, config_text):
    """Whether ``run_dir`` holds a finished run of this config."""
    from kplm import runs
    try:
        with open(os.path.join(run_dir, runs.CONFIG), encoding="utf-8") as f:
            return (_same_config(f.read(), config_text)
                    and os.path.exists(os.path.join(run_dir, runs.METRICS)))
    except (OSError, UnicodeDecodeError):
        return False


def write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def restoring_precision_policy():
    """Undo a run's ``mixed_precision`` setting afterwards: Keras keeps the dtype policy as
    process-wide state, and a later model in the same process must not inherit it."""
    previous = None
    if "keras" in sys.modules:
        previous = sys.modules["keras"].mixed_precision.global_policy().name
    try:
        yield
    finally:
        if "keras" in sys.modules:
            sys.modules["keras"].mixed_precision.set_global_policy(previous or "float32")
