"""The commands that run as a tenant or hash its secrets, as data: isolated, nothing inherited."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.apps.jupyterlab import hash_argv
from provisioner.apps.wordpress import SCRIPT, wp_cli_argv
from provisioner.as_tenant import PRLIMIT, TenantAccount, TenantLimits, run_as_tenant, tenant_argv, tenant_env
from provisioner.errors import SlotError

ALICE = TenantAccount("alice", 5000, 5000, Path("/srv/slots/alice"))


def test_env_is_built_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOTWARDEN_SECRET", "x")
    monkeypatch.setenv("PYTHONPATH", "/tmp")
    env = tenant_env(ALICE, {"TMPDIR": "/srv/slots/alice/tmp"})
    assert env == {"HOME": "/srv/slots/alice", "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/sh",
                   "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": "/srv/slots/alice/tmp"}


def test_limits_wrap_the_command() -> None:
    assert tenant_argv(["/usr/bin/php", "x.php"], TenantLimits(cpu_seconds=10, processes=5, open_files=64)) == [
        PRLIMIT, "--cpu=10", "--nproc=5", "--nofile=64", "--core=0", "--", "/usr/bin/php", "x.php"]


@pytest.mark.parametrize("account", [TenantAccount("root", 0, 0, Path("/root")),
                                     TenantAccount("x", 5000, 0, Path("/srv/slots/x"))])
def test_never_runs_anything_as_root(account: TenantAccount) -> None:
    with pytest.raises(SlotError):
        run_as_tenant(account, ["/bin/true"])


def test_root_is_refused_by_name() -> None:
    with pytest.raises(SlotError):
        TenantAccount.of("root")


def test_wordpress_cli_carries_no_secret_and_no_tenant_path() -> None:
    # Everything secret (the database and login passwords) goes on stdin; the content dir is
    # the empty one root makes per run, never the slot's wp-content.
    assert wp_cli_argv("passwd", "http://127.0.0.1:40001", "/tmp/slotwarden-wp-cli-x") == [
        "/usr/bin/php", "-d", "display_errors=stderr", "-d", "auto_prepend_file=", "-d", "auto_append_file=",
        str(SCRIPT), "passwd", "http://127.0.0.1:40001", "/tmp/slotwarden-wp-cli-x"]


def test_password_hash_runs_isolated_python() -> None:
    argv = hash_argv(Path("/opt/slotwarden/apps/jupyterlab"))
    assert argv[:3] == ["/opt/slotwarden/apps/jupyterlab/bin/python", "-I", "-c"]
    assert "sys.stdin.read()" in argv[3]
