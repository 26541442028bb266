"""aiimg services: the router and provider actors, their runtime, config and clients."""

from __future__ import annotations

__version__ = "0.1.0"
