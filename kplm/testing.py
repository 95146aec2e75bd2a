"""Test helpers for kplm and for plugin authors (no TensorFlow at import)."""
import os
import subprocess
import sys


def run_kplm(*args, env=None, cwd=None, timeout=600):
    """Run ``python -m kplm ARGS`` in a subprocess and return the ``CompletedProcess`` (text).

    Example:
        result = run_kplm("plugins", "--json")
        assert result.returncode == 0
    """
    full_env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                    **(env or {}))
    return subprocess.run([sys.executable, "-m", "kplm", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
