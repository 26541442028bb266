"""The ``aiimg`` package: ``aiimg.messages`` (the wire contract), ``aiimg.services`` (actors,
infrastructure, domain, entry points) and ``aiimg.astrbot_bridge`` (the AstrBot plugin).

In the repository those are top-level folders, and this folder holds only this file: it
makes them sub-packages of ``aiimg`` (its package path is the repository root), so a
checkout on ``sys.path`` — the editable install, the test suite — imports them as
``aiimg.services`` and so on. In an installed wheel they sit beside this file. Inside
AstrBot the repository root is the plugin's own package (``data.plugins.<name>``) and this
file is not used: every import inside the core is relative.
"""

from __future__ import annotations

import os

_here = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_here, "services")):  # a checkout: the root is the package
    __path__ = [os.path.dirname(_here)]
