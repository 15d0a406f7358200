"""Errors a user can fix; the CLI prints their message without a traceback and exits 2."""


class UserError(Exception):
    """Bad input, config or state: the message says what and where."""


class ConfigError(UserError):
    """A config file or override that does not fit the stage's dataclass."""


class DataError(UserError):
    """Malformed input data; the message starts with ``file:line``."""


class StageConflict(UserError):
    """A stage's output is complete but was made with a different config."""


class StageStopped(UserError):
    """A stage stopped cleanly before its end (a budget limit); re-running continues it."""
