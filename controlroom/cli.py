"""``controlroom`` command line: serve, worker, demo, check-config, search, transcribe,
retranscribe, reindex, user add."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import signal
import socket
import sys
from pathlib import Path

from controlroom import __version__


def _load(path: str):  # noqa: ANN202 - returns config.Settings
    from config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    from controlroom.check import check, notes

    settings = _load(args.config)
    problems = check(settings, connect=args.connect)
    for note in notes(settings):
        print(f"note: {note}")
    for p in problems:
        print(f"configuration error: {p}", file=sys.stderr)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s); serve would not start",
              file=sys.stderr)
        return 2
    print(f"{args.config}: OK — {len(settings.lines)} lines "
          f"({', '.join(line.name for line in settings.lines)}), "
          f"{len(settings.handlers)} handlers, transcription={settings.transcription.engine}"
          + (", broker and database reachable" if args.connect else ""))
    return 0


async def _serve(settings) -> int:  # noqa: ANN001
    from controlroom.logs import configure
    from controlroom.service import Service
    from controlroom.web import console_url
    from telephony.runtime import prioritise_this_thread, tune_gc

    configure(settings.logging.level, settings.logging.json)
    service = Service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    tune_gc()  # short, rare garbage-collector pauses (see telephony.runtime)
    prioritise_this_thread()  # speech recognition and checkpoints behind the call path
    print(f"controlroom serving: SIP udp {settings.sip.bind}:{service.engine.sip_port}, "
          f"console {console_url(settings.web, service.web_port)}", flush=True)
    await stop.wait()
    print("draining: new 101 calls refused (503), calls in progress continue "
          f"up to {settings.drain_timeout:.0f} s; Ctrl-C again to stop now", flush=True)
    stop.clear()
    drain = asyncio.create_task(service.drain())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({drain, waiter}, return_when=asyncio.FIRST_COMPLETED)
    drain.cancel()
    waiter.cancel()
    await service.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from config import ConfigError
    from controlroom.check import check

    settings = _load(args.config)
    # What check-config reports, serve refuses with the same one line per problem:
    # never a traceback for a configuration problem.
    problems = check(settings)
    for p in problems:
        print(f"configuration error: {p}", file=sys.stderr)
    if problems:
        return 2
    try:
        return asyncio.run(_serve(settings))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from controlroom.demo import run_demo

    return asyncio.run(run_demo(duration=args.duration, calls=args.calls, web_port=args.port,
                                engine=args.engine, keep=args.keep))


def _open_db(settings):  # noqa: ANN001, ANN202 - store.Database
    from console import users
    from controlroom.service import open_store
    from store import Database
    from store import calls as calls_table
    from transcription import store as tstore

    # The configured store: SQLite, or the shared PostgreSQL ([storage] url), where
    # transcripts and their search live too.
    db = open_store(settings) if settings.storage.url else Database(settings.storage.database_path)
    db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS, postgresql=calls_table.PG_MIGRATIONS)
    users.migrate(db)
    tstore.migrate(db)
    return db


def _plain(hit: dict) -> str:  # noqa: ANN001
    """The snippet as plain text: [matched words], low-confidence words with '(?)'."""
    out = []
    for f in hit["fragments"]:
        text = f"[{f['text']}]" if f["match"] else f["text"]
        out.append(text + ("(?)" if f["low_confidence"] else ""))
    return " ".join(out)


def _clock(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m)}:{s:04.1f}"


def cmd_search(args: argparse.Namespace) -> int:
    from console import audit, users
    from transcription import TranscriptSearch

    settings = _load(args.config)
    _logs_to_stderr()
    db = _open_db(settings)
    username = args.user or getpass.getuser()
    row = db.query_one("SELECT username, roles, handler_id, disabled FROM console_users"
                       " WHERE username=?", (username,))
    if row is None or row["disabled"]:
        print(f"search refused: {username!r} is not an enabled console user; pass --user NAME"
              " of an auditor (every search is logged under a person's name, DPA 2018 s.62)",
              file=sys.stderr)
        return 2
    user = users.User(row["username"], frozenset(json.loads(row["roles"])), row["handler_id"])
    if "auditor" not in user.roles:
        print(f"search refused: {username!r} does not have the auditor role", file=sys.stderr)
        return 2
    raw = {"number": args.caller, "line": args.line, "handler": args.handler,
           "incident": args.incident, "date_from": args.since, "date_to": args.until,
           "limit": args.limit}
    try:
        filters = audit.prepare_search(args.query, args.reason, raw, default_limit=20)
    except audit.AuditError as exc:
        print(f"search refused: {exc}", file=sys.stderr)
        return 2
    client = f"cli {getpass.getuser()}@{socket.gethostname()}"
    audit.log_search(db, user, query=args.query, justification=args.reason, filters=filters,
                     client=client)
    result = TranscriptSearch(db).search(args.query, before=args.continue_before,
                                         **audit.search_kwargs(filters))
    hits = [dict(vars(h)) for h in result]
    for h in hits:
        h["arrived_local"] = audit.local_time(h["arrived_at"])
        h["text"] = _plain(h)
        if args.json:
            print(json.dumps(h, default=str))
            continue
        flag = "" if h["match"] == "exact" else f" ({h['match']} match)"
        print(f"{h['rank']:>3}. {h['arrived_local']}  line {h['line'] or '-'}  caller "
              f"{h['caller'] or '-'}  handler {h['handler_id'] or '-'}"
              f"{'  incident ' + h['incident_number'] if h['incident_number'] else ''}"
              f"  call {h['call_id']}  score {h['score']:.3g}{flag}")
        print(f"     {h['channel']} @ {_clock(h['offset'])}: {h['text']}")
        words = ", ".join(f"{m['word']} @ {_clock(m['at'])} {m['channel']}"
                          + (" (low confidence)" if m["low_confidence"] else "")
                          for m in h["matches"])
        print(f"     matched: {words}")
    if not result.complete:  # the search read the newest part of the index only
        back = (f"calls after {audit.local_time(result.searched_back_to)}"
                if result.searched_back_to is not None else "the newest calls")
        print(f"searched {back} only; narrow the time range (--since/--until) or continue further"
              f" back with --continue {result.continue_before}", file=sys.stderr)
    if not hits:
        print("no matches", file=sys.stderr)
    return 0 if hits else 1


def _logs_to_stderr() -> None:
    """Progress logs go to stderr: stdout carries the command's result (JSON)."""
    from controlroom.logs import configure

    configure("info")


def _tsettings(args: argparse.Namespace):  # noqa: ANN202 - TranscriptionSettings
    from dataclasses import replace

    from config import TranscriptionSettings

    if args.config:
        ts = _load(args.config).transcription
        if args.engine:
            ts = replace(ts, engine=args.engine, model=args.model if args.model is not None else
                         ("" if args.engine != ts.engine else ts.model))
        elif args.model is not None:
            ts = replace(ts, model=args.model)
        return ts
    return TranscriptionSettings(engine=args.engine or "whisper", model=args.model or "")


def cmd_transcribe(args: argparse.Namespace) -> int:
    from transcription import TranscriptionError, transcribe_file

    _logs_to_stderr()
    try:
        result = transcribe_file(Path(args.recording), _tsettings(args))
    except TranscriptionError as exc:
        print(f"cannot transcribe {args.recording}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_retranscribe(args: argparse.Namespace) -> int:
    from console import audit
    from transcription import TranscriptionError, retranscribe

    if not (args.since or args.until or args.call):
        print("retranscribe needs --since/--until or --call (refusing to redo every call)",
              file=sys.stderr)
        return 2
    settings = _load(args.config)
    _logs_to_stderr()
    try:
        since = audit.parse_time(args.since, "--since")
        until = audit.parse_time(args.until, "--until", end_of_day=True)
    except audit.AuditError as exc:
        print(f"retranscribe: {exc}", file=sys.stderr)
        return 2
    db = _open_db(settings)
    try:
        counts = retranscribe(db, _tsettings(args), since, until, call_ids=args.call or None)
    except TranscriptionError as exc:
        print(f"cannot retranscribe: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0 if counts["failed"] == 0 else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    from transcription import store as tstore

    settings = _load(args.config)
    _logs_to_stderr()
    n = tstore.reindex(_open_db(settings))
    print(f"reindexed {n} transcripts")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Final transcription as its own process: take jobs from the configured store
    (transcription.worker) until SIGTERM/SIGINT (``--once``: until the queue is empty)."""
    import threading

    from controlroom.logs import configure
    from controlroom.service import open_store
    from transcription import TranscriptionError, jobs
    from transcription import store as tstore
    from transcription.decoding import options_from
    from transcription.engines import load_engine
    from transcription.worker import cad_final, run_worker

    settings = _load(args.config)
    configure(settings.logging.level, settings.logging.json)
    ts = settings.transcription
    if ts.engine == "none":
        print("worker: [transcription] engine is 'none': nothing to transcribe with",
              file=sys.stderr)
        return 2
    db = open_store(settings)
    tstore.migrate(db)
    jobs.migrate(db)
    try:
        engine = load_engine(ts.engine, ts.model, language=ts.language, replicas=1,
                             options=options_from(ts))
    except TranscriptionError as exc:
        print(f"worker: cannot load the speech model: {exc}", file=sys.stderr)
        return 2
    assert engine is not None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def on_done(call_id: str, result: dict) -> None:
        try:
            cad_final(db, node=settings.node_id, call_id=call_id, result=result)
        except db.Error as exc:  # no calls/outbox tables here: transcripts only
            print(f"worker: no CAD message for {call_id}: {exc}", file=sys.stderr)

    counts = run_worker(db, engine, language=ts.language, stop=stop, lease=ts.job_lease,
                        poll=args.poll, once=args.once, on_done=on_done)
    db.close()
    print(json.dumps(counts))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from console.users import UserError, create_user
    from store import Database

    settings = _load(args.config)
    password = args.password
    if password is None:
        password = getpass.getpass(f"password for {args.username}: ")
        if password != getpass.getpass("again: "):
            print("passwords differ", file=sys.stderr)
            return 2
    from console.users import password_problem

    if (problem := password_problem(password, args.username)) is not None:
        print(problem, file=sys.stderr)
        return 2
    db = Database(settings.storage.database_path)
    # A handler whose console login differs from their handler id is mapped here.
    handler_id = next((h.id for h in settings.handlers if h.user == args.username), None)
    try:
        create_user(db, args.username, password, args.role, handler_id=handler_id)
    except UserError as exc:
        print(f"cannot add user: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.username} created with roles {', '.join(args.role)}")
    return 0


def _auditor(db, name: str | None):  # noqa: ANN001, ANN202 - console.users.User | None
    """The enabled console user with the auditor role named ``name`` (default: login)."""
    return _console_user(db, name, "auditor", flag="--user")


def _console_user(db, name: str | None, role: str, *, flag: str):  # noqa: ANN001, ANN202
    """The enabled console user with ``role`` named ``name`` (default: the login name), or
    None after printing why not (console.users.User | None)."""
    from console import users

    username = name or getpass.getuser()
    row = db.query_one("SELECT username, roles, handler_id, disabled FROM console_users"
                       " WHERE username=?", (username,))
    if row is None or row["disabled"] or role not in json.loads(row["roles"]):
        print(f"refused: {username!r} is not an enabled console user with the {role} role;"
              f" pass {flag} NAME", file=sys.stderr)
        return None
    return users.User(row["username"], frozenset(json.loads(row["roles"])), row["handler_id"])


def cmd_user_phone(args: argparse.Namespace) -> int:
    """Set (or clear) the phone a supervisor's listen / whisper / barge rings: what the
    admin page's "Monitor phone" does, logged the same way (admin log, ``user.phone``)."""
    from console import users

    if (args.phone is None) == (not args.clear):
        print("give the phone (a SIP URI) or --clear, not both", file=sys.stderr)
        return 2
    settings = _load(args.config)
    db = _open_db(settings)
    try:
        admin = _console_user(db, args.by, "admin", flag="--by")
        if admin is None:
            return 2
        try:
            phone = users.set_phone(db, args.username, "" if args.clear else args.phone)
        except users.UserError as exc:
            print(f"cannot set the phone: {exc}", file=sys.stderr)
            return 2
        users.log_admin(db, admin, "user.phone", target=args.username,
                        detail={"phone": phone},
                        client=f"cli user phone {getpass.getuser()}@{socket.gethostname()}")
    finally:
        db.close()
    print(f"monitor phone of {args.username}: {phone}" if phone else
          f"monitor phone of {args.username} cleared (the handler entry with this user name"
          " is used, if any)")
    return 0


def _retention_stores(settings):  # noqa: ANN001, ANN202 - (Database, Database)
    from config.loader import secret
    from controlroom import retention
    from store import Database, outbox, queuelog

    url = getattr(settings.storage, "url", "")
    db = _open_db(settings) if not url else Database(secret(url, key="storage.url"))
    if url:
        from store import calls as calls_table
        db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS,
                   postgresql=calls_table.PG_MIGRATIONS)
    from store import calls as calls_table
    from store import systemlog

    db.migrate(calls_table.RECORDING_COMPONENT, calls_table.RECORDING_MIGRATIONS,
               postgresql=calls_table.RECORDING_PG_MIGRATIONS)
    db.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
    db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS, postgresql=queuelog.PG_MIGRATIONS)
    db.migrate(systemlog.COMPONENT, systemlog.MIGRATIONS, postgresql=systemlog.PG_MIGRATIONS)
    retention.migrate(db)
    tdb = retention.transcripts_db(db, settings.storage.data_dir)
    if tdb is not db:
        from transcription import store as tstore
        tstore.migrate(tdb)
    return db, tdb


def cmd_purge(args: argparse.Namespace) -> int:
    from controlroom import retention

    settings = _load(args.config)
    _logs_to_stderr()
    db, tdb = _retention_stores(settings)
    summary = retention.purge(db, tdb, settings.retention, dry_run=args.dry_run,
                              client=f"cli purge {getpass.getuser()}@{socket.gethostname()}",
                              rate=args.rate, limit=args.limit)
    if not args.dry_run and summary.calls:
        retention.publish_summary(settings, summary)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for d in summary.items:
            print(f"{verb} {', '.join(d.kinds)} of call {d.call_id} (line {d.line}, "
                  f"arrived {_when(d.arrived_at)}, {len(d.files)} file(s)): {d.reason}")
        print(f"{verb}: {summary.deleted['recording']} recordings, "
              f"{summary.deleted['transcript']} transcripts, {summary.deleted['call']} call "
              f"records; {summary.held} past retention kept under legal hold"
              + (f"; {summary.resumed} interrupted deletions finished" if summary.resumed else ""))
    return 0


def _when(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def cmd_hold(args: argparse.Namespace) -> int:
    from controlroom import retention

    settings = _load(args.config)
    db, _ = _retention_stores(settings)
    if args.hold_command == "list":
        for h in retention.holds(db):
            print(f"{h['call_id']}  held since {_when(h['set_at'])} by {h['set_by']}: "
                  f"{h['reason']}")
        return 0
    user = _auditor(db, args.user)
    if user is None:
        return 2
    try:
        if args.hold_command == "set":
            retention.set_hold(db, args.call_id, username=user.username, reason=args.reason)
            print(f"call {args.call_id} is under legal hold: it will not be deleted")
        else:
            retention.release_hold(db, args.call_id, username=user.username, reason=args.reason)
            print(f"legal hold on call {args.call_id} released")
    except retention.HoldError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlroom",
                                description="Force Control Room telephony and call routing")
    p.add_argument("--version", action="version", version=f"controlroom {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="run the whole thing on loopback with simulated calls")
    s.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    s.add_argument("--calls", type=int, default=12, help="calls to place (default 12)")
    s.add_argument("--port", type=int, default=8080, help="console port (default 8080)")
    s.add_argument("--engine", choices=["whisper", "vosk", "none"], default="whisper")
    s.add_argument("--keep", help="keep the data in this folder (default: a temporary one)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("check-config", help="validate a configuration file (and what it "
                       "points to: secrets, models, certificates, ports, data paths)")
    s.add_argument("config")
    s.add_argument("--connect", action="store_true",
                   help="also connect to the MQTT broker and the database")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("search", help="search transcripts (access-logged: needs --reason)",
                       description="Search call transcripts. Every search is written to the "
                       "access log with the user, the reason and the filters (DPA 2018 s.62), "
                       "as on the auditor page. Times are local. Matched words are shown "
                       "[like this], low-confidence words with (?).")
    s.add_argument("query", help='words (AND), "a phrase", a OR b, -word, prefix*')
    s.add_argument("--config", required=True)
    s.add_argument("--reason", required=True, help="why this search is needed (logged)")
    s.add_argument("--user", help="the console user (an auditor) searching; default: your login")
    s.add_argument("--line")
    s.add_argument("--caller", help="caller number")
    s.add_argument("--handler", help="handler id")
    s.add_argument("--incident", help="incident number")
    s.add_argument("--since", help="from (local): YYYY-MM-DD or 'YYYY-MM-DD HH:MM'")
    s.add_argument("--until", help="to (local, a day means its end): YYYY-MM-DD or 'YYYY-MM-DD HH:MM'")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true", help="one JSON object per hit")
    s.add_argument("--continue", dest="continue_before", type=int, metavar="N",
                   help="continue a search that stopped early further back (N: as it printed)")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("transcribe", help="transcribe a recording file (16-bit, A-law or µ-law WAV)")
    s.add_argument("recording")
    s.add_argument("--config")
    s.add_argument("--engine", choices=["whisper", "vosk"])
    s.add_argument("--model")
    s.set_defaults(func=cmd_transcribe)

    s = sub.add_parser("retranscribe", help="re-run final transcription (keeps each previous version)")
    s.add_argument("--config", required=True)
    s.add_argument("--since", help="calls that arrived from (local): YYYY-MM-DD or 'YYYY-MM-DD HH:MM'")
    s.add_argument("--until", help="calls that arrived before (local; a day means its end)")
    s.add_argument("--call", action="append", help="a call id (repeatable)")
    s.add_argument("--engine", choices=["whisper", "vosk"], help="default: the configured one")
    s.add_argument("--model")
    s.set_defaults(func=cmd_retranscribe)

    s = sub.add_parser("worker", help="transcribe recordings after calls: take final "
                       "transcription jobs from the store (run any number, on any machine)")
    s.add_argument("--config", required=True)
    s.add_argument("--once", action="store_true", help="stop when the queue is empty")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an "
                   "empty queue (default 1)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("reindex", help="rebuild the transcript search index")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_reindex)

    s = sub.add_parser("user", help="manage console users")
    usub = s.add_subparsers(dest="user_command", required=True)
    u = usub.add_parser("add", help="add a user (the first admin, for instance)")
    u.add_argument("username")
    u.add_argument("--role", action="append", required=True,
                   choices=["handler", "supervisor", "auditor", "admin"])
    u.add_argument("--config", required=True)
    u.add_argument("--password", help="(tests only; prompts when omitted)")
    u.set_defaults(func=cmd_user_add)
    u = usub.add_parser("phone", help="set the phone a supervisor's listen / whisper / barge "
                                      "rings (as on the admin page; logged)")
    u.add_argument("username")
    u.add_argument("phone", nargs="?", help="a SIP URI, e.g. sip:sup1@controlroom.local")
    u.add_argument("--clear", action="store_true", help="remove it (the handler entry with "
                                                        "this user name is used then)")
    u.add_argument("--by", help="the admin making the change (default: your login name)")
    u.add_argument("--config", required=True)
    u.set_defaults(func=cmd_user_phone)

    s = sub.add_parser("purge", help="delete what is past retention ([retention]; never a "
                       "call under legal hold); every deletion is access-logged")
    s.add_argument("--config", required=True)
    s.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    s.add_argument("--limit", type=int, help="calls at most (default: retention.batch)")
    s.add_argument("--rate", type=float, default=0.0,
                   help="calls per second at most (spares a busy disk; default: no limit)")
    s.add_argument("--json", action="store_true", help="the summary as one JSON object")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser("hold", help="legal hold: a held call is never deleted (auditors)")
    hsub = s.add_subparsers(dest="hold_command", required=True)
    for name, what in (("set", "put a call under legal hold"),
                       ("release", "release a call's legal hold")):
        h = hsub.add_parser(name, help=what)
        h.add_argument("call_id")
        h.add_argument("--reason", required=True, help="why (written to the hold log)")
        h.add_argument("--user", help="the console user (an auditor); default: your login")
        h.add_argument("--config", required=True)
        h.set_defaults(func=cmd_hold)
    h = hsub.add_parser("list", help="calls under legal hold")
    h.add_argument("--config", required=True)
    h.set_defaults(func=cmd_hold)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
