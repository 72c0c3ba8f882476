"""``python -m bench compare REV``: the headline scenarios for the working tree and REV.

Every performance change is judged in one command: REV's ``meshroom`` package is
extracted (``git archive``) into a scratch directory with the working tree's
``bench`` beside it, and each scenario runs for the working tree and for REV in
turn, alternating which goes first every round (on a shared machine interference
drifts; alternating spreads it over both). Each run also measures the naive
relay, so both sides are compared as ratios to their own reference run as well
as by their raw headline numbers. The best run of each side is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
# scenario -> (headline key, "higher" or "lower" is better)
HEADLINES = {
    "relay": ("messages_per_s", "higher"),
    "mesh": ("converge_s", "lower"),
    "teardown": ("all_closed_s", "lower"),
    "storm": ("joins_per_s", "higher"),
    "capacity": ("kb_per_peer", "lower"),
}
# Numbers reported beside the headline (from the same best run), by scenario.
EXTRAS = {
    "capacity": [("idle server CPU %", "server_cpu")],
    # On a shared machine the server may not get a whole core: per CPU-second is steadier.
    "relay": [("msg per server CPU-s", "messages_per_cpu_s"), ("server CPU %", "server_cpu")],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench compare",
        description="Run the headline scenarios for the working tree and a git revision, "
        "alternately, and print their ratios.",
    )
    p.add_argument("rev", help="the git revision to compare against (e.g. HEAD~1, a tag)")
    p.add_argument(
        "--scenarios",
        default="relay,mesh",
        help="comma-separated: relay, mesh, teardown, storm, capacity",
    )
    p.add_argument(
        "--capacity-peers",
        type=int,
        default=5000,
        help="capacity: idle peers held (meshroom only, no naive run; the default 20 s hold)",
    )
    p.add_argument(
        "--storm-joins",
        type=int,
        default=500,
        help="storm: joins (64 in flight); 5000 with --storm-room-size 100 is issue 14's ramp",
    )
    p.add_argument("--storm-room-size", type=int, default=50, help="storm: peers per room")
    p.add_argument(
        "--target",
        default="meshroom",
        choices=["meshroom", "meshroom-quart", "socketio"],
        help="which meshroom server is compared (relay, mesh; each beside the naive relay): "
        "the standalone listener, the Quart route, or the Socket.IO endpoint",
    )
    p.add_argument("--rounds", type=int, default=2, help="runs per side and scenario")
    p.add_argument("--duration", type=float, help="seconds per relay measurement")
    p.add_argument("--json", type=Path, help="write the comparison here")
    p.add_argument("--timeout", type=float, default=120, help="per phase, seconds")
    return p


def extract(rev: str, into: Path) -> str:
    """REV's meshroom package into ``into``, with the working tree's bench; its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if full.returncode != 0:
        raise SystemExit(f"bench compare: {rev!r} is not a revision of this repository")
    archive = subprocess.run(
        ["git", "archive", full.stdout.strip(), "meshroom"], cwd=ROOT, capture_output=True
    )
    if archive.returncode != 0:
        raise SystemExit(f"bench compare: git archive failed: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    shutil.copytree(ROOT / "bench", into / "bench", ignore=shutil.ignore_patterns("results"))
    return full.stdout.strip()


def run_once(
    where: Path, scenario: str, args: argparse.Namespace, out: Path, revision: str | None
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", scenario, "--json", str(out), "--quiet"]
    command += ["--timeout", str(args.timeout)]
    if args.duration is not None and scenario == "relay":
        command += ["--duration", str(args.duration)]
    if scenario == "storm":
        command += ["--peers", str(args.storm_joins), "--room-size", str(args.storm_room_size)]
    if scenario == "capacity":
        command += ["--peers", str(args.capacity_peers), "--targets", "meshroom"]
    elif args.target != "meshroom":
        command += ["--targets", f"{args.target},naive"]
    env = dict(os.environ)
    if revision is not None:
        env["MESHROOM_BENCH_REVISION"] = revision
    # `python -m meshroom` (the server under test) resolves from the working directory.
    proc = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"bench compare: {scenario} failed in {where}:\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def side_result(
    report: dict[str, Any], scenario: str, target: str = "meshroom"
) -> dict[str, float | None]:
    key, _ = HEADLINES[scenario]
    mine = next(r for r in report["results"] if r["target"] == target)
    ratio = next(
        (r["ratio"] for r in report.get("ratios_to_naive") or [] if r["target"] == target),
        None,
    )
    result = {"headline": mine.get(key), "to_naive": ratio}
    for _, extra in EXTRAS.get(scenario, []):
        result[extra] = mine.get(extra)
    return result


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


def better(scenario: str, a: float | None, b: float | None) -> bool:
    """Whether ``a`` beats ``b`` for this scenario's headline."""
    if a is None:
        return False
    if b is None:
        return True
    return a > b if HEADLINES[scenario][1] == "higher" else a < b


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in HEADLINES]
    if unknown:
        build_parser().error(f"unknown scenario(s): {', '.join(unknown)}")
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)
    comparison: dict[str, Any] = {"rev": args.rev, "target": args.target, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        pinned = Path(scratch) / "pinned"
        pinned.mkdir()
        revision = extract(args.rev, pinned)
        comparison["revision"] = revision
        for scenario in scenarios:
            best: dict[str, dict[str, float | None]] = {}
            for round_ in range(max(1, args.rounds)):
                sides = [("tree", ROOT, None), ("rev", pinned, revision)]
                if round_ % 2:
                    sides.reverse()
                for name, where, rev in sides:
                    console.print(f"[dim]{scenario}: {name} (round {round_ + 1})")
                    out = Path(scratch) / f"{scenario}-{name}-{round_}.json"
                    report = run_once(where, scenario, args, out, rev)
                    target = "meshroom" if scenario == "capacity" else args.target
                    result = side_result(report, scenario, target)
                    if name not in best or better(
                        scenario, result["headline"], best[name]["headline"]
                    ):
                        best[name] = result
            comparison["scenarios"][scenario] = best
    target = "" if args.target == "meshroom" else f" ({args.target})"
    table = Table(
        title=f"working tree vs {args.rev} ({revision[:10]}){target}, best of {args.rounds}"
    )
    columns = ("scenario", "headline", "tree", args.rev, "tree/rev", "tree x naive", "rev x naive")
    for column in columns:
        table.add_column(column, justify="right")
    for scenario, best in comparison["scenarios"].items():
        key, direction = HEADLINES[scenario]
        tree, rev_ = best["tree"], best["rev"]
        change = (
            f"{tree['headline'] / rev_['headline']:.3f}"
            if tree["headline"] and rev_["headline"]
            else "-"
        )
        table.add_row(
            scenario,
            f"{key} ({direction} wins)",
            _number(tree["headline"]),
            _number(rev_["headline"]),
            change,
            f"{tree['to_naive']:.2f}" if tree["to_naive"] is not None else "-",
            f"{rev_['to_naive']:.2f}" if rev_["to_naive"] is not None else "-",
        )
    console.print(table)
    for scenario, best in comparison["scenarios"].items():
        for label, extra in EXTRAS.get(scenario, []):
            console.print(
                f"{scenario} {label} (of each side's best run): working tree "
                f"{_number(best['tree'].get(extra))}, {args.rev} {_number(best['rev'].get(extra))}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(comparison, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0
