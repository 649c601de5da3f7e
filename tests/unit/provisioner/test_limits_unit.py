"""Limits as data: config validation, what each backend writes, how programs are placed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.config import LIMIT_KEYS, ConfigError, ResourceLimits, load_config_text, parse_limits
from provisioner.errors import BadInput
from provisioner.limits.cgroup_v1 import CgroupV1Limits, expected_v1, parent_shares
from provisioner.limits.enforcement import TMP_SIZE_REFUSED, SlotTarget, beyond_host, kernel_units_differ
from provisioner.limits.systemd import SystemdSliceLimits, expected_v2, properties
from provisioner.supervisor import Program
from provisioner.supervisor.supervisord import render_program
from provisioner.supervisor.systemd import render_dropin

CAPPED = ResourceLimits(cpu_cores=0.5, cpu_weight=50, memory_max=96 << 20, memory_high=80 << 20, swap_max=0,
                        max_processes=24, io_read_bps=10 << 20)


def test_a_plan_carries_its_limits() -> None:
    cfg = load_config_text('[plans.s]\nquota = "1G"\ncpu_cores = 0.5\nmemory_max = "96M"\nswap_max = 0\n'
                           'max_processes = 24\nio_write_bps = "10M"\n')
    lim = cfg.plans["s"].limits
    assert (lim.cpu_cores, lim.memory_max, lim.swap_max, lim.max_processes, lim.io_write_bps) == (
        0.5, 96 << 20, 0, 24, 10 << 20)
    assert cfg.plans["s"].max_processes == 24
    assert ResourceLimits.from_dict(lim.as_dict()) == lim


@pytest.mark.parametrize(("toml", "message"), [
    ("cpu_cores = 0", "plans.x.cpu_cores: expected a number of cores"),
    ("cpu_cores = true", "plans.x.cpu_cores: expected a number of cores"),
    ("cpu_cores = nan", "plans.x.cpu_cores: expected a number of cores"),
    ("cpu_weight = 0", "plans.x.cpu_weight: expected a weight 1..10000"),
    ("io_weight = 10001", "plans.x.io_weight: expected a weight"),
    ('memory_max = "lots"', "plans.x.memory_max: size 'lots' is invalid"),
    ('memory_max = "64M"\nmemory_high = "128M"', "plans.x.memory_high: larger than memory_max"),
    ("max_processes = -1", "plans.x.max_processes: expected a number of processes 0..4194304"),
    ("max_processes = 99999999", "plans.x.max_processes: expected a number of processes 0..4194304, got 99999999"),
    ('tmp_size = "0"', "plans.x.tmp_size: size '0' must be positive"),
    ('io_read_bps = "1Q"', "plans.x.io_read_bps: size '1Q' is invalid"),
])
def test_bad_limits_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(f'[plans.x]\nquota = "1G"\n{toml}\n')
    assert message in str(exc.value) and "\n" not in str(exc.value)


_value = st.one_of(st.none(), st.booleans(), st.integers(-5, 1 << 60), st.floats(allow_nan=True),
                   st.text(max_size=10))


@given(table=st.dictionaries(st.sampled_from(LIMIT_KEYS), _value, max_size=6))
def test_any_limit_table_parses_or_names_its_key(table: dict[str, object]) -> None:
    table = {k: v for k, v in table.items() if v is not None}
    try:
        lim = parse_limits("plans.p", table)
    except ConfigError as exc:
        assert str(exc).startswith("plans.p.") and "\n" not in str(exc)
    else:
        assert set(lim.set_keys()) == set(table)
        v1 = expected_v1(lim, (7, 3))
        assert all("\n" not in v for v in v1.values())
        assert all("\n" not in p for p in properties(lim, (7, 3)))


def test_v1_settings_of_a_plan() -> None:
    want = expected_v1(CAPPED, (7, 3))
    assert want == {
        "cpu/cpu.cfs_quota_us": "50000",
        "cpu/cpu.shares": "512",
        "memory/memory.limit_in_bytes": str(96 << 20),
        "memory/memory.soft_limit_in_bytes": str(80 << 20),
        "memory/memory.memsw.limit_in_bytes": str(96 << 20),
        "pids/pids.max": "24",
        "blkio/blkio.throttle.read_bps_device": f"7:3 {10 << 20}",
        "blkio/blkio.throttle.write_bps_device": "",
    }
    lifted = expected_v1(ResourceLimits(), None)
    assert lifted["pids/pids.max"] == "max" and lifted["cpu/cpu.cfs_quota_us"] == "-1"
    assert "memory/memory.memsw.limit_in_bytes" not in lifted


@given(st.integers(min_value=0, max_value=1 << 20))
def test_the_slots_parent_weighs_one_nice_0_task_per_cpu_within_the_kernel_range(cpus: int) -> None:
    shares = int(parent_shares(cpus))
    assert 1024 <= shares <= 262_144  # a nice-0 task .. the v1 cpu controller's MAX_SHARES
    assert int(parent_shares(cpus + 1)) >= shares
    assert (parent_shares(1), parent_shares(2), parent_shares(64)) == ("1024", "2048", "65536")


def test_systemd_properties_and_files_of_a_plan() -> None:
    assert properties(CAPPED, (7, 3)) == [
        "CPUQuota=50%", "CPUWeight=50", f"MemoryMax={96 << 20}", f"MemoryHigh={80 << 20}", "MemorySwapMax=0",
        "TasksMax=24", "IOWeight=", f"IOReadBandwidthMax=/dev/block/7:3 {10 << 20}", "IOWriteBandwidthMax="]
    files = expected_v2(CAPPED, (7, 3))
    assert files["cpu.max"] == "50000 100000" and files["pids.max"] == "24" and files["memory.swap.max"] == "0"
    assert files["io.max"] == f"7:3 rbps={10 << 20} wbps=max riops=max wiops=max"
    assert expected_v2(ResourceLimits(), None)["memory.max"] == "max"


def test_drift_lines_name_the_file() -> None:
    assert kernel_units_differ({"pids/pids.max": "24"}, {"pids/pids.max": "999"}) == [
        "pids/pids.max: kernel has 999, store says 24"]


def test_limits_beyond_the_host_are_named() -> None:
    assert beyond_host(ResourceLimits(cpu_cores=4, memory_max=1 << 40), cores=2, mem=8 << 30) == [
        "cpu_cores 4 exceeds this host's 2 cores", f"memory_max {1 << 40} exceeds this host's {8 << 30} bytes of RAM"]


def test_v1_refuses_what_it_cannot_enforce(tmp_path: Path) -> None:
    for ctrl in ("memory", "cpu"):
        (tmp_path / ctrl).mkdir()
        (tmp_path / ctrl / "cgroup.procs").write_text("")
    backend = CgroupV1Limits(tmp_path, "sw")
    target = SlotTarget("alice", 1001, 1001, tmp_path, None)
    missing = backend.missing(ResourceLimits(max_processes=5, tmp_size=1 << 20, swap_max=0, io_read_bps=1,
                                             cpu_cores=1), target)
    assert missing == [
        "swap_max: the memory controller has no swap accounting (boot with swapaccount=1)",
        f"max_processes: the pids cgroup controller is not mounted under {tmp_path}",
        f"io_read_bps: the blkio cgroup controller is not mounted under {tmp_path}",
    ]  # tmp_size: a tmpfs of the slot's, not a controller (provisioner.limits.tmpfs)


def test_systemd_refuses_a_tmp_size_its_app_units_would_not_get(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids io\n")
    backend = SystemdSliceLimits(tmp_path)
    target = SlotTarget("alice", 1001, 1001, tmp_path, None)
    assert backend.missing(ResourceLimits(tmp_size=1 << 20, max_processes=5), target) == [TMP_SIZE_REFUSED]


def test_supervisord_places_a_program_before_it_drops_to_the_user() -> None:
    prog = Program(app="demo", user="alice", argv=["/bin/sleep", "9"], cwd="/srv/slots/alice",
                   cgroups=("/sys/fs/cgroup/memory/sw/alice", "/sys/fs/cgroup/pids/sw/alice"))
    text = render_program(prog, Path("/l"))
    assert "\nuser=" not in text  # root until the seccomp wrapper, which becomes alice
    command = next(ln for ln in text.splitlines() if ln.startswith("command="))
    assert ("/sys/fs/cgroup/memory/sw/alice /sys/fs/cgroup/pids/sw/alice "
            "/usr/libexec/slotwarden/slotwarden-confine --user alice -- /bin/sleep 9") in command
    plain = render_program(Program(app="demo", user="alice", argv=["/bin/sleep", "9"], cwd="/"), Path("/l"))
    assert "\nuser=" not in plain and "command=/usr/libexec/slotwarden/slotwarden-confine --user alice --" in plain


def test_systemd_units_join_the_slot_slice() -> None:
    prog = Program(app="demo", user="alice", argv=["/bin/sleep", "9"], cwd="/", slice="user-1001.slice")
    assert "Slice=user-1001.slice" in render_dropin(prog).splitlines()


@pytest.mark.parametrize("bad", [("/etc/passwd",), ("/sys/fs/cgroup/../x",), ("/sys/fs/cgroup/a\nuser=root",)])
def test_a_program_refuses_a_bad_cgroup(bad: tuple[str, ...]) -> None:
    with pytest.raises(BadInput):
        Program(app="demo", user="alice", argv=["/bin/true"], cwd="/", cgroups=bad)
    with pytest.raises(BadInput):
        Program(app="demo", user="alice", argv=["/bin/true"], cwd="/", slice="x.slice\nUser=root")


@pytest.mark.parametrize("argv", [["/bin/sh", "-c", "true\nuser=root"], ["/bin/true\r"], ["/bin/true", "\x00"]])
def test_a_program_refuses_a_newline_in_its_command(argv: list[str]) -> None:
    with pytest.raises(BadInput, match="newline or NUL"):
        Program(app="demo", user="alice", argv=argv, cwd="/")


def test_systemctl_show_of_an_idle_slice_reads_as_its_cgroup_files() -> None:
    from provisioner.limits.systemd import expected_v2, from_show

    shown = {"CPUQuotaPerSecUSec": "500ms", "CPUWeight": "[not set]", "MemoryMax": str(64 << 20),
             "MemoryHigh": "infinity", "MemorySwapMax": "0", "TasksMax": "32", "IOWeight": "[not set]",
             "IOReadBandwidthMax": "", "IOWriteBandwidthMax": ""}
    want = expected_v2(ResourceLimits(cpu_cores=0.5, memory_max=64 << 20, swap_max=0, max_processes=32), (254, 16))
    assert kernel_units_differ(want, from_show(shown)) == []
    assert from_show({"CPUQuotaPerSecUSec": "1.500000s"})["cpu.max"] == "150000 100000"
    assert from_show({"IOReadBandwidthMax": "/dev/block/254:16 1048576"})["io.max"] == (
        "254:16 rbps=1048576 wbps=max riops=max wiops=max")


@given(st.dictionaries(st.sampled_from(["CPUQuotaPerSecUSec", "CPUWeight", "MemoryMax", "TasksMax", "IOWeight",
                                        "IOReadBandwidthMax"]), st.text(max_size=20), max_size=6))
def test_any_systemctl_show_output_reads_without_error(props: dict[str, str]) -> None:
    from provisioner.limits.systemd import from_show

    assert set(from_show(props)) >= {"cpu.max", "pids.max", "memory.max"}
