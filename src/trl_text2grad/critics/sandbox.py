"""Run untrusted, model-written Python in a contained child process.

:func:`run_python` is what :class:`~trl_text2grad.critics.unit_tests.UnitTestCritic` uses to execute a response
against its task's unit tests. Containment is layered; each layer is used where the machine allows it and
:func:`sandbox_capabilities` reports which ones are active:

* **separate process**, started in its own session; a **wall-clock timeout** kills the whole process group
  (``SIGKILL``), and with a PID namespace (below) every process the program started dies with it;
* **resource limits** (``prlimit``/``setrlimit``): address space (``memory_mb``), CPU seconds, number of
  processes, size of written files, open files, no core dumps;
* **no network**: a fresh network namespace (``unshare --net``, only a down loopback inside) where the kernel allows
  it, *and* in every case a Python-level guard that makes socket creation raise;
* **unprivileged user**: when the parent runs as root, the child runs as ``nobody`` (``setpriv``), so it cannot
  write or delete files outside its working directory and ``RLIMIT_NPROC`` actually binds (it does not for root);
* **private /tmp and /dev/shm**: with the namespaces above, the child also gets its own mount namespace in which
  ``/tmp`` and ``/dev/shm`` are fresh, size-limited ``tmpfs`` mounts (``tmp_size_mb`` each; only the sandbox's own
  directory is bound back in), so nothing it writes there reaches the host's ``/tmp`` and it cannot read the
  host's; where mount namespaces are not permitted this layer is skipped (logged once) and the child shares the
  host's ``/tmp``, protected only by the guard and, when it runs as ``nobody``, file permissions;
* **fresh working directory** (removed afterwards), ``HOME``/``TMPDIR`` pointing into it, a **scrubbed
  environment** (only ``PATH``/``LANG``/``HOME``/``TMPDIR``: no API keys or tokens), ``python -I -B``;
* **Python-level guard** loaded before the program: ``os.system``/``fork``/``exec*``/``spawn*``/``kill``,
  ``subprocess``, ``ctypes`` and sockets raise :class:`SandboxViolation`; ``open`` for writing outside the
  working directory raises ``PermissionError``. The guard alone is bypassable by determined code; the OS layers
  above are what contain it.
* **capped output**: stdout/stderr go to files (capped by ``RLIMIT_FSIZE``) of which the first
  ``max_output_bytes`` are read back.

The result says whether the program exited with status 0 (``passed``) and, when not, a short ``reason``
("timeout after 2.0 s wall clock", "memory limit (1024 MB) exceeded", "forbidden operation: os.system", ...).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = ["SandboxResult", "SandboxUnavailableError", "run_python", "sandbox_capabilities", "PROGRAM_FILENAME"]

#: Name of the program file inside the sandbox; tracebacks refer to it (``File ".../main.py", line N``).
PROGRAM_FILENAME = "main.py"
_GUARD_FILENAME = "_sandbox_guard.py"
_NOBODY_UID = 65534
_NOBODY_GID = 65534
_SAFE_ENV_KEYS = ("LANG", "LC_ALL")
#: After a failed run the sandbox checks itself with a trivial program; a healthy verdict is reused this long.
_HEALTH_RECHECK_S = 60.0
_last_healthy: dict[str | None, float] = {}


class SandboxUnavailableError(RuntimeError):
    """The sandbox itself is broken: a trivial program (``pass``) fails in it too, so a failing run says nothing
    about the judged code. Raised by :func:`run_python` instead of reporting the program as failed."""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    Args:
        passed: The program exited with status 0 within its limits.
        returncode: Exit status (negative: killed by that signal), ``None`` if it could not be started.
        stdout: Captured standard output (first ``max_output_bytes``, decoded with replacement).
        stderr: Captured standard error (same cap).
        timed_out: Killed by the wall-clock timeout.
        reason: ``"passed"`` or a one-line explanation of the failure.
        duration_s: Wall-clock seconds the run took.
        output_truncated: stdout or stderr was longer than the cap.
    """

    passed: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    reason: str
    duration_s: float = 0.0
    output_truncated: bool = False


# The guard runs inside the sandboxed interpreter before the program. It must only use the standard library.
_GUARD_SOURCE = r'''
import builtins, os, sys, io, runpy

_WORKDIR = os.path.realpath(os.getcwd())
_PROGRAM = sys.argv[1]


class SandboxViolation(PermissionError):
    """A forbidden operation was attempted inside the trl-text2grad sandbox."""


builtins.SandboxViolation = SandboxViolation


def _forbid(name):
    def blocked(*args, **kwargs):
        raise SandboxViolation(f"forbidden operation: {name} is disabled in the sandbox")
    return blocked


for _name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
              "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
              "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setuid", "setgid", "setsid",
              "chroot", "putenv"):
    if hasattr(os, _name):
        setattr(os, _name, _forbid("os." + _name))
import posix
for _name in ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "posix_spawn", "posix_spawnp"):
    if hasattr(posix, _name):
        setattr(posix, _name, _forbid("os." + _name))

import subprocess
for _name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(subprocess, _name, _forbid("subprocess." + _name))

import socket, _socket


class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        raise SandboxViolation("forbidden operation: network access (socket) is disabled in the sandbox")


socket.socket = _NoSocket
_socket.socket = _NoSocket
socket.SocketType = _NoSocket
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
    setattr(socket, _name, _forbid("socket." + _name + " (network)"))
for _mod in ("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess", "pty"):
    sys.modules[_mod] = None  # import raises ImportError


def _inside_workdir(path):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return real == _WORKDIR or real.startswith(_WORKDIR + os.sep)


_real_open = builtins.open
_real_os_open = os.open


def _guarded_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and not _inside_workdir(file):
        raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {file!r}")
    return _real_open(file, mode, *args, **kwargs)


def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) and not _inside_workdir(path):
        raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
    return _real_os_open(path, flags, *args, **kwargs)


import _io

_RealFileIO = _io.FileIO


class _GuardedFileIO(_RealFileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and not _inside_workdir(file):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {file!r}")
        super().__init__(file, mode, *args, **kwargs)


builtins.open = _guarded_open
io.open = _guarded_open
_io.open = _guarded_open
io.FileIO = _GuardedFileIO
_io.FileIO = _GuardedFileIO
os.open = _guarded_os_open

for _name in ("remove", "unlink", "rmdir", "rename", "replace", "removedirs", "chmod", "chown", "truncate", "mkdir",
              "symlink", "link", "mkfifo", "mknod", "utime"):
    _original = getattr(os, _name, None)
    if _original is None:
        continue

    def _make(original, name):
        def guarded(path, *args, **kwargs):
            if isinstance(path, int) or not _inside_workdir(path):
                raise PermissionError(f"sandbox: os.{name} outside the working directory is not allowed: {path!r}")
            for extra in args[:1]:
                if isinstance(extra, (str, bytes, os.PathLike)) and not _inside_workdir(extra):
                    raise PermissionError(f"sandbox: os.{name} target outside the working directory: {extra!r}")
            return original(path, *args, **kwargs)
        return guarded

    setattr(os, _name, _make(_original, _name))

del _name
sys.argv = [_PROGRAM]
runpy.run_path(_PROGRAM, run_name="__main__")
'''


# Runs as root inside the new mount namespace, before the limits and the uid drop: mounts a fresh tmpfs on /tmp and
# /dev/shm. Directories that must stay visible (the sandbox directory, and the interpreter's installation when it
# lives below /tmp, e.g. a virtual environment in a checkout under /tmp) are listed one per line in $keep: for a
# target that contains some of them, the tmpfs is first mounted on a staging directory inside the sandbox directory,
# each kept directory is bound into it at its own path, and the tmpfs is moved onto the target, so the program, the
# guard, the working directory and the interpreter stay at the same paths. Any failure stops the run (fail closed)
# instead of silently sharing the host's /tmp.
_PRIVATE_TMP_SCRIPT = r"""set -eu
mount_bin=$1 size=$2 outer=$3 workdir=$4 keep=$5
shift 5
opts="size=$size,mode=1777,nosuid,nodev"
for target in /tmp /dev/shm; do
    [ -d "$target" ] || continue
    target=$(cd "$target" && pwd -P)
    inside=$(printf '%s\n' "$keep" | while IFS= read -r dir; do
        case "$dir/" in "$target"/*) printf '%s\n' "$dir" ;; esac
    done)
    if [ -z "$inside" ]; then
        "$mount_bin" -t tmpfs -o "$opts" t2g-sandbox-tmp "$target"
        continue
    fi
    "$mount_bin" -t tmpfs -o "$opts" t2g-sandbox-tmp "$outer/stage"
    printf '%s\n' "$inside" | while IFS= read -r dir; do
        rel=${dir#"$target"/}
        mkdir -p "$outer/stage/$rel"
        "$mount_bin" --bind "$dir" "$outer/stage/$rel"
    done
    "$mount_bin" --move "$outer/stage" "$target"
done
cd "$workdir"
exec "$@"
"""
_STAGE_DIRNAME = "stage"
_warned_shared_tmp = False


def _which(name: str) -> str | None:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


def _probe(cmd: list[str], **kwargs) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, **kwargs).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=8)
def _capabilities(python: str | None) -> dict:
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    unshare = _which("unshare")
    prlimit = _which("prlimit")
    setpriv = _which("setpriv")
    namespaces = bool(unshare) and _probe([unshare, "--net", "--pid", "--fork", "--kill-child", "true"])
    mount = _which("mount")
    drop_uid = False
    interpreter = python or sys.executable
    if is_root and setpriv:
        candidates = [python] if python else [sys.executable, getattr(sys, "_base_executable", None)]
        if not python:
            candidates += [_which(f"python{sys.version_info.major}.{sys.version_info.minor}"), _which("python3")]
        for candidate in candidates:
            if not candidate:
                continue
            probe = [setpriv, f"--reuid={_NOBODY_UID}", f"--regid={_NOBODY_GID}", "--clear-groups", candidate]
            if _probe([*probe, "-I", "-B", "-c", "pass"], cwd="/"):
                interpreter, drop_uid = candidate, True
                break
        else:
            logger.warning(
                "sandbox: running as root but no Python interpreter is executable by the unprivileged user "
                "'nobody' (e.g. it lives under /root); the sandboxed code will run as root, so RLIMIT_NPROC does "
                "not bind and files outside the working directory are only protected by the Python-level guard. "
                "Install a system python3 or pass python=... to run_python."
            )
    private_tmp = namespaces and bool(mount) and _probe_private_tmp(unshare, mount, interpreter)
    if not private_tmp:
        _warn_shared_tmp("mount namespaces are not permitted here" if namespaces else "no namespaces (unshare)")
    return {
        "root": is_root,
        "namespaces": namespaces,
        "private_tmp": private_tmp,
        "prlimit": bool(prlimit),
        "drop_uid": drop_uid,
        "interpreter": interpreter,
        "unshare_path": unshare,
        "prlimit_path": prlimit,
        "setpriv_path": setpriv,
        "mount_path": mount,
    }


def _unshare_command(unshare: str, private_tmp: bool) -> list[str]:
    command = [unshare, "--net", "--pid", "--fork", "--kill-child"]
    if private_tmp:
        command[1:1] = ["--mount", "--propagation=private"]
    return [*command, "--"]


def _interpreter_dirs(interpreter: str) -> list[str]:
    """Directories the interpreter needs at run time: its installation root (the virtual environment or prefix that
    holds ``bin/python``), the directory of the real executable and, for this process's own interpreter,
    ``sys.prefix`` / ``sys.base_prefix`` / ``sys.exec_prefix``. The private /tmp keeps those below /tmp visible."""
    dirs = {
        os.path.dirname(os.path.dirname(os.path.abspath(interpreter))),
        os.path.dirname(os.path.realpath(interpreter)),
    }
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable):
        dirs |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return sorted({os.path.realpath(d) for d in dirs})


def _private_tmp_command(mount: str, size_mb: int, outer: str, workdir: str, interpreter: str) -> list[str]:
    keep = [outer]
    for directory in _interpreter_dirs(interpreter):  # a directory inside another kept one comes with it
        if not any(directory == k or directory.startswith(k.rstrip("/") + "/") for k in keep):
            keep.append(directory)
    return [
        "/bin/sh", "-c", _PRIVATE_TMP_SCRIPT, "t2g-sandbox", mount, f"{int(size_mb)}m", outer, workdir, "\n".join(keep)
    ]  # fmt: skip


def _probe_private_tmp(unshare: str, mount: str, interpreter: str) -> bool:
    """Whether the private-/tmp wrapper works here and the interpreter still starts inside it: the same script, on a
    scratch sandbox directory, running ``interpreter -I -c pass``."""
    outer = os.path.realpath(tempfile.mkdtemp(prefix="t2g-sandbox-probe-"))
    try:
        workdir = os.path.join(outer, "work")
        os.mkdir(workdir)
        os.mkdir(os.path.join(outer, _STAGE_DIRNAME))
        probe = [
            *_unshare_command(unshare, True),
            *_private_tmp_command(mount, 1, outer, workdir, interpreter),
            interpreter, "-I", "-c", "pass",
        ]  # fmt: skip
        return _probe(probe, cwd=workdir)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _warn_shared_tmp(why: str) -> None:
    global _warned_shared_tmp
    if _warned_shared_tmp:
        return
    _warned_shared_tmp = True
    logger.warning(
        "sandbox: no private /tmp for sandboxed code (%s); the child shares the host's /tmp and /dev/shm, where "
        "writes are stopped only by the Python-level guard (and file permissions when it runs as 'nobody').",
        why,
    )


def sandbox_capabilities(python: str | None = None) -> dict:
    """Which containment layers :func:`run_python` uses on this machine.

    Keys: ``namespaces`` (network + PID namespace via ``unshare``), ``private_tmp`` (a mount namespace with its
    own size-limited ``tmpfs`` on ``/tmp`` and ``/dev/shm``), ``prlimit`` (limits applied via the
    ``prlimit`` tool, else via ``setrlimit`` in the child), ``drop_uid`` (runs as ``nobody``), ``interpreter``
    (the Python executable the sandbox runs).
    """
    caps = _capabilities(python)
    return {k: caps[k] for k in ("root", "namespaces", "private_tmp", "prlimit", "drop_uid", "interpreter")}


def _limits(timeout: float, memory_mb: int, max_processes: int, max_file_bytes: int) -> dict[str, int]:
    return {
        "as": int(memory_mb) * 1024 * 1024,
        "cpu": int(math.ceil(timeout)) + 1,
        "nproc": int(max_processes),
        "fsize": int(max_file_bytes),
        "nofile": 64,
        "core": 0,
    }


def _setrlimits(limits: dict[str, int]) -> None:  # pragma: no cover - runs in the child
    import resource

    names = {
        "as": resource.RLIMIT_AS,
        "cpu": resource.RLIMIT_CPU,
        "nproc": resource.RLIMIT_NPROC,
        "fsize": resource.RLIMIT_FSIZE,
        "nofile": resource.RLIMIT_NOFILE,
        "core": resource.RLIMIT_CORE,
    }
    for key, value in limits.items():
        resource.setrlimit(names[key], (value, value))


def _read_capped(path: str, cap: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(cap + 1)
    except OSError:
        return "", False
    truncated = len(data) > cap
    return data[:cap].decode("utf-8", errors="replace"), truncated


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Violation|Exit|Interrupt)\b.*|AssertionError.*)$")


def _last_exception_line(stderr: str) -> str | None:
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if _EXCEPTION_LINE.match(line):
            return line
    return None


def _reason(returncode: int | None, timed_out: bool, stderr: str, timeout: float, memory_mb: int) -> str:
    if timed_out:
        return f"timeout: killed after {timeout:g} s wall clock"
    if returncode == 0:
        return "passed"
    exception = _last_exception_line(stderr)
    if returncode is not None and returncode < 0:
        signum = -returncode
        if signum == signal.SIGXCPU:
            return "cpu time limit exceeded"
        if signum == signal.SIGXFSZ:
            return "output/file size limit exceeded"
        if signum == signal.SIGKILL and exception is None:
            return "killed (SIGKILL): probably the CPU time limit or the memory limit"
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by signal {name}" + (f" after {exception}" if exception else "")
    if exception is None:
        return f"exit status {returncode}" + (f": {stderr.strip().splitlines()[-1][:200]}" if stderr.strip() else "")
    if "SandboxViolation" in exception:
        return exception.split(":", 1)[1].strip()[:300] if ":" in exception else exception
    if exception.startswith("MemoryError"):
        return f"memory limit ({memory_mb} MB) exceeded: MemoryError"
    if "Resource temporarily unavailable" in exception and ("fork" in stderr or "BlockingIOError" in exception):
        return f"process limit reached: {exception[:200]}"
    if exception.startswith("AssertionError"):
        return f"assertion failed: {exception[:300]}"
    return f"exception: {exception[:300]}"


def run_python(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    *,
    max_processes: int = 32,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
    python: str | None = None,
    guard: bool = True,
    tmp_size_mb: int = 64,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report whether it exited cleanly.

    Args:
        code: The full program (e.g. completion + unit tests + ``check(entry_point)``).
        timeout: Wall-clock limit in seconds; the whole process group is killed when it is reached.
        memory_mb: Address-space limit of the child (``RLIMIT_AS``).
        max_processes: ``RLIMIT_NPROC`` of the child (binds when it runs as an unprivileged user).
        max_output_bytes: How much of stdout and of stderr to read back.
        max_file_bytes: ``RLIMIT_FSIZE``: the largest file (including captured stdout/stderr) the child may write.
        python: Interpreter to run; default: this one, or a system ``python3`` that ``nobody`` may execute.
        guard: Load the Python-level guard (forbidden calls raise). Only tests of the OS layers turn it off.
        tmp_size_mb: Size of each of the child's private ``/tmp`` and ``/dev/shm`` (``tmpfs``, where mount
            namespaces are permitted; see :func:`sandbox_capabilities`).

    Returns:
        A :class:`SandboxResult`; never raises for anything the program does.

    Raises:
        SandboxUnavailableError: The run failed and so does a trivial program in the same sandbox (checked after a
            failure, at most once a minute while the sandbox is healthy): the failure is the machine's, not the
            program's, and must not be scored as the program's (e.g. the interpreter cannot be executed).
    """
    result = _run_sandboxed(
        code, timeout, memory_mb, max_processes=max_processes, max_output_bytes=max_output_bytes,
        max_file_bytes=max_file_bytes, python=python, guard=guard, tmp_size_mb=tmp_size_mb,
    )  # fmt: skip
    if not result.passed and not result.timed_out:
        probe = _failed_health_probe(python, tmp_size_mb)
        if probe is not None:
            raise SandboxUnavailableError(
                f"the sandbox cannot run even a trivial program ({probe.reason}; stderr: "
                f"{probe.stderr.strip()[:300]!r}); the failure of this run is not the program's (its own: "
                f"{result.reason})"
            )
    return result


def _failed_health_probe(python: str | None, tmp_size_mb: int) -> SandboxResult | None:
    """Run ``pass`` in the sandbox: ``None`` when it succeeds (a healthy verdict is cached for
    ``_HEALTH_RECHECK_S``), else the probe's failed result."""
    now = time.monotonic()
    if now - _last_healthy.get(python, -math.inf) < _HEALTH_RECHECK_S:
        return None
    probe = _run_sandboxed("pass", timeout=30.0, python=python, tmp_size_mb=tmp_size_mb)
    if probe.passed:
        _last_healthy[python] = now
        return None
    return probe


def _run_sandboxed(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    *,
    max_processes: int = 32,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
    python: str | None = None,
    guard: bool = True,
    tmp_size_mb: int = 64,
) -> SandboxResult:
    if not isinstance(code, str):
        raise TypeError(f"run_python: code must be a str, got {type(code).__name__}")
    if timeout <= 0 or memory_mb <= 0 or tmp_size_mb <= 0:
        raise ValueError(
            f"run_python: timeout ({timeout}), memory_mb ({memory_mb}) and tmp_size_mb ({tmp_size_mb}) must be "
            "positive"
        )
    caps = _capabilities(python)
    limits = _limits(timeout, memory_mb, max_processes, max_file_bytes)
    outer = os.path.realpath(tempfile.mkdtemp(prefix="t2g-sandbox-"))
    start = time.monotonic()
    try:
        workdir = os.path.join(outer, "work")
        os.mkdir(workdir, 0o700)
        program = os.path.join(outer, PROGRAM_FILENAME)
        with open(program, "w", encoding="utf-8") as handle:
            handle.write(code)
        guard_path = os.path.join(outer, _GUARD_FILENAME)
        with open(guard_path, "w", encoding="utf-8") as handle:
            handle.write(_GUARD_SOURCE)
        stdout_path, stderr_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
        if caps["drop_uid"]:
            os.chmod(outer, 0o711)
            os.chmod(program, 0o644)
            os.chmod(guard_path, 0o644)
            os.chown(workdir, _NOBODY_UID, _NOBODY_GID)

        command: list[str] = []
        preexec = None
        if caps["namespaces"]:
            command += _unshare_command(caps["unshare_path"], caps["private_tmp"])
        if caps["private_tmp"]:
            os.mkdir(os.path.join(outer, _STAGE_DIRNAME), 0o700)
            command += _private_tmp_command(caps["mount_path"], tmp_size_mb, outer, workdir, caps["interpreter"])
        if caps["prlimit"]:
            command += [caps["prlimit_path"], *(f"--{k}={v}" for k, v in limits.items()), "--"]
        else:
            preexec = functools.partial(_setrlimits, limits)
        if caps["drop_uid"]:
            command += [
                caps["setpriv_path"],
                f"--reuid={_NOBODY_UID}",
                f"--regid={_NOBODY_GID}",
                "--clear-groups",
                "--no-new-privs",
                "--",
            ]
        command += [caps["interpreter"], "-I", "-B"]
        command += [guard_path, program] if guard else [program]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONIOENCODING": "utf-8"}
        env.update({k: os.environ[k] for k in _SAFE_ENV_KEYS if k in os.environ})

        timed_out = False
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=preexec,  # noqa: PLW1509 - only when the prlimit tool is missing
                    close_fds=True,
                )
            except OSError as error:
                return SandboxResult(False, None, "", str(error), False, f"could not start the sandbox: {error}")
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process.pid)
                returncode = process.wait()
            else:
                _kill_group(process.pid)  # stray background processes of the program
        duration = time.monotonic() - start
        stdout, out_truncated = _read_capped(stdout_path, max_output_bytes)
        stderr, err_truncated = _read_capped(stderr_path, max_output_bytes)
        reason = _reason(returncode, timed_out, stderr, timeout, memory_mb)
        return SandboxResult(
            passed=returncode == 0 and not timed_out,
            returncode=returncode,
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
            reason=reason,
            duration_s=duration,
            output_truncated=out_truncated or err_truncated,
        )
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
