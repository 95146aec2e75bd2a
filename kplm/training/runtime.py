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
    import tensorflow as tf
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def prepare_run_dir(run_dir, overwrite):
    """Refuse to mix two runs in one directory; ``overwrite`` starts it afresh."""
    if os.path.exists(run_dir) and os.listdir(run_dir):
        if not overwrite:
            raise KplmError(f"run_dir {run_dir} already holds a run; choose another run_dir or "
                            "pass --overwrite")
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)


def start_run(run_dir, overwrite, resolved):
    """Create the run directory, write the resolved config into it, and silence the Keras
    warnings that are expected in kplm runs; returns the config as YAML text."""
    import warnings

    import yaml

    from kplm import runs
    # Expected: a pooler gets no gradient from a token-level objective, and a finite validation
    # set "runs out" at the end of every evaluation.
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    prepare_run_dir(run_dir, overwrite)
    config_text = yaml.safe_dump(resolved, sort_keys=False)
    write_text(os.path.join(run_dir, runs.CONFIG), config_text)
    return config_text


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
