"""slotctl's entry point: click's own main (completion, --version) with the 0/1/2 exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

SLOTCTL = str(Path(sys.executable).parent / "slotctl")


def slotctl(*args: str, env: dict[str, str] | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "SLOTWARDEN_CONFIG": str((tmp or Path("/nonexistent")) / "slotwarden.toml")}
    return subprocess.run([SLOTCTL, *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=60)


def test_version() -> None:
    proc = slotctl("--version")
    assert (proc.returncode, proc.stdout) == (0, f"slotctl {version('slotwarden')}\n")


@pytest.mark.parametrize("argv,code", [
    (["--bogus"], 2),               # usage error
    (["slot", "show"], 2),          # missing argument
    (["no-such-group"], 2),
    (["--help"], 0),
    (["guard", "--help"], 0),
])
def test_usage_exit_codes(argv: list[str], code: int) -> None:
    assert slotctl(*argv).returncode == code


@pytest.mark.parametrize("where", ["before", "after"])
def test_bad_input_is_one_json_error_with_json_anywhere(where: str, tmp_path: Path) -> None:
    (tmp_path / "slotwarden.toml").write_text(f'state_dir = "{tmp_path}/state"\n')
    argv = ["--json", "plan", "show", "nope"] if where == "before" else ["plan", "show", "nope", "--json"]
    proc = slotctl(*argv, tmp=tmp_path)
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"ok": False, "error": "plan 'nope' is not configured "
                                                              "(plans: none are configured)"}
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("slotctl: error: ")
    assert not (tmp_path / "state").exists()  # nothing changed


def test_corrupt_config_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "slotwarden.toml").write_text("state_dir = [\n")
    proc = slotctl("plan", "list", tmp=tmp_path)
    assert proc.returncode == 2 and str(tmp_path / "slotwarden.toml") in proc.stderr


_COMMANDS = [["plan", "list"], ["guard", "status"], ["slot", "create", "cfgbad", "--email", "a@example.com",
                                                     "--country", "DE"]]


@pytest.mark.parametrize(("n", "text", "key"), [(n, *case) for n, case in enumerate([
    ('[retention]\nattempts = "soon"\n', "retention.attempts"),
    ('[guard]\nretention = "24h"\n', "guard.retention"),
    ("[hub]\nidle_timeout = 0\n", "hub.idle_timeout"),
    ('[apps.wordpress]\nmysql_sock = "/x"\n', "apps.wordpress.mysql_sock"),
    ('[metrics]\nbackend = "magic"\n', "metrics.backend"),
    ('[plans.small]\nquota = "5G"\nmemory_max = "1M"\nmemory_high = "2M"\n', "plans.small.memory_high"),
    ("[gaurd]\npair_deny = 3\n", "gaurd"),
    ('[notices]\nhook = ["relative"]\n', "notices.hook"),
])])
def test_a_bad_value_anywhere_is_one_line_exit_2_nothing_changed(n: int, text: str, key: str, tmp_path: Path) -> None:
    (tmp_path / "slotwarden.toml").write_text(f'state_dir = "{tmp_path}/state"\n{text}')
    proc = slotctl(*_COMMANDS[n % len(_COMMANDS)], tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"slotctl: error: {key}: "), proc.stderr
    assert not (tmp_path / "state").exists()  # nothing changed


@pytest.mark.parametrize("shell,marker", [("bash_source", "_slotctl_completion"), ("zsh_source", "#compdef slotctl")])
def test_completion_scripts(shell: str, marker: str) -> None:
    proc = slotctl(env={"_SLOTCTL_COMPLETE": shell})
    assert proc.returncode == 0 and marker in proc.stdout


@pytest.mark.parametrize("words,cword,expected", [
    ("slotctl gu", "1", {"guard"}),
    ("slotctl guard l", "2", {"lift", "list"}),
    ("slotctl slot cr", "2", {"create", "create-many"}),
])
def test_bash_completion_answers(words: str, cword: str, expected: set[str]) -> None:
    proc = slotctl(env={"_SLOTCTL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword})
    assert proc.returncode == 0
    assert {line.split(",", 1)[1] for line in proc.stdout.split()} == expected


def test_the_top_level_help_lists_each_commands_own_summary() -> None:
    import click

    from provisioner.cli import GROUPS, cli

    ctx = click.Context(cli)
    for name, (_, summary) in GROUPS.items():
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and summary == cmd.get_short_help_str(limit=1000), name
    listed = slotctl("--help").stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.strip()] == sorted(GROUPS)


def test_the_top_level_help_imports_no_command_and_not_the_configuration_model() -> None:
    probe = ("import sys; from provisioner.cli import main; sys.argv = ['slotctl', '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "import json; print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "provisioner.cli" in loaded and "click" in loaded
    assert not [m for m in loaded if m.startswith(("pydantic", "provisioner.config"))]
    assert set(loaded) & {f"provisioner.cli.{m}" for m in ("slot", "host", "api", "app", "hub")} == set()
