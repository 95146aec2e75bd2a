"""kplm-electra: the ``electra`` pretraining objective for kplm.

``kplm_electra.electra`` is the plugin module (the entry point): the objective and its hook,
without TensorFlow at import time. ``kplm_electra.pretrainer`` and ``kplm_electra.generator``
hold the Keras model and are imported only when a model is built.
"""
__version__ = "0.1.0"
