"""NetBlock: blackhole routes for locked addresses, through netlink with pyroute2.

Routes are tagged with our own routing protocol number (``RTPROT_SLOTWARDEN``)
so the service can tell its routes from anyone else's and clean them up after
a restart. pyroute2 is imported lazily: it is only needed when
``guard.network_block = true``, and the PAM hot path never touches it.

For example (not a doctest: it needs root and changes the routing table)::

    nb = NetBlock()
    nb.block("198.51.100.9")   # adds the route "blackhole 198.51.100.9 proto 186"
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

RTPROT_SLOTWARDEN = 186

log = logging.getLogger("slotwarden.guard")


def _dst(net: str) -> tuple[int, str, int]:
    n = ipaddress.ip_network(net, strict=False)
    family = socket.AF_INET6 if n.version == 6 else socket.AF_INET
    return family, str(n.network_address), n.prefixlen


class NetBlock:
    """Adds and removes ``blackhole`` routes in the current network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]  # lazy: optional dependency

        self._ipr: Any = IPRoute()

    def block(self, net: str) -> None:
        """Add (or keep) a blackhole route for an address or /prefix network."""
        family, dst, plen = _dst(net)
        try:
            self._ipr.route("replace", family=family, dst=dst, dst_len=plen, type="blackhole",
                            proto=RTPROT_SLOTWARDEN)
            log.warning("network block added for %s", net)
        except Exception as exc:
            log.error("network block for %s failed: %s", net, exc)

    def unblock(self, net: str) -> None:
        """Remove our blackhole route for ``net`` if it is there."""
        family, dst, plen = _dst(net)
        try:
            self._ipr.route("del", family=family, dst=dst, dst_len=plen, type="blackhole",
                            proto=RTPROT_SLOTWARDEN)
            log.warning("network block removed for %s", net)
        except Exception as exc:
            log.info("network block for %s not removed: %s", net, exc)

    def ours(self) -> list[str]:
        """Networks that currently have one of our blackhole routes."""
        return _our_routes(self._ipr)

    def close(self) -> None:
        """Release the netlink socket."""
        self._ipr.close()


def routes_in(ns_name: str | None = None) -> list[str]:
    """Our blackhole routes, optionally inside a named network namespace (for tests)."""
    if ns_name is None:
        nb = NetBlock()
        try:
            return nb.ours()
        finally:
            nb.close()
    from pyroute2 import NetNS

    ns: Any = NetNS(ns_name)
    try:
        return _our_routes(ns)
    finally:
        ns.close()


def _our_routes(ipr: Any) -> list[str]:
    nets = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, proto=RTPROT_SLOTWARDEN):
            dst = r.get_attr("RTA_DST")
            if dst is not None:
                nets.append(str(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)))
    return nets
