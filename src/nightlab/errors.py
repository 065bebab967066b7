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
