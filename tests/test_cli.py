"""The command line, in-process (capsys) and, for `serve`, as a real subprocess."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshroom import Role
from meshroom.auth import verify_token
from meshroom.cli import main
from meshroom.config import ConfigError, Settings

SECRET = "cli-secret-" + "y" * 40


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("MESHROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MESHROOM_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MESHROOM_SECRET", SECRET)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The command succeeds, saying nothing on stderr but notes."""
    code, out, err = run(capsys, *argv)
    problems = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert (code, problems) == (0, []), err
    return out


def fails(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 1) -> str:
    """The command fails with exit ``code`` and exactly one line of explanation."""
    got, out, err = run(capsys, *argv)
    assert got == code, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("meshroom: error: ")
    assert "Traceback" not in err
    return lines[0]


def create(capsys, *extra: str) -> dict:
    out = ok(
        capsys, "meeting", "create", "--title", "Weekly sync", "--host", "e-1", "--json", *extra
    )
    return json.loads(out)


def test_meeting_create_start_end(env, capsys):
    meeting = create(capsys)
    assert meeting["status"] == "SCHEDULED"
    assert (meeting["title"], meeting["hostEmpId"]) == ("Weekly sync", "e-1")
    assert meeting["startedAt"] is None

    started = json.loads(ok(capsys, "meeting", "start", meeting["id"], "--json"))
    assert started["status"] == "LIVE" and started["startedAt"]

    # A room code works wherever a meeting id does, as a person would type it.
    typed = meeting["roomCode"].upper().replace("-", " ")
    code, out, err = run(capsys, "meeting", "end", typed, "--json")
    ended = json.loads(out)
    assert (ended["id"], ended["status"]) == (meeting["id"], "ENDED")
    # Without a cluster the CLI cannot reach a server; it says so in one line.
    assert code == 0
    assert err.splitlines() == [
        "note: no running server was told (no --redis-url); "
        "one serving this meeting closes its room within 5 s"
    ]
    assert ended["endedAt"]


def test_meeting_create_started_and_scheduled(env, capsys):
    meeting = create(capsys, "--start", "--scheduled-at", "2031-05-06T07:08:09")
    assert meeting["status"] == "LIVE"
    assert meeting["scheduledAt"].startswith("2031-05-06T07:08:09")


def test_meeting_show_text_and_json(env, capsys):
    meeting = create(capsys)
    line = ok(capsys, "meeting", "show", meeting["id"])
    assert line.split() == [meeting["id"], meeting["roomCode"], "SCHEDULED", "Weekly", "sync"]
    assert json.loads(ok(capsys, "meeting", "show", meeting["roomCode"], "--json")) == meeting


def test_meeting_list(env, capsys):
    first = create(capsys)
    second = create(capsys, "--start")
    lines = ok(capsys, "meeting", "list").splitlines()
    assert [line.split()[0] for line in lines] == [second["id"], first["id"]]
    listed = [json.loads(line) for line in ok(capsys, "meeting", "list", "--json").splitlines()]
    assert [m["id"] for m in listed] == [second["id"], first["id"]]
    live = ok(capsys, "meeting", "list", "--status", "LIVE", "--json").splitlines()
    assert [json.loads(line)["id"] for line in live] == [second["id"]]
    assert len(ok(capsys, "meeting", "list", "--limit", "1").splitlines()) == 1


def test_meeting_list_empty(env, capsys):
    assert ok(capsys, "meeting", "list") == ""


def test_token_prints_a_jwt_that_verifies(env, capsys):
    meeting = create(capsys, "--start")
    token = ok(
        capsys, "token", "--meeting", meeting["roomCode"], "--emp", "e-7", "--role", "cohost"
    )
    token = token.strip()
    assert token.count(".") == 2
    keys = Settings.from_env({"MESHROOM_SECRET": SECRET}).token_keys(create_secret=False)
    claims = verify_token(keys, token)
    assert (claims.meeting_id, claims.emp_id, claims.role) == (meeting["id"], "e-7", Role.COHOST)
    assert claims.display_name == "e-7"

    out = ok(
        capsys,
        "token",
        "--meeting",
        meeting["id"],
        "--emp",
        "e-8",
        "--name",
        "Eve",
        "--ttl",
        "60",
        "--json",
    )
    issued = json.loads(out)
    claims = verify_token(keys, issued["token"])
    assert (claims.display_name, claims.role) == ("Eve", Role.PARTICIPANT)
    assert issued["meetingId"] == meeting["id"]
    assert (claims.expires_at - claims.issued_at).total_seconds() == 60


def test_token_flags_override_the_environment(env, capsys):
    meeting = create(capsys)
    other = "z" * 40
    token = ok(capsys, "token", "--meeting", meeting["id"], "--emp", "e", "--secret", other).strip()
    keys = Settings.from_env({"MESHROOM_SECRET": other}).token_keys(create_secret=False)
    assert verify_token(keys, token).emp_id == "e"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["teleport"],
        ["meeting"],
        ["meeting", "create", "--host", "h"],  # no --title
        ["meeting", "create", "--title", "t", "--host", "h", "--scheduled-at", "soon"],
        ["meeting", "list", "--status", "PAUSED"],
        ["meeting", "list", "--limit", "many"],
        ["meeting", "show"],
        ["token", "--meeting", "m"],  # no --emp
        ["token", "--meeting", "m", "--emp", "e", "--role", "king"],
        ["token", "--meeting", "m", "--emp", "e", "--ttl", "an hour"],
        ["meeting", "list", "--no-such-flag"],
        ["meeting", "list", "--limit", "0"],
        ["token", "--meeting", "m", "--emp", "e", "--ttl", "0"],
        ["connect", "tok", "--url", "http://127.0.0.1:8765/meetings"],
        ["connect", "tok", "--url", "not a url"],
        ["connect", "tok", "--url", "ws://127.0.0.1:port/meetings"],
    ],
)
def test_bad_command_lines_are_one_line_and_exit_2(env, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()  # not argparse's usage: `serve`'s alone is forty lines
    assert line.startswith("meshroom") and ": error: " in line
    assert line.endswith("--help`)")


def test_an_http_url_is_refused_with_the_websocket_one(env, capsys):
    with pytest.raises(SystemExit):
        main(["connect", "tok", "--url", "https://example.com:8765/meetings"])
    assert "'wss://example.com:8765/meetings'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "variables", "named"),
    [
        (["serve", "--port", "eighty"], {}, "--port=eighty: not a whole number"),
        (["serve", "--http-port", "none"], {}, "--http-port=none: not a port number or off"),
        (["serve", "--rate-limit", "-1"], {}, "--rate-limit=-1: cannot be negative"),
        (["serve", "--duplicate-policy", "newest"], {}, "--duplicate-policy=newest"),
        (["serve"], {"MESHROOM_PORT": "70000"}, "MESHROOM_PORT=70000: must be at most 65535"),
        (["serve"], {"MESHROOM_DEMO": "maybe"}, "MESHROOM_DEMO=maybe: not true or false"),
        (["serve"], {"MESHROOM_API_KEYS": "short"}, "MESHROOM_API_KEYS: each API key"),
        (["serve", "--heartbeat-timeout", "0"], {}, "--heartbeat-timeout must be positive"),
        (
            ["serve", "--socketio-max-sessions", "-1"],
            {},
            "--socketio-max-sessions=-1: cannot be negative",
        ),
        (
            ["serve"],
            {"MESHROOM_SOCKETIO_RESUME_MEMORY": "soon"},
            "MESHROOM_SOCKETIO_RESUME_MEMORY=soon: not a number",
        ),
        (["serve", "--tls-key", "k.pem"], {}, "TLS needs both --tls-cert and --tls-key"),
        (["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"], {}, "TLS file c.pem"),
        (["meeting", "list", "--db-pool-size", "0"], {}, "--db-pool-size=0: must be at least 1"),
        (["meeting", "list"], {"MESHROOM_JWT_ALGORITHM": "none"}, "MESHROOM_JWT_ALGORITHM=none"),
        (["meeting", "list", "--log-level", "loud"], {}, "--log-level=loud: must be 'DEBUG'"),
        (["db", "current"], {"MESHROOM_LOG_LEVEL": "loud"}, "MESHROOM_LOG_LEVEL=loud"),
        (["connect", "tok"], {"MESHROOM_PORT": "x"}, "MESHROOM_PORT=x: not a whole number"),
    ],
)
def test_bad_settings_exit_2_before_a_port_or_the_database_is_touched(
    env, capsys, monkeypatch, argv, variables, named
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("got past the settings")

    monkeypatch.setattr("meshroom.cli.Server", never)
    monkeypatch.setattr("meshroom.cli.open_store", never)
    line = fails(capsys, *argv, code=2)
    assert named in line
    assert not (env / "cli.db").exists()


def test_help_exits_0(env, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "meeting" in capsys.readouterr().out


def test_serve_has_a_flag_for_every_setting_typed_by_the_model(env, capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
    for usage in (
        "--http-port PORT|off",
        "--kick-rejoin-block SECONDS",
        "--duplicate-policy replace|reject",
        "--log-level DEBUG|INFO|WARNING|ERROR",
        "--max-room-peers N",
        "--demo | --no-demo",
        "[MESHROOM_KICK_REJOIN_BLOCK; default: 60.0]",
    ):
        assert usage in text


def test_a_boolean_flag_and_its_negation(env, capsys, monkeypatch):
    seen: list[Settings] = []

    class Recorder:
        def __init__(self, settings: Settings) -> None:
            seen.append(settings)

        async def run(self, **kwargs: object) -> None:
            pass

    monkeypatch.setattr("meshroom.cli.Server", Recorder)
    monkeypatch.setenv("MESHROOM_DEMO", "1")
    ok(capsys, "serve", "--no-demo", "--http-port", "off", "--log-level", "ERROR")
    ok(capsys, "serve", "--http-port", "0", "--log-level", "ERROR")
    assert [(s.demo, s.http_port) for s in seen] == [(False, None), (True, 0)]


@pytest.mark.parametrize(
    "argv",
    [
        ["meeting", "show", "no-such-meeting"],
        ["meeting", "start", "abc-defg-hjk"],
        ["meeting", "end", "nope"],
        ["token", "--meeting", "nope", "--emp", "e"],
    ],
)
def test_unknown_meeting_is_one_line(env, capsys, argv):
    create(capsys)
    line = fails(capsys, *argv)
    assert argv[2] in line  # the reference that was not found


def test_invalid_transition_is_one_line(env, capsys):
    meeting = create(capsys, "--start")
    line = fails(capsys, "meeting", "start", meeting["id"])
    assert "LIVE" in line
    ok(capsys, "meeting", "end", meeting["id"])
    fails(capsys, "meeting", "end", meeting["id"])


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("not a url", 2),  # refused with the settings, naming the flag or variable
        ("nosuchdialect://x/y", 1),  # found when the store opens
        ("sqlite:////definitely/not/a/dir/meshroom.db", 1),
    ],
)
def test_invalid_database_url_is_one_line(env, capsys, monkeypatch, url, code):
    monkeypatch.setenv("MESHROOM_DATABASE_URL", url)
    line = fails(capsys, "meeting", "list", code=code)
    assert code == 1 or line.startswith("meshroom: error: MESHROOM_DATABASE_URL: not a database")
    line = fails(capsys, "meeting", "list", "--database-url", url, code=code)
    assert code == 1 or line.startswith("meshroom: error: --database-url: not a database URL")


def test_missing_driver_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    line = fails(capsys, "meeting", "list", "--database-url", "postgresql+psycopg://u@h/db")
    assert "psycopg" in line


def test_db_upgrade_to_an_unknown_revision_is_one_line(env, capsys):
    line = fails(capsys, "db", "upgrade", "--revision", "nope")
    assert line == (
        "meshroom: error: cannot upgrade the database schema: "
        "Can't locate revision identified by 'nope'"
    )


def test_db_current_check_answers_with_its_exit_code(env, capsys):
    code, out, err = run(capsys, "db", "current", "--check")
    assert (code, err) == (1, "")
    assert "empty" in out
    ok(capsys, "db", "upgrade")
    assert "current" in ok(capsys, "db", "current", "--check")


def test_short_secret_is_one_line(env, capsys, monkeypatch):
    meeting = create(capsys)
    monkeypatch.setenv("MESHROOM_SECRET", "short")
    line = fails(capsys, "token", "--meeting", meeting["id"], "--emp", "e", code=2)
    assert "MESHROOM_SECRET must be at least 32 bytes" in line
    assert "short" not in line  # a secret is never echoed


def test_an_unreadable_secret_file_is_one_line(env, capsys, monkeypatch):
    monkeypatch.delenv("MESHROOM_SECRET")
    (env / "meshroom.secret").mkdir()  # a directory where the secret file should be
    line = fails(capsys, "meeting", "list", code=2)
    assert "meshroom.secret" in line


def test_serve_on_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
        env |= {
            "MESHROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
            "MESHROOM_SECRET": SECRET,
            "MESHROOM_HTTP_PORT": "off",
            "MESHROOM_LOG_LEVEL": "WARNING",
        }
        result = subprocess.run(
            [sys.executable, "-m", "meshroom", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshroom: error: cannot listen on 127.0.0.1:")
    assert str(port) in lines[0]
    assert result.stdout == ""


def meshroom_process(tmp_path: Path, *argv: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
    env |= {"MESHROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", "MESHROOM_SECRET": SECRET}
    env |= env_vars
    return subprocess.run(
        [sys.executable, "-m", "meshroom", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "env_vars"),
    [
        (["meeting", "show", "no-such-meeting"], {}),
        (["meeting", "list"], {"MESHROOM_DATABASE_URL": "sqlite:////definitely/not/a/dir/x.db"}),
    ],
)
def test_failures_are_one_line_in_a_real_process(tmp_path, argv, env_vars):
    # In-process, pytest captures log records; a real run shows whatever logging prints too.
    result = meshroom_process(tmp_path, *argv, **env_vars)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshroom: error: ")


async def test_second_server_on_a_busy_port_leaves_the_first_ones_attendance_alone(server):
    # Starting `meshroom serve` by mistake a second time (same port, same database)
    # must fail without touching the running server's data: its peers' attendance
    # rows are open because they are present, not because of a crash.
    import trio

    from meshroom.client import connect

    with trio.fail_after(30):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
            env |= {
                "MESHROOM_DATABASE_URL": server.settings.database_url,
                "MESHROOM_SECRET": SECRET,
                "MESHROOM_HTTP_PORT": "off",
                "MESHROOM_LOG_LEVEL": "WARNING",
            }
            port = str(server.server.port)
            result = await trio.run_process(
                [sys.executable, "-m", "meshroom", "serve", "--host", "127.0.0.1", "--port", port],
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 1
            assert b"cannot listen" in result.stderr
            (row,) = await server.store.attendance_for_meeting(meeting.id)
            assert (row.left_at, row.leave_reason) == (None, None)
            assert (await alice.request("ping"))["serverTime"]


def one_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The process exited with ``code`` after one line on stderr, and no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("meshroom: error: ")
    return line


def refused_port() -> tuple[socket.socket, int]:
    """A port nothing listens on, held (bound, not listening) so nothing else takes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def test_serve_with_a_short_api_key_is_one_line_and_touches_nothing(tmp_path):
    result = meshroom_process(tmp_path, "serve", MESHROOM_API_KEYS="short")
    line = one_line(result, 2)
    assert (
        line
        == "meshroom: error: MESHROOM_API_KEYS: each API key must be at least 16 characters long"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no database, no secret files


@pytest.mark.parametrize(
    ("argv", "env_vars", "expected"),
    [
        (["serve", "--port", "eighty"], {}, "meshroom: error: --port=eighty: not a whole number"),
        (["serve"], {"MESHROOM_HTTP_PORT": "x"}, "MESHROOM_HTTP_PORT=x: not a port number or off"),
        (["teleport"], {}, "meshroom: error: argument COMMAND: invalid choice: 'teleport'"),
    ],
)
def test_usage_errors_are_one_line_in_a_real_process(tmp_path, argv, env_vars, expected):
    result = meshroom_process(tmp_path, *argv, **env_vars)
    assert result.stdout == ""
    assert expected in one_line(result, 2)
    assert list(tmp_path.iterdir()) == []


def test_serve_on_an_http_port_in_use_is_one_line(tmp_path):
    # The HTTP listener starts inside the server's nursery: its error arrives in a group.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = meshroom_process(
            tmp_path,
            "serve",
            MESHROOM_PORT="0",
            MESHROOM_HTTP_PORT=str(port),
            MESHROOM_LOG_LEVEL="WARNING",
        )
    line = one_line(result, 1)
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_serve_on_an_unusable_database_is_one_line(tmp_path):
    result = meshroom_process(
        tmp_path,
        "serve",
        MESHROOM_DATABASE_URL="sqlite:////definitely/not/a/dir/x.db",
        MESHROOM_HTTP_PORT="off",
        MESHROOM_PORT="0",
        MESHROOM_LOG_LEVEL="ERROR",  # the store logs a WARNING of its own
    )
    assert "cannot open the database" in one_line(result, 1)


def test_connect_to_a_server_that_is_down_is_one_line(tmp_path):
    sock, port = refused_port()
    with sock:
        # The URL defaults to the one `meshroom serve` with the same settings listens on.
        result = meshroom_process(tmp_path, "connect", "some-token", MESHROOM_PORT=str(port))
    line = one_line(result, 1)
    assert line.startswith(f"meshroom: error: cannot connect to ws://127.0.0.1:{port}/meetings: ")
    assert result.stdout == ""


def test_connect_with_a_wrong_scheme_is_one_line(tmp_path):
    result = meshroom_process(tmp_path, "connect", "tok", "--url", "http://127.0.0.1:8765/m")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "'ws://127.0.0.1:8765/m'" in line


def test_connect_url_defaults_to_the_configured_host_and_port(env, capsys, monkeypatch):
    monkeypatch.setenv("MESHROOM_HOST", "0.0.0.0")
    monkeypatch.setenv("MESHROOM_PORT", "9999")
    with pytest.raises(SystemExit) as info:
        main(["connect", "--help"])
    assert info.value.code == 0
    assert "ws://127.0.0.1:9999/meetings" in " ".join(capsys.readouterr().out.split())


async def run_connect(server, *argv: str) -> tuple[int, str, str]:
    import trio

    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
    result = await trio.run_process(
        [sys.executable, "-m", "meshroom", "connect", *argv],
        env=env,
        stdin=b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_connect_to_a_path_with_no_websocket_is_one_line(server):
    url = server.url.rsplit("/", 1)[0] + "/no-such-path"
    code, out, err = await run_connect(server, "tok", "--url", url)
    assert (code, out) == (1, ""), err
    (line,) = err.splitlines()
    assert line.startswith(f"meshroom: error: cannot connect to {url}: the server answered HTTP 4")


async def test_connect_with_a_token_the_server_refuses_is_one_line(server):
    code, out, err = await run_connect(server, "not-a-token", "--url", server.url)
    assert (code, out) == (1, ""), err
    (line,) = err.splitlines()
    assert line.startswith("meshroom: error: join refused: ")
    assert "(close 4001)" in line


async def test_connect_joins_and_reports_the_close(server):
    meeting = await server.meeting()
    token = server.token(meeting, "alice")
    code, out, err = await run_connect(server, token, "--url", server.url)
    assert (code, err) == (0, "")
    first, *_, last = out.splitlines()
    assert json.loads(first)["event"] == "room:joined"
    assert last.startswith("closed: 1000")


class FakeServer:
    """Stands in for meshroom.server.Server: fails the way ``error`` says, in a nursery."""

    error: BaseException

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(self, **kwargs: object) -> None:
        import trio

        async def fail() -> None:
            raise self.error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (ConfigError("cannot listen on 127.0.0.1:8080: Address in use"), 1, "cannot listen on"),
        (OSError(24, "Too many open files"), 1, "unexpected OSError: [Errno 24] Too many"),
        (RuntimeError("first\nsecond"), 1, "unexpected RuntimeError: first second (run with"),
        (KeyboardInterrupt(), 130, None),
    ],
)
def test_errors_raised_inside_a_nursery_are_one_line(
    env, capsys, monkeypatch, error, code, expected
):
    FakeServer.error = error
    monkeypatch.setattr("meshroom.cli.Server", FakeServer)
    got, out, err = run(capsys, "serve", "--http-port", "off", "--log-level", "ERROR")
    assert (got, out) == (code, "")
    if expected is None:
        assert err == ""
    else:
        (line,) = err.splitlines()
        assert line.startswith("meshroom: error: ") and expected in line


async def test_connect_to_something_that_is_not_a_websocket_server_is_one_line(tmp_path):
    import trio

    async def not_websocket(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some()
            await stream.send_all(b"\x15\x03\x01\x00\x02\x02\x46 not HTTP\r\n\r\n")

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, not_websocket, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/meetings"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
        result = await trio.run_process(
            [sys.executable, "-m", "meshroom", "connect", "tok", "--url", url],
            env=env,
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"meshroom: error: cannot connect to {url}: the server does not speak")
