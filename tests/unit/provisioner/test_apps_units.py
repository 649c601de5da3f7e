"""The apps package's pure parts: settings, vault, port registry, home files, app renderers."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.apps import AppSettings, Installation, catalog, get_app, homefiles
from provisioner.apps.jupyterlab import server_config
from provisioner.apps.registry import AppRegistry, free_port
from provisioner.apps.transmission import settings_json
from provisioner.apps.vault import Vault, generate_secret
from provisioner.apps.wordpress import config_name, nginx_config, wp_config
from provisioner.config import AppsConfig, validate_section
from provisioner.errors import BadInput, ConfigError, SlotError
from provisioner.names import USERNAME_RE
from provisioner.store import Store

ME_UID, ME_GID = os.getuid(), os.getgid()


def _inst(tmp_path: Path, app: str = "demo", ports: dict[str, int] | None = None) -> Installation:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    settings = AppSettings(socket_dir=Path("/var/lib/sw-apps"), frontdoor_base="https://hub.example:8443")
    return Installation("alice", app, home, ME_UID, ME_GID, ports or {"http": 20001, "peer": 20002}, settings)


# --- catalog -----------------------------------------------------------------------------------


def test_catalog_has_the_three_apps_one_module_each() -> None:
    apps = catalog()
    assert {"wordpress", "transmission", "jupyterlab"} <= set(apps)
    for name, app in apps.items():
        assert type(app).__module__ == f"provisioner.apps.{name}"  # one file per app
        assert "password" in app.secret_names
        # an app listens on its private socket, or on a registry port (checked for its owner)
        assert app.unix_socket != ("http" in app.port_purposes), name
    assert {n for n, a in apps.items() if a.unix_socket} >= {"jupyterlab", "wordpress"}


def test_unknown_app_is_bad_input() -> None:
    with pytest.raises(BadInput, match="no app named"):
        get_app("nosuch")


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "message"), [
    ({"port_min": 0}, "apps.port_min"),
    ({"port_max": 70000}, "apps.port_max"),
    ({"port_min": "1"}, "apps.port_min"),
    ({"port_min": 30000, "port_max": 20000}, "apps.port_min"),
    ({"shared_dir": "relative"}, "apps.shared_dir"),
    ({"socket_dir": "run/x"}, "apps.socket_dir"),
    ({"bogus": 1}, "apps.bogus"),
])
def test_settings_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AppSettings.from_config(validate_section(AppsConfig, table))


def test_settings_defaults_and_per_app_tables() -> None:
    table = {"port_min": 20000, "port_max": 20009, "wordpress": {"mysql_socket": "/x"}}
    s = AppSettings.from_config(validate_section(AppsConfig, table))
    assert s.port_range == range(20000, 20010) and s.of("wordpress") == {"mysql_socket": "/x"} and s.of("x") == {}
    with pytest.raises(ConfigError, match=r"^apps\.wordpress\.mysql_sock: unknown key"):
        validate_section(AppsConfig, {"wordpress": {"mysql_sock": "/x"}})


# --- vault -------------------------------------------------------------------------------------


def test_vault_round_trip_and_key_file(tmp_path: Path) -> None:
    v = Vault(tmp_path / "state" / "k.key")
    nonce, ct = v.seal("alice", "wordpress", {"password": "s3cret"})
    assert b"s3cret" not in ct
    assert v.open("alice", "wordpress", nonce, ct) == {"password": "s3cret"}
    st_ = (tmp_path / "state" / "k.key").stat()
    assert st_.st_mode & 0o777 == 0o600 and st_.st_size == 32
    assert Vault(tmp_path / "state" / "k.key").open("alice", "wordpress", nonce, ct) == {"password": "s3cret"}


@pytest.mark.parametrize(("slot", "app"), [("bob", "wordpress"), ("alice", "jupyterlab"), ("alicex", "wordpress")])
def test_vault_binds_slot_and_app(tmp_path: Path, slot: str, app: str) -> None:
    v = Vault(tmp_path / "k")
    nonce, ct = v.seal("alice", "wordpress", {"password": "p"})
    with pytest.raises(SlotError, match="do not open"):
        v.open(slot, app, nonce, ct)


def test_vault_refuses_a_loose_key(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    with pytest.raises(SlotError, match="0600"):
        Vault(key).seal("a", "b", {})
    key.chmod(0o600)
    key.write_bytes(b"short")
    with pytest.raises(SlotError, match="32-byte"):
        Vault(key).seal("a", "b", {})


def test_generated_secrets_are_long_and_distinct() -> None:
    secrets_ = {generate_secret() for _ in range(200)}
    assert len(secrets_) == 200 and all(len(s) >= 22 and s.isalnum() for s in secrets_)


# --- port registry -----------------------------------------------------------------------------


@pytest.mark.parametrize(("used", "busy", "expected"), [
    (set(), set(), 100),
    ({100}, set(), 101),
    ({100}, {101}, 102),
    ({100, 101, 102}, set(), None),
    (set(), {100, 101, 102}, None),
])
def test_free_port(used: set[int], busy: set[int], expected: int | None) -> None:
    assert free_port(range(100, 103), used, busy) == expected


def _allocate(args: tuple[str, int]) -> int:
    db, i = args
    reg = AppRegistry(Store(Path(db)), Vault(Path(db).with_name("k")))
    return reg.allocate_port(f"u{i}", "demo", "http", range(20900, 20960))


def test_twenty_concurrent_allocations_never_collide(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Store(db).close()
    with multiprocessing.get_context("fork").Pool(20) as pool:
        ports = pool.map(_allocate, [(str(db), i) for i in range(20)])
    assert len(set(ports)) == 20


def test_registry_rows(tmp_path: Path) -> None:
    reg = AppRegistry(Store(tmp_path / "s.db"), Vault(tmp_path / "k"))
    reg.begin_install("alice", "demo", "1.0")
    with pytest.raises(SlotError, match="already installed"):
        reg.begin_install("alice", "demo", "1.0")
    p1 = reg.allocate_port("alice", "demo", "http", range(20000, 20002))
    assert reg.allocate_port("alice", "demo", "http", range(20000, 20002)) == p1  # idempotent
    reg.allocate_port("alice", "demo", "peer", range(20000, 20002))
    with pytest.raises(SlotError, match="no free port left in 20000-20001"):
        reg.allocate_port("bob", "demo", "http", range(20000, 20002))
    reg.put_credentials("alice", "demo", {"password": "a"})
    reg.put_credentials("alice", "demo", {"password": "b"})
    assert reg.credentials("alice", "demo") == {"password": "b"}
    raw = reg.store.db.execute("SELECT ciphertext FROM app_credentials").fetchone()[0]
    assert b'"b"' not in raw
    reg.release_ports("alice", "demo")
    reg.delete_credentials("alice", "demo")
    reg.forget_install("alice", "demo")
    assert reg.ports("alice", "demo") == {} and reg.credentials("alice", "demo") is None
    assert reg.installs() == []


# --- home files --------------------------------------------------------------------------------


def test_homefiles_write_and_remove(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    p = homefiles.write_file(home, "apps/demo/config.json", "{}", ME_UID, ME_GID)
    assert p.read_text() == "{}" and p.stat().st_mode & 0o777 == 0o600
    assert (home / "apps").stat().st_mode & 0o777 == 0o700
    assert homefiles.read_file(home, "apps/demo/config.json") == "{}"
    homefiles.remove_tree(home, "apps/demo")
    homefiles.remove_empty_dir(home, "apps")
    assert list(home.iterdir()) == []
    homefiles.remove_tree(home, "apps/demo")  # absent is fine


def test_homefiles_never_follow_a_planted_symlink(tmp_path: Path) -> None:
    home, victim = tmp_path / "home", tmp_path / "victim"
    home.mkdir()
    victim.mkdir()
    (victim / "keep").write_text("x")
    (home / "apps").symlink_to(victim)
    with pytest.raises(SlotError, match="refusing to follow"):
        homefiles.write_file(home, "apps/demo/config.json", "{}", ME_UID, ME_GID)
    homefiles.remove_tree(home, "apps/keep")  # through the link: refused silently, nothing removed
    assert (victim / "keep").exists()
    homefiles.remove_tree(home, "apps")  # the link itself goes, not its target
    assert not (home / "apps").is_symlink() and (victim / "keep").exists()
    (home / "f").symlink_to(victim / "keep")
    homefiles.write_file(home, "f", "new", ME_UID, ME_GID)  # replaces the link, not the target
    assert (victim / "keep").read_text() == "x" and not (home / "f").is_symlink()


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x", "a/../../b", ""])
def test_homefiles_refuse_paths_outside(rel: str) -> None:
    with pytest.raises(SlotError):
        homefiles.rel_parts(rel)


# --- app renderers -----------------------------------------------------------------------------


def test_transmission_settings(tmp_path: Path) -> None:
    s = settings_json(_inst(tmp_path, "transmission"), "pw")
    assert s["rpc-bind-address"] == "127.0.0.1" and s["rpc-port"] == 20001 and s["peer-port"] == 20002
    assert s["rpc-authentication-required"] is True and s["rpc-username"] == "alice"
    assert s["dht-enabled"] is False and s["port-forwarding-enabled"] is False
    json.dumps(s)


def test_jupyter_config_holds_only_the_hash(tmp_path: Path) -> None:
    c = server_config(_inst(tmp_path, "jupyterlab"), "argon2:$hash")
    text = json.dumps(c)
    server = c["ServerApp"]
    assert server["sock"] == "/var/lib/sw-apps/alice/jupyterlab/http.sock"  # type: ignore[index]
    assert "port" not in server and "ip" not in server  # type: ignore[operator]
    assert server["base_url"] == "/apps/alice/jupyterlab/" and server["sock_mode"] == "0660"  # type: ignore[index]
    assert c["IdentityProvider"] == {"token": ""} and "argon2:$hash" in text


def test_wordpress_config_and_server(tmp_path: Path) -> None:
    inst = _inst(tmp_path, "wordpress")
    php = wp_config(inst, "dbpw'x", "/run/mysqld/mysqld.sock", {"AUTH_KEY": "k"})
    assert "define('DB_PASSWORD', 'dbpw\\'x');" in php and "'localhost:/run/mysqld/mysqld.sock'" in php
    assert "define('DB_NAME', 'wp_alice');" in php
    assert "define('WP_HOME', 'https://hub.example:8443/apps/alice/wordpress');" in php
    conf = nginx_config(inst)
    assert "listen unix:/var/lib/sw-apps/alice/wordpress/http.sock;" in conf and "127.0.0.1" not in conf
    assert f"WORDPRESS_CONFIG {config_name('alice')};" in conf and "fastcgi_param HTTPS on;" in conf
    assert "rewrite ^/apps/alice/wordpress(/.*)$ $1 last;" in conf
    assert "fastcgi_param HTTP_HOST hub.example:8443;" in conf
    assert "master_process off;" in conf


@given(st.from_regex(USERNAME_RE, fullmatch=True), st.from_regex(USERNAME_RE, fullmatch=True))
def test_wordpress_config_names_are_distinct_and_debian_safe(a: str, b: str) -> None:
    import re

    assert re.fullmatch(r"[a-zA-Z0-9-]+", config_name(a))
    assert (config_name(a) == config_name(b)) == (a == b)


def test_retention_and_data_report_read_the_apps_tables_through_the_registry() -> None:
    import inspect

    from provisioner import datareport, retention

    for mod in (retention, datareport):
        assert "app_installs" not in inspect.getsource(mod) and "app_credentials" not in inspect.getsource(mod)
