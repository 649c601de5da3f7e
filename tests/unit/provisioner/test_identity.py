"""Slot identities: the id range in the config, the allocator in the store, the account files."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import accountfiles
from provisioner.cli.slot import read_names
from provisioner.config import load_config_text
from provisioner.errors import BadInput, ConfigError, SlotError
from provisioner.store import Store


@given(st.integers(-5, 1 << 33), st.integers(-5, 1 << 33))
def test_id_range_in_config_is_validated(lo: int, hi: int) -> None:
    text = f"[slots]\nuid_min = {lo}\nuid_max = {hi}\n"
    try:
        cfg = load_config_text(text)
    except ConfigError as exc:
        assert str(exc).startswith("slots.uid_"), exc
        return
    assert 1000 <= cfg.slots.uid_min < cfg.slots.uid_max <= (1 << 31) - 1
    assert not cfg.slots.uid_min <= 65534 <= cfg.slots.uid_max


@pytest.mark.parametrize("text", ['[slots]\nuid_min = "x"\n', "[slots]\nuid_min = true\n", "[slots]\nuid_max = 1.5\n"])
def test_id_range_of_the_wrong_type_names_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^slots\.uid_"):
        load_config_text(text)


def test_default_range_avoids_useradd_and_subordinate_ranges() -> None:
    cfg = load_config_text("")
    assert (cfg.slots.uid_min, cfg.slots.uid_max) == (65536, 99999)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "retire"]), st.sampled_from("abcdef")), max_size=30),
       st.sets(st.integers(70000, 70040)))
def test_allocator_never_hands_an_id_out_twice(ops: list[tuple[str, str]], taken: set[int]) -> None:
    store = Store(Path(tempfile.mkdtemp()) / "s.db")
    handed: dict[int, str] = {}
    live: dict[str, int] = {}
    for op, name in ops:
        if op == "alloc":
            got = store.allocate_ids([name], 70000, 80000, lambda i: i in taken)[name]
            assert got not in taken
            if name in live:
                assert got == live[name], "a half-made create keeps its id"
            else:
                assert got not in handed, f"id {got} handed out twice"
            handed[got] = name
            live[name] = got
        else:
            store.retire_ids([name])
            live.pop(name, None)
    rows = store.slot_ids()
    assert len({r["id"] for r in rows}) == len(rows)
    store.close()


def test_allocator_survives_a_store_restored_from_an_older_backup(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    first = store.allocate_ids(["a"], 70000, 80000, lambda i: False)["a"]
    store.close()
    shutil.copy(db, tmp_path / "backup.db")
    store = Store(db)
    later = store.allocate_ids(["b"], 70000, 80000, lambda i: False)["b"]
    store.retire_ids(["b"])
    store.close()
    shutil.copy(tmp_path / "backup.db", db)  # the restore forgets b and its retirement
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    store = Store(db)
    again = store.allocate_ids(["c"], 70000, 80000, lambda i: False)["c"]
    assert again not in {first, later}
    store.close()


def test_allocator_refuses_a_used_up_range_and_a_corrupt_high_water(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.allocate_ids(["a", "b"], 70000, 70001, lambda i: False)
    with pytest.raises(SlotError, match="used up"):
        store.allocate_ids(["c"], 70000, 70001, lambda i: False)
    store.high_water_path.write_text("x\n")
    with pytest.raises(SlotError, match="corrupt"):
        store.allocate_ids(["d"], 70000, 80000, lambda i: False)
    store.close()


def _etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/bash\nal:x:70000:70000:s:/s/al:/bin/bash\n"
                                "bo:x:70001:70001:s:/s/bo:/bin/bash\n")
    (etc / "shadow").write_text("root:*:1::::::\nal:$y$h:1:0:99999:7:::\nbo:$y$g:1:0:99999:7:::\n")
    (etc / "group").write_text("root:x:0:\nal:x:70000:\nbo:x:70001:\nstaff:x:50:al,bo\n")
    (etc / "gshadow").write_text("root:*::\nal:!::\nbo:!::\nstaff:!:al:al,bo\n")
    (etc / "subuid").write_text("al:100000:65536\nbo:165536:65536\n")
    (etc / "subgid").write_text("al:100000:65536\nbo:165536:65536\n")
    return etc


def test_remove_accounts_drops_users_groups_memberships_and_ranges(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    accountfiles.remove_accounts(["al"], etc)
    assert (etc / "passwd").read_text() == "root:x:0:0::/root:/bin/bash\nbo:x:70001:70001:s:/s/bo:/bin/bash\n"
    assert "al" not in (etc / "shadow").read_text()
    assert (etc / "group").read_text() == "root:x:0:\nbo:x:70001:\nstaff:x:50:bo\n"
    assert (etc / "gshadow").read_text() == "root:*::\nbo:!::\nstaff:!::bo\n"
    assert (etc / "subuid").read_text() == "bo:165536:65536\n"
    assert "\nal:x:70000:" in (etc / "passwd-").read_text(), "the old version is kept as passwd-"
    assert not list(etc.glob("*.lock")), "no lock left behind"


def test_lock_and_expire_locks_hash_and_sets_day_one(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    accountfiles.lock_and_expire(["al", "bo"], etc)
    accountfiles.lock_and_expire(["al"], etc)  # idempotent: one "!" only
    lines = (etc / "shadow").read_text().splitlines()
    assert lines[1] == "al:!$y$h:1:0:99999:7::1:" and lines[2] == "bo:!$y$g:1:0:99999:7::1:"


def test_a_held_lock_is_waited_for_and_a_stale_one_broken(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    (etc / "passwd.lock").write_text("999999999")  # no such process: stale
    accountfiles.remove_accounts(["bo"], etc)
    assert "bo" not in (etc / "passwd").read_text()
    (etc / "shadow.lock").write_text("1")  # pid 1 lives: held
    with pytest.raises(SlotError, match="held by another process"), accountfiles._lock_file(etc / "shadow", 3):
        pass
    assert (etc / "shadow.lock").read_text() == "1", "another process's lock is never taken away"


# Anything but what str.splitlines() splits on.
_LINE = st.text(st.characters(blacklist_categories=("Cs",),
                              blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["al", "bo", "cy", "dee"]), _LINE), max_size=12),
       st.sets(st.sampled_from(["al", "bo", "cy", "zed"])))
def test_remove_accounts_keeps_every_other_line_as_it_was(rows: list[tuple[str, str]], gone: set[str]) -> None:
    etc = Path(tempfile.mkdtemp())
    lines = [f"{name}:{rest}" for name, rest in rows]
    (etc / "passwd").write_text("".join(ln + "\n" for ln in lines))
    accountfiles.remove_accounts(sorted(gone), etc)
    kept = (etc / "passwd").read_text().splitlines()
    assert kept == [ln for ln in lines if ln.split(":", 1)[0] not in gone]


@settings(deadline=None)
@given(st.text(max_size=300))
def test_remove_many_file_parser_takes_any_text(text: str) -> None:
    try:
        names = read_names(text)
    except BadInput:
        return
    assert all(n and n == n.strip() and not n.startswith("#") for n in names)


def test_remove_many_file_reads_names_or_create_many_csv() -> None:
    assert read_names("# old customers\nalice\n\n  bob \n") == ["alice", "bob"]
    assert read_names("username,email,country\nal,a@example.com,DE\nbo,b@example.com,FR\n") == ["al", "bo"]


# A column: anything str.split() does not split, and no lone surrogates.
_COLUMN = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=6)


@settings(deadline=None)
@given(st.lists(st.lists(_COLUMN, min_size=1, max_size=14), max_size=5))
def test_sysv_parser_never_crashes_on_odd_proc_content(rows: list[list[str]]) -> None:
    from provisioner.sweep import sysv_objects

    d = Path(tempfile.mkdtemp())
    header = "key shmid perms size cpid lpid nattch uid gid cuid cgid\n"
    (d / "shm").write_text(header + "".join(" ".join(r) + "\n" for r in rows))
    for kind, ident, owner in sysv_objects({70001}, d):
        assert kind == "shm" and owner == 70001 and isinstance(ident, int)


def test_a_legacy_uid_is_recorded_retired_and_a_live_one_of_another_name_untouched(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.retire_id(1005, "legacy")  # a slot from before the range: useradd gave it 1005
    live = store.allocate_ids(["al"], 70000, 80000, lambda i: False)["al"]
    store.retire_id(live, "someone-else")  # never retires another name's id
    rows = {r["id"]: r for r in store.slot_ids()}
    assert rows[1005]["username"] == "legacy" and rows[1005]["retired_at"] is not None
    assert rows[live]["username"] == "al" and rows[live]["retired_at"] is None
    store.close()


@pytest.mark.parametrize(("options", "mounted", "expected_steps", "expected_line"), [
    ("defaults,usrquota", {"rw", "usrquota"}, ["mount-options", "fstab-options"],
     "LABEL=slots /srv/slots ext4 defaults,usrquota,nosuid,nodev 0 2"),
    ("defaults,usrquota,suid", {"rw", "nosuid", "nodev"}, ["fstab-options"],
     "LABEL=slots /srv/slots ext4 defaults,usrquota,nosuid,nodev 0 2"),
    ("defaults,nosuid,nodev", {"rw", "nosuid", "nodev"}, [], None),
])
def test_slots_mount_gets_nosuid_nodev_live_and_in_fstab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        options: str, mounted: set[str],
                                                        expected_steps: list[str], expected_line: str | None) -> None:
    from provisioner import host

    fstab = tmp_path / "fstab"
    fstab.write_text(f"/dev/sda1 / ext4 defaults 0 1\nLABEL=slots /srv/slots ext4 {options} 0 2\n")
    monkeypatch.setattr(host, "FSTAB", fstab)
    root = tmp_path / "srv-slots"
    root.mkdir()
    monkeypatch.setattr(host, "mount_of", lambda p: (str(root), "ext4", mounted))
    fstab.write_text(fstab.read_text().replace("/srv/slots", str(root)))
    steps = host._mount_option_steps(root, persist=True)
    assert [s.name for s in steps] == expected_steps
    for s in steps:
        if s.name == "fstab-options":
            s.do()
    if expected_line is not None:
        assert fstab.read_text().splitlines() == ["/dev/sda1 / ext4 defaults 0 1",
                                                  expected_line.replace("/srv/slots", str(root))]


@given(st.text(max_size=60))
def test_a_swept_name_is_shown_without_control_characters(name: str) -> None:
    from provisioner.sweep import shown

    out = shown(name)
    assert out.isprintable() or out == ""
    assert "\x1b" not in out and "\r" not in out and "\n" not in out
    if name.isprintable() and all(not 0xD800 <= ord(c) <= 0xDFFF for c in name):
        assert out == name


def test_removals_side_by_side_each_write_the_places_cache_without_failing(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The API removes slots in parallel threads: each may find the cache stale and rewrite it."""
    import threading

    from provisioner import sweep

    barrier = threading.Barrier(8)

    def walk(scope: sweep.SweepScope, uids: set[int]) -> list[str]:
        barrier.wait(timeout=10)  # every thread walks, then all write the cache at once
        return ["/tmp"]

    monkeypatch.setattr(sweep, "walk_places", walk)
    scope = sweep.SweepScope((tmp_path / "slots",), cache=tmp_path / "sweep-places.json", max_age=3600.0)
    errors: list[BaseException] = []

    def remove() -> None:
        try:
            assert sweep.find_places(scope, {70000}) == ["/tmp"]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=remove) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(scope.cache.read_text())["places"] == ["/tmp"]  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep-places.json"]  # no temporary file left
