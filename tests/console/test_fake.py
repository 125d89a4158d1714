"""FakeBackend keeps the DeskBackend contract (names and parameters) and behaves like a room."""

from __future__ import annotations

import inspect

import pytest

from console.backend import Conflict, DeskBackend, Invalid, NotFound
from tests.console.fake import FakeBackend


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(cls).items()
            if callable(f) and not n.startswith("_")}


def test_fake_matches_protocol_signatures() -> None:
    """Every protocol method exists on FakeBackend with the same parameter names and kinds."""
    assert isinstance(FakeBackend(), DeskBackend)
    fake = _public(FakeBackend)
    for name, sig in _public(DeskBackend).items():
        assert name in fake, name
        want = [(p.name, p.kind) for p in sig.parameters.values()]
        got = [(p.name, p.kind) for p in fake[name].parameters.values()]
        assert got == want, name


async def test_fake_errors_and_service_level() -> None:
    """Wrong state -> Conflict, unknown ids -> NotFound, bad args -> Invalid; SL counts answers in threshold."""
    now = [1000.0]
    fb = FakeBackend(clock=lambda: now[0])
    cid = fb.arrive("999", "+44")
    with pytest.raises(Conflict, match="not ringing on h1"):
        await fb.accept_offer("h1", cid)
    with pytest.raises(NotFound, match="no handler 'zz'"):
        await fb.handler_view("zz")
    with pytest.raises(Invalid, match="state must be one of"):
        await fb.set_handler_state("h1", "ringing")
    fb.offer(cid, "h1")
    now[0] += 12.0                          # answered after the 10 s threshold
    await fb.accept_offer("h1", cid)
    with pytest.raises(Invalid, match="exactly one"):
        await fb.transfer(cid)
    late = (await fb.snapshot())["lines"][0]
    assert (late["answered_today"], late["answered_in_threshold_today"], late["sl_today"]) == (1, 0, 0.0)
    fast = fb.arrive("999", "+45")
    fb.offer(fast, "h2")
    now[0] += 3.0
    await fb.accept_offer("h2", fast)
    line = (await fb.snapshot())["lines"][0]
    assert line["sl_today"] == 0.5 and line["abandon_rate"] == 0.0
    view = await fb.handler_view("h1")
    assert view["state"] == "on_call" and view["call"]["call_id"] == cid
