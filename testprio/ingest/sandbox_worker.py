"""The custom op's child process, and the source check that both processes run.

A user's ``--custom-ops`` file defines ``op(x)``: a batch ``(N, ...)`` in, a numeric batch
``(N, ...)`` out. ``testprio.ingest.sandbox`` checks the file (``source_problem``) and runs it here,
in a process of its own started as ``python -I sandbox_worker.py``. This module needs only
the standard library and numpy, never ``testprio``: the worker does not put testprio on its
path, and the parent imports this module for the same checker.

Threat model: the op is written by someone who can run testprio but should not be able to do
more than compute on the batches given to it: no reading or writing files, no processes, no
network, no reaching testprio's credentials or memory, no hanging or exhausting the machine.
The layers, each of which an escape would have to get through:

1. **Source check** (``source_problem``, in the parent and again in the worker): an
   allow-list on the syntax tree. Imports: ``numpy`` and ``math`` only, no numpy submodules,
   ``from numpy import`` only allow-listed names. No name or attribute that starts with ``_``
   (this closes ``().__class__.__bases__[0].__subclasses__()`` and friends). No use of the
   builtins that reach the interpreter (``eval``, ``exec``, ``open``, ``getattr``, ``type``,
   ``globals``...). Attribute access only by names on ``ALLOWED_ATTRIBUTES`` (pure numpy and
   math functions, array attributes and methods): an allow-list, so frame and generator
   attributes (``gi_frame``, ``f_globals``), ``str.format``, ``np.load``, ``x.tofile`` and
   ``x.ctypes`` are all out. No assignment to attributes. No classes, ``global``/``nonlocal``,
   ``async``, ``with``, ``match``, generator functions, and no ``try``: an op has nothing to
   recover from, and an ``except`` clause hands out exception objects whose tracebacks lead
   to frames. ``numpy.random`` is refused too: preprocessing must be deterministic, the run
   records the op's source and hash to be repeatable. No decorators. Raw memory and object
   dtypes by literal: no call of ``ndarray`` (it builds arrays over a buffer), no
   ``buffer=``/``strides=`` keyword, no string, structured spec (``[('p', 'O')]``) or
   builtin type in a dtype slot (``x.astype(list)``) that numpy reads as an object or void
   dtype. An object array over raw bytes forges pointers (``np.ndarray((1,),
   np.dtype('O'), buffer=cell)`` once reached ``exec`` and the parent's environment).
2. **Restricted execution**: the module body runs with a ``__builtins__`` of safe builtins
   only (``SAFE_BUILTINS``) and an ``__import__`` that hands out numpy and math only, so a
   source that got past the check still finds no ``open``, ``eval`` or ``os``.
3. **Runtime guard** (``NUMPY_PROXY``, ``guarded_attribute``, ``_GuardedCallable``): op
   code imports a stand-in numpy (and math) holding the allow-listed names only, and every
   attribute it reads is rewritten into ``guarded_attribute(value, 'name')`` before the
   code is compiled. Every numpy function, method and math function it can reach is
   wrapped: an argument that is, holds one level down or names an object or void dtype
   (computed strings such as ``'%c' % 79``, ``list``, structured dicts), any function
   handed to numpy (``np.pad(mode=callable)``) and any object or void array, scalar or
   dtype in a result is refused, as is any attribute read on an object array. ``np.ndarray``
   is a stand-in that ``isinstance`` accepts and that cannot be called; ``np.dtype``
   is guarded like a function. A refusal is recorded before it is raised, so a batch is
   refused even if something swallowed the exception. Object arrays can still arise from
   operators (``np.arange(2) + [2 ** 70]``), never from raw memory, and no function or
   method accepts them. The guard costs roughly 10-20 microseconds per numpy call.
4. **Resource limits**, set after numpy is imported and before the module body runs:
   ``RLIMIT_CPU`` (per batch: the soft limit moves to the CPU time used so far plus the
   budget before each batch; the kernel kills the worker with SIGXCPU), ``RLIMIT_AS`` (the
   address space after importing numpy plus ``memory_mb``: allocations beyond it fail with
   MemoryError), ``RLIMIT_FSIZE`` 0 (no bytes written to regular files), ``RLIMIT_NPROC`` 0
   (no new processes or threads), ``RLIMIT_CORE`` 0 and ``RLIMIT_NOFILE`` (no new file
   descriptors: no opening files or sockets; numpy modules that numpy imports lazily are
   imported up front for this reason). The parent adds a wall-clock limit per batch and
   kills the whole process group when it passes.
5. **Process isolation**: a separate process with a near-empty environment (no
   credentials), ``-I`` (no user site, no ``PYTHON*`` variables), its own session, cwd
   ``/``. Batches travel as length-prefixed ``.npy`` frames and errors as JSON over
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

Protocol (one worker, one op): the parent sends a JSON frame ``{"source", "name",
"cpu_seconds", "memory_mb"}``; the worker answers ``{"status": "ready"}`` or an error. Then,
per batch, the parent sends an array frame and the worker answers with an array frame or a
JSON error ``{"status": "error", "kind": ..., "detail": ..., "line": ...}``. A frame is one
tag byte (``J`` JSON, ``A`` array), an 8-byte little-endian length and the payload. The
worker exits at end of input.
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import resource
import struct
import sys
import traceback
import types
import warnings
from collections.abc import Callable

import numpy as np

# numpy imports these lazily (np.fft on first use, numpy.ma inside np.median): import them
# now, because under RLIMIT_NOFILE the worker cannot open a module file later.
import numpy.fft  # noqa: F401
import numpy.linalg  # noqa: F401
import numpy.ma  # noqa: F401

MAX_SOURCE_BYTES = 1_000_000
FRAME_HEADER = struct.Struct("<cQ")
JSON_TAG, ARRAY_TAG = b"J", b"A"
# Longest exception text the worker passes on (a user message can be arbitrarily long).
MAX_DETAIL_CHARS = 300

# numpy names an op may use: pure math, array creation and manipulation, dtypes and
# constants. Nothing that reads or writes files (load, save, fromfile, memmap, loadtxt...),
# no submodule but linalg and fft (no lib, ctypeslib, testing, f2py, random...), nothing
# that prints or sets global state (info, source, show_config, set_printoptions, seterr).
NUMPY_NAMES = frozenset(
    """
    array asarray ascontiguousarray zeros zeros_like ones ones_like empty empty_like full
    full_like arange linspace logspace geomspace eye identity meshgrid indices diag diagflat
    tri tril triu

    reshape ravel transpose moveaxis swapaxes expand_dims squeeze concatenate stack hstack
    vstack dstack column_stack split array_split hsplit vsplit dsplit tile repeat pad flip
    fliplr flipud rot90 roll broadcast_to broadcast_arrays atleast_1d atleast_2d atleast_3d
    take take_along_axis where select choose compress nonzero argwhere flatnonzero copy sort
    argsort partition argpartition searchsorted unique isin delete insert append trim_zeros
    diagonal trace

    add subtract multiply divide true_divide floor_divide power float_power mod fmod
    remainder divmod negative positive absolute abs fabs sign sqrt cbrt square reciprocal
    exp exp2 expm1 log log2 log10 log1p logaddexp logaddexp2 sin cos tan arcsin arccos
    arctan arctan2 sinh cosh tanh arcsinh arccosh arctanh hypot deg2rad rad2deg degrees
    radians floor ceil trunc rint round around fix clip maximum minimum fmax fmin heaviside
    sinc interp convolve correlate nan_to_num real imag copysign signbit gcd lcm bitwise_and
    bitwise_or bitwise_xor invert left_shift right_shift logical_and logical_or logical_not
    logical_xor equal not_equal less less_equal greater greater_equal isfinite isinf isnan
    isclose allclose array_equal

    sum prod cumsum cumprod mean average median std var min max amin amax argmin argmax ptp
    percentile quantile nanmean nanstd nanvar nanmin nanmax nansum nanmedian nanpercentile
    nanquantile nanargmin nanargmax all any count_nonzero diff gradient histogram
    histogram_bin_edges bincount digitize cov corrcoef dot vdot inner outer matmul tensordot
    einsum kron cross

    ndarray dtype float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool_
    intp finfo iinfo result_type promote_types pi e inf nan newaxis euler_gamma

    linalg fft
    """.split()
)
# Reached as np.linalg.<name> and np.fft.<name>.
NUMPY_SUBMODULE_NAMES = frozenset(
    """
    norm inv pinv det slogdet solve lstsq svd eig eigh eigvals eigvalsh qr cholesky
    matrix_rank matrix_power

    fft ifft rfft irfft fft2 ifft2 rfft2 irfft2 fftn ifftn rfftn irfftn fftfreq rfftfreq
    fftshift ifftshift
    """.split()
)
# The math module holds pure functions and constants only.
MATH_NAMES = frozenset(name for name in dir(math) if not name.startswith("_"))
# Attributes and methods of arrays, dtypes, finfo/iinfo and Python's lists and dicts.
ARRAY_ATTRIBUTES = frozenset(
    """
    shape dtype ndim size T itemsize nbytes astype reshape ravel flatten squeeze transpose
    swapaxes copy fill clip round mean std var sum prod cumsum cumprod min max argmin argmax
    argsort sort all any nonzero repeat take compress diagonal trace dot item tolist real
    imag choose partition argpartition searchsorted

    kind name eps tiny resolution bits

    append extend insert pop items keys values get index count
    """.split()
)
ALLOWED_ATTRIBUTES = NUMPY_NAMES | NUMPY_SUBMODULE_NAMES | MATH_NAMES | ARRAY_ATTRIBUTES
# What each importable module hands out to ``from MODULE import NAME``.
IMPORTABLE = {"numpy": NUMPY_NAMES, "math": MATH_NAMES}
# Builtins that reach the interpreter, files or the terminal: refused by name.
FORBIDDEN_NAMES = frozenset(
    """
    exec eval compile open getattr setattr delattr hasattr globals locals vars input
    breakpoint help memoryview type object super classmethod staticmethod property dir id
    hash exit quit format license credits copyright
    """.split()
)
# Statements and expressions an op never needs, by syntax-tree node type.
_REFUSED_NODES = {
    ast.ClassDef: "a class definition is not allowed; write plain functions",
    ast.Global: "a global statement is not allowed; pass values as arguments",
    ast.Nonlocal: "a nonlocal statement is not allowed; pass values as arguments",
    ast.AsyncFunctionDef: "an async function is not allowed; write a plain function",
    ast.AsyncFor: "an async for loop is not allowed; write a plain loop",
    ast.AsyncWith: "an async with statement is not allowed",
    ast.Await: "await is not allowed; write a plain function",
    ast.With: "a with statement is not allowed; ops open nothing",
    ast.Try: "a try statement is not allowed; let errors reach testprio",
    ast.Match: "a match statement is not allowed; use if/elif",
    ast.Yield: "yield is not allowed; return the whole batch",
    ast.YieldFrom: "yield from is not allowed; return the whole batch",
}
for _node_name, _problem in (
    ("TryStar", "a try statement is not allowed; let errors reach testprio"),
    ("TypeAlias", "a type statement is not allowed"),
):
    if hasattr(ast, _node_name):  # newer Pythons only
        _REFUSED_NODES[getattr(ast, _node_name)] = _problem

# --- the source check --------------------------------------------------------------------


def source_problem(source: str, name: str) -> str | None:
    """The one sentence that refuses ``source`` (file ``name``), or None when it passes.

    The sentence names the file, the line of the first offence and the construct.
    """
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return (
            f"custom op file {name} is larger than {MAX_SOURCE_BYTES // 1000} kB; "
            "keep the op file short."
        )
    try:
        tree = ast.parse(source, filename=name)
    except SyntaxError as exc:
        return f"custom op file {name} line {exc.lineno}: syntax error ({exc.msg}); fix it."
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return f"custom op file {name} cannot be parsed ({type(exc).__name__}); fix it."
    offences = _offences(tree)
    if offences:
        line, _column, problem = min(offences)
        return f"custom op file {name} line {line}: {problem}."
    return _op_problem(tree, name)


def _offences(tree: ast.AST) -> list[tuple[int, int, str]]:
    """Every refused construct as ``(line, column, problem)`` (iterative: no recursion)."""
    found = []
    stack = [(tree, 1)]
    while stack:
        node, line = stack.pop()
        line = getattr(node, "lineno", line)
        for offence in _node_problems(node):
            # (column, problem) on the node's line, or (line, column, problem) elsewhere
            found.append(offence if len(offence) == 3 else (line, *offence))
        stack.extend((child, line) for child in ast.iter_child_nodes(node))
    return found


def _node_problems(node: ast.AST) -> list[tuple]:
    column = getattr(node, "col_offset", 0)
    refused = _REFUSED_NODES.get(type(node))
    if refused:
        return [(column, refused)]
    check = _NODE_CHECKS.get(type(node))
    return check(node, column) if check else []


def _identifier_problem(identifier: str | None, what: str) -> str | None:
    if identifier is None:
        return None
    if identifier.startswith("_"):
        return f"{what} '{identifier}' is not allowed; names starting with '_' are refused"
    if identifier in FORBIDDEN_NAMES:
        return f"use of '{identifier}' is not allowed; ops may only compute with numpy and math"
    return None


def _one(column: int, problem: str | None) -> list[tuple[int, str]]:
    return [] if problem is None else [(column, problem)]


def _check_name(node: ast.Name, column: int) -> list[tuple[int, str]]:
    return _one(column, _identifier_problem(node.id, "the name"))


def _check_attribute(node: ast.Attribute, column: int) -> list[tuple[int, str]]:
    # Point at the attribute itself, not the start of the expression it ends.
    end = getattr(node, "end_col_offset", None)
    if end is not None and getattr(node, "end_lineno", node.lineno) == node.lineno:
        column = end - len(node.attr)
    attr = node.attr
    if attr.startswith("_"):
        return [(column, f"attribute '{attr}' is not allowed; names starting with '_' are refused")]
    if attr not in ALLOWED_ATTRIBUTES:
        return [
            (
                column,
                f"attribute '{attr}' is not allowed; only the numpy and math functions and "
                "array methods on testprio's allow-list may be used",
            )
        ]
    if not isinstance(node.ctx, ast.Load):
        return [(column, f"changing attribute '{attr}' is not allowed; build a new value")]
    return []


def _check_function(node: ast.FunctionDef, column: int) -> list[tuple]:
    # A decorator calls a function without a call in the source (``@np.array`` turns the
    # function into an object array): refused at the decorator's own line.
    decorated = [
        (decorator.lineno, decorator.col_offset - 1, "a decorator is not allowed; call it")
        for decorator in node.decorator_list
    ]
    return _one(column, _identifier_problem(node.name, "the function name")) + decorated


# Keywords through which numpy builds an array over memory it was handed.
RAW_MEMORY_KEYWORDS = frozenset({"buffer", "strides"})
# Builtin types that numpy turns into the object dtype (np.dtype(list) is dtype('O')).
_DTYPE_BUILTINS = frozenset({"list", "dict", "tuple", "set", "frozenset", "slice", "range"})


def literal_dtype_problem(node: ast.AST) -> str | None:
    """The problem with a literal that names an object or void dtype, else None.

    Looks into string constants and into tuple, list and dict literals (structured dtypes
    such as ``[('p', 'O')]``), a few levels deep. The runtime guard refuses computed ones.
    """
    stack = [(node, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            kind = _dtype_kind(node.value)
            if kind:
                return (
                    f"the dtype {node.value!r} ({kind}) is not allowed; ops compute with "
                    "numeric dtypes only"
                )
        elif isinstance(node, (ast.Tuple, ast.List)) and depth < 4:
            stack.extend((element, depth + 1) for element in node.elts)
        elif isinstance(node, ast.Dict) and depth < 4:
            stack.extend((value, depth + 1) for value in node.values if value is not None)
    return None


def _dtype_kind(spec) -> str | None:
    """'object dtype' or 'void dtype' when numpy reads ``spec`` as one, else None."""
    if isinstance(spec, str) and len(spec) > 64:
        return None  # data or a message, not a dtype name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.dtype(spec)
    except Exception:  # not a dtype at all: numpy raises TypeError, ValueError, KeyError...
        return None
    return _refused_dtype_kind(dtype)


def _refused_dtype_kind(dtype: np.dtype) -> str | None:
    if dtype.hasobject or dtype.kind == "O":
        return "object dtype"
    if dtype.kind == "V":
        return "void dtype"
    return None


def _callee_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _check_call(node: ast.Call, column: int) -> list[tuple]:
    problems = []
    callee = _callee_name(node.func)
    if callee == "ndarray":
        problems.append(
            (
                column,
                "calling np.ndarray(...) is not allowed; it builds arrays over raw memory, "
                "use np.array, np.zeros or np.empty",
            )
        )
    for keyword in node.keywords:
        if keyword.arg in RAW_MEMORY_KEYWORDS:
            problems.append(
                (
                    keyword.value.lineno,
                    keyword.value.col_offset,
                    f"the keyword argument '{keyword.arg}=' is not allowed; ops may not build "
                    "arrays over raw memory",
                )
            )
    # Where numpy reads a dtype: astype(X), dtype(X) and any dtype=X. A builtin type there
    # (list, dict...) is the object dtype.
    dtype_slots = [kw.value for kw in node.keywords if kw.arg == "dtype"]
    if callee in ("astype", "dtype") and node.args:
        dtype_slots.append(node.args[0])
    for slot in dtype_slots:
        if isinstance(slot, ast.Name) and slot.id in _DTYPE_BUILTINS:
            problems.append(
                (
                    slot.lineno,
                    slot.col_offset,
                    f"the dtype {slot.id} (object dtype) is not allowed; ops compute with "
                    "numeric dtypes only",
                )
            )
    for argument in [*node.args, *(kw.value for kw in node.keywords)]:
        problem = literal_dtype_problem(argument)
        if problem:
            problems.append((argument.lineno, argument.col_offset, problem))
    return problems


def _check_arg(node: ast.arg, column: int) -> list[tuple[int, str]]:
    return _one(column, _identifier_problem(node.arg, "the parameter"))


def _check_keyword(node: ast.keyword, column: int) -> list[tuple[int, str]]:
    return _one(column, _identifier_problem(node.arg, "the keyword argument"))


def _check_import(node: ast.Import, column: int) -> list[tuple[int, str]]:
    for alias in node.names:
        if alias.name not in IMPORTABLE:
            return [
                (
                    column,
                    f"import of '{alias.name}' is not allowed; only numpy and math may be imported",
                )
            ]
        problem = _identifier_problem(alias.asname, "the import alias")
        if problem:
            return [(column, problem)]
    return []


def _check_import_from(node: ast.ImportFrom, column: int) -> list[tuple[int, str]]:
    if node.level:
        return [(column, "a relative import is not allowed; only numpy and math may be imported")]
    if node.module not in IMPORTABLE:
        return [
            (
                column,
                f"import from '{node.module}' is not allowed; only numpy and math may be imported",
            )
        ]
    for alias in node.names:
        if alias.name == "*":
            return [
                (column, f"'from {node.module} import *' is not allowed; import names one by one")
            ]
        if alias.name not in IMPORTABLE[node.module]:
            return [
                (
                    column,
                    f"import of '{alias.name}' from {node.module} is not allowed; "
                    "only the functions on testprio's allow-list may be imported",
                )
            ]
        problem = _identifier_problem(alias.asname, "the import alias")
        if problem:
            return [(column, problem)]
    return []


_NODE_CHECKS: dict[type, Callable[..., list[tuple]]] = {
    ast.Name: _check_name,
    ast.Attribute: _check_attribute,
    ast.FunctionDef: _check_function,
    ast.Call: _check_call,
    ast.arg: _check_arg,
    ast.keyword: _check_keyword,
    ast.Import: _check_import,
    ast.ImportFrom: _check_import_from,
}


def _op_problem(tree: ast.Module, name: str) -> str | None:
    """``op`` must be a top-level ``def`` taking exactly one positional parameter."""
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "op"]
    if not defs:
        return (
            f"custom op file {name} has no top-level 'def op(x)'; define op(x) taking a batch "
            "(N, ...) and returning a batch with the same N."
        )
    args = defs[-1].args
    positional = len(args.posonlyargs) + len(args.args)
    extra_keywords = len(args.kwonlyargs) - sum(d is not None for d in args.kw_defaults)
    if positional != 1 or args.vararg or args.kwarg or extra_keywords:
        return (
            f"custom op file {name} line {defs[-1].lineno}: op must take exactly one "
            "positional parameter, the batch x (no *args or **kwargs); write def op(x)."
        )
    return None


# --- restricted execution ----------------------------------------------------------------


class SandboxRefusal(Exception):
    """Op code tried something the runtime guard refuses; the text is one clause."""


# What the runtime guard refused during the current batch, kept even if op code or numpy
# swallowed the exception: the worker refuses the batch whenever this is not empty.
refusals: list[str] = []


def _refuse(problem: str):
    refusals.append(problem)
    raise SandboxRefusal(problem)


_NUMERIC_ONLY = "ops compute with numeric dtypes only"
# Arguments that can be neither a dtype nor a function: skipped without further checks (an
# isinstance check against np.dtype alone costs a microsecond, and lists hold millions).
_PLAIN_ARGUMENTS = frozenset({int, float, bool, complex, type(None), slice, range})


def _check_value(value, where: str) -> None:
    """Refuse an array, numpy scalar or dtype of object or void kind."""
    if type(value) in _PLAIN_ARGUMENTS:
        return
    if isinstance(value, (np.ndarray, np.generic)):
        dtype = value.dtype
    elif isinstance(value, np.dtype):
        dtype = value
    else:
        return
    kind = _refused_dtype_kind(dtype)
    if kind:
        _refuse(f"an array or dtype of {kind} ({dtype}) reached {where}; {_NUMERIC_ONLY}")


def _check_argument(value, where: str) -> None:
    """Refuse an argument that is, holds (one level down) or names an object or void dtype,
    and any function: numpy may not call back into op code or anything it was handed."""
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain_argument(item, where)
    _check_plain_argument(value, where)


# Whether a string or class names an object or void dtype, by the value: ops pass the same
# few dtype names ('float32', np.uint8) on every call.
_DTYPE_KIND_CACHE: dict = {}


def _cached_dtype_kind(value) -> str | None:
    key = (type(value), value)
    if key not in _DTYPE_KIND_CACHE:
        if len(_DTYPE_KIND_CACHE) > 4096:
            _DTYPE_KIND_CACHE.clear()
        _DTYPE_KIND_CACHE[key] = _dtype_kind(value)
    return _DTYPE_KIND_CACHE[key]


def _check_plain_argument(value, where: str) -> None:
    if type(value) in _PLAIN_ARGUMENTS:
        return
    if isinstance(value, (np.ndarray, np.generic, np.dtype)):
        _check_value(value, where)
    elif isinstance(value, (str, type, dict, list, tuple)):
        hashable = isinstance(value, (str, type))
        kind = _cached_dtype_kind(value) if hashable else _dtype_kind(value)
        if kind:
            shown = repr(value)[:40].replace(". ", ".")
            _refuse(f"the {kind} ({shown}) was given to {where}; {_NUMERIC_ONLY}")
    elif callable(value):
        _refuse(
            f"a function was given to {where}; numpy may not call back into the op, "
            "loop in the op instead"
        )


class _GuardedCallable:
    """A numpy function, method or math function as op code sees it: arguments and result
    pass the runtime guard."""

    __slots__ = ("_function", "_where")

    def __init__(self, function: Callable, where: str):
        self._function = function
        self._where = where

    def __call__(self, *args, **kwargs):
        for value in args:
            _check_argument(value, self._where)
        for value in kwargs.values():
            _check_argument(value, self._where)
        return _checked_result(self._function(*args, **kwargs), self._where)

    def __repr__(self) -> str:
        return f"<function {self._where}>"


class _GuardType(type):
    """A stand-in for a numpy class: ``isinstance`` works, calling goes through the guard."""

    def __instancecheck__(cls, instance) -> bool:
        return isinstance(instance, cls._testprio_real)

    def __subclasscheck__(cls, subclass) -> bool:
        return issubclass(subclass, cls._testprio_real)

    def __call__(cls, *args, **kwargs):
        return cls._testprio_construct(*args, **kwargs)


def _no_ndarray_constructor(*args, **kwargs):
    _refuse(
        "np.ndarray(...) cannot be called in a custom op because it builds arrays over raw "
        "memory; use np.array, np.zeros or np.empty"
    )


def _stand_in(real: type, construct: Callable) -> type:
    return _GuardType(real.__name__, (), {"_testprio_real": real, "_testprio_construct": construct})


def _numpy_member(name: str, value, where: str):
    """What op code gets for ``np.<name>``."""
    if name == "ndarray":
        return _stand_in(np.ndarray, _no_ndarray_constructor)
    if name == "dtype":
        return _stand_in(np.dtype, _GuardedCallable(np.dtype, where))
    if isinstance(value, type) and issubclass(value, np.generic):
        return value  # a numeric scalar type: numpy reads it as a dtype, calling it converts
    if callable(value):  # functions, ufuncs, finfo and iinfo
        return _GuardedCallable(value, where)
    return value  # constants: pi, e, inf, nan, newaxis, euler_gamma


def _proxy_module(name: str, module, names) -> types.ModuleType:
    proxy = types.ModuleType(name)
    for member in sorted(names):
        if hasattr(module, member):
            setattr(
                proxy, member, _numpy_member(member, getattr(module, member), f"{name}.{member}")
            )
    return proxy


def _numpy_proxy() -> types.ModuleType:
    """The numpy op code imports: allow-listed names only, each behind the runtime guard."""
    proxy = _proxy_module("np", np, NUMPY_NAMES - {"linalg", "fft"})
    proxy.__name__ = "numpy"
    proxy.linalg = _proxy_module("np.linalg", np.linalg, NUMPY_SUBMODULE_NAMES)
    proxy.fft = _proxy_module("np.fft", np.fft, NUMPY_SUBMODULE_NAMES)
    return proxy


NUMPY_PROXY = _numpy_proxy()
MATH_PROXY = _proxy_module("math", math, MATH_NAMES)
_PROXY_MODULES = (NUMPY_PROXY, NUMPY_PROXY.linalg, NUMPY_PROXY.fft, MATH_PROXY)
# Classes op code may hold: numpy's numeric scalar types and the stand-ins for np.ndarray
# and np.dtype. Any other class reached through an attribute or a result is refused.
_ALLOWED_CLASSES = frozenset(
    value for value in vars(NUMPY_PROXY).values() if isinstance(value, type)
) | {int, float, bool, complex, str}


def _checked_result(value, where: str):
    """A value op code receives from an attribute or a call, after the runtime guard."""
    if isinstance(value, (np.ndarray, np.generic, np.dtype)):
        _check_value(value, where)
    elif isinstance(value, (list, tuple)):  # np.split, np.linalg.svd, tolist()
        for item in value:
            _check_value(item, where)
    elif isinstance(value, types.ModuleType):
        if value not in _PROXY_MODULES:
            _refuse(f"the module {value.__name__} reached {where}; only numpy and math")
    elif isinstance(value, type):
        if value not in _ALLOWED_CLASSES:
            _refuse(f"the class {value.__name__} reached {where}; ops may not use classes")
    elif callable(value) and not isinstance(value, _GuardedCallable):
        return _GuardedCallable(value, where)
    return value


def guarded_attribute(value, attribute: str):
    """``value.attribute`` in op code: allow-listed names only, never on an object array."""
    if attribute.startswith("_") or attribute not in ALLOWED_ATTRIBUTES:
        _refuse(f"attribute '{attribute}' is not allowed in a custom op")
    _check_value(value, f"'.{attribute}'")
    return _checked_result(getattr(value, attribute), f".{attribute}")


_ATTRIBUTE_GUARD = "__testprio_attribute__"


class _GuardAttributes(ast.NodeTransformer):
    """Every ``a.b`` that op code reads becomes ``guarded_attribute(a, 'b')``."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load):
            raise SandboxRefusal(f"changing attribute '{node.attr}' is not allowed")
        guard = ast.Name(id=_ATTRIBUTE_GUARD, ctx=ast.Load())
        call = ast.Call(func=guard, args=[node.value, ast.Constant(node.attr)], keywords=[])
        return ast.copy_location(call, node)


_MODULES = {"numpy": NUMPY_PROXY, "math": MATH_PROXY}


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``__import__`` for op code: numpy (the guarded proxy) and math, and allow-listed
    names from them.

    C code that imports while op code runs (numpy's own ``PyImport_ImportModule`` of its
    internals) reaches this function too, with an empty ``fromlist``: a module that is
    already loaded is let through (no file is read, no code runs; the C caller takes the
    module from ``sys.modules`` and never sees what this returns). Anything else is refused.
    """
    top = name.partition(".")[0]
    if level == 0 and not fromlist and top in _MODULES and name in sys.modules:
        return _MODULES[top]
    if level == 0 and name in _MODULES and all(item in IMPORTABLE[name] for item in fromlist):
        return _MODULES[name]
    raise ImportError(f"import of {name!r} is not allowed here; only numpy and math")


SAFE_BUILTIN_NAMES = (
    "abs all any bool dict divmod enumerate filter float frozenset int isinstance iter len "
    "list map max min next pow print range reversed round set slice sorted str sum tuple zip "
    "ArithmeticError AssertionError Exception IndexError KeyError RuntimeError TypeError "
    "ValueError ZeroDivisionError True False None"
).split()
SAFE_BUILTINS = {name: getattr(__import__("builtins"), name) for name in SAFE_BUILTIN_NAMES}
SAFE_BUILTINS["__import__"] = _guarded_import
SAFE_BUILTINS[_ATTRIBUTE_GUARD] = guarded_attribute


def exec_restricted(source: str, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Run the module body with safe builtins and the runtime guard; return its ``op``.

    Does not check the source (``main`` checks it first). Tests call this directly to show
    that the restricted builtins, the guarded import and the runtime guard hold on their own.
    """
    tree = _GuardAttributes().visit(ast.parse(source, filename=name))
    code = compile(ast.fix_missing_locations(tree), name, "exec", dont_inherit=True)
    namespace = {"__builtins__": dict(SAFE_BUILTINS), "__name__": "custom_op"}
    exec(code, namespace)
    op = namespace.get("op")
    if not callable(op):
        raise TypeError("the module defines no callable op")
    return op


# --- resource limits ---------------------------------------------------------------------


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _lower(limit: int, value: int) -> None:
    """Set soft and hard of ``limit`` to ``value`` (never above the current hard limit)."""
    _soft, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, value))


def set_cpu_budget(cpu_seconds: float) -> None:
    """Allow ``cpu_seconds`` more CPU time from now (RLIMIT_CPU counts since the start).

    The hard limit stays where it is so the next batch can move the soft one again; the
    default action of SIGXCPU at the soft limit kills the worker, and op code cannot reach
    ``signal`` to change it. The parent's wall-clock limit is the backstop.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_seconds)
    _old_soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _open_fds() -> list[int]:
    """Open file descriptors, less the one that listing /proc/self/fd used."""
    listed = [int(fd) for fd in os.listdir("/proc/self/fd")]
    still_open = []
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        still_open.append(fd)
    return still_open


def apply_limits(cpu_seconds: float, memory_mb: int) -> None:
    """The worker's limits; call after importing numpy, before running any op code."""
    set_cpu_budget(cpu_seconds)
    _lower(resource.RLIMIT_AS, _address_space_bytes() + memory_mb * 2**20)
    _lower(resource.RLIMIT_FSIZE, 0)
    _lower(resource.RLIMIT_NPROC, 0)
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_NOFILE, max(_open_fds()) + 1)


# --- frames ------------------------------------------------------------------------------


def encode_array(array: np.ndarray) -> list:
    """``.npy`` bytes of ``array`` as a list of buffers (header, data: no copy of the data)."""
    if array.dtype.hasobject:
        raise ValueError(f"arrays of dtype {array.dtype} cannot be sent")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, np.lib.format.header_data_from_array_1_0(array))
    return [header.getvalue(), memoryview(array.reshape(-1).view(np.uint8))]


def decode_array(payload: bytearray) -> np.ndarray:
    """The array in a ``.npy`` payload, sharing its memory; never unpickles anything."""
    stream = io.BytesIO(memoryview(payload)[:65_536])
    version = np.lib.format.read_magic(stream)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise ValueError(f".npy version {version} is not accepted")
    shape, fortran_order, dtype = read_header(stream, max_header_size=10_000)
    if dtype.hasobject:
        raise ValueError(f"arrays of dtype {dtype} are not accepted")
    count = math.prod(shape)
    offset = stream.tell()
    if len(payload) - offset != count * dtype.itemsize:
        raise ValueError("the .npy payload's length does not match its header")
    flat = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def write_frame(fd: int, tag: bytes, parts: list) -> None:
    """One frame to a blocking file descriptor."""
    total = sum(len(memoryview(part).cast("B")) for part in parts)
    for part in [FRAME_HEADER.pack(tag, total), *parts]:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view) :]


class FrameTooLarge(Exception):
    """A frame's payload did not fit in memory; it was read past, the stream is in step."""


def read_frame(stream) -> tuple[bytes, bytearray] | None:
    """The next ``(tag, payload)`` from a blocking binary stream; None at end of input."""
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        return None
    tag, length = FRAME_HEADER.unpack(header)
    try:
        payload = bytearray(length)
    except MemoryError:
        while length > 0:  # skip it, so that the next frame is read from its start
            skipped = len(stream.read(min(length, 1 << 20)))
            if not skipped:
                return None
            length -= skipped
        raise FrameTooLarge from None
    view = memoryview(payload)
    filled = 0
    while filled < length:
        got = stream.readinto(view[filled:])
        if not got:
            return None
        filled += got
    return tag, payload


# --- the worker's main loop --------------------------------------------------------------


def _error(kind: str, detail: str, line: int | None = None) -> list:
    message = {"status": "error", "kind": kind, "detail": detail}
    if line is not None:
        message["line"] = line
    return [json.dumps(message).encode()]


def _raised(exc: BaseException, name: str) -> list:
    """An error frame for an exception from op code: its type, text and line in the file."""
    if isinstance(exc, MemoryError):
        return _error("memory", f"MemoryError: {str(exc)[:MAX_DETAIL_CHARS]}")
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    if isinstance(exc, SandboxRefusal) or refusals:
        return _refused(name, lines[-1] if lines else None, str(exc))
    text = str(exc)[:MAX_DETAIL_CHARS]
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return _error("raised", detail, lines[-1] if lines else None)


def _refused(name: str, line: int | None, fallback: str = "an operation was refused") -> list:
    """The refusal sentence for the first thing the runtime guard refused."""
    problem = (refusals or [fallback])[0][:MAX_DETAIL_CHARS]
    refusals.clear()
    at = f" line {line}" if line is not None else ""
    return _error("refused", f"custom op file {name}{at}: {problem}.")


def _run_batch(op: Callable, payload: bytearray, name: str) -> tuple[bytes, list]:
    refusals.clear()
    try:
        y = op(decode_array(payload))
    except BaseException as exc:  # anything op code does wrong is the user's to see
        return JSON_TAG, _raised(exc, name)
    if refusals:  # refused, and op code or numpy swallowed the exception
        return JSON_TAG, _refused(name, None)
    if not isinstance(y, np.ndarray):
        return JSON_TAG, _error("output", f"a {type(y).__name__} instead of a numpy array")
    try:
        return ARRAY_TAG, encode_array(y)
    except MemoryError as exc:
        return JSON_TAG, _error("memory", f"MemoryError: {str(exc)[:MAX_DETAIL_CHARS]}")
    except ValueError:
        return JSON_TAG, _error("output", f"an array of dtype {y.dtype}")


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
        write_frame(out_fd, JSON_TAG, _error("refused", problem))
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
            write_frame(out_fd, JSON_TAG, _error("memory", "the batch alone does not fit"))
            continue
        if frame is None:
            return 0
        set_cpu_budget(cpu_seconds)
        tag, parts = _run_batch(op, frame[1], name)
        del frame
        write_frame(out_fd, tag, parts)


if __name__ == "__main__":
    sys.exit(main())
