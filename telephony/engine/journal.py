"""The dialog journal: what a BYE needs for every established dialog, kept on disk.

A crash (``kill -9``, OOM, power) ends the process but not the far ends: a caller whose
call was up, and the handler phone bridged to it, keep their media open and hear
nothing, until they hang up themselves. So every dialog the engine establishes (the
caller's, once we sent 200 OK; a handler leg's, once its 200 OK came) is written here as
one small JSON file named after our call or leg id, and removed when the dialog ends.
At start, before the engine takes calls, it sends a BYE to each dialog still in the
journal - through the dialog's route set (the proxy's Record-Route), exactly as the
engine would have - and clears the journal.

Why these fields: RFC 3261 §12.2.1.1 builds an in-dialog request from the Call-ID, the
local and remote tags and URIs, the remote target, the route set and a local CSeq above
every one used so far (we add :data:`CSEQ_SKIP`: refreshes we may have sent since are
not journaled). ``peer`` is the next hop when a URI names a host instead of an address.

Durability: the file is written and renamed into place on the loop (about 50 us; a
``kill -9`` keeps it - the page cache belongs to the kernel, not the process), and
fsynced with its folder in a worker thread, so a power cut keeps it too once that ran;
the loop never waits for the disk.

The engine owns this (the telephony package never imports the store).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from telephony.sip.dialog import Dialog
from telephony.sip.uri import parse_name_addr, parse_uri

log = structlog.get_logger("telephony.engine")

CSEQ_SKIP = 100
"""Added to the journaled local CSeq for the BYE after a restart (RFC 3261 §12.2.1.1
only asks for a higher number; refreshes sent after the journal entry stay below)."""

__all__ = ["CSEQ_SKIP", "DialogJournal", "DialogRecord"]


@dataclass(frozen=True)
class DialogRecord:
    """One established dialog, as written to the journal."""

    key: str
    """Our call id (caller dialog) or leg id (handler dialog): the file name."""
    role: str
    """``caller`` or ``handler``."""
    call_id: str
    """SIP Call-ID."""
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    local_seq: int
    remote_target: str
    route_set: tuple[str, ...]
    peer: tuple[str, int]

    @classmethod
    def of(cls, key: str, role: str, d: Dialog) -> DialogRecord:
        return cls(key=key, role=role, call_id=d.call_id, local_tag=d.local_tag,
                   remote_tag=d.remote_tag, local_uri=d.local_uri, remote_uri=d.remote_uri,
                   local_seq=d.local_seq, remote_target=str(d.remote_target),
                   route_set=tuple(str(r) for r in d.route_set), peer=tuple(d.peer))  # type: ignore[arg-type]

    def dialog(self) -> Dialog:
        """The dialog again, its local CSeq moved past any number used before the crash."""
        return Dialog(call_id=self.call_id, local_tag=self.local_tag, remote_tag=self.remote_tag,
                      local_uri=self.local_uri, remote_uri=self.remote_uri,
                      local_seq=self.local_seq + CSEQ_SKIP, remote_seq=None,
                      remote_target=parse_uri(self.remote_target),
                      route_set=[parse_name_addr(r) for r in self.route_set],
                      peer=(self.peer[0], int(self.peer[1])))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DialogRecord:
        d = json.loads(data)
        d["route_set"] = tuple(d["route_set"])
        d["peer"] = (str(d["peer"][0]), int(d["peer"][1]))
        return cls(**d)


class DialogJournal:
    """A folder of dialog records (one file each). Not thread-safe: use it on the loop.

    ``background`` runs the fsyncs off the caller's thread (the engine passes the loop's
    executor); None runs them inline (tools, tests)."""

    SUFFIX = ".dialog.json"

    def __init__(self, directory: Path, *,
                 background: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.directory = Path(directory)
        self._background = background
        self.errors = 0
        """Records that could not be written (the dialog then has no BYE after a crash)."""

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{self.SUFFIX}"

    def add(self, rec: DialogRecord) -> None:
        """Write ``rec`` (atomically: temp file, rename). A disk error is logged and counted,
        never raised: the call goes on."""
        path = self._path(rec.key)
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, rec.to_json())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            self.errors += 1
            log.error("dialog_journal.write_failed", key=rec.key, error=e.strerror)
            return
        if self._background is not None:
            self._background(lambda: _fsync(path))
        else:
            _fsync(path)

    def remove(self, key: str) -> None:
        """Forget a dialog that ended (a missing file is fine)."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("dialog_journal.remove_failed", key=key, error=e.strerror)

    def load(self) -> list[DialogRecord]:
        """Every dialog in the journal; unreadable entries are logged and dropped."""
        out: list[DialogRecord] = []
        if not self.directory.is_dir():
            return out
        for p in sorted(self.directory.glob(f"*{self.SUFFIX}*")):
            if p.name.endswith(".tmp"):  # a write the crash cut short: never renamed
                p.unlink(missing_ok=True)
                continue
            try:
                out.append(DialogRecord.from_json(p.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("dialog_journal.unreadable", path=str(p), error=str(e))
                p.unlink(missing_ok=True)
        return out


def _fsync(path: Path) -> None:
    """Make a journal entry durable: the file, then its folder (the rename)."""
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
        try:
            fd = os.open(target, flags)
        except OSError:
            return  # already removed: the dialog ended first
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
