"""User-supplied custom preprocessing ops (``--custom-ops FILE.py``), checked and sandboxed.

The file defines ``def op(x)``: a batch ``(N, ...)`` in, a numeric batch ``(N, ...)`` out.
``check_source`` refuses, with one sentence naming the line, any file that uses more than
numpy and math (or builds arrays over raw memory, or names object or void dtypes);
``CustomOp`` runs a checked file, behind a runtime guard on every numpy call, in a worker process
(``testprio/ingest/sandbox_worker.py``) under CPU, memory, file, process and file-descriptor limits
and a wall-clock limit per batch, and turns everything that can go wrong there into a
``TestprioError`` that says what happened and what to do.

The threat model, the layers and what they do NOT protect against are in
``testprio.ingest.sandbox_worker``'s docstring. In short: this is defense in depth for op files
from colleagues, not a security boundary; a container (the pipeline's pods) is that.

The parent never unpickles anything from the worker: replies are ``.npy`` frames parsed by
``sandbox_worker.decode_array`` (object arrays refused) or short JSON error frames, both of
bounded size.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from testprio.errors import TestprioError
from testprio.ingest import sandbox_worker

WORKER_PATH = sandbox_worker.__file__
# Environment of the worker: no credentials or tokens of the parent, one thread per library
# (threads count against RLIMIT_NPROC 0, and one op should not take every core).
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_PASSED_VARIABLES = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL")
# Longest JSON frame the parent reads (error frames are a few hundred bytes).
_MAX_JSON_BYTES = 65_536
# Time for the interpreter and numpy to start, on top of the per-batch limit.
_START_SECONDS = 30.0
_NUMERIC_KINDS = "biuf"
_STDERR_TAIL_BYTES = 2_000
_MAX_DETAIL_CHARS = 1_000


def check_source(source: str, name: str) -> None:
    """Refuse an op file that uses more than numpy and math.

    Raises ``TestprioError`` with one sentence naming the file ``name``, the line of the
    first offence and the construct, e.g. ``custom op file ops.py line 3: import of 'os' is
    not allowed; only numpy and math may be imported.``
    """
    problem = sandbox_worker.source_problem(source, name)
    if problem:
        raise TestprioError(problem)


class CustomOp:
    """A user op in a sandboxed worker process; duck-types ``testprio.ingest.preprocess.Op``.

    ``apply`` takes a numeric batch ``(N, ...)`` and returns the op's numeric batch
    ``(N, ...)`` (NaN and inf allowed: ingest quarantines them). The worker starts on the
    first ``apply``; after a failure that ended it (CPU or wall-clock limit, crash) the
    next ``apply`` starts a fresh one. Limits: ``cpu_seconds`` of CPU time per batch,
    ``memory_mb`` of address space on top of the worker's own (input and output batches
    included), ``batch_timeout_s`` of wall-clock time per batch.
    """

    name = "custom"
    per_sample_safe = False  # never run in decode threads: one worker, one batch at a time
    needs_fit = False

    def __init__(
        self,
        source: str,
        name: str,
        *,
        cpu_seconds: float = 300.0,
        memory_mb: int = 2048,
        batch_timeout_s: float = 120.0,
    ):
        check_limits(cpu_seconds, memory_mb, batch_timeout_s)
        check_source(source, name)
        self.file = name
        self.source = source
        self.cpu_seconds = cpu_seconds
        self.memory_mb = memory_mb
        self.batch_timeout_s = batch_timeout_s
        self._worker: _WorkerProcess | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The worker's process id, None while no worker runs."""
        worker = self._worker
        return None if worker is None else worker.pid

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = _checked_batch(x, self.file)
        with self._lock:
            if self._worker is None:
                self._worker = _WorkerProcess(
                    self.source,
                    self.file,
                    cpu_seconds=self.cpu_seconds,
                    memory_mb=self.memory_mb,
                    batch_timeout_s=self.batch_timeout_s,
                )
            try:
                return self._worker.run(x)
            except TestprioError:
                if not self._worker.alive:
                    self._worker.close()
                    self._worker = None
                raise

    def fit(self, batches) -> None:
        """Nothing to fit: a custom op has no statistics."""

    def record(self) -> dict:
        return {
            "op": "custom",
            "file": self.file,
            "sha256": hashlib.sha256(self.source.encode("utf-8")).hexdigest(),
            "source": self.source,
            "cpu_seconds": self.cpu_seconds,
            "memory_mb": self.memory_mb,
        }

    def close(self) -> None:
        """Stop the worker (idempotent)."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ refused the file
            return
        with lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def __enter__(self) -> CustomOp:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone already
            pass


def check_limits(cpu_seconds: float, memory_mb: int, batch_timeout_s: float) -> None:
    problems = (
        (cpu_seconds > 0, f"--custom-op-cpu-seconds {cpu_seconds} must be positive."),
        (memory_mb >= 16, f"--custom-op-memory-mb {memory_mb} must be at least 16."),
        (batch_timeout_s > 0, f"--custom-op-batch-timeout-s {batch_timeout_s} must be positive."),
    )
    for ok, sentence in problems:
        if not ok:
            raise TestprioError(sentence)


def _checked_batch(x: np.ndarray, file: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim < 1 or x.dtype.kind not in _NUMERIC_KINDS:
        if isinstance(x, np.ndarray):
            what = f"an array of dtype {x.dtype} and shape {x.shape}"
        else:
            what = f"a {type(x).__name__}"
        raise TestprioError(
            f"custom op file {file} was given {what}; ops take a numeric numpy array (N, ...)."
        )
    return x


def _checked_output(y: np.ndarray, n: int, file: str) -> np.ndarray:
    if y.dtype.kind not in _NUMERIC_KINDS:
        problem = f"an array of dtype {y.dtype}"
    elif y.ndim < 1 or y.shape[0] != n:
        problem = f"an array of shape {y.shape} for a batch of {n}"
    else:
        return y
    raise TestprioError(
        f"custom op file {file} returned {problem}; op(x) must return a numeric numpy array "
        "whose first dimension is the batch size N."
    )


class _WorkerFailed(Exception):
    """The worker ended or broke the protocol; the caller turns this into a sentence."""


class _WorkerProcess:
    """One running ``sandbox_worker.py`` and the frames to and from it."""

    def __init__(
        self,
        source: str,
        name: str,
        *,
        cpu_seconds: float,
        memory_mb: int,
        batch_timeout_s: float,
    ):
        self.file = name
        self.cpu_seconds = cpu_seconds
        self.memory_mb = memory_mb
        self.batch_timeout_s = batch_timeout_s
        # An output batch fits in the worker's memory; a larger reply is a broken worker.
        self._max_array_bytes = (memory_mb + 64) * 2**20
        self._timed_out = False
        self._stderr_tail = collections.deque()
        env = {key: os.environ[key] for key in _PASSED_VARIABLES if key in os.environ}
        env.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", WORKER_PATH],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,  # its own process group: the parent kills it whole
            )
        except OSError as exc:
            raise TestprioError(
                f"cannot start the worker process for custom op file {name} ({exc}); "
                "check that this Python can run subprocesses."
            ) from None
        self.pid = self._process.pid
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        self._stdin_fd = self._process.stdin.fileno()
        self._stdout_fd = self._process.stdout.fileno()
        os.set_blocking(self._stdin_fd, False)
        config = {
            "source": source,
            "name": name,
            "cpu_seconds": cpu_seconds,
            "memory_mb": memory_mb,
        }
        deadline = time.monotonic() + batch_timeout_s + _START_SECONDS
        try:
            self._send(sandbox_worker.JSON_TAG, [json.dumps(config).encode()], deadline)
            reply = self._receive(deadline)
        except _WorkerFailed as exc:
            self.close()
            raise TestprioError(self._failure_sentence(str(exc), "while loading")) from None
        if not isinstance(reply, dict):
            self._kill()
            self.close()
            raise TestprioError(self._failure_sentence("protocol", "while loading"))
        if reply.get("status") != "ready":
            self.close()
            raise TestprioError(self._error_sentence(reply, "while loading"))

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def run(self, x: np.ndarray) -> np.ndarray:
        """``op(x)`` in the worker, within the batch's wall-clock limit."""
        deadline = time.monotonic() + self.batch_timeout_s
        where = f"on a batch of shape {x.shape}"
        try:
            self._send(sandbox_worker.ARRAY_TAG, sandbox_worker.encode_array(x), deadline)
            reply = self._receive(deadline)
        except _WorkerFailed as exc:
            raise TestprioError(self._failure_sentence(str(exc), where)) from None
        if isinstance(reply, dict):
            raise TestprioError(self._error_sentence(reply, where))
        return _checked_output(reply, x.shape[0], self.file)

    def close(self) -> None:
        """End of input asks the worker to exit; a worker that does not is killed."""
        process = self._process
        if process.returncode is None:
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._kill()
        self._drainer.join(timeout=1)  # it ends at the worker's end of stderr
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                stream.close()
            except OSError:
                pass

    # --- frames over non-blocking pipes, with a deadline ----------------------------------

    def _send(self, tag: bytes, parts: list, deadline: float) -> None:
        total = sum(len(memoryview(part).cast("B")) for part in parts)
        for part in [sandbox_worker.FRAME_HEADER.pack(tag, total), *parts]:
            view = memoryview(part).cast("B")
            while view:
                self._wait(self._stdin_fd, select.POLLOUT, deadline)
                try:
                    written = os.write(self._stdin_fd, view[: 1 << 20])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return  # the worker is gone or gave up: its last words may be waiting
                view = view[written:]

    def _receive(self, deadline: float) -> np.ndarray | dict:
        header = self._read_exactly(sandbox_worker.FRAME_HEADER.size, deadline)
        tag, length = sandbox_worker.FRAME_HEADER.unpack(bytes(header))
        limit = {sandbox_worker.JSON_TAG: _MAX_JSON_BYTES}.get(tag, self._max_array_bytes)
        if tag not in (sandbox_worker.JSON_TAG, sandbox_worker.ARRAY_TAG) or length > limit:
            self._kill()
            raise _WorkerFailed("protocol")
        payload = self._read_exactly(length, deadline)
        try:
            if tag == sandbox_worker.JSON_TAG:
                reply = json.loads(payload.decode("utf-8"))
                if not isinstance(reply, dict):
                    raise ValueError("not a JSON object")
                return reply
            return sandbox_worker.decode_array(payload)
        except ValueError:
            self._kill()
            raise _WorkerFailed("protocol") from None

    def _read_exactly(self, size: int, deadline: float) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            self._wait(self._stdout_fd, select.POLLIN, deadline)
            got = os.readv(self._stdout_fd, [view[filled : filled + (1 << 20)]])
            if got == 0:
                raise _WorkerFailed("ended")
            filled += got
        return buffer

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._timed_out = True
                self._kill()
                raise _WorkerFailed("timeout")
            if poller.poll(min(left, 1.0) * 1000):
                return  # ready, or hung up: the read or write that follows tells which

    def _kill(self) -> None:
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self._process.kill()
        except OSError:
            pass
        self._process.wait()

    def _drain_stderr(self) -> None:
        """Keep the last bytes the worker wrote to stderr (print output, crash reports)."""
        stream = self._process.stderr
        kept = 0
        try:
            while chunk := stream.read1(4096):
                self._stderr_tail.append(chunk)
                kept += len(chunk)
                while kept > _STDERR_TAIL_BYTES and len(self._stderr_tail) > 1:
                    kept -= len(self._stderr_tail.popleft())
        except (OSError, ValueError):  # closed by close()
            pass

    def _last_stderr_line(self) -> str:
        text = b"".join(self._stderr_tail).decode("utf-8", "replace").strip()
        lines = text.splitlines()
        return lines[-1][-200:] if lines else ""

    # --- sentences -------------------------------------------------------------------------

    def _error_sentence(self, reply: dict, where: str) -> str:
        """The sentence for an error frame from the worker."""
        kind = str(reply.get("kind", ""))
        detail = str(reply.get("detail", "an unknown error"))[:_MAX_DETAIL_CHARS]
        line = reply.get("line")
        at = f" at line {line}" if isinstance(line, int) else ""
        sentences = {
            "refused": detail,
            "raised": (
                f"custom op file {self.file} raised {detail}{at} {where}; fix the op or the "
                "data it is given."
            ),
            "memory": (
                f"custom op file {self.file} ran out of memory {where} under its "
                f"{self.memory_mb} MB limit ({detail}); use less memory in the op, smaller "
                "batches or raise --custom-op-memory-mb."
            ),
            "output": (
                f"custom op file {self.file} returned {detail} {where}; op(x) must return a "
                "numeric numpy array whose first dimension is the batch size N."
            ),
        }
        return sentences.get(
            kind, f"custom op file {self.file} failed {where} ({detail}); check the op."
        )

    def _failure_sentence(self, how: str, where: str) -> str:
        """The sentence for a worker that ended, timed out or broke the protocol."""
        if how == "ended":
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        code = self._process.returncode
        if self._timed_out:
            return (
                f"custom op file {self.file} took longer than its {self.batch_timeout_s:g} s "
                f"wall-clock limit {where} and was stopped; make it faster or raise "
                "--custom-op-batch-timeout-s."
            )
        if how == "protocol":
            return (
                f"custom op file {self.file}'s worker sent a malformed reply {where} and was "
                "stopped; report this, it should not happen."
            )
        if code == -signal.SIGXCPU:
            return (
                f"custom op file {self.file} exceeded its {self.cpu_seconds:g} s CPU limit "
                f"{where}; make it faster or raise --custom-op-cpu-seconds."
            )
        if code == -signal.SIGKILL:
            cause = "was killed by SIGKILL (by the system's out-of-memory killer, for example)"
        elif code is not None and code < 0:
            cause = f"crashed with {signal.Signals(-code).name} (out of memory, for example)"
        else:
            cause = f"exited with status {code}"
        said = self._last_stderr_line()
        said = f", its last output was {said!r}" if said else ""
        return (
            f"custom op file {self.file}'s worker process {cause} {where}{said}; check the op, "
            "or raise --custom-op-memory-mb if it needs more memory."
        )
