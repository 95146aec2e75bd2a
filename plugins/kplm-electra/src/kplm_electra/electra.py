"""The ``electra`` objective: ELECTRA's replaced-token detection (Clark et al. 2020).

This is the plugin module: the entry point ``electra`` in the ``kplm`` group names it, kplm
imports it at start-up and calls ``register_objectives`` at the bottom. It imports only the
``kplm`` facade; TensorFlow and Keras are imported inside ``dataset()`` and ``build_model()``, so
``kplm --help`` and ``kplm plugins`` stay fast.
"""
from typing import Literal, Optional

import kplm


class ElectraObjective(kplm.MaskedLMObjective):
    """ELECTRA pretraining: a small generator fills masked tokens in, the backbone (the
    discriminator) tells which tokens were replaced.

    The data are kplm's masked-LM batches (packed rows, ``mask_rate`` of the tokens chosen, by
    default 85 % of them turned into ``[MASK]`` and 15 % left as they are, as in ELECTRA's
    code). The generator, a masked LM ``generator_size`` times as wide as the backbone that
    shares the backbone's token, position and segment embeddings, predicts the chosen tokens; a
    token sampled from its softmax (no gradient flows through the sample) replaces each chosen
    token; the backbone then labels every token of the row as original or replaced. A sample
    equal to the original counts as original. Loss: ``generator_weight`` x the generator's
    cross-entropy over the chosen tokens + ``discriminator_weight`` x the binary cross-entropy
    over all real tokens. Metrics: ``generator_accuracy``, ``discriminator_accuracy``,
    ``replaced_share`` (replaced tokens / real tokens), ``generator_loss`` and
    ``discriminator_loss``. Only the discriminator is kept: ``kplm pretrain`` saves the backbone.

    Args:
        mask_rate: float. Share of (non-special) tokens the generator predicts. Defaults to 0.15.
        mask_token_rate: float. Share of those shown to the generator as ``[MASK]``.
            Defaults to 0.85.
        random_token_rate: float. Share shown as a random token. Defaults to 0.0.
        whole_word: bool. Choose whole words. Defaults to False.
        max_predictions: int or None. Prediction slots per row; None:
            ``ceil(mask_rate * sequence_length)``. Defaults to None.
        packing: ``"pack"`` or ``"pad"``, as for ``masked_lm``. Defaults to ``"pack"``.
        shuffle_buffer: int. Examples held for shuffling the training stream. Defaults to 10000.
        generator_size: float. The generator's width as a share of the backbone's
            ``hidden_dim`` (the paper: 1/4 to 1/2 work best), in (0, 1]. Defaults to 0.25.
        generator_hidden_dim: int or None. The generator's width; overrides
            ``generator_size``. Defaults to None.
        generator_num_layers: int or None. None: as many as the backbone. Defaults to None.
        generator_num_heads: int or None. None: the backbone's head width kept. Defaults to
            None.
        generator_intermediate_dim: int or None. None: the backbone's, scaled like the width.
            Defaults to None.
        generator_weight: float. Weight of the generator's loss. Defaults to 1.0.
        discriminator_weight: float. Weight of the discriminator's loss. Defaults to 50.0.
        temperature: float. Softmax temperature of the sampling. Defaults to 1.0.

    Example:
    >>> objective = ElectraObjective()
    >>> objective.generator_sizes(hidden_dim=256, num_layers=12, num_heads=4,
    ...                           intermediate_dim=1024)
    {'hidden_dim': 64, 'num_layers': 12, 'num_heads': 1, 'intermediate_dim': 256}
    >>> objective.families, objective.discriminator_weight, objective.tokens_per_row(128)
    (('encoder',), 50.0, 128)
    """

    #: Backbone families this objective trains (kplm refuses others before a run starts).
    families = ("encoder",)
    #: Not combinable with other objectives (``objectives: [...]``): the masked-LM parts of
    #: that protocol, inherited from ``masked_lm``, would train a plain masked LM.
    output_name = None

    def __init__(
        self,
        mask_rate: float = 0.15,
        mask_token_rate: float = 0.85,
        random_token_rate: float = 0.0,
        whole_word: bool = False,
        max_predictions: Optional[int] = None,
        packing: Literal["pack", "pad"] = "pack",
        shuffle_buffer: int = 10000,
        generator_size: float = 0.25,
        generator_hidden_dim: Optional[int] = None,
        generator_num_layers: Optional[int] = None,
        generator_num_heads: Optional[int] = None,
        generator_intermediate_dim: Optional[int] = None,
        generator_weight: float = 1.0,
        discriminator_weight: float = 50.0,
        temperature: float = 1.0,
    ):
        super().__init__(mask_rate=mask_rate, mask_token_rate=mask_token_rate,
                         random_token_rate=random_token_rate, whole_word=whole_word,
                         max_predictions=max_predictions, packing=packing,
                         shuffle_buffer=shuffle_buffer)
        if not 0.0 < generator_size <= 1.0:
            raise kplm.ConfigError(f"objective.generator_size must be in (0, 1], got "
                                   f"{generator_size}")
        for key, value in (("generator_hidden_dim", generator_hidden_dim),
                           ("generator_num_layers", generator_num_layers),
                           ("generator_num_heads", generator_num_heads),
                           ("generator_intermediate_dim", generator_intermediate_dim)):
            if value is not None and value < 1:
                raise kplm.ConfigError(f"objective.{key} must be >= 1, got {value}")
        for key, value in (("generator_weight", generator_weight),
                           ("discriminator_weight", discriminator_weight),
                           ("temperature", temperature)):
            if not value > 0:
                raise kplm.ConfigError(f"objective.{key} must be > 0, got {value}")
        self.generator_size = generator_size
        self.generator_hidden_dim = generator_hidden_dim
        self.generator_num_layers = generator_num_layers
        self.generator_num_heads = generator_num_heads
        self.generator_intermediate_dim = generator_intermediate_dim
        self.generator_weight = generator_weight
        self.discriminator_weight = discriminator_weight
        self.temperature = temperature

    def generator_sizes(self, hidden_dim, num_layers, num_heads, intermediate_dim):
        """The generator's ``hidden_dim``, ``num_layers``, ``num_heads`` and
        ``intermediate_dim`` for a backbone of the given sizes."""
        return generator_sizes(
            hidden_dim, num_layers, num_heads, intermediate_dim, size=self.generator_size,
            generator_hidden_dim=self.generator_hidden_dim,
            generator_num_layers=self.generator_num_layers,
            generator_num_heads=self.generator_num_heads,
            generator_intermediate_dim=self.generator_intermediate_dim)

    # --- data -------------------------------------------------------------------------------
    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """``masked_lm``'s ``(x, y, sample_weight)`` batches, with the slot weights also in ``x``
        (``x["mask_weights"]``): the model must know which prediction slots are real to write
        its samples into the rows."""
        masked = super().dataset(source_ds, tokenizer, batch_size=batch_size,
                                 sequence_length=sequence_length, seed=seed, training=training)
        return masked.map(lambda x, y, w: ({**x, "mask_weights": w}, y, w))

    def tokens_per_row(self, sequence_length):
        return sequence_length  # the discriminator reads every token of a row

    # --- model ------------------------------------------------------------------------------
    def build_model(self, backbone):
        """An ``ElectraPretrainer`` whose discriminator is ``backbone`` (compiles itself)."""
        for attribute in ("token_embedding", "hidden_dim", "num_layers", "num_heads",
                          "intermediate_dim"):
            if not hasattr(backbone, attribute):
                raise kplm.ConfigError(f"objective 'electra' needs an encoder backbone with "
                                       f"{attribute}, got {type(backbone).__name__}")
        from kplm_electra.pretrainer import ElectraPretrainer
        return ElectraPretrainer(
            backbone, generator_size=self.generator_size,
            generator_hidden_dim=self.generator_hidden_dim,
            generator_num_layers=self.generator_num_layers,
            generator_num_heads=self.generator_num_heads,
            generator_intermediate_dim=self.generator_intermediate_dim,
            generator_weight=self.generator_weight,
            discriminator_weight=self.discriminator_weight, temperature=self.temperature)


def generator_sizes(hidden_dim, num_layers, num_heads, intermediate_dim, *, size=0.25,
                    generator_hidden_dim=None, generator_num_layers=None,
                    generator_num_heads=None, generator_intermediate_dim=None):
    """The generator's sizes for a backbone of the given sizes (see ``ElectraObjective``):
    ``size`` x the width (or ``generator_hidden_dim``), the backbone's depth, its head width,
    and its feed-forward ratio, unless given."""
    hidden = generator_hidden_dim or max(1, round(hidden_dim * size))
    heads = generator_num_heads
    if heads is None:
        heads = max(1, hidden // max(1, hidden_dim // num_heads))
        while hidden % heads:  # the largest head count up to that which divides the width
            heads -= 1
    elif hidden % heads:
        raise kplm.ConfigError(f"objective.generator_num_heads ({heads}) must divide the "
                               f"generator's hidden_dim ({hidden})")
    return {
        "hidden_dim": hidden,
        "num_layers": generator_num_layers or num_layers,
        "num_heads": heads,
        "intermediate_dim": (generator_intermediate_dim
                             or max(1, round(intermediate_dim * hidden / hidden_dim))),
    }


@kplm.hookimpl
def register_objectives(register):
    # Configs say `objective: {name: electra, ...}`: a registry name says what, not who.
    register("electra", ElectraObjective)
