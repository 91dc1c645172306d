"""Run trusted unit tests against untrusted code that lives in another process: a verdict the code cannot forge.

The response (the *candidate*) runs in the sandbox (:func:`~trl_text2grad.critics.sandbox.launch`) inside a small
server that defines its functions and answers requests; the tests (they come from the data set) run in a separate,
trusted Python process outside the sandbox. The two talk over a Unix socket pair with length-prefixed JSON frames:

* the trusted side asks for names of the candidate module and calls them; the candidate answers each request with
  **plain data** (``None``, booleans, numbers — numpy scalars included —, strings, bytes, lists, tuples, dicts,
  sets), or an exception description (type name, message, line numbers in the candidate), or, for anything else
  (a class, an instance, a generator, a function), an opaque handle the tests can call / iterate / read attributes
  of, which are again forwarded. Arguments the candidate mutated in place (``lst.sort()``-style tasks) are copied back.
* the tests only ever see values the trusted side built itself from that data: an object with an ``__eq__`` that
  always answers ``True`` arrives as an opaque handle, equal only to itself. Exceptions of built-in types
  (``ValueError``, ...) are re-raised as that type so ``pytest.raises`` works; others become
  :class:`CandidateError`.
* pass/fail is computed by the trusted process from what its tests did, and reported to the critic over its own
  pipe. Nothing the candidate controls decides it: not its exit status (``os._exit(0)`` only ends the candidate, and
  the next call then fails), not its output (thrown away), not files, not anything it writes on the socket (a
  malformed frame, a reply to the wrong request, a reply too large, silence past the per-call timeout or a dead
  process fail the run; a well-formed reply is just the value of that call).

Weaker guarantee, documented: the candidate's answers are data, so tests that need the candidate's objects *in
their own process* do not work through handles: passing a test-defined callable or object *to* the candidate
(``f(lambda x: ...)``), comparing the candidate's instances by their own ``__eq__``, or catching the candidate's own
exception classes (``pytest.raises(solution.MyError)``). Such calls fail (scored as failing, never as passing).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Literal

from .sandbox import PROGRAM_FILENAME, SANDBOX_DIR, SandboxUnavailableError, kill_sandbox, launch

__all__ = ["CandidateError", "TestProgram", "TestResult", "run_tests", "CANDIDATE_PATH"]

#: Path of the candidate's code inside the sandbox; candidate tracebacks refer to it.
CANDIDATE_PATH = f"{SANDBOX_DIR}/{PROGRAM_FILENAME}"
_MAX_FRAME = 16 * 1024 * 1024


class CandidateError(Exception):
    """Raised in the trusted tests for an exception of the candidate that is not a built-in exception type."""


@dataclass
class TestProgram:
    """What :func:`run_tests` runs: untrusted candidate code and trusted tests, kept apart.

    Attributes:
        candidate: Source of the candidate module (runs in the sandbox as ``/sandbox/main.py``).
        tests: Trusted test code: HumanEval style (``def check(candidate)``) or pytest style (``test_*`` functions
            that ``from solution import ...``).
        entry_point: The function ``check`` is called with (HumanEval style).
        style: ``"check"`` or ``"pytest"``.
        prelude: Trusted code run before the tests in the tests' namespace (e.g. the HumanEval prompt, whose helper
            functions some tests use); skipped when it is not valid Python.
        code_first_line: 1-based line of ``candidate`` where the response's code starts.
        code_num_lines: Number of lines of the response's code in ``candidate``.
    """

    candidate: str
    tests: str
    entry_point: str = ""
    style: Literal["check", "pytest"] = "check"
    prelude: str = ""
    code_first_line: int = 1
    code_num_lines: int = 0

    __test__ = False  # not a pytest test class


@dataclass
class TestResult:
    """Verdict of :func:`run_tests`, computed by the trusted side.

    Attributes:
        passed: Every test ran to the end without failing, and the candidate answered every request properly.
        reason: ``"passed"`` or one line saying why not.
        kind: ``passed``, ``assertion`` (a test assertion failed), ``candidate_exception`` (the candidate raised,
            also while loading, e.g. ``SyntaxError``), ``missing`` (the candidate lacks a name the tests use),
            ``test_error`` (the test code raised something else), ``bad_tests`` (the tests are not valid Python or
            define no test: the response was not judged), ``timeout``, ``candidate_died`` (the candidate
            process ended or stopped answering properly), ``protocol`` (a malformed or oversized reply),
            ``harness`` (the trusted side itself failed).
        exception: ``"Type: message"`` of the failure, or ``""``.
        candidate_lines: 1-based lines of the candidate code in the failing traceback (outermost first).
        timed_out: The run or a call exceeded its time limit.
        duration_s: Wall-clock seconds.
        stderr: A readable summary (exception line and candidate traceback lines) for logs.
    """

    passed: bool
    reason: str
    kind: str
    exception: str = ""
    candidate_lines: list[int] = field(default_factory=list)
    timed_out: bool = False
    duration_s: float = 0.0
    stderr: str = ""

    __test__ = False  # not a pytest test class


# --- the untrusted side (runs in the sandbox; standard library only) --------------------------------------------

_SERVER_SOURCE = r"""
import builtins, json, math, os, sys, traceback, types
_FD = int(sys.argv[1])
_MODULE = sys.argv[2]
_MAX = int(sys.argv[3])
_read, _write, _dumps, _loads = os.read, os.write, json.dumps, json.loads
_PLAIN = (type(None), bool, str)
_BUILTIN_EXC = {name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)}
_objects, _ids = {}, {}


def _recv():
    def exact(n):
        chunks = []
        while n:
            chunk = _read(_FD, min(n, 1 << 20))
            if not chunk:
                os._exit(0)
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)
    size = int.from_bytes(exact(4), "big")
    return _loads(exact(size))


def _send(obj):
    data = _dumps(obj, ensure_ascii=True, allow_nan=False).encode()
    if len(data) > _MAX:
        data = _dumps({"id": obj.get("id"), "error": {"type": "ValueError", "builtin": False,
                       "message": f"the answer is too large ({len(data)} bytes)", "frames": []}}).encode()
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[_write(_FD, view):]


def _handle(obj):
    key = _ids.get(id(obj))
    if key is None:
        key = len(_objects) + 1
        _objects[key], _ids[id(obj)] = obj, key
    return {"$ref": [key, type(obj).__qualname__[:80], callable(obj)]}


def _enc(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if t in _PLAIN:
        return x
    if t is int:
        return x if -2**62 < x < 2**62 else {"$int": hex(x)}
    if t is float:
        return x if math.isfinite(x) else {"$float": repr(x)}
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t is tuple:
        return {"$tuple": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"$dict": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"$set" if t is set else "$frozenset": [_enc(v, depth + 1) for v in x]}
    if t is bytes or t is bytearray:
        return {"$bytes" if t is bytes else "$bytearray": x.hex()}
    if t is complex:
        return {"$complex": [_enc(x.real), _enc(x.imag)]}
    if t.__module__ == "numpy" and getattr(x, "ndim", None) == 0 and hasattr(x, "item"):
        return _enc(x.item(), depth + 1)  # numpy scalars (np.int64(3) == 3 in the candidate's own process too)
    return _handle(x)


def _dec(x):
    if isinstance(x, list):
        return [_dec(v) for v in x]
    if not isinstance(x, dict):
        return x
    (tag, v), = x.items()
    if tag == "$ref":
        return _objects[v]
    if tag == "$int":
        return int(v, 16)
    if tag == "$float":
        return float(v)
    if tag == "$tuple":
        return tuple(_dec(i) for i in v)
    if tag == "$dict":
        return {_dec(k): _dec(i) for k, i in v}
    if tag == "$set":
        return {_dec(i) for i in v}
    if tag == "$frozenset":
        return frozenset(_dec(i) for i in v)
    if tag == "$bytes":
        return bytes.fromhex(v)
    if tag == "$bytearray":
        return bytearray.fromhex(v)
    if tag == "$complex":
        return complex(_dec(v[0]), _dec(v[1]))
    raise ValueError("unknown tag")


def _error(exc):
    try:
        message = str(exc)[:2000]
    except BaseException:
        message = "<unprintable>"
    frames = [[f.filename, f.lineno] for f in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.lineno:
        frames.append([exc.filename or "", exc.lineno])
    name = type(exc).__name__
    builtin = getattr(builtins, name, None) is type(exc)
    return {"type": name[:100], "builtin": builtin, "message": message, "frames": frames[-50:]}


def _serve():
    module = types.ModuleType(_MODULE)
    module.__file__ = sys.argv[4]
    module.__builtins__ = builtins
    sys.modules[_MODULE] = module
    while True:
        request = _recv()
        rid = request.get("id")
        try:
            op = request["op"]
            after = None
            if op == "load":
                with open(sys.argv[4], encoding="utf-8") as handle:
                    source = handle.read()
                exec(compile(source, sys.argv[4], "exec"), module.__dict__)
                value = None
            else:
                target = module if request.get("ref", 0) == 0 else _objects[request["ref"]]
                if op == "getattr":
                    value = getattr(target, request["name"])
                elif op == "setattr":
                    setattr(target, request["name"], _dec(request["value"]))
                    value = None
                elif op == "call":
                    sent = request["args"]
                    args = [_dec(a) for a in sent]
                    kwargs = {k: _dec(v) for k, v in request["kwargs"]}
                    value = target(*args, **kwargs)
                    after = {}
                    for i, (original, arg) in enumerate(zip(sent, args)):
                        if type(arg) in (list, dict, set, bytearray):
                            try:
                                now = _enc(arg)
                            except BaseException:
                                continue
                            if now != original:
                                after[str(i)] = now
                elif op == "names":
                    public = getattr(module, "__all__", None)
                    if not (type(public) in (list, tuple) and all(type(n) is str for n in public)):
                        public = [n for n in list(vars(module)) if type(n) is str and not n.startswith("_")]
                    value = list(public)
                elif op == "iter":
                    value = iter(target)
                elif op == "next":
                    value = next(target)
                else:
                    raise ValueError("unknown request")
            reply = {"id": rid, "ok": _enc(value)}
            if after:
                reply["after"] = after
        except BaseException as exc:
            reply = {"id": rid, "error": _error(exc)}
        _send(reply)


_serve()
"""


# --- the trusted side (a separate process outside the sandbox) --------------------------------------------------

_RUNNER_SOURCE = r'''
import builtins, inspect, json, math, os, select, sys, time, traceback, types
try:  # die with the critic (Linux): a killed critic leaves no test process behind
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
    pass
_spec = json.loads(sys.stdin.read())
_OUT = os.dup(1)
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
sys.stdout = open(os.devnull, "w")
_FD = int(sys.argv[1])
_DEADLINE = time.monotonic() + _spec["timeout"]
_CALL_TIMEOUT = _spec["call_timeout"]
_MAX = _spec["max_frame"]
_CANDIDATE = _spec["candidate_path"]


class CandidateError(Exception):
    """An exception of the candidate that is not a built-in exception type."""


class _Fatal(BaseException):
    """The candidate broke the protocol, died or timed out: no test may swallow this."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


_state = {"fatal": None, "next_id": 0, "calls": 0}
_remotes = {}


def _fatal(kind, message):
    error = _Fatal(kind, message)
    if _state["fatal"] is None:
        _state["fatal"] = error
    raise error


def _read_exact(n, deadline):
    chunks = []
    while n:
        left = deadline - time.monotonic()
        if left <= 0:
            _fatal("timeout", "timeout: the candidate did not answer in time")
        ready, _, _ = select.select([_FD], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(_FD, min(n, 1 << 20))
        except OSError:
            chunk = b""
        if not chunk:
            _fatal("candidate_died", "the candidate process ended before answering (it exited or was killed)")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _request(op, **fields):
    if _state["fatal"] is not None:
        raise _state["fatal"]
    _state["next_id"] += 1
    rid = _state["next_id"]
    data = json.dumps({"id": rid, "op": op, **fields}, ensure_ascii=True, allow_nan=False).encode()
    view = memoryview(len(data).to_bytes(4, "big") + data)
    try:
        while view:
            view = view[os.write(_FD, view):]
    except OSError:
        _fatal("candidate_died", "the candidate process ended (cannot send it the call)")
    now = time.monotonic()
    deadline = min(_DEADLINE, now + _CALL_TIMEOUT) if _CALL_TIMEOUT else _DEADLINE
    size = int.from_bytes(_read_exact(4, deadline), "big")
    if size > _MAX:
        _fatal("protocol", f"the candidate's answer is too large ({size} bytes > {_MAX})")
    try:
        reply = json.loads(_read_exact(size, deadline))
        if type(reply) is not dict or reply.get("id") != rid:
            raise ValueError("answer to another request")
        if "error" in reply:
            error = reply["error"]
            exc = _exception(error)
        else:
            value = _dec(reply["ok"])
            after = reply.get("after") or {}
            mutated = {int(i): _dec(v) for i, v in after.items()}
    except _Fatal:
        raise
    except Exception as err:
        _fatal("protocol", f"malformed answer from the candidate ({type(err).__name__})")
    if "error" in reply:
        raise exc
    return value, mutated


def _exception(error):
    name, message = str(error["type"])[:100], str(error["message"])[:2000]
    frames = [int(line) for path, line in error["frames"] if path == _CANDIDATE]
    cls = getattr(builtins, name, None) if error.get("builtin") is True else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = None
    try:
        exc = cls(message) if cls is not None else CandidateError(f"{name}: {message}")
    except Exception:
        exc = CandidateError(f"{name}: {message}")
    exc._t2g_candidate = (name, message, frames)
    return exc


class Remote:
    """An object that lives in the candidate process; equal only to itself."""

    __slots__ = ("_ref", "_type", "__weakref__")

    def __init__(self, ref, type_name):
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_type", type_name)

    def __call__(self, *args, **kwargs):
        _state["calls"] += 1
        value, mutated = _request("call", ref=self._ref, args=[_enc(a) for a in args],
                                  kwargs=[[str(k), _enc(v)] for k, v in kwargs.items()])
        for index, new in mutated.items():
            if 0 <= index < len(args):
                _apply(args[index], new)
        return value

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _request("getattr", ref=self._ref, name=name)[0]

    def __setattr__(self, name, value):
        _request("setattr", ref=self._ref, name=name, value=_enc(value))

    def __iter__(self):
        return _request("iter", ref=self._ref)[0]

    def __next__(self):
        return _request("next", ref=self._ref)[0]

    def __repr__(self):
        return f"<candidate {self._type}>"


class CandidateModule(types.ModuleType):
    def __getattr__(self, name):
        if name == "__all__":  # ``from solution import *``
            names = _request("names")[0]
            if type(names) is not list or not all(type(n) is str for n in names):
                _fatal("protocol", "malformed list of names from the candidate")
            return names
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _request("getattr", ref=0, name=name)[0]
        setattr(self, name, value) if isinstance(value, Remote) else None
        return value


def _apply(target, new):
    if type(target) is list and type(new) is list:
        target[:] = new
    elif type(target) is dict and type(new) is dict:
        target.clear(); target.update(new)
    elif type(target) is set and type(new) is set:
        target.clear(); target.update(new)
    elif type(target) is bytearray and type(new) is bytearray:
        target[:] = new


def _enc(x, depth=0):
    if depth > 200:
        raise ValueError("argument nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -2**62 < x < 2**62 else {"$int": hex(x)}
    if t is float:
        return x if math.isfinite(x) else {"$float": repr(x)}
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t is tuple:
        return {"$tuple": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"$dict": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"$set" if t is set else "$frozenset": [_enc(v, depth + 1) for v in x]}
    if t is bytes or t is bytearray:
        return {"$bytes" if t is bytes else "$bytearray": x.hex()}
    if t is complex:
        return {"$complex": [_enc(x.real), _enc(x.imag)]}
    if t is Remote:
        return {"$ref": x._ref}
    raise TypeError(f"cannot pass a {t.__name__} to the candidate (only plain data crosses the sandbox boundary)")


def _dec(x):
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is list:
        return [_dec(v) for v in x]
    if type(x) is not dict or len(x) != 1:
        raise ValueError("bad value")
    (tag, v), = x.items()
    if tag == "$ref":
        ref, type_name, _ = v
        if type(ref) is not int:
            raise ValueError("bad ref")
        remote = _remotes.get(ref)
        if remote is None:
            remote = _remotes[ref] = Remote(ref, str(type_name)[:80])
        return remote
    if tag == "$int":
        return int(v, 16)
    if tag == "$float":
        if v not in ("nan", "inf", "-inf"):
            raise ValueError("bad float")
        return float(v)
    if tag == "$tuple":
        return tuple(_dec(i) for i in v)
    if tag == "$dict":
        return {_dec(k): _dec(i) for k, i in v}
    if tag == "$set":
        return {_dec(i) for i in v}
    if tag == "$frozenset":
        return frozenset(_dec(i) for i in v)
    if tag == "$bytes":
        return bytes.fromhex(v)
    if tag == "$bytearray":
        return bytearray.fromhex(v)
    if tag == "$complex":
        re, im = _dec(v[0]), _dec(v[1])
        if type(re) not in (int, float) or type(im) not in (int, float):
            raise ValueError("bad complex")
        return complex(re, im)
    raise ValueError("unknown tag")


def _one_line(exc):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _report(passed, kind, reason, exception="", lines=()):
    data = json.dumps({"passed": passed, "kind": kind, "reason": reason[:1000], "exception": exception[:1000],
                       "lines": list(lines), "calls": _state["calls"]}).encode()
    while data:
        data = data[os.write(_OUT, data):]
    os._exit(0)


def _failure(exc, test_name):
    fatal = _state["fatal"]
    if fatal is not None:
        _report(False, fatal.kind, str(fatal), f"{fatal.kind}: {fatal}")
    info = getattr(exc, "_t2g_candidate", None)
    where = f" in {test_name}" if test_name else ""
    if info is not None:
        name, message, frames = info
        line = f"{name}: {message}".splitlines()[0][:500]
        _report(False, "candidate_exception", f"the candidate raised {line}{where}", line, frames)
    if isinstance(exc, AssertionError):
        line = _one_line(exc)
        _report(False, "assertion", f"assertion failed{where}: {line}", line)
    if isinstance(exc, AttributeError) and getattr(exc, "_t2g_missing", False):
        _report(False, "missing", str(exc), _one_line(exc))
    line = _one_line(exc)
    _report(False, "test_error", f"the tests raised {line}{where}", line)


def _main():
    module = CandidateModule(_spec["module"])
    sys.modules["solution"] = module
    try:
        _request("load")
    except BaseException as exc:
        info = getattr(exc, "_t2g_candidate", None)
        if info is not None and _state["fatal"] is None:
            name, message, frames = info
            line = f"{name}: {message}".splitlines()[0][:500]
            _report(False, "candidate_exception", f"the code raised {line} while loading", line, frames)
        _failure(exc, "")
    namespace = {"__name__": "__t2g_tests__", "__builtins__": builtins}
    test_name = ""
    try:
        test_code = compile(_spec["tests"], "<tests>", "exec")
    except (SyntaxError, ValueError) as exc:
        _report(False, "bad_tests", f"the tests are not valid Python: {_one_line(exc)}", _one_line(exc))
    try:
        if _spec["style"] == "check":
            prelude = _spec["prelude"]
            if prelude:
                try:
                    code = compile(prelude, "<prompt>", "exec")
                except (SyntaxError, ValueError):
                    code = None
                if code is not None:
                    try:
                        exec(code, namespace)
                    except Exception:
                        pass
            entry = _spec["entry_point"]
            try:
                candidate = getattr(module, entry)
            except AttributeError as exc:
                if _state["fatal"] is not None:
                    raise
                if getattr(exc, "_t2g_candidate", None) is None or exc._t2g_candidate[0] != "AttributeError":
                    raise
                missing = AttributeError(f"the code does not define `{entry}`")
                missing._t2g_missing = True
                raise missing from None
            namespace[entry] = candidate
            exec(test_code, namespace)
            if not callable(namespace.get("check")):
                _report(False, "bad_tests", "the tests define no check(candidate) function", "")
            test_name = "check"
            namespace["check"](candidate)
        else:
            exec(test_code, namespace)
            tests = []
            for name, obj in list(namespace.items()):
                if name.startswith("test") and inspect.isfunction(obj):
                    tests.append((name, obj))
                elif name.startswith("Test") and inspect.isclass(obj):
                    instance = obj()
                    for attr in dir(obj):
                        if attr.startswith("test") and callable(getattr(instance, attr)):
                            tests.append((f"{name}.{attr}", getattr(instance, attr)))
            if not tests:
                _report(False, "bad_tests", "the tests define no test_* function or Test* class", "")
            for test_name, test in tests:
                test()
    except BaseException as exc:
        _failure(exc, test_name)
    if _state["fatal"] is not None:
        _failure(_state["fatal"], test_name)
    _report(True, "passed", "passed")


try:
    _main()
except BaseException as exc:
    _report(False, "harness", f"the test harness failed: {type(exc).__name__}: {exc}", _one_line(exc))
'''


def _result_from(report: dict, duration: float) -> TestResult:
    kind = str(report.get("kind", "harness"))
    lines = [int(n) for n in report.get("lines", []) if isinstance(n, int)]
    exception = str(report.get("exception", ""))
    summary = "\n".join([*(f'  File "{CANDIDATE_PATH}", line {n}' for n in lines), exception])
    return TestResult(
        passed=report.get("passed") is True and kind == "passed",
        reason=str(report.get("reason", kind)),
        kind=kind,
        exception=exception,
        candidate_lines=lines,
        timed_out=kind == "timeout",
        duration_s=duration,
        stderr=summary.strip(),
    )


def run_tests(
    program: TestProgram,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    *,
    call_timeout: float | None = None,
    max_processes: int = 32,
    max_answer_bytes: int = _MAX_FRAME,
    python: str | None = None,
) -> TestResult:
    """Run ``program.tests`` (trusted, in a separate process) against ``program.candidate`` (in the sandbox).

    Args:
        program: The candidate and its tests.
        timeout: Wall-clock seconds for the whole run (loading the candidate and every test); past it both
            processes are killed and the result is a timeout.
        memory_mb: Address-space limit per candidate process.
        call_timeout: Seconds one request to the candidate may take (default: whatever is left of ``timeout``).
        max_processes: Processes and threads the candidate may have.
        max_answer_bytes: Largest answer (encoded) the trusted side accepts from the candidate.
        python: Interpreter inside the sandbox (default: see :func:`~trl_text2grad.critics.sandbox.launch`).

    Returns:
        A :class:`TestResult`; never raises for anything the candidate does.

    Raises:
        SandboxUnavailableError: No sandbox here (and no opt-in), or the candidate process cannot even start.
    """
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError(f"run_tests: timeout ({timeout}) and memory_mb ({memory_mb}) must be positive")
    if program.style not in ("check", "pytest"):
        raise ValueError(f"run_tests: style must be 'check' or 'pytest', got {program.style!r}")
    start = time.monotonic()
    trusted_end, untrusted_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    module = "solution" if program.style == "pytest" else "__main__"
    spec = {
        "timeout": float(timeout), "call_timeout": float(call_timeout) if call_timeout else 0.0,
        "max_frame": int(max_answer_bytes), "candidate_path": CANDIDATE_PATH, "module": module,
        "style": program.style, "tests": program.tests, "prelude": program.prelude,
        "entry_point": program.entry_point,
    }  # fmt: skip
    sandboxed = runner = None
    with tempfile.TemporaryFile() as candidate_err, tempfile.TemporaryFile() as runner_err:
        try:
            fd = untrusted_end.fileno()
            sandboxed = launch(
                _SERVER_SOURCE, [str(fd), module, str(int(max_answer_bytes)), f"{{files}}/{PROGRAM_FILENAME}"],
                files={PROGRAM_FILENAME: program.candidate}, memory_mb=memory_mb, cpu_s=timeout,
                max_processes=max_processes, pass_fds=(fd,), stderr=candidate_err, python=python,
            )  # fmt: skip
            untrusted_end.close()
            spec["candidate_path"] = f"{sandboxed.files_dir}/{PROGRAM_FILENAME}"
            tfd = trusted_end.fileno()
            runner = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _RUNNER_SOURCE, str(tfd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=runner_err, pass_fds=(tfd,),
                env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"}, cwd="/", start_new_session=True,
            )  # fmt: skip
            trusted_end.close()
            try:
                out, _ = runner.communicate(json.dumps(spec).encode(), timeout=timeout + 5.0)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
                return TestResult(False, f"timeout after {timeout:g} s", "timeout", "timeout", [], True,
                                  time.monotonic() - start)  # fmt: skip
        finally:
            untrusted_end.close()
            trusted_end.close()
            if sandboxed is not None:
                kill_sandbox(sandboxed)
            if runner is not None and runner.poll() is None:
                runner.kill()
                runner.wait()
        duration = time.monotonic() - start
        try:
            report = json.loads(out)
            if not isinstance(report, dict):
                raise ValueError("not an object")
        except ValueError:
            runner_err.seek(0)
            detail = runner_err.read()[-2000:].decode(errors="replace")
            return TestResult(False, f"the test harness failed: {detail.strip()[-300:]}", "harness", "", [], False,
                              duration, detail)  # fmt: skip
        result = _result_from(report, duration)
        if result.kind == "candidate_died":
            candidate_err.seek(0)
            result.stderr = (result.stderr + "\n" + candidate_err.read()[-2000:].decode(errors="replace")).strip()
    return result


def check_sandbox_health(python: str | None = None) -> TestResult:
    """Run a trivial candidate and test; raises :class:`SandboxUnavailableError` when even that fails."""
    result = run_tests(TestProgram("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f"),
                       timeout=30.0, python=python)  # fmt: skip
    if not result.passed:
        raise SandboxUnavailableError(f"the sandbox cannot run even a trivial program: {result.reason}; "
                                      f"{result.stderr[-300:]}")  # fmt: skip
    return result
