"""``trainer.strategy``: which ``tf.distribute`` strategy a run trains under, and who writes.

* ``auto`` picks ``multi_worker`` when ``TF_CONFIG`` is set, ``tpu`` when TPU devices are visible
  (or ``TPU_NAME`` names one), ``mirrored`` with more than one GPU, ``default`` otherwise.
* ``mirrored`` uses every GPU, or every logical CPU device when there is no GPU (how the tests
  run two replicas on one CPU: ``tf.config.set_logical_device_configuration`` before TF starts).
* ``multi_worker`` is ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (``{"cluster":
  {"worker": [...]}, "task": {"type": "worker", "index": i}}``). It must be created first
  thing in the program, before any other TensorFlow op runs (TF then refuses to configure
  the collective ops). Keras 3 ``fit`` fails under it out of the box (keras-team/keras#20585,
  #20329); ``patch_keras_for_multi_worker`` fixes the two functions at fault, for the Keras
  versions it was verified on only.
* ``tpu`` is ``TPUStrategy`` from ``TPUClusterResolver``; refused cleanly when none is found.

Batch sizes in configs are global: Keras splits each batch over the replicas (every worker
reads the whole dataset and keeps its shard, ``AutoShardPolicy.DATA``). Only the chief writes
files (``is_chief``); the other workers write the same files to a throwaway directory
(``output_dir``), since saving may need every worker's participation.
"""
import json
import os
import tempfile

from kplm.errors import ConfigError, KplmError, describe, shown

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
#: Keras versions (major.minor) whose TensorFlow trainer the multi-worker fix was verified on.
MULTI_WORKER_FIX_VERSIONS = ("3.15",)
#: ``1`` applies the fix on an unverified Keras version, ``0`` runs without it.
FIX_ENV = "KPLM_KERAS_MULTI_WORKER_FIX"


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
        patch_keras_for_multi_worker()
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


def patch_keras_for_multi_worker():
    """Make Keras 3 ``fit`` work under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585,
    #20329). Two functions of Keras' TensorFlow trainer fail there, and only there:

    * ``TensorFlowTrainer._maybe_symbolic_build`` averages a distributed sample batch across
      workers to build the model (``Attempt to convert a value (PerReplica...)``); it only
      needs the shapes, so the first local replica's batch is given instead;
    * ``reduce_per_replica`` averages the step's scalar logs with ``axis=0`` (``Invalid
      reduction dimension 0``); they are averaged with ``axis=None``.

    Other strategies go through Keras' own code unchanged. Applied once, and only on the Keras
    versions in ``MULTI_WORKER_FIX_VERSIONS``; on another one it is refused with what to do
    (``KPLM_KERAS_MULTI_WORKER_FIX=1`` applies it anyway, ``=0`` runs without it). Returns
    True when the fix is in place.
    """
    import keras
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_kplm_multi_worker_fix", False):
        return True
    forced = os.environ.get(FIX_ENV)
    version = ".".join(keras.__version__.split(".")[:2])
    if forced == "0":
        return False
    if version not in MULTI_WORKER_FIX_VERSIONS and forced != "1":
        raise KplmError(
            f"trainer.strategy multi_worker: kplm's fix for Keras' multi-worker fit "
            f"(keras-team/keras#20585) is verified on Keras {', '.join(MULTI_WORKER_FIX_VERSIONS)}"
            f" only, not {keras.__version__}: install keras=={MULTI_WORKER_FIX_VERSIONS[-1]}.*, "
            f"or set {FIX_ENV}=1 to apply it anyway ({FIX_ENV}=0 if Keras fixed it)")

    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def first_local(value, strategy):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or not multi_worker(self.distribute_strategy):
            return original_build(self, iterator, data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda v: first_local(v, self.distribute_strategy), next(it))
            break
        return original_build(self, None, data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer._kplm_multi_worker_fix = True
    return True


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
