"""``trainer.strategy``: which ``tf.distribute`` strategy a run trains under, and who writes.

* ``auto`` picks ``multi_worker`` when ``TF_CONFIG`` is set, ``tpu`` when TPU devices are visible
  (or ``TPU_NAME`` names one), ``mirrored`` with more than one GPU, ``default`` otherwise.
* ``mirrored`` uses every GPU, or every logical CPU device when there is no GPU (how the tests
  run two replicas on one CPU: ``tf.config.set_logical_device_configuration`` before TF starts).
* ``multi_worker`` is ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (``{"cluster":
  {"worker": [...]}, "task": {"type": "worker", "index": i}}``). It must be created first
  thing in the program, before any other TensorFlow op runs (TF then refuses to configure
  the collective ops). kplm's own loop trains under it; Keras 3 ``fit`` does not
  (keras-team/keras#20585, #20329).
* ``tpu`` is ``TPUStrategy`` from ``TPUClusterResolver``; refused cleanly when none is found.

Batch sizes in configs are global: every worker reads the whole stream of global batches and
each replica takes its rows of each batch inside the step (``kplm.training.step``). Only the chief writes
files (``is_chief``); the other workers write the same files to a throwaway directory
(``output_dir``), since saving may need every worker's participation.
"""
import json
import os
import tempfile

from kplm.errors import ConfigError, KplmError, describe, shown

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def strategy_for(name):
    """The ``tf.distribute`` strategy ``trainer.strategy`` names (see the module docstring).

    Example:
    >>> strategy_for("default").num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ConfigError(f"config key 'trainer.strategy' must be one of {', '.join(STRATEGIES)},"
                          f" got {shown(name)}")
    import tensorflow as tf

    if name == "auto":
        name = _auto()
    if name == "multi_worker":
        cluster_from_environment()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=os.environ.get("TPU_NAME", ""))
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as e:  # ValueError, NotFoundError, ... depending on the platform
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"trainer.strategy tpu: no TPU found ({first})") from None
        return tf.distribute.TPUStrategy(resolver)
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    return tf.distribute.get_strategy()


def _auto():
    import tensorflow as tf
    if os.environ.get("TF_CONFIG"):
        return "multi_worker"
    if os.environ.get("TPU_NAME") or tf.config.list_logical_devices("TPU"):
        return "tpu"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def cluster_from_environment():
    """``TF_CONFIG`` parsed and checked: ``(cluster, task_type, task_index)``.

    Example:
    >>> import json, os
    >>> os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
    ...                                       "task": {"type": "worker", "index": 1}})
    >>> cluster_from_environment()[1:]
    ('worker', 1)
    >>> del os.environ["TF_CONFIG"]
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError("trainer.strategy multi_worker needs TF_CONFIG in the environment: "
                          '{"cluster": {"worker": ["host:port", ...]}, '
                          '"task": {"type": "worker", "index": N}}')
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({describe(e)})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v for v in cluster.values()):
        raise ConfigError("TF_CONFIG: 'cluster' must map task types to non-empty lists of "
                          "host:port addresses")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f"TF_CONFIG: 'task.type' must be one of {', '.join(cluster)}, "
                          f"got {shown(task.get('type') if isinstance(task, dict) else task)}")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ConfigError(f"TF_CONFIG: 'task.index' must be an integer in [0, "
                          f"{len(cluster[task['type']])}), got {shown(index)}")
    return cluster, task["type"], index


def is_chief(strategy=None):
    """Whether this process writes the run's files: True except on the non-chief workers of a
    multi-worker run (the chief is task ``chief``, or ``worker`` 0 when there is none).

    Example:
    >>> is_chief(strategy_for("default"))
    True
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or not task_type:
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return task_type == "chief"
    return task_type == "worker" and resolver.task_id == 0


def output_dir(path, strategy=None):
    """Where this process writes what belongs at ``path`` (checkpoints, TensorBoard logs,
    saved weights): ``path`` itself on the chief, a fresh temporary directory on every other
    worker. Every worker must still run the same saving code (saving distributed variables
    can take part in collective ops); the non-chiefs' copies are thrown away (delete them with
    ``shutil.rmtree`` when ``output_dir(path) != path``).

    Example:
    >>> output_dir("runs/x/checkpoints", strategy_for("default"))
    'runs/x/checkpoints'
    """
    if is_chief(strategy):
        return path
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"kplm-{resolver.task_type}{resolver.task_id}-")


def host_memory_bytes():
    """The memory this process may use, in bytes: the machine's physical memory, or a
    container's (cgroup) limit when lower; None where the system does not say."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit, encoding="ascii") as f:
                value = f.read().strip()
        except (OSError, ValueError):
            continue
        if value.isdigit() and 0 < int(value) < memory:
            memory = int(value)
    return memory


def check_activation_memory(batch_size, parts, backbone, row_length, *,
                            half_precision=False, memory=None):
    """Refuse, before the first step, a batch whose activations alone cannot fit in this
    machine's memory (``memory`` bytes; default: all of it), so that a typo such as
    ``trainer.batch_size=100000`` is one line instead of a machine filled until it swaps or
    kills. For training on CPUs (accelerators hold activations in their own memory).

    The estimate is a lower bound of what one micro-batch (``batch_size / parts``: micro-batches
    x replicas) of rows of at least ``row_length`` tokens keeps for its backward pass: per token
    and layer, 8 hidden-wide vectors (input, queries, keys, values, attention output, two layer
    norms, feed-forward output), 2 intermediate-wide ones and a row of attention probabilities
    per head; the teacher of a distillation and the optimizer come on top.

    Example:
    >>> class Tiny: num_layers, hidden_dim, intermediate_dim, num_heads = 2, 128, 512, 2
    >>> check_activation_memory(32, 1, Tiny(), 128, memory=2**30)  # ~0.1 GiB: fine
    """
    dims = [getattr(backbone, name, None)
            for name in ("num_layers", "hidden_dim", "intermediate_dim", "num_heads")]
    memory = memory or host_memory_bytes()
    if not memory or not all(isinstance(d, int) and d > 0 for d in dims):
        return  # a backbone of another shape: not estimated
    layers, hidden, intermediate, heads = dims
    rows = batch_size // max(parts, 1)
    span = min(row_length, getattr(backbone, "sequence_length", None) or row_length)
    per_token = layers * (8 * hidden + 2 * intermediate + heads * span)
    need = rows * row_length * per_token * (2 if half_precision else 4)
    if need > memory:
        raise ConfigError(
            f"config key 'trainer.batch_size' ({batch_size:,}): a step of {rows:,} rows of at "
            f"least {row_length} tokens keeps at least {need / 2**30:,.1f} GiB of activations, more "
            f"than this machine's {memory / 2**30:,.1f} GiB; lower trainer.batch_size or raise "
            "trainer.gradient_accumulation_steps")


def check_batch_size(batch_size, accumulation_steps, strategy):
    """Refuse a global batch that does not split evenly into replicas x micro-batches.

    Example:
    >>> check_batch_size(8, 2, strategy_for("default"))
    """
    parts = accumulation_steps * strategy.num_replicas_in_sync
    if batch_size % parts:
        raise ConfigError(
            f"config key 'trainer.batch_size' ({batch_size}) must be a multiple of "
            f"gradient_accumulation_steps x replicas ({accumulation_steps} x "
            f"{strategy.num_replicas_in_sync} = {parts})")
