"""A screenshot of the Prefect UI with an open alert, `docs/ui-open-alert.png`: the
`powerwatch-status` artifact a capture run publishes (the station down since when, why,
the open alert), as an operator finds it under Artifacts.

    python -m bench.ui_open_alert        # ~2 minutes; needs chromium (`make browser`)

Real parts, as a site has them: a Prefect server (`LocalStack`), the alert automations
(`ensure_alert_automations`, no webhook: the firing shows in the UI), the simulator with
SIM-0002 taken off air for good (`--outage`), and one `powerwatch capture` window with
`POWERWATCH_SILENT_AFTER=10`. Not a test: it writes into the tracked tree (docs/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from powerwatch.site.automations import ensure_alert_automations
from powerwatch.site.stack import LocalStack
from tests.sites import free_port, site_environment

DOCS = Path(__file__).resolve().parents[1] / "docs"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--window-size=1700,760",
    "--virtual-time-budget=20000",
]


def _shoot(chromium: str, url: str, out: Path, profile: Path) -> None:
    done = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
        capture_output=True,
        timeout=180,
    )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed on {url}: {done.stderr[-1000:]!r}")
    print(f"{out} ({out.stat().st_size:,} bytes) <- {url}")


def _latest(api: str, path: str, body: dict[str, object]) -> dict[str, object]:
    found = httpx.post(f"{api}/{path}", json=body, timeout=30).json()
    items = found["events"] if isinstance(found, dict) else found
    if not items:
        raise RuntimeError(f"nothing found at {path}: {body}")
    item: dict[str, object] = items[0]
    return item


def _shoot_alert(chromium: str, api: str, ui: str, profile: Path) -> None:
    artifact = _latest(
        api, "artifacts/filter", {"artifacts": {"key": {"any_": ["powerwatch-status"]}}, "limit": 1}
    )
    if "SIM-0002" not in str(artifact["data"]) or "down" not in str(artifact["data"]):
        raise RuntimeError(f"no open alert in the status: {artifact['data']}")
    _shoot(
        chromium, f"{ui}/artifacts/artifact/{artifact['id']}", DOCS / "ui-open-alert.png", profile
    )


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium here: `make browser` (as root) installs it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ui-open-alert-") as tmp:
        root = Path(tmp)
        registry = root / "stations.yaml"
        env = dict(os.environ) | {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        with LocalStack(home=root / "prefect", port=free_port()) as stack:
            stack.start_server(timeout=600)
            ensure_alert_automations(stack.api_url, None)
            # SIM-0002 goes off air 25 s after the simulator starts: the capture, started
            # right after it, has seen it up by then; 10 s later it is down, for good.
            sim = subprocess.Popen(
                [sys.executable, "-m", "powerwatch.cli", "simulate", "--count", "3", "--rate",
                 "2", "--outage", "SIM-0002@25+3600"],
                env=env | {"POWERWATCH_STATIONS": str(registry)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                while not registry.exists():
                    if sim.poll() is not None:
                        raise RuntimeError("the simulator did not start")
                    time.sleep(0.1)
                env |= site_environment(root, f"sqlite:///{root / 'pw.db'}", registry)
                env |= {"PREFECT_API_URL": stack.api_url, "POWERWATCH_SILENT_AFTER": "10"}
                capture = subprocess.run(
                    [sys.executable, "-m", "powerwatch.cli", "capture", "--duration", "60"],
                    env=env, capture_output=True, text=True,
                )  # fmt: skip
            finally:
                sim.terminate()
                sim.wait(30)
            if capture.returncode != 0:
                raise RuntimeError(f"capture failed: {capture.stderr[-2000:]}")
            _shoot_alert(chromium, stack.api_url, stack.ui_url, root / "chromium")
    return 0


if __name__ == "__main__":
    sys.exit(main())
