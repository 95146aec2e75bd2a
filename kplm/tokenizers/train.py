"""``kplm tokenizer train``: learn a vocabulary from a config's training data."""
import hashlib
import json

from kplm.config import check_run_keys, check_section
from kplm.errors import ConfigError


#: What ``kplm tokenizer train`` writes with the tokenizer: the digests of the config sections
#: and input files it learned from, and of what it wrote (``kplm.outputs.write_stamp``), so the
#: same command run again on its complete output has nothing to do.
TOKENIZER_STAMP = "kplm_tokenizer.json"
#: The files kplm's tokenizers save: ``overwrite`` replaces a directory holding only these.
TOKENIZER_NAMES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt",
                   "sentencepiece.model", TOKENIZER_STAMP)


def train_tokenizer(config, output, progress=True, kind=None, overwrite=False):
    """Learn the tokenizer ``config['tokenizer']`` describes from ``config['data']['train']`` and
    save it into ``output``; returns the vocabulary. Other sections of a run config are ignored,
    so the same YAML serves ``kplm pretrain`` and ``kplm tokenizer train``.

    ``output`` follows ``kplm.outputs``: checked before learning, written under a temporary name
    and renamed when complete; ``overwrite`` replaces a previous tokenizer there (a directory
    holding only ``TOKENIZER_NAMES``), never other files or the config's inputs. Without
    ``overwrite``, an ``output`` that already holds the tokenizer this config and these input
    files give (written by this function, unchanged since) is left as it is: returns None.

    ``kind`` (e.g. ``"sentencepiece"``) replaces the section's ``name``; of the section's other
    options, those the new kind accepts are kept (``vocabulary_size``, ``lowercase``, ...).
    """
    from kplm.config import signature_of
    from kplm.plugins import get_registry

    registry = get_registry()
    check_run_keys(config)
    data = config.get("data")
    if not isinstance(data, dict) or "train" not in data:
        raise ConfigError("config key 'data.train' is required: the text to learn from")
    source_cls, source_args = check_section(data["train"], "data_source", "data.train", registry)
    section = config.get("tokenizer", {"name": "wordpiece"})
    if kind is not None and isinstance(section, dict) and section.get("name") != kind:
        accepted, _ = signature_of(registry.get("tokenizer", kind))
        section = {"name": kind, **{k: v for k, v in section.items() if k in accepted}}
    tok_cls, tok_args = check_section(section, "tokenizer", "tokenizer", registry)
    source = source_cls(**{k: v for k, v in source_args.items() if k != "name"})
    tokenizer = tok_cls(**{k: v for k, v in {**tok_args, "vocabulary": None}.items()
                           if k != "name"})
    from kplm.outputs import atomic_output, check_output, config_inputs, inputs_state, stamped
    learned_from = {"data": {"train": data["train"]}, "tokenizer": section}
    record = {"config": hashlib.sha256(json.dumps(learned_from, sort_keys=True, default=str)
                                       .encode("utf-8")).hexdigest(),
              "inputs": inputs_state(config_inputs(learned_from))}
    if not overwrite and stamped(output, record, TOKENIZER_STAMP):
        return None
    rule = dict(what="--output", overwrite=overwrite, inputs=config_inputs(config),
                names=TOKENIZER_NAMES)
    check_output(output, **rule)
    source.check()
    tokens = tokenizer.train(source.texts(), progress=progress,
                             total_bytes=getattr(source, "size_bytes", lambda: None)())
    with atomic_output(output, **rule, stamp=record, stamp_name=TOKENIZER_STAMP) as tmp:
        tokenizer.save(tmp)
    return tokens
