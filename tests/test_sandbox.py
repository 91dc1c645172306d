"""Hostile completions must be contained by the sandbox and reported as failures with a clear reason."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from trl_text2grad.critics import sandbox
from trl_text2grad.critics.sandbox import run_python, sandbox_capabilities

CAPS = sandbox_capabilities()


def test_clean_program_passes_and_captures_output():
    result = run_python("print('hello', 1 + 1)", timeout=10)
    assert result.passed and result.returncode == 0 and not result.timed_out
    assert result.stdout.strip() == "hello 2"
    assert result.reason == "passed"


def test_failing_assertion_is_reported():
    result = run_python("def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) should be 3'\n", timeout=10)
    assert not result.passed
    assert result.reason.startswith("assertion failed")
    assert "f(1) should be 3" in result.reason
    assert 'main.py", line 3' in result.stderr


def test_infinite_loop_is_killed_by_wall_clock():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout=1.5)
    assert time.monotonic() - start < 10
    assert not result.passed and result.timed_out
    assert "timeout" in result.reason


def test_huge_allocation_hits_memory_limit():
    result = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", timeout=10, memory_mb=512)
    assert not result.passed
    assert "allocated" not in result.stdout
    assert "memory limit" in result.reason


def test_fork_is_blocked_by_guard():
    result = run_python("import os\nfor _ in range(100):\n    os.fork()\n", timeout=5)
    assert not result.passed
    assert "os.fork" in result.reason and "forbidden" in result.reason


@pytest.mark.skipif(not CAPS["drop_uid"], reason="RLIMIT_NPROC only binds when the child runs unprivileged")
def test_fork_loop_without_guard_is_bounded_by_process_limit():
    """OS layer alone (guard off): a fork loop stops at RLIMIT_NPROC and every child dies with the sandbox."""
    program = (
        "import os, sys, time\n"
        "print('sandbox', os.path.dirname(os.getcwd()), flush=True)\n"
        "children = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as error:\n"
        "    print('limited after', children, type(error).__name__, flush=True)\n"
        "    sys.exit(3)\n"
        "print('unbounded', children)\n"
    )
    result = run_python(program, timeout=10, max_processes=8, guard=False)
    assert not result.passed
    assert "limited after" in result.stdout, result.stdout + result.stderr
    sandbox_dir = result.stdout.split()[1]
    assert int(result.stdout.split()[4]) < 8
    time.sleep(0.5)
    # the sleeping children run ".../python -I -B <sandbox_dir>/main.py": none may survive the sandbox
    leftovers = subprocess.run(["pgrep", "-f", sandbox_dir], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "sleeping children survived the sandbox"


def test_writing_outside_workdir_is_denied(tmp_path):
    target = tmp_path / "evil.txt"
    for code in (f"open({str(target)!r}, 'w').write('pwned')", f"import io\nio.FileIO({str(target)!r}, 'w')"):
        result = run_python(code, timeout=10)
        assert not result.passed
        assert "PermissionError" in result.reason or "not allowed" in result.reason
    assert not target.exists()


def test_writing_inside_workdir_is_allowed():
    code = "open('scratch.txt', 'w').write('ok')\nimport os\nassert open('scratch.txt').read() == 'ok'\nos.remove('scratch.txt')\n"
    assert run_python(code, timeout=10).passed


def test_deleting_files_outside_is_denied(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    os.chmod(tmp_path, 0o755)
    for code in (
        f"import os\nos.remove({str(victim)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
    ):
        result = run_python(code, timeout=10)
        assert not result.passed, code
    assert victim.read_text() == "precious"


@pytest.mark.skipif(not CAPS["drop_uid"], reason="file permissions only protect when the child runs unprivileged")
@pytest.mark.skipif(not os.path.isdir("/var/tmp"), reason="needs /var/tmp: a shared directory outside /tmp")
def test_deleting_files_without_guard_is_denied_by_permissions():
    # outside /tmp: with a private /tmp the child would not even see a victim in the host's /tmp (test below)
    directory = tempfile.mkdtemp(prefix="t2g-sandbox-victim-", dir="/var/tmp")
    try:
        victim = os.path.join(directory, "keep.txt")
        with open(victim, "w") as handle:
            handle.write("precious")
        os.chmod(directory, 0o755)
        result = run_python(f"import os\nos.unlink({victim!r})", timeout=10, guard=False)
        assert not result.passed and "PermissionError" in result.reason
        assert os.path.exists(victim)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Bypasses the guard the way determined code would: ``posix.open`` is the unguarded original of ``os.open``.
_WRITE_SHARED_TMP = """
import os, posix
for path in ({tmp!r}, {shm!r}):
    if os.path.isdir(os.path.dirname(path)):
        fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT, 0o644)
        posix.write(fd, b"written from the sandbox")
        posix.close(fd)
        assert os.path.exists(path)
print("wrote", sorted(os.listdir("/tmp")))
"""


@pytest.mark.skipif(not CAPS["private_tmp"], reason="mount namespaces are not permitted here: no private /tmp")
@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
def test_writes_to_tmp_and_dev_shm_never_reach_the_host(guard):
    name = f"t2g-sandbox-escape-{uuid.uuid4().hex}"
    tmp, shm = os.path.join("/tmp", name), os.path.join("/dev/shm", name)
    try:
        result = run_python(_WRITE_SHARED_TMP.format(tmp=tmp, shm=shm), timeout=10, guard=guard)
        assert result.passed, result.reason + result.stderr  # the writes succeed, inside the child's own tmpfs
        assert name in result.stdout
        assert not os.path.exists(tmp), "the sandboxed program wrote into the host's /tmp"
        assert not os.path.exists(shm), "the sandboxed program wrote into the host's /dev/shm"
    finally:
        for path in (tmp, shm):
            if os.path.exists(path):
                os.unlink(path)


@pytest.mark.skipif(not CAPS["private_tmp"], reason="mount namespaces are not permitted here: no private /tmp")
def test_host_tmp_is_invisible_and_private_tmp_is_size_limited(tmp_path):
    assert str(tmp_path).startswith("/tmp/")  # pytest's tmp_path lives in the host's /tmp
    (tmp_path / "host.txt").write_text("host")
    code = (
        "import os, posix\n"
        f"assert not os.path.exists({str(tmp_path / 'host.txt')!r}), 'host /tmp visible'\n"
        "fd = posix.open('/tmp/big', posix.O_WRONLY | posix.O_CREAT, 0o644)\n"
        "try:\n"
        "    for _ in range(8):\n"
        "        posix.write(fd, b'x' * (1024 * 1024))\n"
        "except OSError as error:\n"
        "    print('full', error.errno)\n"
    )
    result = run_python(code, timeout=10, guard=False, tmp_size_mb=2, max_file_bytes=64 * 1024 * 1024)
    assert result.passed, result.reason + result.stderr
    assert "full 28" in result.stdout  # ENOSPC: the tmpfs is capped at tmp_size_mb


@pytest.mark.skipif(not CAPS["private_tmp"], reason="mount namespaces are not permitted here: no private /tmp")
def test_interpreter_installed_below_tmp_still_runs_inside_the_private_tmp():
    """A checkout (and its virtual environment) under /tmp, as CI and scripts/fresh_machine_check.sh make: the
    private /tmp must keep the interpreter's installation visible, and still hide the rest of the host's /tmp."""
    root = tempfile.mkdtemp(prefix="t2g-venv-under-tmp-")
    try:
        os.chmod(root, 0o755)  # traversable by 'nobody', like a checkout
        venv = os.path.join(root, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
        python = os.path.join(venv, "bin", "python")
        sibling = os.path.join(root, "host-file.txt")
        with open(sibling, "w") as f:
            f.write("host")
        code = (
            "import os, sys\n"
            f"assert sys.prefix == {venv!r}, sys.prefix\n"
            f"assert not os.path.exists({sibling!r}), 'the rest of the host /tmp is visible'\n"
            "print('ran')\n"
        )
        result = run_python(code, timeout=20, python=python)
        assert result.passed, result.reason + result.stderr
        assert result.stdout.strip() == "ran"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_shared_tmp_fallback_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_warned_shared_tmp", False)
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        sandbox._warn_shared_tmp("mount namespaces are not permitted here")
        sandbox._warn_shared_tmp("mount namespaces are not permitted here")
    messages = [r.getMessage() for r in caplog.records if "no private /tmp" in r.getMessage()]
    assert len(messages) == 1 and "shares the host's /tmp" in messages[0]


def test_environment_secrets_are_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    code = "import os\nprint(sorted(os.environ))\nassert os.environ.get('OPENAI_API_KEY'), 'no api key visible'\n"
    result = run_python(code, timeout=10)
    assert not result.passed
    assert "no api key visible" in result.reason
    assert "sk-test-very-secret" not in result.stdout + result.stderr
    assert "HF_TOKEN" not in result.stdout


def test_socket_is_blocked():
    result = run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n", timeout=10)
    assert not result.passed and "network" in result.reason


@pytest.mark.skipif(not CAPS["namespaces"], reason="no network namespace available on this machine")
def test_socket_without_guard_has_no_network():
    code = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)\n"
    result = run_python(code, timeout=10, guard=False)
    assert not result.passed
    assert "OSError" in result.reason or "unreachable" in result.reason.lower()


def test_os_system_and_subprocess_are_blocked(tmp_path):
    marker = tmp_path / "ran"
    for code in (
        f"import os\nos.system('touch {marker}')",
        f"import subprocess\nsubprocess.run(['touch', '{marker}'])",
    ):
        result = run_python(code, timeout=10)
        assert not result.passed and "forbidden operation" in result.reason
    assert not marker.exists()


def test_output_is_capped():
    result = run_python("print('x' * 5_000_000)", timeout=10, max_output_bytes=1000)
    assert len(result.stdout) == 1000 and result.output_truncated


def test_workdir_is_removed_afterwards():
    result = run_python("import os\nprint(os.getcwd())", timeout=10)
    assert result.passed
    assert not os.path.exists(result.stdout.strip())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="code must be a str"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        run_python("print(1)", timeout=0)


def test_creating_directories_or_links_outside_is_denied(tmp_path):
    for code in ("import os\nos.mkdir('/tmp/t2g-sandbox-escape')", "import os\nos.symlink('/etc/passwd', 'pw')"):
        result = run_python(code, timeout=10)
        assert not result.passed and "not allowed" in result.reason, code
    assert not os.path.exists("/tmp/t2g-sandbox-escape")


def test_a_broken_sandbox_raises_instead_of_failing_the_program():
    # the interpreter cannot be executed: every program would "fail" with exit 127, which is not the program's fault
    with pytest.raises(sandbox.SandboxUnavailableError, match="cannot run even a trivial program"):
        run_python("print('never runs')", timeout=10, python="/nonexistent/bin/python3")


def test_a_program_that_fails_on_its_own_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(sandbox, "_last_healthy", {})  # force the health check after the failure
    result = run_python("import sys\nsys.exit(127)", timeout=10)
    assert not result.passed and result.returncode == 127  # the sandbox is healthy, so this is the program's own
    assert None in sandbox._last_healthy
