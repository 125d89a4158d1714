"""``controlroom`` command line: serve, demo, check-config, search, transcribe, user add."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import signal
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
    settings = _load(args.config)
    print(f"{args.config}: OK — {len(settings.lines)} lines "
          f"({', '.join(line.name for line in settings.lines)}), "
          f"{len(settings.handlers)} handlers, transcription={settings.transcription.engine}")
    return 0


async def _serve(settings) -> int:  # noqa: ANN001
    from controlroom.logs import configure
    from controlroom.service import Service
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
          f"console http://{settings.web.bind}:{service.web_port}/", flush=True)
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
    return asyncio.run(_serve(_load(args.config)))


def cmd_demo(args: argparse.Namespace) -> int:
    from controlroom.demo import run_demo

    return asyncio.run(run_demo(duration=args.duration, calls=args.calls, web_port=args.port,
                                engine=args.engine, keep=args.keep))


def cmd_search(args: argparse.Namespace) -> int:
    from store import Database
    from transcription import TranscriptSearch

    settings = _load(args.config)
    db = Database(settings.storage.database_path)
    hits = TranscriptSearch(db).search(args.query, line=args.line, caller=args.caller,
                                       limit=args.limit)
    for hit in hits:
        d = hit if isinstance(hit, dict) else vars(hit)
        print(json.dumps(d, default=str))
    if not hits:
        print("no matches", file=sys.stderr)
    return 0 if hits else 1


def cmd_transcribe(args: argparse.Namespace) -> int:
    from config import TranscriptionSettings
    from transcription import transcribe_file

    if args.config:
        tsettings = _load(args.config).transcription
    else:
        tsettings = TranscriptionSettings(engine=args.engine, model=args.model or "")
    result = transcribe_file(Path(args.recording), tsettings)
    print(json.dumps(result, indent=2, default=str))
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
    if len(password) < 10:
        print("password too short (at least 10 characters)", file=sys.stderr)
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

    s = sub.add_parser("check-config", help="validate a configuration file")
    s.add_argument("config")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("search", help="search transcripts")
    s.add_argument("query")
    s.add_argument("--config", required=True)
    s.add_argument("--line")
    s.add_argument("--caller")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("transcribe", help="transcribe a recording file")
    s.add_argument("recording")
    s.add_argument("--config")
    s.add_argument("--engine", choices=["whisper", "vosk"], default="whisper")
    s.add_argument("--model")
    s.set_defaults(func=cmd_transcribe)

    s = sub.add_parser("user", help="manage console users")
    usub = s.add_subparsers(dest="user_command", required=True)
    u = usub.add_parser("add", help="add a user (the first admin, for instance)")
    u.add_argument("username")
    u.add_argument("--role", action="append", required=True,
                   choices=["handler", "supervisor", "auditor", "admin"])
    u.add_argument("--config", required=True)
    u.add_argument("--password", help="(tests only; prompts when omitted)")
    u.set_defaults(func=cmd_user_add)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
