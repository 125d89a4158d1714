"""Can an auditor find the call? Recogniser engines compared on telephone audio.

    .venv/bin/python bench/findability.py [--engines whisper-base,whisper-tiny,pocketsphinx]
        [--vosk-model DIR] [--limit N] [--seed 13] [--default whisper-base]

The corpus comes from ``bench/findability_corpus.py`` (made on first use, cached under
/tmp): caller scripts with addresses, numbers, registrations and postcodes spoken by a
neural voice (``natural``), by espeak-ng en-gb variants (``robotic``), the natural calls
again in 15 dB street noise (``noise15``), and 30 s of silence, comfort noise, DTMF and
hum (``nonspeech``), all band-limited and through G.711 (A-law and mu-law).

Each engine configuration runs in its own child process at nice 10 (one decoding
thread): it transcribes every call as the service does for final transcripts
(``Engine.transcribe`` on the 8 kHz recording). The transcripts are then stored and
indexed with the product's own code (``transcription.store.save_transcript``, the
corpus gazetteer stored as the service stores ``[transcription] hotwords``) and searched
with the product's search (``TranscriptSearch.search``, top 10), so the recall figures
include whatever the index and the search do with what the engine wrote. Transcripts are
cached under ``<out>/transcripts`` by audio hash and engine settings (configuration,
gazetteer, recognition code): re-scoring a search change does not re-run recognition
(``--no-cache`` does).

* ``recall2``: the two-word query (both words said by the caller) finds the call;
* ``misspelt``: the same query with one word mistyped finds it (``--misses`` lists both);
* ``offset1s``: the hit's offset is within 1 s of where a query word was said;
* ``WER``: word error rate against the script (numbers, letters normalised);
* ``nonspeech words``: words written on the 30 s non-speech calls (must be 0);
  ``prompt leak``: how many of those echo the gazetteer; ``loops``: segments with a
  phrase repeated 3 times or more;
* ``RTF``: decode time / audio time (one thread, nice 10, machine shared); ``RSS``:
  the child's peak resident memory.

The last line is the default engine's (``--default``) over the natural and noise calls:
``findability: recall2=NN% misspelt=NN% offset1s=NN% wer=NN% rtf=N.NN``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.findability_corpus import CALLS, build  # noqa: E402

ENGINES = ("whisper-base", "whisper-tiny")
"""Run by default; also: whisper-base-nogaz, whisper-tiny-nogaz, whisper-base-naive,
whisper-tiny-naive, pocketsphinx (RTF ~1.8: slow), vosk (with --vosk-model)."""

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}


def norm_words(text: str) -> list[str]:
    """Words for WER: lower case, digits as digit strings ("fourteen" -> "14",
    "twenty seven" -> "27", "one one two" -> "112"), short capital runs spelt out
    ("BD51" -> b d 51), "oh" between digits as 0."""
    toks: list[str] = []
    for raw in re.findall(r"[A-Za-z']+|\d+", text.replace("-", " ")):
        if raw.isupper() and len(raw) <= 3 and raw not in ("I", "A"):
            toks += list(raw.lower())
        else:
            toks.append(raw.lower().strip("'"))
    out: list[str] = []
    for t in toks:
        if t in _ONES:
            t = str(_ONES.index(t))
        elif t in _TENS:
            t = str(_TENS[t])
        if t.isdigit() and out and out[-1].isdigit():
            prev = out[-1]
            if prev.endswith("0") and len(prev) == 2 and len(t) == 1 and int(prev) >= 20:
                out[-1] = str(int(prev) + int(t))  # twenty seven
            else:
                out[-1] = prev + t  # digits read one by one
            continue
        out.append(t)
    return [t for t in out if t]


def wer(ref: str, hyp: str) -> tuple[int, int]:
    """(edits, reference words)."""
    r, h = norm_words(ref), norm_words(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)], len(r)


def has_loop(text: str) -> bool:
    w = re.findall(r"[a-z0-9']+", text.lower())
    for n in range(1, 7):
        for i in range(len(w) - 3 * n + 1):
            if w[i:i + n] == w[i + n:i + 2 * n] == w[i + 2 * n:i + 3 * n]:
                return True
    return False


# -- engines (in the child) ----------------------------------------------------------------

class PocketSphinx:
    """CMU PocketSphinx 5 with the en-us model inside its wheel (16 kHz acoustic model:
    the 8 kHz call is resampled)."""

    name, model, language = "pocketsphinx", "en-us (pocketsphinx wheel)", "en"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._d = Decoder(loglevel="FATAL")

    def transcribe(self, pcm: Any, rate: int) -> list[Any]:
        from transcription.audio import Resampler
        from transcription.engines import Hypothesis, Word

        x = Resampler(rate, 16000).process(pcm)
        d = self._d
        d.start_utt()
        d.process_raw(x.tobytes(), full_utt=True)
        d.end_utt()
        lm = d.get_logmath()
        words = []
        for s in d.seg():
            w = re.sub(r"\(\d+\)$", "", s.word)
            if w.startswith(("<", "[")) or w in ("", "<sil>"):
                continue
            words.append(Word(w, s.start_frame / 100, s.end_frame / 100, float(lm.exp(s.prob))))
        if not words:
            return []
        text = " ".join(w.word for w in words)
        conf = sum(w.confidence for w in words) / len(words)
        return [Hypothesis(text, words[0].start, words[-1].end, True, conf, tuple(words))]


def load(config: str, gazetteer: list[str], vosk_model: str) -> Any:
    from transcription.decoding import DecodeOptions
    from transcription.engines import VoskEngine, WhisperEngine

    if config == "pocketsphinx":
        return PocketSphinx()
    if config == "vosk":
        return VoskEngine(vosk_model, language="en")
    model = "base" if config.startswith("whisper-base") else "tiny.en"
    if config.endswith("-naive"):  # faster-whisper's plain settings: no VAD, no gazetteer, no guard
        opts = DecodeOptions(vad=False, echo_no_speech=1.0, echo_log_prob=-99.0)
        eng = WhisperEngine(model, options=opts)
        eng._guarded = lambda text, *_a: text.strip()  # type: ignore[method-assign]
        return eng
    hot = () if config.endswith("-nogaz") else tuple(gazetteer)
    return WhisperEngine(model, options=DecodeOptions(hotwords=hot))


def run_engine(config: str, rows: list[dict[str, Any]], gazetteer: list[str], vosk_model: str,
               q: Any) -> None:
    os.nice(max(0, 10 - os.nice(0)))  # nice 10, not 10 more than the parent
    from harness.speech import read_wav

    t0 = time.perf_counter()
    eng = load(config, gazetteer, vosk_model)
    load_s = time.perf_counter() - t0
    out = {}
    busy = audio = 0.0
    calls = {}
    for r in rows:
        pcm, _, rate = read_wav(Path(r["path"]))
        t = time.perf_counter()
        hyps = eng.transcribe(pcm, rate)
        took = time.perf_counter() - t
        busy += took
        audio += len(pcm) / rate
        out[r["call_id"]] = [{"text": h.text, "start": h.start, "end": h.end, "confidence": h.confidence,
                              "words": [[w.word, w.start, w.end, w.confidence] for w in h.words]}
                             for h in hyps]
        calls[r["call_id"]] = {"busy": took, "audio": len(pcm) / rate}
    q.put({"config": config, "model": getattr(eng, "model", config), "load_s": load_s,
           "busy": busy, "audio": audio, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "dropped": dict(getattr(eng, "dropped", {})), "hyps": out, "calls": calls})


# -- transcript cache (re-scoring a search change does not re-run recognition) -----------

_ENGINE_SOURCES = ("transcription/engines.py", "transcription/decoding.py", "transcription/audio.py")


def settings_key(config: str, gazetteer: list[str], vosk_model: str) -> str:
    """What a transcript depends on besides the audio: the engine configuration, the
    gazetteer, the Vosk model folder and the recognition code itself."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(json.dumps([config, gazetteer, vosk_model]).encode())
    for src in _ENGINE_SOURCES:
        h.update((root / src).read_bytes())
    h.update(Path(__file__).read_bytes().split(b"# -- transcript cache")[0])  # load() and run_engine()
    return h.hexdigest()[:16]


def audio_key(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class TranscriptCache:
    """One JSON file per engine settings under ``<out>/transcripts``: audio hash ->
    hypotheses and decode time of that call."""

    def __init__(self, out: Path, config: str, settings: str) -> None:
        self.path = out / "transcripts" / f"{config}-{settings}.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def missing(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if audio_key(r["path"]) not in self.data.get("calls", {})]

    def store(self, res: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        calls = self.data.setdefault("calls", {})
        for r in rows:
            if r["call_id"] in res["hyps"]:
                calls[audio_key(r["path"])] = {"hyps": res["hyps"][r["call_id"]], **res["calls"][r["call_id"]]}
        for k in ("model", "load_s", "rss_mb"):
            self.data[k] = res[k]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

    def result(self, config: str, rows: list[dict[str, Any]], dropped: dict[str, Any]) -> dict[str, Any]:
        calls = {r["call_id"]: self.data["calls"][audio_key(r["path"])] for r in rows}
        return {"config": config, "model": self.data["model"], "load_s": self.data["load_s"],
                "rss_mb": self.data["rss_mb"], "dropped": dropped,
                "busy": sum(c["busy"] for c in calls.values()),
                "audio": sum(c["audio"] for c in calls.values()),
                "hyps": {cid: c["hyps"] for cid, c in calls.items()}}


# -- scoring (in the parent, with the product's store and search) -------------------------

def score(res: dict[str, Any], rows: list[dict[str, Any]], gazetteer: list[str]) -> dict[str, Any]:
    from store import calls
    from store.db import Database
    from transcription import store as tstore
    from transcription.decoding import echoes_prompt, prompt_text
    from transcription.engines import Hypothesis, Word
    from transcription.search import TranscriptSearch

    prompt = prompt_text("", gazetteer)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "findability.sqlite3")
        db.migrate(calls.COMPONENT, calls.MIGRATIONS)
        tstore.migrate(db, gazetteer=gazetteer)  # as the service, with [transcription] hotwords
        for cid, hs in res["hyps"].items():
            hyps = [Hypothesis(h["text"], h["start"], h["end"], True, h["confidence"],
                               tuple(Word(*w) for w in h["words"])) for h in hs]
            tstore.save_transcript(db, cid, engine=res["config"], model=res["model"], language="en",
                                   segments=tstore.segments_from({"caller": hyps}), duration=None,
                                   recording_path=None)
        search = TranscriptSearch(db)
        groups: dict[str, dict[str, float]] = {}
        misses: list[str] = []
        for r in rows:
            g = groups.setdefault(r["group"], {"n": 0, "found": 0, "mis": 0, "off": 0, "edits": 0,
                                               "refw": 0, "words": 0, "leak": 0, "loops": 0})
            text = " ".join(h["text"] for h in res["hyps"][r["call_id"]])
            g["n"] += 1
            g["loops"] += sum(has_loop(h["text"]) for h in res["hyps"][r["call_id"]])
            if r["group"] == "nonspeech":
                g["words"] += len(text.split())
                g["leak"] += sum(len(h["text"].split()) for h in res["hyps"][r["call_id"]]
                                 if echoes_prompt(h["text"], prompt))
                continue
            e, n = wer(r["text"], text)
            g["edits"] += e
            g["refw"] += n
            hits = search.search(" ".join(r["query"]), limit=10)
            hit = next((h for h in hits if h.call_id == r["call_id"]), None)
            if hit is not None:
                g["found"] += 1
                starts = [s for s in r["starts"] if s is not None]
                g["off"] += any(abs(hit.offset - s) <= 1.0 for s in starts)
            else:
                misses.append(f"{r['call_id']}: {' '.join(r['query'])!r} not in {text!r}")
            try:
                mhits = search.search(" ".join(r["misspelt"]), limit=10)
            except Exception:  # a query the search refuses counts as not found
                mhits = []
            found_m = any(h.call_id == r["call_id"] for h in mhits)
            g["mis"] += found_m
            if not found_m:
                misses.append(f"{r['call_id']}: misspelt {' '.join(r['misspelt'])!r} not in {text!r}")
        db.close() if hasattr(db, "close") else None
    return {"groups": groups, "misses": misses}


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.0f}%" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--vosk-model", default="", help="an English Vosk model folder (adds engine 'vosk')")
    ap.add_argument("--default", default="whisper-base", help="engine of the last line")
    ap.add_argument("--out", default="/tmp/controlroom-findability")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--limit", type=int, default=12, help="first N caller scripts (0: all 16)")
    ap.add_argument("--json", default="", help="write all results here")
    ap.add_argument("--misses", action="store_true", help="print each call not found")
    ap.add_argument("--no-cache", action="store_true",
                    help="transcribe every call again (else reuse <out>/transcripts, keyed by"
                         " audio hash and engine settings)")
    a = ap.parse_args()
    manifest = build(Path(a.out), a.seed, limit=a.limit or None)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    gazetteer = json.loads(CALLS.read_text())["gazetteer"]
    configs = [c for c in a.engines.split(",") if c]
    if a.vosk_model:
        configs.append("vosk")
    speech = [r for r in rows if r["group"] != "nonspeech"]
    print(f"corpus: {len(speech)} calls with speech, {len(rows) - len(speech)} without, "
          f"{sum(r['duration'] for r in rows) / 60:.1f} min ({manifest.parent})")
    ctx = mp.get_context("spawn")
    results = {}
    for c in configs:
        cache = TranscriptCache(Path(a.out), c, settings_key(c, gazetteer, a.vosk_model))
        todo = rows if a.no_cache else cache.missing(rows)
        dropped: dict[str, Any] = {}
        if todo:
            q = ctx.Queue()
            p = ctx.Process(target=run_engine, args=(c, todo, gazetteer, a.vosk_model, q))
            p.start()
            try:
                fresh = q.get(timeout=3600)
            except Exception as exc:
                print(f"{c}: failed ({exc})")
                p.join(5)
                continue
            p.join()
            cache.store(fresh, todo)
            dropped = fresh["dropped"]
        else:
            print(f"{c}: transcripts from {cache.path}")
        res = cache.result(c, rows, dropped)
        res["score"] = score(res, rows, gazetteer)
        results[c] = res
        s = res["score"]["groups"]
        print(f"{c}: RTF {res['busy'] / res['audio']:.2f}, RSS {res['rss_mb']:.0f} MB, "
              f"load {res['load_s']:.1f} s, guard dropped {res['dropped']}", flush=True)
        if a.misses:
            for m in res["score"]["misses"]:
                print("   miss", m)
        del s
    groups = ("natural", "noise15", "robotic")
    print()
    print("| engine | " + " | ".join(f"{g} recall2 / misspelt / offset1s / WER" for g in groups)
          + " | non-speech words (prompt leak) | loops | RTF | RSS MB |")
    print("|---" * (len(groups) + 5) + "|")
    for c, res in results.items():
        s = res["score"]["groups"]
        cells = []
        for g in groups:
            x = s.get(g)
            cells.append("-" if not x else f"{pct(x['found'], x['n'])} / {pct(x['mis'], x['n'])} / "
                         f"{pct(x['off'], x['found'])} / {pct(x['edits'], x['refw'])}")
        ns = s.get("nonspeech", {"words": 0, "leak": 0})
        loops = sum(x["loops"] for x in s.values())
        print(f"| {c} ({res['model']}) | " + " | ".join(cells)
              + f" | {ns['words']:.0f} ({ns['leak']:.0f}) | {loops:.0f} | {res['busy'] / res['audio']:.2f}"
              f" | {res['rss_mb']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    d = results.get(a.default)
    if d is None:
        return
    s = d["score"]["groups"]
    tot = {k: sum(s[g][k] for g in ("natural", "noise15") if g in s)
           for k in ("n", "found", "mis", "off", "edits", "refw")}
    print(f"findability: recall2={pct(tot['found'], tot['n'])} misspelt={pct(tot['mis'], tot['n'])} "
          f"offset1s={pct(tot['off'], tot['found'])} wer={pct(tot['edits'], tot['refw'])} "
          f"rtf={d['busy'] / d['audio']:.2f}")


if __name__ == "__main__":
    main()
