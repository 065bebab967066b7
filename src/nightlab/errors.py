"""Errors a user can cause and fix.

Anything raised as a :class:`UserError` reaches the terminal as one line and exit code 2; every
other exception is a bug in nightlab and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the file, field or command to change."""

    exit_code = 2


class EditError(UserError):
    """A proposal's edit that cannot be applied; the message is written for an LLM to act on."""


class LostWorktree(UserError):
    """A worktree whose git folder is gone: a coding CLI ran ``git worktree remove`` or ``prune``
    from its checkout. ``Workspace.checkout`` makes it again."""


def shell_word(value: object) -> str:
    """``value`` (a path, a name) as it goes into a command an error or a hint suggests: quoted
    where the shell needs it, so ``nightlab run 'my ws'`` can be pasted as it is (unquoted, a
    workspace with a space in its path was two arguments)."""
    import shlex

    return shlex.quote(str(value))
