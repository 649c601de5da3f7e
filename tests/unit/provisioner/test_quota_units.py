"""Pure parts of the quota backends: the commands they build, the kernel records they parse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.errors import SlotError
from provisioner.quota.btrfs_tree import (
    QGROUP_INFO_KEY,
    QGROUP_LIMIT_KEY,
    QGROUP_RELATION_KEY,
    QGROUP_STATUS_KEY,
    ROOT_BACKREF_KEY,
    Item,
    QuotaFacts,
    facts_from_items,
    parse_search_buffer,
    qgroup_name,
    qgroupid,
)
from provisioner.quota.usrquota import MIN_INODES, inode_limit, quota_problems, setquota_argv


@pytest.mark.parametrize(("limit", "per_inode", "expected"), [
    (1 << 30, 16384, ["setquota", "-u", "u1", "0", "1048576", "0", "65536", "/srv"]),
    (16 << 20, 16384, ["setquota", "-u", "u1", "0", "16384", "0", str(MIN_INODES), "/srv"]),
    (100, 16384, ["setquota", "-u", "u1", "0", "1", "0", str(MIN_INODES), "/srv"]),
    (10 << 30, 4096, ["setquota", "-u", "u1", "0", str(10 << 20), "0", str(10 << 18), "/srv"]),
])
def test_setquota_caps_blocks_and_inodes(limit: int, per_inode: int, expected: list[str]) -> None:
    assert setquota_argv("u1", "/srv", limit, per_inode) == expected


@given(st.integers(0, 1 << 50), st.integers(-5, 1 << 30))
def test_inode_limit_is_never_zero(limit: int, per_inode: int) -> None:
    assert inode_limit(limit, per_inode) >= MIN_INODES


QUOTA_OUT = ("Disk quotas for user u1 (uid 5000):\n"
             "     Filesystem  blocks   quota   limit   grace   files   quota   limit   grace\n")


@pytest.mark.parametrize(("row", "limit", "expected"), [
    ("/srv 100 0 16384 0 10 0 1024 0", 16 << 20, []),
    ("/srv 100 0 16384 0 10 0 0 0", 16 << 20, ["no inode limit"]),
    ("/srv 20000* 0 16384 0 10 0 1024 0", 16 << 20, ["uses 20000 KiB, above its limit of 16384 KiB"]),
    ("/srv 100 0 16384 0 2000* 0 1024 0", 16 << 20, ["owns 2000 inodes, above its limit of 1024"]),
    ("/other 100 0 16384 0 10 0 0 0", 16 << 20, ["no user quota on /srv"]),
    ("/other 100 0 16384 0 10 0 0 0", None, []),
])
def test_quota_problems(row: str, limit: int | None, expected: list[str]) -> None:
    assert quota_problems(QUOTA_OUT + row + "\n", "/srv", limit) == expected


@given(st.text(max_size=300))
def test_quota_problems_never_raises(text: str) -> None:
    assert isinstance(quota_problems(text, "/srv", 1 << 20), list)


def _item(objectid: int, typ: int, offset: int, data: bytes = b"") -> bytes:
    return struct.pack("=3Q2I", 1, objectid, offset, typ, len(data)) + data


def test_search_buffer_and_facts() -> None:
    g = qgroupid(1, 256)
    raw = b"".join([
        _item(257, ROOT_BACKREF_KEY, 256, b"x" * 18),
        _item(258, ROOT_BACKREF_KEY, 257),
        _item(256, ROOT_BACKREF_KEY, 5),
        _item(0, QGROUP_STATUS_KEY, 0, b"\0" * 40),
        _item(0, QGROUP_INFO_KEY, g, struct.pack("=5Q", 1, 5000, 5000, 5000, 5000)),
        _item(0, QGROUP_LIMIT_KEY, g, struct.pack("=5Q", 1, 20 << 20, 0, 0, 0)),
        _item(0, QGROUP_LIMIT_KEY, qgroupid(0, 257), struct.pack("=5Q", 0, 0, 0, 0, 0)),
        _item(qgroupid(0, 256), QGROUP_RELATION_KEY, g),
        _item(g, QGROUP_RELATION_KEY, qgroupid(0, 256)),
    ])
    items = parse_search_buffer(raw, 9)
    assert [i.type for i in items][:3] == [ROOT_BACKREF_KEY] * 3
    facts = facts_from_items(items[:3], items[3:])
    assert facts.enabled
    assert facts.parents == {257: 256, 258: 257, 256: 5}
    assert facts.descendants(256) == [258, 257]  # deepest first
    assert facts.descendants(5) == [258, 257, 256]
    assert facts.referenced == {g: 5000}
    assert facts.max_referenced == {g: 20 << 20}  # an unflagged limit is no limit
    assert facts.members(g) == {qgroupid(0, 256)}
    assert qgroup_name(g) == "1/256"


def test_descendants_survive_a_loop() -> None:
    facts = QuotaFacts(parents={300: 301, 301: 300, 302: 256})
    assert facts.descendants(256) == [302]
    assert facts.descendants(300) == [301]


@given(st.binary(max_size=400), st.integers(0, 20))
def test_search_buffer_parser_only_raises_slot_errors(buf: bytes, n: int) -> None:
    try:
        items = parse_search_buffer(buf, n)
    except SlotError:
        return
    assert len(items) == n
    facts_from_items(items, items)


@given(st.lists(st.tuples(st.integers(256, 300), st.integers(5, 300)), max_size=30), st.integers(5, 300))
def test_descendants_never_include_the_subvolume_itself_and_terminate(edges: list[tuple[int, int]], top: int) -> None:
    facts = QuotaFacts(parents=dict(edges))
    out = facts.descendants(top)
    assert top not in out and len(out) == len(set(out))
    assert isinstance(facts_from_items([Item(c, ROOT_BACKREF_KEY, p, b"") for c, p in edges], []), QuotaFacts)
