"""The ``csv_logger`` callback: Keras' ``CSVLogger``, its file kept inside the run directory."""
import os

import keras

from kplm.errors import ConfigError


class CsvLogger(keras.callbacks.CSVLogger):
    """Keras' ``CSVLogger`` (one row of logs per validation window) writing
    ``RUN_DIR/<filename>``: a run writes only into its own directory, so a log can never
    replace a file the run did not create. A resumed run appends to its log.

    Args:
        filename: str. A file name ending in ``.csv`` (no folder). Defaults to ``log.csv``.
        separator: str. Between the values of a row. Defaults to ``","``.

    Example:
        >>> CsvLogger("log.csv").filename
        'log.csv'
        >>> CsvLogger("../data/train.tsv")
        Traceback (most recent call last):
        kplm.errors.ConfigError: callback csv_logger: filename '../data/train.tsv': expected a file name ending in .csv, without a folder (the log is written in run_dir)
    """

    def __init__(self, filename="log.csv", separator=","):
        if (not isinstance(filename, str) or not filename.endswith(".csv")
                or os.path.basename(filename) != filename or filename.startswith(".")):
            raise ConfigError(f"callback csv_logger: filename {filename!r}: expected a file name "
                              "ending in .csv, without a folder (the log is written in run_dir)")
        super().__init__(filename, separator=separator, append=False)
        self.name = filename

    def place(self, run_dir, resuming, write):
        """Point the log at ``run_dir`` before training: appended to when ``resuming``; a
        process that does not write the run's files (a multi-worker non-chief) logs nowhere."""
        self.filename = os.path.join(run_dir, self.name) if write else os.devnull
        self.append = bool(resuming and write)
