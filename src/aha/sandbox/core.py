"""Host side of the sandbox: choose the isolation, start the harness, enforce the limits, read verdicts.

One program = one `bwrap … python -I -S -c <harness>` process tree. The host writes the job (program,
tests) to the harness's stdin, reads verdict lines from a private pipe, captures stdout and stderr up
to a byte limit, and kills the whole tree at the deadline. Under bubblewrap the tree lives in its own
PID namespace, so killing bwrap (its pid 1 dies with it) kills every process the program started,
double-forked daemons included. `run_many` drives many such processes from threads.
"""

from __future__ import annotations

import ast
import atexit
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aha.errors import AhaError

log = logging.getLogger("aha.sandbox")

HARNESS_SOURCE = (Path(__file__).with_name("_harness.py")).read_text(encoding="utf-8")
_HARNESS_CODE = marshal.dumps(compile(HARNESS_SOURCE, "<aha-sandbox-harness>", "exec")).hex()
_BOOT = "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv[1])))"
"""The harness travels as this interpreter's bytecode (the sandbox runs the same interpreter): compiling
its source at every start would cost more than starting Python."""
ISOLATIONS = ("auto", "bwrap", "rlimits")
_HOST_GRACE_S = 2.0
"""The harness stops itself at the deadline; the host kills the tree this much later, as a backstop."""
_DRAIN_S = 0.25
_UID_BASE, _UID_SPAN = 1_000_000, 1 << 24
"""As root, each program runs as a random uid from this range, so that RLIMIT_NPROC counts its
processes alone (the kernel never applies RLIMIT_NPROC to uid 0)."""


@dataclass(frozen=True)
class TestCase:
    """One chunk of test code, run by the harness (never by the program). It passes when it raises
    nothing. `counted=False` marks set-up code (imports, helpers) that is run but not scored."""

    source: str
    counted: bool = True
    __test__ = False  # not a pytest test class, whatever its name


@dataclass(frozen=True)
class SandboxJob:
    """One program and its tests. With no tests the program is just run (`__name__ == "__main__"`,
    `stdin` as its standard input); with tests it is imported as module `solution` and the tests can call
    its `entry_point` (also as `candidate`), and nothing else of it: every other name the tests use is the
    harness's own builtin or comes from the trusted `prelude` or the tests themselves."""

    code: str
    tests: tuple[TestCase | str, ...] = ()
    entry_point: str | None = None
    prelude: str = ""
    """Trusted set-up run in the harness before the tests (e.g. HumanEval's prompt, for its helpers)."""
    stdin: str = ""
    timeout_s: float = 10.0
    """Wall clock for the program and all its tests."""
    cpu_time_s: float | None = None
    """CPU seconds for the program's processes (RLIMIT_CPU); default: timeout_s."""
    memory_mb: int = 512
    """Address space of each of the program's processes (RLIMIT_AS)."""
    max_procs: int = 16
    """Processes and threads the program may have at once, itself included."""
    max_output_bytes: int = 1 << 20
    """stdout + stderr captured; a program that prints more is stopped and fails."""
    max_open_files: int = 64
    tmp_size_mb: int = 16
    """Size of the private writable /tmp (and the largest file the program may write)."""
    isolation: str = "auto"
    """`auto` or `bwrap` (bubblewrap's namespaces; AhaError when it is missing or does not work here), or
    `rlimits` (no namespaces: only rlimits, a new session and a fresh cwd; must be asked for)."""
    reuse: bool = True
    """Under bubblewrap, run in a sandbox kept from earlier programs (emptied and with every earlier
    process killed) instead of a new one: about twice the throughput. False: new namespaces each time."""


@dataclass(frozen=True)
class SandboxResult:
    status: str
    """`ok` (ran; see the test counts), `error` (the program raised while loading), `crashed` (its
    process died: segfault, exit, kill), `timeout`, `output_limit`, or `sandbox_error` (could not start)."""
    tests_passed: int = 0
    tests_total: int = 0
    test_results: tuple[bool, ...] = ()
    """One entry per counted test, in order; tests that never ran are False."""
    test_errors: tuple[str, ...] = ()
    """Why each counted test failed ('' for a pass, 'not run' when the run stopped first)."""
    error: str = ""
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    elapsed_s: float = 0.0
    isolation: str = ""

    @property
    def passed(self) -> bool:
        """The program ran and every counted test passed (with no tests: it ran without error)."""
        return self.status == "ok" and self.tests_passed == self.tests_total

    @property
    def fraction(self) -> float:
        """Fraction of counted tests passed (0 with no tests)."""
        return self.tests_passed / self.tests_total if self.tests_total else 0.0

    @property
    def timed_out(self) -> bool:
        return self.status == "timeout"


def tests_from_source(source: str, entry_point: str | None = None) -> list[TestCase]:
    """Split test code into test cases: each top-level `assert` is one counted test and the statements
    between them are uncounted set-up. Without top-level asserts, a file that defines `check` but never
    calls it (HumanEval style) is set-up plus one test `check(<entry_point>)`; anything else is one test.
    Raises SyntaxError for code that does not parse."""
    tree = ast.parse(source)
    if any(isinstance(s, ast.Assert) for s in tree.body):
        cases: list[TestCase] = []
        setup: list[str] = []
        for stmt in tree.body:
            if isinstance(stmt, ast.Assert):
                if setup:
                    cases.append(TestCase("\n".join(setup), counted=False))
                    setup = []
                cases.append(TestCase(ast.unparse(stmt)))
            else:
                setup.append(ast.unparse(stmt))
        if setup:
            cases.append(TestCase("\n".join(setup), counted=False))
        return cases
    defines_check = any(isinstance(s, ast.FunctionDef) and s.name == "check" for s in tree.body)
    calls_top_level = any(isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) for s in tree.body)
    if defines_check and not calls_top_level:
        return [TestCase(source, counted=False), TestCase(f"check({entry_point or 'candidate'})")]
    return [TestCase(source)]


tests_from_source.__test__ = False  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ isolation
@dataclass
class _Plan:
    kind: str  # "bwrap" or "rlimits"
    python: str
    as_root: bool
    bwrap_flags: frozenset[str] = field(default_factory=frozenset)
    ro_roots: tuple[str, ...] = ()
    drop_uid: bool = False
    """rlimits as root: run the program as a random unprivileged uid."""


_plans: dict[str, _Plan | AhaError] = {}
"""Isolation kind -> its plan, or the AhaError it was refused with (probed once per process)."""
_plan_lock = threading.Lock()
REFUSAL = ("refusing to run model-written code without namespaces: install bubblewrap (apt-get install "
           "bubblewrap) or choose the weaker isolation explicitly (rewards.code_isolation=rlimits, or "
           "isolation='rlimits' in aha.sandbox; see docs/sandbox.md)")
"""Why `auto` stops where bubblewrap is missing or broken, and the two ways on."""


def _sandbox_python() -> str:
    """The base interpreter behind sys.executable (a venv's python is a link to it or needs pyvenv.cfg)."""
    for cand in (getattr(sys, "_base_executable", None), sys.executable):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.realpath(cand)
    raise AhaError("sandbox: cannot find the Python interpreter to run programs with")


def _python_roots(python: str) -> tuple[str, ...]:
    """Folders the interpreter needs that the base system mounts (/usr, /lib…) do not already cover."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
             os.path.dirname(os.path.dirname(python))}
    system = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
    keep = sorted(r for r in roots if r != "/" and not any(r == s or r.startswith(s + "/") for s in system))
    return tuple(r for r in keep if not any(r.startswith(o + "/") for o in keep if o != r))


def _bwrap_flags() -> frozenset[str]:
    try:
        out = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    text = out.stdout + out.stderr
    return frozenset(f for f in ("--size", "--perms", "--disable-userns", "--unshare-cgroup-try") if f in text)


def _probe(plan: _Plan) -> str:
    """'' when a trivial program runs and is scored correctly under `plan`, else why not."""
    ok = _run_once(SandboxJob("def f():\n    return 7\n", tests=("assert f() == 7",), entry_point="f",
                              timeout_s=20), plan)
    bad = _run_once(SandboxJob("def f():\n    return 8\n", tests=("assert f() == 7",), entry_point="f",
                               timeout_s=20), plan)
    if ok.passed and not bad.passed and bad.status == "ok":
        return ""
    lines = (ok.error or ok.stderr or bad.error).strip().splitlines()
    return lines[-1] if lines else f"probe status {ok.status}/{bad.status}"


def _make_plan(kind: str) -> _Plan:
    python = _sandbox_python()
    as_root = os.geteuid() == 0
    roots = _python_roots(python)
    if kind == "bwrap":
        if not shutil.which("bwrap"):
            raise AhaError("sandbox: bubblewrap is not installed (apt-get install bubblewrap)")
        plan = _Plan("bwrap", python, as_root, _bwrap_flags(), roots)
        why = _probe(plan)
        if why:
            raise AhaError(f"sandbox: bubblewrap does not work here: {why}")
        return plan
    return _Plan("rlimits", python, as_root, ro_roots=roots, drop_uid=as_root)


def _plan_for(kind: str) -> _Plan:
    """The plan for isolation `kind`. `auto` is bubblewrap or nothing: it never falls back to rlimits on
    its own (fail closed); only an explicit `rlimits` runs programs without namespaces."""
    if kind not in ISOLATIONS:
        raise AhaError(f"sandbox: unknown isolation '{kind}' (choose from {', '.join(ISOLATIONS)})")
    with _plan_lock:
        if kind not in _plans:
            real = "bwrap" if kind == "auto" else kind
            if real not in _plans:
                try:
                    _plans[real] = _make_plan(real)
                except AhaError as e:
                    _plans[real] = e
                if real == "rlimits":
                    log.warning("sandbox: isolation=rlimits runs model-written code WITHOUT namespaces: no "
                                "filesystem, network or process isolation (see docs/sandbox.md)")
            got = _plans[real]
            if kind == "auto" and isinstance(got, AhaError):
                got = AhaError(f"{str(got).removesuffix(' (apt-get install bubblewrap)')}; {REFUSAL}")
            _plans[kind] = got
        plan = _plans[kind]
    if isinstance(plan, AhaError):
        raise AhaError(str(plan))
    return plan


def isolation(kind: str = "auto") -> str:
    """The isolation `kind` resolves to on this machine: 'bwrap' or 'rlimits' (probing once). AhaError
    when it cannot be had: `auto` and `bwrap` without a working bubblewrap."""
    return _plan_for(kind).kind


# ------------------------------------------------------------------------------------------ running
def _bwrap_argv(plan: _Plan, tmp_size_mb: int) -> list[str]:
    """bubblewrap's command line. Its --die-with-parent is PR_SET_PDEATHSIG, which fires when the THREAD
    that started bwrap exits: a one-off run's thread waits for it; kept sandboxes are started from one
    long-lived thread (`_Pool.spawner`)."""
    f = plan.bwrap_flags
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    if "--unshare-cgroup-try" in f:
        argv.append("--unshare-cgroup-try")
    argv += ["--as-pid-1", "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
             "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8"]
    if plan.as_root:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "--cap-add", "CAP_KILL"]
    else:
        argv.append("--unshare-user")
        if "--disable-userns" in f:
            argv.append("--disable-userns")
    argv += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--ro-bind-try", "/etc/localtime", "/etc/localtime"]
    made: set[str] = set()
    for root in plan.ro_roots:
        for parent in reversed(Path(root).parents):
            p = str(parent)
            if p != "/" and p not in made:
                made.add(p)
                argv += (["--perms", "0755"] if "--perms" in f else []) + ["--dir", p]
        argv += ["--ro-bind", root, root]
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    if "--perms" in f:
        argv += ["--perms", "1777"]
    if "--size" in f:
        argv += ["--size", str(tmp_size_mb << 20)]
    argv += ["--tmpfs", "/tmp", "--chdir", "/tmp", "--remount-ro", "/"]
    return argv


def _user_tasks(uid: int) -> int:
    """Threads of all processes whose real uid is `uid` (what RLIMIT_NPROC counts without namespaces)."""
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                status = fh.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields.get("Threads", "1"))
        except (KeyError, ValueError, IndexError):
            continue
    return n


def _kill_uid(uid: int) -> None:
    """Kill every process whose real uid is `uid` (a per-run random uid, so only the program's)."""
    for _ in range(50):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    found = True
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                continue
        if not found:
            return
        time.sleep(0.01)


def run_job(job: SandboxJob) -> SandboxResult:
    """Run one program (and its tests) in the sandbox; never raises for anything the program does."""
    return _run(job, _plan_for(job.isolation))


def run_python(code: str, *, tests: Sequence[TestCase | str] = (), entry_point: str | None = None,
               prelude: str = "", stdin: str = "", timeout_s: float = 10.0, cpu_time_s: float | None = None,
               memory_mb: int = 512, max_procs: int = 16, max_output_bytes: int = 1 << 20,
               max_open_files: int = 64, tmp_size_mb: int = 16, isolation: str = "auto",
               reuse: bool = True) -> SandboxResult:
    """Run untrusted Python `code` in the sandbox (see SandboxJob for the parameters)."""
    return run_job(SandboxJob(code, tuple(tests), entry_point, prelude, stdin, timeout_s, cpu_time_s,
                              memory_mb, max_procs, max_output_bytes, max_open_files, tmp_size_mb, isolation,
                              reuse))


def run_many(jobs: Iterable[SandboxJob], *, workers: int | None = None) -> list[SandboxResult]:
    """Run many jobs in parallel (threads driving sandbox processes); results in the jobs' order.
    `workers` defaults to twice the cores: a program's time alternates between the tester, the worker and
    this process, so one per core leaves cores idle."""
    jobs = list(jobs)
    if not jobs:
        return []
    workers = workers or 2 * (os.cpu_count() or 1)
    for kind in {j.isolation for j in jobs}:
        _plan_for(kind)  # probe once, up front, not in every thread
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="aha-sandbox") as ex:
        return list(ex.map(run_job, jobs))


def _cases(job: SandboxJob) -> list[TestCase]:
    return [t if isinstance(t, TestCase) else TestCase(str(t)) for t in job.tests]


def _job_cfg(job: SandboxJob, plan: _Plan, uid: int | None, zygote: bool) -> dict:
    """What the harness needs before it forks the worker (never the program or the tests)."""
    if uid is not None:
        nproc: int | None = job.max_procs
    elif plan.kind == "bwrap":  # the user namespace's count also holds the tester (and a kept sandbox's pid 1)
        nproc = job.max_procs + (2 if zygote else 1)
    elif not plan.as_root:
        nproc = _user_tasks(os.getuid()) + job.max_procs
    else:
        nproc = None
    cpu = int(job.cpu_time_s if job.cpu_time_s is not None else job.timeout_s) + 1
    rlimits = [("RLIMIT_AS", job.memory_mb << 20), ("RLIMIT_CPU", cpu), ("RLIMIT_NOFILE", job.max_open_files),
               ("RLIMIT_FSIZE", job.tmp_size_mb << 20), ("RLIMIT_CORE", 0)]
    if nproc is not None:
        rlimits.append(("RLIMIT_NPROC", nproc))
    fallback = plan.kind != "bwrap"
    return {"timeout_s": float(job.timeout_s), "rlimits": rlimits, "uid": uid,
            "subreaper": fallback, "undumpable": uid is None and not zygote, "no_new_privs": fallback,
            "chown_cwd": uid if fallback else None, "wipe": "/tmp" if zygote else None,
            "reach_via_fd": list(plan.ro_roots) if fallback and uid is not None else []}


def _payload(job: SandboxJob, cases: list[TestCase]) -> bytes:
    payload = marshal.dumps({
        "code": job.code, "module_name": "solution" if cases else "__main__", "stdin": job.stdin,
        "prelude": job.prelude, "entry_point": job.entry_point, "tests": [c.source for c in cases]})
    return b"%010d" % len(payload) + payload


def _not_run(status: str, error: str, counted: list[int], kind: str) -> SandboxResult:
    return SandboxResult(status, tests_total=len(counted), test_results=(False,) * len(counted),
                         test_errors=("not run",) * len(counted), error=error, isolation=kind)


def _run(job: SandboxJob, plan: _Plan) -> SandboxResult:
    if plan.kind == "bwrap" and job.reuse:
        zyg = _pool.take(plan, job.tmp_size_mb)
        if zyg is not None:
            result = zyg.run(job, plan)
            _pool.give(zyg)
            if result.status != "sandbox_error":
                return result
            if zyg.jobs == 1:  # a zygote that cannot run even its first job will not do better later
                _pool.disable(zyg.key, result.error)
    return _run_once(job, plan)


def _run_once(job: SandboxJob, plan: _Plan) -> SandboxResult:
    """One program in a sandbox of its own (new namespaces, new interpreter)."""
    start = time.monotonic()
    cases = _cases(job)
    counted = [i for i, c in enumerate(cases) if c.counted]
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if plan.as_root and (plan.kind == "bwrap" or plan.drop_uid) \
        else None
    vr, vw = os.pipe()
    cfg = _job_cfg(job, plan, uid, zygote=False)
    cfg["verdict_fd"] = vw
    harness = [plan.python, "-I", "-S", "-c", _BOOT, _HARNESS_CODE, marshal.dumps(cfg).hex()]
    tmpdir = None
    if plan.kind == "bwrap":
        argv, cwd = _bwrap_argv(plan, job.tmp_size_mb) + harness, "/"
    else:
        tmpdir = tempfile.mkdtemp(prefix="aha-sandbox-")
        argv, cwd = harness, tmpdir
    env = {"PATH": "/usr/bin:/bin", "HOME": cwd if tmpdir else "/tmp", "TMPDIR": cwd if tmpdir else "/tmp",
           "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(vw,), env=env, cwd=cwd, start_new_session=True)
    except OSError as e:
        os.close(vr)
        os.close(vw)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return _not_run("sandbox_error", f"cannot start: {e}", counted, plan.kind)
    os.close(vw)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    io = _Io(proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno(), vr, _payload(job, cases),
             job.max_output_bytes, lambda: _killpg(proc.pid))
    worker_pid = None
    try:
        io.pump(start + job.timeout_s + _HOST_GRACE_S)
    finally:
        if proc.poll() is None:
            _killpg(proc.pid)
        if plan.kind != "bwrap":
            worker_pid = next((int(x[2:]) for x in io.verdict_lines() if x.startswith("S ")), None)
            if worker_pid is not None:
                _killpg(worker_pid)
            if uid is not None:
                _kill_uid(uid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        io.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return _result(io, cases, counted, plan.kind, time.monotonic() - start)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


class _Zygote:
    """A bubblewrap sandbox kept between programs (see `zygote` in _harness.py). Used by one thread at a
    time; killed and replaced after any trouble (a deadline, a lost reply) and after MAX_JOBS programs."""

    MAX_JOBS = 500

    def __init__(self, plan: _Plan, tmp_size_mb: int) -> None:
        self.key = (plan.kind, tmp_size_mb)
        self.uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if plan.as_root else None
        self.ctl, remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = {"zygote": True, "control_fd": remote.fileno(), "undumpable": not plan.as_root}
        argv = _bwrap_argv(plan, tmp_size_mb) + [plan.python, "-I", "-S", "-c", _BOOT, _HARNESS_CODE,
                                                 marshal.dumps(cfg).hex()]
        try:  # started from the spawner thread, which lives as long as this process (see _bwrap_argv)
            self.proc = _pool.spawner().submit(
                subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=(remote.fileno(),), cwd="/", env={"PATH": "/usr/bin:/bin"},
                start_new_session=True).result()
        finally:
            remote.close()
        self.jobs = 0
        self.healthy = True
        self.owner = os.getpid()

    def kill(self) -> None:
        self.healthy = False
        _killpg(self.proc.pid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.ctl.close()

    def run(self, job: SandboxJob, plan: _Plan) -> SandboxResult:
        start = time.monotonic()
        cases = _cases(job)
        counted = [i for i, c in enumerate(cases) if c.counted]
        self.jobs += 1
        cfg = _job_cfg(job, plan, self.uid, zygote=True)
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        v_r, v_w = os.pipe()
        try:
            socket.send_fds(self.ctl, [marshal.dumps(cfg)], [job_r, out_w, err_w, v_w])
        except OSError as e:
            for fd in (job_r, job_w, out_r, out_w, err_r, err_w, v_r, v_w):
                os.close(fd)
            self.kill()
            return _not_run("sandbox_error", f"sandbox went away: {e}", counted, plan.kind)
        for fd in (job_r, out_w, err_w, v_w):
            os.close(fd)
        io = _Io(job_w, out_r, err_r, v_r, _payload(job, cases), job.max_output_bytes, self.kill)
        try:
            io.pump(start + job.timeout_s + _HOST_GRACE_S)
        except BaseException:
            self.kill()
            raise
        finally:
            for fd in (job_w, out_r, err_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            io.close()
        if self.healthy:  # the zygote says when every process of this program is gone
            try:
                self.ctl.settimeout(5)
                if self.ctl.recv(16) != b"R":
                    self.kill()
            except OSError:
                self.kill()
        return _result(io, cases, counted, plan.kind, time.monotonic() - start)


class _Pool:
    """Idle zygotes by (isolation, tmp size). A forked child (multiprocessing) starts with an empty pool."""

    def __init__(self) -> None:
        self.idle: dict[tuple, list[_Zygote]] = {}
        self.lock = threading.Lock()
        self.broken: set[tuple] = set()
        self._spawner: ThreadPoolExecutor | None = None

    def spawner(self) -> ThreadPoolExecutor:
        with self.lock:
            if self._spawner is None:
                self._spawner = ThreadPoolExecutor(1, thread_name_prefix="aha-sandbox-spawn")
            return self._spawner

    def take(self, plan: _Plan, tmp_size_mb: int) -> _Zygote | None:
        key = (plan.kind, tmp_size_mb)
        with self.lock:
            if key in self.broken:
                return None
            while self.idle.get(key):
                z = self.idle[key].pop()
                if z.healthy and z.proc.poll() is None:
                    return z
                z.kill()
        try:
            return _Zygote(plan, tmp_size_mb)
        except OSError as e:
            log.warning("sandbox: cannot keep a sandbox between programs (%s); starting one per program", e)
            with self.lock:
                self.broken.add(key)
            return None

    def disable(self, key: tuple, why: str) -> None:
        with self.lock:
            if key not in self.broken:
                self.broken.add(key)
                log.warning("sandbox: cannot keep a sandbox between programs (%s); starting one per program",
                            why)

    def give(self, z: _Zygote) -> None:
        if not z.healthy or z.jobs >= z.MAX_JOBS or z.owner != os.getpid():
            if z.owner == os.getpid():
                z.kill()
            return
        with self.lock:
            self.idle.setdefault(z.key, []).append(z)

    def close(self) -> None:
        with self.lock:
            zs = [z for group in self.idle.values() for z in group]
            self.idle.clear()
        for z in zs:
            if z.owner == os.getpid():
                z.kill()

    def forget(self) -> None:
        """In a forked child: the parent's zygotes are the parent's."""
        self.idle = {}
        self.lock = threading.Lock()
        self._spawner = None  # its thread did not survive the fork


_pool = _Pool()
atexit.register(_pool.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.forget)


class _Io:
    """Feeds the job to the harness and collects its verdicts and (bounded) output, without blocking."""

    def __init__(self, stdin: int, stdout: int, stderr: int, vfd: int, payload: bytes, max_output: int,
                 kill: Callable[[], None]) -> None:
        self.fds = {"stdin": stdin, "stdout": stdout, "stderr": stderr, "verdict": vfd}
        self.vfd, self.payload, self.max_output, self.kill = vfd, memoryview(payload), max_output, kill
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.verdicts = bytearray()
        self.truncated = self.overflow = self.host_timeout = False

    def pump(self, deadline: float) -> None:
        sel = selectors.DefaultSelector()
        os.set_blocking(self.fds["stdin"], False)
        for name, fd in self.fds.items():
            sel.register(fd, selectors.EVENT_WRITE if name == "stdin" else selectors.EVENT_READ, name)
        drain_until = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    self.host_timeout = True
                    self.kill()
                    return
                if drain_until is not None and now >= drain_until:
                    return
                limit = deadline if drain_until is None else min(deadline, drain_until)
                for key, _ in sel.select(limit - now):
                    name = key.data
                    if name == "stdin":
                        try:
                            n = os.write(key.fd, self.payload[:1 << 16])
                            self.payload = self.payload[n:]
                        except BlockingIOError:
                            continue
                        except OSError:
                            self.payload = self.payload[:0]
                        if not self.payload:
                            sel.unregister(key.fd)
                        continue
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fd)
                        if name == "verdict":  # the harness is done (or dead): collect what is left, briefly
                            drain_until = time.monotonic() + _DRAIN_S
                            if self.fds["stdin"] in sel.get_map():
                                sel.unregister(self.fds["stdin"])
                        continue
                    if name == "verdict":
                        if len(self.verdicts) < 1 << 22:
                            self.verdicts += data
                        continue
                    buf = self.out[name]
                    room = self.max_output - len(self.out["stdout"]) - len(self.out["stderr"])
                    buf += data[:max(room, 0)]
                    if len(data) > room:
                        self.truncated = self.overflow = True
                        self.kill()
                        return
        finally:
            sel.close()

    def verdict_lines(self) -> list[str]:
        return self.verdicts.decode("utf-8", "replace").splitlines()

    def close(self) -> None:
        try:
            os.close(self.vfd)
        except OSError:
            pass


def _result(io: _Io, cases: list[TestCase], counted: list[int], kind: str, elapsed: float) -> SandboxResult:
    results: dict[int, tuple[bool, str]] = {}
    started = loaded = done = judged = False
    error = fatal = ""
    for line in io.verdict_lines():
        tag, _, rest = line.partition(" ")
        if tag == "S":
            started = True
        elif tag == "E":
            judged, loaded = True, rest.startswith("1")
            if not loaded:
                error = rest[2:] or "the program did not load"
        elif tag == "R":
            idx, _, more = rest.partition(" ")
            ok, _, why = more.partition(" ")
            if idx.isdigit():
                results[int(idx)] = (ok == "1", why)
        elif tag == "D":
            done = True
        elif tag == "X":
            fatal = rest
    for i, case in enumerate(cases):
        if not case.counted and i in results and not results[i][0] and not error:
            error = f"test set-up failed: {results[i][1]}"
    stderr = io.out["stderr"].decode("utf-8", "replace")
    if io.overflow:
        status, error = "output_limit", f"output exceeded {io.max_output} bytes"
    elif io.host_timeout or fatal == "timeout":
        status, error = "timeout", "time limit exceeded"
    elif not started:
        status, error = "sandbox_error", (stderr.strip().splitlines() or ["the harness did not start"])[-1]
    elif judged and not loaded:
        status = "error"
    elif fatal.startswith("harness error"):
        status, error = "sandbox_error", fatal
    elif fatal:
        status, error = ("error" if fatal.startswith("protocol") else "crashed"), fatal
    elif not done:
        status, error = "crashed", "the harness was killed"
    else:
        status = "ok"
    flags = tuple(results.get(i, (False, ""))[0] for i in counted)
    errors = tuple("" if results.get(i, (False, ""))[0] else (results[i][1] if i in results else "not run")
                   for i in counted)
    return SandboxResult(status, sum(flags), len(counted), flags, errors, error,
                         io.out["stdout"].decode("utf-8", "replace"), stderr, io.truncated, elapsed, kind)
