"""``trainer.mixed_precision: auto``: bfloat16 only where it is faster on the machine at hand.

Machines that look alike differ here: on one 2-core cloud CPU bfloat16 matmuls ran at half the
float32 speed (160 against 309 GFLOP/s measured), another has ``avx512_bf16`` or AMX,
and recent GPUs and TPUs run bfloat16 several times faster. So ``auto`` measures instead of
guessing on CPUs: a short probe (a few 1024 x 1024 matmul chains in each precision, ~0.4 s)
picks bfloat16 when it is at least 20 % faster, float32 otherwise. On GPUs and TPUs a probe that
short would time call overheads (and float32 matmuls already run as TF32 or bfloat16 passes
there), so the device kind decides: bfloat16 on TPUs and on GPUs of compute capability 8.0 or
newer (Ampere on), float32 on older GPUs.

The choice is printed and written to ``RUN_DIR/precision.json`` with the probe's timings; a
resumed run reads it back instead of probing again, so that a run never changes precision half
way (and a resumed run equals an uninterrupted one). ``config.yaml`` keeps ``auto``: it is the
config the user gave, and resuming compares against it. Under a multi-worker strategy every
worker must agree without talking, so nothing is timed there either: the device kind decides.

Example:
>>> choice, timings = probe(strategy=None, size=256, repeats=2)
>>> choice in (None, "bfloat16") and set(timings) == {"float32", "bfloat16"}
True
"""
import os
import time

PRECISION_FILE = "precision.json"
#: bfloat16 is chosen when it takes at most this share of float32's time
FASTER = 0.8


def probe(strategy=None, size=1024, repeats=5, chain=4):
    """``(choice, {"float32": s, "bfloat16": s})``: the best of ``repeats`` timed calls of a
    chain of ``chain`` ``size``-square matmuls in each precision; ``choice`` is ``"bfloat16"``
    or None (float32)."""
    import tensorflow as tf

    device = _first_device(strategy)
    timings = {}
    with tf.device(device):
        for dtype in ("float32", "bfloat16"):
            x = tf.cast(tf.random.stateless_uniform([size, size], seed=[1, 2], minval=-1,
                                                    maxval=1) / size ** 0.5, dtype)

            @tf.function
            def run(x):
                y = x
                for _ in range(chain):
                    y = tf.linalg.matmul(y, x)
                return tf.reduce_sum(tf.cast(y, "float32"))

            run(x).numpy()  # traced and warmed up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                run(x).numpy()  # .numpy() waits for the device
                best = min(best, time.perf_counter() - start)
            timings[dtype] = best
    choice = "bfloat16" if timings["bfloat16"] <= FASTER * timings["float32"] else None
    return choice, timings


def _first_device(strategy):
    """The strategy's first device, or None (the default strategy has no device list)."""
    try:
        return strategy.extended.worker_devices[0]
    except (AttributeError, RuntimeError, IndexError):
        return None


def accelerator(strategy):
    """``"TPU"``, ``"GPU"`` or None: what the run computes on."""
    import tensorflow as tf
    device = (_first_device(strategy) or "").upper()
    if "TPU" in device or isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU"
    if "GPU" in device or (device == "" and tf.config.list_logical_devices("GPU")):
        return "GPU"
    return None


def by_device(strategy):
    """The choice without timing: bfloat16 on TPUs and on GPUs of compute capability >= 8.0,
    else None."""
    import tensorflow as tf
    if accelerator(strategy) == "TPU":
        return "bfloat16"
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        return "bfloat16" if capability and tuple(capability) >= (8, 0) else None
    return None


def resolve(setting, strategy, run_dir, *, resuming, write, echo):
    """The run's precision (None, ``"bfloat16"`` or ``"float16"``) for ``trainer.mixed_precision
    = setting``; ``auto`` is decided (see the module docstring), printed and recorded."""
    if setting != "auto":
        return setting
    path = os.path.join(run_dir, PRECISION_FILE)
    if resuming and not os.path.exists(path):
        import warnings

        from kplm.errors import KplmWarning
        warnings.warn(f"{path} is missing: mixed_precision auto is decided again, and may "
                      "differ from the precision the run started with", KplmWarning,
                      stacklevel=2)
    if resuming and os.path.exists(path):
        from kplm.runs import read_json
        recorded = read_json(path, "the precision chosen by mixed_precision: auto")
        choice = recorded.get("mixed_precision") if isinstance(recorded, dict) else None
        if choice not in ("float32", "bfloat16"):
            from kplm.errors import KplmError
            from kplm.errors import shown
            raise KplmError(f"{path}: mixed_precision must be float32 or bfloat16, got "
                            f"{shown(choice)}; delete the file to decide again")
        choice = None if choice == "float32" else choice
        if echo:
            echo(f"mixed_precision auto: {choice or 'float32'} (chosen when the run started)")
        return choice
    import tensorflow as tf
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        choice, timings, how = by_device(strategy), None, "by device kind, multi-worker"
    elif accelerator(strategy):
        choice, timings = by_device(strategy), None
        how = f"by device kind, {accelerator(strategy)}"
    else:
        choice, timings = probe(strategy)
        how = (f"matmul probe: float32 {timings['float32'] * 1e3:.1f} ms, bfloat16 "
               f"{timings['bfloat16'] * 1e3:.1f} ms")
    if echo:
        echo(f"mixed_precision auto: {choice or 'float32'} ({how})")
    if write:
        from kplm.runs import write_json
        write_json(path, {"mixed_precision": choice or "float32", "how": how,
                          "probe_seconds": timings})
    return choice
