"""The slot tmpfs pieces that need no root: the mountinfo reader, the options, the wrapper's command."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from provisioner.limits.tmpfs import TmpUse, inode_cap, page_rounded, shrink_refusal, tmpfs_options
from provisioner.metrics.kernel import mount_fstype
from provisioner.supervisor import Program
from provisioner.supervisor.supervisord import render_program


def _escape(path: str) -> str:
    # What the kernel's mangle() writes in /proc/self/mountinfo (fs/proc_namespace.c: " \t\n\\").
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _line(mount_id: int, path: str, fstype: str) -> str:
    return f"{mount_id} 25 0:{mount_id} / {_escape(path)} rw,nosuid,nodev shared:1 - {fstype} src rw\n"


_paths = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                 max_size=30).map(lambda s: "/" + s)


@given(path=_paths, other=_paths, fstype=st.sampled_from(["tmpfs", "btrfs", "ext4"]))
def test_the_top_mount_on_a_path_is_found_whatever_its_name(path: str, other: str, fstype: str) -> None:
    info = _line(30, path, "btrfs") + _line(31, other, "ext4") + _line(32, path, fstype)
    assert mount_fstype(path, info) == fstype  # the last mount on PATH is the one seen
    if other != path:
        assert mount_fstype(path + "x", _line(31, path, "tmpfs")) is None


@given(junk=st.text(max_size=200))
def test_any_mountinfo_text_reads_without_error(junk: str) -> None:
    found = mount_fstype("/var/lib/slotwarden/slot-tmp/65536", junk)
    assert found is None or (found in junk and " " not in found and "\n" not in found)


def test_options_and_rounding() -> None:
    assert tmpfs_options(8 << 20) == "size=8388608,nr_inodes=3072,mode=0711,uid=0,gid=0,nosuid,nodev"
    assert page_rounded(8 << 20) == 8 << 20 and page_rounded((8 << 20) + 1) == (8 << 20) + page_rounded(1)


@given(size=st.integers(4096, 1 << 40), used=st.integers(0, 1 << 41), files=st.integers(0, 1 << 30))
def test_a_shrink_is_refused_exactly_when_what_is_stored_does_not_fit(size: int, used: int, files: int) -> None:
    line = shrink_refusal("alice", TmpUse(size * 2, used, 0, files), size)
    fits = used <= size and files <= inode_cap(size)
    assert (line is None) == fits
    if line is not None:
        assert "\n" not in line and line.startswith("tmp_size: alice keeps ")
        assert (str(used) if used > size else str(files)) in line


def test_supervisord_tells_the_wrapper_where_the_slot_tmpfs_are() -> None:
    prog = Program(app="demo", user="alice", argv=["/bin/sleep", "9"], cwd="/srv/slots/alice",
                   tmpfs_root="/var/lib/slotwarden/slot-tmp")
    conf = render_program(prog, log_dir=Path("/var/log/x"), confine="/w")
    assert "command=/w --user alice --tmpfs-root /var/lib/slotwarden/slot-tmp -- /bin/sleep 9" in conf
