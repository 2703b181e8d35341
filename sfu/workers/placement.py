"""Which worker holds which room (no I/O).

A room lives on one worker. The first join places it on the live worker with the
fewest participants (then the fewest rooms); every later join of the room goes there.
A room whose participants have all gone keeps its worker for ``idle_s`` (a participant
whose WebSocket dropped may still resume there, and the room lives on in the worker
meanwhile), and for ever while it is kept (created by the admin API). A worker that
dies takes its rooms with it: they are placed afresh on the next join.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Room:
    worker: int
    connections: int = 0
    kept: bool = False
    idle_since: float | None = None


class Placement:
    def __init__(self, idle_s: float) -> None:
        self.live: set[int] = set()  # workers up (worker_up), not lost since
        self.idle_s = idle_s
        self._rooms: dict[str, _Room] = {}

    def worker_of(self, room: str, now: float) -> int | None:
        self._forget_idle(now)
        placed = self._rooms.get(room)
        return None if placed is None else placed.worker

    def place(self, room: str, now: float) -> int:
        """The room's worker, placing it first if it has none. Raises LookupError when
        no worker is live."""
        worker = self.worker_of(room, now)
        if worker is not None:
            return worker
        if not self.live:
            raise LookupError("no live worker")
        load = self.load()
        worker = min(sorted(self.live), key=lambda w: load[w])
        self._rooms[room] = _Room(worker, idle_since=now)
        return worker

    def load(self) -> dict[int, tuple[int, int]]:
        """Per live worker: (connections, rooms)."""
        load = {w: (0, 0) for w in self.live}
        for placed in self._rooms.values():
            connections, rooms = load[placed.worker]
            load[placed.worker] = (connections + placed.connections, rooms + 1)
        return load

    def occupancy(self) -> dict[str, int]:
        """Every placed room's relayed connections (its participants here)."""
        return {name: placed.connections for name, placed in self._rooms.items()}

    def rooms(self, worker: int) -> list[str]:
        return sorted(name for name, placed in self._rooms.items() if placed.worker == worker)

    def connected(self, room: str) -> None:
        placed = self._rooms[room]
        placed.connections += 1
        placed.idle_since = None

    def disconnected(self, room: str, now: float) -> None:
        placed = self._rooms.get(room)
        if placed is None:  # its worker was lost meanwhile
            return
        placed.connections -= 1
        if placed.connections == 0:
            placed.idle_since = now

    def keep(self, room: str, kept: bool, now: float) -> None:
        """An admin-created room stays placed until it is closed."""
        placed = self._rooms.get(room)
        if placed is not None:
            placed.kept = kept
            if not kept and placed.connections == 0:
                placed.idle_since = now

    def worker_lost(self, worker: int) -> list[str]:
        """Forget the worker and its rooms (returned) until ``worker_up``."""
        self.live.discard(worker)
        lost = self.rooms(worker)
        for name in lost:
            del self._rooms[name]
        return lost

    def worker_up(self, worker: int) -> None:
        self.live.add(worker)

    def _forget_idle(self, now: float) -> None:
        stale = [name for name, placed in self._rooms.items()
                 if not placed.kept and placed.idle_since is not None
                 and now - placed.idle_since > self.idle_s]
        for name in stale:
            del self._rooms[name]
