"""Per-slot metrics for real: two slots, processes as each, the kernel's own figures compared.

Tolerances (stated, not tuned): CPU is bracketed exactly by the cgroup counter read before and
after; RAM within 8 MiB of the cgroup's working set read by root around the call, and within
16 MiB + 25 % of the RSS sum of the slot's processes; a written file moves disk used by its size
up to 128 KiB (allocation rounding and btrfs metadata).
"""

from __future__ import annotations

import json
import os
import pwd
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system.fixtures.hosts import SLOTCTL
from tests.system.fixtures.metrics import TENANT_PYTHON, Lab, lab_fixture  # noqa: F401
from tests.system.fixtures.processes import uid_pids

pytestmark = pytest.mark.root
MiB = 1 << 20
WORKER = ("import sys, time\n"
          "b = bytearray({mb} << 20)\n"
          "for i in range(0, len(b), 4096): b[i] = 1\n"
          "while time.process_time() < {busy}: pass\n"
          "print('ready', flush=True)\n"
          "time.sleep(600)\n")


def wait_ready(p: subprocess.Popen[bytes]) -> None:
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"


@pytest.fixture(scope="module")
def two(lab: Lab) -> Iterator[tuple[str, str]]:
    a, b = lab.create_slot(), lab.create_slot()
    procs = [lab.start_as(a, WORKER.format(mb=48, busy=0.3)), lab.start_as(a, WORKER.format(mb=8, busy=0)),
             lab.start_as(b, WORKER.format(mb=24, busy=0.2))]
    for p in procs:
        wait_ready(p)
    yield a, b


def read_int(path: Path) -> int:
    return int(path.read_text().strip())


def working_set(lab: Lab, name: str) -> int:
    mem = lab.cgroup_dirs(name)["memory"]
    stat = dict(line.split() for line in (mem / "memory.stat").read_text().splitlines())
    return read_int(mem / "memory.usage_in_bytes") - int(stat["total_inactive_file"])


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def me(lab: Lab, name: str) -> dict:
    out = lab.run_as(name, [str(lab.me_path), "--json", "--sample", "0"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_me_shows_own_processes_only_and_kernel_figures(lab: Lab, two: tuple[str, str]) -> None:
    a, b = two
    uid_a, uid_b = pwd.getpwnam(a).pw_uid, pwd.getpwnam(b).pw_uid
    a_pids, b_pids = uid_pids(uid_a), uid_pids(uid_b)
    cpu = lab.cgroup_dirs(a)["cpuacct"] / "cpuacct.usage"
    cpu_before, ws_before = read_int(cpu) / 1e9, working_set(lab, a)
    m = me(lab, a)
    cpu_after, ws_after = read_int(cpu) / 1e9, working_set(lab, a)

    shown = {p["pid"] for p in m["processes"]}
    assert a_pids <= shown, "every process of A is listed"
    assert not shown & b_pids, "no process of B is listed"
    extra = shown - a_pids
    assert len(extra) <= 1 and all("slotwarden-me" in p["cmdline"] for p in m["processes"] if p["pid"] in extra)
    assert m["slot"] == a and m["uid"] == uid_a
    text = json.dumps(m)
    assert b not in text
    assert m["sources"]["cpu"] == "cgroup-v1" and m["sources"]["memory"] == "cgroup-v1"

    assert cpu_before <= m["cpu_seconds"] <= cpu_after
    assert m["cpu_seconds"] >= 0.2, "the busy loop of A's worker is accounted"
    # slotwarden-me itself runs in A's cgroup while it reads: its own RSS is part of the figure.
    own = sum(p["rss_bytes"] for p in m["processes"] if p["pid"] in extra)
    assert min(ws_before, ws_after) - 8 * MiB <= m["ram_bytes"] - own <= max(ws_before, ws_after) + 8 * MiB
    rss_sum = sum(rss(p) for p in a_pids) + own
    assert abs(m["ram_bytes"] - rss_sum) <= 16 * MiB + rss_sum // 4
    assert m["ram_bytes"] >= 56 * MiB, "48 + 8 MiB touched by A's workers"
    assert m["quota_bytes"] == 100 * MiB
    assert {"load1", "load5", "load15", "swap_bytes", "io_read_bytes", "io_write_bytes", "disk_used_bytes",
            "disk_total_bytes", "disk_free_bytes", "process_count"} <= set(m)
    assert m["disk_total_bytes"] > m["disk_free_bytes"] > 0


def test_me_disk_used_moves_by_written_size(lab: Lab, two: tuple[str, str]) -> None:
    a, _ = two
    before = me(lab, a)["disk_used_bytes"]
    home = lab.slots_root / a
    size = 8 * MiB
    w = lab.run_as(a, ["/usr/bin/python3", "-c",
                       f"import os; f=open('{home}/blob','wb'); f.write(os.urandom({size})); f.close()"])
    assert w.returncode == 0, w.stderr
    try:
        after = me(lab, a)["disk_used_bytes"]
        assert size <= after - before <= size + 128 * 1024
    finally:
        (home / "blob").unlink()


def test_me_cannot_reach_the_other_slot(lab: Lab, two: tuple[str, str]) -> None:
    a, b = two
    for path in [lab.root / "facts" / f"{b}.json", lab.cgroup_dirs(b)["memory"] / "cgroup.procs",
                 lab.cgroup_dirs(b)["memory"] / "memory.usage_in_bytes"]:
        r = lab.run_as(a, ["cat", str(path)])
        assert r.returncode != 0 and "Permission denied" in r.stderr, path
    listing = lab.run_as(a, ["ls", str(lab.cgroup_dirs(b)["memory"].parent)])
    assert listing.returncode != 0, "slot cgroups are not listable"
    own = lab.run_as(a, ["cat", str(lab.cgroup_dirs(a)["memory"] / "memory.usage_in_bytes")])
    assert own.returncode == 0


def test_me_runs_without_reading_the_checkout(lab: Lab, two: tuple[str, str]) -> None:
    """The installed copy is self-contained: it imports nothing from the provisioner."""
    a, _ = two
    text = lab.me_path.read_text()
    assert "from provisioner" not in text and "import provisioner" not in text
    assert f'FACTS_DIR = \'{lab.root / "facts"}\'' in text
    assert oct(lab.me_path.stat().st_mode & 0o777) == "0o755"
    plain = lab.run_as(a, [str(lab.me_path), "--sample", "0.1"])
    assert plain.returncode == 0 and f"slot {a}" in plain.stdout


def test_slotctl_metrics_matches_kernel(lab: Lab, two: tuple[str, str]) -> None:
    a, _ = two
    uid_a = pwd.getpwnam(a).pw_uid
    m = lab.slotctl_json("metrics", a, "--sample", "0")
    assert {p["pid"] for p in m["processes"]} == uid_pids(uid_a)
    assert m["sources"]["disk_used"].startswith("btrfs qgroup")
    assert m["quota_bytes"] == 100 * MiB
    home = lab.slots_root / a
    size = 8 * MiB
    (home / "blob2").write_bytes(os.urandom(size))
    try:
        after = lab.slotctl_json("metrics", a, "--sample", "0")
        assert size <= after["disk_used_bytes"] - m["disk_used_bytes"] <= size + 128 * 1024
    finally:
        (home / "blob2").unlink()
    text = lab.slotctl("metrics", a).stdout
    assert f"slot {a}" in text and "cgroup-v1" in text and "btrfs qgroup" in text


def test_processes_started_outside_are_adopted(lab: Lab, two: tuple[str, str]) -> None:
    a, _ = two
    p = lab.start_as(a, WORKER.format(mb=1, busy=0), in_cgroup=False)
    wait_ready(p)
    procs_file = lab.cgroup_dirs(a)["memory"] / "cgroup.procs"
    try:
        runuser_child = {int(x) for x in procs_file.read_text().split()}
        lab.slotctl_json("metrics", a, "--sample", "0")
        inside = {int(x) for x in procs_file.read_text().split()}
        uid_a = pwd.getpwnam(a).pw_uid
        assert uid_pids(uid_a) <= inside
        assert inside - runuser_child
    finally:
        p.kill()
        p.wait()


def test_prometheus_parses_with_the_official_parser(lab: Lab, two: tuple[str, str]) -> None:
    a, b = two
    text = lab.slotctl("metrics", "--all", "--format", "prometheus").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("slotwarden_cpu_seconds", "slotwarden_memory_bytes", "slotwarden_swap_bytes",
                 "slotwarden_processes", "slotwarden_io_read_bytes", "slotwarden_io_write_bytes",
                 "slotwarden_disk_used_bytes", "slotwarden_quota_bytes", "slotwarden_disk_total_bytes",
                 "slotwarden_disk_free_bytes", "slotwarden_load1", "slotwarden_load5", "slotwarden_load15"):
        assert name in families, name
    procs = {s.labels["slot"]: s.value for s in families["slotwarden_processes"].samples}
    assert procs[a] >= 2 and procs[b] >= 1
    quota = {s.labels["slot"]: s.value for s in families["slotwarden_quota_bytes"].samples}
    assert quota[a] == quota[b] == 100 * MiB
    assert families["slotwarden_cpu_seconds"].type == "counter"


def free_port() -> int:
    for _ in range(50):
        port = random.randint(2400, 2499)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port in 2400-2499")


def test_serve_answers_scrapes(lab: Lab, two: tuple[str, str]) -> None:
    a, _ = two
    port = free_port()
    server = subprocess.Popen([SLOTCTL, "metrics", "serve", "--listen", f"127.0.0.1:{port}"], env=lab.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    body = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert body is not None, "the server answered"
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert a in {s.labels["slot"] for s in families["slotwarden_memory_bytes"].samples}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert err.value.code == 404
    finally:
        server.terminate()
        server.wait(timeout=10)


TENANT_SCRAPE = ("import ssl, sys, urllib.request, urllib.error\n"
                 "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
                 "try:\n"
                 "    urllib.request.urlopen(sys.argv[1], timeout=10, context=ctx); print('read')\n"
                 "except urllib.error.HTTPError as e:\n"
                 "    print(e.code)\n")


def test_listener_rule_tls_and_scrape_token(lab: Lab, two: tuple[str, str]) -> None:
    """Every slot's name and usage used to be served to anyone on 0.0.0.0 without TLS or a token.

    Now a public address needs TLS and a scrape token; once a token exists, a tenant of this host
    scraping loopback without it gets 401, and Prometheus with it reads every slot."""
    import shutil

    from tests.system.fixtures.api import self_signed_cert
    from tests.system.fixtures.hosts import world_traversable_tmpdir

    a, b = two
    tmp_path = world_traversable_tmpdir("metricstls")
    port = free_port()
    r = lab.slotctl("metrics", "serve", "--listen", f"0.0.0.0:{port}", check=False)
    assert r.returncode == 2 and "needs TLS" in r.stderr and r.stderr.count("\n") == 1
    cert, key = self_signed_cert(tmp_path, "127.0.0.1")
    cert.chmod(0o644)
    r = lab.slotctl("metrics", "serve", "--listen", f"0.0.0.0:{port}", "--cert", str(cert), "--key", str(key),
                    check=False)
    assert r.returncode == 2 and "needs authentication" in r.stderr
    token = lab.slotctl_json("metrics", "token", "create")["token"]
    assert token not in (lab.state_dir / "metrics-token.sha256").read_text()
    assert (lab.state_dir / "metrics-token.sha256").stat().st_mode & 0o777 == 0o600
    server = subprocess.Popen([SLOTCTL, "metrics", "serve", "--listen", f"127.0.0.1:{port}", "--cert", str(cert),
                               "--key", str(key)], env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}/metrics"
    try:
        import ssl

        tls = ssl.create_default_context(cafile=str(cert))
        body = None
        for _ in range(100):
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=10, context=tls) as resp:
                    body = resp.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert body is not None and f'slot="{b}"' in body
        tenant = lab.run_as(a, [TENANT_PYTHON, "-c", TENANT_SCRAPE, url, str(cert)], in_cgroup=False)
        assert tenant.stdout.strip() == "401", tenant.stderr
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer swm_wrong"}),
                                   timeout=10, context=tls)
        assert err.value.code == 401
    finally:
        server.terminate()
        server.wait(timeout=10)
        lab.slotctl("metrics", "token", "revoke")
        shutil.rmtree(tmp_path)


def test_bad_input_is_one_line(lab: Lab) -> None:
    r = lab.slotctl("metrics", "tmnosuchslot", check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no slot named" in r.stderr
    r = lab.slotctl("metrics", check=False)
    assert r.returncode == 2
    r = lab.slotctl("metrics", "serve", "--listen", "nowhere", check=False)
    assert r.returncode == 2 and "--listen" in r.stderr


def test_removal_removes_cgroup_and_facts(lab: Lab) -> None:
    name = lab.create_slot()
    dirs = lab.cgroup_dirs(name)
    facts = lab.root / "facts" / f"{name}.json"
    assert all(d.is_dir() for d in dirs.values()) and facts.exists()
    assert oct(facts.stat().st_mode & 0o777) == "0o640"
    p = lab.start_as(name, WORKER.format(mb=1, busy=0))
    wait_ready(p)
    lab.slotctl("slot", "remove", name)
    p.wait(timeout=10)
    assert not any(d.exists() for d in dirs.values()) and not facts.exists()


def test_processes_fallback_names_its_source(lab: Lab, two: tuple[str, str]) -> None:
    """Without a cgroup backend the figures come from the slot's processes (psutil), and say so."""
    a, _ = two
    text = lab.config.read_text().replace("[metrics]\n", '[metrics]\nbackend = "processes"\n')
    other = lab.root / "processes.toml"
    other.write_text(text)
    env = {**lab.env, "SLOTWARDEN_CONFIG": str(other)}
    pids = uid_pids(pwd.getpwnam(a).pw_uid)
    cpu_before = sum(cpu_seconds(p) for p in pids)
    out = subprocess.run([SLOTCTL, "metrics", a, "--json", "--sample", "0"], env=env, capture_output=True,
                         text=True, check=True)
    m = json.loads(out.stdout)
    assert m["sources"]["cpu"].startswith("processes (psutil") and m["sources"]["memory"] == m["sources"]["cpu"]
    cpu_after = sum(cpu_seconds(p) for p in pids)
    assert {p["pid"] for p in m["processes"]} == pids
    rss_sum = sum(rss(p) for p in pids)
    assert abs(m["ram_bytes"] - rss_sum) <= 4 * MiB
    assert cpu_before - 0.01 <= m["cpu_seconds"] <= cpu_after + 0.01  # clock-tick rounding


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
