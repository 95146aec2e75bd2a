"""The masked-LM task model: an encoder backbone plus a tied-weight prediction head."""
import keras
import keras_hub
from keras_hub.layers import MaskedLMHead

from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class MaskedLM(keras_hub.models.MaskedLM):
    """Predicts the original token at each masked position, evaluating the vocabulary projection
    only at those positions (``keras_hub.layers.MaskedLMHead``, tied to the token embedding).

    Inputs: the backbone's inputs plus ``mask_positions`` ``[batch, max_predictions]``; output:
    logits ``[batch, max_predictions, vocabulary_size]`` (float32 under mixed precision). Compiles
    itself with a cross-entropy averaged over the real masked tokens only (sample weights mark
    padded prediction slots), masked-token accuracy and perplexity.

    Args:
        backbone: a kplm ``Encoder`` (anything with ``token_embedding`` and a
            ``sequence_output``).

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> from kplm.models.masked_lm import MaskedLM
    >>> model = MaskedLM(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16, num_heads=2,
    ...                          intermediate_dim=32, sequence_length=8))
    >>> model.compile(optimizer="adam")
    """

    def __init__(self, backbone, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.masked_lm_head = MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            intermediate_activation=keras.activations.gelu,
            layer_norm_epsilon=getattr(backbone, "layer_norm_epsilon", 1e-5),
            kernel_initializer=kernel_initializer(),
            dtype=backbone.dtype_policy,
            name="mlm_head")

        # === Functional Model ===
        inputs = {**backbone.input,
                  "mask_positions": keras.Input(shape=(None,), dtype="int32",
                                                name="mask_positions")}
        sequence = backbone(backbone.input)["sequence_output"]
        # Logits in float32 even when the backbone computes in (b)float16.
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(
            self.masked_lm_head(sequence, inputs["mask_positions"]))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto", **kwargs):
        """Like ``keras.Model.compile``, with defaults for the masked-LM loss and metrics.

        The default loss divides by the number of real masked tokens (sum of sample weights),
        not by every prediction slot: padded slots would otherwise dilute it.
        """
        from kplm.models.token_loss import compile_defaults
        optimizer, loss, weighted_metrics = compile_defaults(optimizer, loss, weighted_metrics)
        keras.Model.compile(self, optimizer=optimizer, loss=loss,
                            weighted_metrics=weighted_metrics, **kwargs)
