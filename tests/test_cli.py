"""The command line, in-process (capsys) and, for `serve`, as a real subprocess."""

from __future__ import annotations

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
from meshroom.config import Settings

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
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, ""), err
    return out


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The command fails with exit 1 and exactly one line of explanation."""
    code, out, err = run(capsys, *argv)
    assert code == 1
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
    ended = json.loads(ok(capsys, "meeting", "end", typed, "--json"))
    assert (ended["id"], ended["status"]) == (meeting["id"], "ENDED")
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
        ["serve", "--port", "eighty"],
        ["meeting", "list", "--no-such-flag"],
    ],
)
def test_bad_flags_exit_2(env, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _, err = capsys.readouterr()
    assert "usage:" in err
    assert "Traceback" not in err


def test_help_exits_0(env, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "meeting" in capsys.readouterr().out


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
    "url",
    [
        "not a url",
        "nosuchdialect://x/y",
        "sqlite:////definitely/not/a/dir/meshroom.db",
    ],
)
def test_invalid_database_url_is_one_line(env, capsys, monkeypatch, url):
    monkeypatch.setenv("MESHROOM_DATABASE_URL", url)
    fails(capsys, "meeting", "list")
    fails(capsys, "meeting", "list", "--database-url", url)


def test_missing_driver_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    line = fails(capsys, "meeting", "list", "--database-url", "postgresql+psycopg://u@h/db")
    assert "psycopg" in line


def test_short_secret_is_one_line(env, capsys, monkeypatch):
    meeting = create(capsys)
    monkeypatch.setenv("MESHROOM_SECRET", "short")
    line = fails(capsys, "token", "--meeting", meeting["id"], "--emp", "e")
    assert "32" in line


def test_serve_on_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
        env |= {
            "MESHROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
            "MESHROOM_SECRET": SECRET,
            "MESHROOM_HTTP_PORT": "0",
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
                "MESHROOM_HTTP_PORT": "0",
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
