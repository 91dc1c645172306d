"""Run untrusted, model-written Python in an isolated child process, without needing root.

The isolation comes from Linux namespaces, set up by `bubblewrap <https://github.com/containers/bubblewrap>`_
(``bwrap``) where it is installed, else by util-linux ``unshare`` (plus ``mount``/``pivot_root``/``setpriv``).
Both backends give the same sandbox:

* new **user, PID, mount, network, IPC and UTS namespaces**: the code sees its own ``/proc`` (only its own
  processes), has only a loopback interface (no route anywhere, not even to the host's ``127.0.0.1``), its own
  System V IPC objects (gone when it ends) and cannot signal or trace anything outside;
* a **minimal read-only file system**: ``/usr``, the library directories and the interpreter's installation,
  bound read-only; nothing else of the host (no ``$HOME``, ``/root``, ``/etc`` beyond the loader cache, ``/run``,
  the host ``/tmp``). The only writable places are size-capped private ``tmpfs`` mounts: the working directory
  ``/work`` (``work_size_mb``), ``/tmp`` (``tmp_size_mb``) and ``/var/tmp``, ``/dev/shm``, ``/run/lock`` (at most
  16 MB each);
* **no capabilities** (all dropped, ``no_new_privs``) and no nested user namespaces (``bwrap``);
* a **scrubbed environment** (``PATH``, ``HOME=/work``, ``TMPDIR=/tmp``, ``LANG``): no API keys or tokens;
* **per-run resource limits** set inside the namespace before any untrusted code runs: processes and threads
  (``RLIMIT_NPROC``; since Linux 5.14 the count is kept per user namespace, so one run cannot use up another's
  processes), address space per process, CPU seconds, file size, open files, no core dumps;
* **nothing survives**: the sandbox's first process is PID 1 of its namespace; when it dies the kernel kills every
  other process of the namespace. :func:`kill_sandbox` (used on every timeout and after every run) kills it and
  returns only once the whole namespace is gone; it also dies with its launcher (parent-death signal).

When the caller is root, the sandbox is started as the unprivileged user ``nobody`` (so ``RLIMIT_NPROC`` binds: the
kernel exempts root's own uid from it) with an interpreter that ``nobody`` may execute (this one, else a system
``python3`` of the same version); only when there is none, as root (logged: the process limit then does not bind).

Where neither backend works (no user namespaces, no ``bwrap``/``unshare``), :func:`launch` refuses with
:class:`SandboxUnavailableError` unless the environment variable ``TRL_TEXT2GRAD_ALLOW_UNSANDBOXED=1`` is set; then
the code runs as a plain child process with resource limits only, and every run logs a warning.
``TRL_TEXT2GRAD_SANDBOX=bwrap|unshare`` forces one backend (both are tested); ``none`` disables both (then only the
opt-in runs code).

:func:`run_python` runs a whole program and reports its exit status. An exit status is **not** a verdict the
program cannot forge (``os._exit(0)`` passes): critics run tests through
:func:`trl_text2grad.critics.harness.run_tests`, which keeps the tests out of the sandbox.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..spans import CriticUnavailableError

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOW_UNSANDBOXED_ENV",
    "BACKEND_ENV",
    "PROGRAM_FILENAME",
    "SandboxResult",
    "SandboxUnavailableError",
    "SandboxedProcess",
    "kill_sandbox",
    "launch",
    "run_python",
    "sandbox_capabilities",
]

#: Name of the program file inside the sandbox (``/sandbox/main.py``); tracebacks refer to it.
PROGRAM_FILENAME = "main.py"
#: Directory inside the sandbox holding the (read-only) files handed in.
SANDBOX_DIR = "/sandbox"
#: Writable working directory inside the sandbox (also ``HOME``).
WORK_DIR = "/work"
#: Set to ``1`` to run untrusted code without namespaces where the sandbox is unavailable (unsafe).
ALLOW_UNSANDBOXED_ENV = "TRL_TEXT2GRAD_ALLOW_UNSANDBOXED"
#: Set to ``bwrap`` or ``unshare`` to force a backend, ``none`` to use none.
BACKEND_ENV = "TRL_TEXT2GRAD_SANDBOX"
_NOBODY = 65534
_SAFE_ENV_KEYS = ("LANG", "LC_ALL")
_PRIVATE_TMPS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")
_DEV_NODES = ("null", "zero", "full", "random", "urandom")
#: After a failed run the sandbox checks itself with a trivial program; a healthy verdict is reused this long.
_HEALTH_RECHECK_S = 60.0
_last_healthy: dict[str | None, float] = {}


class SandboxUnavailableError(CriticUnavailableError):
    """The sandbox cannot run code here (no namespaces, broken interpreter, ...): a failing run would say nothing
    about the judged code, so it is raised instead of scoring the code as failed."""


@dataclass
class SandboxResult:
    """Outcome of one :func:`run_python` run.

    Args:
        passed: The program exited with status 0 within its limits (the program controls this: not a verdict).
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


# --- capabilities -----------------------------------------------------------------------------------------------


def _which(name: str) -> str | None:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


def _probe(cmd: list[str], **kwargs) -> tuple[bool, str]:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, **kwargs)
    except (OSError, subprocess.SubprocessError) as error:
        return False, str(error)
    return done.returncode == 0, done.stderr.decode(errors="replace")[-500:]


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _interpreter_candidates(python: str | None) -> list[str]:
    if python:
        return [python]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable, getattr(sys, "_base_executable", None), _which(version), _which("python3")]
    return [c for c in dict.fromkeys(found) if c]


def _interpreter_dirs(interpreter: str) -> list[str]:
    """Directories the interpreter needs at run time (its installation, the real executable's prefix, and for this
    process's own interpreter ``sys.prefix``/``base_prefix``/``exec_prefix``), without those under /usr."""
    real = os.path.realpath(interpreter)
    dirs = {os.path.dirname(os.path.dirname(os.path.abspath(interpreter))), os.path.dirname(os.path.dirname(real))}
    if real == os.path.realpath(sys.executable):
        dirs |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    homes = {os.path.realpath(os.path.expanduser("~")), os.path.realpath(os.environ.get("HOME") or "/")}
    expanded = set()
    for d in {os.path.realpath(d) for d in dirs}:
        if any(h == d or h.startswith(d.rstrip("/") + "/") for h in homes):
            # an installation whose prefix is a home directory (``~/bin/python``) or above it: bind only its parts,
            # never the whole home
            expanded |= {os.path.join(d, part) for part in ("bin", "lib", "lib64", "include", "pyvenv.cfg")}
        else:
            expanded.add(d)
    out: list[str] = []
    for d in sorted(expanded, key=len):
        if d in ("/", "") or any(d == s or d.startswith(s + "/") for s in (*_SYSTEM_DIRS, *out)):
            continue
        if os.path.exists(d):  # directories, and a virtual environment's pyvenv.cfg
            out.append(d)
    return out


def _prefix(drop: bool, pdeathsig: bool = False) -> list[str]:
    """``setpriv`` before the launcher: with ``drop`` (the caller is root), switch to ``nobody``; with ``pdeathsig``,
    the launcher gets SIGKILL when the critic dies (``bwrap`` arranges that itself with ``--die-with-parent``)."""
    options = [f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups"] if drop else []
    if pdeathsig:
        options.append("--pdeathsig=KILL")
    return [_which("setpriv") or "setpriv", *options, "--"] if options else []


@functools.lru_cache(maxsize=16)
def _capabilities(python: str | None, forced: str | None) -> dict:
    root = _is_root()
    tools = {name: _which(name) for name in ("bwrap", "unshare", "setpriv", "mount", "pivot_root")}
    order = [forced] if forced else ["bwrap", "unshare"]
    errors = []
    if forced == "none":
        order, errors = [], [f"disabled by {BACKEND_ENV}=none"]
    # as root: start the sandbox as 'nobody' (so RLIMIT_NPROC binds) with an interpreter 'nobody' may run; only if
    # there is none, as root (the namespaces still apply; the process limit does not)
    drops = [True, False] if root and tools["setpriv"] else [False]
    for backend in order:
        needed = ["bwrap"] if backend == "bwrap" else ["unshare", "mount", "pivot_root", "setpriv"]
        if backend not in ("bwrap", "unshare"):
            errors.append(f"{BACKEND_ENV}={backend!r} is not 'bwrap' or 'unshare'")
            continue
        missing = [t for t in needed if not tools[t]]
        if missing:
            errors.append(f"{backend}: missing {', '.join(missing)}")
            continue
        for drop in drops:
            for interpreter in _interpreter_candidates(python):
                caps = {"backend": backend, "root": root, "drop": drop, "interpreter": interpreter, "tools": tools}
                ok, why = _probe_backend(caps)
                if ok:
                    if root and not drop:
                        logger.warning(
                            "sandbox: running as root and no Python interpreter is executable by 'nobody' (e.g. it "
                            "lives under /root): the sandbox runs as root inside its namespaces, where the process "
                            "limit (RLIMIT_NPROC) does not bind. Install a system python3 or pass python=..."
                        )
                    return {**caps, "error": None}
                errors.append(f"{backend} with {interpreter}{' as nobody' if drop else ''}: {why.strip()[-300:]}")
    return {
        "backend": None, "root": root, "drop": False, "interpreter": sys.executable, "tools": tools,
        "error": "; ".join(errors),
    }  # fmt: skip


def _probe_backend(caps: dict) -> tuple[bool, str]:
    memfd = _data_fd(b"import sys\nsys.exit(0 if open('/sandbox/p').read() == 'ok' else 3)\n")
    data = _data_fd(b"ok")
    try:
        command, fds = _command(caps, [f"{SANDBOX_DIR}/probe.py"], {"probe.py": memfd, "p": data}, 1, 1)
        return _probe(command, pass_fds=fds, cwd="/", env=_env())
    finally:
        os.close(memfd)
        os.close(data)


def _forced_backend() -> str | None:
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    return value or None


def sandbox_capabilities(python: str | None = None) -> dict:
    """How :func:`launch` isolates code on this machine.

    Keys: ``backend`` (``"bwrap"``, ``"unshare"`` or ``None`` when namespaces are unavailable), ``namespaces``
    (a backend works), ``root`` (the caller is root), ``as_nobody`` (the sandbox is started as ``nobody``: as root,
    unless no interpreter is executable by ``nobody``), ``interpreter`` (the
    Python executable used inside), ``unsandboxed_allowed`` (the ``TRL_TEXT2GRAD_ALLOW_UNSANDBOXED`` opt-in is
    set), ``error`` (why no backend works, else ``None``).
    """
    caps = _capabilities(python, _forced_backend())
    return {
        "backend": caps["backend"],
        "namespaces": caps["backend"] is not None,
        "root": caps["root"],
        "as_nobody": caps["drop"],
        "interpreter": caps["interpreter"],
        "unsandboxed_allowed": _unsandboxed_allowed(),
        "error": caps["error"],
    }


def _unsandboxed_allowed() -> bool:
    return os.environ.get(ALLOW_UNSANDBOXED_ENV, "").strip().lower() in ("1", "true", "yes")


# --- commands ---------------------------------------------------------------------------------------------------


def _data_fd(data: bytes) -> int:
    fd = os.memfd_create("t2g-sandbox-file", 0)
    os.write(fd, data) if len(data) < 65536 else _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _env() -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": WORK_DIR, "TMPDIR": "/tmp", "PYTHONIOENCODING": "utf-8"}
    env.update({k: os.environ[k] for k in _SAFE_ENV_KEYS if k in os.environ})
    return env


def _command(
    caps: dict, args: Sequence[str], files: dict[str, int], tmp_size_mb: int, work_size_mb: int
) -> tuple[list[str], tuple[int, ...]]:
    """The launcher command that runs ``interpreter -I -B *args`` in the sandbox, ``files`` (name -> readable fd)
    placed read-only in ``/sandbox``. Returns the command and the fds it must inherit."""
    if caps["backend"] == "bwrap":
        return _bwrap_command(caps, args, files, tmp_size_mb, work_size_mb)
    return _unshare_command(caps, args, files, tmp_size_mb, work_size_mb)


def _system_layout() -> list[tuple[str, str]]:
    """``("bind", path)`` or ``("symlink:<target>", path)`` for the system directories present here."""
    layout = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            layout.append((f"symlink:{os.readlink(path)}", path))
        elif os.path.isdir(path):
            layout.append(("bind", path))
    return layout


def _tmp_size(path: str, tmp_size_mb: int) -> int:
    """MB of a private tmp dir: ``/tmp`` gets ``tmp_size_mb``, the others (rarely used) at most 16."""
    return int(tmp_size_mb) if path == "/tmp" else min(int(tmp_size_mb), 16)


def _bwrap_command(caps, args, files, tmp_size_mb, work_size_mb):
    cmd = [
        *_prefix(caps["drop"]), caps["tools"]["bwrap"],
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "t2g-sandbox",
        "--clearenv",
    ]  # fmt: skip
    for key, value in _env().items():
        cmd += ["--setenv", key, value]
    for kind, path in _system_layout():
        cmd += ["--symlink", kind.split(":", 1)[1], path] if kind.startswith("symlink:") else ["--ro-bind", path, path]
    for path in _ETC_FILES:
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for path in _PRIVATE_TMPS:
        cmd += ["--size", str(_tmp_size(path, tmp_size_mb) << 20), "--perms", "1777", "--tmpfs", path]
    cmd += ["--size", str(int(work_size_mb) << 20), "--perms", "0700", "--tmpfs", WORK_DIR]
    for path in _interpreter_dirs(caps["interpreter"]):  # after the tmpfs mounts: an installation below them stays
        cmd += ["--ro-bind", path, path]
    for name, fd in files.items():
        cmd += ["--ro-bind-data", str(fd), f"{SANDBOX_DIR}/{name}"]
    cmd += ["--remount-ro", "/", "--chdir", WORK_DIR, "--", caps["interpreter"], "-I", "-B", *args]
    return cmd, tuple(files.values())


# Runs as root of a fresh user namespace (``unshare --user --map-root-user``): builds a minimal root on a tmpfs,
# pivots into it, drops every capability and runs the interpreter. Any failure stops the run (fail closed).
_UNSHARE_SCRIPT = r"""set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
R=$1 tmp_size=$2 small_size=$3 work_size=$4 layout=$5 files=$6
shift 6
mount -t tmpfs -o size=8m,mode=0755 t2g-root "$R"
mkdir -p "$R/proc" "$R/dev" "$R/sandbox" "$R/work" "$R/tmp" "$R/var/tmp" "$R/dev/shm" "$R/run/lock" "$R/old"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for node in null zero full random urandom; do : > "$R/dev/$node"; mount --bind "/dev/$node" "$R/dev/$node"; done
ln -s /proc/self/fd "$R/dev/fd"
mount -t tmpfs -o "size=$tmp_size,mode=1777,nosuid,nodev" t2g-tmp "$R/tmp"
for dir in /var/tmp /dev/shm /run/lock; do
    mount -t tmpfs -o "size=$small_size,mode=1777,nosuid,nodev" t2g-tmp "$R$dir"
done
mount -t tmpfs -o "size=$work_size,mode=0700,nosuid,nodev" t2g-work "$R/work"
# after the private tmp dirs, so that an interpreter installed below /tmp stays visible
printf '%s\n' "$layout" | while IFS=' ' read -r kind path; do
    [ -n "$path" ] || continue
    case "$kind" in
        symlink:*) mkdir -p "$R$(dirname "$path")"; ln -s "${kind#symlink:}" "$R$path" ;;
        bind) mkdir -p "$R$path"; mount --bind "$path" "$R$path"; mount -o remount,bind,ro "$R$path" ;;
        file) [ -e "$path" ] || continue; mkdir -p "$R$(dirname "$path")"; : > "$R$path"
              mount --bind "$path" "$R$path"; mount -o remount,bind,ro "$R$path" ;;
    esac
done
printf '%s\n' "$files" | while IFS=' ' read -r fd name; do
    [ -n "$name" ] || continue
    cat "/proc/self/fd/$fd" > "$R/sandbox/$name"
done
cd "$R"
pivot_root . old
umount -l /old
rmdir /old
mount -o remount,bind,ro /sandbox 2>/dev/null || true
mount -o remount,bind,ro /
cd /work
exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"
"""


def _unshare_command(caps, args, files, tmp_size_mb, work_size_mb):
    tools = caps["tools"]
    layout = [f"{kind} {path}" for kind, path in _system_layout()]
    layout += [f"{'bind' if os.path.isdir(p) else 'file'} {p}" for p in _interpreter_dirs(caps["interpreter"])]
    layout += [f"file {path}" for path in _ETC_FILES]
    file_lines = "\n".join(f"{fd} {name}" for name, fd in files.items())
    root_dir = _root_mountpoint()
    cmd = [
        *_prefix(caps["drop"], pdeathsig=True), tools["unshare"],
        "--user", "--map-root-user", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
        "--", "/bin/sh", "-c", _UNSHARE_SCRIPT, "t2g-sandbox", root_dir, f"{int(tmp_size_mb)}m",
        f"{_tmp_size('/var/tmp', tmp_size_mb)}m",
        f"{int(work_size_mb)}m", "\n".join(layout), file_lines, caps["interpreter"], "-I", "-B", *args,
    ]  # fmt: skip
    return cmd, tuple(files.values())


@functools.lru_cache(maxsize=1)
def _root_mountpoint() -> str:
    """An empty directory the ``unshare`` backend mounts its private root on (inside its own mount namespace only,
    so one directory serves every run)."""
    path = os.path.join(tempfile.gettempdir(), f"t2g-sandbox-root-{os.getuid()}")
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != os.getuid():
        raise SandboxUnavailableError(f"sandbox: {path} exists but is not a directory owned by this user")
    return path


# --- running ----------------------------------------------------------------------------------------------------


class SandboxedProcess:
    """A started sandbox: ``process`` is the launcher (kill it and the whole namespace dies)."""

    def __init__(self, process: subprocess.Popen, backend: str | None, files_dir: str = SANDBOX_DIR) -> None:
        self.process = process
        self.backend = backend
        #: Where the program sees the files handed to :func:`launch` (``/sandbox`` in the sandbox).
        self.files_dir = files_dir

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout=timeout)


def _limit_values(memory_mb: int, cpu_s: float, max_processes: int, max_file_bytes: int) -> dict[str, int]:
    return {
        "RLIMIT_AS": int(memory_mb) << 20,
        "RLIMIT_CPU": int(math.ceil(cpu_s)) + 1,
        "RLIMIT_NPROC": int(max_processes),
        "RLIMIT_FSIZE": int(max_file_bytes),
        "RLIMIT_NOFILE": 64,
        "RLIMIT_CORE": 0,
    }


#: First code run inside the sandbox (before anything untrusted): applies the per-run limits, then runs the target
#: script. argv: boot.py <limits json> <script> [args...]
_BOOT_SOURCE = r"""
import json, resource, sys
for _name, _value in json.loads(sys.argv[1]).items():
    resource.setrlimit(getattr(resource, _name), (_value, _value))
del _name, _value
_target = sys.argv[2]
sys.argv = sys.argv[2:]
import runpy
runpy.run_path(_target, run_name="__main__")
"""


def launch(
    script: str,
    args: Sequence[str] = (),
    files: dict[str, str | bytes] | None = None,
    *,
    memory_mb: int = 1024,
    cpu_s: float = 10.0,
    max_processes: int = 32,
    max_file_bytes: int = 16 * 1024 * 1024,
    tmp_size_mb: int = 64,
    work_size_mb: int = 64,
    pass_fds: Sequence[int] = (),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    python: str | None = None,
) -> SandboxedProcess:
    """Start ``script`` (Python source) in the sandbox as ``python -I -B /sandbox/script.py *args``.

    Args:
        script: The program to run (saved read-only as ``/sandbox/script.py``); it starts after the limits apply.
        args: Its command-line arguments; ``{files}`` in them is replaced by the directory holding ``files``
            (``/sandbox``; see :attr:`SandboxedProcess.files_dir`).
        files: More read-only files for ``/sandbox`` (name -> content).
        memory_mb: Address-space limit of each process (``RLIMIT_AS``).
        cpu_s: CPU seconds of each process (``RLIMIT_CPU``).
        max_processes: Processes and threads of the run (``RLIMIT_NPROC``, counted in the run's user namespace).
        max_file_bytes: Largest file the code may write (``RLIMIT_FSIZE``).
        tmp_size_mb: Size of the private ``/tmp`` (``/var/tmp``, ``/dev/shm``, ``/run/lock``: at most 16 MB each).
        work_size_mb: Size of the working directory ``/work``.
        pass_fds: File descriptors the sandboxed program inherits (same numbers), e.g. one end of a socket pair.
        stdout: Where the program's standard output goes (a file object, fd or ``subprocess.DEVNULL``).
        stderr: Same for standard error.
        python: Interpreter to use (default: this one, or a system python3 when the caller is root).

    Raises:
        SandboxUnavailableError: No namespaces here and the unsafe opt-in (``TRL_TEXT2GRAD_ALLOW_UNSANDBOXED=1``)
            is not set.
    """
    caps = _capabilities(python, _forced_backend())
    limits = _limit_values(memory_mb, cpu_s, max_processes, max_file_bytes)
    contents = {"boot.py": _BOOT_SOURCE, "script.py": script, **(files or {})}
    if caps["backend"] is None:
        return _launch_unsandboxed(caps, contents, limits, args, pass_fds, stdout, stderr)
    fds = {name: _data_fd(data.encode("utf-8") if isinstance(data, str) else data) for name, data in contents.items()}
    try:
        args = [a.replace("{files}", SANDBOX_DIR) for a in args]
        argv = [f"{SANDBOX_DIR}/boot.py", json.dumps(limits), f"{SANDBOX_DIR}/script.py", *args]
        command, data_fds = _command(caps, argv, fds, tmp_size_mb, work_size_mb)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd="/",
            env=_env(),
            start_new_session=True,
            pass_fds=(*data_fds, *pass_fds),
        )
    except OSError as error:
        raise SandboxUnavailableError(f"could not start the sandbox ({caps['backend']}): {error}") from error
    finally:
        for fd in fds.values():
            os.close(fd)
    return SandboxedProcess(process, caps["backend"])


def _launch_unsandboxed(caps, contents, limits, args, pass_fds, stdout, stderr) -> SandboxedProcess:
    if not _unsandboxed_allowed():
        raise SandboxUnavailableError(
            "refusing to run untrusted code: no sandbox is available on this machine (needs user namespaces and "
            f"bubblewrap or util-linux unshare; {caps['error']}). Install bubblewrap (apt-get install bubblewrap) "
            f"or enable unprivileged user namespaces; to run the code WITHOUT isolation anyway set "
            f"{ALLOW_UNSANDBOXED_ENV}=1."
        )
    logger.warning(
        "sandbox: %s=1: running untrusted code WITHOUT isolation (resource limits only); it can read your files and "
        "environment and reach the network.",
        ALLOW_UNSANDBOXED_ENV,
    )
    directory = tempfile.mkdtemp(prefix="t2g-unsandboxed-")
    for name, data in contents.items():
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    env = _env() | {"HOME": directory, "TMPDIR": directory}
    boot, script = os.path.join(directory, "boot.py"), os.path.join(directory, "script.py")
    args = [a.replace("{files}", directory) for a in args]
    process = subprocess.Popen(
        [caps["interpreter"], "-I", "-B", boot, json.dumps(limits), script, *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=directory,
        env=env,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    sandboxed = SandboxedProcess(process, None, directory)
    sandboxed.cleanup_dir = directory  # type: ignore[attr-defined]
    return sandboxed


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except (OSError, ValueError):
        pass
    children = []  # kernels without /proc/<pid>/task/<tid>/children
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if int(handle.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    children.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return children


def kill_sandbox(sandboxed: SandboxedProcess) -> int:
    """Kill the sandbox and every process it started, and return once they are gone (the launcher's exit status).

    The launcher's child is PID 1 of the sandbox's PID namespace; killing it makes the kernel kill every other
    process of the namespace, and PID 1 is only reaped (by the launcher, which then exits) once they all are. So
    waiting for the launcher waits for the whole namespace. The launcher and its process group are killed too
    (its child would then die by its parent-death signal)."""
    process = sandboxed.process
    if sandboxed.backend is not None and process.poll() is None:
        for child in _children(process.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("sandbox: the launcher (pid %d) did not exit after its namespace was killed", process.pid)
    for kill in (lambda: os.killpg(process.pid, signal.SIGKILL), lambda: os.kill(process.pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    returncode = process.wait()
    directory = getattr(sandboxed, "cleanup_dir", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
    return returncode


# --- whole programs ---------------------------------------------------------------------------------------------


def _read_capped(handle, cap: int) -> tuple[str, bool]:
    handle.seek(0)
    data = handle.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def _last_exception_line(stderr: str) -> str | None:
    for line in reversed(stderr.strip().splitlines()):
        if line and not line.startswith((" ", "Traceback")):
            return line.strip()
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
        return f"exit status {returncode}"
    if exception.startswith("MemoryError"):
        return f"memory limit ({memory_mb} MB) exceeded: MemoryError"
    if "Resource temporarily unavailable" in exception:
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
    tmp_size_mb: int = 64,
) -> SandboxResult:
    """Run ``code`` as a whole Python program (``/sandbox/main.py``) in the sandbox and report how it exited.

    ``passed`` is "exited with status 0": the program decides that itself, so it is not a verdict to reward a
    policy with (use :class:`~trl_text2grad.critics.UnitTestCritic` / :func:`~trl_text2grad.critics.harness.
    run_tests`, where the tests run outside the sandbox).

    Args:
        code: The full program.
        timeout: Wall-clock limit in seconds; the whole sandbox is killed when it is reached.
        memory_mb: Address-space limit per process.
        max_processes: Processes and threads the program may have.
        max_output_bytes: How much of stdout and of stderr to read back.
        max_file_bytes: Largest file (including captured stdout/stderr) the program may write.
        python: Interpreter to run (default: see :func:`launch`).
        tmp_size_mb: Size of each private tmp directory and of the working directory.

    Raises:
        SandboxUnavailableError: No sandbox here (and no opt-in), or the run failed and so does a trivial program
            (checked after a failure, at most once a minute while healthy): the failure is the machine's.
    """
    result = _run_sandboxed(
        code, timeout, memory_mb, max_processes=max_processes, max_output_bytes=max_output_bytes,
        max_file_bytes=max_file_bytes, python=python, tmp_size_mb=tmp_size_mb,
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
    tmp_size_mb: int = 64,
) -> SandboxResult:
    if not isinstance(code, str):
        raise TypeError(f"run_python: code must be a str, got {type(code).__name__}")
    if timeout <= 0 or memory_mb <= 0 or tmp_size_mb <= 0:
        raise ValueError(
            f"run_python: timeout ({timeout}), memory_mb ({memory_mb}) and tmp_size_mb ({tmp_size_mb}) must be "
            "positive"
        )
    start = time.monotonic()
    runner = "import runpy, sys\nrunpy.run_path(sys.argv[1], run_name='__main__')\n"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sandboxed = launch(
            runner, [f"{{files}}/{PROGRAM_FILENAME}"], files={PROGRAM_FILENAME: code}, memory_mb=memory_mb, cpu_s=timeout, max_processes=max_processes,
            max_file_bytes=max_file_bytes, tmp_size_mb=tmp_size_mb, work_size_mb=tmp_size_mb, stdout=out,
            stderr=err, python=python,
        )  # fmt: skip
        timed_out = False
        try:
            returncode = sandboxed.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        kill_sandbox(sandboxed)
        if timed_out:
            returncode = None
        stdout, out_truncated = _read_capped(out, max_output_bytes)
        stderr, err_truncated = _read_capped(err, max_output_bytes)
    return SandboxResult(
        passed=returncode == 0 and not timed_out,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        reason=_reason(returncode, timed_out, stderr, timeout, memory_mb),
        duration_s=time.monotonic() - start,
        output_truncated=out_truncated or err_truncated,
    )
