"""The one exception type for bad user input."""


class ConfigError(ValueError):
    """Bad input: the message is one line naming the problem and the fix."""
