"""Parallel text: two line-aligned files (a source and its translation / summary / target)."""
from itertools import zip_longest

from kplm.data.files import (FileSource, decode_line, expand_paths, generator_dataset,
                             read_lines)
from kplm.errors import DataError
from kplm.hookspecs import hookimpl


class ParallelText(FileSource):
    """Streams ``{"source": ..., "target": ...}`` pairs from two line-aligned files: line *i* of
    ``target`` is the target of line *i* of ``source`` (e.g. ``train.en`` / ``train.de``).
    ``.gz`` files are read transparently. Pairs where either side is blank are skipped. A
    different number of lines in the two files is refused (``check()``, streaming), naming both
    files and their counts, unless the longer one's extra lines are blank (an editor's
    trailing empty line: no pair is lost).

    Tokenizers learn from both sides (``texts()`` yields each pair's source, then its target).

    Args:
        source: str. The source-side file.
        target: str. The target-side file, line-aligned with ``source``.

    Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "a.en"), "w").write("a dog\\n\\nthe cat\\n")
    >>> _ = open(os.path.join(d, "a.de"), "w").write("ein Hund\\n\\ndie Katze\\n")
    >>> source = ParallelText(source=os.path.join(d, "a.en"), target=os.path.join(d, "a.de"))
    >>> source.check()
    >>> [(x["source"].numpy(), x["target"].numpy()) for x in source.build()]
    [(b'a dog', b'ein Hund'), (b'the cat', b'die Katze')]
    """

    text_field = "source"

    def __init__(self, source: str, target: str):
        self.source = source
        self.target = target

    @property
    def files(self):
        if self._files is None:
            self._files = [expand_paths([self.source], "source")[0],
                           expand_paths([self.target], "target")[0]]
        return self._files

    def fields(self):
        return ["source", "target"]

    def _pairs(self):
        """Yield ``(line number, source bytes, target bytes)``, checking alignment and UTF-8."""
        source, target = self.files
        counts, beyond = [0, 0], [0, 0]  # lines, and non-blank lines past the other's end
        for (number, a), (_, b) in zip_longest(read_lines(source), read_lines(target),
                                               fillvalue=(None, None)):
            counts[0] += a is not None
            counts[1] += b is not None
            if a is None or b is None:  # keep counting the longer file for the message
                beyond[a is None] += bool((a if b is None else b).strip())
                continue
            a, b = (decode_line(path, number, line) for path, line in ((source, a), (target, b)))
            yield number, a.strip(), b.strip()
        if counts[0] != counts[1] and any(beyond):  # blank lines at one end only: no pairs
            raise DataError(f"source {source} has {counts[0]:,} lines but target {target} has "
                            f"{counts[1]:,}; the files must be line-aligned")

    def check(self):
        """Both files readable, valid UTF-8, the same number of lines, at least one pair."""
        if not sum(1 for _, a, b in self._pairs() if a and b):
            raise DataError(f"{self.source} / {self.target}: no non-blank pairs")

    def build(self):
        import tensorflow as tf

        def generate():
            for _, a, b in self._pairs():
                if a and b:
                    yield {"source": a, "target": b}

        return generator_dataset(generate, {"source": tf.TensorSpec([], tf.string),
                                            "target": tf.TensorSpec([], tf.string)})

    def texts(self):
        """Each pair's source line, then its target line (a tokenizer learns both languages,
        also from a ``max_training_lines`` prefix)."""
        import tensorflow as tf
        return self.build().flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(
            tf.stack([ex["source"], ex["target"]])))


@hookimpl
def register_data_sources(register):
    register("parallel_text", ParallelText)
