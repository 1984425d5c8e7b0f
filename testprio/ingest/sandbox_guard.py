"""How op code is held in the worker: restricted execution, the runtime guard, the limits.

Layers 2 to 4 of the sandbox (the threat model and every layer are in
``testprio.ingest.sandbox_worker``'s docstring): ``exec_restricted`` runs an op file with
safe builtins and a guarded ``__import__``; every attribute op code reads and every numpy or
math function it calls passes the runtime guard (``guarded_attribute``,
``_GuardedCallable``, ``NUMPY_PROXY``), which records each refusal in ``refusals``;
``apply_limits`` and ``set_cpu_budget`` set the worker's resource limits.

The worker process loads this module by file, without testprio (see ``sandbox_worker``): it
imports only the standard library, numpy and, by a relative import, ``sandbox_check``.
Everything it needs is imported here at load time, before the limits forbid opening files.
"""

from __future__ import annotations

import ast
import math
import os
import resource
import sys
import types
from collections.abc import Callable

import numpy as np

# numpy imports these lazily (np.fft on first use, numpy.ma inside np.median): import them
# now, because under RLIMIT_NOFILE the worker cannot open a module file later.
import numpy.fft  # noqa: F401
import numpy.linalg  # noqa: F401
import numpy.ma  # noqa: F401

# Relative, never testprio.ingest: the worker loads its folder as a package of its own.
from .sandbox_check import (
    ALLOWED_ATTRIBUTES,
    IMPORTABLE,
    MATH_NAMES,
    NUMPY_NAMES,
    NUMPY_SUBMODULE_NAMES,
    dtype_kind,
    refused_dtype_kind,
)

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
    kind = refused_dtype_kind(dtype)
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
        _DTYPE_KIND_CACHE[key] = dtype_kind(value)
    return _DTYPE_KIND_CACHE[key]


def _check_plain_argument(value, where: str) -> None:
    if type(value) in _PLAIN_ARGUMENTS:
        return
    if isinstance(value, (np.ndarray, np.generic, np.dtype)):
        _check_value(value, where)
    elif isinstance(value, (str, type, dict, list, tuple)):
        hashable = isinstance(value, (str, type))
        kind = _cached_dtype_kind(value) if hashable else dtype_kind(value)
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
