"""The custom op's child process: its main loop, running the op on each batch.

A user's ``--custom-ops`` file defines ``op(x)``: a batch ``(N, ...)`` in, a numeric batch
``(N, ...)`` out. ``testprio.ingest.sandbox`` checks the file (``source_problem``) and runs it here,
in a process of its own started as ``python -I sandbox_worker.py``. The sandbox is four
modules of this folder: this one (the worker's main loop), ``sandbox_check`` (the source
check and its allow-lists), ``sandbox_guard`` (restricted execution, the runtime guard, the
resource limits) and ``sandbox_protocol`` (the frames). They need only the standard library
and numpy, never the rest of ``testprio``: the worker does not put testprio on its path (and
``-I`` keeps this folder off it), so it loads the other three by file
(``_sibling_modules``), and they import each other by relative imports only. The parent
imports them as ``testprio.ingest`` modules for the same checker and frames.

Threat model: the op is written by someone who can run testprio but should not be able to do
more than compute on the batches given to it: no reading or writing files, no processes, no
network, no reaching testprio's credentials or memory, no hanging or exhausting the machine.
The layers, each of which an escape would have to get through:

1. **Source check** (``sandbox_check.source_problem``, in the parent and again in the
   worker): an allow-list on the syntax tree. Imports: ``numpy`` and ``math`` only, no numpy
   submodules, ``from numpy import`` only allow-listed names. No name or attribute that
   starts with ``_`` (this closes ``().__class__.__bases__[0].__subclasses__()`` and
   friends). No use of the builtins that reach the interpreter (``eval``, ``exec``, ``open``,
   ``getattr``, ``type``, ``globals``...). Attribute access only by names on
   ``ALLOWED_ATTRIBUTES`` (pure numpy and math functions, array attributes and methods): an
   allow-list, so frame and generator attributes (``gi_frame``, ``f_globals``),
   ``str.format``, ``np.load``, ``x.tofile`` and ``x.ctypes`` are all out. No assignment to
   attributes. No classes, ``global``/``nonlocal``, ``async``, ``with``, ``match``, generator
   functions, and no ``try``: an op has nothing to recover from, and an ``except`` clause
   hands out exception objects whose tracebacks lead to frames. ``numpy.random`` is refused
   too: preprocessing must be deterministic, the run records the op's source and hash to be
   repeatable. No decorators. Raw memory and object dtypes by literal: no call of ``ndarray``
   (it builds arrays over a buffer), no ``buffer=``/``strides=`` keyword, no string,
   structured spec (``[('p', 'O')]``) or builtin type in a dtype slot (``x.astype(list)``)
   that numpy reads as an object or void dtype. An object array over raw bytes forges
   pointers (``np.ndarray((1,), np.dtype('O'), buffer=cell)`` once reached ``exec`` and the
   parent's environment).
2. **Restricted execution** (``sandbox_guard.exec_restricted``): the module body runs with a
   ``__builtins__`` of safe builtins only (``SAFE_BUILTINS``) and an ``__import__`` that
   hands out numpy and math only, so a source that got past the check still finds no
   ``open``, ``eval`` or ``os``.
3. **Runtime guard** (``sandbox_guard``: ``NUMPY_PROXY``, ``guarded_attribute``,
   ``_GuardedCallable``): op code imports a stand-in numpy (and math) holding the
   allow-listed names only, and every attribute it reads is rewritten into
   ``guarded_attribute(value, 'name')`` before the code is compiled. Every numpy function,
   method and math function it can reach is wrapped: an argument that is, holds one level
   down or names an object or void dtype (computed strings such as ``'%c' % 79``, ``list``,
   structured dicts), any function handed to numpy (``np.pad(mode=callable)``) and any object
   or void array, scalar or dtype in a result is refused, as is any attribute read on an
   object array. ``np.ndarray`` is a stand-in that ``isinstance`` accepts and that cannot be
   called; ``np.dtype`` is guarded like a function. A refusal is recorded before it is
   raised, so a batch is refused even if something swallowed the exception. Object arrays can
   still arise from operators (``np.arange(2) + [2 ** 70]``), never from raw memory, and no
   function or method accepts them. The guard costs roughly 10-20 microseconds per numpy
   call.
4. **Resource limits** (``sandbox_guard.apply_limits``), set after numpy and the sandbox
   modules are imported and before the module body runs: ``RLIMIT_CPU`` (per batch: the soft
   limit moves to the CPU time used so far plus the budget before each batch; the kernel
   kills the worker with SIGXCPU), ``RLIMIT_AS`` (the address space after importing numpy
   plus ``memory_mb``: allocations beyond it fail with MemoryError), ``RLIMIT_FSIZE`` 0 (no
   bytes written to regular files), ``RLIMIT_NPROC`` 0 (no new processes or threads),
   ``RLIMIT_CORE`` 0 and ``RLIMIT_NOFILE`` (no new file descriptors: no opening files or
   sockets; numpy modules that numpy imports lazily are imported up front for this reason).
   The parent adds a wall-clock limit per batch and kills the whole process group when it
   passes.
5. **Process isolation**: a separate process with a near-empty environment (no credentials),
   ``-I`` (no user site, no ``PYTHON*`` variables), its own session, cwd ``/``. Batches
   travel as length-prefixed ``.npy`` frames (``sandbox_protocol``) and errors as JSON over
   stdin/stdout; nothing is ever pickled, and the parent reads a reply with
   ``allow_pickle``-free parsing, refusing object arrays.

What this does NOT protect against (it is defense in depth, not a security boundary like a
container, gVisor or a VM): the worker runs as the same user with the same filesystem view,
so a sandbox escape (a bug in CPython, numpy or this checker) can read any file that user can
read, use the network, and, as root, ignore ``RLIMIT_NPROC`` and raise every limit again.
The descriptor limit stops opening files and sockets only while all descriptors are in use:
code that escaped can close one (stdin) and open what it likes. There is no seccomp filter and
no namespace. ``RLIMIT_FSIZE`` does not stop creating empty files, deleting or renaming
files. ``RLIMIT_AS`` caps virtual memory, not resident memory of the machine as a whole, and
the CPU limit has one-second granularity. Timing side channels and numpy's own memory-safety
bugs are out of scope. Run testprio in a container (the pipeline's pods are one) when the op
files come from people you do not trust.

The protocol with the parent (a JSON config, then one array frame per batch, answered by an
array frame or a JSON error) is in ``sandbox_protocol``'s docstring.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import traceback
import types
from collections.abc import Callable

import numpy as np

# Longest exception text the worker passes on (a user message can be arbitrarily long).
MAX_DETAIL_CHARS = 300
# The sandbox modules this one needs, in the order they import each other.
_SIBLINGS = ("sandbox_check", "sandbox_guard", "sandbox_protocol")
# The package the worker process loads them into: this folder, without testprio.
_FOLDER_PACKAGE = "_sandbox"


def _sibling_modules() -> tuple[types.ModuleType, ...]:
    """The ``_SIBLINGS``, loaded by file from this folder as package ``_sandbox``.

    For the worker process (``python -I sandbox_worker.py``) and tests that load this file
    on its own. ``testprio.ingest`` is not imported: its ``__init__`` imports the whole
    ingest stage (Arrow, Pillow, the readers), which the worker has no use for and which
    would run in it before the limits are set. The package runs no ``__init__`` and is not
    on ``sys.path``: only the modules named here are loaded, and their relative imports
    resolve inside this folder. All of them load now, before the limits forbid opening files.
    """
    if _FOLDER_PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(_FOLDER_PACKAGE, None, is_package=True)
        spec.submodule_search_locations.append(os.path.dirname(os.path.abspath(__file__)))
        sys.modules[_FOLDER_PACKAGE] = importlib.util.module_from_spec(spec)
    return tuple(importlib.import_module(f"{_FOLDER_PACKAGE}.{name}") for name in _SIBLINGS)


if __package__:  # imported as testprio.ingest.sandbox_worker: the parent, tests, python -m
    from . import sandbox_check, sandbox_guard, sandbox_protocol
else:  # run as a script (the worker process) or loaded from its file
    sandbox_check, sandbox_guard, sandbox_protocol = _sibling_modules()

# What the worker uses, and what the parent (sandbox.py) and the tests read here.
MAX_SOURCE_BYTES = sandbox_check.MAX_SOURCE_BYTES
NUMPY_NAMES = sandbox_check.NUMPY_NAMES
NUMPY_SUBMODULE_NAMES = sandbox_check.NUMPY_SUBMODULE_NAMES
ALLOWED_ATTRIBUTES = sandbox_check.ALLOWED_ATTRIBUTES
source_problem = sandbox_check.source_problem

SandboxRefusal = sandbox_guard.SandboxRefusal
refusals = sandbox_guard.refusals  # one list, cleared and appended to, never rebound
NUMPY_PROXY = sandbox_guard.NUMPY_PROXY
_GuardedCallable = sandbox_guard._GuardedCallable
guarded_attribute = sandbox_guard.guarded_attribute
exec_restricted = sandbox_guard.exec_restricted
apply_limits = sandbox_guard.apply_limits
set_cpu_budget = sandbox_guard.set_cpu_budget

FRAME_HEADER = sandbox_protocol.FRAME_HEADER
JSON_TAG = sandbox_protocol.JSON_TAG
ARRAY_TAG = sandbox_protocol.ARRAY_TAG
encode_array = sandbox_protocol.encode_array
decode_array = sandbox_protocol.decode_array
write_frame = sandbox_protocol.write_frame
read_frame = sandbox_protocol.read_frame
FrameTooLarge = sandbox_protocol.FrameTooLarge
error_frame = sandbox_protocol.error_frame

# --- the worker's main loop --------------------------------------------------------------


def _raised(exc: BaseException, name: str) -> list:
    """An error frame for an exception from op code: its type, text and line in the file."""
    if isinstance(exc, MemoryError):
        return error_frame("memory", f"MemoryError: {str(exc)[:MAX_DETAIL_CHARS]}")
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    if isinstance(exc, SandboxRefusal) or refusals:
        return _refused(name, lines[-1] if lines else None, str(exc))
    text = str(exc)[:MAX_DETAIL_CHARS]
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return error_frame("raised", detail, lines[-1] if lines else None)


def _refused(name: str, line: int | None, fallback: str = "an operation was refused") -> list:
    """The refusal sentence for the first thing the runtime guard refused."""
    problem = (refusals or [fallback])[0][:MAX_DETAIL_CHARS]
    refusals.clear()
    at = f" line {line}" if line is not None else ""
    return error_frame("refused", f"custom op file {name}{at}: {problem}.")


def _run_batch(op: Callable, payload: bytearray, name: str) -> tuple[bytes, list]:
    refusals.clear()
    try:
        y = op(decode_array(payload))
    except BaseException as exc:  # anything op code does wrong is the user's to see
        return JSON_TAG, _raised(exc, name)
    if refusals:  # refused, and op code or numpy swallowed the exception
        return JSON_TAG, _refused(name, None)
    if not isinstance(y, np.ndarray):
        return JSON_TAG, error_frame("output", f"a {type(y).__name__} instead of a numpy array")
    try:
        return ARRAY_TAG, encode_array(y)
    except MemoryError as exc:
        return JSON_TAG, error_frame("memory", f"MemoryError: {str(exc)[:MAX_DETAIL_CHARS]}")
    except ValueError:
        return JSON_TAG, error_frame("output", f"an array of dtype {y.dtype}")


def _warm_up() -> None:
    """Run the frame code once so nothing it uses is imported lazily under the limits."""
    payload = bytearray(b"".join(bytes(part) for part in encode_array(np.zeros((2, 1)))))
    decode_array(payload)
    traceback.extract_tb(None)
    json.dumps(json.loads("{}"))


def main() -> int:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # print() and stray C output go to stderr, never into the frames
    sys.stdout = sys.stderr  # line-buffered: a crash loses no printed line
    stdin = sys.stdin.buffer
    frame = read_frame(stdin)
    if frame is None:
        return 0
    config = json.loads(frame[1])
    source, name = config["source"], config["name"]
    cpu_seconds, memory_mb = float(config["cpu_seconds"]), int(config["memory_mb"])
    problem = source_problem(source, name)
    if problem:
        write_frame(out_fd, JSON_TAG, error_frame("refused", problem))
        return 0
    _warm_up()
    apply_limits(cpu_seconds, memory_mb)
    try:
        op = exec_restricted(source, name)
    except BaseException as exc:
        write_frame(out_fd, JSON_TAG, _raised(exc, name))
        return 0
    if refusals:
        write_frame(out_fd, JSON_TAG, _refused(name, None))
        return 0
    write_frame(out_fd, JSON_TAG, [b'{"status": "ready"}'])
    while True:
        try:
            frame = read_frame(stdin)
        except FrameTooLarge:
            write_frame(out_fd, JSON_TAG, error_frame("memory", "the batch alone does not fit"))
            continue
        if frame is None:
            return 0
        set_cpu_budget(cpu_seconds)
        tag, parts = _run_batch(op, frame[1], name)
        del frame
        write_frame(out_fd, tag, parts)


if __name__ == "__main__":
    sys.exit(main())
