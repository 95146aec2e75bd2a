"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class KplmError(Exception):
    """A user-facing error: bad config, bad data, unknown component. Printed as one line."""


class ConfigError(KplmError):
    """A config key is unknown, mistyped or has a value of the wrong type."""


class DataError(KplmError):
    """A data file is missing, unreadable, empty or malformed."""


class PluginError(KplmError):
    """A plugin failed to load or registered something it should not."""
