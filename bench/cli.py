"""``python -m bench SCENARIO [SIZES...]``: run a scenario against meshroom and the naive relay."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .runner import SCENARIOS, Options
from .servers import Target, raise_fd_limit

DEFAULT_SIZES = {"relay": [20], "mesh": [50], "storm": [500], "capacity": [1000], "teardown": [500]}
SIZE_NAMES = {
    "relay": "pairs",
    "mesh": "peers/room",
    "storm": "joins",
    "capacity": "peers",
    "teardown": "peers",
}
# What "better" is for the headline number of each scenario, and its name.
HEADLINE = {
    "relay": ("messages_per_s", "higher"),
    "mesh": ("converge_s", "lower"),
    "storm": ("joins_per_s", "higher"),
    "capacity": ("kb_per_peer", "lower"),
    "teardown": ("all_closed_s", "lower"),
}
LATENCY_NAME = {
    "relay": "relay latency",
    "mesh": "signal latency",
    "storm": "join latency",
    "capacity": "heartbeat round trip",
    "teardown": "time to socket closed after host:end",
}
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "relay": [
        ("msg/s", "messages_per_s", "{:,.0f}"),
        ("msg/CPU-s", "messages_per_cpu_s", "{:,.0f}"),
        ("p50 ms", "p50_ms", "{:.2f}"),
        ("p95 ms", "p95_ms", "{:.2f}"),
        ("p99 ms", "p99_ms", "{:.2f}"),
    ],
    "mesh": [
        ("converge s", "converge_s", "{:.3f}"),
        ("joins s", "join_s", "{:.3f}"),
        ("signals", "signals_delivered", "{:,}"),
        ("lost", "lost", "{:,}"),
        ("msg/s", "messages_per_s", "{:,.0f}"),
        ("msg/CPU-s", "messages_per_cpu_s", "{:,.0f}"),
        ("p50 ms", "p50_ms", "{:.1f}"),
        ("p99 ms", "p99_ms", "{:.1f}"),
    ],
    "storm": [
        ("joined", "joined", "{:,}"),
        ("joins/s", "joins_per_s", "{:,.0f}"),
        ("p50 ms", "p50_ms", "{:.1f}"),
        ("p95 ms", "p95_ms", "{:.1f}"),
        ("p99 ms", "p99_ms", "{:.1f}"),
    ],
    "capacity": [
        ("alive", "alive", "{:,}"),
        ("join s", "join_s", "{:.1f}"),
        ("KB/peer", "kb_per_peer", "{:.1f}"),
        ("idle CPU %", "server_cpu", "{:.1f}"),
        ("hb p99 ms", "p99_ms", "{:.1f}"),
    ],
    "teardown": [
        ("closed", "sockets_closed", "{:,}"),
        ("all closed s", "all_closed_s", "{:.3f}"),
        ("notice p50 s", "notice_p50_s", "{:.3f}"),
        ("rows s", "rows_written_s", "{:.3f}"),
        ("close p99 ms", "p99_ms", "{:.1f}"),
    ],
}
COMMON = [
    ("server CPU %", "server_cpu", "{:.0f}"),
    ("loader CPU %", "loader_cpu", "{:.0f}"),
    ("other CPU %", "other_cpu", "{:.0f}"),
    ("server RSS MB", "server_rss_mb", "{:.0f}"),
]


class Ui:
    """A rich progress bar that follows the loaders' counters (or the clock)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.task: Any = None
        self.key: str | None = None
        self.clock: float | None = None
        self._last = 0.0
        self.label = ""

    def __enter__(self) -> Ui:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(
        self, name: str, *, total: float, key: str | None = None, clock: float | None = None
    ) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.key, self.clock = key, clock
        self.task = self.progress.add_task(escape(f"{self.label}: {name}"), total=total)

    def refresh(self, pool: Any) -> None:
        t = time.perf_counter()
        if t - self._last < 0.1 or self.task is None:
            return
        self._last = t
        if self.key is not None:
            self.progress.update(self.task, completed=pool.total(self.key))
        elif self.clock is not None:
            self.progress.update(self.task, completed=t - self.clock)


def summarise(result: dict[str, Any], scenario: str) -> dict[str, Any]:
    lat = result.pop("_latencies")
    out = dict(result)
    rate, cpu = out.get("messages_per_s"), out.get("server_cpu")
    if rate and cpu and not math.isnan(rate):
        # Messages per second of server CPU: on a shared machine this moves much less
        # than messages/s, since a server starved of CPU also spends less of it.
        out["messages_per_cpu_s"] = rate / (cpu / 100)
    if len(lat):
        scale = 1000.0
        for q in (50, 90, 95, 99, 99.9):
            key = f"p{q:g}_ms".replace(".", "_")
            out[key] = float(np.percentile(lat, q)) * scale
        out["max_ms"] = float(lat.max()) * scale
        out["samples"] = len(lat)
        # A compact CDF (201 quantiles) so the chart can be redrawn from the JSON.
        out["cdf_ms"] = [
            round(float(v) * scale, 4) for v in np.quantile(lat, np.linspace(0, 1, 201))
        ]
    return out


def meshroom_source() -> dict[str, Any]:
    """Which meshroom was measured: its path, and the revision if the caller said."""
    import importlib.util

    spec = importlib.util.find_spec("meshroom")
    return {
        "path": str(Path(spec.origin).parent) if spec and spec.origin else None,
        "revision": os.environ.get("MESHROOM_BENCH_REVISION"),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def best_runs(scenario: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, size): the best run by the scenario's headline number."""
    key, better = HEADLINE[scenario]
    best: dict[tuple[str, int], dict[str, Any]] = {}

    def score(row: dict[str, Any]) -> float:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return -math.inf
        return value if better == "higher" else -value

    for row in runs:
        k = (row["target"], row["size"])
        if k not in best or score(row) > score(best[k]):
            best[k] = row
    return list(best.values())


def ratios(scenario: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """meshroom / naive for the headline number, per size and meshroom variant."""
    key, _better = HEADLINE[scenario]
    out = []
    naive = {r["size"]: r for r in rows if r["target"] == "naive"}
    for r in rows:
        base = naive.get(r["size"])
        if r["target"] == "naive" or base is None:
            continue
        a, b = r.get(key), base.get(key)
        if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
            continue
        entry = {"target": r["target"], "size": r["size"], "metric": key, "ratio": a / b}
        if "p50_ms" in r and "p50_ms" in base and base["p50_ms"]:
            entry["p50_latency_ratio"] = r["p50_ms"] / base["p50_ms"]
        if r.get("messages_per_cpu_s") and base.get("messages_per_cpu_s"):
            entry["per_cpu_ratio"] = r["messages_per_cpu_s"] / base["messages_per_cpu_s"]
        out.append(entry)
    return out


def print_table(
    console: Console, scenario: str, rows: list[dict[str, Any]], ratio: list[dict[str, Any]]
) -> None:
    cols = COLUMNS[scenario] + [
        c for c in COMMON if not (scenario in ("capacity",) and c[1] == "server_cpu")
    ]
    table = Table(title=f"bench {scenario}", title_justify="left")
    table.add_column("server")
    table.add_column(SIZE_NAMES[scenario], justify="right")
    for header, _, _ in cols:
        table.add_column(header, justify="right")
    table.add_column("failed")
    for r in rows:
        cells = [escape(r["target"]), str(r["size"])]
        for _, key, fmt in cols:
            value = r.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            else:
                cells.append(fmt.format(value))
        failed = r.get("failed") or {}
        cells.append(", ".join(f"{k}: {v}" for k, v in failed.items()) or "0")
        table.add_row(*cells)
    console.print(table)
    for entry in ratio:
        key, better = HEADLINE[scenario]
        extra = ""
        if "p50_latency_ratio" in entry:
            extra += f"  (p50 latency x{entry['p50_latency_ratio']:.2f})"
        if "per_cpu_ratio" in entry:
            extra += f"  (messages per server CPU-second x{entry['per_cpu_ratio']:.2f})"
        console.print(
            f"  {escape(entry['target'])} / naive at {SIZE_NAMES[scenario]}={entry['size']}: "
            f"{key} x{entry['ratio']:.2f} ({better} is better){extra}"
        )


def draw_chart(path: Path, scenario: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    unit = "ms"
    for r in rows:
        cdf = r.get("cdf_ms")
        if cdf:
            ax.plot(
                cdf,
                np.linspace(0, 1, len(cdf)),
                label=f"{r['target']} ({SIZE_NAMES[scenario]}={r['size']})",
            )
    ax.set_xscale("log")
    ax.set_xlabel(f"{LATENCY_NAME[scenario]} ({unit}, log scale)")
    ax.set_ylabel("fraction of samples")
    ax.set_title(f"{scenario}: {LATENCY_NAME[scenario]} CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")

    ax = axes[1]
    key = {
        "relay": "messages_per_s",
        "mesh": "messages_per_s",
        "storm": "joins_per_s",
        "capacity": "kb_per_peer",
        "teardown": "all_closed_s",
    }[scenario]
    label = {
        "messages_per_s": "messages/s",
        "joins_per_s": "joins/s",
        "kb_per_peer": "server KB per idle peer",
        "all_closed_s": "seconds until every socket closed",
    }[key]
    for target in dict.fromkeys(r["target"] for r in rows):
        pts = sorted((r["size"], r.get(key)) for r in rows if r["target"] == target)
        xs = [p[0] for p in pts]
        ys = [p[1] if p[1] is not None else float("nan") for p in pts]
        ax.plot(xs, ys, marker="o", label=target)
    ax.set_xlabel(SIZE_NAMES[scenario] + (" (room size)" if scenario == "mesh" else ""))
    ax.set_ylabel(label)
    ax.set_title(f"{scenario}: {label} against {SIZE_NAMES[scenario]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load benchmarks of meshroom against a naive trio-websocket relay "
        "(loopback only).",
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument(
        "sizes",
        nargs="*",
        type=int,
        help="relay: pairs; mesh: peers per room; storm: joins; capacity: peers; "
        "teardown: room size",
    )
    p.add_argument("--peers", type=int, action="append", help="a size (same as a positional size)")
    p.add_argument("--rooms", type=int, default=1, help="mesh: rooms converging at once")
    p.add_argument(
        "--room-size", type=int, default=0, help="storm (50) / capacity (20): peers per room"
    )
    p.add_argument("--loaders", type=int, default=2, help="loader processes (default 2)")
    p.add_argument("--duration", type=float, default=10.0, help="relay: measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="relay: unmeasured seconds first")
    p.add_argument("--window", type=int, default=32, help="relay: signals in flight per sender")
    p.add_argument("--message-bytes", type=int, default=700, help="size of an offer/answer frame")
    p.add_argument("--ice", type=int, default=4, help="mesh: ICE candidates each way per pair")
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="storm/capacity/teardown: joins in flight (0 = all)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=25.0,
        help="capacity: seconds between pings per peer (meshroom.js: 25; 0: no pings)",
    )
    p.add_argument("--hold", type=float, default=20.0, help="capacity: seconds idle peers are held")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="give up on a phase after this long"
    )
    p.add_argument(
        "--database",
        action="append",
        help="meshroom's database: 'sqlite' (a fresh temp file, the default) or a SQLAlchemy "
        "PostgreSQL URL (a fresh database is created in it and dropped); repeat to compare",
    )
    p.add_argument(
        "--targets",
        default="meshroom,naive",
        help="comma-separated servers to run: meshroom (the standalone wsproto listener), "
        "meshroom-quart (the same hub behind its Quart route on hypercorn), socketio (the "
        "Socket.IO endpoint on the standalone listener, driven as socket.io-client over "
        "WebSocket), naive, node-socketio (optional: a Node.js socket.io server doing the "
        "same relay; needs node and `npm ci` in bench/node)",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--chart", type=Path, help="draw a PNG chart here")
    p.add_argument(
        "--profile", choices=["cprofile", "pyinstrument"], help="profile the meshroom server"
    )
    p.add_argument(
        "--profile-dir", type=Path, default=Path("bench/results"), help="where profiles go"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each server this many times, alternating, and keep each one's best run "
        "(on a shared machine, interference only ever makes a run slower)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    scenario = args.scenario
    sizes = args.sizes + (args.peers or []) or DEFAULT_SIZES[scenario]
    opts = Options(
        loaders=args.loaders,
        duration=args.duration,
        warmup=args.warmup,
        window=args.window,
        message_bytes=args.message_bytes,
        ice=args.ice,
        rooms=args.rooms,
        room_size=args.room_size,
        concurrency=args.concurrency,
        heartbeat=args.heartbeat,
        hold=args.hold,
        timeout=args.timeout,
    )
    # The server holds one socket per peer, each loader its share: raise the soft limit
    # (inherited by the server and the loaders) to cover the largest run.
    wanted_fds = max(sizes) * max(1, args.rooms) + 1024
    fd_limit = raise_fd_limit(wanted_fds)
    if fd_limit < wanted_fds:
        console.print(
            f"[yellow]warning: RLIMIT_NOFILE is {fd_limit}, below the {wanted_fds} wanted"
        )
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(names) - {"meshroom", "meshroom-quart", "socketio", "node-socketio", "naive"}
    if unknown:
        build_parser().error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if scenario == "teardown":
        names = [n for n in names if n not in ("naive", "node-socketio")]
    databases = args.database or ["sqlite"]
    runs: list[dict[str, Any]] = []
    started = dt.datetime.now().astimezone()
    fn = SCENARIOS[scenario]
    plan = [
        (size, attempt, name, database)
        for size in sizes
        for attempt in range(max(1, args.repeat))
        for name in names
        for database in (databases if name.startswith("meshroom") else [None])
    ]
    with Ui(console, args.quiet) as ui:
        for size, attempt, name, database in plan:
            label = name
            if database is not None and len(databases) > 1:
                label += f"[{'sqlite' if database.startswith('sqlite') else 'postgresql'}]"
            kind = name if name in ("naive", "node-socketio") else "meshroom"
            profile_out = None
            if args.profile and kind == "meshroom":
                ext = "prof" if args.profile == "cprofile" else "html"
                profile_out = args.profile_dir / f"profile-{scenario}-{name}-{size}.{ext}"
            target = Target(
                name=label,
                kind=kind,
                transport={
                    "meshroom-quart": "quart",
                    "socketio": "socketio",
                    "node-socketio": "socketio",
                }.get(name, "standalone"),
                database=database or "sqlite",
                profile=args.profile if kind == "meshroom" else None,
                profile_out=profile_out,
            )
            ui.label = f"{label} {SIZE_NAMES[scenario]}={size}"
            if args.repeat > 1:
                ui.label += f" (run {attempt + 1}/{args.repeat})"
            with target.running():
                result = fn(target, size, opts, ui)
            row = {"target": label, "size": size, "run": attempt + 1}
            row.update(summarise(result, scenario))
            if target.db is not None:
                row["database"] = target.db.kind
            if profile_out is not None:
                row["profile"] = str(profile_out)
            runs.append(row)
            console.print(f"[dim]{escape(ui.label)}: done")
    rows = best_runs(scenario, runs)
    ratio = ratios(scenario, rows)
    print_table(console, scenario, rows, ratio)
    report = {
        "scenario": scenario,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "fd_limit": fd_limit,
        "meshroom": meshroom_source(),
        "options": vars(opts),
        "results": rows,
        "all_runs": runs if args.repeat > 1 else None,
        "ratios_to_naive": ratio,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"wrote {args.json}")
    if args.chart:
        draw_chart(args.chart, scenario, rows)
        console.print(f"wrote {args.chart}")
    bad = [r for r in rows if not r.get("joined")]
    return 1 if bad else 0
