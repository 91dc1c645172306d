"""Hostile programs against the program critic: each must be scored failing, leave nothing behind, reach no secret
and no other run, and finish within its time limit.

Every case runs through :func:`trl_text2grad.critics.harness.run_tests` (what ``UnitTestCritic`` uses) on every
sandbox backend available here (``bwrap`` and/or ``unshare``). The trusted tests ask for something only a successful
attack could give (the secret token, the right sums without computing them), so a "pass" is a false pass; after
each run the host is checked: marker files absent, the victim file untouched, the helper process alive, no
connection to the host services, no System V IPC object, no surviving process of the sandbox.

CI runs this file as root and, through ``tests/test_sandbox_unprivileged.py``, again as an unprivileged uid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from sandbox_processes import cmdline, stat_ppid, surviving_sandbox_processes
from trl_text2grad.critics import sandbox
from trl_text2grad.critics.harness import TestProgram, run_tests

pytestmark = pytest.mark.adversarial

_BACKENDS = []
for _name in ("bwrap", "unshare"):
    _caps = sandbox._capabilities(None, _name)
    if _caps["backend"] == _name:
        _BACKENDS.append(_name)
if not _BACKENDS:
    pytest.skip(
        f"no sandbox backend on this machine: {sandbox.sandbox_capabilities()['error']}", allow_module_level=True
    )

MARK = "t2g-adv-mark"
SURVIVOR_MARKERS = ("/sandbox/boot.py", MARK)  # a sandbox's command line, or one a hostile program renamed itself to
ADD_TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-5, 5) == 0\n"
ADD_TESTS += "    assert candidate(10 ** 30, 1) == 10 ** 30 + 1\n"


@pytest.fixture(params=_BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv(sandbox.BACKEND_ENV, request.param)
    return request.param


class _Server(threading.Thread):
    """A host service that hands out the secret to whoever connects (and counts connections)."""

    def __init__(self, family, address, secret: bytes):
        super().__init__(daemon=True)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.secret, self.connections, self.stop = secret, 0, False

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.sendall(self.secret)
            conn.close()


def _sysv_keys(kind: str) -> set[str]:
    try:
        with open(f"/proc/sysvipc/{kind}") as handle:
            return {line.split()[0] for line in handle.read().splitlines()[1:] if line.split()}
    except OSError:
        return set()


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Secrets and victims on the host, and the checks that nothing reached them."""
    secret = "T2G-SECRET-" + uuid.uuid4().hex
    base = tmp_path_factory.mktemp("adv")
    home = os.path.expanduser("~")
    home_dir = home if os.access(home, os.W_OK) else str(base)
    secret_file = os.path.join(home_dir, f".t2g-adv-secret-{uuid.uuid4().hex}")
    with open(os.open(secret_file, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secret)
    victim = base / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    helper = subprocess.Popen(
        ["sleep", "600"], env={"PATH": "/usr/bin:/bin", "HF_TOKEN": secret, "OPENAI_API_KEY": secret}
    )
    tcp = _Server(socket.AF_INET, ("127.0.0.1", 0), secret.encode())
    unix_path = str(base / "service.sock")
    unix = _Server(socket.AF_UNIX, unix_path, secret.encode())
    tcp.start()
    unix.start()
    marker = f"{MARK}-{uuid.uuid4().hex[:8]}"
    key = 0x7432 << 16 | (os.getpid() & 0xFFFF)
    ctx = {
        "marker": marker,
        "secret_file": secret_file,
        "home_file": os.path.join(home_dir, marker),
        "host_tmp_file": str(base / marker),
        "victim": str(victim),
        "helper_pid": helper.pid,
        "port": tcp.sock.getsockname()[1],
        "unix_path": unix_path,
        "ipc_key": key,
    }
    shm_before, msg_before = _sysv_keys("shm"), _sysv_keys("msg")

    def verify():
        leftovers = [
            p
            for p in (f"/var/tmp/{marker}", f"/run/lock/{marker}", f"/dev/shm/{marker}", f"/tmp/{marker}",
                      ctx["home_file"], ctx["host_tmp_file"])
            if os.path.lexists(p)
        ]  # fmt: skip
        assert not leftovers, f"files written on the host: {leftovers}"
        assert victim.read_text() == "precious" and (victim.stat().st_mode & 0o777) == 0o644
        assert helper.poll() is None, "the helper process was killed"
        assert tcp.connections == 0 and unix.connections == 0, "a host service was reached"
        assert str(key) not in _sysv_keys("shm") - shm_before and str(key) not in _sysv_keys("msg") - msg_before
        deadline = time.monotonic() + 1.0  # kill_sandbox returns once the namespace is gone
        while surviving_sandbox_processes(SURVIVOR_MARKERS) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = surviving_sandbox_processes(SURVIVOR_MARKERS)
        assert not survivors, f"processes survived the run: {survivors}"

    os.environ["OPENAI_API_KEY"] = secret  # in the critic's own environment too
    try:
        yield {"secret": secret, "ctx": ctx, "verify": verify}
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
        tcp.stop = unix.stop = True
        helper.kill()
        helper.wait()
        os.unlink(secret_file)


def _judge(host, source: str, tests: str | None = None, entry: str = "f", timeout: float = 5.0, verify: bool = True):
    if tests is None:  # the escape cases: only the secret (or a successful attack) would pass
        tests = f"def check(candidate):\n    assert candidate({host['ctx']!r}) == {host['secret']!r}\n"
    start = time.monotonic()
    result = run_tests(TestProgram(source, tests, entry, "check"), timeout=timeout, memory_mb=512)
    elapsed = time.monotonic() - start
    assert not result.passed, f"false pass: {result}"
    assert elapsed < timeout + 6.0, f"took {elapsed:.1f} s with a {timeout} s limit"
    if verify:  # concurrent tests verify once every run has ended
        host["verify"]()
    return result


# --- verdict forgery (the task: add(a, b); none of these adds) ----------------------------------------------------

FORGERIES = {
    "os_exit_0_at_top_level": "import os\nos._exit(0)\ndef add(a, b):\n    return 0\n",
    "os_exit_0_in_function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys_exit_0_at_top_level": "import sys\nsys.exit(0)\n",
    "sys_exit_0_in_function": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "atexit_hook": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    raise SystemExit(0)\n",
    "always_equal_object": "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
    "def add(a, b):\n    return A()\n",
    "int_subclass_equal_to_all": "class I(int):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n"
    "    return I(0)\n",
    "str_subclass_equal_to_all": "class S(str):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n"
    "    return S('x')\n",
    "settrace_and_setprofile": "import sys, threading\ndef t(*a):\n    return None\nsys.settrace(t)\nsys.setprofile(t)\n"
    "threading.settrace(t)\ndef add(a, b):\n    return a - b\n",
    "builtins_monkeypatched": "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
    "builtins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\ndef add(a, b):\n    return 0\n",
    "server_encoder_patched": "import sys\ndef add(a, b):\n    f = sys._getframe()\n    while f:\n"
    "        if '_enc' in f.f_globals:\n            f.f_globals['_enc'] = lambda x, depth=0: 3\n"
    "            f.f_globals['_send'].__globals__['_dumps'] = lambda o, **k: '{\"passed\": true}'\n"
    "        f = f.f_back\n    return 3\n",
    "fake_frames_on_every_fd": "import os, json\ndef add(a, b):\n    for fd in range(3, 256):\n"
    "        for rid in range(1, 8):\n            d = json.dumps({'id': rid, 'ok': a + b + 1}).encode()\n"
    "            try:\n                os.write(fd, len(d).to_bytes(4, 'big') + d)\n            except OSError:\n"
    '                pass\n        try:\n            os.write(fd, b\'{"passed": true, "kind": "passed"}\')\n'
    "        except OSError:\n            pass\n    return None\n",
    "pass_markers_printed": "import sys, os\ndef add(a, b):\n    print('All unit tests passed')\n"
    '    print(\'{"passed": true, "kind": "passed", "reason": "passed"}\')\n'
    "    sys.stderr.write('passed\\n')\n    os.write(1, b'OK\\n')\n    return None\n",
    "keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "stop_iteration": "def add(a, b):\n    raise StopIteration\n",
    "exception_whose_str_hangs": "class E(Exception):\n    def __str__(self):\n        while True:\n            pass\n"
    "def add(a, b):\n    raise E()\n",
    "kill_itself": "import os\ndef add(a, b):\n    os.kill(os.getpid(), 9)\n",
    "kill_namespace_init": "import os, signal\ndef add(a, b):\n    for pid in (1, os.getppid()):\n"
    "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    return 0\n",
    "close_every_fd": "import os\ndef add(a, b):\n    os.closerange(0, 1024)\n    return a + b\n",
    "huge_frame_header": "import os, time\ndef add(a, b):\n    for fd in range(3, 64):\n        try:\n"
    "            os.write(fd, b'\\xff\\xff\\xff\\xff')\n        except OSError:\n            pass\n"
    "    time.sleep(30)\n",
    "replies_written_ahead": "import os, json\nn = [0]\ndef add(a, b):\n    n[0] += 1\n"
    "    for fd in range(3, 64):\n        for rid in range(n[0] + 1, n[0] + 4):\n"
    "            d = json.dumps({'id': rid, 'ok': 3}).encode()\n            try:\n"
    "                os.write(fd, len(d).to_bytes(4, 'big') + d)\n            except OSError:\n                pass\n"
    "    return 3\n",
    "deeply_nested_answer": "def add(a, b):\n    x = 3\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "huge_answer": "def add(a, b):\n    return 'x' * (200 << 20)\n",
    "generator_answer": "def add(a, b):\n    return (v for v in [a + b])\n",
    "sleeps_forever": "import time\ndef add(a, b):\n    time.sleep(3600)\n",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_verdict_forgery_fails(name, backend, host):
    timeout = 3.0 if name in ("exception_whose_str_hangs", "huge_frame_header", "sleeps_forever") else 8.0
    _judge(host, FORGERIES[name], ADD_TESTS, "add", timeout=timeout)


def test_correct_add_passes(backend, host):
    """The control: the same tests pass for a correct answer in the same sandbox."""
    result = run_tests(TestProgram("def add(a, b):\n    return a + b\n", ADD_TESTS, "add"), timeout=10)
    assert result.passed, result


# --- escapes: file system, environment, /proc, network, signals, IPC (the test wants the secret) ------------------

ESCAPES = {
    "write_var_tmp": "import posix, os\ndef f(c):\n    for d in ('/var/tmp', '/run/lock', '/dev/shm', '/tmp'):\n"
    "        try:\n            fd = posix.open(d + '/' + c['marker'], os.O_CREAT | os.O_WRONLY, 0o666)\n"
    "            posix.write(fd, b'x')\n        except OSError:\n            pass\n    return 'done'\n",
    "write_host_tmp_and_home": "def f(c):\n    for p in (c['host_tmp_file'], c['home_file']):\n        try:\n"
    "            open(p, 'w').write('x')\n        except OSError:\n            pass\n    return 'done'\n",
    "read_0600_secret": "def f(c):\n    return open(c['secret_file']).read()\n",
    "read_environment": "import os\ndef f(c):\n    return os.environ.get('OPENAI_API_KEY') or os.environ.get('HF_TOKEN')\n",
    "proc_environ_scan": "import os\ndef f(c):\n    for pid in os.listdir('/proc'):\n        try:\n"
    "            env = open('/proc/%s/environ' % pid, 'rb').read().split(b'\\0')\n        except OSError:\n"
    "            continue\n        for e in env:\n            if e.startswith((b'HF_TOKEN=', b'OPENAI_API_KEY=')):\n"
    "                return e.split(b'=', 1)[1].decode()\n    return open('/proc/%d/environ' % os.getppid()).read()\n",
    "proc_ppid_and_cmdline": "import os\ndef f(c):\n    found = []\n    for pid in os.listdir('/proc'):\n"
    "        if pid.isdigit():\n            found.append(open('/proc/%s/cmdline' % pid, 'rb').read())\n"
    "    return str(c['helper_pid']) if any(b'sleep' in x for x in found) else found\n",
    "tcp_to_host_localhost": "import socket\ndef f(c):\n    s = socket.create_connection(('127.0.0.1', c['port']), 2)\n"
    "    return s.recv(200).decode()\n",
    "unix_socket_to_host": "import socket\ndef f(c):\n    s = socket.socket(socket.AF_UNIX)\n"
    "    s.connect(c['unix_path'])\n    return s.recv(200).decode()\n",
    "internet": "import socket\ndef f(c):\n    s = socket.create_connection(('1.1.1.1', 53), 2)\n    return 'connected'\n",
    "kill_parent_and_everyone": "import os, signal\ndef f(c):\n    for pid in (os.getppid(), c['helper_pid'], -1):\n"
    "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    return 'done'\n",
    "delete_and_chmod_host_files": "import os, shutil\ndef f(c):\n    for action in (lambda: os.chmod(c['victim'], 0o777),\n"
    "                   lambda: open(c['victim'], 'w').write('gone'), lambda: os.remove(c['victim']),\n"
    "                   lambda: shutil.rmtree(os.path.dirname(c['victim']))):\n        try:\n            action()\n"
    "        except OSError:\n            pass\n    return 'done'\n",
    "subprocess_reimported": "import sys\ndef f(c):\n    sys.modules.pop('subprocess', None)\n    import subprocess\n"
    "    subprocess.run(['/bin/sh', '-c', 'echo x > %s; rm -f %s' % (c['host_tmp_file'], c['victim'])])\n"
    "    return subprocess.run(['cat', c['secret_file']], capture_output=True, text=True).stdout\n",
    "ctypes_namespaces_and_mounts": "import ctypes, os\ndef f(c):\n    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    libc.unshare(0x10000000 | 0x00020000)\n    libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)\n"
    "    libc.umount2(b'/usr', 2)\n    libc.chroot(b'/proc/1/root')\n    libc.setns(os.open('/proc/1/ns/mnt', 0), 0)\n"
    "    return open(c['secret_file']).read()\n",
    "symlink_to_secret": "import os\ndef f(c):\n    os.symlink(c['secret_file'], '/work/link')\n"
    "    return open('/work/link').read()\n",
    "proc_root_paths": "def f(c):\n    for p in ('/proc/1/root', '/proc/self/root', '/proc/1/cwd/..'):\n        try:\n"
    "            return open(p + c['secret_file']).read()\n        except OSError:\n            pass\n    return 'no'\n",
    "ptrace_helper": "import ctypes\ndef f(c):\n    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    rc = libc.ptrace(16, c['helper_pid'], None, None)\n    return 'attached' if rc == 0 else ctypes.get_errno()\n",
    "sysv_shared_memory": "import ctypes\ndef f(c):\n    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    libc.shmget(c['ipc_key'], 4096, 0o1000 | 0o666)\n    libc.msgget(c['ipc_key'], 0o1000 | 0o666)\n"
    "    return 'left behind'\n",
    "posix_shared_memory": "from multiprocessing import shared_memory\ndef f(c):\n"
    "    shared_memory.SharedMemory(name=c['marker'], create=True, size=4096)\n    return 'left behind'\n",
    "setuid_and_capabilities": "import os\ndef f(c):\n    for call in (lambda: os.setuid(0), lambda: os.setgid(0),\n"
    "                 lambda: os.chroot('/tmp')):\n        try:\n            call()\n        except OSError:\n            pass\n"
    "    return open(c['secret_file']).read()\n",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_fails_and_leaves_nothing(name, backend, host):
    _judge(host, ESCAPES[name])


# --- processes that try to outlive their verdict ------------------------------------------------------------------

SURVIVORS = {
    "setsid_double_fork": "import os, time\ndef f(c):\n    if os.fork() == 0:\n        os.setsid()\n"
    "        if os.fork() == 0:\n            time.sleep(120)\n        os._exit(0)\n    return 'forked'\n",
    "detached_subprocess": "import subprocess\ndef f(c):\n"
    f"    subprocess.Popen(['/bin/sh', '-c', 'sleep 120 # {MARK}'], start_new_session=True)\n    return 'spawned'\n",
    "daemon_ignoring_signals_then_timeout": "import os, signal, time, subprocess\ndef f(c):\n"
    "    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n        signal.signal(s, signal.SIG_IGN)\n"
    f"    subprocess.Popen(['/bin/sh', '-c', 'trap \"\" TERM HUP; sleep 120 # {MARK}'], start_new_session=True)\n"
    "    if os.fork() == 0:\n        os.setsid()\n        time.sleep(120)\n    while True:\n        pass\n",
}


@pytest.mark.parametrize("name", sorted(SURVIVORS))
def test_nothing_survives_the_verdict(name, backend, host):
    _judge(host, SURVIVORS[name], timeout=3.0)


# --- resource exhaustion ---------------------------------------------------------------------------------------------

RESOURCES = {
    "fork_bomb": "import os\ndef f(c):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
    "            pass\n",
    "thread_bomb": "import threading, time\ndef f(c):\n    n = 0\n    while True:\n        try:\n"
    "            threading.Thread(target=time.sleep, args=(60,)).start()\n            n += 1\n        except Exception:\n"
    "            return n\n",
    "memory_at_once": "def f(c):\n    x = bytearray(16 << 30)\n    return 'allocated'\n",
    "memory_step_by_step": "def f(c):\n    keep = []\n    while True:\n        keep.append(bytearray(64 << 20))\n",
    "disk_fill_work_and_tmp": "import os\ndef f(c):\n    for d in ('/work', '/tmp', '/dev/shm', '/var/tmp'):\n        try:\n"
    "            with open(d + '/fill', 'wb') as h:\n                for _ in range(4096):\n"
    "                    h.write(b'x' * (1 << 20))\n        except OSError:\n            pass\n    return 'filled'\n",
    "file_descriptors": "def f(c):\n    keep = []\n    while True:\n        keep.append(open('/dev/null'))\n",
    "cpu_spin_in_threads": "import threading\ndef spin():\n    while True:\n        pass\ndef f(c):\n"
    "    for _ in range(8):\n        threading.Thread(target=spin, daemon=True).start()\n    spin()\n",
}


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_resource_exhaustion_is_contained(name, backend, host):
    _judge(host, RESOURCES[name], timeout=4.0)


# --- cross-run interference ---------------------------------------------------------------------------------------


def test_concurrent_runs_cannot_see_each_other(backend, host):
    """Run A leaves the secret in every writable place and waits; run B, started meanwhile, looks for it."""
    secret = host["secret"]
    writer = (
        "import os, time\ndef f(c):\n    for d in ('/work', '/tmp', '/dev/shm', '/var/tmp', '/run/lock'):\n"
        f"        open(d + '/loot', 'w').write({secret!r})\n    time.sleep(4)\n    return 'wrote'\n"
    )
    reader = (
        "import os, glob\ndef f(c):\n    paths = glob.glob('/proc/*/root/*/loot') + glob.glob('/proc/*/cwd/loot')\n"
        "    paths += ['/work/loot', '/tmp/loot', '/dev/shm/loot', '/var/tmp/loot', '/run/lock/loot']\n"
        "    for p in paths:\n        try:\n            return open(p).read()\n        except OSError:\n            pass\n"
        "    return 'nothing'\n"
    )
    results = {}
    thread = threading.Thread(
        target=lambda: results.setdefault("writer", _judge(host, writer, timeout=8.0, verify=False))
    )
    thread.start()
    time.sleep(1.5)
    _judge(host, reader, timeout=5.0, verify=False)
    thread.join()
    assert results["writer"].kind == "assertion"
    host["verify"]()


def test_fork_bomb_does_not_starve_a_concurrent_run(backend, host):
    bomb = RESOURCES["fork_bomb"]
    threads = (
        "import threading\ndef add(a, b):\n    out = []\n    ts = [threading.Thread(target=out.append, args=(1,)) "
        "for _ in range(16)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return a + b + len(out) - 16\n"
    )
    judged = {}
    thread = threading.Thread(target=lambda: judged.setdefault("bomb", _judge(host, bomb, timeout=6.0, verify=False)))
    thread.start()
    time.sleep(2.0)
    result = run_tests(TestProgram(threads, ADD_TESTS, "add"), timeout=10)
    thread.join()
    assert result.passed, result
    assert "bomb" in judged  # the bomb was judged failing within its limit
    host["verify"]()


def _descendants(root: int) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        children = {int(p) for p in filter(str.isdigit, os.listdir("/proc")) if stat_ppid(int(p)) in frontier} - found
        found |= children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_killed_critic_leaves_nothing_behind(backend, host):
    """The critic process dies (SIGKILL) while the code sleeps inside a call: the test process, the launcher and every
    process in the sandbox die with it."""
    program = (
        "import sys\nfrom trl_text2grad.critics.harness import TestProgram, run_tests\n"
        "run_tests(TestProgram('import os, time\\ndef f(c):\\n    os.fork() or os.setsid()\\n    time.sleep(300)\\n',"
        " 'def check(c):\\n    c(1)\\n', 'f'), timeout=120)\n"
    )
    critic = subprocess.Popen([sys.executable, "-c", program], env=dict(os.environ), start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        tree: set[int] = set()
        while time.monotonic() < deadline:
            tree = _descendants(critic.pid)
            if sum("/sandbox/boot.py" in cmdline(p) for p in tree) >= 2:  # the server and its forked child
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the sandbox did not start: {[cmdline(p) for p in tree]}")
        time.sleep(0.5)
        tree = _descendants(critic.pid)
    finally:
        critic.kill()
        critic.wait()
    deadline = time.monotonic() + 3.0
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [(p, cmdline(p)) for p in tree if _alive(p)], "processes outlived the killed critic"
    host["verify"]()


def test_case_count():
    """The issue asks for at least 40 hostile programs."""
    assert len(FORGERIES) + len(ESCAPES) + len(SURVIVORS) + len(RESOURCES) + 1 >= 40


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
