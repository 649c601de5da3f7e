"""The API's fleet mode (``slotctl api serve --fleet``): the same routes, acting on the slot's host.

``POST /v1/slots`` without ``host`` places the slot by the rule of :mod:`provisioner.fleet.placement`
and answers with the host's own answer plus ``host`` and ``placement`` (the rule, every host's
figures and verdict). Every other slot route finds the slot's host by name in the controller's
store and sends the call there with the caller's ``Idempotency-Key`` (scoped to the caller's
token), answering with the host's status and body plus ``host``. A host that does not answer
gives 502 ``{"ok": false, "error", "host"}`` — for its own slots only. ``GET /v1/fleet`` is
``slotctl fleet status --json``; ``GET /v1/fleet/placement`` is ``slotctl fleet place --explain``.

Authentication, rate limiting and the audit are the API's own (the controller's tokens).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field, StrictInt, StrictStr

from provisioner.api.app import (
    ApiError,
    Auth,
    ChangePlan,
    CreateSlot,
    IdemKey,
    Suspend,
    Username,
    _field,
    _run,
    check_create,
)
from provisioner.config import Config
from provisioner.context import Context
from provisioner.fleet import controller
from provisioner.fleet.client import validate_host_name
from provisioner.fleet.inventory import NoRoom, UnknownHost


class FleetCreateSlot(CreateSlot):
    """A purchase, optionally for a given host (otherwise placed by the rule)."""

    host: str | None = Field(None, max_length=63, description="The fleet host; omitted: the one with most room.")


def _scoped(request: Request, key: str | None) -> str | None:
    """KEY as the host will see it: one controller token serves every caller, so prefix the caller's."""
    if key is None:
        return None
    scoped = f"{request.state.token_name}:{key}"
    return scoped if len(scoped) <= 200 else "sha256:" + hashlib.sha256(scoped.encode()).hexdigest()


def add_fleet_routes(app: FastAPI, config: Config) -> None:
    """Register the fleet-mode routes on APP (whose middleware and error handlers are the API's)."""

    def forward(request: Request, operation: str, username: str, method: str, path: str,
                body: dict[str, Any] | None, key: str | None) -> JSONResponse:
        return _run(config, request, operation, username, None, None,
                    lambda ctx: controller.forward(ctx, username, method, path, body, _scoped(request, key)))

    @app.get("/v1/fleet", summary="Hosts, slots, committed quota against disk, memory, load")
    def fleet_status(request: Request, _auth: Auth, slots: bool = False) -> JSONResponse:
        return _run(config, request, "fleet", None, None, None,
                    lambda ctx: (200, controller.status(ctx, with_slots=slots)))

    @app.get("/v1/fleet/placement", summary="Where a slot would be placed now, and why")
    def fleet_placement(request: Request, _auth: Auth,
                        quota: Annotated[StrictStr | StrictInt | None, Query(max_length=32)] = None,
                        plan: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            q = _field("quota", lambda: controller.quota_of(ctx, quota, plan))
            return 200, controller.explain(ctx, q).as_dict()

        return _run(config, request, "placement", None, None, None, work)

    @app.post("/v1/slots", status_code=201, summary="Create a slot on the host with most room (CreateAccount)")
    def create(request: Request, body: FleetCreateSlot, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            check_create(ctx, body)
            if body.host is not None:
                _field("host", lambda: validate_host_name(body.host))
            _field("quota", lambda: controller.quota_of(ctx, body.quota, body.plan))
            try:
                return controller.create(ctx, body.model_dump(exclude={"host"}), body.host,
                                         _scoped(request, idempotency_key))
            except NoRoom as exc:
                raise ApiError(409, str(exc), None) from None
            except UnknownHost as exc:
                raise ApiError(400, str(exc), "host") from None

        return _run(config, request, "create", body.username, None, None, work)

    @app.get("/v1/slots/{username}", summary="Show a slot (on its host)")
    def show(request: Request, username: Username, _auth: Auth) -> JSONResponse:
        _check_name(username)
        return forward(request, "show", username, "GET", f"/v1/slots/{username}", None, None)

    @app.get("/v1/slots/{username}/usage", summary="Disk used, quota (on its host)")
    def usage(request: Request, username: Username, _auth: Auth) -> JSONResponse:
        _check_name(username)
        return forward(request, "usage", username, "GET", f"/v1/slots/{username}/usage", None, None)

    @app.post("/v1/slots/{username}/suspend", summary="Suspend a slot (on its host)")
    def suspend(request: Request, username: Username, body: Suspend, _auth: Auth,
                idempotency_key: IdemKey = None) -> JSONResponse:
        _check_name(username)
        return forward(request, "suspend", username, "POST", f"/v1/slots/{username}/suspend", body.model_dump(),
                       idempotency_key)

    @app.post("/v1/slots/{username}/unsuspend", summary="Unsuspend a slot (on its host)")
    def unsuspend(request: Request, username: Username, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        _check_name(username)
        return forward(request, "unsuspend", username, "POST", f"/v1/slots/{username}/unsuspend", None,
                       idempotency_key)

    @app.post("/v1/slots/{username}/password", summary="A new slot password, shown once (on its host)")
    def password(request: Request, username: Username, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        _check_name(username)
        return forward(request, "password", username, "POST", f"/v1/slots/{username}/password", None,
                       idempotency_key)

    @app.post("/v1/slots/{username}/plan", summary="Change the plan (on its host)")
    def change_plan(request: Request, username: Username, body: ChangePlan, _auth: Auth,
                    idempotency_key: IdemKey = None) -> JSONResponse:
        _check_name(username)
        return forward(request, "change_plan", username, "POST", f"/v1/slots/{username}/plan", body.model_dump(),
                       idempotency_key)

    @app.delete("/v1/slots/{username}", summary="Terminate a slot (on its host)")
    def terminate(request: Request, username: Username, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        _check_name(username)
        return forward(request, "terminate", username, "DELETE", f"/v1/slots/{username}", None, idempotency_key)


def _check_name(username: str) -> None:
    """A path's username must be a slot name before it is put into the host's URL."""
    from provisioner.names import validate_username

    _field("username", lambda: validate_username(username))
