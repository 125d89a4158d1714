"""Gazetteer-aware indexing: a transcript word that sounds like one of the force's place
names ("Hobon" for Harborne) also indexes the name, so an auditor typing the real name
finds the call; unrelated words do not, and without a gazetteer nothing is added."""

from __future__ import annotations

import pytest

from store import calls
from transcription import store as tstore
from transcription.normalise import Gazetteer, normalise, phonetic_key
from transcription.search import TranscriptSearch

PLACES = ["Harborne", "Handsworth", "Kingstanding", "Kings Heath", "Selly Oak", "Halesowen",
          "Sparkbrook", "Yardley"]


@pytest.mark.parametrize("a,b", [("Harborne", "Hobon"), ("Harborne", "Haabon"),
                                 ("Chloe", "Clow"), ("Christine", "Kristine"),
                                 ("Yardley", "Yadli"), ("Birmingham", "Burmingum")])
def test_phonetic_key_hears_british_english(a, b):
    assert phonetic_key(a) == phonetic_key(b)


def test_phonetic_key_still_tells_words_apart():
    assert phonetic_key("Harborne") != phonetic_key("Hepburn")
    assert phonetic_key("card") != phonetic_key("cat")


def _alts(text, names=PLACES):
    words = normalise(text)
    return [(" ".join(words[m.first:m.last + 1]), m.terms) for m in Gazetteer(names).alternatives(words)]


@pytest.mark.parametrize("text,expected", [
    ("it happened in hobon outside number 112", [("hobon", ("harborne",))]),
    ("I live at 27 Wood Lane in Hainesworth", [("hainesworth", ("handsworth",))]),
    ("the address is 8 Kings Road and king standing", [("king standing", ("kingstanding",))]),
    ("we are in Kingsheath by the library", [("kingsheath", ("kings", "heath"))]),
    ("outside the shop in Sellie Oak", [("sellie oak", ("selly", "oak"))]),
    ("we live on Latapool Road in Sparkbrek", [("sparkbrek", ("sparkbrook",))]),
])
def test_misheard_names_are_found(text, expected):
    assert _alts(text) == expected


@pytest.mark.parametrize("text", [
    "he put his hands up and walked off",  # "hands": one key edit, but far shorter
    "it was hardly a road at all",
    "a white van on the high street near the park",
    "in Harborne outside number 112",  # the name itself: nothing to add
    "in Kings Heath",
    "in Selly Oak",
    "in Halesowen it is",  # a name and the next word are not another name
])
def test_unrelated_words_and_names_themselves_add_nothing(text):
    assert _alts(text) == []


def test_no_gazetteer_no_alternatives():
    assert _alts("in hobon outside", names=[]) == []
    assert not Gazetteer([])
    items = tstore.index_terms([("caller", 0.0, 3.0, "in hobon outside", 0.9, [])])
    assert [i.term for i in items] == ["in", "hobon", "outside"]


def test_alternative_follows_the_words_with_their_times_and_round_trips():
    segs = [("caller", 0.0, 3.0, "in hobon outside", 0.9,
             [["in", 0.0, 0.5, 0.9], ["hobon", 0.6, 1.2, 0.4], ["outside", 1.3, 2.0, 0.9]])]
    items = tstore.index_terms(segs, Gazetteer(PLACES))
    assert [(i.term, i.start, i.end, i.alternative) for i in items] == [
        ("in", 0.0, 0.5, False), ("hobon", 0.6, 1.2, False), ("harborne", 0.6, 1.2, True),
        ("outside", 1.3, 2.0, False)]
    back = tstore.decode_index(*tstore.encode_index(items))
    assert [(b.term, b.alternative, b.confidence) for b in back] == [
        ("in", False, 0.9), ("hobon", False, 0.4), ("harborne", True, 0.4), ("outside", False, 0.9)]
    doc = tstore.IndexedCall(*tstore.encode_index(items))
    assert doc.alternatives == {2} and doc.shown[2] == ""


def _save(db, call_id, text, at=1000.0):
    with db.transaction() as conn:
        calls.insert(conn, call_id=call_id, line="999", caller="0111", state="ended",
                     arrived_at=at, handler_id="h1", incident_number=None)
    words = [[w, 1.0 + i, 1.5 + i, 0.9] for i, w in enumerate(text.split())]
    tstore.save_transcript(db, call_id, engine="fake", model="m", language="en",
                           segments=[tstore.Segment("caller", 1.0, 1.0 + len(words), text, 0.9, words)],
                           duration=30.0, recording_path=None)


def test_search_finds_the_misheard_place_after_exact_ones(db):
    assert tstore.set_gazetteer(db, PLACES) == 0  # nothing stored yet
    _save(db, "misheard", "a white van crashed in hobon outside number 112", at=2000.0)
    _save(db, "heard", "a van parked in Harborne all day", at=1000.0)
    _save(db, "other", "a van on the ring road", at=3000.0)
    hits = TranscriptSearch(db).search("Harborne van")
    assert [(h.call_id, h.match) for h in hits] == [("heard", "exact"), ("misheard", "gazetteer")]
    h = hits[1]
    assert h.offset == 3.0  # the first matched word, "van"
    assert [(m["word"], m["at"]) for m in h.matches] == [("van", 3.0), ("hobon", 6.0)]  # the word heard
    assert "<mark>hobon</mark>" in h.snippet and "harborne" not in h.snippet.lower()
    assert hits[0].score > h.score
    # the auditor's misspelling reaches the added name by its close spelling
    assert "misheard" in [x.call_id for x in TranscriptSearch(db).search("Harbourne van")]


def test_setting_the_gazetteer_reindexes_stored_calls(db):
    _save(db, "c", "we live on latapool road in king standing")
    s = TranscriptSearch(db)
    assert s.search("Kingstanding") == []
    assert tstore.set_gazetteer(db, PLACES) == 1
    assert [(h.call_id, h.match) for h in s.search("Kingstanding")] == [("c", "gazetteer")]
    assert tstore.set_gazetteer(db, list(reversed(PLACES))) == 0  # same names: no reindex
    assert tstore.set_gazetteer(db, []) == 1
    assert s.search("Kingstanding") == []
    assert db.query_one("SELECT 1 FROM transcription_vocab WHERE term='kingstanding'") is None


def test_migrate_takes_the_configured_gazetteer(tmp_path):
    from store.db import Database

    d = Database(tmp_path / "g.sqlite3")
    d.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(d)
    _save(d, "c", "a white van crashed in hobon")
    tstore.migrate(d, gazetteer=PLACES)
    assert [h.match for h in TranscriptSearch(d).search("Harborne")] == ["gazetteer"]
    d.close()
