"""The benchmark suite runs: every scenario at a tiny size, as a real subprocess.

Only that results are produced and sane is checked, never speed: this runs on
loaded CI machines. The PostgreSQL storm is skipped when no PostgreSQL answers,
except under CI (CI=true), where a missing database is a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _redis import have_redis

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "MESHROOM_BENCH_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    chart = tmp_path / "chart.png"
    outputs = ["--json", str(out), "--chart", str(chart), "--quiet", "--timeout", "60"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, *outputs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert chart.stat().st_size > 1000
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1
    for row in report["results"]:
        assert row["failed"] == {}, row
        assert row["server_rss_mb"] > 1
        assert row["server_cpu"] >= 0
    return report


def by_target(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["target"]: row for row in report["results"]}


def test_relay(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "relay", "2", "--duration", "1", "--warmup", "0.3")
    rows = by_target(report)
    assert set(rows) == {"meshroom", "naive"}
    for row in rows.values():
        assert row["joined"] == 4
        assert row["messages"] > 0 and row["messages_per_s"] > 0
        assert row["bad_frames"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["loader_cpu"] > 0
    [ratio] = report["ratios_to_naive"]
    assert ratio["metric"] == "messages_per_s" and ratio["ratio"] > 0


def test_mesh_is_lossless(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "mesh", "4", "--rooms", "2")
    for row in by_target(report).values():
        assert row["joined"] == 8
        assert row["lossless"] is True and row["lost"] == 0
        assert row["signals_delivered"] == 2 * 4 * 3 * 5
        assert 0 < row["join_s"] <= row["converge_s"]
        assert row["samples"] == row["signals_delivered"]
    assert by_target(report)["meshroom"]["other_frames"] > 0  # peer:joined broadcasts


def test_storm_sqlite(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "storm", "12", "--room-size", "5", "--concurrency", "4")
    for row in by_target(report).values():
        assert row["joined"] == 12
        assert row["joins_per_s"] > 0
        assert row["samples"] == 12


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def test_storm_postgresql(tmp_path: Path) -> None:
    if not os.environ.get("CI") and not _postgres_reachable():
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    report = run_bench(tmp_path, "storm", "8", "--database", POSTGRES_URL, "--targets", "meshroom")
    [row] = report["results"]
    assert row["database"] == "postgresql"
    assert row["joined"] == 8


def test_capacity(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path, "capacity", "20", "--room-size", "5", "--hold", "1.5", "--heartbeat", "0.5"
    )
    for row in by_target(report).values():
        assert row["joined"] == row["alive"] == 20
        assert row["acks"] > 0 and row["acks"] <= row["pings"]
        assert row["kb_per_peer"] > 0


def test_capacity_without_client_pings(tmp_path: Path) -> None:
    # --heartbeat 0: the clients never ping (it made them ping in a tight loop).
    report = run_bench(
        tmp_path, "capacity", "6", "--room-size", "3", "--hold", "1", "--heartbeat", "0",
        "--targets", "meshroom",
    )  # fmt: skip
    [row] = report["results"]
    assert row["joined"] == row["alive"] == 6
    assert row["pings"] == row["acks"] == 0


def test_teardown(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "teardown", "6")
    [row] = report["results"]
    assert row["target"] == "meshroom"
    assert row["joined"] == row["sockets_closed"] == 6
    assert row["host_ack"] is True
    assert row["close_codes"] == {"4006": 6}
    assert row["rows_by_reason"] == {"meeting-ended": 6}
    assert row["rows_written_s"] > 0
    assert 0 < row["all_closed_s"] < 30


def test_compare_runs_the_tree_and_a_revision_and_prints_their_ratio(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compare", "HEAD", "--scenarios", "relay",
         "--rounds", "1", "--duration", "1", "--timeout", "60", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(out.read_text())
    relay = report["scenarios"]["relay"]
    for side in ("tree", "rev"):
        assert relay[side]["headline"] > 0 and relay[side]["to_naive"] > 0
    assert "tree/rev" in proc.stdout


def test_compare_refuses_an_unknown_revision_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compare", "no-such-revision-xyz"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "bench compare: 'no-such-revision-xyz' is not a revision of this repository"
    ]


def test_cluster(tmp_path: Path) -> None:
    """``bench cluster``: every layout relays and the failover is measured (it starts a
    throwaway redis-server of its own, two nodes and a loader)."""
    have_redis()
    out = tmp_path / "cluster.json"
    args = ["--pairs", "4", "--rooms", "2", "--duration", "1", "--warmup", "0.3"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "cluster", *args, "--loaders", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(out.read_text())
    rows = {row["layout"]: row for row in report["relay"]}
    assert set(rows) == {"one", "spread", "split"}
    for row in rows.values():
        assert row["joined"] == 8 and row["failed"] == {}, row
        assert row["messages_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert rows["one"]["nodes"] == 1 and rows["split"]["nodes"] == 2
    assert 0 < report["failover"]["kill_to_relaying_s"] < 30
