"""The front door: nginx terminates TLS for the Hub and admits ``/apps/<slot>/<app>/`` per session.

``hub serve`` writes ``<state_dir>/hub/nginx.conf`` from :func:`nginx_conf` and runs nginx
(master as root to bind the port and read the key; workers as the Hub's user). nginx sends
Hub pages to the Hub's web process on a Unix socket only that user can open, with the client's
address in ``X-Real-IP`` (the web process believes it because nothing else can connect). For
an app URL nginx first asks the Hub (``auth_request``): the bridge admits it only for a live
session *of that slot*, checks that the app's listener is the slot's — a socket app's socket by
descriptor, hard-linked for nginx by root (:mod:`provisioner.apps.appsockets`), a TCP app's port
in the kernel's socket table; a symlink, a squatted socket or port is refused and audited, never
proxied — and names the upstream and the URI; the Hub's cookies are stripped before the request
reaches the app, whose own login stays.

>>> "auth_request /_frontdoor/auth;" in nginx_conf(HubConfig(), Path("/var/lib/sw/hub"), "hub", "hub")
True
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from provisioner.config import Config
from provisioner.hub.config import HubConfig, hub_config
from provisioner.listen import parse_listen

APP_PATH = re.compile(r"^/apps/([a-z][a-z0-9_-]{0,30})/([a-z][a-z0-9_-]{0,30})(/.*)?$")


def public_base(config: Config) -> str:
    """``https://HOST[:PORT]`` of the front door: ``[hub] public_url``, else this host's name and port."""
    hub = hub_config(config)
    if hub.public_url:
        return hub.public_url.rstrip("/")
    host, port = parse_listen(hub.listen)
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a value, not a bind
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"https://{host}" + ("" if port == 443 else f":{port}")


def parse_app_path(uri: str) -> tuple[str, str] | None:
    """(slot, app) of a front-door URI like ``/apps/alice/jupyterlab/lab?x``, or None."""
    path = uri.split("?", 1)[0]
    m = APP_PATH.match(path)
    return (m.group(1), m.group(2)) if m else None


def nginx_conf(hub: HubConfig, run_dir: Path, user: str, group: str) -> str:
    """The whole nginx configuration of the front door (nothing of the host's own nginx is used)."""
    host, port = parse_listen(hub.listen)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    tmp = run_dir / "nginx-tmp"
    return f"""# written by slotctl hub serve; changes are overwritten
worker_processes 2;
user {user} {group};
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_max_body_size 64m;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # The Hub's own cookies never reach an app.
    map $http_cookie $sw_app_cookie {{
        default $http_cookie;
        "~^(?<sw_a>.*?)(?:;\\s*)?__Host-sw_(?:session|pre)=[^;]*(?<sw_b>.*)$" "$sw_a$sw_b";
    }}
    map $http_upgrade $sw_connection {{ default upgrade; "" close; }}
    upstream slotwarden_hub {{ server unix:{hub.web_socket}; }}
    server {{
        listen {listen} ssl;
        ssl_certificate {hub.cert};
        ssl_certificate_key {hub.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://slotwarden_hub;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
        location = /_frontdoor/auth {{
            internal;
            proxy_pass http://slotwarden_hub/_frontdoor/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Real-IP $remote_addr;
        }}
        location @sw_login {{ return 303 /login; }}
        location ~ "^/apps/[a-z][a-z0-9_-]{{0,30}}/[a-z][a-z0-9_-]{{0,30}}/" {{
            auth_request /_frontdoor/auth;
            auth_request_set $sw_upstream $upstream_http_x_slotwarden_upstream;
            auth_request_set $sw_uri $upstream_http_x_slotwarden_uri;
            error_page 401 = @sw_login;
            # The Hub names the upstream (a checked socket link, or a checked port) and the URI:
            # the request's own for socket apps (they serve under the prefix), stripped for the rest.
            proxy_pass http://$sw_upstream$sw_uri;
            proxy_set_header Host $http_host;
            proxy_set_header Cookie $sw_app_cookie;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $sw_connection;
            proxy_http_version 1.1;
        }}
    }}
}}
"""


def write_conf(hub: HubConfig, run_dir: Path, user: str, group: str) -> Path:
    """Write the configuration (0644 root) and nginx's temp dirs; returns the file's path."""
    run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / "nginx-tmp" / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    import pwd
    import shutil

    pw = pwd.getpwnam(user)
    for d in [run_dir / "nginx-tmp", *(run_dir / "nginx-tmp").iterdir()]:
        shutil.chown(d, pw.pw_uid, pw.pw_gid)
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf(hub, run_dir, user, group))
    conf.chmod(0o644)
    return conf
