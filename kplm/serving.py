"""``kplm export``: a fine-tuned run as a SavedModel that takes raw strings.

Tokenization runs inside the graph (tensorflow-text ops), so a serving process needs only
TensorFlow and ``import tensorflow_text`` (which registers those ops) — no kplm, no Keras:

    import tensorflow as tf, tensorflow_text  # noqa: F401
    model = tf.saved_model.load("exported/sst2")
    model.signatures["serving_default"](text=tf.constant(["a gripping , funny film"]))

Each head defines its endpoint (``Head.serving_endpoint``); this module holds the export itself
and the in-graph helpers the heads share. See ``docs/serving.md``.
"""
from kplm.errors import KplmError
from kplm.outputs import EXPORT_STAMP


#: What a SavedModel directory holds: ``--overwrite`` replaces a directory holding only these.
SAVED_MODEL_NAMES = ("saved_model.pb", "variables", "assets", "fingerprint.pb",
                     "keras_metadata.pb", EXPORT_STAMP)


def export_saved_model(run_dir, output, *, echo=print, overwrite=False, stamp=None):
    """Write the fine-tuned run in ``run_dir`` as a SavedModel directory ``output``, complete or
    not at all (``kplm.outputs.atomic_output``: checked first, written under a temporary name,
    renamed; ``overwrite`` replaces a previous SavedModel there, never anything else). A model
    with a non-finite weight is refused. Returns the signature's input names.

    Example:
        export_saved_model("runs/sst2_classification", "exported/sst2")
    """
    import keras

    from kplm.finite import require_finite
    from kplm.outputs import atomic_output, check_output
    from kplm.runs import FinetunedRun
    rule = dict(what="--output", overwrite=overwrite, inputs=[run_dir], names=SAVED_MODEL_NAMES)
    check_output(output, **rule)
    run = FinetunedRun(run_dir)
    several = getattr(run.head, "serving_endpoints", None)
    endpoint = getattr(run.head, "serving_endpoint", None)
    if several is None and endpoint is None:
        raise KplmError(f"{run_dir}: head '{run.head.name}' defines no serving endpoint")
    require_finite(run.model, output)
    layer = run.tokenizer.build()
    layer(["warm up"])  # a keras_hub tokenizer must run once before it can be tracked
    if several is not None:
        endpoints = several(run.model, run.tokenizer, run.sequence_length)
    else:
        endpoints = {"serving_default": endpoint(run.model, run.tokenizer, run.sequence_length)}
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    archive.track(layer)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    with atomic_output(output, **rule, stamp=stamp) as tmp:
        archive.write_out(tmp, verbose=False)
    names = [spec.name for spec in endpoints["serving_default"][1]]
    if echo:
        shown = ", ".join(f"{n}({', '.join(spec.name for spec in sig)})"
                          for n, (_, sig) in endpoints.items())
        echo(f"exported {run_dir} ({run.head.name}) to {output}: {shown}")
    return names


def string_input(name):
    """A ``[batch]`` string ``TensorSpec`` named ``name``."""
    import tensorflow as tf
    return tf.TensorSpec([None], tf.string, name=name)


def char_offsets(text, byte_offsets):
    """Character offsets of ``byte_offsets`` (ragged ``[batch, (n)]`` int64, positions on a
    character boundary or at the end) in the UTF-8 strings ``text`` ``[batch]``."""
    import tensorflow as tf
    _, starts = tf.strings.unicode_decode_with_offsets(text, "UTF-8", errors="replace")
    big = tf.int64.max
    dense_starts = starts.to_tensor(default_value=big)
    dense_offsets = tf.cast(byte_offsets, tf.int64).to_tensor(default_value=0)
    found = tf.searchsorted(dense_starts, dense_offsets, side="left")
    return tf.RaggedTensor.from_tensor(tf.cast(found, tf.int64), lengths=byte_offsets.row_lengths())


def piece_char_lengths(tokens):
    """Characters of the text each vocabulary token stands for (``##`` stripped), as a
    constant vector indexed by token id."""
    import tensorflow as tf
    return tf.constant([len(t[2:]) if t.startswith("##") else len(t) for t in tokens], tf.int64)


def words_to_pieces(tokenizer, words):
    """Word pieces of each word (``words`` a 1-D string tensor): ragged ``[words, (pieces)]``,
    with a word the tokenizer drops entirely (control characters only) as ``[UNK]``."""
    import tensorflow as tf
    pieces = tokenizer.build()(words)
    if not isinstance(pieces, tf.RaggedTensor):
        pieces = tf.RaggedTensor.from_tensor(pieces)
    pieces = tf.cast(pieces, tf.int64)
    empty = tf.cast(pieces.row_lengths() == 0, tf.int64)
    unk = tf.cast(tokenizer.special_id("unk"), tf.int64)
    return tf.concat([pieces, tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(empty)], unk), empty)], axis=1)

