"""User-facing errors.

Anything a user can fix (a config value, a path, a flag) is raised as a :class:`UserError`. The CLI
prints it as one line on stderr and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input; the message names the field or file, the value and the fix."""


class ConfigError(UserError):
    """One or more problems in the configuration, all reported at once."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            text = f"config error{where}: {self.problems[0]}"
        else:
            listed = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
            text = f"{len(self.problems)} config errors{where}: {listed}"
        super().__init__(text)
