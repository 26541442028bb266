"""Make the ``messages`` and ``services`` packages importable inside AstrBot.

AstrBot imports a plugin as ``data.plugins.<name>.main``; aiimg's core packages are
top-level packages. They are found, in this order:

1. already importable (``pip install aiimg`` / ``pip install -e <repo>`` into AstrBot's
   Python, or the repository root on ``sys.path`` as in the tests): used as they are;
2. vendored beside this file (the zip built by ``deploy/build_astrbot_plugin.py``):
   this folder is put on ``sys.path``, and only then.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

__all__ = ("HERE", "ensure_core")

HERE = Path(__file__).resolve().parent


def _importable() -> bool:
    try:
        importlib.import_module("messages._events")
        importlib.import_module("services.stack")
    except ImportError:
        return False
    return True


def ensure_core() -> None:
    """Import-time check; raises ImportError saying how to install the core when it is missing."""
    if _importable():
        return
    if (HERE / "services").is_dir() and (HERE / "messages").is_dir():
        # A different top-level package of the same name, already imported, would shadow ours.
        foreign = [
            name
            for name in ("services", "messages")
            if name in sys.modules and not str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(HERE))
        ]
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        importlib.invalidate_caches()
        if not foreign and _importable():
            return
        raise ImportError(
            "aiimg: another top-level package named "
            + " / ".join(foreign or ["services/messages"])
            + " is already loaded in this AstrBot process; install aiimg into AstrBot's Python instead"
        )
    raise ImportError(
        "aiimg: the core packages (messages, services) are missing. Install the plugin from the zip built by "
        "deploy/build_astrbot_plugin.py, or `pip install -e <aiimg repo>` into AstrBot's Python."
    )


ensure_core()
