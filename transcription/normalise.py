"""Words -> search terms, the same at index time and at query time.

Recognisers and auditors write the same thing differently: "two thousand", "2,000" and
"2000"; "color" and "colour"; a registration spoken "alpha bravo one two charlie delta
echo" or written "AB12 CDE"; a postcode "bravo one one alpha alpha" or "B11 AA". Both
the transcript and the query go through :func:`terms`, so each of those pairs becomes
one canonical term:

* case folded, diacritics and apostrophes dropped ("Don't" -> "dont"); thousands
  separators dropped ("2,000" -> "2000"); ordinals to digits ("12th" -> "12");
* UK spelling (``colour``, ``realise``, ``centre``, ``tyre``, ``travelled``...);
* numbers in words to digits ("two thousand and five" -> "2005", "twenty one" -> "21");
* a run of spelled characters (NATO alphabet words, single letters, single digits, short
  groups next to a letter-digit group) becomes one code term ("ab12cde", "b11aa",
  "0121" from "oh one two one"). A code in a query also matches longer codes that start
  with it (``is_code``): "AB12" finds "AB12 CDE";
* irregular plurals to their singular ("knives" -> "knife", "men" -> "man"); regular
  plurals and simple stems are left to the index's Porter stemmer (FTS5), which sees
  these canonical terms on both sides.

:func:`phonetic_key` is a compact Metaphone-like key (consonant skeleton with English
spelling rules) for the search's phonetic expansion of misspelt names.

:class:`Gazetteer` holds the force's place and street names (``[transcription]
hotwords``); :meth:`Gazetteer.alternatives` finds the transcript words (or pairs of
adjacent words) that sound like one of them but were written otherwise ("Hobon" for
Harborne, "king standing" for Kingstanding), so the index can hold the name too.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

_PIECES = re.compile(r"[^\W_]+", re.UNICODE)
_THOUSANDS = re.compile(r"(?<=\d)[,.](?=\d{3}(?!\d))")
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th)$")

NATO = {"alpha": "a", "alfa": "a", "bravo": "b", "charlie": "c", "delta": "d", "echo": "e",
        "foxtrot": "f", "golf": "g", "hotel": "h", "india": "i", "juliet": "j",
        "juliett": "j", "kilo": "k", "lima": "l", "mike": "m", "november": "n",
        "oscar": "o", "papa": "p", "quebec": "q", "romeo": "r", "sierra": "s",
        "tango": "t", "uniform": "u", "victor": "v", "whiskey": "w", "whisky": "w",
        "xray": "x", "yankee": "y", "zulu": "z"}

UNITS = {"zero": 0, "nought": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4,
         "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
         "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
        "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"thousand": 1000, "million": 1_000_000}

# US -> UK. Rules below catch the regular families; this lists the rest.
US_UK = {
    "color": "colour", "honor": "honour", "favor": "favour", "neighbor": "neighbour",
    "behavior": "behaviour", "harbor": "harbour", "labor": "labour", "rumor": "rumour",
    "humor": "humour", "vapor": "vapour", "armor": "armour", "odor": "odour",
    "savior": "saviour", "flavor": "flavour", "valor": "valour", "vigor": "vigour",
    "parlor": "parlour", "endeavor": "endeavour", "neighborhood": "neighbourhood",
    "favorite": "favourite", "colored": "coloured", "center": "centre", "theater": "theatre",
    "meter": "metre", "liter": "litre", "fiber": "fibre", "caliber": "calibre",
    "somber": "sombre", "defense": "defence", "offense": "offence", "license": "licence",
    "pretense": "pretence", "tire": "tyre", "curb": "kerb", "gray": "grey",
    "jewelry": "jewellery", "aluminum": "aluminium", "mom": "mum", "pajamas": "pyjamas",
    "plow": "plough", "check": "check", "catalog": "catalogue", "dialog": "dialogue",
    "analog": "analogue", "program": "programme", "skeptical": "sceptical",
    "maneuver": "manoeuvre", "fetus": "foetus", "diarrhea": "diarrhoea",
    "anesthetic": "anaesthetic", "pediatric": "paediatric", "ax": "axe", "mustache": "moustache",
    "cozy": "cosy", "draft": "draught", "story": "storey", "whiskey": "whisky",
    "cell": "cell", "cellphone": "mobile", "sidewalk": "pavement", "apartment": "flat",
    "gasoline": "petrol", "gas": "gas", "mailman": "postman", "zip": "zip",
}
IRREGULAR_PLURALS = {  # the Porter stemmer leaves these apart from their singulars
    "knives": "knife", "wives": "wife", "thieves": "thief", "wolves": "wolf", "halves": "half",
    "shelves": "shelf", "loaves": "loaf", "men": "man", "women": "woman", "children": "child",
    "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose", "policemen": "policeman",
    "policewomen": "policewoman",
}
_US_SUFFIX_WORDS = {  # stems whose -or/-er/-ize endings are American
    "color", "honor", "favor", "neighbor", "behavior", "harbor", "labor", "rumor", "humor",
    "vapor", "armor", "odor", "flavor", "center", "theater", "meter", "liter", "fiber",
}
_IZE_KEEP = {"size", "seize", "prize", "capsize", "resize", "downsize", "oversize",
             "baize", "maize", "assize", "citizen"}
_DOUBLE_L = re.compile(r"^(travel|cancel|fuel|label|model|signal|level|total|dial|"
                       r"counsel|marvel|jewel|quarrel|channel|tunnel|shovel|equal)(ed|ing|er|ers)$")


def _fold(word: str) -> str:
    w = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in w if not unicodedata.combining(c))


def uk_spelling(w: str) -> str:
    """One lower-case word in UK spelling (a no-op for UK and unknown words), irregular
    plurals as their singular."""
    if w in US_UK:
        return US_UK[w]
    if w in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[w]
    for suffix in ("s", "ed", "ing", "ful", "less", "able", "ably"):  # neighbors, colored
        if w.endswith(suffix) and w[: -len(suffix)] in _US_SUFFIX_WORDS:
            return US_UK[w[: -len(suffix)]] + suffix
    m = _DOUBLE_L.match(w)
    if m:
        return m.group(1) + "l" + m.group(2)
    for us, uk in (("ization", "isation"), ("izations", "isations"), ("izing", "ising"),
                   ("ized", "ised"), ("izes", "ises"), ("ize", "ise"), ("yze", "yse"),
                   ("yzed", "ysed"), ("yzing", "ysing")):
        if w.endswith(us) and len(w) > len(us) + 2 and not any(w.endswith(k) for k in _IZE_KEEP):
            return w[: -len(us)] + uk
    return w


@dataclass(frozen=True)
class Term:
    """One search term and the source words it came from (indexes, inclusive)."""

    text: str
    first: int
    last: int


@dataclass
class _Unit:
    text: str
    first: int
    last: int
    num: int | None = None  # value when a number word or digits
    kind: str = ""  # unit, teen, tens, hundred, scale, and, digits, ""


@functools.lru_cache(maxsize=200_000)
def _word(raw: str) -> tuple[tuple[str, str, int | None], ...]:
    """(text, kind, value) of each piece of one word (cached: words repeat)."""
    w = _fold(raw).replace("'", "").replace("\u2019", "").replace("x-ray", "xray")
    w = _THOUSANDS.sub("", w)
    out = []
    for piece in _PIECES.findall(w):
        m = _ORDINAL.match(piece)
        if m:
            piece = m.group(1)
        kind, num = "", None
        if piece.isdigit():
            kind, num = "digits", int(piece) if len(piece) < 10 else None
        elif piece in UNITS:
            kind, num = "unit", UNITS[piece]
        elif piece in TEENS:
            kind, num = "teen", TEENS[piece]
        elif piece in TENS:
            kind, num = "tens", TENS[piece]
        elif piece == "hundred":
            kind = "hundred"
        elif piece in SCALES:
            kind = "scale"
        elif piece == "and":
            kind = "and"
        out.append((uk_spelling(piece), kind, num))
    return tuple(out)


def _units(words: Sequence[str]) -> list[_Unit]:
    return [_Unit(text, i, i, num, kind) for i, raw in enumerate(words)
            for text, kind, num in _word(raw)]


_CAN_FOLLOW: dict[str, set[str | None]] = {  # number word kind -> previous kinds it may continue
    "unit": {None, "tens", "hundred", "scale", "and"},
    "teen": {None, "hundred", "scale", "and"},
    "tens": {None, "hundred", "scale", "and"},
    "hundred": {"unit", "teen", "tens", "digits"},
    "scale": {"unit", "teen", "tens", "hundred", "digits"},
}


_NUMBER_KINDS = frozenset(("unit", "teen", "tens", "hundred", "scale"))


def _numbers(units: list[_Unit]) -> list[_Unit]:
    """Runs of number words -> one unit with the value ("two thousand and five" -> 2005)."""
    if not any(u.kind in _NUMBER_KINDS for u in units):
        return units
    out: list[_Unit] = []
    i = 0
    while i < len(units):
        u = units[i]
        if u.kind not in ("unit", "teen", "tens") and not (
                u.kind == "digits" and i + 1 < len(units) and units[i + 1].kind in ("hundred", "scale")):
            out.append(u)
            i += 1
            continue
        total, cur, last, j, words_used = 0, 0, None, i, 0
        end = i
        while j < len(units):
            k = units[j].kind
            if k == "digits":
                k2 = "digits" if last is None else "stop"
            else:
                k2 = k
            if k2 == "and":
                if last not in ("hundred", "scale") or j + 1 >= len(units) or \
                        units[j + 1].kind not in ("unit", "teen", "tens"):
                    break
            elif k2 == "digits":
                cur = units[j].num or 0
            elif k2 in _CAN_FOLLOW and last in _CAN_FOLLOW[k2]:
                if k2 in ("unit", "teen", "tens"):
                    cur += units[j].num or 0
                elif k2 == "hundred":
                    cur *= 100
                else:
                    total += cur * SCALES[units[j].text]
                    cur = 0
            else:
                break
            last = k2
            j += 1
            words_used += 1
            if k2 != "and":
                end = j
        if last in ("unit", "teen", "tens", "hundred", "scale", "and") or words_used > 1:
            span = units[i:end]
            # a single number word may be part of a spelled code ("alpha twelve"); a
            # number of several words ("two thousand") never is
            kind = span[0].kind if len(span) == 1 else "number"
            out.append(_Unit(str(total + cur), span[0].first, span[-1].last, total + cur, kind))
            i = end
        else:
            out.append(u)
            i += 1
    return out


def _piece(u: _Unit, prev: str | None) -> str | None:
    """The characters ``u`` adds to a spelled code, or None if it cannot be part of one."""
    t = u.text
    if u.kind == "number":
        return None
    if prev is None and u.kind != "unit" and len(t) > 1 and t.isalpha() and t not in NATO:
        return None  # the common case, decided early
    if len(t) > 8 and t not in NATO:
        return None
    if t in NATO:
        return NATO[t]
    if u.kind == "unit" or (len(t) == 1 and t.isalnum()):
        return str(u.num) if u.kind == "unit" else t
    if t.isdigit() and len(t) <= 4:
        return t
    if t.isalnum() and any(c.isdigit() for c in t) and any(c.isalpha() for c in t) and len(t) <= 8:
        return t
    if t.isalpha() and len(t) <= 3 and prev is not None and is_code(prev):
        return t  # "AB12 CDE", "B11 AA": the letter group after a letter-digit group
    return None


def _codes(units: list[_Unit]) -> list[_Unit]:
    out: list[_Unit] = []
    i = 0
    n = len(units)
    while i < n:
        u = units[i]
        if _piece(u, None) is None:  # most words: not the start of a code
            out.append(u)
            i += 1
            continue
        run: list[tuple[_Unit, str]] = []
        j = i
        while j < len(units):
            p = _piece(units[j], run[-1][1] if run else None)
            if p is None:
                break
            run.append((units[j], p))
            j += 1
        # a lone article or pronoun ("a", "i") at either end is a word, not a letter
        while run and run[0][0].text in ("a", "i") and run[0][0].text not in NATO:
            out.append(run.pop(0)[0])
        tail: list[_Unit] = []
        while run and run[-1][0].text in ("a", "i"):
            tail.insert(0, run.pop()[0])
        chars = "".join(p for _, p in run)
        nato = sum(u.text in NATO for u, _ in run)
        digits = any(c.isdigit() for c in chars)
        letters = any(c.isalpha() for c in chars)
        singles = sum(len(p) == 1 for _, p in run)
        if len(run) >= 2 and ((digits and letters) or nato >= 2 or
                              (digits and singles == len(run))):
            out.append(_Unit(chars, run[0][0].first, run[-1][0].last, None, "code"))
        else:
            out.extend(u for u, _ in run)
        out.extend(tail)
        if j == i:  # not a piece at all
            out.append(units[i])
            j = i + 1
        i = j
    return out


def terms(words: Sequence[str]) -> list[Term]:
    """The search terms of a sequence of words, each with the source words it covers."""
    return [Term(u.text, u.first, u.last) for u in _codes(_numbers(_units(words)))]


def normalise(text: str) -> list[str]:
    """Search terms of a text (split on white space)."""
    return [t.text for t in terms(text.split())]


def is_code(term: str) -> bool:
    """A letters-and-digits code (a registration, a postcode): matched by prefix."""
    return any(c.isdigit() for c in term) and any(c.isalpha() for c in term)


# -- phonetic key -------------------------------------------------------------------
_PHON_RULES = [
    (re.compile(r"^(kn|gn|pn|wr|ps)"), lambda m: m.group(1)[1]),
    (re.compile(r"^ch(?=[lr])"), lambda m: "k"),  # Chloe, Christine, Chris
    (re.compile(r"(?<=[aeiou])r+(?![aeiouy])"), lambda m: ""),  # non-rhotic: Harborne ~ Habon
    (re.compile(r"^x"), lambda m: "s"),
    (re.compile(r"^wh"), lambda m: "w"),
    (re.compile(r"mb$"), lambda m: "m"),
    (re.compile(r"sch"), lambda m: "sk"),
    (re.compile(r"tch"), lambda m: "ch"),
    (re.compile(r"ph"), lambda m: "f"),
    (re.compile(r"gh(?![aeiou])"), lambda m: ""),
    (re.compile(r"dg(?=[eiy])"), lambda m: "j"),
    (re.compile(r"ck"), lambda m: "k"),
    (re.compile(r"(sh|sio|tio|tia|ch)"), lambda m: "X"),
    (re.compile(r"th"), lambda m: "0"),
    (re.compile(r"c(?=[eiy])"), lambda m: "s"),
    (re.compile(r"g(?=[eiy])"), lambda m: "j"),
    (re.compile(r"[cq]"), lambda m: "k"),
    (re.compile(r"x"), lambda m: "ks"),
    (re.compile(r"z"), lambda m: "s"),
    (re.compile(r"v"), lambda m: "f"),
    (re.compile(r"h(?![aeiou])"), lambda m: ""),
    (re.compile(r"[wy](?![aeiou])"), lambda m: ""),
]


def phonetic_key(word: str) -> str:
    """A Metaphone-like consonant key, as British English is spoken (an "r" after a vowel
    and before a consonant is not heard): "Birmingham", "Burmingum" -> "BMNKM";
    "Harborne", "Hobon" -> "HBN"; "Chloe", "Clow" -> "KL"."""
    w = "".join(c for c in _fold(word) if "a" <= c <= "z")
    if not w:
        return ""
    for rx, rep in _PHON_RULES:
        w = rx.sub(rep, w)
    head, rest = w[0], w[1:]
    if head in "aeiouy":
        head = "A"
    rest = re.sub(r"[aeiouhwy]", "", rest)
    out = (head + rest).upper()
    return re.sub(r"(.)\1+", r"\1", out)


# -- gazetteer ----------------------------------------------------------------------
FUNCTION_WORDS = frozenset(
    "the and but for nor yet are was were been being have has had does did done not you your"
    " yours she her hers him his its our ours they them their theirs this that these those"
    " there here where when what which who whom whose why how with from into onto upon over"
    " under about above below after before near than then also just only very some any all"
    " each both more most much many such can could will would shall should may might must"
    " out off down back away again once said says like well yes okay".split())
"""English function words: never taken for a place name (alone or in a pair)."""


def _key_distance(a: str, b: str) -> int:
    return Levenshtein.distance(a, b, score_cutoff=2)


@dataclass(frozen=True)
class GazetteerMatch:
    """Transcript terms ``first``..``last`` (inclusive) sound like gazetteer ``name``,
    whose search terms are ``terms``."""

    first: int
    last: int
    name: str
    terms: tuple[str, ...]
    distance: int
    """Edits between the phonetic keys (0: they sound the same)."""


class Gazetteer:
    """Place and street names of the force, matched against transcript words by sound.

    A transcript word, or two adjacent words written as one, matches a name when its
    phonetic key (:func:`phonetic_key`, of the letters joined; at least :attr:`MIN_KEY`
    long) is the name's and the spellings are at least :attr:`MIN_SPELLING` alike
    (rapidfuzz ratio), or, for a single word, one key edit from it when the key has at
    least :attr:`MIN_KEY_FOR_EDIT` letters, the first letters agree, the lengths are close
    (:attr:`MIN_LENGTH_RATIO`) and the spellings at least :attr:`MIN_SPELLING_EDIT` alike.
    Words that are themselves a name (or a word of one), and words shorter than
    :attr:`MIN_LETTERS`, never match. Cost: one dict lookup per word and pair, plus an
    edit distance to the names whose key starts alike and differs in length by at most
    one (a few per word, even for thousands of names).
    """

    MIN_LETTERS = 4
    MIN_KEY = 3
    """Shorter keys ("name" NM, "blue" BL) are shared by too many words."""
    MIN_KEY_FOR_EDIT = 4
    MIN_SPELLING = 55.0
    MIN_SPELLING_EDIT = 65.0
    MIN_LENGTH_RATIO = 0.75
    """A name one key edit away must be about as long as the word ("hands" is not
    Handsworth)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names: dict[str, tuple[str, ...]] = {}  # joined letters -> search terms
        self._by_key: dict[str, list[str]] = {}
        self._near: dict[tuple[str, int], list[tuple[str, str]]] = {}  # (head, key len) -> (key, joined)
        self._words: set[str] = set()
        for name in names:
            ts = tuple(normalise(name))
            joined = "".join(ts)
            if not ts or not joined.isalpha() or len(joined) < self.MIN_LETTERS or joined in self.names:
                continue
            self.names[joined] = ts
            self._words.update(ts)
            key = phonetic_key(joined)
            self._by_key.setdefault(key, []).append(joined)
            self._near.setdefault((joined[0], len(key)), []).append((key, joined))

    def __bool__(self) -> bool:
        return bool(self.names)

    def match(self, spelled: str, *, joined_words: bool = False) -> tuple[str, int] | None:
        """(name's joined letters, key distance) of the name ``spelled`` sounds like;
        ``joined_words``: ``spelled`` is two words joined ("king" "standing"), which
        match a name only by the same key (two words sounding one edit from a name are
        mostly two ordinary words)."""
        if spelled in self.names and (joined_words or self.names[spelled] != (spelled,)):
            return spelled, 0  # "king standing", "kingsheath"
        if len(spelled) < self.MIN_LETTERS or spelled in self.names or spelled in self._words:
            return None
        key = phonetic_key(spelled)
        if len(key) < self.MIN_KEY:
            return None
        best: tuple[float, str, int] | None = None
        for joined in self._by_key.get(key, ()):
            sim = fuzz.ratio(spelled, joined)
            if sim >= self.MIN_SPELLING and (best is None or sim > best[0]):
                best = (sim, joined, 0)
        if best is None and not joined_words and len(key) >= self.MIN_KEY_FOR_EDIT:
            for n in (len(key) - 1, len(key), len(key) + 1):
                near = self._near.get((spelled[0], n))
                if not near:
                    continue
                keys = [k for k, _ in near]
                for _, dist, i in process.extract_iter(key, keys, scorer=Levenshtein.distance,
                                                       score_cutoff=1):
                    joined = near[i][1]
                    short, long_ = sorted((len(spelled), len(joined)))
                    if dist > 1 or short < self.MIN_LENGTH_RATIO * long_:
                        continue
                    sim = fuzz.ratio(spelled, joined)
                    if sim >= self.MIN_SPELLING_EDIT and (best is None or sim > best[0]):
                        best = (sim, joined, 1)
        return None if best is None else (best[1], best[2])

    def alternatives(self, words: Sequence[str]) -> list[GazetteerMatch]:
        """Names heard as ``words`` (search terms, in order): each single word, then each
        pair of adjacent words not already matched (the pair's letters joined). Common
        function words ("there", "and the") are never taken for a name."""
        if not self.names:
            return []
        out: list[GazetteerMatch] = []
        single: dict[int, str] = {}
        for i, w in enumerate(words):
            if w.isalpha() and w not in FUNCTION_WORDS:
                m = self.match(w)
                if m is not None:
                    single[i] = m[0]
                    out.append(GazetteerMatch(i, i, m[0], self.names[m[0]], m[1]))
        for i in range(len(words) - 1):
            a, b = words[i], words[i + 1]
            if (not (a.isalpha() and b.isalpha()) or min(len(a), len(b)) < 3
                    or a in FUNCTION_WORDS or b in FUNCTION_WORDS
                    or a in self.names or b in self.names):
                continue  # "halesowen it": the name was heard already
            m = self.match(a + b, joined_words=True)
            if m is None or single.get(i) == m[0] or single.get(i + 1) == m[0]:
                continue
            if self.names[m[0]] == (a, b):
                continue  # "selly oak": the name itself
            out.append(GazetteerMatch(i, i + 1, m[0], self.names[m[0]], m[1]))
        return sorted(out, key=lambda g: (g.last, g.first))
