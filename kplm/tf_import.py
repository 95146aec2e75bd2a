"""Importing TensorFlow without its C++ start-up chatter. A bottom module: it imports nothing of
kplm, and TensorFlow only when ``import_tensorflow_quietly`` is called, so the command line,
``kplm data prepare`` and the demo can all use it without importing one another.

Example:
    import_tensorflow_quietly()   # then `import tensorflow` is instant and silent
"""
import os
import sys


def import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) sent to /dev/null,
    which TF_CPP_MIN_LOG_LEVEL cannot silence; ``--debug`` (``KPLM_DEBUG``) keeps it. Nothing
    is done when TensorFlow is already imported."""
    if "tensorflow" in sys.modules or os.environ.get("KPLM_DEBUG"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
        tensorflow.config.list_physical_devices("GPU")  # CUDA probing logs on first use
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
