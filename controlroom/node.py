"""What the parts of a node see of it: :class:`Node`, the service as its parts use it.

:class:`controlroom.service.Service` is the composition root: it builds the parts (the
monitor, consult and dial-out legs, the desk, the web app, the operations, the global
queue's leader, the salvager) and hands each of them itself. The parts are typed against
this protocol, not against ``Service``, so none of them imports ``controlroom.service``
and every import points down: service -> parts -> node. Where ``Service`` passes
``self`` to a part, mypy checks that it has all of this, with these types.

Read-only members are properties (a part reads or mutates them in place, never rebinds
them); ``router`` is an attribute because the operations wrap it
(``operations.TimedRouter``). The desk needs the service's parts too:
:class:`controlroom.desk.DeskNode` adds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import callevents as ev
    from config import HandlerSettings, LineSettings, Settings
    from controlroom.calls import LiveCall
    from controlroom.metrics import Counter, Registry
    from routing import Router
    from store import Database
    from telephony import api as tel


class Node(Protocol):
    """The service (one controlroom node) as its parts use it."""

    router: Router
    """The routing decisions (the global queue's ``RouterProxy`` on a cluster; wrapped
    by ``operations.TimedRouter``)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def engine(self) -> Any: ...  # the telephony engine (telephony.api), set at start
    @property
    def publisher(self) -> Any: ...  # the CAD publisher, set at start (None: no broker)
    @property
    def metrics(self) -> Registry: ...
    @property
    def m_live_resyncs(self) -> Counter: ...
    @property
    def ready(self) -> bool: ...
    @property
    def _draining(self) -> bool: ...

    # what the node knows, mutated in place by the parts
    @property
    def handlers(self) -> dict[str, HandlerSettings]: ...
    @property
    def lines(self) -> dict[str, LineSettings]: ...
    @property
    def calls(self) -> dict[str, LiveCall]: ...
    @property
    def legs(self) -> dict[str, str]: ...
    @property
    def wrapup_calls(self) -> dict[str, str]: ...
    @property
    def rejected_today(self) -> dict[str, int]: ...
    @property
    def grading_drafts(self) -> dict[str, dict[str, Any]]: ...
    @property
    def live_transcripts(self) -> dict[str, list[dict[str, Any]]]: ...

    # what the node does for its parts
    def health(self) -> dict[str, Any]: ...
    def transfer(self, call: LiveCall, *, to_line: str | None, to_handler: str | None,
                 decided: list[Any] | None = None) -> None: ...
    def subscription(self, maxsize: int | None = None
                     ) -> AbstractAsyncContextManager[Any]: ...
    def _apply(self, actions: list[Any]) -> None: ...
    def _log_entries(self, actions: list[Any]) -> None: ...
    def _record(self, event: ev.DomainEvent, rows: Any = None, *, line: str | None = None,
                incident: str | None = None) -> None: ...
    def _call_ended(self, e: tel.CallEnded) -> None: ...
    def _fanout(self, payload: dict[str, Any]) -> None: ...
    def _after_commit(self, payload: dict[str, Any]) -> None: ...
    def _storage_committed(self) -> None: ...
    def _skills(self, h: Any) -> dict[str, int]: ...
