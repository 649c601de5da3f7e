"""WordPress: Debian's ``wordpress`` package, a MariaDB database and user per slot, an admin account.

Per slot, under ``~/apps/wordpress``: ``wp-config.php`` (0600: the database password and the
salts), ``wp-content/`` (uploads; themes and plugins link to Debian's), a PHP-FPM master and
pool running as the slot user (``php-fpm.conf``, socket in ``run/``), and an nginx running as
the slot user on the slot's private Unix socket (:mod:`provisioner.apps.appsockets`; no TCP
port) that serves Debian's ``/usr/share/wordpress`` and passes PHP to that pool. WordPress's
address (``WP_HOME``, ``WP_SITEURL``) is its front-door URL, ``https://HOST/apps/<slot>/wordpress``:
nginx takes the prefix off to find files, PHP sees the full ``REQUEST_URI`` and ``HTTPS=on``.
Debian's ``wp-config.php`` picks the site's config by the ``WORDPRESS_CONFIG``
FastCGI parameter: ``/etc/wordpress/config-sw-<hex of username>.php`` is a root-made link to
the slot's own file. WordPress's install and password changes run through ``wordpress.php``
with the php CLI as the slot user (:func:`~provisioner.as_tenant.run_as_tenant`: its own
session, no terminal, no inherited descriptor), secrets on stdin, and a minimal bootstrap that
loads neither the slot's ``wp-config.php`` nor its ``wp-content`` (plugins, themes, mu-plugins,
drop-ins): the tenant's code never runs in an operator's command.

The database server is the host's MariaDB (``[apps.wordpress] mysql_socket``), administered as
root over its unix socket (``unix_socket`` authentication: no admin password anywhere).

Log in: ``https://HOST/apps/<slot>/wordpress/wp-login.php`` with the slot's username.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import urllib.parse
from pathlib import Path

from provisioner.apps import App, AppSettings, Installation, frontdoor_url
from provisioner.apps.appsockets import install_step, teardown
from provisioner.as_tenant import TenantAccount, run_as_tenant
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.runner import run
from provisioner.steps import Step
from provisioner.supervisor import Program, SupervisorBackend

WP_ROOT = Path("/usr/share/wordpress")
CONFIG_DIR = Path("/etc/wordpress")
PHP = "/usr/bin/php"
PHP_FPM = "/usr/sbin/php-fpm8.2"
NGINX = "/usr/sbin/nginx"
MARIADB = "/usr/bin/mariadb"
SCRIPT = Path(__file__).with_name("wordpress.php")
SALTS = ("AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY", "AUTH_SALT", "SECURE_AUTH_SALT",
         "LOGGED_IN_SALT", "NONCE_SALT")


def config_name(username: str) -> str:
    """The WORDPRESS_CONFIG name: Debian allows only [a-zA-Z0-9-], usernames may hold ``_``."""
    return "sw-" + username.encode().hex()


def db_name(username: str) -> str:
    return f"wp_{username}"


def _php(value: str) -> str:
    """A single-quoted PHP string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def site_url(inst: Installation) -> str:
    """WordPress's address: its front-door URL, without the trailing slash WordPress adds itself."""
    return frontdoor_url(inst).rstrip("/")


def wp_config(inst: Installation, db_password: str, socket: str, salts: dict[str, str]) -> str:
    """The slot's wp-config.php (pure; tested as data)."""
    url = site_url(inst)
    consts = {
        "DB_NAME": db_name(inst.username),
        "DB_USER": db_name(inst.username),
        "DB_PASSWORD": db_password,
        "DB_HOST": f"localhost:{socket}",
        "DB_CHARSET": "utf8mb4",
        "WP_CONTENT_DIR": str(inst.app_dir / "wp-content"),
        "WP_CONTENT_URL": f"{url}/wp-content",
        "WP_HOME": url,
        "WP_SITEURL": url,
        **salts,
    }
    lines = ["<?php", "/* written by slotwarden; 0600, owned by the slot user */"]
    lines += [f"define({_php(k)}, {_php(v)});" for k, v in consts.items()]
    lines += ["define('DISALLOW_FILE_MODS', true);", "define('AUTOMATIC_UPDATER_DISABLED', true);",
              "$table_prefix = 'wp_';", ""]
    return "\n".join(lines)


def fpm_config(inst: Installation) -> str:
    d = inst.app_dir
    return "\n".join([
        "[global]", f"pid = {d}/run/php-fpm.pid", f"error_log = {d}/logs/php-fpm.log", "daemonize = no", "",
        "[www]", f"listen = {d}/run/php-fpm.sock", "listen.mode = 0600",
        # ondemand: no idle PHP children, so an idle site costs only the master's memory.
        "pm = ondemand", "pm.max_children = 4", "pm.process_idle_timeout = 30s",
        "clear_env = yes", f"env[TMPDIR] = {d}/tmp",
        f"php_admin_value[error_log] = {d}/logs/php-error.log", "php_admin_flag[log_errors] = on",
        f"php_admin_value[session.save_path] = {d}/tmp", f"php_admin_value[upload_tmp_dir] = {d}/tmp", "",
    ])


def nginx_config(inst: Installation) -> str:
    d = inst.app_dir
    temp = "\n".join(f"    {k}_temp_path {d}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    prefix = f"/apps/{inst.username}/{inst.app}"
    return f"""# written by slotwarden: nginx as the slot user, WordPress on {inst.socket}
daemon off;
# One process, no master: killed, it leaves no orphaned worker holding the port, so the
# supervisor's restart can bind it again.
master_process off;
pid {d}/run/nginx.pid;
error_log {d}/logs/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    server_tokens off;
    client_max_body_size 32m;
{temp}
    server {{
        listen unix:{inst.socket};
        root {WP_ROOT};
        index index.php;
        # The front door passes {prefix}/... unstripped (WordPress's links carry it): files are
        # found without it, PHP still gets the whole REQUEST_URI.
        rewrite ^{prefix}(/.*)$ $1 last;
        location ^~ /wp-content/ {{
            alias {d}/wp-content/;
            location ~ \\.php$ {{ deny all; }}
        }}
        location / {{ try_files $uri $uri/ /index.php?$args; }}
        location ~ \\.php$ {{
            try_files $uri =404;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_param WORDPRESS_CONFIG {config_name(inst.username)};
            fastcgi_param HTTPS on;  # the front door is TLS; only it can connect here
            # Debian's fastcgi_params drop the port from HTTP_HOST; WordPress builds redirects on it.
            fastcgi_param HTTP_HOST {urllib.parse.urlsplit(site_url(inst)).netloc};
            fastcgi_pass unix:{d}/run/php-fpm.sock;
        }}
    }}
}}
"""


def wp_cli_argv(action: str, url: str, content_dir: str) -> list[str]:
    """The php command (run as the slot user) for ACTION (pure: no secret in it).

    The environment is clean (no ``PHPRC``/``PHP_INI_SCAN_DIR``) and the CLI never reads a
    php.ini from its working directory: only Debian's root-owned configuration applies.
    """
    return [PHP, "-d", "display_errors=stderr", "-d", "auto_prepend_file=", "-d", "auto_append_file=",
            str(SCRIPT), action, url, content_dir]


class WordPress(App):
    name = "wordpress"
    title = "WordPress"
    description = "Blog/CMS (Debian's wordpress) with its own MariaDB database, PHP-FPM and nginx as the slot user"
    needs = ("wordpress, php-fpm, php-mysql, nginx, mariadb (Debian)", "a running MariaDB")
    secret_names = ("password", "db_password")
    port_purposes = ()
    unix_socket = True

    def _socket(self, settings: AppSettings) -> str:
        value = settings.of(self.name).get("mysql_socket", "/run/mysqld/mysqld.sock")
        if not isinstance(value, str) or not value.startswith("/"):
            raise BadInput("apps.wordpress.mysql_socket: expected an absolute path")
        return value

    def version(self, settings: AppSettings) -> str | None:
        ver = WP_ROOT / "wp-includes" / "version.php"
        if not all(Path(p).exists() for p in (PHP, PHP_FPM, NGINX, MARIADB)) or not ver.exists():
            return None
        for line in ver.read_text().splitlines():
            if line.startswith("$wp_version"):
                return line.split("'")[1]
        return "unknown"

    def check(self, ctx: Context, settings: AppSettings) -> None:
        super().check(ctx, settings)
        sock = self._socket(settings)
        if not Path(sock).exists():
            raise SlotError(f"MariaDB is not running: no socket {sock} (apps.wordpress.mysql_socket)")

    def _sql(self, settings: AppSettings, sql: str) -> None:
        run([MARIADB, "--no-defaults", f"--socket={self._socket(settings)}", "-u", "root", "--batch"], stdin=sql)

    def _db_user(self, username: str) -> str:
        return f"'{db_name(username)}'@'localhost'"

    def _set_db_password(self, inst: Installation, password: str) -> None:
        self._sql(inst.settings, f"ALTER USER {self._db_user(inst.username)} IDENTIFIED BY '{password}';\n")

    def configure(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> None:
        for d in ("run", "logs", "tmp", "wp-content", "wp-content/uploads"):
            inst.mkdir(d)
        from provisioner.apps import homefiles

        for sub in ("themes", "plugins"):
            homefiles.symlink(inst.home, f"{inst.rel_dir}/wp-content/{sub}", str(WP_ROOT / "wp-content" / sub),
                              inst.uid, inst.gid)
        salts = {k: secrets.token_urlsafe(48) for k in SALTS}
        inst.write("wp-config.php", wp_config(inst, creds["db_password"], self._socket(inst.settings), salts))
        inst.write("php-fpm.conf", fpm_config(inst))
        inst.write("nginx.conf", nginx_config(inst))
        link = CONFIG_DIR / f"config-{config_name(inst.username)}.php"
        CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(inst.app_dir / "wp-config.php", tmp)
        os.replace(tmp, link)

    def install_steps(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> list[Step]:
        db, user = db_name(inst.username), self._db_user(inst.username)
        grant_db = db.replace("_", "\\_")  # GRANT treats _ and % in a database name as wildcards

        def create() -> None:
            self._sql(inst.settings, f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4;\n"
                                     f"CREATE USER {user} IDENTIFIED BY '{creds['db_password']}';\n"
                                     f"GRANT ALL PRIVILEGES ON `{grant_db}`.* TO {user};\n")

        return [install_step(ctx, inst),
                Step("wp-database", f"create MariaDB database {db} and user {db}", create,
                     lambda: self._drop(inst))]

    def _drop(self, inst: Installation) -> None:
        db, user = db_name(inst.username), self._db_user(inst.username)
        self._sql(inst.settings, f"DROP DATABASE IF EXISTS `{db}`;\nDROP USER IF EXISTS {user};\n")

    def _wp(self, inst: Installation, action: str, db_password: str, payload: dict[str, str]) -> None:
        """Run ``wordpress.php ACTION`` as the slot user; the database settings and secrets on stdin."""
        db = {"name": db_name(inst.username), "user": db_name(inst.username), "password": db_password,
              "host": f"localhost:{self._socket(inst.settings)}"}
        account = TenantAccount(inst.username, inst.uid, inst.gid, inst.home)
        # An empty directory root makes for this run stands in for wp-content: 0700 root, so the
        # tenant's PHP finds nothing in it and can put nothing there.
        with tempfile.TemporaryDirectory(prefix="slotwarden-wp-cli-") as content:
            run_as_tenant(account, wp_cli_argv(action, site_url(inst), content),
                          stdin=json.dumps({**payload, "db": db}))

    def after_start(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> None:
        self._wp(inst, "install", creds["db_password"],
                 {"title": f"{inst.username}'s WordPress", "user": inst.username,
                  "email": f"{inst.username}@localhost.invalid", "password": creds["password"]})

    def rotate(self, ctx: Context, inst: Installation, old: dict[str, str], new: dict[str, str],
               supervisor: SupervisorBackend) -> None:
        # PHP reads wp-config.php per request: the database password changes with no restart.
        self._set_db_password(inst, new["db_password"])
        self.configure(ctx, inst, new)
        self._wp(inst, "passwd", new["db_password"], {"user": inst.username, "password": new["password"]})

    def uninstall(self, ctx: Context, inst: Installation) -> None:
        teardown(ctx, inst)
        (CONFIG_DIR / f"config-{config_name(inst.username)}.php").unlink(missing_ok=True)
        sock = self._socket(inst.settings)
        if not Path(sock).exists():
            # Refuse rather than leave a database and a database user behind unnoticed.
            raise SlotError(f"MariaDB is not running (no socket {sock}): cannot drop {db_name(inst.username)}; "
                            "start it and uninstall again")
        self._drop(inst)

    def programs(self, ctx: Context, inst: Installation) -> list[Program]:
        d = str(inst.app_dir)
        env = {"USER": inst.username, "LOGNAME": inst.username, "TMPDIR": f"{d}/tmp"}
        return [
            # A socket left by a killed nginx would make the next bind fail: removed first (as the slot).
            Program(app=self.name, user=inst.username, cwd=d, environment=env,
                    argv=["/bin/sh", "-c", '/bin/rm -f -- "$0" && exec "$@"', str(inst.socket),
                          NGINX, "-p", f"{d}/", "-e", f"{d}/logs/nginx-error.log", "-c", f"{d}/nginx.conf"]),
            Program(app=f"{self.name}-fpm", user=inst.username, cwd=d, environment=env, stopsignal="QUIT",
                    argv=[PHP_FPM, "--nodaemonize", "--fpm-config", f"{d}/php-fpm.conf"]),
        ]

    def url(self, inst: Installation) -> str:
        return frontdoor_url(inst) + "wp-login.php"


APP = WordPress()
