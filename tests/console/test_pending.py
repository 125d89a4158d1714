"""A desk operation the routing leader has not answered in time is said to be pending
(202 with ``pending``), never reported as done (``console.backend.Pending``)."""

from __future__ import annotations

from typing import Any

import pytest

from console.backend import Pending
from tests.console.conftest import Api
from tests.console.fake import FakeBackend


async def test_a_pending_desk_operation_is_202_pending_not_ok(
        api: Api, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API says pending with the backend's message, and not ``ok``."""
    async def pending(*args: Any, **kwargs: Any) -> None:
        raise Pending("pending: sent to the routing leader, no answer within 2 s")

    monkeypatch.setattr(backend, "set_handler_state", pending)
    status, body = await api.as_role("handler").call("POST", "/api/desk/state",
                                                     {"state": "available"})
    assert (status, body) == (202, {"ok": False, "pending": True, "error":
                                    "pending: sent to the routing leader, no answer within 2 s"})
