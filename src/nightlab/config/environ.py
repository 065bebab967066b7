"""The environment nightlab itself is started in, as far as it would reach the runs.

A run inherits the environment of the shell that started nightlab (secrets removed,
:mod:`nightlab.secrets`), and nightlab sets only the ``NIGHTLAB_BUDGET_*`` variable of the budget
``[budget]`` gives. One left over in the shell (``export NIGHTLAB_BUDGET_TOKENS=...`` from trying
the script by hand) would reach every run beside it: the GPT template's harness honours every one
it finds, so the runs would train under a budget the ledger does not record, and a bad value
(``abc``, ``-1``) would crash each of them. Refused before anything runs, in one line.
"""

from __future__ import annotations

from collections.abc import Mapping

from nightlab.errors import UserError

BUDGET_PREFIX = "NIGHTLAB_BUDGET_"


def check_inherited_environment(environ: Mapping[str, str]) -> None:
    """A :class:`UserError` naming the ``NIGHTLAB_BUDGET_*`` variables set in ``environ``."""
    stale = sorted(name for name in environ if name.startswith(BUDGET_PREFIX))
    if not stale:
        return
    first = stale[0]
    more = f" (and {', '.join(stale[1:])})" if stale[1:] else ""
    raise UserError(
        f"{first}={environ[first]!r}{more} is set in the environment nightlab was started in, and every "
        f"run would inherit it beside the budget nightlab.toml gives ([budget]): unset it "
        f"(`unset {' '.join(stale)}`), and set the budget in [budget]"
    )
