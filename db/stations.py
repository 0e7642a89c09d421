"""Applying the registry to the `stations` table: add and update, never delete."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update

from db.tables import stations
from powerwatch.core.errors import RegistryError
from schemas.registry import Station


@dataclass(frozen=True)
class SyncResult:
    added: int
    updated: int
    unchanged: int


def sync_stations(engine: Engine, registry: list[Station]) -> SyncResult:
    """Apply the whole registry in one transaction: nothing is half-applied.

    A station is matched by name; a uuid that already belongs to another
    station is refused (it would silently move a series between stations).
    """
    added = updated = unchanged = 0
    with engine.begin() as conn:
        existing = {row.name: row for row in conn.execute(select(stations))}
        owner_of_uuid = {row.uuid: row.name for row in existing.values()}
        for station in registry:
            owner = owner_of_uuid.get(station.uuid)
            if owner is not None and owner != station.name:
                raise RegistryError(
                    f"registry entry {station.name}: uuid {station.uuid} already belongs to "
                    f"station {owner} in the database"
                )
            values = {
                "uuid": station.uuid,
                "ip_address": station.ip_address,
                "scene": station.scene,
                "url": station.url,
                "meter_modulus": station.meter_modulus,
            }
            row = existing.get(station.name)
            if row is None:
                conn.execute(stations.insert().values(name=station.name, **values))
                added += 1
            elif any(getattr(row, key) != value for key, value in values.items()):
                conn.execute(
                    update(stations)
                    .where(stations.c.name == station.name)
                    .values(**values, updated_at=func.now())
                )
                updated += 1
            else:
                unchanged += 1
    return SyncResult(added, updated, unchanged)


__all__ = ["SyncResult", "sync_stations"]
