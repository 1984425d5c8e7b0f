"""The source check of custom op files, run by both processes, and its allow-lists.

Layer 1 of the sandbox (the threat model and every layer are in
``testprio.ingest.sandbox_worker``'s docstring): ``source_problem`` refuses, with one sentence
naming the line, any op file that uses more than the allow-listed numpy and math names, or
builds arrays over raw memory, or names object or void dtypes. The allow-lists here
(``ALLOWED_ATTRIBUTES``, ``IMPORTABLE``...) are also what the runtime guard
(``sandbox_guard``) lets op code reach.

The worker process loads this module by file, without testprio (see ``sandbox_worker``): it
imports only the standard library and numpy.
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable

import numpy as np

MAX_SOURCE_BYTES = 1_000_000

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
            kind = dtype_kind(node.value)
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


def dtype_kind(spec) -> str | None:
    """'object dtype' or 'void dtype' when numpy reads ``spec`` as one, else None."""
    if isinstance(spec, str) and len(spec) > 64:
        return None  # data or a message, not a dtype name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.dtype(spec)
    except Exception:  # not a dtype at all: numpy raises TypeError, ValueError, KeyError...
        return None
    return refused_dtype_kind(dtype)


def refused_dtype_kind(dtype: np.dtype) -> str | None:
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
