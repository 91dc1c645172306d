"""The sandbox (critics/sandbox.py): namespaces without root, read-only file system, private size-capped tmp dirs,
scrubbed environment, per-run limits, nothing surviving a run; refusal (or the explicit opt-in) without namespaces.

The hostile-program suite is tests/test_sandbox_adversarial.py; this file checks the building blocks on every
backend available here.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from sandbox_processes import surviving_sandbox_processes
from trl_text2grad.critics import sandbox
from trl_text2grad.critics.sandbox import run_python, sandbox_capabilities

BACKENDS = [b for b in ("bwrap", "unshare") if sandbox._capabilities(None, b)["backend"] == b]
needs_sandbox = pytest.mark.skipif(not BACKENDS, reason="no sandbox backend (user namespaces) on this machine")


@pytest.fixture(params=BACKENDS or [None])
def backend(request, monkeypatch):
    if request.param is None:
        pytest.skip("no sandbox backend on this machine")
    monkeypatch.setenv(sandbox.BACKEND_ENV, request.param)
    return request.param


def test_capabilities_report_the_backend():
    caps = sandbox_capabilities()
    assert set(caps) == {"backend", "namespaces", "root", "as_nobody", "interpreter", "unsandboxed_allowed", "error"}
    assert caps["as_nobody"] <= caps["root"]
    assert caps["namespaces"] == (caps["backend"] is not None)
    assert (caps["error"] is None) == caps["namespaces"]


def test_clean_program_passes_and_captures_output(backend):
    result = run_python("print('hello', 1 + 1)", timeout=10)
    assert result.passed and result.returncode == 0 and not result.timed_out
    assert result.stdout.strip() == "hello 2" and result.reason == "passed"


def test_failing_assertion_is_reported(backend):
    result = run_python("def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) should be 3'\n", timeout=10)
    assert not result.passed and result.reason.startswith("assertion failed")
    assert "f(1) should be 3" in result.reason and 'main.py", line 3' in result.stderr


def test_infinite_loop_is_killed_by_wall_clock(backend):
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout=1.5)
    assert time.monotonic() - start < 10
    assert not result.passed and result.timed_out and "timeout" in result.reason


def test_huge_allocation_hits_memory_limit(backend):
    result = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", timeout=10, memory_mb=512)
    assert not result.passed and "allocated" not in result.stdout and "memory limit" in result.reason


def test_fork_loop_is_bounded_and_nothing_survives(backend):
    program = (
        "import os, sys, time\nchildren = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
        "            os.setsid()\n            time.sleep(60)\n            os._exit(0)\n        children += 1\n"
        "except OSError as error:\n    print('limited after', children, flush=True)\n    sys.exit(3)\n"
        "print('unbounded', children)\n"
    )
    result = run_python(program, timeout=10, max_processes=8)
    assert not result.passed and "limited after" in result.stdout, result.stdout + result.stderr
    assert int(result.stdout.split()[2]) < 8
    time.sleep(0.3)
    assert not surviving_sandbox_processes(), "sleeping children survived the sandbox"


def test_file_system_is_read_only_outside_private_dirs(backend, tmp_path):
    (tmp_path / "host.txt").write_text("host")
    code = (
        "import os, posix\n"
        f"assert not os.path.exists({str(tmp_path)!r}), 'host /tmp visible'\n"
        "for d in ('/home', '/root', '/run/user', '/var/lib', '/etc/shadow', '/etc/passwd'):\n"
        "    assert not os.path.exists(d), d\n"
        "for p in ('/usr/t2g', '/sandbox/x', '/t2g', '/etc/t2g'):\n"
        "    try:\n        posix.open(p, posix.O_WRONLY | posix.O_CREAT, 0o644)\n"
        "    except OSError as e:\n        assert e.errno in (13, 30), (p, e)\n"
        "    else:\n        raise AssertionError('wrote ' + p)\n"
        "for d in ('/work', '/tmp', '/var/tmp', '/dev/shm', '/run/lock'):\n"
        "    open(d + '/ok', 'w').write('x')\n"
        "print(os.getcwd(), os.environ['HOME'])\n"
    )
    result = run_python(code, timeout=10)
    assert result.passed, result.reason + result.stderr
    assert result.stdout.split() == ["/work", "/work"]


def test_private_tmp_is_size_limited(backend):
    code = (
        "import posix\nfd = posix.open('/tmp/big', posix.O_WRONLY | posix.O_CREAT, 0o644)\ntry:\n"
        "    for _ in range(8):\n        posix.write(fd, b'x' * (1024 * 1024))\nexcept OSError as error:\n"
        "    print('full', error.errno)\n"
    )
    result = run_python(code, timeout=10, tmp_size_mb=2, max_file_bytes=64 * 1024 * 1024)
    assert result.passed, result.reason + result.stderr
    assert "full 28" in result.stdout  # ENOSPC


def test_interpreter_installed_below_tmp_still_runs(backend):
    """A checkout and its virtual environment under /tmp (as CI makes): the interpreter stays visible, the rest of
    the host's /tmp does not."""
    root = tempfile.mkdtemp(prefix="t2g-venv-under-tmp-")
    try:
        os.chmod(root, 0o755)
        venv = os.path.join(root, "venv")
        base = sandbox_capabilities()["interpreter"]  # one the sandbox user may run
        subprocess.run([base, "-m", "venv", "--without-pip", venv], check=True, timeout=120, capture_output=True)
        subprocess.run(["chmod", "-R", "a+rX", root], check=True)
        sibling = os.path.join(root, "host-file.txt")
        with open(sibling, "w") as handle:
            handle.write("host")
        code = (
            f"import os, sys\nassert sys.prefix == {venv!r}, sys.prefix\n"
            f"assert not os.path.exists({sibling!r}), 'the rest of the host /tmp is visible'\nprint('ran')\n"
        )
        result = run_python(code, timeout=20, python=os.path.join(venv, "bin", "python"))
        assert result.passed, result.reason + result.stderr
        assert result.stdout.strip() == "ran"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_environment_secrets_are_scrubbed(backend, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    code = (
        "import os\nprint(sorted(os.environ))\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    print(open('/proc/%s/environ' % pid, 'rb').read())\n"
    )
    result = run_python(code, timeout=10)
    assert result.passed, result.stderr
    assert "very-secret" not in result.stdout and "very_secret" not in result.stdout
    assert "HF_TOKEN" not in result.stdout and "OPENAI_API_KEY" not in result.stdout


def test_no_network_not_even_the_hosts_localhost(backend):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        result = run_python(code, timeout=10)
        # bwrap brings the namespace's own loopback up (refused there), unshare leaves it down (unreachable)
        assert not result.passed and ("ConnectionRefused" in result.reason or "unreachable" in result.reason)
        with pytest.raises(OSError):
            server.accept()
        outside = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n", timeout=10)
        assert not outside.passed and ("OSError" in outside.reason or "unreachable" in outside.reason.lower())
    finally:
        server.close()


def test_process_view_is_private(backend):
    result = run_python("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))", timeout=10)
    assert result.passed
    assert max(eval(result.stdout)) < 10  # only the sandbox's own few processes, numbered from 1


def test_output_is_capped(backend):
    result = run_python("print('x' * 5_000_000)", timeout=10, max_output_bytes=1000)
    assert len(result.stdout) == 1000 and result.output_truncated


def test_kill_sandbox_kills_every_process_it_started(backend):
    script = (
        "import os, time, subprocess\n"
        "subprocess.Popen(['/bin/sh', '-c', 'sleep 120'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(120)\n    os._exit(0)\n"
        "time.sleep(120)\n"
    )
    process = sandbox.launch(script)
    time.sleep(1.0)
    sandbox.kill_sandbox(process)
    time.sleep(0.3)
    assert not surviving_sandbox_processes()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="code must be a str"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        run_python("print(1)", timeout=0)


def test_an_interpreter_that_cannot_run_is_a_sandbox_error():
    with pytest.raises(sandbox.SandboxUnavailableError):
        run_python("print('never runs')", timeout=10, python="/nonexistent/bin/python3")


@needs_sandbox
def test_a_program_that_fails_on_its_own_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(sandbox, "_last_healthy", {})  # force the health check after the failure
    result = run_python("import sys\nsys.exit(127)", timeout=10)
    assert not result.passed and result.returncode == 127
    assert None in sandbox._last_healthy


def test_without_namespaces_it_refuses_unless_opted_in(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv(sandbox.BACKEND_ENV, "none")
    monkeypatch.delenv(sandbox.ALLOW_UNSANDBOXED_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailableError, match=sandbox.ALLOW_UNSANDBOXED_ENV):
        run_python("print(1)", timeout=10)
    monkeypatch.setenv(sandbox.ALLOW_UNSANDBOXED_ENV, "1")
    assert sandbox_capabilities()["unsandboxed_allowed"] and sandbox_capabilities()["backend"] is None
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        first = run_python("print('ran')", timeout=10)
        second = run_python("print('ran')", timeout=10)
    assert first.passed and second.passed and first.stdout.strip() == "ran"
    warnings = [r for r in caplog.records if "WITHOUT isolation" in r.getMessage()]
    assert len(warnings) == 2  # one on every run


def test_unknown_backend_is_reported(monkeypatch):
    monkeypatch.setenv(sandbox.BACKEND_ENV, "docker")
    caps = sandbox_capabilities()
    assert caps["backend"] is None and "docker" in caps["error"]


def test_marker_files_never_reach_the_host(backend):
    name = f"t2g-sandbox-escape-{uuid.uuid4().hex}"
    code = (
        "import posix\nfor d in ('/tmp', '/var/tmp', '/dev/shm', '/run/lock'):\n"
        f"    fd = posix.open(d + '/{name}', posix.O_WRONLY | posix.O_CREAT, 0o644)\n    posix.write(fd, b'x')\n"
    )
    result = run_python(code, timeout=10)
    assert result.passed, result.stderr
    for directory in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
        assert not os.path.exists(os.path.join(directory, name))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_an_interpreter_installed_in_home_does_not_expose_home(backend, monkeypatch):
    """``~/bin/python`` (a virtual environment made in the home directory): only its parts are bound, never the
    whole home."""
    home = tempfile.mkdtemp(prefix="t2g-home-")
    try:
        os.chmod(home, 0o755)
        base = sandbox_capabilities()["interpreter"]
        subprocess.run([base, "-m", "venv", "--without-pip", home], check=True, timeout=120, capture_output=True)
        subprocess.run(["chmod", "-R", "a+rX", home], check=True)
        secret = os.path.join(home, "secret.txt")
        with open(secret, "w") as handle:
            handle.write("s3cret")
        monkeypatch.setenv("HOME", home)
        code = f"import os, sys\nprint(sys.prefix)\nassert not os.path.exists({secret!r}), 'home visible'\n"
        result = run_python(code, timeout=20, python=os.path.join(home, "bin", "python"))
        assert result.passed, result.reason + result.stderr
        assert result.stdout.strip() == home  # still recognised as a virtual environment (pyvenv.cfg bound)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_survivor_check_judges_only_its_own_launches_and_orphans():
    """The process check of these tests: a 'launcher' started by this test process counts, one started by another
    live process (another run's sandbox) does not, and one orphaned to init counts (nobody owns it)."""
    from sandbox_processes import cmdline, is_survivor, stat_ppid

    # a process that calls itself bwrap and has a sandbox's marker; the command comes through the environment, so the
    # shells around it have no marker in their own command lines
    program = f"exec -a bwrap {sys.executable} -c 'import time; time.sleep(30)' /sandbox/boot.py"
    env = dict(os.environ, FAKE_LAUNCH=program)
    own = subprocess.Popen(["bash", "-c", 'eval "$FAKE_LAUNCH"'], env=env)
    other = subprocess.Popen(["bash", "-c", 'eval "$FAKE_LAUNCH" & wait'], env=env)  # bash stays as its parent
    orphan_parent = subprocess.Popen(["bash", "-c", '(eval "$FAKE_LAUNCH" &)'], env=env)  # its parent exits at once
    orphan_parent.wait()
    try:
        deadline = time.monotonic() + 5.0
        launchers: dict[int, int] = {}
        while time.monotonic() < deadline:
            launchers = {
                int(pid): stat_ppid(int(pid))
                for pid in filter(str.isdigit, os.listdir("/proc"))
                if cmdline(int(pid)).startswith("bwrap ") and "/sandbox/boot.py" in cmdline(int(pid))
            }
            if len(launchers) >= 3:
                break
            time.sleep(0.05)
        by_parent = {parent: pid for pid, parent in launchers.items()}
        assert is_survivor(by_parent[os.getpid()])  # own: this process is its parent (bash exec'd into it)
        assert not is_survivor(by_parent[other.pid])
        orphans = [pid for pid, parent in launchers.items() if parent not in (os.getpid(), other.pid)]
        assert orphans
        if all(launchers[pid] == 1 for pid in orphans):  # (a sub-reaper other than init would adopt it instead)
            assert all(is_survivor(pid) for pid in orphans)
    finally:
        for pid in launchers:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for process in (own, other):
            process.kill()
            process.wait()
