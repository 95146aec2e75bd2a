"""Pieces every training entry point shares: building components, strategies, run dirs."""
import contextlib
import os
import shutil
import sys

from kplm.errors import KplmError


def build(cls, section):
    """Instantiate a component from its resolved config section."""
    return cls(**{k: v for k, v in section.items() if k != "name"})


def strategy_for(name):
    """The tf.distribute strategy a ``trainer.strategy`` setting names."""
    from kplm.training.distribute import strategy_for as pick
    return pick(name)


def is_chief(strategy):
    """Whether this process writes the run's files (always, except on multi-worker non-chiefs)."""
    from kplm.training.distribute import is_chief as chief
    return chief(strategy)


def install_train_step(model, trainer):
    """kplm's train step on a compiled model: the loss normalised by the global number of target
    tokens (across replicas and micro-batches), ``trainer.gradient_accumulation_steps``."""
    from kplm.training.step import install
    install(model, accumulation_steps=trainer.gradient_accumulation_steps)


def prepare_run_dir(run_dir, overwrite, config_text):
    """Refuse to mix two runs in one directory; ``overwrite`` starts it afresh. Returns True when
    ``run_dir`` holds an unfinished run of the same config with a checkpoint: it is resumed."""
    from kplm import runs
    from kplm.training.checkpoints import CheckpointDirectory

    if os.path.exists(run_dir) and os.listdir(run_dir):
        if overwrite:
            shutil.rmtree(run_dir)
        else:
            config_path = os.path.join(run_dir, runs.CONFIG)
            if not os.path.exists(config_path):
                raise KplmError(f"run_dir {run_dir} holds files that are not a kplm run; choose "
                                "another run_dir or pass --overwrite")
            if os.path.exists(os.path.join(run_dir, runs.METRICS)):
                raise KplmError(f"run_dir {run_dir} already holds a finished run; choose another "
                                "run_dir or pass --overwrite")
            with open(config_path, encoding="utf-8") as f:
                previous = f.read()
            if previous != config_text:
                raise KplmError(f"run_dir {run_dir} holds an unfinished run with a different "
                                f"config ({_first_difference(previous, config_text)}); use the "
                                "same config to resume it, or another run_dir, or --overwrite")
            if CheckpointDirectory(os.path.join(run_dir, runs.CHECKPOINTS)).complete():
                return True
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: start again
    os.makedirs(run_dir, exist_ok=True)
    return False


def _first_difference(previous_text, text):
    import yaml

    def flat(value, prefix=""):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: value}

    old, new = flat(yaml.safe_load(previous_text) or {}), flat(yaml.safe_load(text) or {})
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            return f"{key}: {old.get(key, '<absent>')!r} in the run, {new.get(key, '<absent>')!r} now"
    return "formatting"


def start_run(run_dir, overwrite, resolved, write=True):
    """Create the run directory (or find the interrupted run to resume in it), write the resolved
    config into it, and silence the Keras warnings that are expected in kplm runs; returns
    ``(config as YAML text, resuming)``. ``write=False`` (a multi-worker non-chief) only looks."""
    import warnings

    import yaml

    from kplm import runs
    from kplm.training.checkpoints import CheckpointDirectory
    # Expected: a pooler gets no gradient from a token-level objective, and a finite validation
    # set "runs out" at the end of every evaluation.
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    config_text = yaml.safe_dump(resolved, sort_keys=False)
    if not write:
        return config_text, bool(
            CheckpointDirectory(os.path.join(run_dir, runs.CHECKPOINTS)).complete())
    resuming = prepare_run_dir(run_dir, overwrite, config_text)
    if not resuming:
        write_text(os.path.join(run_dir, runs.CONFIG), config_text)
    return config_text, resuming


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
