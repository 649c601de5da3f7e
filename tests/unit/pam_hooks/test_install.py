"""PAM file edits: where the lines go on Debian's stock files, refusals, byte-for-byte undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pam_hooks import install as inst
from pam_hooks.config import GuardConfig

DATA = Path(__file__).parent / "data"


def _norm(text: str) -> list[str]:
    return [" ".join(ln.split()) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("name", ["sshd", "su", "login"])
def test_lines_around_the_includes(name: str) -> None:
    text = (DATA / f"debian12-{name}").read_text()
    lines = _norm(inst.plan_install(text, "socket=/run/x.sock"))
    pre = lines.index(f"auth {inst.TOLERANT['requisite']} pam_slotwarden.so socket=/run/x.sock")
    assert lines[pre + 1] == "@include common-auth"
    assert lines[pre + 2] == "auth optional pam_slotwarden.so authsucc socket=/run/x.sock"
    acct = lines.index(f"account {inst.TOLERANT['required']} pam_slotwarden.so socket=/run/x.sock")
    assert lines[acct + 1] == "@include common-account"
    if name == "su":  # root's own su never meets the prompt: pam_rootok comes first
        assert lines.index("auth sufficient pam_rootok.so") < pre
    assert inst.plan_remove(inst.plan_install(text, "x")) == text


@pytest.mark.parametrize(("text", "message"), [
    ("auth required pam_unix.so\naccount required pam_unix.so\n", "no '@include common-auth'"),
    ("auth substack common-auth\n", "no '@include common-auth'"),
    ("# slotwarden-guard: preauth\nauth requisite pam_slotwarden.so\n@include common-auth\n", "already installed"),
])
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(inst.InstallError, match=message):
        inst.plan_install(text, "x")


def test_no_trailing_newline_and_auth_include_form() -> None:
    out = inst.plan_install("auth include common-auth", "x", tolerant=False)
    assert out.endswith("account  required  pam_slotwarden.so x\n")
    assert _norm(out)[1] == "auth include common-auth"


@pytest.fixture
def pam_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    mods = tmp_path / "security"
    mods.mkdir()
    (mods / inst.MODULE).write_bytes(b"\x7fELF")
    monkeypatch.setattr(inst, "module_dir", lambda: mods)
    d = tmp_path / "pam.d"
    d.mkdir()
    return d


def test_install_uninstall_restores_bytes(pam_dir: Path, tmp_path: Path) -> None:
    cfg = GuardConfig(state_dir=tmp_path / "state")
    raw = (DATA / "debian12-sshd").read_bytes() + b"\n# odd trailing bytes \xff\n"
    (pam_dir / "sshd").write_bytes(raw)
    (pam_dir / "sshd").chmod(0o640)
    dry = inst.install(cfg, "sshd", pam_dir, dry_run=True, with_module=False)
    assert not dry.changed and (pam_dir / "sshd").read_bytes() == raw
    inst.install(cfg, "sshd", pam_dir, with_module=False)
    assert b"pam_slotwarden.so" in (pam_dir / "sshd").read_bytes()
    assert ((pam_dir / "sshd").stat().st_mode & 0o777) == 0o640
    inst.uninstall(cfg, "sshd", pam_dir)
    assert (pam_dir / "sshd").read_bytes() == raw


def test_uninstall_after_local_edit_removes_only_ours(pam_dir: Path, tmp_path: Path) -> None:
    cfg = GuardConfig(state_dir=tmp_path / "state")
    text = (DATA / "debian12-login").read_text()
    (pam_dir / "login").write_text(text)
    inst.install(cfg, "login", pam_dir, with_module=False)
    (pam_dir / "login").write_text((pam_dir / "login").read_text() + "session optional pam_echo.so hi\n")
    inst.uninstall(cfg, "login", pam_dir)
    assert (pam_dir / "login").read_text() == text + "session optional pam_echo.so hi\n"


def test_refuses_when_host_wide_or_module_missing(pam_dir: Path, tmp_path: Path) -> None:
    cfg = GuardConfig(state_dir=tmp_path / "state")
    (pam_dir / "sshd").write_text("@include common-auth\n")
    (pam_dir / "common-auth").write_text("auth requisite pam_slotwarden.so\n")
    with pytest.raises(inst.InstallError, match="host-wide"):
        inst.install(cfg, "sshd", pam_dir, with_module=False)
    (pam_dir / "common-auth").unlink()
    (inst.module_dir() / inst.MODULE).unlink()
    with pytest.raises(inst.InstallError, match="is not installed"):
        inst.install(cfg, "sshd", pam_dir, with_module=False)
    assert (pam_dir / "sshd").read_text() == "@include common-auth\n"
    with pytest.raises(inst.InstallError, match="invalid PAM service name"):
        inst.install(cfg, "../passwd", pam_dir, with_module=False)


@pytest.mark.parametrize(("mode", "pre", "acct"), [
    ("open", inst.TOLERANT["requisite"], inst.TOLERANT["required"]),
    ("closed", "requisite", "required"),
])
def test_missing_module_tolerated_only_when_fail_mode_open(mode: str, pre: str, acct: str) -> None:
    cfg = GuardConfig(fail_mode=mode)
    lines = _norm(inst.plan_install("@include common-auth\n@include common-account\n", inst.module_args(cfg),
                                    inst.tolerates_missing_module(cfg)))
    assert lines[0].startswith(f"auth {pre} pam_slotwarden.so") and lines[3].startswith(f"account {acct} ")
    prof = inst.pam_auth_update_profiles(cfg)["slotwarden"]
    assert f"Auth:\n\t{pre}\tpam_slotwarden.so" in prof and f"Account:\n\t{acct}\tpam_slotwarden.so" in prof


def test_module_path_named_in_lines() -> None:
    out = inst.plan_install("@include common-auth\n", "x", module="/opt/sw/pam_slotwarden.so")
    assert out.count("/opt/sw/pam_slotwarden.so") == 3
    assert inst.plan_remove(out) == "@include common-auth\n"
