"""The `hf` extra (`pip install 'bitnet-xtask[hf]'`): checking, before anything runs,
that what needs it can import it."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from bitnet_xtask.errors import UsageError

INSTALL_HINT = "pip install 'bitnet-xtask[hf]'"


def require(modules: Sequence[str], needs: str) -> None:
    """UsageError (exit 2) naming the `modules` that cannot be imported, for `needs`
    ("the hf: backend"), with the install command; nothing is imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"{needs} needs {', '.join(modules)} ({', '.join(missing)} missing)", INSTALL_HINT
        )
