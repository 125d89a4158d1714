"""The dialog journal: what a BYE after a crash needs survives on disk, exactly."""

from __future__ import annotations

from pathlib import Path

from telephony.engine.journal import CSEQ_SKIP, DialogJournal, DialogRecord
from telephony.sip.dialog import Dialog
from telephony.sip.message import Request, parse

INVITE = (
    "INVITE sip:999@127.0.0.1:5080 SIP/2.0\r\n"
    "Record-Route: <sip:127.0.0.1:5060;lr;ftag=abc>\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-p1\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-c1\r\n"
    "From: \"Caller\" <sip:07700900777@example.net>;tag=abc\r\n"
    "To: <sip:999@controlroom.local>\r\n"
    "Call-ID: journal-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:sipp@127.0.0.1:6000>\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n")


def _dialog() -> Dialog:
    req = parse(INVITE.encode())
    assert isinstance(req, Request)
    return Dialog.as_uas(req, local_tag="ours1", local_contact="<sip:cr@127.0.0.1:5080>",
                         source=("127.0.0.1", 5060))


def test_a_journaled_dialog_gives_the_bye_it_would_have_given(tmp_path: Path) -> None:
    """Written, read back after a 'crash' (a new journal object): the BYE goes to the
    caller's Contact through Kamailio's Record-Route, with our tags, the same Call-ID
    and a CSeq above any used before."""
    d = _dialog()
    DialogJournal(tmp_path).add(DialogRecord.of("c1-aaaaaa", "caller", d))
    [rec] = DialogJournal(tmp_path).load()
    again = rec.dialog()
    bye = again.request("BYE", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-x")
    want = d.request("BYE", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-x")
    assert str(bye.uri) == str(want.uri) == "sip:sipp@127.0.0.1:6000"
    assert bye.get_all("Route") == want.get_all("Route") == ["<sip:127.0.0.1:5060;lr;ftag=abc>"]
    for h in ("From", "To", "Call-ID"):
        assert bye.get(h) == want.get(h)
    assert bye.cseq == (1 + CSEQ_SKIP, "BYE")
    assert again.next_hop(bye) == ("127.0.0.1", 5060)


def test_removed_and_torn_entries_are_not_replayed(tmp_path: Path) -> None:
    """An ended dialog is removed; a temp file a crash left unrenamed, or an unreadable
    entry, is dropped (never a BYE built from half a record)."""
    j = DialogJournal(tmp_path)
    j.add(DialogRecord.of("c1", "caller", _dialog()))
    j.add(DialogRecord.of("l2", "handler", _dialog()))
    j.remove("c1")
    j.remove("never-there")
    (tmp_path / "c3.dialog.json.tmp").write_bytes(b'{"key": "c3"')
    (tmp_path / "c4.dialog.json").write_bytes(b"not json")
    assert [r.key for r in j.load()] == ["l2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l2.dialog.json"]
