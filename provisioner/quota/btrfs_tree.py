"""What the btrfs backend reads from (and asks of) the kernel directly, by ioctl, never by name.

``btrfs subvolume list`` prints the paths of subvolumes, and a tenant names its own: a name
holding a newline can forge a whole line (``ID <another home> ... parent <my home>``), and a
parser trusting it would delete or re-limit another slot. So the facts every quota decision
rests on come from ``BTRFS_IOC_TREE_SEARCH`` on the root tree (``ROOT_BACKREF`` items: child
subvolume, parent subvolume) and on the quota tree (qgroup info, limits, relations): numbers
only. The parsers are pure and take the raw search buffers.

>>> qgroupid(1, 258)
281474976710914
>>> qgroup_name(qgroupid(1, 258))
'1/258'
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import SlotError

log = logging.getLogger("slotwarden.btrfs")

# include/uapi/linux/btrfs.h and btrfs_tree.h
_MAGIC = 0x94
_SEARCH_ARGS_SIZE = 4096
_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # tree_id, min/max objectid, offset, transid; types, nr_items
_SEARCH_HEADER = struct.Struct("=3Q2I")  # transid, objectid, offset, type, len
ROOT_TREE_OBJECTID = 1
QUOTA_TREE_OBJECTID = 8
ROOT_BACKREF_KEY = 144
ROOT_REF_KEY = 156
QGROUP_STATUS_KEY = 240
QGROUP_INFO_KEY = 242
QGROUP_LIMIT_KEY = 244
QGROUP_RELATION_KEY = 246
FIRST_FREE_OBJECTID = 256
LAST_FREE_OBJECTID = (1 << 64) - 256
QUOTA_CTL_ENABLE = 1
QUOTA_CTL_ENABLE_SIMPLE_QUOTA = 4
_U64_MAX = (1 << 64) - 1


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (_MAGIC << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (_MAGIC << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (_MAGIC << 8) | nr


TREE_SEARCH = _iowr(17, _SEARCH_ARGS_SIZE)
SUBVOL_CREATE = _iow(14, 4096)
QGROUP_ASSIGN = _iow(41, 24)
QGROUP_CREATE = _iow(42, 16)
QGROUP_LIMIT = _ior(43, 48)
LIMIT_MAX_RFER = 1
NO_LIMIT = _U64_MAX
INO_LOOKUP = _iowr(18, 4096)
QUOTA_CTL = _iowr(40, 16)
FS_INFO = _ior(31, 1024)


def qgroupid(level: int, sub: int) -> int:
    """The kernel's 64-bit qgroup id of LEVEL/SUB."""
    return (level << 48) | sub


def qgroup_name(qid: int) -> str:
    """``level/id`` as btrfs-progs writes it."""
    return f"{qid >> 48}/{qid & ((1 << 48) - 1)}"


@dataclass(frozen=True)
class Item:
    """One item of a tree search: its key and its raw data."""

    objectid: int
    type: int
    offset: int
    data: bytes


def parse_search_buffer(buf: bytes, nr_items: int) -> list[Item]:
    """The NR_ITEMS items of a tree-search result buffer (pure)."""
    items: list[Item] = []
    pos = 0
    for _ in range(nr_items):
        if pos + _SEARCH_HEADER.size > len(buf):
            raise SlotError("btrfs tree search: truncated result")
        _transid, objectid, offset, typ, length = _SEARCH_HEADER.unpack_from(buf, pos)
        pos += _SEARCH_HEADER.size
        if pos + length > len(buf):
            raise SlotError("btrfs tree search: truncated item")
        items.append(Item(objectid, typ, offset, bytes(buf[pos:pos + length])))
        pos += length
    return items


def _search(fd: int, tree: int, min_type: int, max_type: int,
            min_objectid: int = 0, max_objectid: int = _U64_MAX,
            min_offset: int = 0, max_offset: int = _U64_MAX) -> Iterator[Item]:
    """Every item of TREE with a type in [MIN_TYPE, MAX_TYPE] between the keys
    (MIN_OBJECTID, MIN_TYPE, MIN_OFFSET) and (MAX_OBJECTID, MAX_TYPE, MAX_OFFSET), in key order."""
    objectid, typ, offset = min_objectid, min_type, min_offset
    while True:
        key = _SEARCH_KEY.pack(tree, objectid, max_objectid, offset, max_offset, 0, _U64_MAX,
                               typ, max_type, 4096, 0, 0, 0, 0, 0)
        args = bytearray(key.ljust(_SEARCH_ARGS_SIZE, b"\0"))
        fcntl.ioctl(fd, TREE_SEARCH, args)
        nr = _SEARCH_KEY.unpack_from(args, 0)[9]
        if nr == 0:
            return
        items = parse_search_buffer(bytes(args[_SEARCH_KEY.size:]), nr)
        for item in items:
            if min_type <= item.type <= max_type:
                yield item
        last = items[-1]
        # The next key after the last one returned (objectid, type, offset) order.
        objectid, typ, offset = last.objectid, last.type, last.offset + 1
        if last.offset == _U64_MAX:
            objectid, typ, offset = last.objectid, last.type + 1, 0
            if typ > 255:
                objectid, typ = objectid + 1, 0
        if objectid > max_objectid:
            return


@dataclass
class QuotaFacts:
    """A snapshot of one filesystem's subvolume tree and qgroups (numbers, no names)."""

    parents: dict[int, int] = field(default_factory=dict)  # subvolume id -> parent subvolume id
    referenced: dict[int, int] = field(default_factory=dict)  # qgroupid -> referenced bytes
    max_referenced: dict[int, int] = field(default_factory=dict)  # qgroupid -> limit (only limited ones)
    memberships: dict[int, set[int]] = field(default_factory=dict)  # qgroupid -> parent qgroupids
    enabled: bool = False

    def descendants(self, subvol: int) -> list[int]:
        """Every subvolume nested (at any depth) in SUBVOL, deepest first."""
        children: dict[int, list[int]] = {}
        for child, parent in self.parents.items():
            children.setdefault(parent, []).append(child)
        order: list[int] = []
        stack = [(c, 1) for c in children.get(subvol, [])]
        depth: dict[int, int] = {}
        while stack:
            sid, d = stack.pop()
            if sid in depth or sid == subvol:  # a loop cannot happen in a sane tree; never spin on one
                continue
            depth[sid] = d
            order.append(sid)
            stack.extend((c, d + 1) for c in children.get(sid, []))
        return sorted(order, key=lambda s: (-depth[s], s))

    def members(self, group: int) -> set[int]:
        """The qgroups directly in GROUP."""
        return {q for q, ps in self.memberships.items() if group in ps}


def facts_from_items(root_items: list[Item], quota_items: list[Item]) -> QuotaFacts:
    """Build :class:`QuotaFacts` from root-tree and quota-tree items (pure)."""
    facts = QuotaFacts()
    for it in root_items:
        if it.type == ROOT_BACKREF_KEY:
            facts.parents[it.objectid] = it.offset
    for it in quota_items:
        if it.type == QGROUP_STATUS_KEY:
            facts.enabled = True
        elif it.type == QGROUP_INFO_KEY and len(it.data) >= 24:
            _gen, rfer = struct.unpack_from("=2Q", it.data, 0)
            facts.referenced[it.offset] = rfer
        elif it.type == QGROUP_LIMIT_KEY and len(it.data) >= 16:
            flags, max_rfer = struct.unpack_from("=2Q", it.data, 0)
            if flags & 1 and max_rfer:  # BTRFS_QGROUP_LIMIT_MAX_RFER
                facts.max_referenced[it.offset] = max_rfer
        elif it.type == QGROUP_RELATION_KEY and it.objectid < it.offset:
            # Each relation is stored twice; (child, parent) has the smaller id first, as a
            # level-0 qgroup's id is always below a level-1 one's.
            facts.memberships.setdefault(it.objectid, set()).add(it.offset)
    return facts


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_facts(mountpoint: Path) -> QuotaFacts:
    """Subvolume parents and every qgroup's usage, limit and relations, straight from the trees."""
    fd = _open_dir(mountpoint)
    try:
        root_items = list(_search(fd, ROOT_TREE_OBJECTID, ROOT_BACKREF_KEY, ROOT_BACKREF_KEY,
                                  FIRST_FREE_OBJECTID, LAST_FREE_OBJECTID))
        try:
            quota_items = list(_search(fd, QUOTA_TREE_OBJECTID, QGROUP_STATUS_KEY, QGROUP_RELATION_KEY))
        except OSError:  # ENOENT: quotas are off, there is no quota tree
            quota_items = []
    except OSError as exc:
        raise SlotError(f"cannot read the btrfs trees of {mountpoint}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return facts_from_items(root_items, quota_items)


def subvolume_id(path: Path) -> int:
    """The id of the subvolume holding PATH (BTRFS_IOC_INO_LOOKUP; PATH itself never followed)."""
    try:
        fd = _open_dir(path)
    except OSError as exc:
        raise SlotError(f"{path}: {exc.strerror}") from None
    try:
        args = bytearray(struct.pack("=2Q", 0, FIRST_FREE_OBJECTID).ljust(4096, b"\0"))
        fcntl.ioctl(fd, INO_LOOKUP, args)
    except OSError as exc:
        raise SlotError(f"{path} is not on btrfs: {exc.strerror}") from None
    finally:
        os.close(fd)
    return int(struct.unpack_from("=Q", args, 0)[0])


def is_subvolume_root(path: Path) -> bool:
    """Whether PATH (not followed) is the top directory of a btrfs subvolume: inode 256 on btrfs."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_ino != FIRST_FREE_OBJECTID:
        return False
    try:
        subvolume_id(path)
    except SlotError:
        return False
    return True


def create_subvolume(parent: Path, name: str) -> None:
    """Make the subvolume PARENT/NAME (BTRFS_IOC_SUBVOL_CREATE; PARENT is root's, not followed)."""
    raw = name.encode()
    if not raw or b"/" in raw or b"\0" in raw or name in (".", "..") or len(raw) > 4087:
        raise SlotError(f"bad subvolume name {name!r}")
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, SUBVOL_CREATE, bytearray(struct.pack("=q", 0) + raw.ljust(4088, b"\0")))
    except OSError as exc:
        raise SlotError(f"cannot create subvolume {parent / name}: {exc.strerror}") from None
    finally:
        os.close(fd)


def qgroup_change(mountpoint: Path, op: str, *args: int) -> None:
    """One qgroup change by ioctl: ``create Q``, ``destroy Q``, ``assign CHILD PARENT``,
    ``remove CHILD PARENT`` or ``limit Q BYTES`` (:data:`NO_LIMIT` lifts it).

    Raises OSError with the kernel's errno (EEXIST, ENOENT, EBUSY...). Never a rescan: an
    assignment the kernel cannot account at once is left for the operator, as no change of one
    slot may rescan the whole filesystem.
    """
    if op in ("create", "destroy"):
        nr, buf = QGROUP_CREATE, struct.pack("=2Q", 1 if op == "create" else 0, *args)
    elif op in ("assign", "remove"):
        nr, buf = QGROUP_ASSIGN, struct.pack("=3Q", 1 if op == "assign" else 0, *args)
    elif op == "limit":
        qid, limit = args
        nr, buf = QGROUP_LIMIT, struct.pack("=6Q", qid, LIMIT_MAX_RFER, limit, 0, 0, 0)
    else:
        raise SlotError(f"unknown qgroup change {op!r}")
    log.debug("btrfs qgroup %s %s on %s", op, args, mountpoint)
    fd = _open_dir(mountpoint)
    try:
        fcntl.ioctl(fd, nr, bytearray(buf))
    finally:
        os.close(fd)


def read_slot_facts(mountpoint: Path, subvol: int) -> QuotaFacts:
    """What :func:`read_facts` says about SUBVOL's slot only, read with exact-key searches.

    Costs a few searches per subvolume of this slot, however many slots the filesystem holds
    (a create or removal must not walk every other slot's trees): the subvolumes nested in
    SUBVOL (``ROOT_REF`` items of each parent), their qgroups' memberships, the members of the
    slot's group ``1/SUBVOL`` (and whether their subvolumes still exist), and the group's and
    the home's usage and limit.
    """
    group = qgroupid(1, subvol)
    fd = _open_dir(mountpoint)
    root_items: list[Item] = []
    quota_items: list[Item] = []

    def q(typ: int, objectid: int, offset: int | None = None) -> list[Item]:
        lo, hi = (0, _U64_MAX) if offset is None else (offset, offset)
        try:
            return list(_search(fd, QUOTA_TREE_OBJECTID, typ, typ, objectid, objectid, lo, hi))
        except OSError:  # ENOENT: quotas are off
            return []

    try:
        frontier = [subvol]
        seen = {subvol}
        while frontier:
            parent = frontier.pop()
            for it in _search(fd, ROOT_TREE_OBJECTID, ROOT_REF_KEY, ROOT_REF_KEY, parent, parent):
                child = it.offset
                root_items.append(Item(child, ROOT_BACKREF_KEY, parent, b""))
                if child not in seen:
                    seen.add(child)
                    frontier.append(child)
        for sid in seen:
            quota_items += q(QGROUP_RELATION_KEY, qgroupid(0, sid))
        members = q(QGROUP_RELATION_KEY, group)
        for it in members:  # (group, RELATION, member): stored the other way round too
            quota_items.append(Item(it.offset, QGROUP_RELATION_KEY, group, b""))
            sid = it.offset & ((1 << 48) - 1)
            if it.offset >> 48 == 0 and sid not in seen:
                root_items += _search(fd, ROOT_TREE_OBJECTID, ROOT_BACKREF_KEY, ROOT_BACKREF_KEY, sid, sid)
        for qid in (group, qgroupid(0, subvol)):
            quota_items += q(QGROUP_INFO_KEY, 0, qid) + q(QGROUP_LIMIT_KEY, 0, qid)
        quota_items += q(QGROUP_STATUS_KEY, 0, 0)
    except OSError as exc:
        raise SlotError(f"cannot read the btrfs trees of {mountpoint}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return facts_from_items(root_items, quota_items)


def fsid(mountpoint: Path) -> str:
    """The filesystem's UUID (its directory name under /sys/fs/btrfs)."""
    fd = _open_dir(mountpoint)
    try:
        buf = bytearray(1024)
        fcntl.ioctl(fd, FS_INFO, buf)
    finally:
        os.close(fd)
    raw = bytes(buf[16:32]).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def quota_mode(mountpoint: Path) -> str:
    """``squota`` (simple quotas), ``qgroup`` (full accounting) or ``disabled``."""
    try:
        qgroups = Path(f"/sys/fs/btrfs/{fsid(mountpoint)}/qgroups")
    except OSError:
        return "disabled"
    if not qgroups.is_dir():
        return "disabled"
    try:
        return (qgroups / "mode").read_text().strip()
    except OSError:  # kernels before 6.7 have full accounting only, and no mode file
        return "qgroup"


def simple_quota_supported() -> bool:
    """Whether this kernel has simple quotas (6.7+), whose new subvolumes join their parent's groups."""
    return Path("/sys/fs/btrfs/features/simple_quota").exists()


def enable_quota(mountpoint: Path, simple: bool) -> None:
    """Turn quotas on (BTRFS_IOC_QUOTA_CTL): simple quotas when SIMPLE, full accounting otherwise."""
    fd = _open_dir(mountpoint)
    try:
        cmd = QUOTA_CTL_ENABLE_SIMPLE_QUOTA if simple else QUOTA_CTL_ENABLE
        fcntl.ioctl(fd, QUOTA_CTL, bytearray(struct.pack("=2Q", cmd, 0)))
    except OSError as exc:
        raise SlotError(f"cannot enable btrfs quotas on {mountpoint}: {exc.strerror}") from None
    finally:
        os.close(fd)
