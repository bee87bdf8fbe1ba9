"""Owned names and owner records: encode/parse round trips, strictness, liveness.

Pure functions and /proc reads: no root, no interface is created here (the
sweep itself is tested over real veth pairs in test_sweep.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xport._topology import (
    PID_MAX_LIMIT,
    ROLES,
    OwnedName,
    Owner,
    current_owner,
    owned_name,
    owner_alive,
    parse_owned_name,
)

HEX = "0123456789abcdef"
roles = st.sampled_from(ROLES)
pids = st.integers(1, PID_MAX_LIMIT)
rands = st.text(HEX, min_size=6, max_size=6)


@given(roles, pids, rands)
def test_round_trip(role: str, pid: int, rand: str) -> None:
    name = owned_name(role, pid, rand)  # type: ignore[arg-type]
    assert len(name) == 14 and len(name.encode()) < 16  # IFNAMSIZ: 15 bytes and the NUL
    assert name.isascii() and name.isalnum() and name == name.lower()
    parsed = parse_owned_name(name)
    assert parsed == OwnedName(role, pid, rand)  # type: ignore[arg-type]
    assert parsed.name == name
    # the three names of one pair share the token, and only the role differs
    assert {parse_owned_name(owned_name(r, pid, rand)).token  # type: ignore[union-attr]
            for r in ROLES} == {name[3:]}


@given(st.text(max_size=20))
def test_arbitrary_text_is_ours_only_when_it_re_encodes_exactly(name: str) -> None:
    parsed = parse_owned_name(name)
    assert parsed is None or parsed.name == name


@given(st.from_regex(r"mx[ahn][0-9a-z]{5}[0-9a-f]{6}", fullmatch=True))
def test_pattern_shaped_names_parse_iff_the_pid_can_exist(name: str) -> None:
    pid = int(name[3:8], 36)
    parsed = parse_owned_name(name)
    if 1 <= pid <= PID_MAX_LIMIT:
        assert parsed is not None and parsed.pid == pid and parsed.name == name
    else:
        assert parsed is None


@given(roles, pids, rands, st.data())
def test_any_one_character_change_outside_the_alphabet_is_not_ours(
        role: str, pid: int, rand: str, data: st.DataObject) -> None:
    name = owned_name(role, pid, rand)  # type: ignore[arg-type]
    i = data.draw(st.integers(0, len(name) - 1))
    allowed = {0: "m", 1: "x", 2: "ahn"}.get(i, "0123456789abcdefghijklmnopqrstuvwxyz"
                                               if i < 8 else HEX)
    c = data.draw(st.characters().filter(lambda ch: ch not in allowed))
    assert parse_owned_name(name[:i] + c + name[i + 1:]) is None
    assert parse_owned_name(name + data.draw(st.text(min_size=1, max_size=3))) is None
    assert parse_owned_name(name[:i] + name[i + 1:]) is None


@pytest.mark.parametrize("name", [
    "", "eth0", "lo", "veth0", "mxa", "mxac86245", "mxhc86245", "mux1a2b3c",  # the old names
    "mxa00000abcdef",  # pid 0
    "mxa2hwchabcdef",  # pid 4194305, above PID_MAX_LIMIT
    "MXA00ilx3f9a1c", "mxA00ilx3f9a1c", "mxa00ILX3f9a1c", "mxa00ilx3F9A1C",
    "mxb00ilx3f9a1c", " mxa00ilx3f9a1c", "mxa00ilx3f9a1c\n", "mxa00ilx3f9a1g",
])
def test_near_misses_are_not_ours(name: str) -> None:
    assert parse_owned_name(name) is None


def test_encoding_is_base36_of_the_pid() -> None:
    assert owned_name("a", 24117, "3f9a1c") == "mxa00ilx3f9a1c"
    assert owned_name("n", PID_MAX_LIMIT, "ffffff") == "mxn2hwcgffffff"
    with pytest.raises(ValueError):
        owned_name("a", 0, "abcdef")
    with pytest.raises(ValueError):
        owned_name("a", PID_MAX_LIMIT + 1, "abcdef")
    with pytest.raises(ValueError):
        owned_name("a", 1, "ABCDEF")
    with pytest.raises(ValueError):
        owned_name("x", 1, "abcdef")  # type: ignore[arg-type]


@given(st.integers(1, 2**31), st.integers(0, 2**63), st.integers(0, 2**63))
def test_owner_alias_round_trip(pid: int, start: int, pidns: int) -> None:
    owner = Owner(pid, start, pidns)
    assert len(owner.alias) < 128  # IFALIASZ is 256
    assert Owner.parse_alias(owner.alias) == owner


@given(st.text(max_size=80))
def test_arbitrary_alias_is_ours_only_when_it_re_encodes_exactly(alias: str) -> None:
    owner = Owner.parse_alias(alias)
    assert owner is None or owner.alias == alias


def test_owner_liveness_guards_against_pid_reuse() -> None:
    me = current_owner()
    assert me.pid == os.getpid() and me.start is not None and me.pidns is not None
    assert owner_alive(me)
    assert owner_alive(Owner(os.getpid()))  # no start time recorded: the pid decides
    # same pid, another start time: the pid was reused, the owner is gone
    assert not owner_alive(Owner(me.pid, me.start + 1, me.pidns))
    # another pid namespace cannot be judged from here: counted alive
    assert owner_alive(Owner(me.pid, me.start + 1, me.pidns + 1))


def test_dead_and_zombie_owners_are_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while True:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not owner_alive(Owner(child.pid))
    child.wait()
    assert not owner_alive(Owner(child.pid))
