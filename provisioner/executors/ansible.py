"""The fleet executor: slot changes applied on inventory hosts through ``ansible_runner.run``.

It runs ``playbooks/slot.yml`` (one ``slotwarden_slot`` module call per host for the whole
batch) and ``playbooks/site.yml`` (host preparation), follows the runner's events for progress,
and turns the per-host task results into :class:`~provisioner.executors.SlotOutcome` rows — a
host that fails or cannot be reached is reported for its own slots and hides nobody else's.

Secrets: the runner is started with ``suppress_env_files=True`` (nothing of the call is written
to ``env/``); generated passwords come back *sealed* to a key pair that lives only in this
process (:mod:`provisioner.executors.sealed`), so ``artifacts/`` holds ciphertext only. The
private data directory is a fresh 0700 temp dir, removed afterwards unless ``private_data_dir``
is given (then it is kept, for inspection).

>>> AnsibleExecutor.name
'ansible'
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import BadInput, SlotError
from provisioner.executors import SlotChange, SlotOutcome
from provisioner.executors.sealed import Opener

# Events that carry a task's result for one host.
_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
MODULE = "slotwarden_slot"

Progress = Callable[[str], None]


def playbooks_dir() -> Path:
    """Where site.yml and slot.yml are: ``$SLOTWARDEN_PLAYBOOKS``, else ``playbooks/`` of this checkout."""
    env = os.environ.get("SLOTWARDEN_PLAYBOOKS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "playbooks"
    if not (path / "slot.yml").is_file():
        raise SlotError(f"no playbooks in {path}: set SLOTWARDEN_PLAYBOOKS to the checkout's playbooks/ directory")
    return path


@dataclass
class HostResult:
    """One host's view of a playbook run: its stats and the slotwarden_slot task's result."""

    host: str
    status: str = "ok"  # ok | failed | unreachable
    message: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    module_result: dict[str, Any] | None = None


@dataclass
class PlaybookRun:
    """What one ``ansible_runner.run`` produced."""

    status: str
    rc: int
    hosts: dict[str, HostResult]
    private_data_dir: Path | None

    @property
    def changed(self) -> int:
        """The sum of ``changed`` over all hosts (0 means the run changed nothing)."""
        return sum(h.stats.get("changed", 0) for h in self.hosts.values())


class EventCollector:
    """The runner's event handler: progress lines and per-host results, nothing else kept."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self.hosts: dict[str, HostResult] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start" and self.progress is not None:
            self.progress(f"task: {data.get('task', '?')}")
        status = _RESULT_EVENTS.get(kind)
        if status is not None and data.get("host"):
            host = str(data["host"])
            hr = self.hosts.setdefault(host, HostResult(host))
            res = data.get("res") or {}
            if status in ("failed", "unreachable") and not data.get("ignore_errors"):
                hr.status = status
                hr.message = " ".join(str(res.get("msg", status)).split())
            action = str(data.get("resolved_action") or data.get("task_action") or "")
            if action.endswith(MODULE) and isinstance(res, dict):
                hr.module_result = res
            if self.progress is not None:
                self.progress(f"{host}: {data.get('task', '?')}: {status}"
                              + (" (changed)" if isinstance(res, dict) and res.get("changed") else ""))
        if kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                for host, n in (data.get(key) or {}).items():
                    self.hosts.setdefault(host, HostResult(host)).stats[key] = int(n)
        return True  # keep writing events to artifacts/ (they hold no secret)


def outcomes_from(changes: list[SlotChange], run: PlaybookRun, wanted_hosts: list[str],
                  opener: Opener | None) -> list[SlotOutcome]:
    """One outcome per (host, change): module results where there are any, else the host's error."""
    out: list[SlotOutcome] = []
    names = list(run.hosts)
    for h in wanted_hosts:
        if h not in run.hosts and not any(c in h for c in "*?[]:!&,~"):
            names.append(h)
    for host in names:
        hr = run.hosts.get(host)
        res = hr.module_result if hr else None
        items = res.get("results") if isinstance(res, dict) else None
        if not items:
            if hr is None:
                why = f"host {host} is not in the inventory"
            elif hr.status == "unreachable":
                why = f"host {host} is unreachable: {hr.message}"
            elif hr.status == "failed":
                why = f"on {host}: {hr.message}"
            else:
                why = f"host {host} did not run the slot task"
            out.extend(SlotOutcome(host, c.username, "failed", False, error=why, exit_code=1) for c in changes)
            continue
        for item in items:
            password = None
            apps: list[dict[str, Any]] = []
            if opener is not None and item.get("password_sealed"):
                password = opener.open(item["password_sealed"])
            if opener is not None and item.get("apps_sealed"):
                apps = json.loads(opener.open(item["apps_sealed"]))
            record_keys = set(item) - {"host", "username", "ok", "action", "changed", "steps", "error",
                                       "password_sealed", "apps_sealed", "exit_code"}
            out.append(SlotOutcome(
                host=host, username=str(item.get("username")), action=str(item.get("action")),
                changed=bool(item.get("changed")),
                record={k: item[k] for k in sorted(record_keys)} or None,
                steps=list(item.get("steps") or []), error=item.get("error"),
                exit_code=int(item.get("exit_code") or 0), password=password, apps=apps,
            ))
    return out


class AnsibleExecutor:
    """Apply slot changes on the hosts of an Ansible inventory."""

    name = "ansible"

    def __init__(self, inventory: str | Path, hosts: list[str] | None = None, *,
                 playbooks: Path | None = None, private_data_dir: Path | None = None,
                 progress: Progress | None = None, extravars: dict[str, Any] | None = None,
                 envvars: dict[str, str] | None = None, timeout: int | None = None) -> None:
        self.inventory = Path(inventory).resolve()
        if not self.inventory.exists():
            raise BadInput(f"inventory {inventory} does not exist")
        self.hosts = list(hosts or [])
        for h in self.hosts:
            if not h or h.startswith("-") or any(c.isspace() for c in h):
                raise BadInput(f"--host {h!r} is not a host name or pattern")
        self.playbooks = playbooks or playbooks_dir()
        self.private_data_dir = private_data_dir
        self.last_run: PlaybookRun | None = None
        self.progress = progress
        self.extravars = dict(extravars or {})
        self.envvars = dict(envvars or {})
        self.timeout = timeout

    @property
    def pattern(self) -> str:
        return ",".join(self.hosts) if self.hosts else "all"

    def run_playbook(self, playbook: str, extravars: dict[str, Any], *, check: bool = False,
                     diff: bool = False) -> PlaybookRun:
        """Run PLAYBOOK (a file in the playbooks directory) through ``ansible_runner.run``."""
        try:
            import ansible_runner  # type: ignore[import-untyped]  # heavy: only the fleet path pays for it
        except ImportError:
            raise SlotError("the fleet path needs ansible-runner and ansible-core: "
                            "pip install 'slotwarden[fleet]' (make venv does)") from None

        collector = EventCollector(self.progress)
        if self.private_data_dir is not None:
            private = self.private_data_dir
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            private = Path(tempfile.mkdtemp(prefix="slotwarden-fleet-"))
        bindir = str(Path(sys.executable).parent)
        env = {
            # The runner finds ansible-playbook through PATH: prefer the one beside this Python.
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # Debian hosts always have it; discovery can pick a pyenv shim or a venv instead.
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
            **self.envvars,
        }
        try:
            # The variables go in a 0600 file passed as -e @file: on the command line (what the runner
            # does with a dict) they would show in `ps` and in artifacts/command, and a big batch
            # would hit the argument-length limit.
            vars_file = private / "slotwarden-vars.json"
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"slotwarden_hosts": "all", **self.extravars, **extravars}, f)
            cmdline = " ".join([*(["--check"] if check else []), *(["--diff"] if diff else [])]) or None
            r = ansible_runner.run(
                private_data_dir=str(private),
                playbook=str(self.playbooks / playbook),
                inventory=str(self.inventory),
                limit=self.pattern,
                extravars=str(vars_file),
                envvars=env,
                cmdline=cmdline,
                suppress_env_files=True,
                quiet=True,
                event_handler=collector,
                timeout=self.timeout,
            )
            for hr in collector.hosts.values():
                if hr.stats.get("dark"):
                    hr.status = "unreachable"
                elif hr.stats.get("failures") and hr.status == "ok":
                    hr.status = "failed"
            if r.status not in ("successful", "failed") and not collector.hosts:
                raise SlotError(f"ansible-runner {r.status} (rc {r.rc}) running {playbook}"
                                + ("" if self.private_data_dir else "; pass private_data_dir to keep its output"))
            self.last_run = PlaybookRun(r.status, int(r.rc), collector.hosts, self.private_data_dir)
            return self.last_run
        finally:
            if self.private_data_dir is None:
                shutil.rmtree(private, ignore_errors=True)

    def apply(self, changes: list[SlotChange], *, check: bool = False) -> list[SlotOutcome]:
        """Apply CHANGES on every selected host in one module call per host."""
        opener = Opener()
        run = self.run_playbook("slot.yml", {"slotwarden_slots": [c.as_dict() for c in changes],
                                             "slotwarden_recipient": opener.recipient}, check=check)
        return outcomes_from(changes, run, self.hosts, opener)

    def prepare(self, *, check: bool = False) -> PlaybookRun:
        """Run site.yml on the selected hosts (idempotent: a second run has ``changed == 0``)."""
        return self.run_playbook("site.yml", {}, check=check)
