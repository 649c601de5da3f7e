"""No per-slot cgroup: CPU, RAM and I/O are summed over the slot's live processes (psutil).

A process that has exited no longer counts, so these are lower bounds; the output says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.metrics.kernel import CgroupFigures

if TYPE_CHECKING:
    from provisioner.metrics import MetricsConfig


class ProcessesOnly:
    """The fallback: no accounting unit, figures from the process table."""

    name = "processes"

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        """Any host: processes are counted from /proc."""
        return True

    def __init__(self, cfg: MetricsConfig) -> None:
        self.cfg = cfg

    def create(self, username: str, gid: int) -> None:
        """Nothing to create."""

    def remove(self, username: str) -> None:
        """Nothing to remove."""

    def spec(self, username: str, uid: int) -> dict[str, Any] | None:
        return None

    def adopt(self, username: str, uid: int, pids: Iterable[int]) -> None:
        """Nothing to move into."""

    def read(self, username: str, uid: int) -> CgroupFigures | None:
        return None
