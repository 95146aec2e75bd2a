"""Text generation with a causal language model: strings in, strings out.

The prompt is tokenized in-graph and starts with the tokenizer's ``cls`` token (what
``causal_lm`` training puts before every document); generation stops at the ``sep`` token (the
end of a document) or at ``max_length`` tokens. Sampling is ``keras_hub.samplers``' (greedy,
top-k, top-p, beam), on the model's key/value cache unless ``use_cache=False``.

Example:
    model, tokenizer = load_generator("runs/gpt_tiny_clm")
    generate(model, tokenizer, ["the game was"], max_length=32, sampler="top_k", k=10, seed=1)
"""
import inspect
import math

from kplm.errors import ConfigError, KplmError, shown

SAMPLERS = {"greedy": "GreedySampler", "top_k": "TopKSampler", "top_p": "TopPSampler",
            "beam": "BeamSampler"}


def make_sampler(sampler="greedy", **options):
    """A ``keras_hub.samplers.Sampler`` by kplm name (``greedy``, ``top_k``, ``top_p``,
    ``beam``) and its keyword options (``k``, ``p``, ``num_beams``, ``temperature``,
    ``seed``); an option the sampler does not take is an error, except ``seed`` for the
    deterministic ones. A ``Sampler`` instance is returned as it is."""
    import keras_hub

    if isinstance(sampler, keras_hub.samplers.Sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {shown(sampler)}")
    cls = getattr(keras_hub.samplers, SAMPLERS[sampler])
    accepted = set(inspect.signature(cls.__init__).parameters) | {"temperature"}
    options = {k: v for k, v in options.items() if v is not None}
    seed = options.get("seed")
    if seed is not None and not 0 <= seed < 2 ** 31:
        raise ConfigError(f"sampler option seed must be in [0, 2**31), got {shown(seed)}")
    if "seed" not in accepted:
        options.pop("seed", None)  # greedy and beam search draw nothing
    unknown = sorted(set(options) - accepted)
    if unknown:
        flags = {"k": "k (--top-k)", "p": "p (--top-p)", "num_beams": "num_beams (--num-beams)"}
        raise ConfigError(f"sampler {shown(sampler)} takes no option "
                          f"{', '.join(flags.get(u, u) for u in unknown)}")
    for key, ok, rule in (("k", lambda v: v >= 1, ">= 1"), ("num_beams", lambda v: v >= 1, ">= 1"),
                          ("p", lambda v: 0 < v <= 1, "in (0, 1]"),
                          ("temperature", lambda v: 0 < v < math.inf, "> 0 and finite")):
        if key in options and not ok(options[key]):
            raise ConfigError(f"sampler option {key} must be {rule}, got {shown(options[key])}")
    return cls(**options)


def use_sampler(model, sampler, use_cache, options):
    """Give ``model`` the sampler, keeping its traced generate function when only the seed
    changed since the last call (tracing costs seconds); a seed restarts the random stream, so
    the same seed gives the same tokens every call."""
    import json
    import random

    import numpy as np

    options = {k: v for k, v in options.items() if v is not None}
    seed = options.pop("seed", None)
    key = None
    if isinstance(sampler, str):
        key = json.dumps([sampler, options, bool(use_cache)], sort_keys=True)
    if key is None or getattr(model, "_generation_key", None) != key:
        model.set_sampler(make_sampler(sampler, seed=seed, **options), use_cache=use_cache)
        model._generation_key = key
    for generator in getattr(model.sampler, "_seed_generators", []):
        value = seed if seed is not None else random.randrange(1, 2**31)
        generator.state.assign(np.array([value, 0], dtype=generator.state.dtype))


def any_equal(inputs, values, padding_mask):
    """True where ``inputs`` equals any of ``values`` (e.g. stop token ids) and ``padding_mask``
    is True; what the task models' ``generate_step`` uses to find generated stop tokens.

    Example:
    >>> import numpy as np
    >>> from keras import ops
    >>> mask = any_equal(np.array([[5, 2, 3, 2]]), [2, 3], np.array([[True, True, True, False]]))
    >>> ops.convert_to_numpy(mask).tolist()
    [[False, True, True, False]]
    """
    from keras import ops

    found = ops.equal(inputs, values[0])
    for value in values[1:]:
        found = ops.logical_or(found, ops.equal(inputs, value))
    return ops.logical_and(found, padding_mask)


def load_generator(run_dir):
    """The ``CausalLM`` and tokenizer of a finished ``causal_lm`` pretraining run; any other run
    directory is refused in one line saying what it is, before weights are read."""
    import os

    import kplm.models.decoder  # noqa: F401  (registers the serializable class)
    from kplm import runs
    from kplm.models.causal_lm import CausalLM

    need = "generate needs a decoder run (objective causal_lm)"
    config_path = os.path.join(run_dir, runs.BACKBONE_CONFIG)
    if not os.path.exists(config_path):
        if os.path.exists(os.path.join(run_dir, "head.json")):
            raise KplmError(f"{run_dir}: a fine-tuned run (head.json); {need}")
        raise KplmError(f"{run_dir}: no saved backbone ({runs.BACKBONE_CONFIG}); {need}")
    backbone = runs.rebuild(runs.read_json(config_path, "a saved backbone config"), config_path,
                            "backbone")
    family = getattr(backbone, "family", "encoder")
    if family != "decoder":
        trained = _objectives(os.path.join(run_dir, runs.CONFIG))
        raise KplmError(f"{run_dir}: a pretraining run of an {family.replace('_', '-')} backbone "
                        f"({type(backbone).__name__}{trained}); {need}")
    runs.load_weights(backbone, os.path.join(run_dir, runs.BACKBONE_WEIGHTS), "backbone weights")
    return CausalLM(backbone), runs.load_tokenizer(run_dir)


def _objectives(config_path):
    """``", objective masked_lm"`` as a run's ``config.yaml`` says, or ``""`` if it cannot."""
    from kplm.config import load_yaml
    try:
        config = load_yaml(config_path)
    except KplmError:
        return ""
    sections = config.get("objectives") or [config.get("objective")]
    names = [s.get("name") if isinstance(s, dict) else s for s in sections
             if isinstance(sections, list)]
    names = [n for n in names if isinstance(n, str)]
    return f", objective {' + '.join(names)}" if names else ""


def encode_prompts(tokenizer, prompts, max_length):
    """``{"token_ids", "padding_mask"}`` int32 ``[len(prompts), max_length]``: ``[CLS]`` then
    each prompt's tokens, padded; tokenized in a TensorFlow graph. Returns also the numbers of
    prompt tokens (with ``[CLS]``)."""
    import keras_hub
    import tensorflow as tf

    layer = tokenizer.build()
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=max_length, start_value=tokenizer.special_id("cls"),
        pad_value=tokenizer.special_id("pad"), return_padding_mask=True)

    @tf.function
    def encode(strings):
        tokens = layer(strings)
        token_ids, padding_mask = packer(tokens)
        return token_ids, tf.cast(padding_mask, tf.int32), tokens.row_lengths() + 1

    token_ids, padding_mask, lengths = encode(tf.constant(list(prompts), tf.string))
    lengths = lengths.numpy().tolist()
    for i, n in enumerate(lengths):
        if n >= max_length:
            raise KplmError(f"prompt {i + 1} has {n} tokens with [CLS]; max_length "
                            f"{max_length} leaves no room to generate")
    return {"token_ids": token_ids.numpy(), "padding_mask": padding_mask.numpy()}, lengths


def check_sampler_size(backbone, options, *, rows, max_length, memory=None):
    """Refuse (``ConfigError``, before any work) a ``k`` or ``num_beams`` above the vocabulary
    size, and beams whose key/value cache for ``rows`` prompts at a time would not fit in half
    of ``memory`` bytes (default: this machine's; a typo of ``--num-beams`` would otherwise
    fill it)."""
    vocabulary = getattr(backbone, "vocabulary_size", None)
    for key, flag in (("k", "--top-k"), ("num_beams", "--num-beams")):
        value = options.get(key)
        if vocabulary and isinstance(value, int) and value > vocabulary:
            raise ConfigError(f"sampler option {key} ({flag}) must be at most the vocabulary "
                              f"size ({vocabulary:,}), got {value:,}")
    beams = options.get("num_beams")
    layers, width = getattr(backbone, "num_layers", None), getattr(backbone, "hidden_dim", None)
    if not isinstance(beams, int) or not layers or not width:
        return
    from kplm.training.distribute import host_memory_bytes
    need = rows * beams * (layers * 2 * max_length * width + 2 * (vocabulary or 0)) * 4
    memory = memory or host_memory_bytes()
    if memory and need > memory / 2:
        raise ConfigError(f"sampler option num_beams (--num-beams) {beams:,} would hold about "
                          f"{need / 2**30:.1f} GiB of decoder cache for {rows} prompt(s) at a "
                          f"time, more than half of this machine's {memory / 2**30:.1f} GiB; "
                          "use fewer beams")


def generate_ids(model, tokenizer, prompts, *, max_length, sampler="greedy", use_cache=True,
                 stop=True, batch_size=32, **sampler_options):
    """Token ids of the generations: ``{"token_ids", "padding_mask", "prompt_lengths"}`` numpy
    arrays (the mask is 1 on the prompt and generated tokens up to and including the first new
    ``[SEP]``). ``stop=False`` fills every row to ``max_length``."""
    import numpy as np

    if not prompts:
        raise KplmError("no prompts to generate from")
    limit = model.backbone.sequence_length
    if not 1 < max_length <= limit:
        raise ConfigError(f"max_length must be within [2, {limit}] (the backbone's "
                          f"sequence_length), got {max_length}")
    check_sampler_size(model.backbone, sampler_options, rows=min(batch_size, len(prompts)),
                       max_length=max_length)
    use_sampler(model, sampler, use_cache, sampler_options)
    inputs, lengths = encode_prompts(tokenizer, prompts, max_length)
    stop_ids = [tokenizer.special_id("sep")] if stop else None
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in inputs.items()}
        out = model.generate(batch, stop_token_ids=stop_ids)
        outputs.append({k: np.asarray(v) for k, v in out.items()})
    return {"token_ids": np.concatenate([o["token_ids"] for o in outputs]),
            "padding_mask": np.concatenate([o["padding_mask"] for o in outputs]).astype("int32"),
            "prompt_lengths": np.asarray(lengths)}


def decode(tokenizer, token_ids, padding_mask, start=None):
    """Strings from generated ids: the masked-in tokens from ``start`` (per row; default 0),
    special tokens removed, detokenized."""
    import tensorflow as tf

    drop = {tokenizer.special_id(r) for r in ("cls", "sep", "pad")}
    rows = []
    for i, (ids, mask) in enumerate(zip(token_ids.tolist(), padding_mask.tolist())):
        begin = 0 if start is None else int(start[i])
        rows.append([t for t, m in zip(ids[begin:], mask[begin:]) if m and t not in drop])
    flat = tf.constant([t for row in rows for t in row], tf.int32)
    ragged = tf.RaggedTensor.from_row_lengths(flat, [len(r) for r in rows])
    texts = tokenizer.build().detokenize(ragged)
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]


def texts_and_completions(tokenizer, out):
    """``(texts, completions)`` of ``generate_ids``' output: each whole text, and what follows
    its prompt there. A continuation that starts inside the prompt's last word (a ``##`` piece)
    continues that word: the completion is the rest of the text, not a piece shown as ``##us``.
    """
    import numpy as np
    texts = decode(tokenizer, out["token_ids"], out["padding_mask"])
    positions = np.arange(out["token_ids"].shape[1])[None, :]
    in_prompt = out["padding_mask"] * (positions < np.asarray(out["prompt_lengths"])[:, None])
    prompts = decode(tokenizer, out["token_ids"], in_prompt)
    tails = decode(tokenizer, out["token_ids"], out["padding_mask"], out["prompt_lengths"])
    completions = [text[len(prompt):].lstrip() if text.startswith(prompt) else tail
                   for text, prompt, tail in zip(texts, prompts, tails)]
    return texts, completions


def generate(model, tokenizer, prompts, *, max_length, sampler="greedy", use_cache=True,
             strip_prompt=False, batch_size=32, **sampler_options):
    """Continue each prompt of ``prompts`` (a list of strings); returns the texts (prompt
    included, as the tokenizer normalizes it, unless ``strip_prompt``).

    Args:
        model: a ``kplm.models.CausalLM`` (e.g. from ``load_generator(run_dir)``).
        tokenizer: the kplm ``Tokenizer`` it was trained with.
        max_length: int. Tokens per sequence, prompt (with ``[CLS]``) included; at most the
            backbone's ``sequence_length``.
        sampler: ``"greedy"``, ``"top_k"``, ``"top_p"``, ``"beam"`` or a
            ``keras_hub.samplers.Sampler``. Defaults to ``"greedy"``.
        use_cache: bool. Reuse keys/values of earlier positions (fast); False recomputes the
            whole prefix at every step. Same tokens either way. Defaults to True.
        strip_prompt: bool. Return only the generated continuation. Defaults to False.
        **sampler_options: ``k`` (top_k, top_p), ``p`` (top_p), ``num_beams`` (beam),
            ``temperature``, ``seed`` (top_k, top_p).
    """
    out = generate_ids(model, tokenizer, prompts, max_length=max_length, sampler=sampler,
                       use_cache=use_cache, batch_size=batch_size, **sampler_options)
    texts, completions = texts_and_completions(tokenizer, out)
    return completions if strip_prompt else texts
