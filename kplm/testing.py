"""Test helpers for kplm and for plugin authors (no TensorFlow at import)."""
import contextlib
import os
import subprocess
import sys


def run_kplm(*args, env=None, cwd=None, timeout=600):
    """Run ``python -m kplm ARGS`` in a subprocess and return the ``CompletedProcess`` (text).

    Example:
        result = run_kplm("plugins", "--json")
        assert result.returncode == 0
    """
    full_env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                    **(env or {}))
    return subprocess.run([sys.executable, "-m", "kplm", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


#: The vocabulary of the tiny checkpoints: BERT's specials, then characters, pieces and words.
_TINY_WORDS = (
    "the of and to in a is was for on as by with he it that at from his an were are which "
    "this be or has had first new after its one two also who their they not her but she "
    "have been film game song season war city team world year years time music album "
    "series during between into more other all when while most later only where can "
    "united states national new york north south british known called used made became"
).split()


def tiny_vocabulary():
    """The WordPiece vocabulary of ``write_tiny_hf_checkpoint`` (deterministic)."""
    import string
    chars = list(string.ascii_lowercase + string.digits) + list(".,;:!?'\"()-@=/&%$")
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                 "[MASK]"]
    tokens += chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    seen = set(tokens)
    for word in _TINY_WORDS:
        if word not in seen:
            seen.add(word)
            tokens.append(word)
    return tokens


def tiny_byte_bpe(size):
    """A byte-level BPE vocabulary of ``size`` ids (RoBERTa's specials, printable ASCII, the
    space mark ``Ġ``, then merges spelling ``Ġword`` for common words) and its merge rules."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for code in range(33, 127):
        vocab[chr(code)] = len(vocab)
    vocab["\u0120"] = len(vocab)
    merges = []
    for word in _TINY_WORDS:
        current = "\u0120"
        for ch in word:
            merged = current + ch
            if merged not in vocab:
                if len(vocab) >= size - 1:
                    break
                vocab[merged] = len(vocab)
                merges.append(f"{current} {ch}")
            current = merged
    vocab["<mask>"] = size - 1
    return vocab, merges


def write_tiny_hf_checkpoint(directory, model_type="bert", seed=0, hidden_size=32,
                             num_layers=2, num_heads=4, intermediate_size=64, max_positions=64,
                             masked_lm_head=False, sentencepiece_model=None,
                             num_labels=None, gated=False):
    """Write a tiny random Hugging Face checkpoint (``config.json``, ``model.safetensors``,
    ``vocab.txt``, ``tokenizer_config.json``) of ``model_type`` ``bert``, ``roberta``,
    ``distilbert`` or ``gpt2`` (byte-level BPE ``vocab.json`` + ``merges.txt`` for the last two),
    ``bart`` (a ``BartModel``, RoBERTa's byte-level BPE), or ``xlm-roberta`` / ``camembert``
    (RoBERTa's weights, with ``sentencepiece_model``, a
    SentencePiece ``.model`` file, as ``sentencepiece.bpe.model`` and the vocabulary its
    fairseq layout gives). The weights come from ``numpy.random.RandomState(seed)``, so the same
    arguments give the same bytes on every machine; ``tests/reference`` holds the reference
    implementation's outputs for them. With ``masked_lm_head`` (BERT, RoBERTa, DistilBERT) it
    is the ``*ForMaskedLM`` checkpoint instead: the same encoder weights, no pooler or task
    layer, plus a random masked-LM head. With ``num_labels`` (BERT) it is a
    ``BertForSequenceClassification``: the same encoder and pooler, plus a random
    ``classifier`` layer and ``id2label`` (``LABEL_i``). Returns the config dict.

    Example:
        write_tiny_hf_checkpoint("/tmp/tiny-bert")
        encoder = kplm.pretrained.huggingface.load_encoder("/tmp/tiny-bert")
    """
    import json

    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.RandomState(seed)
    fairseq = {"xlm-roberta": "xlm_roberta", "camembert": "camembert"}.get(model_type)
    if model_type == "t5":
        if sentencepiece_model is None:
            raise ValueError("t5: pass sentencepiece_model (a SentencePiece .model)")
        from sentencepiece import sentencepiece_model_pb2
        with open(sentencepiece_model, "rb") as f:
            pieces = len(sentencepiece_model_pb2.ModelProto.FromString(f.read()).pieces)
        # the pieces, 100 sentinels, and padding rows (kplm appends <s> and <mask>)
        vocab = [None] * (pieces + 100 + 4)
    elif fairseq:
        if sentencepiece_model is None:
            raise ValueError(f"{model_type}: pass sentencepiece_model (a SentencePiece .model)")
        from sentencepiece import sentencepiece_model_pb2

        from kplm.tokenizers.fairseq import vocabulary  # no TensorFlow
        with open(sentencepiece_model, "rb") as f:
            pieces = [p.piece for p in sentencepiece_model_pb2.ModelProto.FromString(
                f.read()).pieces]
        vocab = vocabulary(pieces, fairseq)
    else:
        vocab = tiny_vocabulary()
    h, i_size, v = hidden_size, intermediate_size, len(vocab)

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ln(prefix):
        return {prefix + "weight": 1.0 + w(h, scale=0.1), prefix + "bias": w(h, scale=0.1)}

    def linear(prefix, out_dim, in_dim):
        return {prefix + "weight": w(out_dim, in_dim), prefix + "bias": w(out_dim, scale=0.1)}

    state = {}
    if model_type == "distilbert":
        prefix = "distilbert."
        config = {"model_type": "distilbert", "architectures": ["DistilBertModel"],
                  "vocab_size": v, "dim": h, "n_layers": num_layers, "n_heads": num_heads,
                  "hidden_dim": i_size, "activation": "gelu", "dropout": 0.1,
                  "attention_dropout": 0.1, "max_position_embeddings": max_positions,
                  "sinusoidal_pos_embds": False, "pad_token_id": 0}
        state[prefix + "embeddings.word_embeddings.weight"] = w(v, h)
        state[prefix + "embeddings.position_embeddings.weight"] = w(max_positions, h)
        state.update(ln(prefix + "embeddings.LayerNorm."))
        for layer in range(num_layers):
            p = f"{prefix}transformer.layer.{layer}."
            for name in ("q_lin", "k_lin", "v_lin", "out_lin"):
                state.update(linear(f"{p}attention.{name}.", h, h))
            state.update(ln(p + "sa_layer_norm."))
            state.update(linear(p + "ffn.lin1.", i_size, h))
            state.update(linear(p + "ffn.lin2.", h, i_size))
            state.update(ln(p + "output_layer_norm."))
        state.update(linear("classifier.", 2, h))  # a task layer the import must ignore
    elif model_type in ("bert", "roberta", "xlm-roberta", "camembert"):
        roberta = model_type != "bert"
        positions = max_positions + 2 if roberta else max_positions
        config = {"model_type": model_type,
                  "architectures": [{"bert": "BertModel", "roberta": "RobertaModel",
                                     "xlm-roberta": "XLMRobertaModel",
                                     "camembert": "CamembertModel"}[model_type]],
                  "vocab_size": v, "hidden_size": h, "num_hidden_layers": num_layers,
                  "num_attention_heads": num_heads, "intermediate_size": i_size,
                  "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                  "attention_probs_dropout_prob": 0.1, "max_position_embeddings": positions,
                  "type_vocab_size": 1 if roberta else 2, "layer_norm_eps": 1e-12,
                  "pad_token_id": 1 if roberta else 0, "position_embedding_type": "absolute"}
        prefix = "roberta." if roberta else ""
        state[prefix + "embeddings.word_embeddings.weight"] = w(v, h)
        state[prefix + "embeddings.position_embeddings.weight"] = w(positions, h)
        state[prefix + "embeddings.token_type_embeddings.weight"] = w(
            config["type_vocab_size"], h)
        state.update(ln(prefix + "embeddings.LayerNorm."))
        for layer in range(num_layers):
            p = f"{prefix}encoder.layer.{layer}."
            for name in ("query", "key", "value"):
                state.update(linear(f"{p}attention.self.{name}.", h, h))
            state.update(linear(p + "attention.output.dense.", h, h))
            state.update(ln(p + "attention.output.LayerNorm."))
            state.update(linear(p + "intermediate.dense.", i_size, h))
            state.update(linear(p + "output.dense.", h, i_size))
            state.update(ln(p + "output.LayerNorm."))
        state.update(linear(prefix + "pooler.dense.", h, h))
    elif model_type == "bart":
        positions = max_positions + 2  # BART's table starts two rows before position 0
        config = {"model_type": "bart", "architectures": ["BartModel"], "vocab_size": v,
                  "d_model": h, "encoder_layers": num_layers, "decoder_layers": num_layers,
                  "encoder_attention_heads": num_heads, "decoder_attention_heads": num_heads,
                  "encoder_ffn_dim": i_size, "decoder_ffn_dim": i_size,
                  "max_position_embeddings": max_positions, "activation_function": "gelu",
                  "dropout": 0.1, "attention_dropout": 0.0, "activation_dropout": 0.0,
                  "scale_embedding": False, "pad_token_id": 1, "bos_token_id": 0,
                  "eos_token_id": 2, "decoder_start_token_id": 0, "forced_eos_token_id": None,
                  "forced_bos_token_id": None, "tie_word_embeddings": True}
        state["shared.weight"] = w(v, h)
        for side in ("encoder", "decoder"):
            state[f"{side}.embed_positions.weight"] = w(positions, h)
            state.update(ln(f"{side}.layernorm_embedding."))
            for layer in range(num_layers):
                p = f"{side}.layers.{layer}."
                for attention in (("self_attn",) if side == "encoder"
                                  else ("self_attn", "encoder_attn")):
                    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                        state.update(linear(f"{p}{attention}.{proj}.", h, h))
                    state.update(ln(f"{p}{attention}_layer_norm."))
                state.update(linear(p + "fc1.", i_size, h))
                state.update(linear(p + "fc2.", h, i_size))
                state.update(ln(p + "final_layer_norm."))
    elif model_type == "t5":
        d_kv = h // num_heads
        config = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
                  "vocab_size": v, "d_model": h, "d_kv": d_kv, "d_ff": i_size,
                  "num_layers": num_layers, "num_decoder_layers": num_layers,
                  "num_heads": num_heads, "relative_attention_num_buckets": 8,
                  "relative_attention_max_distance": 20, "dropout_rate": 0.1,
                  "layer_norm_epsilon": 1e-6,
                  "feed_forward_proj": "gated-gelu" if gated else "relu",
                  "tie_word_embeddings": not gated, "pad_token_id": 0, "eos_token_id": 1,
                  "decoder_start_token_id": 0, "is_encoder_decoder": True}
        inner = num_heads * d_kv
        state["shared.weight"] = w(v, h, scale=1.0)
        for side in ("encoder", "decoder"):
            state[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = w(
                8, num_heads, scale=1.0)
            for layer in range(num_layers):
                p = f"{side}.block.{layer}.layer."
                for name in ("0.SelfAttention",) + (("1.EncDecAttention",)
                                                    if side == "decoder" else ()):
                    for proj in ("q", "k", "v"):
                        state[f"{p}{name}.{proj}.weight"] = w(inner, h)
                    state[f"{p}{name}.o.weight"] = w(h, inner)
                    state[f"{p}{name.split('.')[0]}.layer_norm.weight"] = 1.0 + w(h, scale=0.1)
                ff = f"{p}{2 if side == 'decoder' else 1}."
                for name in (("wi_0", "wi_1") if gated else ("wi",)):
                    state[f"{ff}DenseReluDense.{name}.weight"] = w(i_size, h)
                state[f"{ff}DenseReluDense.wo.weight"] = w(h, i_size)
                state[f"{ff}layer_norm.weight"] = 1.0 + w(h, scale=0.1)
            state[f"{side}.final_layer_norm.weight"] = 1.0 + w(h, scale=0.1)
        if gated:
            state["lm_head.weight"] = w(v, h)
    elif model_type == "gpt2":
        config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": v,
                  "n_embd": h, "n_layer": num_layers, "n_head": num_heads, "n_inner": i_size,
                  "n_positions": max_positions, "activation_function": "gelu_new",
                  "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
                  "attn_pdrop": 0.1, "bos_token_id": v - 1, "eos_token_id": v - 1,
                  "tie_word_embeddings": True}
        p = "transformer."
        state[p + "wte.weight"] = w(v, h)
        state[p + "wpe.weight"] = w(max_positions, h)
        for layer in range(num_layers):
            q = f"{p}h.{layer}."
            state.update(ln(q + "ln_1."))
            # GPT-2's Conv1D layers store [in, out]
            state[q + "attn.c_attn.weight"] = w(h, 3 * h)
            state[q + "attn.c_attn.bias"] = w(3 * h, scale=0.1)
            state[q + "attn.c_proj.weight"] = w(h, h)
            state[q + "attn.c_proj.bias"] = w(h, scale=0.1)
            state.update(ln(q + "ln_2."))
            state[q + "mlp.c_fc.weight"] = w(h, i_size)
            state[q + "mlp.c_fc.bias"] = w(i_size, scale=0.1)
            state[q + "mlp.c_proj.weight"] = w(i_size, h)
            state[q + "mlp.c_proj.bias"] = w(h, scale=0.1)
        state.update(ln(p + "ln_f."))
        state["lm_head.weight"] = state[p + "wte.weight"].copy()  # tied, stored twice
    else:
        raise ValueError("model_type must be bert, roberta, xlm-roberta, camembert, distilbert, "
                         "gpt2 or bart, not "
                         f"{model_type!r}")
    if num_labels is not None:
        if model_type != "bert":
            raise ValueError("num_labels: only a BERT classifier is written")
        # drawn after every other weight: the encoder's bytes are those of the plain checkpoint
        state = {"bert." + k: v for k, v in state.items()}
        state.update(linear("classifier.", num_labels, h))
        config["architectures"] = ["BertForSequenceClassification"]
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        if num_labels == 1:
            config["problem_type"] = "regression"
    if masked_lm_head:
        if model_type == "gpt2":
            raise ValueError("masked_lm_head: GPT-2 has no masked-LM head")
        # drawn after every other weight: the encoder's bytes are those of the plain checkpoint
        state = {k: v for k, v in state.items()
                 if not k.startswith(("pooler.", "roberta.pooler.", "classifier."))}
        if model_type == "bert":
            state = {"bert." + k: v for k, v in state.items()}
            state.update(linear("cls.predictions.transform.dense.", h, h))
            state.update(ln("cls.predictions.transform.LayerNorm."))
            state["cls.predictions.bias"] = w(v, scale=0.1)
        elif model_type == "roberta":
            state.update(linear("lm_head.dense.", h, h))
            state.update(ln("lm_head.layer_norm."))
            state["lm_head.bias"] = w(v, scale=0.1)
        else:
            state.update(linear("vocab_transform.", h, h))
            state.update(ln("vocab_layer_norm."))
            state["vocab_projector.bias"] = w(v, scale=0.1)
        config["architectures"] = [{"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
                                    "distilbert": "DistilBertForMaskedLM"}[model_type]]
    os.makedirs(directory, exist_ok=True)
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if model_type in ("roberta", "gpt2", "bart"):
        bpe_vocab, merges = tiny_byte_bpe(v)
        if model_type == "gpt2":  # GPT-2's one special token takes the last id
            del bpe_vocab["<mask>"]
            bpe_vocab["<|endoftext|>"] = v - 1
        with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(bpe_vocab, f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    elif fairseq or model_type == "t5":
        import shutil
        shutil.copyfile(sentencepiece_model, os.path.join(
            directory, "spiece.model" if model_type == "t5" else "sentencepiece.bpe.model"))
    else:
        with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(vocab) + "\n")
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"do_lower_case": True, "model_max_length": max_positions}, f)
    return config


def poison_weights_file(path):
    """Set the first float array of the ``.weights.h5`` file ``path`` to NaN (a damaged file,
    which kplm never writes)."""
    import h5py
    import numpy as np
    with h5py.File(path, "r+") as f:
        arrays = []
        f.visititems(lambda n, item: arrays.append(item) if isinstance(item, h5py.Dataset)
                     and item.dtype.kind == "f" else None)
        arrays[0][...] = np.nan


@contextlib.contextmanager
def registered(*plugins):
    """Load plugin modules in this process for the duration of a ``with`` block, without
    installing them: what a plugin's own tests need to run ``kplm.pretrain`` / ``finetune`` on
    its components. ``plugins`` are module names or module objects holding ``@hookimpl``
    functions. Yields the registry. A plugin that is installed as well (loaded from its entry
    point) is used as it is, and stays loaded after the block.

    Example:
        with kplm.testing.registered("kplm_electra.electra") as registry:
            assert "electra" in registry.names("objective")
            kplm.pretrain(config)
    """
    import importlib

    from kplm import plugins as plugin_core
    names = []
    try:
        for plugin in plugins:
            module = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
            name = plugin if isinstance(plugin, str) else module.__name__
            if plugin_core.add_plugin(module, name):
                names.append(name)
        yield plugin_core.get_registry()
    finally:
        for name in names:
            plugin_core.remove_plugin(name)


_SERVE = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)
model = tf.saved_model.load(sys.argv[1])
inputs = json.load(open(sys.argv[2], encoding="utf-8"))
out = model.signatures[sys.argv[4]](**{k: tf.constant(v) for k, v in inputs.items()})
def plain(value):
    value = value.numpy()
    if value.dtype == object:
        return [[x.decode("utf-8") for x in row] if hasattr(row, "__len__") and
                not isinstance(row, bytes) else row.decode("utf-8") for row in value]
    return value.tolist()
json.dump({k: plain(v) for k, v in out.items()}, open(sys.argv[3], "w", encoding="utf-8"))
"""


def serve_in_fresh_process(export_dir, inputs, timeout=300, signature="serving_default"):
    """Load the SavedModel in ``export_dir`` in a new Python process that imports only
    TensorFlow and tensorflow-text (as a serving process would), call its ``signature``
    (default ``serving_default``) with ``inputs`` (``{name: [str, ...]}``) and return its
    outputs as lists.

    Example:
        out = serve_in_fresh_process("exported/sst2", {"text": ["a fine film"]})
        out["label"]  # ['positive']
    """
    import json
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        source, result = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(source, "w", encoding="utf-8") as f:
            json.dump(inputs, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, "-c", _SERVE, export_dir, source, result,
                               signature],
                              capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"serving process failed:\n{done.stderr[-3000:]}")
        with open(result, encoding="utf-8") as f:
            return json.load(f)
