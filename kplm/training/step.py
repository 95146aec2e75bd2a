"""Token-count-normalised losses across replicas and micro-batches (gradient accumulation).

A language-model loss is a mean over target tokens, and batches hold different numbers of
them. Keras averages what each replica computes, so under ``MirroredStrategy`` each replica
dividing by its own token count gives a mean of means, not the mean (measured: 7.038 against
6.990 after 20 steps on 2 replicas); accumulating micro-batch means has the same flaw.

The fix lives in the loss, not in each model: ``global_mean(total, count)`` divides a summed
loss by the count summed over every replica (one all-reduce) and, inside an accumulated step,
over every micro-batch. ``kplm.models.token_loss.TokenLoss`` (every kplm language model's
default loss) and the models that compute their own losses (``Pretrainer``, ELECTRA) call it,
so the models need no train step of their own: with one micro-batch Keras' ``train_step``
is exact on any strategy. Counts in the loss rather than re-weighted gradients after the
fact, because the count is known before the forward pass (it is the sum of the sample
weights, read from the data) while gradients of several outputs with different counts
(masked LM + NSP) cannot be re-weighted once summed.

``install(model, accumulation_steps=k)`` (k > 1) sets the model's ``train_step`` to one that
splits each replica's batch into k micro-batches, first sums every output's sample weights
over the whole batch and all replicas, then adds up the k micro-batches' gradients and
applies them once: k micro-batches of b rows give the same loss, metrics and update as one
batch of k*b rows. Keras' own ``Optimizer(gradient_accumulation_steps=...)`` averages the
micro-steps' means instead, and logs one step per micro-batch. Under ``mixed_float16`` each
micro-batch's loss is scaled by the ``LossScaleOptimizer`` and the summed gradients are
unscaled (and checked for overflow) once, by ``apply_gradients``.
"""
import threading

_state = threading.local()  # MirroredStrategy traces each replica in a thread of its own


def global_mean(total, count, key=None):
    """``total`` (a loss summed over this replica's targets) divided by the number of targets
    in the global batch, as this replica's share: the shares of all replicas add up to the
    mean (what Keras expects of a loss under ``tf.distribute``).

    ``count`` is this replica's number of targets (the sum of its sample weights). Inside a
    step ``install`` made, the global count comes from the step (all micro-batches), looked up
    by ``key`` (the output's name, for models with several; ``target(key)`` sets it around a
    loss call); otherwise it is ``count`` summed over the replicas.

    Example:
    >>> float(global_mean(6.0, 3.0))  # one replica: the mean
    2.0
    """
    from keras import ops
    total = ops.cast(total, "float32")
    step = getattr(_state, "step", None)
    key = key if key is not None else getattr(_state, "key", None)
    if step is not None and key in step.counts:
        return ops.divide_no_nan(total * step.micro_batches, step.counts[key])
    return ops.divide_no_nan(total, all_reduce_sum(ops.cast(count, "float32")))


class target:
    """``with target("masked_lm"): loss = loss_fn(y, y_pred, weight)``: the loss is the one of
    that output (its count is the sum of ``sample_weight["masked_lm"]``)."""

    def __init__(self, key):
        self.key = key

    def __enter__(self):
        self.previous = getattr(_state, "key", None)
        _state.key = self.key

    def __exit__(self, *exc):
        _state.key = self.previous


def all_reduce_sum(value):
    """``value`` summed over the replicas in sync (itself with one replica, or outside a
    replica context)."""
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def target_counts(model, x, y, sample_weight):
    """This replica's number of targets per output: ``model.target_counts(x, y, sample_weight)``
    when the model defines it, else the sum of each output's sample weights (key None for a
    single output). Outputs without sample weights are averaged over rows, which Keras already
    does right."""
    import tensorflow as tf
    if hasattr(model, "target_counts"):
        return dict(model.target_counts(x, y, sample_weight))
    if sample_weight is None:
        return {}
    if isinstance(sample_weight, dict):
        return {k: tf.reduce_sum(tf.cast(v, "float32"))
                for k, v in sample_weight.items() if v is not None}
    if isinstance(sample_weight, (list, tuple)):
        return {}
    return {None: tf.reduce_sum(tf.cast(sample_weight, "float32"))}


class _Step:
    def __init__(self, counts, micro_batches):
        self.counts, self.micro_batches = counts, micro_batches


#: Keys the kplm train step adds to the logs Keras hands callbacks after each step: the step's
#: own loss (the global mean over all replicas and micro-batches, not Keras' running mean) and
#: 1.0 when the non-finite gate skipped the update (else 0.0).
STEP_LOSS, SKIPPED = "step_loss", "skipped_step"


def install(model, accumulation_steps=1):
    """Train ``model`` (compiled) with kplm's train step: ``accumulation_steps`` micro-batches
    per optimizer step, and a non-finite gate on the update.

    The gate: when the step's gradients or loss hold a NaN or an infinity on any replica, the
    update is skipped: weights, optimizer slots and the step counter (so Adam's bias
    correction and the learning-rate schedule) stay as they were, and the step's loss stays out
    of the loss's running mean. Every replica takes the same decision (one all-reduce of the
    squared gradient norm and the loss). The logs of each step say so (``skipped_step``) and
    carry the step's own loss (``step_loss``). Under a ``LossScaleOptimizer`` (``mixed_float16``)
    the loss scaler's own skip-and-rescale is left as it is.

    Call after ``compile`` and before ``fit``; each replica's batch (global batch / replicas)
    must split evenly (``kplm.training.distribute.check_batch_size``). Returns the model.

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model = install(model, accumulation_steps=2)
    >>> history = model.fit(np.ones((4, 3)), np.zeros((4, 2)), batch_size=4, verbose=0)
    >>> int(model.optimizer.iterations)  # one update for the 2 micro-batches
    1
    >>> y = np.zeros((4, 2)); y[0, 0] = np.nan  # a NaN target: non-finite loss and gradients
    >>> history = model.fit(np.ones((4, 3)), y, batch_size=4, verbose=0)
    >>> int(model.optimizer.iterations), history.history["skipped_step"]  # skipped
    (1, [1.0])
    >>> bool(np.isfinite(model.layers[0].kernel.numpy()).all())
    True
    """
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) \
            or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
    model.train_step = lambda data: train_step(model, data, accumulation_steps)
    model.train_function = None  # rebuilt around the new step
    model._kplm_train_step = True
    return model


def is_installed(model):
    """Whether ``install`` gave ``model`` kplm's train step."""
    return bool(getattr(model, "_kplm_train_step", False))


def train_step(model, data, k):
    """One optimizer step over ``k`` micro-batches of ``data`` (runs in the replica context):
    forward and backward per micro-batch, gradients summed, then the gate and the update."""
    import tensorflow as tf
    from keras.src import tree
    from keras.src.losses.loss import unscale_loss_for_distribution
    from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight

    x, y, sample_weight = unpack_x_y_sample_weight(data)
    counts = target_counts(model, x, y, sample_weight) if k > 1 else {}
    if counts:
        keys = list(counts)
        total = all_reduce_sum(tf.stack([tf.cast(counts[key], "float32") for key in keys]))
        counts = {key: total[i] for i, key in enumerate(keys)}
    rows = tf.shape(next(t for t in tree.flatten(x) if t is not None))[0]
    if k > 1:
        tf.debugging.assert_equal(rows % k, 0, message=(
            "gradient accumulation: each replica's batch must split into micro-batches evenly"))
    size = rows // k
    weights = model.trainable_weights
    gradients = [None] * len(weights)
    step_loss = tf.constant(0.0)  # this replica's share of the step's mean loss
    previous = getattr(_state, "step", None)
    if k > 1:  # one micro-batch: the losses divide by the global count themselves
        _state.step = _Step(counts, k)
    try:
        for i in range(k):
            # Wait for the previous micro-batch's gradients: otherwise TF may run the k
            # forward passes at once, and the memory accumulation saves is spent anyway.
            with tf.control_dependencies([getattr(g, "values", g) for g in gradients
                                          if g is not None]):
                part = (x, y, sample_weight) if k == 1 else tree.map_structure(
                    lambda t: None if t is None else tf.identity(t[i * size:(i + 1) * size]),
                    (x, y, sample_weight))
            xm, ym, wm = part
            with tf.GradientTape() as tape:
                y_pred = model(xm, training=True) if model._call_has_training_arg else model(xm)
                loss = model._compute_loss(x=xm, y=ym, y_pred=y_pred, sample_weight=wm,
                                           training=True)
                # Each micro-batch's loss is a mean-like value; the step's loss is their mean.
                scaled = model.optimizer.scale_loss(loss / k)
            gradients = [add_gradients(a, g)
                         for a, g in zip(gradients, tape.gradient(scaled, weights))]
            step_loss += tf.cast(loss, "float32") / k
            # Metrics are per-replica state (no collective): a micro-batch whose own loss is
            # non-finite stays out of them.
            tf.cond(tf.math.is_finite(tf.cast(loss, "float32")),
                    lambda: _update_metrics(model, xm, ym, y_pred, wm), lambda: tf.constant(False))
    finally:
        _state.step = previous
    gated = not isinstance(model.optimizer, keras_loss_scale_optimizer())
    squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(getattr(g, "values", g), "float32")))
                        for g in gradients if g is not None] or [tf.constant(0.0)])
    # one all-reduce: every replica sees the same global loss and decides the same
    squares, global_loss = tf.unstack(all_reduce_sum(tf.stack([squares, step_loss])))
    finite = tf.math.logical_and(tf.math.is_finite(squares), tf.math.is_finite(global_loss))
    if not gated:  # the loss scaler skips (and rescales) on its own
        finite = tf.constant(True)
    tf.cond(finite, lambda: _track_loss(model, unscale_loss_for_distribution(step_loss), rows),
            lambda: tf.constant(False))
    if gated:
        apply_if_finite(model.optimizer, gradients, weights, finite)
    else:
        model.optimizer.apply(gradients, weights)
    logs = dict(model.get_metrics_result())
    logs[STEP_LOSS] = global_loss
    logs[SKIPPED] = 1.0 - tf.cast(finite, "float32")
    return logs


def _update_metrics(model, x, y, y_pred, sample_weight):
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    return tf_true()


def _track_loss(model, loss, rows):
    model._loss_tracker.update_state(loss, sample_weight=rows)
    return tf_true()


def tf_true():
    import tensorflow as tf
    return tf.constant(True)


def keras_loss_scale_optimizer():
    import keras
    return keras.optimizers.LossScaleOptimizer


def apply_if_finite(optimizer, gradients, variables, finite):
    """``optimizer.apply(gradients, variables)`` when ``finite`` (a boolean every replica
    agrees on), else nothing: the weights, the optimizer's slots and its step counter stay as
    they are. Runs in the replica context; the decision is taken in the cross-replica context,
    since an optimizer's update calls ``merge_call``, which a ``tf.cond`` branch in the replica
    context may not."""
    import tensorflow as tf

    def skip():
        return tf.constant(False)

    def decide(distribution, gradients, finite):
        flag = distribution.experimental_local_results(finite)[0]

        def update():
            distribution.extended.call_for_each_replica(optimizer.apply,
                                                        args=(gradients, variables))
            return tf.constant(True)

        return tf.cond(flag, update, skip)

    context = tf.distribute.get_replica_context()
    if context is None:
        raise RuntimeError("apply_if_finite runs in a replica context (inside strategy.run)")
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
    return context.merge_call(decide, args=(gradients, finite))


def add_gradients(total, gradient):
    """``total + gradient``, where sparse gradients (``IndexedSlices``, from embedding lookups)
    are concatenated: exactly the slices one big batch gives, which optimizers treat row by
    row (Adam squares each slice before summing them)."""
    import tensorflow as tf
    if total is None or gradient is None:
        return gradient if total is None else total
    if isinstance(total, tf.IndexedSlices) and isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([total.values, gradient.values], 0),
                                tf.concat([total.indices, gradient.indices], 0),
                                total.dense_shape)
    return tf.convert_to_tensor(total) + tf.convert_to_tensor(gradient)


install_train_step = install  # the name ``kplm`` exports
