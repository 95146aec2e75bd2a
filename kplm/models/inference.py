"""One batch through a model, one output row per input row, under any ``tf.distribute``
strategy."""


def batch_predictor(model):
    """A function ``x -> outputs`` (NumPy) that runs ``model`` in inference mode on one batch.

    On one replica it is Keras' ``model.predict_on_batch``. With several replicas in sync
    (``trainer.strategy: mirrored`` on several GPUs, or several workers), Keras 3's
    ``predict_on_batch`` hands every replica the whole batch and concatenates what they return,
    so each row comes back once per replica (Keras 3.15, two logical CPUs: 5 rows in, 10 out).
    There the model is called directly, in a ``tf.function`` made once per predictor: the
    batch once, with the weights the replicas share.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> predict = batch_predictor(model)
        >>> predict(np.ones((5, 3), "float32")).shape
        (5, 2)
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return model.predict_on_batch
    import keras
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(x):
        return keras.tree.map_structure(keras.ops.convert_to_numpy, call(x))
    return predict
