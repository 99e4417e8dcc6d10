"""Landlock: an unprivileged process takes away its own file-system and TCP access.

The sandbox child (infra/sandbox_child.py) calls :func:`restrict` before it reads anything
a user uploaded, so that a hostile model cannot open files outside the paths it was given,
whatever path an exploit or an external-data field names, and cannot reach the database or
the broker over TCP. Linux ≥ 5.13 has it; where the kernel lacks it, :func:`abi` returns 0
and the sandbox runs with its other limits only (SECURITY.md says so).

ctypes rather than a package: three system calls, and no well-kept binding exists on PyPI.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable
from pathlib import Path

# Same numbers on every architecture: the calls were added after the syscall tables merged.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_DIR_ONLY = sum(1 << bit for bit in range(4, 13))  # remove, make dir/file/socket/fifo/…
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is absent or disabled."""
    try:
        version = int(_libc().syscall(_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def _handled_fs(version: int) -> int:
    handled = EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | _DIR_ONLY
    if version >= 2:
        handled |= _REFER
    if version >= 3:
        handled |= _TRUNCATE
    if version >= 5:
        handled |= _IOCTL_DEV
    return handled


def restrict(*, read: Iterable[Path], write: Iterable[Path]) -> int:
    """Allow reading beneath `read` and everything beneath `write`; deny the rest, and TCP.

    Returns the ABI used (0: nothing was restricted). Irreversible for this process and
    every process it starts. Paths that do not exist are skipped.
    """
    version = abi()
    if version == 0:
        return 0
    libc = _libc()
    handled = _handled_fs(version)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if version >= 4 else 0
    attr = struct.pack("=QQQ", handled, net, 0)
    ruleset = libc.syscall(_CREATE_RULESET, attr, len(attr) if version >= 4 else 8, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, rights in ((read, READ), (write, handled)):
            for path in paths:
                _allow(libc, ruleset, Path(path), rights & handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return version


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not path.is_dir():  # a rule on a file may only carry the rights a file has
            rights &= EXECUTE | WRITE_FILE | READ_FILE | _TRUNCATE | _IOCTL_DEV
        rule = struct.pack("=Qi", rights, fd)
        if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)
