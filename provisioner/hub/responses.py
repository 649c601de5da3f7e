"""The Hub's responses counted for the team's alerts: statuses tallied in the web process, summed by the bridge.

The web process cannot write the audit (it is not root); it tallies the status of every
response it sends (:func:`counted`, an ASGI wrapper outside Starlette's error handler, so an
unhandled exception counts as the 500 it becomes) and hands the tally to the bridge every
``[hub] responses_every`` seconds (:func:`report_every`). The bridge writes at most one
``hub.responses`` audit row per half window with a ``statuses`` map, which ``slotctl metrics
serve`` turns into ``slotwarden_http_responses_total{service="hub",code="5xx"}``. A tally the
bridge did not take (it was down) is kept and sent with the next one.

>>> t = ResponseTally()
>>> t.count(200); t.count(503); t.count(200)
>>> t.take()
{'200': 2, '503': 1}
>>> t.take()
{}
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from provisioner.hub.client import BridgeClient, BridgeUnavailable

log = logging.getLogger("slotwarden.hub.responses")
ASGIApp = Any


class ResponseTally:
    """Response statuses since the last :meth:`take` (thread-safe)."""

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def count(self, status: int) -> None:
        with self._lock:
            self._counts[status if 100 <= status <= 599 else 500] += 1

    def take(self) -> dict[str, int]:
        """The counts so far (status as text -> count), and start again from zero."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return {str(k): v for k, v in sorted(counts.items())}

    def give_back(self, counts: dict[str, int]) -> None:
        """Put back counts that could not be delivered."""
        with self._lock:
            for k, v in counts.items():
                self._counts[int(k)] += v


def counted(app: ASGIApp, tally: ResponseTally) -> ASGIApp:
    """APP with every HTTP response's status counted in TALLY (500 when it raised before answering)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        seen: list[int] = []

        async def send_counted(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start" and not seen:
                seen.append(int(message.get("status", 500)))
            await send(message)

        try:
            await app(scope, receive, send_counted)
        finally:
            tally.count(seen[0] if seen else 500)

    return wrapped


def report(client: BridgeClient, tally: ResponseTally) -> bool:
    """Hand the tally to the bridge once; True when it took it."""
    counts = tally.take()
    if not counts:
        return True
    try:
        reply = client.call("responses", statuses=counts)
    except BridgeUnavailable as exc:
        tally.give_back(counts)
        log.warning("response counts not delivered: %s", exc)
        return False
    if not reply.get("ok"):
        log.warning("the bridge refused the response counts: %s", reply.get("error"))
        return False
    return True


def report_every(client: BridgeClient, tally: ResponseTally, seconds: float) -> threading.Thread:
    """A daemon thread calling :func:`report` every SECONDS."""

    def loop() -> None:
        while True:
            time.sleep(seconds)
            try:
                report(client, tally)
            except Exception as exc:  # the counts must never stop the Hub
                log.warning("response counts: %s", exc)

    t = threading.Thread(target=loop, name="hub-responses", daemon=True)
    t.start()
    return t
