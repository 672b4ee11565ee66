"""The program that runs INSIDE the sandbox: a trusted tester and an untrusted worker, two processes.

Not imported by aha: `aha.sandbox` reads this file's text and runs it with `python -I -S -c`, so it uses
the standard library only and must start fast (no json, no re: each costs milliseconds per program).

Why two processes. A test that runs in the same process as the model's code can be subverted by it:
the code can patch `builtins`, exit early, print a fake verdict, walk `gc.get_objects()` or read its own
memory with ctypes to find any secret the harness holds. So no verdict is ever produced where the
model's code runs:

* the TESTER (this process, started by aha) forks the WORKER first, before it has read the tests, so the
  worker's memory never holds them. The worker closes the verdict pipe and the job pipe, sets its
  rlimits, drops to an unprivileged uid where it can, and only then receives the program;
* the tester runs the test code itself, in a namespace of its own builtins, the trusted prelude and one
  name from the program: the entry point (also as `candidate`), a stand-in (`_Remote`) that sends its
  arguments to the worker and gets back a return value as plain data (None, bool, int, float, complex,
  str, bytes, list, tuple, dict, set, frozenset) in a small tagged format that the tester parses strictly.
  Nothing else the program defines reaches the tests, so a program that defines `abs` or `sorted` cannot
  change what they compute; the worker cannot hand the tester an object whose `__eq__` lies, and never
  sees an expected value;
* only the tester writes verdicts, on a pipe the worker does not have. It is not dumpable (no ptrace, no
  /proc/<pid>/mem or /proc/<pid>/fd from the worker) and, under bubblewrap as root, a different uid.

Whatever the worker does (exit, crash, print, hang, flood the pipe, kill the tester) can only make tests
fail. Verdict lines, on the fd given in the config: `S <worker pid>`, `E 1` or `E 0 <why>` after the
program ran, `R <i> 1` or `R <i> 0 <why>` per test, `X <why>` for a fatal stop, `D` at the end.
"""

import _signal  # built in; `signal` would import enum (9 ms at every start)
import builtins
import io
import marshal
import os
import resource
import select
import sys
import time

MAX_FRAME = 16 << 20
MAX_DEPTH = 100
_HEADER = 10  # frames are b"%010d" % len + payload
_SIGKILL = 9
_SIGINT = 2
_SIGNALS = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE",
            15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}
_WORKER_IN, _WORKER_OUT = 100, 101  # the worker's ends of its two pipes; every other fd above 2 is closed
_ROOT_FDS = 40  # below the smallest RLIMIT_NOFILE a caller is likely to set


# ---------------------------------------------------------------- plain-data codec (both sides)
def encode(obj):
    out = []
    _enc(obj, out, 0)
    return "".join(out).encode("utf-8", "surrogatepass")


def _put(out, tag, payload):
    out.append(f"{tag}{len(payload)}:")
    out.append(payload)


def _enc(obj, out, depth):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if obj is None:
        out.append("N")
    elif obj is True:
        out.append("T")
    elif obj is False:
        out.append("F")
    elif isinstance(obj, int):
        _put(out, "i", int.__repr__(obj))
    elif isinstance(obj, float):
        _put(out, "f", float.hex(obj))
    elif isinstance(obj, complex):
        _put(out, "c", float.hex(obj.real) + " " + float.hex(obj.imag))
    elif isinstance(obj, str):
        _put(out, "s", str.__str__(obj))
    elif isinstance(obj, (bytes, bytearray)):
        _put(out, "b", bytes(obj).decode("latin-1"))
    elif isinstance(obj, (list, tuple, set, frozenset)):
        tag = "l" if isinstance(obj, list) else "t" if isinstance(obj, tuple) else \
            "z" if isinstance(obj, frozenset) else "S"
        items = list(obj)
        out.append(f"{tag}{len(items)}:")
        for x in items:
            _enc(x, out, depth + 1)
    elif isinstance(obj, dict):
        items = list(obj.items())
        out.append(f"d{len(items)}:")
        for k, v in items:
            _enc(k, out, depth + 1)
            _enc(v, out, depth + 1)
    else:
        raise TypeError(f"cannot pass a {type(obj).__name__} value between the program and its tests")


def decode(data):
    """Strict inverse of `encode`: plain built-in values only, lengths checked, depth bounded."""
    text = data.decode("utf-8", "surrogatepass")
    value, pos = _dec(text, 0, 0)
    if pos != len(text):
        raise ValueError("trailing bytes")
    return value


def _dec(s, i, depth):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    tag = s[i]
    if tag == "N":
        return None, i + 1
    if tag == "T":
        return True, i + 1
    if tag == "F":
        return False, i + 1
    colon = s.index(":", i + 1, i + 12)
    n = int(s[i + 1:colon])
    if n < 0:
        raise ValueError("negative length")
    i = colon + 1
    if tag in "ifcsb":
        if i + n > len(s):
            raise ValueError("truncated")
        p = s[i:i + n]
        i += n
        if tag == "i":
            return int(p), i
        if tag == "f":
            return float.fromhex(p), i
        if tag == "c":
            re_, im = p.split(" ")
            return complex(float.fromhex(re_), float.fromhex(im)), i
        if tag == "s":
            return p, i
        return p.encode("latin-1"), i
    if tag == "d":
        if 2 * n > len(s) - i:
            raise ValueError("truncated")
        d = {}
        for _ in range(n):
            k, i = _dec(s, i, depth + 1)
            v, i = _dec(s, i, depth + 1)
            d[k] = v
        return d, i
    if tag in "ltSz":
        if n > len(s) - i:
            raise ValueError("truncated")
        items = []
        for _ in range(n):
            v, i = _dec(s, i, depth + 1)
            items.append(v)
        if tag == "l":
            return items, i
        if tag == "t":
            return tuple(items), i
        return (set(items) if tag == "S" else frozenset(items)), i
    raise ValueError("unknown tag")


# ---------------------------------------------------------------- framing
def _write_all(fd, data, deadline=None):
    view = memoryview(data)
    while view:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Fatal("timeout")
            if not select.select([], [fd], [], left)[1]:
                continue
        view = view[os.write(fd, view):]


def _read_exact(fd, n, deadline=None):
    chunks = []
    while n > 0:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Fatal("timeout")
            if not select.select([fd], [], [], left)[0]:
                continue
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def send_frame(fd, payload, deadline=None):
    _write_all(fd, b"%010d" % len(payload) + payload, deadline)


def recv_frame(fd, deadline=None):
    head = _read_exact(fd, _HEADER, deadline)
    if head is None:
        return None
    if not head.isdigit() or int(head) > MAX_FRAME:
        raise _Fatal("protocol error from the program's process")
    body = _read_exact(fd, int(head), deadline)
    if body is None:
        return None
    return body


class _Fatal(BaseException):
    """Ends the run: the worker is gone, silent past the deadline, or speaking nonsense."""


# ---------------------------------------------------------------- the worker (untrusted side)
def _describe(exc):
    msg = f"{type(exc).__name__}: {exc}"
    return msg if len(msg) <= 300 else msg[:300] + "..."


def _worker(rfd, wfd, cfg):
    os.setsid()
    for i, root in enumerate(cfg["reach_via_fd"]):
        # The interpreter may live under a folder the unprivileged uid cannot traverse (/root/.pyenv):
        # keep an fd to it and import through /proc/self/fd/N, which a process may always follow.
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        alias = f"/proc/self/fd/{os.dup2(fd, _ROOT_FDS + i, inheritable=False)}"
        os.close(fd)
        sys.path[:] = [alias + p[len(root):] if p == root or p.startswith(root + "/") else p for p in sys.path]
    for name, value in cfg["rlimits"]:
        resource.setrlimit(getattr(resource, name), (value, value) if name != "RLIMIT_CPU" else (value, value + 1))
    if cfg["no_new_privs"]:
        _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: no setuid binary can give root back (bwrap does this itself)
    uid = cfg.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if cfg.get("wipe"):
        _wipe(cfg["wipe"])  # what an earlier program in this zygote left behind
    _signal.signal(_SIGINT, _signal.default_int_handler)  # the tester ignores it; the program may not
    builtins.exit = builtins.quit = sys.exit  # `site` (disabled by -S) normally provides these
    ns = {}
    while True:
        frame = recv_frame(rfd)
        if frame is None:
            break
        msg = decode(frame)
        op = msg[0]
        try:
            if op == "exec":
                _, code, module_name, stdin = msg
                sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8", "surrogatepass")), encoding="utf-8")
                ns = {"__name__": module_name, "__builtins__": builtins}
                exec(compile(code, "<solution>", "exec"), ns)
                reply = ("ok", None)
            elif op == "call":
                _, name, args, kwargs = msg
                if name not in ns:
                    raise NameError(f"name '{name}' is not defined")
                fn = ns[name]
                reply = ("ok", fn(*args, **kwargs))
            else:
                break
        except BaseException as e:  # noqa: B036 -- SystemExit from the program is a failure, not an exit
            reply = ("err", type(e).__name__, _describe(e))
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: B036
            pass
        try:
            payload = encode(reply)
        except BaseException as e:  # noqa: B036
            payload = encode(("err", "TypeError", _describe(e)))
        send_frame(wfd, payload)
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: B036
        pass
    os._exit(0)


# ---------------------------------------------------------------- the tester (trusted side)
_BUILTIN_EXC = {n: v for n, v in vars(builtins).items()
                if isinstance(v, type) and issubclass(v, Exception) and not n.startswith("_")}


class RemoteError(Exception):
    """The program raised an exception that is not a built-in `Exception` subclass."""


class _Conn:
    def __init__(self, wfd, rfd, deadline):
        self.wfd, self.rfd, self.deadline = wfd, rfd, deadline

    def request(self, msg):
        send_frame(self.wfd, encode(msg), self.deadline)
        frame = recv_frame(self.rfd, self.deadline)
        if frame is None:
            raise _Fatal("the program's process ended")
        try:
            reply = decode(frame)
            if not isinstance(reply, tuple) or reply[0] not in ("ok", "err"):
                raise ValueError
        except Exception:
            raise _Fatal("protocol error from the program's process") from None
        return reply


class _Remote:
    """A tester-side stand-in for a function that lives in the worker."""

    def __init__(self, conn, name):
        self._conn, self.__name__, self.__qualname__ = conn, name, name

    def __call__(self, *args, **kwargs):
        reply = self._conn.request(("call", self.__name__, args, kwargs))
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if reply[0] == "err" and len(reply) == 3 and isinstance(reply[1], str) and isinstance(reply[2], str):
            try:
                exc = _BUILTIN_EXC.get(reply[1], RemoteError)(reply[2])
            except Exception:
                exc = RemoteError(f"{reply[1]}: {reply[2]}")
            raise exc
        raise _Fatal("protocol error from the program's process")

    def __repr__(self):
        return f"<function {self.__name__}>"


def _line(vfd, *parts):
    text = " ".join(str(p) for p in parts).replace("\n", " ").replace("\r", " ")
    os.write(vfd, (text[:400] + "\n").encode("utf-8", "replace"))


def _prctl(option, arg):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, arg, 0, 0, 0)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    kids = []  # kernels without CONFIG_PROC_CHILDREN: scan every process's parent
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def _kill_tree(worker_pid):
    """Without a PID namespace: kill the worker's group, then everything re-parented to us (we are a
    child subreaper), until nothing is left."""
    for _ in range(200):
        try:
            os.killpg(worker_pid, _SIGKILL)
        except OSError:
            pass
        kids = _children(os.getpid())
        for k in kids:
            for kill, target in ((os.killpg, k), (os.kill, k)):
                try:
                    kill(target, _SIGKILL)
                except OSError:
                    pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        if not kids:
            time.sleep(0.002)


def _exit_reason(pid):
    for _ in range(50):
        try:
            done, code = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return ""
        if done:
            if os.WIFSIGNALED(code):
                sig = os.WTERMSIG(code)
                return f" (killed by {_SIGNALS.get(sig, f'signal {sig}')})"
            return f" (exit status {os.WEXITSTATUS(code)})"
        time.sleep(0.002)
    return ""


def run_tester(cfg):
    """One program: fork the worker, read the job from fd 0, run the tests, report on cfg's verdict fd."""
    start = time.monotonic()
    deadline = start + cfg["timeout_s"]
    # Pid 1 of a namespace gets only the signals it handles; Python handles SIGINT. Ignore it, so that a
    # same-uid program cannot raise KeyboardInterrupt in the tester (it could only make tests fail).
    _signal.signal(_SIGINT, _signal.SIG_IGN)
    vfd = cfg["verdict_fd"]
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    if cfg["subreaper"]:
        _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of the worker come back to us, not to init
    if cfg.get("chown_cwd") is not None:
        os.chown(".", cfg["chown_cwd"], -1)
    t2w_r, t2w_w = os.pipe()
    w2t_r, w2t_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(t2w_r, _WORKER_IN)
            os.dup2(w2t_w, _WORKER_OUT)
            os.closerange(3, _WORKER_IN)
            os.closerange(_WORKER_OUT + 1, 1 << 20)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            _worker(_WORKER_IN, _WORKER_OUT, cfg)
        except BaseException as e:  # noqa: B036 -- set-up failed: say why on stderr, the tester sees EOF
            os.write(2, f"aha sandbox: worker set-up failed: {_describe(e)}\n".encode("utf-8", "replace"))
        finally:
            os._exit(0)
    os.close(t2w_r)
    os.close(w2t_w)
    if cfg["undumpable"]:
        _prctl(4, 0)  # PR_SET_DUMPABLE 0: the same-uid worker cannot ptrace us or open /proc/<us>/fd
    _line(vfd, "S", pid)
    status = "D"
    try:
        job = marshal.loads(_read_exact(0, int(_read_exact(0, _HEADER, deadline)), deadline))
        conn = _Conn(t2w_w, w2t_r, deadline)
        reply = conn.request(("exec", job["code"], job["module_name"], job["stdin"]))
        if reply[0] != "ok":
            _line(vfd, "E", 0, reply[2] if len(reply) > 2 else "")
            raise _Fatal("")
        _line(vfd, "E", 1)
        # The tests' namespace: the tester's own builtins, the trusted prelude, and from the program ONLY
        # the entry point. Any other name the program defines (`abs`, `len`, `check`, a helper) stays in
        # the worker, where it cannot change what the tests compute.
        ns = {"__name__": "__main__", "__builtins__": builtins}
        if job["prelude"]:
            exec(compile(job["prelude"], "<prelude>", "exec"), ns)
        if job["entry_point"]:
            ns[job["entry_point"]] = ns["candidate"] = _Remote(conn, job["entry_point"])
        for i, source in enumerate(job["tests"]):
            try:
                exec(compile(source, f"<test {i}>", "exec"), ns)
                _line(vfd, "R", i, 1)
            except _Fatal:
                raise
            except BaseException as e:  # noqa: B036 -- a test that raises SystemExit has failed
                _line(vfd, "R", i, 0, _describe(e))
    except _Fatal as e:
        if str(e):
            status = "X " + str(e) + (_exit_reason(pid) if "ended" in str(e) else "")
    except BaseException as e:  # noqa: B036
        status = "X harness error: " + _describe(e)
    try:
        os.close(t2w_w)
    except OSError:
        pass
    if cfg["subreaper"]:
        _kill_tree(pid)
    else:
        try:
            os.killpg(pid, _SIGKILL)
        except OSError:
            pass
    _line(vfd, status)
    os._exit(0)


# ---------------------------------------------------------------- the zygote (many programs, one sandbox)
def _high(fd):
    new = os.dup2(fd, 200 + fd, inheritable=False)
    os.close(fd)
    return new


def _reap_all():
    """As pid 1 of the sandbox's PID namespace: kill every other process in it (kill(-1) spares only
    pid 1) and reap them, until none is left. Orphans re-parent to pid 1, so nothing escapes."""
    for _ in range(100_000):
        try:
            os.kill(-1, _SIGKILL)
            signalled = True
        except ProcessLookupError:
            signalled = False
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            if not signalled:
                return
        if signalled:
            time.sleep(0.0005)


def _wipe(top, depth=0):
    """Remove everything under `top` that this uid may remove (run by the worker, before the program)."""
    try:
        names = os.listdir(top)
    except OSError:
        return
    for name in names:
        path = top + "/" + name
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                if depth < 64:
                    os.chmod(path, 0o700)
                    _wipe(path, depth + 1)
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass


def zygote(cfg):
    """A long-lived sandbox that runs programs one after another, so that each one costs two forks
    instead of a new bubblewrap and a new interpreter. It is pid 1 of the sandbox (signals from the
    programs cannot touch it; it is not dumpable), receives each job's pipes over a socket, forks a
    tester for it and, once the tester is gone, kills and reaps every process left in the namespace
    before it says it is ready for the next one. The next worker empties /tmp before its program runs."""
    import socket

    _signal.signal(_SIGINT, _signal.SIG_IGN)
    if cfg["undumpable"]:
        _prctl(4, 0)
    sock = socket.socket(fileno=cfg["control_fd"])
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except OSError:
            break
        if not msg:
            break
        fds = [_high(fd) for fd in fds]
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                os.closerange(len(fds), 1 << 20)
                job_cfg = marshal.loads(msg)
                job_cfg["verdict_fd"] = 3
                run_tester(job_cfg)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        _reap_all()
        try:
            sock.send(b"R")
        except OSError:
            break
    os._exit(0)


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[-1]))
    if cfg.get("zygote"):
        zygote(cfg)
    else:
        run_tester(cfg)


if __name__ == "__main__":
    main()
