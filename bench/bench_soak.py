"""Soak and footprint: the whole system as a site runs it, sampled while it runs (issue 11).

    python -m bench.bench_soak                                   # 100 stations x 1 Hz, 10 min
    python -m bench.bench_soak --stations 1000 --minutes 30      # the issue's soak
    python -m bench.bench_soak --no-accelerate                   # the site's own schedules
    python -m bench.bench_soak --quick                           # 5 stations, 3 min, not written

The site is `powerwatch serve` (server, work pool, automations, every deployment of
prefect.yaml, a worker: `powerwatch.devtools.demo.run_site`, what an operator runs) against the
registry a simulator writes (`powerwatch simulate --count N --rate R --faults`). Both run
in the site-like interpreter (`bench.deployed`: no dev or baseline packages, so memory is
what a site's processes carry). Nothing is changed in the code under test.

Accelerated schedules (default; `--no-accelerate` keeps prefect.yaml's): once the site
runs, the bench replaces the schedules of the daily/hourly deployments through Prefect's
own CLI (`prefect deployment schedule create <deployment> --interval S --replace`) so
that backup, archive, retention and the restore drill each run about four times in the
window, and sets `PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS` so that the server's
vacuum runs as often. What they may delete still follows the site's settings (readings
archived after `retention_days` >= 1, rejects after `rejects_retention_days` >= 1, flow
runs vacuumed after `prefect_history_days`, which Prefect bounds at >= 1 h): in a short
window retention deletes loaded chunks once a backup holds them, and the rest levels off
only over days, which the extrapolation below accounts for.

Sampling: every `--sample` seconds (60; 30 in runs of 15 minutes or less) the size of
each folder under the data folder, the database (+ -wal, -shm) and the Prefect server's
database; every 2 s the CPU time and RSS of every process of the site (`serve` and all
its descendants; the simulator apart: it stands for the stations, not the site). CPU is
counted from cumulative CPU times, including those of exited children (a flow run that
lives between two samples is counted in its worker's `children_*` times), so short-lived
runs are not missed. "Steady state" is everything after the first quarter of the window.
Memory levels off when no long-lived process's mean RSS grows more than 10 % between the
second and the last quarter. Results: docs/benchmarks.md, section `bench-soak`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.deployed import ROOT, deployed_python
from bench.report import publish, table

# Deployments the bench reschedules, and how many runs of each it aims at in the window.
ACCELERATED = (
    "backup-database/daily",
    "archive-readings/daily",
    "apply-retention/daily",
    "restore-drill/daily-drill",
)
RUNS_IN_WINDOW = 4
PROCESS_SAMPLE_SECONDS = 2.0
# Retention horizons of the site's defaults (powerwatch.core.settings), for the extrapolation.
RETENTION_DAYS = 90
# One backup a day as scheduled (prefect.yaml): the dailies kept plus the newest of today.
BACKUPS_KEPT = 7 + 1  # backup_keep_daily + 1
LONG_LIVED = ("serve", "prefect server", "worker", "simulator")
# Per role: cumulative CPU seconds, RSS bytes, live processes, PSS bytes.
Sample = tuple[float, float, int, float]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1.0, help="frames/s per station")
    parser.add_argument("--minutes", type=float, default=10.0, help="sampled window")
    parser.add_argument("--sample", type=float, help="seconds between disk samples")
    parser.add_argument("--no-accelerate", action="store_true", help="prefect.yaml's schedules")
    parser.add_argument("--prefect-port", type=int, default=4290)
    parser.add_argument("--station-port", type=int, default=21000)
    parser.add_argument("--root", type=Path, help="site folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the site folder")
    parser.add_argument("--label", default="", help="names this run in docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    args = parser.parse_args()
    if args.quick:
        args.stations, args.minutes = min(args.stations, 5), min(args.minutes, 3.0)
    if args.sample is None:
        args.sample = 30.0 if args.minutes <= 15 else 60.0
    return args


# --- the site -------------------------------------------------------------------------


@dataclass
class Site:
    root: Path
    prefect_port: int
    station_port: int
    stations: int
    rate: float
    vacuum_loop_seconds: int | None
    serve: subprocess.Popen[bytes] | None = None
    simulator: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERWATCH_", "PREFECT_"))}
        env |= {
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "POWERWATCH_DATABASE_URL": f"sqlite:///{self.data / 'powerwatch.db'}",
            "POWERWATCH_DATA_DIR": str(self.data),
            "POWERWATCH_STATIONS": str(self.root / "stations.yaml"),
            "POWERWATCH_PREFECT_PORT": str(self.prefect_port),
        }
        if self.vacuum_loop_seconds:
            env["PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS"] = str(self.vacuum_loop_seconds)
        return env

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        python = deployed_python()
        registry = self.root / "stations.yaml"
        self.simulator = self._spawn(
            "simulator",
            [
                python,
                "-m",
                "powerwatch.cli",
                "simulate",
                "--count",
                str(self.stations),
                "--rate",
                str(self.rate),
                "--port",
                str(self.station_port),
                "--faults",
            ],
        )
        _wait(lambda: registry.exists(), 120, "the simulator's registry", self.simulator)
        self.serve = self._spawn("serve", [python, "-m", "powerwatch.cli", "serve"])
        log = self.root / "serve.log"
        _wait(lambda: "is running" in log.read_text(errors="replace"), 600, "serve", self.serve)

    def prefect(self, *args: str) -> None:
        subprocess.run(
            [deployed_python(), "-m", "prefect", *args],
            env=self.env() | {"PREFECT_API_URL": self.api_url},
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=300,
        )

    def accelerate(self, every: int) -> None:
        for deployment in ACCELERATED:
            self.prefect(
                "deployment",
                "schedule",
                "create",
                deployment,
                "--interval",
                str(every),
                "--replace",
                "--accept-yes",
            )

    def stop(self) -> None:
        for child in (self.serve, self.simulator):  # the site first: it stops in order
            if child is None or child.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )


def _wait(ready: Any, timeout: float, what: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{what}: exited ({child.returncode}) before it was ready")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not ready within {timeout:.0f} s")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


# --- sampling -------------------------------------------------------------------------


@dataclass
class Processes:
    """CPU seconds and RSS per role, from the live process tree and reaped children."""

    api_url: str
    flow_names: dict[str, str] = field(default_factory=dict)  # flow run id -> flow name
    handles: dict[int, psutil.Process] = field(default_factory=dict)
    flow_cpu: dict[tuple[int, float], tuple[str, float]] = field(default_factory=dict)
    flow_rss: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    flow_seen: dict[str, set[tuple[int, float]]] = field(default_factory=lambda: defaultdict(set))

    def cpu_per_run(self, name: str) -> float:
        seen = [cpu for flow, cpu in self.flow_cpu.values() if flow == name]
        return statistics.fmean(seen) if seen else 0.0

    def role(self, proc: psutil.Process, top: dict[int, str]) -> str:
        if proc.pid in top:
            return top[proc.pid]
        cmd = " ".join(proc.cmdline())
        if "server start" in cmd or "uvicorn" in cmd or "prefect.server" in cmd:
            return "prefect server"
        if "worker start" in cmd:
            return "worker"
        return "flow runs"

    def flow_name(self, proc: psutil.Process) -> str:
        try:
            run_id = proc.environ().get("PREFECT__FLOW_RUN_ID", "")
        except (psutil.Error, OSError):
            return "?"
        if not run_id:
            return "other"
        if run_id not in self.flow_names:
            try:
                run = httpx.get(f"{self.api_url}/flow_runs/{run_id}", timeout=5).json()
                flow = httpx.get(f"{self.api_url}/flows/{run['flow_id']}", timeout=5).json()
                self.flow_names[run_id] = flow["name"]
            except (httpx.HTTPError, KeyError, ValueError):
                return "?"
        return self.flow_names[run_id]

    def sample(self, serve: int, simulator: int) -> dict[str, Sample]:
        """role -> (cumulative CPU seconds, RSS bytes, live processes, PSS bytes)."""
        top = {serve: "serve", simulator: "simulator"}
        cpu: dict[str, float] = defaultdict(float)
        rss: dict[str, float] = defaultdict(float)
        pss: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        procs: list[psutil.Process] = []
        for pid in (serve, simulator):
            try:
                root = self._handle(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        for proc in procs:
            try:
                proc = self._handle(proc.pid)
                with proc.oneshot():
                    role = self.role(proc, top)
                    times = proc.cpu_times()
                    full = proc.memory_full_info()  # PSS: shared pages counted once
                    memory = full.rss
                    own = times.user + times.system
                    reaped = times.children_user + times.children_system
                    # what a process reaped counts where its children belong: a worker's
                    # finished flow runs are flow runs; serve's children are the stack
                    cpu[role] += own
                    cpu["flow runs" if role == "worker" else role] += reaped
                    rss[role] += memory
                    pss[role] += full.pss
                    count[role] += 1
                    if role == "flow runs":
                        name = self.flow_name(proc)
                        key = (proc.pid, proc.create_time())
                        self.flow_cpu[key] = (name, own + reaped)
                        self.flow_rss[name] = max(self.flow_rss[name], memory)
                        self.flow_seen[name].add(key)
            except psutil.Error:
                continue
        return {role: (cpu[role], rss[role], count[role], pss[role]) for role in cpu}

    def _handle(self, pid: int) -> psutil.Process:
        # one Process object per pid: psutil caches what it can and checks pid reuse
        proc = self.handles.get(pid)
        if proc is None or not proc.is_running():
            proc = self.handles[pid] = psutil.Process(pid)
        return proc


def sizes(data: Path) -> dict[str, int]:
    """Bytes of each folder under the data folder, the database files, the server's db."""
    out: dict[str, int] = {}
    for entry in sorted(data.iterdir()):
        if entry.is_dir():
            out[entry.name + "/"] = _tree_bytes(entry)
    db = data / "powerwatch.db"
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        out[f"powerwatch.db{suffix}"] = path.stat().st_size if path.exists() else 0
    prefect_db = data / "prefect" / "prefect.db"
    out["prefect/prefect.db (+wal)"] = sum(
        Path(f"{prefect_db}{s}").stat().st_size
        for s in ("", "-wal")
        if Path(f"{prefect_db}{s}").exists()
    )
    return out


def _tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# --- analysis -------------------------------------------------------------------------


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares growth per hour of (seconds, value) points."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


def quarters(points: list[tuple[float, float]], window: float) -> list[list[float]]:
    out: list[list[float]] = [[], [], [], []]
    for t, v in points:
        out[min(3, int(4 * t / window))].append(v)
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def analyse(
    args: argparse.Namespace,
    disk: list[tuple[float, dict[str, int]]],
    procs: list[tuple[float, dict[str, Sample]]],
    flows: Processes,
    runs: dict[str, int],
) -> tuple[str, dict[str, Any]]:
    window = args.minutes * 60
    steady = [(t, s) for t, s in procs if t >= window / 4]
    roles = sorted({r for _, s in procs for r in s}, key=lambda r: (r == "simulator", r))
    rows = []
    site_cpu = 0.0
    site_rss_mean = 0.0
    site_rss_peak: dict[float, float] = defaultdict(float)
    site_pss_mean = 0.0
    site_pss_peak: dict[float, float] = defaultdict(float)
    flat = True
    figures: dict[str, Any] = {"roles": {}}
    for role in roles:
        series = [(t, s[role]) for t, s in steady if role in s]
        if len(series) < 2:
            continue
        (t0, (c0, *_)), (t1, (c1, *_)) = series[0], series[-1]
        cpu_pct = 100 * (c1 - c0) / (t1 - t0)
        rss_points = [(t, v[1]) for t, v in ((t, s[role]) for t, s in procs if role in s)]
        q = quarters(rss_points, window)
        mean_rss = statistics.fmean(v[1] for _, v in series)
        peak_rss = max(v[1] for _, v in series)
        mean_pss = statistics.fmean(v[3] for _, v in series)
        growth = (
            (statistics.fmean(q[3]) / statistics.fmean(q[1]) - 1) * 100
            if q[1] and q[3] and statistics.fmean(q[1])
            else float("nan")
        )
        levels = role not in LONG_LIVED or growth <= 10
        if role != "simulator":
            site_cpu += cpu_pct
            site_rss_mean += mean_rss
            site_pss_mean += mean_pss
            for t, s in steady:
                site_rss_peak[t] += s[role][1] if role in s else 0
                site_pss_peak[t] += s[role][3] if role in s else 0
            flat = flat and levels
        figures["roles"][role] = {
            "cpu_pct": cpu_pct,
            "rss_mean": mean_rss,
            "rss_peak": peak_rss,
            "pss_mean": mean_pss,
            "rss_growth_q2_q4_pct": growth,
        }
        rows.append(
            (
                role,
                f"{cpu_pct:.1f} %",
                mb(mean_rss),
                mb(peak_rss),
                mb(mean_pss),
                "(transient)" if role not in LONG_LIVED else f"{growth:+.1f} %",
            )
        )
    peak = max(site_rss_peak.values(), default=0.0)
    rows.append(
        (
            "**site total** (simulator excluded)",
            f"**{site_cpu:.1f} %**",
            f"**{mb(site_rss_mean)}**",
            f"**{mb(peak)}**",
            f"**{mb(site_pss_mean)}** (peak {mb(max(site_pss_peak.values(), default=0.0))})",
            "flat" if flat else "GROWS",
        )
    )
    figures |= {
        "site_cpu_pct": site_cpu,
        "site_rss_mean": site_rss_mean,
        "site_rss_peak": peak,
        "site_pss_mean": site_pss_mean,
    }

    # disk
    names = sorted({n for _, s in disk for n in s})
    disk_rows = []
    growth_h: dict[str, float] = {}
    for name in names:
        points = [(t, float(s.get(name, 0))) for t, s in disk]
        first = [p for p in points if p[0] < window / 2]
        last = [p for p in points if p[0] >= window / 2]
        g_all, g1, g2 = slope_per_hour(points), slope_per_hour(first), slope_per_hour(last)
        growth_h[name] = g_all
        if abs(g_all) < 1e6 and points[-1][1] < 5e6:
            verdict = "small, flat"
        elif g2 <= 0.25 * max(g1, 1.0):
            verdict = "levels off"
        else:
            verdict = "grows (bounded by its retention)"
        disk_rows.append((name, mb(points[0][1]), mb(points[-1][1]), f"{mb(g_all)}/h", verdict))

    per_day = {n: g * 24 / args.stations for n, g in growth_h.items()}
    db_day = per_day.get("powerwatch.db", 0) + per_day.get("powerwatch.db-wal", 0)
    chunk_day = per_day.get("loaded/", 0) + per_day.get("landing/", 0)
    figures |= {"db_bytes_per_station_day": db_day, "chunk_bytes_per_station_day": chunk_day}
    md = [
        f"## Soak{(' — ' + args.label) if args.label else ''}: {args.stations} stations x "
        f"{args.rate:g} Hz, {args.minutes:g} min (`bench/bench_soak.py`)",
        "",
        f"`python -m bench.bench_soak --stations {args.stations} --rate {args.rate:g} "
        f"--minutes {args.minutes:g}{' --no-accelerate' if args.no_accelerate else ''}`: "
        "`powerwatch serve` + `powerwatch simulate --faults` in the site-like venv; "
        f"schedules {'as in prefect.yaml' if args.no_accelerate else 'accelerated'}; "
        f"steady state = after the first quarter. Flow runs completed in the window: "
        + ", ".join(f"{k} {v}" for k, v in sorted(runs.items()))
        + ".",
        "",
        table(
            rows,
            ("process", "CPU (% of one core)", "RSS mean", "RSS peak", "PSS mean", "RSS Q2->Q4"),
        ),
        "",
        "Per flow (flow-run processes seen; CPU is what samples saw, a lower bound): "
        + "; ".join(
            f"{name}: {len(flows.flow_seen[name])} runs, RSS max {mb(flows.flow_rss[name])}, "
            f"CPU {flows.cpu_per_run(name):.1f} s per run"
            for name in sorted(flows.flow_seen)
        )
        + ".",
        "",
        table(disk_rows, ("on disk", "start", "end", "growth", "verdict")),
        "",
        f"Per station-day (growth x 24 h / stations): database {mb(db_day)}, "
        f"landing+loaded chunks {mb(chunk_day)}. At {args.rate:g} Hz.",
    ]
    return "\n".join(md), figures


def stored_ratios(data: Path) -> dict[str, float]:
    """Measured at the end of the run on the site's own database: readings stored, bytes
    per reading in the database, as an archive-like Parquet file (zstd, what
    `powerwatch.archive.writer` writes), and the newest backup's size against the database."""
    import sqlite3

    import polars as pl

    db = data / "powerwatch.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        frame = pl.read_database("SELECT * FROM power_readings", con).drop("batch_id")
    out = {"readings": float(frame.height)}
    if frame.height:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "archive-like.parquet"
            frame.sort("station_id", "ts").write_parquet(path, compression="zstd")
            out["archive_bytes_per_reading"] = path.stat().st_size / frame.height
        db_bytes = db.stat().st_size + _size(Path(f"{db}-wal"))
        out["db_bytes_per_reading"] = db_bytes / frame.height
        backups = (
            sorted(
                (p for p in (data / "backups").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_mtime,
            )
            if (data / "backups").exists()
            else []
        )
        newest = [p for p in backups if p.stat().st_size > 1000]
        if newest:
            out["backup_ratio"] = newest[-1].stat().st_size / max(1, db.stat().st_size)
    return out


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sizing(figures: dict[str, Any], stations: int, ratios: dict[str, float]) -> str:
    """Sizing for 100 and 1,000 stations at 1 Hz from this run: the server, worker and
    serve counted once, the flow runs' CPU and RAM scaled with the stations (an upper
    bound: part of a flow run's cost, its start-up, does not grow with stations); disk
    from the bytes per reading measured on this run's database."""
    fixed = ("serve", "prefect server", "worker")
    roles = figures["roles"]
    fixed_cpu = sum(v["cpu_pct"] for r, v in roles.items() if r in fixed)
    fixed_rss = sum(v["rss_mean"] for r, v in roles.items() if r in fixed)
    flow_cpu = roles.get("flow runs", {}).get("cpu_pct", 0.0)
    flow_rss = roles.get("flow runs", {}).get("rss_mean", 0.0)
    per_day = 86_400  # readings per station-day at 1 Hz
    db_day = ratios.get("db_bytes_per_reading", 0.0) * per_day
    archive_day = ratios.get("archive_bytes_per_reading", 0.0) * per_day
    backup_ratio = ratios.get("backup_ratio", 384 / 1360)  # bench-archive's when none ran
    rows = []
    for n in (100, 1000):
        db = db_day * n * RETENTION_DAYS
        rows.append(
            (
                f"{n:,}" + (" (scaled down: CPU and RAM a lower bound)" if n < stations else ""),
                f"{fixed_cpu + flow_cpu * n / stations:.0f} %",
                f"{(fixed_rss + flow_rss * n / stations) / 1e6:,.0f} MB",
                f"{db / 1e9:,.1f} GB",
                f"{archive_day * n * 365 / 1e9:,.1f} GB",
                f"{db * backup_ratio * BACKUPS_KEPT / 1e9:,.0f} GB",
            )
        )
    head = (
        f"Per station-day at 1 Hz ({per_day:,} readings): database {mb(db_day)} "
        f"({ratios.get('db_bytes_per_reading', 0):.0f} B/reading over "
        f"{ratios.get('readings', 0):,.0f} readings), archive {mb(archive_day)} "
        f"({ratios.get('archive_bytes_per_reading', 0):.1f} B/reading, zstd Parquet); "
        f"backup/database {backup_ratio:.2f}.\n\n"
    )
    return head + table(
        rows,
        (
            "stations at 1 Hz",
            "CPU (% of one core)",
            "RAM",
            f"database ({RETENTION_DAYS} d kept)",
            "archive per year",
            f"backups ({BACKUPS_KEPT} kept, at most)",
        ),
    )


# --- run ------------------------------------------------------------------------------


def completed_runs(api_url: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    try:
        flows = {
            f["id"]: f["name"]
            for f in httpx.post(f"{api_url}/flows/filter", json={"limit": 200}, timeout=10).json()
        }
        offset = 0
        while True:
            page = httpx.post(
                f"{api_url}/flow_runs/filter",
                json={
                    "limit": 200,
                    "offset": offset,
                    "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                },
                timeout=30,
            ).json()
            for run in page:
                out[flows.get(run["flow_id"], "?")] += 1
            if len(page) < 200:
                break
            offset += 200
    except httpx.HTTPError:
        pass
    return dict(out)


def main() -> int:
    args = arguments()
    for port in (args.prefect_port, *range(args.station_port, args.station_port + args.stations)):
        if not _port_free(port):
            print(f"port {port} is in use; choose --prefect-port/--station-port", file=sys.stderr)
            return 1
    root = args.root or Path(tempfile.mkdtemp(prefix="powerwatch-soak-"))
    name = "bench-soak" + (f"-{args.label}" if args.label else "")  # its section
    window = args.minutes * 60
    every = max(120, int(window / RUNS_IN_WINDOW))
    site = Site(
        root,
        args.prefect_port,
        args.station_port,
        args.stations,
        args.rate,
        None if args.no_accelerate else every,
    )
    disk: list[tuple[float, dict[str, int]]] = []
    procs: list[tuple[float, dict[str, Sample]]] = []
    flows = Processes(site.api_url)
    try:
        print(f"site in {root}: starting ...", flush=True)
        site.start()
        if not args.no_accelerate:
            site.accelerate(every)
        assert site.serve is not None and site.simulator is not None
        print(f"running; sampling {window:.0f} s", flush=True)
        start = time.monotonic()
        next_disk = start
        stop: list[int] = []  # SIGINT/SIGTERM: end the window now, report what was sampled
        signal.signal(signal.SIGINT, lambda signum, _frame: stop.append(signum))
        signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
        while (now := time.monotonic()) - start <= window and not stop:
            for child, name in ((site.serve, "serve"), (site.simulator, "simulator")):
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited ({child.returncode}); see {root}")
            procs.append((now - start, flows.sample(site.serve.pid, site.simulator.pid)))
            if now >= next_disk:
                disk.append((now - start, sizes(site.data)))
                next_disk += args.sample
                print(
                    f"{now - start:6.0f} s  "
                    + "  ".join(f"{r}: {v[1] / 1e6:.0f} MB" for r, v in procs[-1][1].items()),
                    flush=True,
                )
            time.sleep(max(0.0, PROCESS_SAMPLE_SECONDS - (time.monotonic() - now)))
        runs = completed_runs(site.api_url)
        if stop:  # the window that was sampled, said in the results
            args.minutes = round((time.monotonic() - start) / 60, 1)
            args.label = f"{args.label} (stopped partway)".strip()
    finally:
        site.stop()
    markdown, figures = analyse(args, disk, procs, flows, runs)
    ratios = stored_ratios(site.data)
    figures["stored"] = ratios
    markdown += (
        "\n\nSizing at 1 Hz from this run (the server, worker and serve once; flow runs "
        "scaled with the stations, an upper bound; readings kept "
        f"{RETENTION_DAYS} days in the database, then archived; "
        f"{BACKUPS_KEPT} backups kept, each at most the database's size times the measured "
        "ratio):\n\n" + sizing(figures, args.stations, ratios)
    )
    raw = ROOT / "bench" / "out" / f"{name}.json"  # the samples, for a second look
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"disk": disk, "procs": procs, "figures": figures}, default=str))
    publish(name, markdown, args)
    if not args.keep and args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
