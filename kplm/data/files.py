"""File helpers shared by the data sources: glob expansion and streaming checks (no TensorFlow)."""
import glob
import gzip
import os

from kplm.components import DataSource
from kplm.errors import DataError


class FileSource(DataSource):
    """Base of the data sources that read files named by ``paths`` (globs expanded once)."""

    paths = ()
    _files = None

    @property
    def files(self):
        """The matching files, in order; ``DataError`` when a pattern matches nothing."""
        if self._files is None:
            self._files = expand_paths(self.paths, "paths")
        return self._files

    def size_bytes(self):
        return sum(os.path.getsize(f) for f in self.files)


def expand_paths(patterns, key):
    """Expand globs (``~`` and ``**`` too), in order, refusing patterns that match nothing."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError(f"{key}: no data files given")
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataError(f"{key}: no file matches {pattern!r}")
        files.extend(matches)
    return files


def open_lines(path):
    """Binary line iterator over a plain or gzip file."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def check_text_file(path, strict_utf8=True, max_bytes=None):
    """Stream through ``path`` checking it is readable (and valid UTF-8 when ``strict_utf8``).

    Returns the number of non-blank lines seen. Raises ``DataError`` naming the file and line.
    """
    count = 0
    try:
        with open_lines(path) as f:
            seen = 0
            for number, line in enumerate(f, 1):
                if strict_utf8:
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise DataError(
                            f"{path}:{number}: invalid UTF-8 (byte 0x{line[e.start]:02x} at column "
                            f"{e.start + 1}); fix the file or set encoding_errors: replace") from None
                if line.strip():
                    count += 1
                seen += len(line)
                if max_bytes is not None and seen >= max_bytes and count:
                    break
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    return count
