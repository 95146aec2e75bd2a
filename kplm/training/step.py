"""One training step, as kplm runs it: forward, losses normalised by the global target count,
accumulation, one all-reduce, clipping, the non-finite gate, apply.

A language-model loss is a mean over target tokens, and batches hold different numbers of
them. Under ``MirroredStrategy`` each replica dividing by its own token count gives a mean of
means, not the mean (measured: 7.038 against 6.990 after 20 steps on 2 replicas);
accumulating micro-batch means has the same flaw. So the step, not the loss, normalises.

The models keep plain Keras losses. A model says what its loss is made of through two
optional methods (both public, both pure functions of their arguments):

* ``loss_terms(x, y, y_pred, sample_weight) -> {name: (weight, mean)}``: each term's mean over
  this batch's own targets, and its weight in the total (``Pretrainer``: one term per objective;
  ELECTRA: generator and discriminator);
* ``target_counts(x, y, sample_weight) -> {name: count}``: the number of targets each term's
  mean is over, known before the forward pass (it comes from the data).

A model without ``loss_terms`` has one term: its compiled loss. When that loss averages over
the sample weights (``reduction="mean_with_sample_weight"``, as kplm's ``TokenLoss``), the
count is the sum of the sample weights; otherwise the term is Keras' own mean over rows.

The step sums the counts over the micro-batches and replicas (one all-reduce, before the
forward pass), and each micro-batch's term contributes ``mean * count / global_count``: the
contributions of all micro-batches and replicas add up to the mean over the global batch,
exactly. k micro-batches of b rows give the same loss, gradients and update as one batch of
k*b rows, and two replicas give what one device gives.

Then the step's losses and squared gradient norms go through one all-reduce; with
``clip_norm`` the norm of the gradients summed over the replicas is computed (one more
all-reduce, on several replicas) and each replica's gradients are scaled by the same factor;
and the non-finite gate decides. The optimizer sums the replicas' gradients as Keras does.
With clipping, sparse gradients (embedding lookups) are made dense first, as Keras' own
clipping makes them; without, they stay sparse. When the norm or the loss is NaN or infinite, the update is skipped in the cross-replica
context (``merge_call`` + ``tf.cond``: an optimizer's update may not run inside a replica-context
``cond``), so weights, optimizer slots and ``iterations`` (Adam's bias correction, the
learning-rate schedule) stay as they were. Every replica reaches the same decision because it
reads the same all-reduced values. Under a ``LossScaleOptimizer`` (``mixed_float16``) the loss
scaler's own skip-and-rescale applies instead.

``TrainStep(model, ...).run(batches, n)`` runs ``n`` such steps in one ``tf.function`` call and
returns each step's own loss, terms, gradient norm and whether it was skipped.
"""
import keras
import tensorflow as tf


class StepResult:
    """What ``TrainStep.run`` returns for its ``n`` steps, as numpy arrays of length ``n``:
    ``loss`` (each step's global mean loss), ``skipped`` (True where the gate kept the weights),
    ``grad_norm`` (the global gradient norm, before clipping) and ``terms`` ({name: means})."""

    def __init__(self, loss, skipped, grad_norm, terms):
        self.loss, self.skipped, self.grad_norm, self.terms = loss, skipped, grad_norm, terms

    def __len__(self):
        return len(self.loss)


def replica_slice(batch):
    """This replica's rows of a global batch (inside ``strategy.run``): replica ``i`` of ``R``
    gets rows ``[i*b, (i+1)*b)``, ``b = ceil(rows / R)``; the last ones may get fewer (or none,
    for a short final validation batch). Outside a multi-replica context: the batch itself."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas == 1:
        return batch
    index = tf.cast(context.replica_id_in_sync_group, "int32")

    def part(t):
        if t is None:
            return None
        rows = tf.shape(t)[0]
        size = (rows + replicas - 1) // replicas
        start = tf.minimum(index * size, rows)
        return t[start:tf.minimum(start + size, rows)]

    return tf.nest.map_structure(part, batch)


def all_reduce_sum(value):
    """``value`` (a nested structure) summed over the replicas in sync; itself with one."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _replicas():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def _compiled_single_loss(model):
    """The model's compiled loss when it is one Keras ``Loss`` object computed by Keras' own
    ``compute_loss``, else None."""
    loss = getattr(model, "loss", None)
    if not isinstance(loss, keras.losses.Loss) or not hasattr(loss, "call"):
        return None
    if type(model).compute_loss is not keras.Model.compute_loss:
        return None
    return loss


def target_counts(model, x, y, sample_weight):
    """This replica's number of targets of each loss term (see the module docstring): the
    model's ``target_counts`` when it has one; the sum of the sample weights for a compiled
    loss that averages over them; else none (terms averaged over rows)."""
    if hasattr(model, "target_counts"):
        return {k: tf.cast(v, "float32") for k, v in model.target_counts(x, y, sample_weight)
                .items()}
    loss = _compiled_single_loss(model)
    if (loss is not None and getattr(loss, "reduction", None) == "mean_with_sample_weight"
            and sample_weight is not None and not isinstance(sample_weight, (dict, list, tuple))
            and not isinstance(y, (dict, list, tuple))):
        from kplm.models.token_loss import weighted_count
        return {"loss": weighted_count(sample_weight, y)}
    return {}


def loss_terms(model, x, y, y_pred, sample_weight):
    """``{name: (weight, mean)}``: each term of the model's loss as a mean over this replica's
    own targets (not divided by the number of replicas)."""
    if hasattr(model, "loss_terms"):
        return dict(model.loss_terms(x, y, y_pred, sample_weight))
    loss = _compiled_single_loss(model)
    if loss is not None and "loss" in target_counts(model, x, y, sample_weight):
        from kplm.models.token_loss import weighted_mean
        return {"loss": (1.0, weighted_mean(loss, y, y_pred, sample_weight))}  # as counted
    if loss is not None:
        value = tf.cast(loss(y, y_pred, sample_weight), "float32")
        return {"loss": (1.0, value * _replicas())}  # Keras' losses divide by the replicas
    value = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=True)
    return {"loss": (1.0, tf.cast(value, "float32") * _replicas())}


def _regularization(model):
    extra = [tf.cast(v, "float32") for v in model.losses]
    if not extra or not (hasattr(model, "loss_terms") or _compiled_single_loss(model)):
        return None  # compute_loss already added them
    return tf.add_n(extra)


class TrainStep:
    """kplm's train step for a compiled ``model`` under ``strategy``.

    Args:
        model: a compiled Keras model (its optimizer, loss or ``loss_terms``, metrics).
        strategy: the ``tf.distribute`` strategy the model's variables were created under.
        accumulation_steps: int. Micro-batches per step; each replica's rows must split evenly.
        clip_norm: float or None. Clip the global gradient to this norm.
        jit_compile: bool. Compile the per-replica step with XLA.

    Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> step = TrainStep(model, tf.distribute.get_strategy(), accumulation_steps=2)
    >>> ds = tf.data.Dataset.from_tensors((np.ones((4, 3), "float32"), np.zeros((4, 2),
    ...                                    "float32"))).repeat()
    >>> step.build(ds)
    >>> result = step.run(iter(ds), 3)
    >>> int(model.optimizer.iterations), len(result), bool(result.skipped.any())
    (3, 3, False)
    >>> nan = tf.data.Dataset.from_tensors((np.ones((4, 3), "float32"),
    ...                                     np.full((4, 2), np.nan, "float32"))).repeat()
    >>> result = step.run(iter(nan), 1)  # a NaN target: the update is skipped
    >>> int(model.optimizer.iterations), bool(result.skipped[0])
    (3, True)
    """

    def __init__(self, model, strategy, accumulation_steps=1, clip_norm=None, jit_compile=False):
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) \
                or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an integer >= 1, "
                             f"got {accumulation_steps!r}")
        self.model, self.strategy = model, strategy
        self.k, self.clip_norm, self.jit_compile = accumulation_steps, clip_norm, jit_compile
        self.term_names, self.term_weights = None, {}
        self._function = self._evaluate = None

    # --- building ------------------------------------------------------------------------------
    def build(self, dataset):
        """Create the optimizer's slots and the metrics' variables before the first step, in
        the strategy's scope (from the first batch of ``dataset``, read by an iterator of its
        own: the run's position does not move), and learn the names of the loss terms."""
        model = self.model
        found = {}
        sample = next(iter(dataset.take(1)))

        def trace(batch):  # in a graph, as fit() builds: some layers only autocast there
            x, y, w = keras.utils.unpack_x_y_sample_weight(batch)
            y_pred = model(x, training=False)
            if y is not None:
                found.update(loss_terms(model, x, y, y_pred, w))
                model.compute_metrics(x, y, y_pred, w)
            return tf.constant(0)

        with self.strategy.scope():
            model.optimizer.build(model.trainable_variables)
            tf.function(trace)(sample)
        self.term_names = sorted(found)
        self.term_weights = {n: float(weight) for n, (weight, _) in found.items()}
        model.reset_metrics()

    # --- one step on one replica -----------------------------------------------------------------
    def _replica_step(self, batch):
        model, k = self.model, self.k
        optimizer = model.optimizer
        x, y, w = keras.utils.unpack_x_y_sample_weight(replica_slice(batch))
        rows = tf.shape(tf.nest.flatten(x)[0])[0]
        if k > 1:
            tf.debugging.assert_equal(rows % k, 0, message=(
                "gradient accumulation: each replica's batch must split into micro-batches "
                "evenly"))
        size = rows // k

        def micro(i):
            if k == 1:
                return x, y, w
            return tf.nest.map_structure(lambda t: None if t is None else t[i * size:(i + 1) * size],
                                         (x, y, w))

        parts = [micro(i) for i in range(k)]
        counts = [target_counts(model, *part) for part in parts]
        names = sorted(counts[0])
        global_counts = {}
        if names:  # one all-reduce of every term's count over micro-batches and replicas
            total = all_reduce_sum(tf.stack([tf.add_n([c[n] for c in counts]) for n in names]))
            global_counts = {n: total[j] for j, n in enumerate(names)}
        replicas = _replicas()
        weights = model.trainable_weights
        metrics_before = metric_state(model)
        gradients = [None] * len(weights)
        step_loss = tf.constant(0.0)
        shares = {}
        for i, (xm, ym, wm) in enumerate(parts):
            # the previous micro-batch's gradients first: k forward passes at once would spend
            # the memory accumulation saves
            with tf.control_dependencies([getattr(g, "values", g) for g in gradients
                                          if g is not None]):
                xm, ym, wm = tf.nest.map_structure(
                    lambda t: None if t is None else tf.identity(t), (xm, ym, wm))
            with tf.GradientTape() as tape:
                y_pred = model(xm, training=True)
                loss = tf.constant(0.0)
                for name, (weight, mean) in loss_terms(model, xm, ym, y_pred, wm).items():
                    mean = tf.cast(mean, "float32")
                    if name in global_counts:
                        share = tf.math.divide_no_nan(mean * counts[i][name], global_counts[name])
                    else:
                        share = mean / (replicas * k)
                    shares[name] = shares.get(name, 0.0) + share
                    loss += tf.cast(weight, "float32") * share
                extra = _regularization(model)
                if extra is not None:
                    loss += extra / (replicas * k)
                scaled = optimizer.scale_loss(loss)
            gradients = [add_gradients(a, g)
                         for a, g in zip(gradients, tape.gradient(scaled, weights))]
            step_loss += loss
            model.compute_metrics(xm, ym, y_pred, wm)
        # The global norm as Keras and TensorFlow define it (``clip_by_global_norm``): a sparse
        # gradient (an embedding lookup's IndexedSlices) counts the squares of its slices, so the
        # parts of several micro-batches and replicas simply add up.
        sparse_squares = tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(g.values, "float32"))) for g in gradients
             if isinstance(g, tf.IndexedSlices)] or [tf.constant(0.0)])
        # With clipping, sparse gradients become dense, as Keras' own clipping makes them:
        # Adam's moments then see each row's summed gradient and every row's moments decay.
        # Without, they stay sparse (Adam updates the rows seen: much less work for a large
        # vocabulary), as in Keras.
        dense = [not isinstance(g, tf.IndexedSlices) for g in gradients]
        densify = tf.convert_to_tensor if self.clip_norm else (lambda g: g)
        pairs = [(densify(g), v, d) for g, v, d in zip(gradients, weights, dense)
                 if g is not None]
        gradients, variables = [g for g, _, _ in pairs], [v for _, v, _ in pairs]
        dense_parts = [g for g, _, d in pairs if d]
        names = sorted(shares)
        local_squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(getattr(g, "values", g),
                                                                  "float32")))
                                  for g in gradients] or [tf.constant(0.0)])
        # one all-reduce of the scalars: the step's loss, its terms, the squared norms
        scalars = all_reduce_sum(tf.stack([step_loss, local_squares, sparse_squares]
                                          + [shares[n] for n in names]))
        global_loss, squares, sparse_squares = scalars[0], scalars[1], scalars[2]
        terms = {n: scalars[j + 3] for j, n in enumerate(names)}

        def dense_squares(parts):
            return tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, "float32"))) for g in parts]
                            or [tf.constant(0.0)])

        if replicas == 1:
            norm = tf.sqrt(dense_squares(dense_parts) + sparse_squares)
        elif self.clip_norm:  # the dense gradients summed over the replicas: clipping needs it
            norm = tf.sqrt(dense_squares(all_reduce_sum(dense_parts)) + sparse_squares)
        else:  # not computed (it costs an all-reduce of the gradients); the gate reads squares
            norm = tf.constant(-1.0)
        scale = getattr(optimizer, "dynamic_scale", None)
        unscale = 1.0 if scale is None else tf.cast(scale, "float32")
        norm_true = tf.where(norm >= 0, norm / unscale, norm)
        finite = tf.logical_and(tf.math.is_finite(squares), tf.math.is_finite(global_loss))
        if self.clip_norm:
            # each replica scales its own gradients: Keras' optimizer sums them
            factor = tf.where(tf.logical_and(finite, norm_true > self.clip_norm),
                              self.clip_norm / tf.maximum(norm_true, 1e-30), 1.0)
            gradients = [_multiply(g, factor) for g in gradients]
        # a skipped step leaves no trace in the metrics either (a loss-scaled step whose
        # gradients overflowed is skipped by the scaler, its metrics are sound)
        restore_metrics_unless(model, metrics_before, finite if scale is None
                               else tf.math.is_finite(global_loss))
        if scale is not None:
            optimizer.apply(gradients, variables)
            skipped = tf.constant(False)  # the loss scaler skips and rescales on its own
        else:
            _apply_in_cross_replica(optimizer, gradients, variables, finite)
            skipped = tf.logical_not(finite)
        return {"loss": global_loss, "skipped": skipped, "grad_norm": norm_true, "terms": terms}

    # --- n steps in one call -------------------------------------------------------------------
    def _make_function(self):
        replica_step = self._replica_step
        if self.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)
        strategy = self.strategy

        def one(batch):
            out = strategy.run(replica_step, args=(batch,))
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], out)

        def run(iterator, n):
            losses = tf.TensorArray(tf.float32, size=n)
            skipped = tf.TensorArray(tf.bool, size=n)
            norms = tf.TensorArray(tf.float32, size=n)
            terms = {name: tf.TensorArray(tf.float32, size=n) for name in self.term_names or ()}
            for i in tf.range(n):
                out = one(next(iterator))
                losses = losses.write(i, out["loss"])
                skipped = skipped.write(i, out["skipped"])
                norms = norms.write(i, out["grad_norm"])
                terms = {name: ta.write(i, out["terms"][name]) for name, ta in terms.items()}
            return (losses.stack(), skipped.stack(), norms.stack(),
                    {name: ta.stack() for name, ta in terms.items()})

        return tf.function(run)

    def evaluate(self, dataset):
        """The loss (exact mean over every target of ``dataset``), each term's mean and the
        compiled metrics over a finite dataset of global batches: ``(loss, terms, metrics)``."""
        model, strategy = self.model, self.strategy
        if self._evaluate is None:
            weights = self.term_weights

            def one(batch):
                out = strategy.run(evaluation_sums, args=(model, batch, weights))
                return tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], out)

            self._evaluate = tf.function(one, reduce_retracing=True)
        model.reset_metrics()
        totals = {}
        for batch in dataset:
            for name, value in self._evaluate(batch).items():
                value = value.numpy().astype("float64")
                totals[name] = totals.get(name, 0.0) + value
        loss, terms = loss_of(totals, self.term_weights)
        metrics = metric_values(model)
        model.reset_metrics()
        return loss, terms, metrics

    def run(self, iterator, n):
        """Run ``n`` steps reading ``iterator`` (global batches; a distributed iterator under a
        TPU strategy); returns a ``StepResult``."""
        if self._function is None:
            self._function = self._make_function()
        losses, skipped, norms, terms = self._function(iterator, tf.constant(n, "int32"))
        return StepResult(losses.numpy(), skipped.numpy(), norms.numpy(),
                          {k: v.numpy() for k, v in terms.items()})


def _multiply(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * tf.cast(factor, gradient.values.dtype),
                                gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def metric_state(model):
    """The current values of ``model``'s metric variables, read in a ``tf.function`` before
    any later update of them (ops on one variable run in program order there)."""
    return [tf.identity(v.value) for v in model.metrics_variables]


def restore_metrics_unless(model, state, keep):
    """Put ``model``'s metric variables back to ``state`` (from ``metric_state``) unless
    ``keep`` (a boolean tensor).

    The step updates the metrics unconditionally and undoes a skipped step's update here,
    rather than updating them inside a ``tf.cond``: in a branch, the metrics' ops cannot be
    merged with the loss's identical ones by the graph optimizer, and keras-hub's Perplexity
    recomputes the cross-entropy over the whole vocabulary, a second softmax that cost ~20% of
    a tiny BERT's step (measured with the TF profiler).
    """
    def restore():
        for variable, value in zip(model.metrics_variables, state):
            variable.assign(value)
        return tf.constant(False)

    return tf.cond(keep, lambda: tf.constant(True), restore)


def _apply_in_cross_replica(optimizer, gradients, variables, finite):
    """``optimizer.apply(gradients, variables)`` on every replica when ``finite`` (a boolean
    every replica agrees on), else nothing. The decision is taken in the cross-replica context
    (``merge_call``): an optimizer's update calls ``merge_call`` itself, which a ``tf.cond``
    branch in the replica context may not. Keras' optimizers sum the replicas' gradients, so
    ``gradients`` are each replica's share."""
    def decide(distribution, gradients, finite):
        flag = distribution.experimental_local_results(finite)[0]

        def update():
            distribution.extended.call_for_each_replica(optimizer.apply,
                                                        args=(gradients, variables))
            return tf.constant(True)

        return tf.cond(flag, update, lambda: tf.constant(False))

    context = tf.distribute.get_replica_context()
    if context is None:
        raise RuntimeError("the update runs in a replica context (inside strategy.run)")
    return context.merge_call(decide, args=(gradients, finite))


def add_gradients(total, gradient):
    """``total + gradient``, where sparse gradients (``IndexedSlices``, from embedding lookups)
    are concatenated: exactly the slices one big batch gives, which optimizers treat row by
    row (Adam squares each slice before summing them).

    Example:
    >>> import tensorflow as tf
    >>> float(add_gradients(tf.constant(1.0), tf.constant(2.0)))
    3.0
    """
    if total is None or gradient is None:
        return gradient if total is None else total
    if isinstance(total, tf.IndexedSlices) and isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([total.values, gradient.values], 0),
                                tf.concat([total.indices, gradient.indices], 0),
                                total.dense_shape)
    return tf.convert_to_tensor(total) + tf.convert_to_tensor(gradient)


def evaluation_sums(model, batch, weights):
    """One validation batch on this replica: ``{name: [sum, count]}`` of each loss term summed
    over the replicas (``count``: its targets; rows for a term averaged over rows), each term's
    weight put in ``weights`` (a dict), and the metrics updated. Runs inside ``strategy.run``."""
    x, y, w = keras.utils.unpack_x_y_sample_weight(replica_slice(batch))
    rows = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], "float32")
    counts = target_counts(model, x, y, w)
    y_pred = model(x, training=False)
    out = {}
    for name, (weight, mean) in loss_terms(model, x, y, y_pred, w).items():
        count = counts.get(name, rows)
        weights[name] = weight
        out[name] = tf.stack([tf.math.multiply_no_nan(tf.cast(mean, "float32"), count), count])
    model.compute_metrics(x, y, y_pred, w)
    return all_reduce_sum(out)


def loss_of(sums, weights):
    """The mean loss from accumulated ``{name: (sum, count)}`` and the terms' ``weights``, and
    each term's mean.

    Example:
    >>> loss_of({"a": (6.0, 3.0), "b": (2.0, 1.0)}, {"a": 1.0, "b": 0.5})
    (3.0, {'a': 2.0, 'b': 2.0})
    """
    means = {n: (float(s) / float(c) if c else 0.0) for n, (s, c) in sums.items()}
    return float(sum(float(weights[n]) * means[n] for n in sums)), means


def metric_values(model):
    """The model's compiled metrics' current values (``get_metrics_result``), without the
    loss trackers Keras keeps (kplm's step computes the losses itself)."""
    return {k: float(v) for k, v in model.get_metrics_result().items()
            if k != "loss" and not k.endswith("_loss")}
