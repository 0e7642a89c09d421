"""The station registry (YAML), validated as a whole before anything is applied."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from powerwatch.core.errors import RegistryError
from powerwatch.core.files import write_text_atomically
from schemas.names import STATION_NAME_PATTERN

_NAME = re.compile(STATION_NAME_PATTERN)


@dataclass(frozen=True)
class Station:
    name: str
    uuid: str
    ip_address: str
    scene: str
    url: str
    # Optional key: the value at which this station's kWh registers wrap to 0 (e.g.
    # 1000000 for a 999,999.99 display). Without it a backwards meter is never a wrap.
    meter_modulus: float | None = None


def load_registry(path: Path) -> list[Station]:
    """Parse and check every entry; raise `RegistryError` naming the first bad entry."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"registry {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RegistryError(f"registry {path} is not readable YAML: {reason}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("stations"), list):
        raise RegistryError(f"registry {path} must be a mapping with a 'stations' list")
    result: list[Station] = []
    names: set[str] = set()
    uuids: set[str] = set()
    for position, entry in enumerate(document["stations"], start=1):
        station = _station(entry, position)
        where = f"registry entry {position} ({station.name})"
        if station.name in names:
            raise RegistryError(f"{where}: duplicate name")
        if station.uuid in uuids:
            raise RegistryError(f"{where}: duplicate uuid {station.uuid}")
        names.add(station.name)
        uuids.add(station.uuid)
        result.append(station)
    return result


def _station(entry: Any, position: int) -> Station:
    if not isinstance(entry, dict):
        raise RegistryError(f"registry entry {position}: must be a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"registry entry {position}: bad name {name!r} (1-64 letters, digits, '-', '_', '.')"
        )
    where = f"registry entry {position} ({name})"
    raw_uuid = entry.get("uuid")
    try:
        station_uuid = str(uuidlib.UUID(str(raw_uuid)))
    except ValueError as exc:
        raise RegistryError(f"{where}: bad uuid {raw_uuid!r}") from exc
    ip_address = entry.get("ip_address")
    if not isinstance(ip_address, str) or not ip_address:
        raise RegistryError(f"{where}: ip_address is required")
    url = entry.get("url") or f"ws://{ip_address}:8765/"
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise RegistryError(f"{where}: bad URL scheme in {url!r} (only ws:// and wss://)")
    _check_url(url, where)
    scene = entry.get("scene") or ""
    modulus = entry.get("meter_modulus")
    if modulus is not None and (
        isinstance(modulus, bool) or not isinstance(modulus, int | float) or modulus <= 0
    ):
        raise RegistryError(f"{where}: meter_modulus must be a positive number, not {modulus!r}")
    return Station(
        name,
        station_uuid,
        ip_address,
        str(scene),
        url,
        None if modulus is None else float(modulus),
    )


def _check_url(url: str, where: str) -> None:
    """A URL the capture can connect to: a host, a valid port, no blanks or control
    characters (websockets would fail on it at every reconnect, for the whole run)."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise RegistryError(f"{where}: URL {url!r} contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise RegistryError(f"{where}: bad URL {url!r}: {exc}") from exc
    if not parts.hostname:
        raise RegistryError(f"{where}: URL {url!r} has no host")


def write_registry(path: Path, stations: list[Station]) -> None:
    """Write a registry file (used by the simulator and tests), atomically."""
    document = {
        "stations": [
            {k: v for k, v in s.__dict__.items() if v is not None or k != "meter_modulus"}
            for s in stations
        ]
    }
    write_text_atomically(path, yaml.safe_dump(document, sort_keys=False))
