"""The Hub's web application (Starlette on uvicorn): server-rendered pages, no JavaScript.

It runs as the Hub's own system user and holds nothing but what the bridge hands it: every
page asks the bridge (:mod:`provisioner.hub.bridge`) with the session token from the cookie.

- Cookies: ``__Host-sw_session`` (Secure, HttpOnly, SameSite=Strict, Path=/), and before login
  ``__Host-sw_pre``, the login form's double-submit CSRF token.
- Every POST carries a ``csrf`` field: the session's token (or the pre-login one); a POST
  without it, or with another, is refused with 403 and does nothing.
- Jinja2 autoescaping renders every string (typed usernames, app names, command lines) as data;
  a Content-Security-Policy without any script source backs that up.

>>> from pathlib import Path
>>> app = create_app(BridgeClient(Path("/nonexistent")))
>>> sorted(r.path for r in app.routes)[:3]
['/', '/_frontdoor/auth', '/activity']
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from provisioner.hub.client import BridgeClient, BridgeUnavailable

SESSION_COOKIE = "__Host-sw_session"
PRE_COOKIE = "__Host-sw_pre"
MAX_FORM = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: object) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def templates() -> Environment:
    """The Jinja2 environment: autoescaped, undefined names are errors."""
    from jinja2 import StrictUndefined

    env = Environment(loader=PackageLoader("provisioner.hub", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined)
    env.filters["when"] = _when
    env.filters["size"] = _size
    return env


class FormError(Exception):
    """A POST body the Hub does not accept."""


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (at most 16 KiB, 20 fields, one value each)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FormError("expected a form")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise FormError("form too large")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise FormError("malformed form") from None
    return {k: v[0] for k, v in parsed.items()}


def _same(a: object, b: object) -> bool:
    return isinstance(a, str) and isinstance(b, str) and len(a) >= 20 and hmac.compare_digest(a, b)


def create_app(client: BridgeClient, behind_front_door: bool = False) -> Starlette:
    """The Hub's routes over CLIENT (the bridge).

    BEHIND_FRONT_DOOR: the only peer is nginx (a Unix socket only it can open), so the client's
    address is its ``X-Real-IP`` header; otherwise the TCP peer's.
    """
    env = templates()

    def client_ip(request: Request) -> str:
        if behind_front_door:
            return request.headers.get("x-real-ip", "")
        return request.client.host if request.client else ""

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("me", None)
        values.setdefault("csrf", "")
        return HTMLResponse(env.get_template(name).render(**values), status_code=status, headers=SECURITY_HEADERS)

    async def bridge(op: str, **args: Any) -> dict[str, Any]:
        return await run_in_threadpool(client.call, op, **args)

    def to_login() -> Response:
        r = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        r.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return r

    Handler = Callable[[Request, dict[str, Any], str], Awaitable[Response]]

    def session_page(handler: Handler, role: str = "tenant") -> Callable[[Request], Awaitable[Response]]:
        """Resolve the cookie's session (of ROLE, or "any") through the bridge; POSTs must carry its CSRF token."""

        async def endpoint(request: Request) -> Response:
            token = request.cookies.get(SESSION_COOKIE, "")
            who = await bridge("whoami", token=token) if token else {"ok": False}
            if who.get("error") == "second factor needed":
                return RedirectResponse("/login/second-factor", status_code=303, headers=SECURITY_HEADERS)
            if not who.get("ok"):
                return to_login()
            if role != "any" and who["role"] != role:
                return RedirectResponse("/admin" if who["role"] == "staff" else "/overview", status_code=303)
            if request.method == "POST":
                try:
                    form = await read_form(request)
                except FormError:
                    form = {}  # no form, no token: refused like a wrong token
                if not _same(form.get("csrf"), who["csrf"]):
                    return page("error.html", 403, me=who, message="This form has expired; reload the page.")
                request.state.form = form
            return await handler(request, who, token)

        return endpoint

    async def robots(request: Request) -> Response:
        """A constant page (keeps crawlers off; the benchmark's static baseline on the same stack)."""
        return PlainTextResponse("User-agent: *\nDisallow: /\n", headers=SECURITY_HEADERS)

    async def home(request: Request) -> Response:
        return RedirectResponse("/overview" if request.cookies.get(SESSION_COOKIE) else "/login", status_code=303)

    async def login_form(request: Request, error: str | None = None, status: int = 200,
                         typed: str = "") -> Response:
        pre = secrets.token_urlsafe(32)
        r = page("login.html", status, csrf=pre, error=error, typed=typed)
        r.set_cookie(PRE_COOKIE, pre, path="/", secure=True, httponly=True, samesite="strict")
        return r

    async def login_get(request: Request) -> Response:
        return await login_form(request)

    async def login_post(request: Request) -> Response:
        try:
            form = await read_form(request)
        except FormError as exc:
            return page("error.html", 400, message=str(exc))
        if not _same(form.get("csrf"), request.cookies.get(PRE_COOKIE)):
            return page("error.html", 403, message="This form has expired; reload the page.")
        username, password = form.get("username", ""), form.get("password", "")
        reply = await bridge("login", username=username, password=password, address=client_ip(request),
                             agent=request.headers.get("user-agent", ""))
        outcome = reply.get("login") if reply.get("ok") else "refused"
        if outcome in ("ok", "second-factor"):
            # A fresh token made by the bridge: whatever session cookie came in is never kept.
            return with_session(reply)
        if outcome == "locked":
            return page("locked.html", 429, until=str(reply.get("until", "later")))
        if outcome == "suspended":
            return await login_form(request, "This slot is suspended; contact support.", 403)
        return await login_form(request, "Wrong username or password.", 401, typed=username)

    def with_session(reply: dict[str, Any]) -> Response:
        target = {"second-factor": "/login/second-factor"}.get(reply["login"]) or (
            "/admin" if reply.get("role") == "staff" else "/overview")
        r = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        r.set_cookie(SESSION_COOKIE, reply["token"], path="/", secure=True, httponly=True, samesite="strict")
        r.delete_cookie(PRE_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return r

    async def factor_get(request: Request, error: str | None = None, status: int = 200) -> Response:
        token = request.cookies.get(SESSION_COOKIE, "")
        pending = await bridge("pending", token=token) if token else {"ok": False}
        if not pending.get("ok"):
            return to_login()
        return page("second_factor.html", status, csrf=pending["csrf"], error=error)

    async def factor_post(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE, "")
        pending = await bridge("pending", token=token) if token else {"ok": False}
        if not pending.get("ok"):
            return to_login()
        try:
            form = await read_form(request)
        except FormError:
            form = {}
        if not _same(form.get("csrf"), pending["csrf"]):
            return page("error.html", 403, message="This form has expired; reload the page.")
        reply = await bridge("second_factor", token=token, code=form.get("code", ""))
        outcome = reply.get("login") if reply.get("ok") else "refused"
        if outcome == "ok":
            return with_session(reply)
        if outcome == "second-factor":
            return await factor_get(request, "That code is not valid.", 401)
        return to_login()

    async def security(request: Request, who: dict[str, Any], token: str) -> Response:
        status = await bridge("totp_status", token=token)
        return page("security.html", me=who, csrf=who["csrf"], totp=status, enrol=None, codes=None, error=None)

    async def totp_begin(request: Request, who: dict[str, Any], token: str) -> Response:
        from provisioner.hub.totp import qr_svg_data_uri

        reply = await bridge("totp_begin", token=token)
        if not reply.get("ok"):
            return page("error.html", 409, me=who, csrf=who["csrf"], message=reply.get("error", "refused"))
        enrol = {"secret": reply["secret"], "qr": qr_svg_data_uri(reply["uri"])}
        return page("security.html", me=who, csrf=who["csrf"], totp={"enabled": False}, enrol=enrol, codes=None,
                    error=None)

    async def totp_confirm(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("totp_confirm", token=token, code=request.state.form.get("code", ""))
        status = await bridge("totp_status", token=token)
        if not reply.get("ok"):
            return page("security.html", 400, me=who, csrf=who["csrf"], totp=status, enrol=None, codes=None,
                        error=reply.get("error"))
        return page("security.html", me=who, csrf=who["csrf"], totp=status, enrol=None,
                    codes=reply["recovery_codes"], error=None)

    async def totp_disable(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("totp_disable", token=token, code=request.state.form.get("code", ""))
        status = await bridge("totp_status", token=token)
        return page("security.html", 200 if reply.get("ok") else 400, me=who, csrf=who["csrf"], totp=status,
                    enrol=None, codes=None, error=None if reply.get("ok") else reply.get("error"))

    async def admin(request: Request, who: dict[str, Any], token: str, notice: str | None = None) -> Response:
        reply = await bridge("admin_overview", token=token)
        if not reply.get("ok"):
            return page("error.html", 503, me=who, csrf=who["csrf"], message=reply.get("error", "unavailable"))
        return page("admin.html", me=who, csrf=who["csrf"], slots=reply["slots"], locks=reply["locks"],
                    audit=reply["audit"], notice=notice)

    async def admin_lock(request: Request, who: dict[str, Any], token: str) -> Response:
        form = request.state.form
        reply = await bridge("admin_lock", token=token, action=form.get("action"), user=form.get("user") or None,
                             ip=form.get("ip") or None)
        notice = f"{form.get('action')}: done" if reply.get("ok") else f"refused: {reply.get('error')}"
        return await admin(request, who, token, notice)

    async def apps_page(request: Request, who: dict[str, Any], token: str, creds: dict[str, Any] | None = None,
                        notice: str | None = None, status: int = 200) -> Response:
        reply = await bridge("apps", token=token)
        if not reply.get("ok"):
            return page("error.html", 503, me=who, csrf=who["csrf"], message=reply.get("error", "unavailable"))
        return page("apps.html", status, me=who, csrf=who["csrf"], apps=reply["apps"],
                    installable=reply["installable"], creds=creds, notice=notice)

    def app_action(op: str, done: str) -> Handler:
        async def handler(request: Request, who: dict[str, Any], token: str) -> Response:
            name = request.path_params.get("app") or request.state.form.get("app", "")
            reply = await bridge(op, token=token, app=name)
            if not reply.get("ok"):
                return await apps_page(request, who, token, notice=f"refused: {reply.get('error')}", status=409)
            return await apps_page(request, who, token, creds=reply.get("credentials"), notice=f"{name}: {done}")

        return handler

    async def password_get(request: Request, who: dict[str, Any], token: str) -> Response:
        return page("password.html", me=who, csrf=who["csrf"], error=None, done=False)

    async def password_post(request: Request, who: dict[str, Any], token: str) -> Response:
        form = request.state.form
        if form.get("new", "") != form.get("repeat", ""):
            return page("password.html", 400, me=who, csrf=who["csrf"], error="The two new passwords differ.",
                        done=False)
        reply = await bridge("change_password", token=token, current=form.get("current", ""),
                             new=form.get("new", ""), address=client_ip(request))
        if not reply.get("ok"):
            return page("password.html", 400, me=who, csrf=who["csrf"], error=reply.get("error"), done=False)
        return page("password.html", me=who, csrf=who["csrf"], error=None, done=True)

    async def logout(request: Request, who: dict[str, Any], token: str) -> Response:
        await bridge("logout", token=token)
        return to_login()

    async def logout_all(request: Request, who: dict[str, Any], token: str) -> Response:
        await bridge("logout_all", token=token)
        return to_login()

    async def overview(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("overview", token=token)
        if not reply.get("ok"):
            return page("error.html", 503, me=who, csrf=who["csrf"], message=reply.get("error", "unavailable"))
        from provisioner.hub.history import charts

        tier = request.query_params.get("range", "24h")
        tier = tier if tier in ("24h", "30d") else "24h"
        return page("overview.html", me=who, csrf=who["csrf"], m=reply["metrics"], range=tier,
                    charts=charts(reply["history"][tier]))

    async def processes(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("overview", token=token)
        if not reply.get("ok"):
            return page("error.html", 503, me=who, csrf=who["csrf"], message=reply.get("error", "unavailable"))
        return page("processes.html", me=who, csrf=who["csrf"], processes=reply["processes"])

    async def sessions(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("sessions", token=token)
        return page("sessions.html", me=who, csrf=who["csrf"], sessions=reply.get("sessions", []))

    async def activity(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("activity", token=token)
        return page("activity.html", me=who, csrf=who["csrf"], logins=reply.get("logins", []), notice=None)

    async def not_me(request: Request, who: dict[str, Any], token: str) -> Response:
        raw = request.state.form.get("event", "")
        reply = await bridge("not_me", token=token, event=int(raw) if raw.isdigit() and len(raw) < 12 else -1)
        logins = (await bridge("activity", token=token)).get("logins", [])
        notice = ("Reported to the staff; your other sessions were logged out. Change your password now."
                  if reply.get("ok") else f"refused: {reply.get('error')}")
        return page("activity.html", 200 if reply.get("ok") else 400, me=who, csrf=who["csrf"], logins=logins,
                    notice=notice)

    async def support_page(request: Request, who: dict[str, Any], token: str, notice: str | None = None,
                           status: int = 200) -> Response:
        reply = await bridge("support", token=token)
        if not reply.get("ok"):
            return page("error.html", 503, me=who, csrf=who["csrf"], message=reply.get("error", "unavailable"))
        return page("support.html", status, me=who, csrf=who["csrf"], grants=reply["grants"],
                    notices=reply["notices"], notice=notice)

    async def support_answer(request: Request, who: dict[str, Any], token: str) -> Response:
        form = request.state.form
        raw, verb = form.get("grant", ""), form.get("verb", "")
        grant = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 12 else -1
        reply = await bridge("support_answer", token=token, grant=grant, verb=verb,
                             read_only=form.get("read_only") == "1")
        if not reply.get("ok"):
            return await support_page(request, who, token, notice=f"refused: {reply.get('error')}", status=409)
        g = reply["grant"]
        return await support_page(request, who, token, notice=f"request {g['id']}: {g['state']}")

    async def data_report(request: Request, who: dict[str, Any], token: str) -> Response:
        reply = await bridge("data_report", token=token)
        if not reply.get("ok"):
            return page("error.html", 503, me=who, csrf=who["csrf"], message=reply.get("error", "unavailable"))
        return Response(json.dumps(reply["report"], indent=2, sort_keys=True), media_type="application/json",
                        headers={**SECURITY_HEADERS,
                                 "Content-Disposition": 'attachment; filename="slotwarden-data-report.json"'})

    async def frontdoor_auth(request: Request) -> Response:
        """nginx's auth_request for /apps/<slot>/<app>/: 200 with the upstream, 401 no session, 403 refused."""
        from provisioner.hub.frontdoor import parse_app_path

        target = parse_app_path(request.headers.get("x-original-uri", ""))
        token = request.cookies.get(SESSION_COOKIE, "")
        if target is None:
            return Response(status_code=403)
        if not token:
            return Response(status_code=401)
        reply = await bridge("frontdoor", token=token, slot=target[0], app=target[1])
        if reply.get("ok"):
            uri = request.headers.get("x-original-uri", "")
            if reply.get("strip"):  # the app is served at / (a TCP app that cannot be told its prefix)
                uri = uri[len(f"/apps/{target[0]}/{target[1]}"):]
            return Response(status_code=200, headers={"X-Slotwarden-Upstream": reply["upstream"],
                                                      "X-Slotwarden-Uri": uri})
        return Response(status_code=401 if reply.get("error") == "no session" else 403)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return page("error.html", 503, message="The Hub's back end is not answering; try again shortly.")

    routes = [
        Route("/", home),
        Route("/robots.txt", robots, methods=["GET"]),
        Route("/_frontdoor/auth", frontdoor_auth, methods=["GET"]),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/login/second-factor", factor_get, methods=["GET"]),
        Route("/login/second-factor", factor_post, methods=["POST"]),
        Route("/logout", session_page(logout, "any"), methods=["POST"]),
        Route("/overview", session_page(overview)),
        Route("/processes", session_page(processes)),
        Route("/sessions", session_page(sessions, "any")),
        Route("/sessions/logout-all", session_page(logout_all, "any"), methods=["POST"]),
        Route("/apps", session_page(apps_page)),
        Route("/apps/install", session_page(app_action("app_install", "installed")), methods=["POST"]),
        Route("/apps/{app}/creds", session_page(app_action("app_creds", "credentials")), methods=["POST"]),
        Route("/apps/{app}/rotate", session_page(app_action("app_rotate", "new credentials")), methods=["POST"]),
        Route("/apps/{app}/uninstall", session_page(app_action("app_uninstall", "uninstalled")), methods=["POST"]),
        Route("/password", session_page(password_get), methods=["GET"]),
        Route("/password", session_page(password_post), methods=["POST"]),
        Route("/security", session_page(security)),
        Route("/security/totp/begin", session_page(totp_begin), methods=["POST"]),
        Route("/security/totp/confirm", session_page(totp_confirm), methods=["POST"]),
        Route("/security/totp/disable", session_page(totp_disable), methods=["POST"]),
        Route("/admin", session_page(admin, "staff")),
        Route("/admin/lock", session_page(admin_lock, "staff"), methods=["POST"]),
        Route("/activity", session_page(activity)),
        Route("/activity/not-me", session_page(not_me), methods=["POST"]),
        Route("/data-report.json", session_page(data_report)),
        Route("/support", session_page(support_page), methods=["GET"]),
        Route("/support/answer", session_page(support_answer), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={BridgeUnavailable: unavailable})


def app_from_environment() -> Starlette:  # pragma: no cover - uvicorn --factory entry for manual runs
    """``uvicorn --factory provisioner.hub.web:app_from_environment`` (bridge socket from the config)."""
    from provisioner.config import load_config
    from provisioner.hub.config import hub_config

    return create_app(BridgeClient(Path(hub_config(load_config()).bridge_socket)))
