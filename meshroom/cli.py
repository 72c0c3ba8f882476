"""``meshroom``: serve, manage meetings, mint tokens. A thin shell over the same services.

Every failure prints one line on stderr, never a traceback (MESHROOM_LOG_LEVEL=DEBUG
logs the traceback of an unexpected one): exit 2 for a bad command line, flag, variable
or settings file, found before a port is opened or the database touched; exit 1 for a
command that ran and failed (database, port in use, server refused the connection...);
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import errno
import json
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, NoReturn, get_args, get_origin
from urllib.parse import urlsplit

import trio
from pydantic.fields import FieldInfo

from .auth import TokenError
from .config import OFF, ConfigError, Settings, env_name, flag_name
from .roles import Role
from .runtime import open_store
from .server import Server, wait_for_signal
from .service import MeetingService, find_meeting
from .store import (
    InvalidTransition,
    Meeting,
    MeetingNotFound,
    MeetingStatus,
    SqlStore,
    StoreError,
)
from .store.base import DeliveryNotFound, DeliveryStatus, WebhookDelivery
from .webhooks import DeliveryInFlight, WebhookService
from .webhooks.payloads import envelope

EXIT_USAGE = 2  # a bad command line, flag, variable or settings file: nothing was started
EXIT_FAILURE = 1  # the command ran and failed (database, port in use, server refused...)
EXIT_INTERRUPTED = 130

log = logging.getLogger("meshroom.cli")

_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})

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
    "redis_url",
    "redis_prefix",
)


class CommandError(Exception):
    """A command failed in a way the user can act on; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line: `serve`'s usage alone is forty."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _metavar(name: str, info: FieldInfo) -> str:
    """What a flag takes, from the setting's type: `--port PORT`, `--close-timeout SECONDS`."""
    kind = info.annotation
    if name == "http_port":
        return f"PORT|{OFF}"
    if name == "webhooks":
        return "JSON"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "|".join(str(member.value) for member in kind)
    if get_origin(kind) is Literal:
        return "|".join(str(choice) for choice in get_args(kind))
    if kind is float:
        return "SECONDS" if "seconds" in (info.description or "") else "NUMBER"
    if kind is int:
        return "PORT" if name.endswith("port") else "N"
    return name.split("_")[-1].upper()


def _escaped(text: str) -> str:
    """Help text as argparse takes it: it %-formats help, so a literal % is doubled."""
    return text.replace("%", "%%")


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    group = parser.add_argument_group("settings (each also read from its MESHROOM_* variable)")
    for name in names:
        info = Settings.model_fields[name]
        default = info.default.value if isinstance(info.default, enum.Enum) else info.default
        if info.annotation is bool:
            group.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_escaped(f"{info.description} [{env_name(name)}=1 or 0; default: {default}]"),
            )
            continue
        # Values stay text here: Settings checks type, bounds and cross-field rules in
        # one place and names the flag in its one-line message, as it does for variables.
        group.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            metavar=_metavar(name, info),
            help=_escaped(f"{info.description} [{env_name(name)}; default: {default}]"),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshroom", description="WebRTC signaling server for peer-to-peer mesh meetings."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the signaling server")
    _add_settings(serve, list(Settings.model_fields))
    serve.set_defaults(run=cmd_serve, preflight=_check_serve)

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
        (
            "end",
            "mark a meeting ENDED and close its room (with --redis-url at once, on whichever "
            "node runs it; without, a running server notices within 5 s)",
        ),
        ("show", "print a meeting"),
    ):
        sub = meeting_commands.add_parser(action, help=helptext)
        sub.add_argument("meeting", metavar="MEETING", help="meeting id or room code")
        sub.set_defaults(run=cmd_meeting_action, action=action)
    removals = []
    for action, helptext in (
        ("kick", "remove a connected employee from a meeting (needs --redis-url)"),
        ("ban", "ban an employee from a meeting; with --redis-url also removes them at once"),
        ("unban", "lift a ban (and a kick's rejoin block, with --redis-url)"),
    ):
        sub = meeting_commands.add_parser(action, help=helptext)
        sub.add_argument("meeting", metavar="MEETING", help="meeting id or room code")
        sub.add_argument("emp", metavar="EMP_ID", help="the employee")
        if action == "ban":
            sub.add_argument("--reason", help="why (kept with the ban)")
        sub.set_defaults(run=cmd_meeting_removal, action=action)
        removals.append(sub)
    listing = meeting_commands.add_parser("list", help="list meetings, newest first")
    listing.add_argument("--status", choices=[s.value for s in MeetingStatus])
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.set_defaults(run=cmd_meeting_list)

    node = commands.add_parser("node", help="the nodes of a cluster (needs --redis-url)")
    node_commands = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    node_list = node_commands.add_parser("list", help="list the registered nodes")
    node_list.set_defaults(run=cmd_node_list)
    node_drain = node_commands.add_parser(
        "drain",
        help="hand every room of a node over to the others (the node stays up, taking "
        "no rooms, until stopped)",
    )
    node_drain.add_argument("node_id", metavar="NODE", help="the node's id (see `node list`)")
    node_drain.set_defaults(run=cmd_node_drain)
    for sub in (node_list, node_drain):
        sub.add_argument("--json", action="store_true", help="print JSON")
        _add_settings(sub, ["redis_url", "redis_prefix", "log_level"])

    token = commands.add_parser("token", help="mint a meeting access token")
    token.add_argument("--meeting", required=True, help="meeting id or room code")
    token.add_argument("--emp", required=True, metavar="EMP_ID", help="employee id")
    token.add_argument("--name", help="display name (default: the employee id)")
    token.add_argument(
        "--role", default="PARTICIPANT", type=str.upper, choices=[r.value for r in Role]
    )
    token.add_argument("--ttl", type=_positive_int, default=7200, metavar="SECONDS")
    token.set_defaults(run=cmd_token)

    connect = commands.add_parser(
        "connect",
        help="join a meeting from the terminal: print what arrives, send JSON lines you type",
    )
    connect.add_argument("token", help="a meeting access token (see `meshroom token`)")
    connect.add_argument(
        "--url",
        type=_websocket_url,
        default=None,
        help=f"signaling URL (default: {_default_url_for_help()}, "
        f"from {env_name('host')} and {env_name('port')})",
    )
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

    webhooks = commands.add_parser(
        "webhooks", help="webhook deliveries and endpoints: list them, retry deliveries"
    )
    webhook_commands = webhooks.add_subparsers(
        dest="webhooks_command", required=True, metavar="ACTION"
    )
    deliveries = webhook_commands.add_parser("list", help="webhook deliveries, newest first")
    deliveries.add_argument("--status", choices=[s.value for s in DeliveryStatus])
    deliveries.add_argument("--endpoint", metavar="ENDPOINT_ID")
    deliveries.add_argument("--meeting", metavar="MEETING", help="meeting id or room code")
    deliveries.add_argument("--limit", type=_positive_int, default=50)
    deliveries.set_defaults(run=cmd_webhooks_list)
    retry = webhook_commands.add_parser(
        "retry",
        help="send deliveries again now (a running server picks them up within its "
        "webhook poll interval): by id, or every dead one with --dead",
    )
    retry.add_argument("ids", nargs="*", type=_positive_int, metavar="DELIVERY_ID")
    retry.add_argument("--dead", action="store_true", help="every dead delivery")
    retry.add_argument("--endpoint", metavar="ENDPOINT_ID", help="with --dead: only its")
    retry.set_defaults(run=cmd_webhooks_retry, check_args=_check_retry_args)
    endpoints = webhook_commands.add_parser(
        "endpoints", help="webhook endpoints (settings and API ones; secrets not shown)"
    )
    endpoints.set_defaults(run=cmd_webhooks_endpoints)
    for sub in (deliveries, endpoints):
        sub.add_argument("--json", action="store_true", help="print JSON, one object a line")
    for sub in (deliveries, retry, endpoints):
        _add_settings(sub, ["database_url", "db_pool_size", "log_level"])

    for sub in (
        create,
        token,
        listing,
        *(meeting_commands.choices[a] for a in ("start", "end", "show")),
        *removals,
    ):
        sub.add_argument("--json", action="store_true", help="print JSON")
        _add_settings(sub, _SHARED)
        sub.set_defaults(preflight=_check_tokens)
    return parser


def _datetime(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _websocket_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from None
    if parts.scheme in ("http", "https"):
        hint = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path}"
        raise argparse.ArgumentTypeError(
            f"{text!r} is an HTTP URL; the signaling WebSocket is {hint!r}"
        )
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"not a WebSocket URL: {text!r} (expected ws://HOST:PORT/meetings or wss://...)"
        )
    return text


def default_connect_url(settings: Settings) -> str:
    """Where `meshroom serve` with these settings listens for signaling connections."""
    # A server bound to every address is reached on this machine's loopback.
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "wss" if settings.tls_cert else "ws"
    return f"{scheme}://{host}:{settings.port}/meetings"


def _default_url_for_help() -> str:
    try:
        return default_connect_url(Settings.from_env())
    except ConfigError:  # reported when the command runs; --help still works
        return default_connect_url(Settings.model_construct())


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(**{name: getattr(args, name, None) for name in Settings.model_fields})


def _check_tokens(settings: Settings) -> None:
    settings.token_keys()


def _check_serve(settings: Settings) -> None:
    # What the server reads from files, read now: a missing TLS key or an unreadable
    # secret is a settings mistake (exit 2), found before a port is opened.
    settings.ssl_context()
    settings.token_keys()
    if settings.http_port is not None:
        settings.api_key_list()


def _no_check(settings: Settings) -> None:
    pass


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
    keys = settings.token_keys()
    store = open_store(settings)
    try:
        await store.open()
        if settings.redis_url is None:
            return await work(MeetingService(store, keys))
        from .cluster import ClusterRooms, ClusterUnavailable, open_client

        try:
            async with open_client(settings.redis_url, settings.redis_prefix) as client:
                return await work(MeetingService(store, keys, ClusterRooms(client, store)))
        except ClusterUnavailable as exc:
            raise CommandError(f"{exc} ({settings.named('redis_url')})") from None
    finally:
        await store.close()


def _run(settings: Settings, work: Callable[[MeetingService], Awaitable[int]]) -> int:
    return trio.run(_with_service, settings, work)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if settings.workers > 1:
        from .workers import run_workers

        return trio.run(run_workers, settings)
    server = Server(settings)
    try:
        trio.run(lambda: server.run(shutdown_trigger=wait_for_signal))
    except Exception as exc:
        # Server.run names the signaling port itself (a ConfigError); a bare bind error
        # is the HTTP listener's, which hypercorn raises from inside its own nurseries.
        for leaf in _leaves(exc):
            if isinstance(leaf, OSError) and leaf.errno in _BIND_ERRORS:
                where = f"{settings.host}:{settings.http_port}"
                raise CommandError(f"cannot listen on {where} (HTTP): {leaf.strerror}") from exc
        raise
    return 0


def cmd_meeting_create(args: argparse.Namespace, settings: Settings) -> int:
    async def work(service: MeetingService) -> int:
        meeting = await service.create(
            title=args.title,
            host_emp_id=args.host,
            scheduled_at=args.scheduled_at,
            start=args.start,
        )
        _print_meeting(meeting, args.json)
        return 0

    return _run(settings, work)


def cmd_meeting_action(args: argparse.Namespace, settings: Settings) -> int:
    async def work(service: MeetingService) -> int:
        if args.action == "start":
            meeting = await service.start(args.meeting)
        elif args.action == "end":
            meeting = await service.end(args.meeting, by="cli")
            if settings.redis_url is None:
                print(
                    "note: no running server was told (no --redis-url); "
                    "one serving this meeting closes its room within 5 s",
                    file=sys.stderr,
                )
        else:
            meeting = await service.find(args.meeting)
        _print_meeting(meeting, args.json)
        return 0

    return _run(settings, work)


def cmd_meeting_removal(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "kick" and settings.redis_url is None:
        raise CommandError(
            "kick reaches a running server only through the cluster: set --redis-url "
            "(or the HTTP API: POST /api/meetings/ID/participants/EMP_ID/kick)"
        )

    async def work(service: MeetingService) -> int:
        meeting = await service.find(args.meeting)
        if args.action == "kick":
            done = await service.kick(meeting.id, args.emp, by="cli")
            result = {"kicked": done}
            text = f"kicked {args.emp}" if done else f"{args.emp} is not connected"
        elif args.action == "ban":
            await service.ban(meeting.id, args.emp, by="cli", reason=args.reason)
            result = {"banned": True}
            text = f"banned {args.emp}"
            if settings.redis_url is None:
                text += " (no running server was told: a connected session stays until it leaves)"
        else:
            lifted = await service.unban(meeting.id, args.emp)
            result = {"unbanned": lifted}
            text = f"unbanned {args.emp}" if lifted else f"{args.emp} was not banned"
        print(
            json.dumps({"meetingId": meeting.id, "empId": args.emp, **result})
            if args.json
            else text
        )
        return 0

    return _run(settings, work)


def _with_cluster(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``work(client)`` with a cluster client; one line if there is no cluster."""
    url = settings.redis_url
    if url is None:
        raise CommandError(f"this needs the cluster's Redis: set {settings.named('redis_url')}")
    from .cluster import ClusterUnavailable, open_client

    async def run() -> int:
        try:
            async with open_client(url, settings.redis_prefix) as client:
                return await work(client)
        except ClusterUnavailable as exc:
            raise CommandError(f"{exc} ({settings.named('redis_url')})") from None

    return trio.run(run)


def cmd_node_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(client: Any) -> int:
        nodes = await client.nodes()
        if args.json:
            print(json.dumps(nodes))
        for node_id, info in nodes.items() if not args.json else ():
            state = "draining" if info.get("draining") else "serving"
            print(f"{node_id}  {state}  pid {info.get('pid', '?')} on {info.get('host', '?')}")
        return 0

    return _with_cluster(settings, work)


def cmd_node_drain(args: argparse.Namespace, settings: Settings) -> int:
    async def work(client: Any) -> int:
        from .cluster.client import RemoteError

        if not await client.alive(args.node_id):
            raise CommandError(f"no node {args.node_id!r} is registered (see `meshroom node list`)")
        try:
            handed_over = await client.call(args.node_id, "drain", {}, wait=60.0)
        except RemoteError as exc:
            raise CommandError(f"node {args.node_id} could not drain: {exc.message}") from None
        if args.json:
            print(json.dumps({"nodeId": args.node_id, "roomsHandedOver": handed_over}))
        else:
            print(f"node {args.node_id} handed over {handed_over} room(s); it takes no new ones")
        return 0

    return _with_cluster(settings, work)


def cmd_meeting_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(service: MeetingService) -> int:
        status = MeetingStatus(args.status) if args.status else None
        meetings, _total = await service.list_meetings(status=status, limit=args.limit)
        for meeting in meetings:
            _print_meeting(meeting, args.json)
        return 0

    return _run(settings, work)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
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

    return _run(settings, work)


def cmd_connect(args: argparse.Namespace, settings: Settings) -> int:
    from .client import connect

    url: str = args.url or default_connect_url(settings)

    async def pump_stdin(peer: Any) -> None:
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            if line.strip():
                await peer.send_raw(line.strip())
        await peer.close()

    async def session() -> int:
        async with connect(url, args.token) as peer, trio.open_nursery() as nursery:
            print(json.dumps({"event": "room:joined", "data": peer.snapshot}), flush=True)
            nursery.start_soon(pump_stdin, peer)
            async for event in peer:
                frame: dict[str, Any] = {"event": event.name, "data": event.data}
                if event.id is not None:
                    frame["id"] = event.id
                print(json.dumps(frame), flush=True)
            print(f"closed: {peer.close_code} {peer.close_reason or ''}".rstrip(), flush=True)
            nursery.cancel_scope.cancel()
        return 0

    try:
        return trio.run(session)
    except Exception as exc:  # an ExceptionGroup too: trio-websocket opens nurseries
        for leaf in _leaves(exc):
            message = _connect_problem(leaf, url)
            if message is not None:
                raise CommandError(message) from exc
        raise


def _connect_problem(exc: BaseException, url: str) -> str | None:
    """What went wrong joining ``url``, in words, or None for an error of another kind."""
    import h11
    from trio_websocket import (
        ConnectionClosed,
        ConnectionRejected,
        ConnectionTimeout,
        HandshakeError,
    )
    from wsproto.utilities import ProtocolError

    from .client import JoinRefused

    if isinstance(exc, JoinRefused):
        return f"join refused: {exc.code}: {exc.message} (close {exc.close_code})"
    if isinstance(exc, ConnectionRejected):
        status = exc.status_code
        why = " (no WebSocket at this path; meshroom's is /meetings)" if status == 404 else ""
        return f"cannot connect to {url}: the server answered HTTP {status}{why}"
    if isinstance(exc, ConnectionTimeout):
        return f"cannot connect to {url}: no answer in time"
    if isinstance(exc, HandshakeError):
        # trio-websocket reports a refused or unreachable server as a HandshakeError
        # raised from the OSError.
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            return _connect_problem(cause, url)
        return f"cannot connect to {url}: the WebSocket handshake failed"
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        code = reason.code if reason else None
        return f"cannot connect to {url}: the connection closed ({code})"
    if isinstance(exc, ssl.SSLError):
        return f"cannot connect to {url}: TLS: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, OSError):
        return f"cannot connect to {url}: {exc.strerror or exc}"
    if isinstance(exc, (h11.ProtocolError, ProtocolError)):
        return f"cannot connect to {url}: the server does not speak WebSocket ({exc})"
    if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
        return f"cannot connect to {url}: the server hung up (is it a meshroom server?)"
    return None


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from alembic.util import CommandError as MigrationError

    async def work() -> int:
        store = open_store(settings)
        try:
            before, after = await store.upgrade_schema(args.revision)
        except MigrationError as exc:  # an unknown --revision, for one
            raise CommandError(f"cannot upgrade the database schema: {exc}") from None
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


def cmd_db_current(args: argparse.Namespace, settings: Settings) -> int:
    async def work() -> int:
        store = open_store(settings)
        try:
            state = await store.schema_state()
        finally:
            await store.close()
        print(f"{state.current or '(none)'}  {state.status.value}: {state.describe()}")
        return 1 if args.check and state.current != state.head else 0

    return trio.run(work)


async def _with_webhooks(
    settings: Settings, work: Callable[[WebhookService, SqlStore], Awaitable[int]]
) -> int:
    store = open_store(settings)
    try:
        await store.open()
        return await work(WebhookService(store), store)
    finally:
        await store.close()


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": delivery.id,
        "endpointId": delivery.endpoint_id,
        "eventId": delivery.event_id,
        "eventType": delivery.event_type.value,
        "meetingId": delivery.meeting_id,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "nextAttemptAt": iso(delivery.next_attempt_at),
        "lastAttemptAt": iso(delivery.last_attempt_at),
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "deliveredAt": iso(delivery.delivered_at),
        "payload": envelope(delivery),
    }


def cmd_webhooks_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(webhooks: WebhookService, store: SqlStore) -> int:
        meeting_id = (await find_meeting(store, args.meeting)).id if args.meeting else None
        found, total = await webhooks.deliveries(
            status=DeliveryStatus(args.status) if args.status else None,
            endpoint_id=args.endpoint,
            meeting_id=meeting_id,
            limit=args.limit,
        )
        for delivery in found:
            if args.json:
                print(json.dumps(delivery_json(delivery)))
                continue
            when = delivery.delivered_at or delivery.last_attempt_at or delivery.next_attempt_at
            print(
                f"{delivery.id:>6}  {delivery.status.value:9}  {delivery.attempts:>3}  "
                f"{delivery.event_type.value:24}  {delivery.endpoint_id}  "
                f"{when.isoformat(timespec='seconds')}  {delivery.last_error or ''}".rstrip()
            )
        if not args.json and total > len(found):
            print(f"({len(found)} of {total}; --limit shows more)")
        return 0

    return trio.run(_with_webhooks, settings, work)


def _check_retry_args(args: argparse.Namespace) -> str | None:
    if bool(args.ids) == bool(args.dead):
        return "webhooks retry: name the deliveries (DELIVERY_ID ...) or pass --dead"
    if args.endpoint and not args.dead:
        return "webhooks retry: --endpoint goes with --dead (a delivery id names its endpoint)"
    return None


def cmd_webhooks_retry(args: argparse.Namespace, settings: Settings) -> int:
    async def work(webhooks: WebhookService, _store: SqlStore) -> int:
        if args.dead:
            retried = await webhooks.retry_many(endpoint_id=args.endpoint)
            print(f"retried {retried} dead delivery(ies)")
            return 0
        problems = []
        for delivery_id in args.ids:
            try:
                await webhooks.retry(delivery_id)
            except DeliveryNotFound:
                problems.append(f"no webhook delivery {delivery_id}")
            except DeliveryInFlight as exc:
                problems.append(str(exc))
            else:
                print(f"retried delivery {delivery_id}")
        if problems:
            raise CommandError("; ".join(problems))
        return 0

    return trio.run(_with_webhooks, settings, work)


def cmd_webhooks_endpoints(args: argparse.Namespace, settings: Settings) -> int:
    async def work(webhooks: WebhookService, _store: SqlStore) -> int:
        for endpoint in await webhooks.endpoints():
            types = sorted(endpoint.event_types) if endpoint.event_types is not None else None
            if args.json:
                item = {
                    "id": endpoint.id,
                    "url": endpoint.url,
                    "eventTypes": types,
                    "source": endpoint.source.value,
                    "enabled": endpoint.enabled,
                    "description": endpoint.description,
                    "createdAt": endpoint.created_at.isoformat(),
                }
                print(json.dumps(item))
                continue
            state = "enabled" if endpoint.enabled else "disabled"
            print(
                f"{endpoint.id}  {endpoint.source.value:8}  {state:8}  {endpoint.url}  "
                f"{','.join(types) if types else '(every event type)'}"
            )
        return 0

    return trio.run(_with_webhooks, settings, work)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions a (nested) exception group holds; trio nurseries wrap errors in them."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _message(exc: BaseException) -> str | None:
    """The line to show for an error the user can act on, or None for an unexpected one."""
    if isinstance(exc, (CommandError, ConfigError, TokenError, InvalidTransition)):
        return str(exc)
    if isinstance(exc, MeetingNotFound):
        return f"no meeting with id or room code {str(exc) or repr('')}"
    if isinstance(exc, DeliveryNotFound):
        return f"no webhook delivery {exc}"
    if isinstance(exc, StoreError):
        return f"database: {exc}"
    return None


def _fail(message: str, code: int) -> int:
    # One line, whatever the message holds: a driver's error can span several.
    print(f"meshroom: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _report(exc: BaseException) -> int:
    leaves = [leaf for leaf in _leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return EXIT_INTERRUPTED
    for leaf in leaves:
        message = _message(leaf)
        if message is not None:
            return _fail(message, EXIT_FAILURE)
    # A bug, not a mistake of the user's: still one line, the traceback for whoever asks.
    log.debug("unexpected error", exc_info=exc)
    first = leaves[0] if leaves else exc
    detail = " ".join(str(first).split())
    return _fail(
        f"unexpected {type(first).__name__}{': ' + detail if detail else ''} "
        f"(run with {env_name('log_level')}=DEBUG for the traceback)",
        EXIT_FAILURE,
    )


def _configure_logging(args: argparse.Namespace, settings: Settings) -> None:
    # One-shot commands answer with their result or one error line; logs are for `serve`,
    # or for whoever asks for them with --log-level / MESHROOM_LOG_LEVEL.
    asked = "log_level" in settings.model_fields_set
    level = settings.log_level if asked or args.run is cmd_serve else "ERROR"
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = getattr(args, "check_args", lambda _args: None)(args)
    if problem is not None:
        parser.error(problem)
    # First every flag, variable and settings file, before a port or a database is touched.
    try:
        settings = _settings(args)
        _configure_logging(args, settings)
        getattr(args, "preflight", _no_check)(settings)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        return int(args.run(args, settings))
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # groups from trio nurseries, KeyboardInterrupt included
        return _report(exc)


if __name__ == "__main__":
    sys.exit(main())
