"""Finding sandbox processes that outlived their run (shared by the sandbox tests; standard library only, so that the
adversarial suite can import it as the unprivileged uid too)."""

from __future__ import annotations

import os

#: Programs that launch a sandbox: a chain of them sits between the launching Python process and the sandbox.
LAUNCHERS = ("bwrap", "unshare", "setpriv")


def stat_ppid(pid: int) -> int:
    """The parent pid of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _arguments(pid: int) -> list[str]:
    """The command-line arguments of ``pid`` (``[]`` when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def argv0(pid: int) -> str:
    """The program name of ``pid`` ("" when it is gone or unreadable)."""
    arguments = _arguments(pid)
    return os.path.basename(arguments[0]) if arguments else ""


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments separated by spaces ("" when it is gone or unreadable)."""
    return " ".join(_arguments(pid))


def is_survivor(pid: int, markers: tuple[str, ...] = ("/sandbox/boot.py",)) -> bool:
    """A sandbox process that is outside every live sandbox launch, or inside one this test process started (and
    should have killed). The sandboxes of other processes on the machine (another test run, a training run whose
    critic runs unit tests) are not ours to judge: their launcher chain (``setpriv`` / ``bwrap`` / ``unshare``)
    hangs below another live process. A process that only calls itself ``bwrap`` does not hide that way: a launcher
    chain that hangs below init (orphaned) or below a sandbox process (one whose command line has a marker) does not
    count as somebody else's launch."""
    ancestor = pid
    while ancestor > 1:
        if argv0(ancestor) in LAUNCHERS:
            launcher = ancestor
            while argv0(stat_ppid(launcher)) in LAUNCHERS:
                launcher = stat_ppid(launcher)
            parent = stat_ppid(launcher)
            if parent == os.getpid() or parent <= 1:
                return True
            if not any(marker in cmdline(parent) for marker in markers):
                return False  # a live launch of another process
            ancestor = parent  # a "launcher" inside a sandbox: keep walking up
            continue
        ancestor = stat_ppid(ancestor)
    return True


def surviving_sandbox_processes(markers: tuple[str, ...] = ("/sandbox/boot.py",)) -> set[tuple[int, str]]:
    """``(pid, command line)`` of every process whose command line contains one of ``markers`` and that
    :func:`is_survivor` counts."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        line = cmdline(int(pid))
        if any(marker in line for marker in markers) and is_survivor(int(pid), markers):
            found.add((int(pid), line))
    return found
