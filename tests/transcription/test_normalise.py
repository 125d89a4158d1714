"""Normalisation (index and query alike) and the whole-call index: numbers, spellings,
registrations and postcodes, stems; words across segments, word offsets, fuzzy and
phonetic matches, low confidence, versions."""

from __future__ import annotations

import pytest

from store import calls
from transcription import store as tstore
from transcription.normalise import normalise, phonetic_key, terms, uk_spelling
from transcription.search import TranscriptSearch


@pytest.mark.parametrize("a,b,term", [
    ("two thousand", "2,000", "2000"),
    ("two thousand", "2000", "2000"),
    ("£2,000", "2000", "2000"),
    ("two thousand and five", "2005", "2005"),
    ("one hundred and twenty three", "123", "123"),
    ("twenty one", "21", "21"),
    ("the 12th", "the twelve", "12"),
    ("oh one two one four nine six", "0121496", "0121496"),
    ("alpha bravo one two charlie delta echo", "AB12 CDE", "ab12cde"),
    ("alpha bravo one two charlie delta echo", "ab12cde", "ab12cde"),
    ("bravo one one alpha alpha", "B11 AA", "b11aa"),
    ("x-ray yankee zero seven", "XY07", "xy07"),
    ("alpha bravo twelve charlie delta echo", "AB12 CDE", "ab12cde"),
])
def test_spoken_and_written_forms_meet(a, b, term):
    """Numbers in words and digits, registrations and postcodes spelled or written: one term."""
    assert term in normalise(a) and term in normalise(b)


@pytest.mark.parametrize("us,uk", [
    ("color", "colour"), ("colors", "colours"), ("neighbor", "neighbour"),
    ("neighbors", "neighbours"), ("center", "centre"), ("gray", "grey"), ("tire", "tyre"),
    ("realize", "realise"), ("organized", "organised"), ("analyze", "analyse"),
    ("traveled", "travelled"), ("canceling", "cancelling"), ("defense", "defence"),
    ("jewelry", "jewellery"), ("curb", "kerb"),
])
def test_us_spellings_become_uk(us, uk):
    assert uk_spelling(us) == uk and normalise(us.capitalize()) == normalise(uk)


@pytest.mark.parametrize("word", ["size", "seize", "prize", "doctor", "motor", "water", "colour"])
def test_uk_and_other_words_are_left_alone(word):
    assert uk_spelling(word) == word


@pytest.mark.parametrize("text,expected", [
    ("I saw a man", ["i", "saw", "a", "man"]),          # "I" and "a" stay words
    ("three men", ["3", "man"]),                        # a number, not a code
    ("the hotel on the road", ["the", "hotel", "on", "the", "road"]),  # one NATO word: a word
    ("Don't go", ["dont", "go"]),
    ("café", ["cafe"]),
])
def test_ordinary_words_are_not_codes(text, expected):
    assert normalise(text) == expected


def test_terms_keep_their_source_words():
    """Each term knows the words it came from (for times and for display)."""
    ts = terms("it was two thousand pounds alpha bravo one two".split())
    assert [(t.text, t.first, t.last) for t in ts] == [
        ("it", 0, 0), ("was", 1, 1), ("2000", 2, 3), ("pounds", 4, 4), ("ab12", 5, 8)]


def test_phonetic_key_groups_sound_alikes():
    assert phonetic_key("Smith") == phonetic_key("Smyth")
    assert phonetic_key("Philips") == phonetic_key("Fillips")
    assert phonetic_key("Knight") == phonetic_key("Night")
    assert phonetic_key("Birmingham") == phonetic_key("Burmingham")
    assert phonetic_key("Smith") != phonetic_key("Jones")


# -- the call index through the search -------------------------------------------------

def _save(db, call_id, segs, *, line="999", at=1000.0):
    with db.transaction() as conn:
        calls.insert(conn, call_id=call_id, line=line, caller="0111", state="ended",
                     arrived_at=at, handler_id="h1")
    tstore.save_transcript(db, call_id, engine="whisper", model="m", language="en",
                           segments=segs, duration=60.0, recording_path=None)


def _seg(channel, text, start, *, step=0.4, conf=0.9, low=()):
    """A segment with word times (``step`` apart) and confidences (``low`` words at 0.2)."""
    ws = [[w, round(start + i * step, 3), round(start + (i + 1) * step - 0.05, 3),
           0.2 if w.strip(".,?").lower() in low else conf] for i, w in enumerate(text.split())]
    return tstore.Segment(channel, start, ws[-1][2], text, conf, ws)


@pytest.fixture
def s(db):
    _save(db, "cross", [_seg("caller", "there is a burglary", 2.0),
                        _seg("handler", "okay stay on the line", 4.0),
                        _seg("caller", "he ran towards Station Road with a knife", 9.0)])
    _save(db, "money", [_seg("caller", "he stole two thousand pounds from the till", 1.0)])
    _save(db, "reg", [_seg("caller", "the van was alpha bravo one two charlie delta echo", 3.0)])
    _save(db, "postcode", [_seg("caller", "I live at B11 AA near the colour shop", 0.5)])
    _save(db, "place", [_seg("caller", "I am in Wolverhampton by the canal", 5.0,
                             low=("canal",))])
    _save(db, "name", [_seg("caller", "my name is Philips", 1.0)])
    return TranscriptSearch(db)


def test_words_in_different_segments_match_together(s):
    """AND across segments (and channels); the offset is the first matched word's start."""
    [h] = s.search("burglary knife")
    assert (h.call_id, h.offset, h.channel) == ("cross", 3.2, "caller")
    assert [(m["word"], m["at"], m["channel"]) for m in h.matches] == [
        ("burglary", 3.2, "caller"), ("knife", 11.8, "caller")]
    [h] = s.search("line knife")  # handler's word first
    assert (h.offset, h.channel) == (5.6, "handler")


def test_phrase_spans_two_segments_of_a_channel(s):
    """Segments of one channel are one text: a phrase split by a segment boundary matches."""
    [h] = s.search('"a burglary he ran"')
    assert h.call_id == "cross" and h.offset == 2.8


@pytest.mark.parametrize("query,call_id,offset", [
    ("2,000", "money", 1.8), ("2000 pounds", "money", 1.8), ("two thousand", "money", 1.8),
    ("AB12 CDE", "reg", 4.2), ("AB12", "reg", 4.2), ("alpha bravo one two", "reg", 4.2),
    ("bravo one one alpha alpha", "postcode", 1.7), ("B11 AA", "postcode", 1.7),
    ("color", "postcode", 3.3), ("colours", "postcode", 3.3), ("knives", "cross", 11.8),
])
def test_normalised_queries_find_their_words(s, query, call_id, offset):
    """Numbers, registrations, postcodes, spellings and plurals match however written;
    the offset is where the (first) matched word is said."""
    [h] = s.search(query)
    assert (h.call_id, h.offset, h.match) == (call_id, offset, "exact")


def test_misspelt_place_found_by_fuzzy_match_after_exact(db, s):
    """A misspelt place name finds the call through a close spelling, marked "fuzzy"; an
    exact match of a word ranks before fuzzy ones."""
    [h] = s.search("Wolverhamton")
    assert (h.call_id, h.match, h.offset) == ("place", "fuzzy", 6.2)
    assert "<mark>Wolverhampton</mark>" in h.snippet
    _save(db, "exact", [_seg("caller", "the wolverhamton sign is misspelt", 1.0)], at=2000.0)
    hits = TranscriptSearch(db).search("Wolverhamton")
    assert [(x.call_id, x.match, x.rank) for x in hits] == [("exact", "exact", 1), ("place", "fuzzy", 2)]
    assert hits[0].score > hits[1].score


def test_same_sounding_name_found_by_phonetic_match(s):
    """'Fillips' is too far in spelling from 'Philips' for the fuzzy cutoff but sounds the same."""
    [h] = s.search("Fillips")
    assert (h.call_id, h.match) == ("name", "phonetic")


def test_low_confidence_words_are_found_and_marked(s):
    [h] = s.search("canal")
    assert h.low_confidence and h.matches[0]["low_confidence"] and h.matches[0]["confidence"] == 0.2
    assert [f["text"] for f in h.fragments if f["low_confidence"]] == ["canal"]
    [h] = s.search("Wolverhampton")
    assert not h.low_confidence


def test_retranscription_keeps_versions_and_updates_vocabulary(db, s):
    """A new transcript replaces the index row and the vocabulary counts; the old one is
    kept as a version."""
    assert db.query_one("SELECT calls FROM transcription_vocab WHERE term='wolverhampton'")[0] == 1
    tstore.save_transcript(db, "place", engine="vosk", model="other", language="en",
                           segments=[_seg("caller", "I am in Walsall by the canal", 5.0)],
                           duration=60.0, recording_path=None)
    assert db.query_one("SELECT 1 FROM transcription_vocab WHERE term='wolverhampton'") is None
    assert [h.call_id for h in s.search("Walsall")] == ["place"]
    assert s.search("Wolverhampton") == []
    [old] = tstore.transcript_versions(db, "place")
    assert old["engine"] == "whisper" and "Wolverhampton" in old["text"]
    assert old["segments"][0]["words"][3][0] == "Wolverhampton"


def test_index_round_trip():
    """Terms keep channel, times, confidence and the words shown (punctuation-only words
    ride with the term before; a word making several terms is shown once)."""
    items = tstore.index_terms([("caller", 1.0, 2.0, "two thousand, <b>shouting</b> & more", None, []),
                                ("handler", 0.0, 1.0, "yes", 0.5, [["yes", 0.1, 0.4, 0.25]])])
    assert [(i.term, i.channel, i.display) for i in items] == [
        ("2000", "caller", "two thousand,"), ("b", "caller", "<b>shouting</b> &"),
        ("shouting", "caller", ""), ("b", "caller", ""), ("more", "caller", "more"),
        ("yes", "handler", "yes")]
    back = tstore.decode_index(*tstore.encode_index(items))
    assert [(b.term, b.start, b.channel, b.confidence, b.display) for b in back] == [
        (i.term, round(i.start, 3), i.channel, None if i.confidence is None else round(i.confidence, 2),
         i.display) for i in items]
    assert back[-1].low_confidence and back[-1].start == 0.1
