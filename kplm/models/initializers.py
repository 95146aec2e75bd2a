"""Weight initializers shared by kplm's models."""
import keras


def kernel_initializer(stddev=0.02):
    """BERT's initializer: truncated normal with standard deviation 0.02."""
    return keras.initializers.TruncatedNormal(stddev=stddev)
