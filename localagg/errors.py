"""Errors a user can fix: raised by the library, shown by the CLI as one message.

Everything the user can cause (a missing root, a bad param, a corrupt image, a checkpoint
that does not match) is a `UserError`; the CLI prints its message and exits non-zero with
no traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input, params or files that the user can fix; the message says how."""


class DatasetError(UserError):
    """A dataset failed validation; lists every bad item, not only the first."""

    def __init__(self, what: str, problems: list[str], hint: str, limit: int = 50):
        self.problems = list(problems)
        shown = self.problems[:limit]
        lines = [f"{what}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        lines.append(hint)
        super().__init__("\n".join(lines))
