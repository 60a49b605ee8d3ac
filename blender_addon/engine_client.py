"""The engine service's HTTP client, for the add-on's modules: its home is
``btdm_bridge/engine_client.py``, shared with the engine (see :mod:`._bridge`)."""

from __future__ import annotations

from ._bridge import load

__all__ = ["DEFAULT_URL", "FINAL_STATES", "EngineClient", "EngineError"]

_client = load("engine_client")
DEFAULT_URL = _client.DEFAULT_URL
FINAL_STATES = _client.FINAL_STATES
EngineClient = _client.EngineClient
EngineError = _client.EngineError
