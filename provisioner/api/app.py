"""The provisioning API application (FastAPI): routes, authentication, audit, errors.

Every route calls the operations the CLI calls (:mod:`provisioner.operations`), in a
worker thread with its own store connection. Around every request, a middleware checks the
bearer token (401 otherwise, before anything else is looked at) and writes one audit entry:
token name, operation, slot, status. Errors are JSON ``{"ok": false, "error", "field"}``:
400 bad value, 401 no valid token, 404 no such slot, 409 the system refused (exists, too much
data for the plan...), 422 malformed request — and a 4xx changes nothing.

>>> from provisioner.config import ApiSettings, Config
>>> app = create_app(Config())
>>> sorted(r.path for r in app.routes if r.path.startswith("/v1/slots"))[:2]
['/v1/slots', '/v1/slots/{username}']
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from provisioner import operations, slots, suspension
from provisioner.api import idempotency
from provisioner.api.ratelimit import AnonymousAudit, SourceLimiter
from provisioner.api.tokens import ApiTokens
from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import BadInput, CommandFailed, SlotError, StepFailed
from provisioner.names import parse_size, validate_country, validate_email, validate_payment_ref, validate_username
from provisioner.plans import get_plan, list_plans, plan_as_dict
from provisioner.store import Store, open_store

log = logging.getLogger("slotwarden.api")
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/healthz"})
USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{0,30}$"

bearer = HTTPBearer(auto_error=False, description="A token made by `slotctl api token create NAME`.")
Auth = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=idempotency.MAX_KEY,
                                       description="Retries with the same key return the first result.")]
Username = Annotated[str, PathParam(max_length=64, description="The slot's username.")]


class ApiError(Exception):
    """A refusal with an HTTP status and the request field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


# --- request bodies ------------------------------------------------------------------------------


class CreateSlot(BaseModel):
    """A purchase: the slot to create."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=64, description="Linux user name: a-z first, then a-z 0-9 _ -, 1-31.")
    email: str = Field(max_length=254)
    country: str = Field(max_length=8, description="ISO 3166-1 alpha-2 code (for tax).")
    plan: str | None = Field(None, max_length=64, description="A configured plan (GET /v1/plans).")
    quota: StrictStr | StrictInt | None = Field(None, description="Disk quota in bytes or like 5G; "
                                                "overrides the plan's.")
    payment_ref: str | None = Field(None, max_length=128, description="PayPal / Coinbase reference.")


class Suspend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=suspension.MAX_REASON)


class ChangePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: str = Field(min_length=1, max_length=64)


# --- errors ----------------------------------------------------------------------------------------

# The first word of a validator's message names the field it is about.
_FIELD_WORDS = {"username": "username", "email": "email", "country": "country", "size": "quota",
                "plan": "plan", "reason": "reason", "payment": "payment_ref"}


def _error(status: int, message: str, field: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"ok": False, "error": " ".join(message.split()), "field": field},
                        status_code=status, headers=headers)


def _slot_error(exc: SlotError) -> JSONResponse:
    if isinstance(exc, StepFailed) and isinstance(exc.cause, SlotError) and not isinstance(exc.cause, CommandFailed):
        return _slot_error(exc.cause)  # a refusal inside a step, everything undone
    message = str(exc)
    if isinstance(exc, BadInput):
        return _error(400, message, _FIELD_WORDS.get(message.split(" ", 1)[0]))
    if message.startswith("no slot named"):
        return _error(404, message, "username")
    if isinstance(exc, StepFailed | CommandFailed):
        log.error("operation failed: %s", message)
        return _error(500, message, None)
    return _error(409, message, None)


def _field(name: str, check: Callable[[], Any]) -> Any:
    """Run a validator; its BadInput becomes a 400 naming NAME."""
    try:
        return check()
    except BadInput as exc:
        raise ApiError(400, str(exc), name) from None


# --- the per-request work, in a worker thread ---------------------------------------------------


def _existing(ctx: Context, username: str) -> None:
    _field("username", lambda: validate_username(username))
    rec = ctx.store.get_slot(username)
    if rec is None or rec.state in {"creating", "removing"}:
        raise ApiError(404, f"no slot named {username!r}", "username")


Work = Callable[[Context], tuple[int, dict[str, Any]]]


def _run(config: Config, request: Request, operation: str, slot: str | None, key: str | None,
         body: object, work: Work) -> JSONResponse:
    """Do WORK with a fresh context; with KEY, at most once per key (see :mod:`.idempotency`)."""
    request.state.operation = operation
    request.state.slot = slot
    token_name: str = request.state.token_name
    ctx = _RequestContext(config)
    keys = idempotency.IdempotencyKeys(ctx.store)
    try:
        if key is not None:
            if not idempotency.valid_key(key):
                raise ApiError(400, "Idempotency-Key must be 1-200 printable ASCII characters", "Idempotency-Key")
            try:
                replay = keys.begin(token_name, key, idempotency.fingerprint(request.method, request.url.path, body))
            except idempotency.KeyConflict as exc:
                raise ApiError(exc.status, str(exc), "Idempotency-Key") from None
            if replay is not None:
                request.state.replayed = True
                return JSONResponse({**replay.body, "replayed": True}, status_code=replay.status,
                                    headers={"Idempotent-Replayed": "true"})
        try:
            status, out = work(ctx)
        except BaseException:
            if key is not None:
                keys.abandon(token_name, key)
            raise
        if key is not None:
            keys.finish(token_name, key, status, out)
        return JSONResponse(out, status_code=status)
    finally:
        ctx.close()


def _route_name(app: FastAPI, scope: Any) -> str:
    """The name of the route SCOPE matches (for the audit of requests refused before routing)."""
    for route in app.router.routes:
        match, _child = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "name", "unknown"))
    return "unknown"


def _actor(request: Request) -> str:
    return f"api:{request.state.token_name}"


# One store connection per worker thread, kept for the server's life: SQLite connections are
# bound to their thread, and opening one per request (schema check, WAL pragma) was a third of
# the cost of a read.
_local = threading.local()


def _thread_store(config: Config) -> Store:
    stores: dict[Path, Store] = _local.__dict__.setdefault("stores", {})
    store = stores.get(config.db_path)
    if store is None:
        store = stores[config.db_path] = open_store(config)
    return store


class _RequestContext(Context):
    """A Context on the worker thread's store (closing it leaves the store open)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.__dict__["store"] = _thread_store(config)

    def close(self) -> None:
        self.store.db.rollback()  # a failure mid-transaction must not leak into the next request


def _authenticate(config: Config, header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return ApiTokens(_thread_store(config)).verify(token.strip())


def _audit(config: Config, actor: str, action: str, slot: str | None, detail: dict[str, Any]) -> None:
    _thread_store(config).audit(actor, action, slot, detail)


# --- the application -------------------------------------------------------------------------------


def check_create(ctx: Context, body: CreateSlot) -> None:
    """Refuse a purchase with a bad field (400 naming it) before anything is done."""
    _field("username", lambda: validate_username(body.username, slots.reserved_names(ctx)))
    _field("email", lambda: validate_email(body.email))
    _field("country", lambda: validate_country(body.country))
    if body.plan is not None:
        _field("plan", lambda: get_plan(ctx.config, body.plan))
    if body.quota is not None:
        _field("quota", lambda: parse_size(body.quota))
    if body.payment_ref is not None:
        _field("payment_ref", lambda: validate_payment_ref(body.payment_ref))


def create_app(config: Config, *, fleet: bool = False) -> FastAPI:
    """The API for the host described by CONFIG (its store holds the tokens and the slots).

    With FLEET, the same API for a fleet controller: the slot routes act on the slot's host
    (:mod:`provisioner.api.fleet`), and CONFIG's store holds the fleet's tables.
    """
    settings = config.api
    limiter = SourceLimiter(settings.anonymous_rate, settings.anonymous_burst,
                            global_rate=settings.anonymous_global_rate,
                            global_burst=max(settings.anonymous_burst, int(settings.anonymous_global_rate * 10)))
    anonymous = AnonymousAudit(lambda row: _audit(config, "api:anonymous", "api.unauthenticated", None, row),
                               window=settings.audit_window)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(anonymous.flush)

    app = FastAPI(
        title="slotwarden provisioning API",
        version="1",
        description="Create, suspend, unsuspend, terminate slots, change their password and plan, read "
                    "their usage. Bearer tokens from `slotctl api token create`; `Idempotency-Key` on "
                    "every change.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def authenticate_and_audit(request: Request,
                                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        path = request.url.path
        token_name: str | None = None
        source = request.client.host if request.client else None
        if path in PUBLIC_PATHS:
            response = await call_next(request)
        else:
            token_name = await run_in_threadpool(_authenticate, config, request.headers.get("authorization"))
            if token_name is None:
                allowed, wait = limiter.take(source or "")
                if allowed:
                    response = _error(401, "a valid bearer token is required", "Authorization",
                                      {"WWW-Authenticate": "Bearer"})
                else:
                    response = _error(429, "too many requests without a valid token; retry later", None,
                                      {"Retry-After": str(max(1, round(wait)))})
            else:
                request.state.token_name = token_name
                response = await call_next(request)
        if token_name is None:
            # Without a token nothing is written per request: one summary row per window.
            await run_in_threadpool(anonymous.record, source or "", path, response.status_code)
            return response
        state = request.state
        operation = getattr(state, "operation", None) or _route_name(app, request.scope)
        slot = getattr(state, "slot", None) or request.scope.get("path_params", {}).get("username")
        detail: dict[str, Any] = {"method": request.method, "path": path[:200], "status": response.status_code,
                                  "ms": round((time.monotonic() - started) * 1000, 1)}
        if request.headers.get("idempotency-key"):
            detail["idempotency_key"] = request.headers["idempotency-key"][:200]
        if getattr(state, "replayed", False):
            detail["replayed"] = True
        slot_name = slot if isinstance(slot, str) and len(slot) <= 64 else None
        await run_in_threadpool(_audit, config, f"api:{token_name}", f"api.{operation}", slot_name, detail)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.field)

    @app.exception_handler(SlotError)
    async def slot_error(request: Request, exc: SlotError) -> JSONResponse:
        return _slot_error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        where = loc[0] if loc else "body"
        # loc is (where, field, [union member...]); a JSON syntax error has a character offset.
        field = loc[1] if len(loc) > 1 and not loc[1].isdigit() else where
        if where == "header":
            field = "Idempotency-Key" if field.lower() == "idempotency-key" else field
        return _error(422, f"{field}: {first.get('msg', 'invalid')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, "internal error (see the server log)", None)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/plans", summary="List the plans")
    def plans(request: Request, _auth: Auth) -> JSONResponse:
        return _run(config, request, "plans", None, None, None,
                    lambda ctx: (200, {"plans": [plan_as_dict(p) for p in list_plans(ctx.config)]}))

    if fleet:
        from provisioner.api.fleet import add_fleet_routes

        add_fleet_routes(app, config)
        return app

    @app.get("/v1/host", summary="This host's facts and slots (for a fleet controller)")
    def host_facts(request: Request, _auth: Auth) -> JSONResponse:
        from provisioner.fleet.facts import gather

        return _run(config, request, "host", None, None, None, lambda ctx: (200, gather(ctx).as_dict()))

    @app.post("/v1/slots", status_code=201, summary="Create a slot (CreateAccount)")
    def create(request: Request, body: CreateSlot, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            check_create(ctx, body)
            try:
                out = operations.create_slot(ctx, body.username, body.email, body.country, plan=body.plan,
                                       quota=body.quota, payment_ref=body.payment_ref)
            except BadInput as exc:
                raise ApiError(400, str(exc), _FIELD_WORDS.get(str(exc).split(" ", 1)[0], "quota")) from None
            assert isinstance(out, slots.Created)
            return 201, {**out.as_dict(), "plan": body.plan}

        return _run(config, request, "create", body.username, idempotency_key, body.model_dump(), work)

    @app.get("/v1/slots/{username}", summary="Show a slot")
    def show(request: Request, username: Username, _auth: Auth) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            return 200, operations.slot_status(ctx, username)

        return _run(config, request, "show", username, None, None, work)

    @app.get("/v1/slots/{username}/usage", summary="Disk used, quota, bandwidth (UsageUpdate)")
    def usage(request: Request, username: Username, _auth: Auth) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            st = operations.slot_status(ctx, username)
            return 200, {"username": username, "state": st["state"], "plan": st["plan"],
                         "used_bytes": st["used_bytes"], "quota_bytes": st["quota_bytes"],
                         "enforced_limit_bytes": st["enforced_limit_bytes"], "bandwidth_bytes": None}

        return _run(config, request, "usage", username, None, None, work)

    @app.post("/v1/slots/{username}/suspend", summary="Suspend a slot (SuspendAccount)")
    def suspend(request: Request, username: Username, body: Suspend, _auth: Auth,
                idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            reason = _field("reason", lambda: suspension.validate_reason(body.reason))
            plan = operations.suspend(ctx, username, reason, actor=_actor(request))
            return 200, {"username": username, "state": "suspended", "changed": bool(plan.steps)}

        return _run(config, request, "suspend", username, idempotency_key, body.model_dump(), work)

    @app.post("/v1/slots/{username}/unsuspend", summary="Unsuspend a slot (UnsuspendAccount)")
    def unsuspend(request: Request, username: Username, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            plan = operations.unsuspend(ctx, username, actor=_actor(request))
            return 200, {"username": username, "state": "active", "changed": bool(plan.steps)}

        return _run(config, request, "unsuspend", username, idempotency_key, None, work)

    @app.post("/v1/slots/{username}/password", summary="A new slot password, shown once (ChangePassword)")
    def password(request: Request, username: Username, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            return 200, {"username": username, "password": operations.change_password(ctx, username)}

        return _run(config, request, "password", username, idempotency_key, None, work)

    @app.post("/v1/slots/{username}/plan", summary="Change the plan (ChangePackage)")
    def change_plan(request: Request, username: Username, body: ChangePlan, _auth: Auth,
                    idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            new = _field("plan", lambda: get_plan(ctx.config, body.plan))
            plan = operations.change_plan(ctx, username, new.name, actor=_actor(request))
            return 200, {"username": username, "plan": new.name, "quota_bytes": new.quota,
                         "changed": bool(plan.steps)}

        return _run(config, request, "change_plan", username, idempotency_key, body.model_dump(), work)

    @app.delete("/v1/slots/{username}", summary="Terminate a slot (TerminateAccount)")
    def terminate(request: Request, username: Username, _auth: Auth, idempotency_key: IdemKey = None) -> JSONResponse:
        def work(ctx: Context) -> tuple[int, dict[str, Any]]:
            _existing(ctx, username)
            operations.remove_slot(ctx, username)
            return 200, {"username": username, "removed": True}

        return _run(config, request, "terminate", username, idempotency_key, None, work)

    return app
