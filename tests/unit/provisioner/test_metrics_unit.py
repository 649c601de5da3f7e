"""Pure logic of metrics, the data report and retention: parsers, readers on fake trees, the exposition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from provisioner.config import validate_section
from provisioner.datareport import shadow_state
from provisioner.errors import ConfigError
from provisioner.metrics import MetricsConfig, detect_backend, me_script
from provisioner.metrics.kernel import (
    Proc,
    SlotMetrics,
    loadavg,
    parse_flat_keyed,
    parse_status,
    processes_of,
    read_cgroup_v1,
    read_cgroup_v2,
    tree_usage,
)
from provisioner.metrics.prometheus import render
from provisioner.quota.usrquota import parse_repquota


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


# --- parsers ----------------------------------------------------------------------------------


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.integers(0, 2**62), max_size=20))
def test_flat_keyed_round_trip(d: dict[str, int]) -> None:
    assert parse_flat_keyed("".join(f"{k} {v}\n" for k, v in d.items())) == d


@given(st.text(max_size=200))
def test_parsers_never_raise(text: str) -> None:
    parse_flat_keyed(text)
    parse_status(text)
    parse_repquota(text)


def test_repquota() -> None:
    text = ("*** Report for user quotas on device /dev/sdb\nBlock grace time: 7days; Inode grace time: 7days\n"
            "User            used    soft    hard  grace    used  soft  hard  grace\n"
            "----------------------------------------------------------------------\n"
            "root      --      20       0       0              2     0     0\n"
            "alice     +-    2048       0    1024   none      10     0     0\n")
    q = parse_repquota(text)
    assert q["alice"].used_bytes == 2048 * 1024 and q["alice"].limit_bytes == 1024 * 1024
    assert q["root"].limit_bytes is None


# --- readers on fake trees --------------------------------------------------------------------


def test_cgroup_v1_reader(tmp_path: Path) -> None:
    write(tmp_path, {
        "cpuacct/s/cpuacct.usage": "2500000000\n",
        "memory/s/memory.usage_in_bytes": "104857600\n",
        "memory/s/memory.stat": "cache 10\ntotal_inactive_file 4194304\ntotal_swap 8192\n",
        "memory/s/cgroup.procs": "10\n11\n",
        "blkio/s/blkio.throttle.io_service_bytes_recursive":
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\n7:1 Read 100\n7:1 Write 0\nTotal 12388\n",
    })
    f = read_cgroup_v1({c: str(tmp_path / c / "s") for c in ("cpuacct", "memory", "blkio")})
    assert (f.cpu_seconds, f.ram_bytes, f.swap_bytes) == (2.5, 96 * 2**20, 8192)  # usage - inactive file
    assert (f.read_bytes, f.write_bytes, f.pids) == (4196, 8192, frozenset({10, 11}))


def test_cgroup_v2_reader(tmp_path: Path) -> None:
    write(tmp_path, {
        "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        "memory.current": "50000000\n",
        "memory.stat": "anon 40000000\ninactive_file 1000000\n",
        "memory.swap.current": "4096\n",
        "io.stat": "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n",
        "cgroup.procs": "42\n",
    })
    f = read_cgroup_v2(str(tmp_path))
    assert (f.cpu_seconds, f.ram_bytes, f.swap_bytes) == (1.5, 49000000, 4096)
    assert (f.read_bytes, f.write_bytes, f.pids) == (101, 202, frozenset({42}))


def fake_proc(root: Path, pid: int, uid: int, comm: str = "sleep") -> None:
    fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 30
    write(root, {
        f"{pid}/status": f"Name:\t{comm}\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
                         f"VmRSS:\t   2048 kB\nVmSwap:\t      4 kB\n",
        f"{pid}/stat": f"{pid} ({comm}) " + " ".join(fields) + "\n",
        f"{pid}/cmdline": f"{comm}\x00--flag\x00",
        f"{pid}/io": "rchar: 5\nwchar: 6\nread_bytes: 4096\nwrite_bytes: 8192\n",
    })


def test_processes_of_filters_on_uid(tmp_path: Path) -> None:
    """Even where /proc shows other users (no hidepid, exempt group), only UID's processes come back."""
    fake_proc(tmp_path, 10, 1000, "a) (tricky")
    fake_proc(tmp_path, 11, 1001)
    fake_proc(tmp_path, 12, 1000)
    write(tmp_path, {"loadavg": "0.5 1.5 2.5 3/400 999\n", "self/status": "Uid:\t1000\n"})
    procs = processes_of(1000, str(tmp_path))
    assert [p.pid for p in procs] == [10, 12]
    p = procs[0]
    assert p.name == "a) (tricky" and p.rss_bytes == 2048 * 1024 and p.swap_bytes == 4096
    assert p.cpu_seconds == pytest.approx(200 / os.sysconf("SC_CLK_TCK"))
    assert (p.read_bytes, p.write_bytes, p.cmdline) == (4096, 8192, "a) (tricky --flag")
    assert loadavg(str(tmp_path)) == (0.5, 1.5, 2.5)


def test_tree_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "d" / "f", tmp_path / "g")
    os.symlink("/usr", tmp_path / "link")
    one = tree_usage(str(tmp_path))
    os.unlink(tmp_path / "g")
    assert tree_usage(str(tmp_path)) == one


@pytest.mark.parametrize(("files", "expected"), [
    ({"cgroup.controllers": "cpu memory"}, ("systemd", "cgroup-v2")),
    ({"cpuacct/cgroup.procs": "", "memory/cgroup.procs": ""}, ("cgroup-v1",)),
    ({"memory/cgroup.procs": ""}, ("processes",)),
    ({}, ("processes",)),
])
def test_detect_backend(tmp_path: Path, files: dict[str, str], expected: tuple[str, ...]) -> None:
    write(tmp_path, files)
    assert detect_backend(MetricsConfig(cgroup_root=tmp_path)) in expected


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "error"), [
    ({}, None),
    ({"backend": "cgroup-v1", "cgroup_parent": "slotwarden/test"}, None),
    ({"backend": "magic"}, "metrics.backend"),
    ({"cgroup_root": "relative"}, "metrics.cgroup_root"),
    ({"cgroup_parent": "../escape"}, "metrics.cgroup_parent"),
    ({"cgroup_parent": "/abs"}, "metrics.cgroup_parent"),
    ({"facts_dir": 3}, "metrics.facts_dir"),
    ({"colour": "blue"}, "metrics.colour"),
])
def test_metrics_config(table: dict[str, object], error: str | None) -> None:
    if error is None:
        validate_section(MetricsConfig, table)
    else:
        with pytest.raises(ConfigError, match=error):
            validate_section(MetricsConfig, table)


def test_me_script_is_self_contained() -> None:
    text = me_script(MetricsConfig(facts_dir=Path("/srv/x y")))
    assert "FACTS_DIR = '/srv/x y'" in text
    assert "import provisioner" not in text and "from provisioner" not in text
    compile(text, "slotwarden-me", "exec")


# --- exposition -------------------------------------------------------------------------------


def sample(slot: str) -> SlotMetrics:
    m = SlotMetrics(slot=slot, uid=1000, at=0.0, cpu_seconds=1.25, ram_bytes=100, swap_bytes=0, load1=0.1,
                    load5=0.2, load15=0.3, io_read_bytes=1, io_write_bytes=2, disk_used_bytes=3,
                    quota_bytes=None, disk_total_bytes=10, disk_free_bytes=5, sources={"cpu": "cgroup-v1"})
    m.processes = [Proc(1, "sh", "sh", "S", 1, 0, 0.0, None, None)]
    return m


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5, unique=True))
def test_exposition_parses_for_any_label(slots: list[str]) -> None:
    text = render([sample(s) for s in slots], 0.01)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["slot"] for s in fams["slotwarden_cpu_seconds"].samples} == set(slots)
    assert "slotwarden_quota_bytes" in fams and not fams["slotwarden_quota_bytes"].samples  # no quota: no sample
    assert fams["slotwarden_load15"].samples[0].value == 0.3


# --- data report ------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "expected"), [
    ("$y$j9T$abc$def", "set"), ("!$y$j9T$abc$def", "locked"), ("!", "none"), ("*", "none"), ("", "none"),
])
def test_shadow_state(tmp_path: Path, field: str, expected: str) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text(f"root:*:1::::::\nalice:{field}:19000:0:99999:7:::\nalicex:$6$x:1::::::\n")
    assert shadow_state("alice", shadow) == expected
    assert shadow_state("bob", shadow) == "no account"
