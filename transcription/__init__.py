"""Offline speech recognition: live captions, final transcripts, transcript search.

Public API (all the lead needs to wire; everything else is internal)::

    from transcription import TranscriptionService, TranscriptSearch, get_transcript

    svc = TranscriptionService(settings=settings.transcription, db=db, publish=publish)
    await svc.start()            # loads the model in a thread; ModelError says what's missing
    svc.live_start(call_id, priority=line.priority)   # lower number = more urgent (999 = 0)
    svc.feed(frame)              # telephony.api.AudioFrame, every 20 ms per channel; never blocks
    svc.live_stop(call_id)       # flushes: last finals are published
    svc.enqueue_final(call_id, recording_path, priority=0)  # durable job -> TranscriptFinal
    await svc.stop()

    search = TranscriptSearch(db)     # whole calls: FTS5 on SQLite, tsvector on PostgreSQL
    hits = await asyncio.to_thread(search.search, "burglary", line="999", since=t0, limit=20)
    # Hit: offset = first matched word's start, matches (words with times), fragments,
    # rank, score, match ("exact" | "fuzzy" | "phonetic"), low_confidence
    get_transcript(db, call_id)  # {engine, model, language, text, confidence, segments: [...]}

    transcribe_file(path, settings.transcription) -> dict        # CLI: one recording
    retranscribe(db, settings.transcription, since, until, call_ids=None)
        -> {"queued", "done", "failed"}   # the replaced transcripts: store.transcript_versions

Wiring (suggested): CallAnswered -> ``live_start(call_id, priority=line.priority)``
(or CallArrived, to caption the caller while queued); every telephony AudioFrame ->
``feed``; CallEnded -> ``live_stop``; RecordingSealed -> ``enqueue_final(call_id, path,
priority=line.priority)``. Search and ``get_transcript`` read SQLite: call them in a
thread (``TranscriptSearch.asearch``) and log each use with its reason (DPA s.62).

Events published (on the loop): ``TranscriptSegment`` (live partials/finals per channel),
``TranscriptFinal`` (after the job), and ``CallFlagged(flag="live_transcript_off",
detail=why)`` when a call gets no live captions or loses them under CPU load (the least
urgent calls first). Engines: ``vosk`` (streaming, any Vosk model folder) and
``whisper`` (faster-whisper; ``model = ""`` is the bundled tiny.en), see MODELS.md.
"""

from .engines import Engine, Hypothesis, Recogniser, Word, load_engine
from .errors import AudioError, ModelError, SearchQueryError, TranscriptionError
from .offline import retranscribe, transcribe_file
from .pgsearch import PgTranscriptSearch  # noqa: F401  (TranscriptSearch on a PostgreSQL store)
from .search import Hit, SearchBackend, TranscriptSearch
from .service import LIVE_OFF_FLAG, TranscriptionService
from .store import get_transcript

__all__ = [
    "LIVE_OFF_FLAG", "AudioError", "Engine", "Hit", "Hypothesis", "ModelError", "Recogniser",
    "SearchBackend", "SearchQueryError", "TranscriptSearch", "TranscriptionError",
    "TranscriptionService", "Word", "get_transcript", "load_engine", "retranscribe",
    "transcribe_file",
]
