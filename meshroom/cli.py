"""``meshroom``: serve, manage meetings, mint tokens. A thin shell over the same services.

Every failure a user can cause prints one line on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from .auth import TokenError
from .config import ConfigError, Settings, env_name, flag_name
from .roles import Role
from .server import Server, open_store, wait_for_signal
from .service import MeetingService
from .store import InvalidTransition, Meeting, MeetingNotFound, MeetingStatus, StoreError

EXIT_USAGE = 2
EXIT_FAILURE = 1

# Options every command that touches the database or tokens accepts.
_SHARED = (
    "database_url",
    "db_pool_size",
    "secret",
    "secret_file",
    "jwt_algorithm",
    "jwt_private_key_file",
    "jwt_public_key_file",
    "jwt_audience",
    "jwt_issuer",
    "log_level",
)


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    group = parser.add_argument_group("settings (each also read from its MESHROOM_* variable)")
    for name in names:
        f = fields[name]
        kind = str(f.type)
        if kind.startswith("bool"):
            group.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{f.metadata['help']} [{env_name(name)}=1 or 0; default: {f.default}]",
            )
            continue
        group.add_argument(
            flag_name(name),
            dest=name,
            type=int if kind.startswith("int") else float if kind.startswith("float") else str,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{f.metadata['help']} [{env_name(name)}; default: {f.default}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshroom", description="WebRTC signaling server for peer-to-peer mesh meetings."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the signaling server")
    _add_settings(serve, [f.name for f in dataclasses.fields(Settings)])
    serve.set_defaults(run=cmd_serve)

    meeting = commands.add_parser("meeting", help="create, start, end, list and show meetings")
    meeting_commands = meeting.add_subparsers(
        dest="meeting_command", required=True, metavar="ACTION"
    )
    create = meeting_commands.add_parser("create", help="create a meeting")
    create.add_argument("--title", required=True)
    create.add_argument("--host", required=True, metavar="EMP_ID", help="the host's employee id")
    create.add_argument("--scheduled-at", type=_datetime, metavar="ISO8601")
    create.add_argument("--start", action="store_true", help="make it LIVE at once")
    create.set_defaults(run=cmd_meeting_create)
    for action, helptext in (
        ("start", "make a SCHEDULED meeting LIVE"),
        ("end", "mark a meeting ENDED"),
        ("show", "print a meeting"),
    ):
        sub = meeting_commands.add_parser(action, help=helptext)
        sub.add_argument("meeting", metavar="MEETING", help="meeting id or room code")
        sub.set_defaults(run=cmd_meeting_action, action=action)
    listing = meeting_commands.add_parser("list", help="list meetings, newest first")
    listing.add_argument("--status", choices=[s.value for s in MeetingStatus])
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(run=cmd_meeting_list)

    token = commands.add_parser("token", help="mint a meeting access token")
    token.add_argument("--meeting", required=True, help="meeting id or room code")
    token.add_argument("--emp", required=True, metavar="EMP_ID", help="employee id")
    token.add_argument("--name", help="display name (default: the employee id)")
    token.add_argument(
        "--role", default="PARTICIPANT", type=str.upper, choices=[r.value for r in Role]
    )
    token.add_argument("--ttl", type=int, default=7200, metavar="SECONDS")
    token.set_defaults(run=cmd_token)

    connect = commands.add_parser(
        "connect",
        help="join a meeting from the terminal: print what arrives, send JSON lines you type",
    )
    connect.add_argument("token", help="a meeting access token (see `meshroom token`)")
    connect.add_argument("--url", default="ws://127.0.0.1:8765/meetings", help="signaling URL")
    connect.set_defaults(run=cmd_connect)

    db = commands.add_parser("db", help="database schema: upgrade it, show its revision")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_upgrade = db_commands.add_parser(
        "upgrade", help="create the schema, or migrate it to the newest revision"
    )
    db_upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    db_upgrade.set_defaults(run=cmd_db_upgrade)
    db_current = db_commands.add_parser("current", help="print the schema revision and status")
    db_current.add_argument(
        "--check", action="store_true", help="exit 1 unless the schema is up to date"
    )
    db_current.set_defaults(run=cmd_db_current)
    for sub in (db_upgrade, db_current):
        _add_settings(sub, ["database_url", "log_level"])

    for sub in (
        create,
        token,
        listing,
        *(meeting_commands.choices[a] for a in ("start", "end", "show")),
    ):
        sub.add_argument("--json", action="store_true", help="print JSON")
        _add_settings(sub, _SHARED)
    return parser


def _datetime(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _settings(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})


def meeting_json(meeting: Meeting) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": meeting.id,
        "title": meeting.title,
        "roomCode": meeting.room_code,
        "hostEmpId": meeting.host_emp_id,
        "status": meeting.status.value,
        "scheduledAt": iso(meeting.scheduled_at),
        "createdAt": iso(meeting.created_at),
        "startedAt": iso(meeting.started_at),
        "endedAt": iso(meeting.ended_at),
    }


def _print_meeting(meeting: Meeting, as_json: bool) -> None:
    if as_json:
        print(json.dumps(meeting_json(meeting)))
    else:
        print(f"{meeting.id}  {meeting.room_code}  {meeting.status.value:9}  {meeting.title}")


async def _with_service(
    settings: Settings, work: Callable[[MeetingService], Awaitable[int]]
) -> int:
    store = open_store(settings)
    try:
        await store.open()
        return await work(MeetingService(store, settings.token_keys()))
    finally:
        await store.close()


def _run(args: argparse.Namespace, work: Callable[[MeetingService], Awaitable[int]]) -> int:
    return trio.run(_with_service, _settings(args), work)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    server = Server(settings)
    trio.run(lambda: server.run(shutdown_trigger=wait_for_signal))
    return 0


def cmd_meeting_create(args: argparse.Namespace) -> int:
    async def work(service: MeetingService) -> int:
        meeting = await service.create(
            title=args.title,
            host_emp_id=args.host,
            scheduled_at=args.scheduled_at,
            start=args.start,
        )
        _print_meeting(meeting, args.json)
        return 0

    return _run(args, work)


def cmd_meeting_action(args: argparse.Namespace) -> int:
    async def work(service: MeetingService) -> int:
        if args.action == "start":
            meeting = await service.start(args.meeting)
        elif args.action == "end":
            meeting = await service.end(args.meeting, by="cli")
        else:
            meeting = await service.find(args.meeting)
        _print_meeting(meeting, args.json)
        return 0

    return _run(args, work)


def cmd_meeting_list(args: argparse.Namespace) -> int:
    async def work(service: MeetingService) -> int:
        status = MeetingStatus(args.status) if args.status else None
        meetings, _total = await service.list_meetings(status=status, limit=args.limit)
        for meeting in meetings:
            _print_meeting(meeting, args.json)
        return 0

    return _run(args, work)


def cmd_token(args: argparse.Namespace) -> int:
    async def work(service: MeetingService) -> int:
        issued = await service.issue_token(
            args.meeting,
            emp_id=args.emp,
            display_name=args.name,
            role=Role(args.role),
            ttl=dt.timedelta(seconds=args.ttl),
        )
        if args.json:
            print(
                json.dumps(
                    {
                        "token": issued.token,
                        "meetingId": issued.meeting_id,
                        "expiresAt": issued.expires_at.isoformat(),
                    }
                )
            )
        else:
            print(issued.token)
        return 0

    return _run(args, work)


def cmd_connect(args: argparse.Namespace) -> int:
    from .client import JoinRefused, connect

    async def pump_stdin(peer: Any) -> None:
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            if line.strip():
                await peer.send_raw(line.strip())
        await peer.close()

    async def session() -> int:
        try:
            async with connect(args.url, args.token) as peer, trio.open_nursery() as nursery:
                print(json.dumps({"event": "room:joined", "data": peer.snapshot}), flush=True)
                nursery.start_soon(pump_stdin, peer)
                async for event in peer:
                    frame: dict[str, Any] = {"event": event.name, "data": event.data}
                    if event.id is not None:
                        frame["id"] = event.id
                    print(json.dumps(frame), flush=True)
                print(f"closed: {peer.close_code} {peer.close_reason or ''}".rstrip(), flush=True)
                nursery.cancel_scope.cancel()
        except JoinRefused as exc:
            message = f"join refused: {exc.code}: {exc.message} (close {exc.close_code})"
            raise ConfigError(message) from None
        except OSError as exc:
            raise ConfigError(f"cannot connect to {args.url}: {exc.strerror or exc}") from None
        return 0

    return trio.run(session)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    async def work() -> int:
        store = open_store(_settings(args))
        try:
            before, after = await store.upgrade_schema(args.revision)
        finally:
            await store.close()
        if before is None:
            print(f"created the database schema at revision {after}")
        elif before == after:
            print(f"the database schema is up to date (revision {after})")
        else:
            print(f"upgraded the database schema from revision {before} to {after}")
        return 0

    return trio.run(work)


def cmd_db_current(args: argparse.Namespace) -> int:
    async def work() -> int:
        store = open_store(_settings(args))
        try:
            state = await store.schema_state()
        finally:
            await store.close()
        print(f"{state.current or '(none)'}  {state.status.value}: {state.describe()}")
        return 1 if args.check and state.current != state.head else 0

    return trio.run(work)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # One-shot commands answer with their result or one error line; logs are for `serve`.
    quiet = "INFO" if args.run is cmd_serve else "ERROR"
    level = getattr(args, "log_level", None) or os.environ.get(env_name("log_level"), quiet)
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except (ConfigError, TokenError) as exc:
        print(f"meshroom: error: {exc}", file=sys.stderr)
    except InvalidTransition as exc:
        print(f"meshroom: error: {exc}", file=sys.stderr)
    except MeetingNotFound as exc:
        print(f"meshroom: error: no meeting with id or room code {exc}", file=sys.stderr)
    except StoreError as exc:
        print(f"meshroom: error: database: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
