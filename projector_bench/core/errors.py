"""The one exception type for bad user input, and the argument parser that raises it."""
from __future__ import annotations

import argparse
from typing import NoReturn


class ConfigError(ValueError):
    """Bad input: the message is one line naming the problem and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are the house's one `error:` line and exit 2 (`ConfigError`), not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; see {self.prog} --help")
