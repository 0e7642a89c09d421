"""Finding the Prefect server a site runs on this machine, without importing Prefect.

A job command started by hand while `powerwatch demo` (or a site) runs should report to
that site's server, so its run shows in the UI the operator is looking at, and should not
pay for a temporary server of its own (11-18 s on a busy 2-core host). The site's
`LocalStack` writes its API URL into `SERVER_FILE` under its PREFECT_HOME
(`<data dir>/prefect/` for the demo) once the server answers, and removes it when it
stops. A job command without PREFECT_API_URL reads that file and uses the URL only if
`/health` answers within `HEALTH_TIMEOUT` seconds: a file a killed site left behind costs
one refused connection, never a hang.

Stdlib only (urllib, not httpx): this runs before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from powerwatch.core.files import write_text_atomically

SERVER_FILE = "api-url"
HEALTH_TIMEOUT = 1.0
API_ENV = "PREFECT_API_URL"


def site_home(data_dir: Path) -> Path:
    """The PREFECT_HOME `powerwatch demo` gives its server (`demo.run_demo`)."""
    return data_dir.resolve() / "prefect"


def publish(home: Path, api_url: str) -> None:
    """Announce a running server (atomically: a reader never sees half a URL)."""
    write_text_atomically(home / SERVER_FILE, api_url + "\n")


def withdraw(home: Path, api_url: str) -> None:
    """Remove the announcement, if it is still ours (another site may have replaced it)."""
    path = home / SERVER_FILE
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8").strip() == api_url:
            path.unlink()


def answers(api_url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, timed out, bad URL (URLError is an OSError)
        return False


def discover(data_dir: Path) -> str | None:
    """The API URL of a live server announced under the site's home, else None."""
    try:
        url = (site_home(data_dir) / SERVER_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return url if url.startswith("http") and answers(url) else None


def configure(data_dir: Path) -> str | None:
    """Point this process at a discovered server unless PREFECT_API_URL is set already.

    Returns the URL now used (None: none configured, none found)."""
    if os.environ.get(API_ENV):
        return os.environ[API_ENV]
    url = discover(data_dir)
    if url is not None:
        os.environ[API_ENV] = url
    return url
