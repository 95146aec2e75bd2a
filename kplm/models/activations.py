"""Feed-forward activations of kplm's backbones, by the names their configs use."""
import keras


@keras.saving.register_keras_serializable(package="kplm")
def gelu_approximate(x):
    """GELU in GPT-2's tanh form, ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``: Keras'
    public ``gelu(x, approximate=True)`` (the function keras_hub calls ``gelu_approximate``),
    registered so a layer using it serializes by name (``kplm>gelu_approximate``).

    Example:
    >>> round(float(gelu_approximate(keras.ops.convert_to_tensor(1.0))), 4)
    0.8412
    """
    return keras.activations.gelu(x, approximate=True)


def feedforward_activation(name):
    """What a ``keras_hub`` Transformer block takes as ``activation`` for a backbone config's
    name: ``"gelu"`` (exact), ``"gelu_approximate"`` (tanh form), or any other Keras activation
    name, passed on as it is.

    Example:
    >>> feedforward_activation("gelu_approximate") is gelu_approximate
    True
    >>> feedforward_activation("relu")
    'relu'
    """
    if name == "gelu":
        return keras.activations.gelu
    if name == "gelu_approximate":
        return gelu_approximate
    return name
