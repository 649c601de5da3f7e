"""What every operation needs: the configuration, the store, and the host as ``host init`` set it up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from provisioner.config import Config, load_config
from provisioner.errors import SlotError
from provisioner.extensions import Extension, Extensions, load_extensions
from provisioner.quota import BACKENDS as QUOTA_BACKENDS
from provisioner.quota import QuotaBackend, load_backend
from provisioner.store import Store, open_store


@dataclass(frozen=True)
class HostSettings:
    """What ``host init`` recorded: where slots live and which quota backend caps them."""

    slots_root: Path
    quota_backend: str
    admin_group: str
    hidepid: bool


class Context:
    """Configuration + store, opened once per command (or per API request).

    EXTENSIONS: the extensions every operation runs (default: all of
    :data:`provisioner.extensions.EXTENSIONS`, loaded on first use); a test passes its own.
    QUOTA_BACKENDS is the map of quota backends this context picks from (tests pass one with a
    fake backend added; nothing else names a backend).
    """

    def __init__(self, config: Config | None = None, *, extensions: Iterable[Extension] | None = None,
                 quota_backends: Mapping[str, str] = QUOTA_BACKENDS) -> None:
        self.config = config or load_config()
        self.quota_backends = quota_backends
        if extensions is not None:
            self.__dict__["extensions"] = Extensions(tuple(extensions))

    @cached_property
    def extensions(self) -> Extensions:
        return load_extensions()

    @cached_property
    def store(self) -> Store:
        return open_store(self.config)

    @cached_property
    def settings(self) -> HostSettings:
        s = self.store.host_settings()
        if "slots_root" not in s:
            raise SlotError("this host is not initialised: run 'slotctl host init' first")
        return HostSettings(
            slots_root=Path(s["slots_root"]),
            quota_backend=s["quota_backend"],
            admin_group=s.get("admin_group", self.config.host.admin_group),
            hidepid=s.get("hidepid", "yes") == "yes",
        )

    @cached_property
    def quota(self) -> QuotaBackend:
        return load_backend(self.settings.quota_backend, self.settings.slots_root,
                            bytes_per_inode=self.config.slots.bytes_per_inode, backends=self.quota_backends)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
