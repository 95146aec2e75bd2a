"""Several data sources read as one: a general corpus plus a task's own sentences, say."""
from typing import Optional

from kplm.components import DataSource
from kplm.errors import ConfigError, shown
from kplm.hookspecs import hookimpl


class Mixture(DataSource):
    """Reads every source in ``sources`` and interleaves their examples at random (seeded).

    One pass over a mixture reads each example of each source once (``repeats`` reads a source
    several times per pass, to weigh a small in-domain set up against a large general corpus).
    Each next example comes from a source chosen uniformly at random among those not yet
    exhausted, so a pass mixes evenly until the smallest stream runs out and ends with the
    rest of the larger ones (use ``repeats`` to bring streams to similar sizes).
    When all the sources give the same fields (two labelled CSV files, two SQuAD files) the
    examples are kept as they are, so a mixture fine-tunes too; otherwise each source's text
    (its ``texts()``) becomes ``{"text": string}``, which is what pretraining and tokenizer
    training read. Sources of prepared token ids (``tfrecord``)
    cannot be mixed.

    Args:
        sources: list of data source sections (``{name: ..., ...}``), at least two.
        repeats: list of int or None. How many times each source is read per pass (>= 1).
            Defaults to once each.
        seed: int. The interleaving order. Defaults to 0.

    Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "wiki.txt"), "w").write("a general line\\n")
    >>> _ = open(os.path.join(d, "task.tsv"), "w").write("sentence\\tlabel\\ngreat film\\t1\\n")
    >>> mix = Mixture(sources=[
    ...     {"name": "text_files", "paths": [os.path.join(d, "wiki.txt")]},
    ...     {"name": "csv", "paths": [os.path.join(d, "task.tsv")],
    ...      "columns": {"text": "sentence"}}], repeats=[1, 2])
    >>> sorted(x["text"].numpy() for x in mix.build())
    [b'a general line', b'great film', b'great film']
    """

    def __init__(self, sources: list[dict], repeats: Optional[list[int]] = None, seed: int = 0):
        self.sections = self.check_config({"sources": sources, "repeats": repeats}, "data")
        self.repeats = list(repeats) if repeats is not None else [1] * len(sources)
        self.seed = seed
        from kplm.plugins import get_registry
        registry = get_registry()
        self.sources = []
        for i, section in enumerate(self.sections):
            cls = registry.get("data_source", section["name"])
            source = cls(**{k: v for k, v in section.items() if k != "name"})
            if source.tokenizer_dir is not None:
                raise ConfigError(f"config key 'data.sources[{i}]': {section['name']} holds "
                                  "prepared token ids; a mixture mixes text sources")
            self.sources.append(source)

    def get_config(self):
        return {"sources": self.sections, "repeats": self.repeats, "seed": self.seed}

    @classmethod
    def check_config(cls, section, path):
        """Config-time checks (``kplm.config.check_arguments``): every source is a valid data
        source section (named ``{path}.sources[i]`` in errors); ``repeats`` fits. Returns the
        resolved sections."""
        from kplm.config import check_section
        from kplm.plugins import get_registry
        sources, repeats = section.get("sources"), section.get("repeats")
        if not isinstance(sources, list) or len(sources) < 2:
            raise ConfigError(f"config key '{path}.sources': expected a list of at least two "
                              f"data source sections, got {shown(sources)}")
        registry = get_registry()
        resolved = []
        for i, source in enumerate(sources):
            where = f"{path}.sources[{i}]"
            if isinstance(source, dict) and source.get("name") == "mixture":
                raise ConfigError(f"config key '{where}': a mixture inside a mixture; list its "
                                  "sources here instead")
            resolved.append(check_section(source, "data_source", where, registry)[1])
        if repeats is not None:
            if (not isinstance(repeats, list) or len(repeats) != len(sources)
                    or any(isinstance(r, bool) or not isinstance(r, int) or r < 1
                           for r in repeats)):
                raise ConfigError(f"config key '{path}.repeats': expected one integer >= 1 per "
                                  f"source ({len(sources)}), got {shown(repeats)}")
        return resolved

    def check(self):
        for source in self.sources:
            source.check()

    def size_bytes(self):
        sizes = [getattr(s, "size_bytes", lambda: None)() for s in self.sources]
        if any(size is None for size in sizes):
            return None
        return sum(size * n for size, n in zip(sizes, self.repeats))

    @property
    def text_field(self):
        """The sources' own text field when they all share it (their examples are kept as
        they are), else ``text``."""
        fields = {source.text_field for source in self.sources}
        return fields.pop() if len(fields) == 1 else "text"

    def build(self):
        import tensorflow as tf

        field = self.text_field
        streams = []
        for source in self.sources:
            if source.text_field == field:
                ds = source.build()
            else:  # renamed to "text"; a same-named field of the source is dropped
                own = source.text_field
                ds = source.build().map(
                    lambda x, own=own: {("text" if k == own else k): v for k, v in x.items()
                                        if k != "text"})
            streams.append(ds)
        specs = [s.element_spec for s in streams]
        if any(spec != specs[0] for spec in specs[1:]):  # different fields: text only
            streams = [source.texts().map(lambda t: {"text": t}) for source in self.sources]
        streams = [ds.repeat(n) if n > 1 else ds for ds, n in zip(streams, self.repeats)]
        return tf.data.Dataset.sample_from_datasets(streams, seed=self.seed,
                                                    stop_on_empty_dataset=False)


@hookimpl
def register_data_sources(register):
    register("mixture", Mixture)
