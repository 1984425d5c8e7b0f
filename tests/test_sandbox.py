"""Custom ops: the source check against known escapes, the restricted worker, the limits.

Every escape in ``ESCAPES`` carries ``# <-`` on the line the check must name. A subset is run
again with the check bypassed, to show that the restricted builtins, the guarded import and
the worker's own check each hold on their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import psutil
import pytest

from testprio.errors import TestprioError
from testprio.ingest import sandbox, sandbox_worker
from testprio.ingest.sandbox import CustomOp, check_source

# (id, source with "# <-" on the offending line, what the sentence must name)
ESCAPES = [
    ("dunder-import", "def op(x):\n    __import__('os').system('id')  # <-", "'__import__'"),
    ("import-os", "import os  # <-\n\ndef op(x):\n    return x", "import of 'os'"),
    (
        "from-subprocess",
        "import numpy as np\nfrom subprocess import run  # <-\n\ndef op(x):\n    return x",
        "import from 'subprocess'",
    ),
    (
        "subclasses-walk",
        "def op(x):\n    y = 1\n    ().__class__.__bases__[0].__subclasses__()  # <-",
        "'__class__'",
    ),
    ("eval", "def op(x):\n    return eval('x + 1')  # <-", "use of 'eval'"),
    ("exec", "def op(x):\n    exec('import os')  # <-", "use of 'exec'"),
    ("compile", "def op(x):\n    compile('1', 'f', 'eval')  # <-", "use of 'compile'"),
    ("open", "def op(x):\n    open('/etc/passwd').read()  # <-", "use of 'open'"),
    (
        "getattr-ctypeslib",
        "import numpy as np\n\ndef op(x):\n    getattr(np, 'ctypeslib')  # <-",
        "use of 'getattr'",
    ),
    (
        "np-ctypeslib",
        "import numpy as np\n\ndef op(x):\n    return np.ctypeslib.as_array(x)  # <-",
        "attribute 'ctypeslib'",
    ),
    (
        "import-numpy-submodule",
        "import numpy.ctypeslib  # <-\n\ndef op(x):\n    return x",
        "import of 'numpy.ctypeslib'",
    ),
    (
        "from-numpy-import-ctypeslib",
        "from numpy import ctypeslib  # <-\n\ndef op(x):\n    return x",
        "import of 'ctypeslib' from numpy",
    ),
    (
        "from-numpy-lib",
        "from numpy.lib import format  # <-\n\ndef op(x):\n    return x",
        "import from 'numpy.lib'",
    ),
    (
        "np-load-pickle",
        "import numpy as np\n\ndef op(x):\n    return np.load('x.npy', allow_pickle=True)  # <-",
        "attribute 'load'",
    ),
    ("tofile", "def op(x):\n    x.tofile('/tmp/out')  # <-\n    return x", "attribute 'tofile'"),
    ("dump", "def op(x):\n    x.dump('/tmp/out')  # <-\n    return x", "attribute 'dump'"),
    (
        "np-save",
        "import numpy as np\n\ndef op(x):\n    np.save('/tmp/out.npy', x)  # <-",
        "attribute 'save'",
    ),
    (
        "np-fromfile",
        "import numpy as np\n\ndef op(x):\n    return np.fromfile('/etc/passwd')  # <-",
        "attribute 'fromfile'",
    ),
    (
        "open-memmap",
        "import numpy as np\n\ndef op(x):\n    np.lib.format.open_memmap('/tmp/m.npy', 'w+')  # <-",
        "attribute 'lib'",
    ),
    (
        "np-memmap",
        "import numpy as np\n\ndef op(x):\n    np.memmap('/tmp/m', mode='w+', shape=(1,))  # <-",
        "attribute 'memmap'",
    ),
    (
        "np-loadtxt",
        "import numpy as np\n\ndef op(x):\n    np.loadtxt('/etc/passwd')  # <-",
        "attribute 'loadtxt'",
    ),
    (
        "np-savetxt",
        "import numpy as np\n\ndef op(x):\n    np.savetxt('/tmp/out.txt', x)  # <-",
        "attribute 'savetxt'",
    ),
    (
        "np-datasource",
        "import numpy as np\n\ndef op(x):\n    np.DataSource().open('http://evil')  # <-",
        "attribute 'DataSource'",
    ),
    (
        "np-frombuffer",
        "import numpy as np\n\ndef op(x):\n    return np.frombuffer(b'1234')  # <-",
        "attribute 'frombuffer'",
    ),
    (
        "globals-builtins",
        "def op(x):\n    globals()['__builtins__']['open']  # <-",
        "use of 'globals'",
    ),
    (
        "str-format-dunder",
        "def op(x):\n    s = 1\n    '{0.__class__}'.format(x)  # <-",
        "attribute 'format'",
    ),
    ("lambda-code", "def op(x):\n    (lambda: 0).__code__  # <-", "attribute '__code__'"),
    ("ctypes-data", "def op(x):\n    return x.ctypes.data  # <-", "attribute 'ctypes'"),
    ("import-importlib", "import importlib  # <-\n\ndef op(x):\n    return x", "'importlib'"),
    ("import-builtins", "import builtins  # <-\n\ndef op(x):\n    return x", "'builtins'"),
    ("import-ctypes", "def op(x):\n    import ctypes  # <-\n    return x", "'ctypes'"),
    ("vars", "import numpy as np\n\ndef op(x):\n    vars(np)  # <-", "use of 'vars'"),
    ("np-dict", "import numpy as np\n\ndef op(x):\n    np.__dict__  # <-", "'__dict__'"),
    ("breakpoint", "def op(x):\n    breakpoint()  # <-", "use of 'breakpoint'"),
    (
        "metaclass",
        "class Meta(type):  # <-\n    pass\n\ndef op(x):\n    return x",
        "a class definition",
    ),
    ("type-mro", "def op(x):\n    type(x).mro()  # <-", "use of 'type'"),
    ("fstring-dunder", "def op(x):\n    f'{x.__class__}'  # <-", "attribute '__class__'"),
    (
        "fstring-format-spec",
        "def op(x):\n    f'{x:{x.__class__}}'  # <-",
        "attribute '__class__'",
    ),
    (
        "decorator",
        "import numpy as np\n\n@getattr(np, 'load')  # <-\ndef op(x):\n    return x",
        "a decorator",
    ),
    ("sys-modules", "def op(x):\n    sys.modules['os']  # <-", "attribute 'modules'"),
    (
        "generator-frame",
        "def op(x):\n    (v for v in ()).gi_frame.f_back.f_globals  # <-",
        "attribute 'gi_frame'",
    ),
    (
        "exception-traceback",
        "def op(x):\n    ValueError('x').with_traceback(None)  # <-",
        "attribute 'with_traceback'",
    ),
    (
        "dtype-type",
        "import numpy as np\n\ndef op(x):\n    np.dtype('f4').type  # <-",
        "attribute 'type'",
    ),
    (
        "np-random",
        "import numpy as np\n\ndef op(x):\n    return x + np.random.rand()  # <-",
        "attribute 'random'",
    ),
    ("star-import", "from math import *  # <-\n\ndef op(x):\n    return x", "import *"),
    ("relative-import", "from . import helper  # <-\n\ndef op(x):\n    return x", "relative"),
    (
        "try-swallows-limits",
        "def op(x):\n    try:  # <-\n        return x\n    except MemoryError:\n        return x",
        "a try statement",
    ),
    (
        "with-open",
        "def op(x):\n    with open('/tmp/out', 'w') as f:  # <-\n        pass",
        "a with statement",
    ),
    ("global", "def op(x):\n    global np  # <-\n    return x", "a global statement"),
    (
        "match-class-pattern",
        "def op(x):\n    match x:  # <-\n        case object(__class__=c):\n            pass",
        "a match statement",
    ),
    ("attribute-store", "def op(x):\n    x.shape = (1,)  # <-\n    return x", "changing"),
    ("attribute-delete", "def op(x):\n    del x.shape  # <-\n    return x", "changing"),
    ("setflags", "def op(x):\n    x.setflags(write=True)  # <-", "attribute 'setflags'"),
    ("array-base", "def op(x):\n    return x.base  # <-", "attribute 'base'"),
    ("array-data", "def op(x):\n    return x.data  # <-", "attribute 'data'"),
    ("array-interface", "def op(x):\n    x.__array_interface__  # <-", "'__array_interface__'"),
    ("view", "import numpy as np\n\ndef op(x):\n    x.view(np.int64)  # <-", "attribute 'view'"),
    ("np-core", "import numpy as np\n\ndef op(x):\n    np.core.multiarray  # <-", "'core'"),
    ("np-f2py", "import numpy as np\n\ndef op(x):\n    np.f2py.compile('')  # <-", "'f2py'"),
    ("np-testing", "import numpy as np\n\ndef op(x):\n    np.testing  # <-", "'testing'"),
    (
        "np-show-config",
        "import numpy as np\n\ndef op(x):\n    np.show_config()  # <-",
        "'show_config'",
    ),
    ("np-info", "import numpy as np\n\ndef op(x):\n    np.info(np)  # <-", "attribute 'info'"),
    ("input", "def op(x):\n    input()  # <-", "use of 'input'"),
    ("help", "def op(x):\n    help(x)  # <-", "use of 'help'"),
    ("exit", "def op(x):\n    exit(1)  # <-", "use of 'exit'"),
    ("memoryview", "def op(x):\n    memoryview(x)  # <-", "use of 'memoryview'"),
    ("object-subclasses", "def op(x):\n    object.mro()  # <-", "use of 'object'"),
    ("super", "def op(x):\n    super()  # <-", "use of 'super'"),
    ("async", "async def op(x):  # <-\n    return x", "an async function"),
    ("generator-op", "def op(x):\n    yield x  # <-", "yield"),
    ("underscore-name", "def op(x):\n    _ = 1  # <-\n    return x", "names starting with '_'"),
    (
        "builtins-parameter",
        "def op(x, __builtins__=None):  # <-\n    return x",
        "the parameter '__builtins__'",
    ),
    ("percent-format-dunder", "def op(x):\n    '%s' % x.__class__  # <-", "'__class__'"),
    ("shadow-alias", "import numpy as eval  # <-\n\ndef op(x):\n    return x", "'eval'"),
]

# The reported escape and its family: arrays over raw memory, object and void dtypes, and
# numpy entry points that reinterpret memory or call back into Python.
_NP = "import numpy as np\n\n\ndef op(x):\n"
RAW_MEMORY_ESCAPES = [
    (
        "reported-ndarray-object-buffer",
        _NP + "    cell = np.zeros((1,), np.int64)\n"
        "    view = np.ndarray((1,), np.dtype('O'), buffer=cell)  # <-\n    return x",
        "calling np.ndarray(...)",
    ),
    (
        "ndarray-numeric-buffer",
        _NP + "    return np.ndarray((4,), np.uint8, buffer=x)  # <-",
        "calling np.ndarray(...)",
    ),
    (
        "ndarray-strides",
        _NP + "    return np.ndarray((2,), np.int64, x, 0, (1 << 40,))  # <-",
        "calling np.ndarray(...)",
    ),
    (
        "ndarray-imported-by-name",
        "from numpy import ndarray\n\n\ndef op(x):\n    return ndarray((1,), 'f8', x)  # <-",
        "calling np.ndarray(...)",
    ),
    (
        "buffer-keyword",
        _NP + "    return np.asarray(x).reshape(1, buffer=x)  # <-",
        "the keyword argument 'buffer='",
    ),
    (
        "strides-keyword",
        _NP + "    return np.asarray(x, strides=(0,))  # <-",
        "the keyword argument 'strides='",
    ),
    ("dtype-O", _NP + "    np.dtype('O')  # <-\n    return x", "the dtype 'O'"),
    ("dtype-object", _NP + "    return np.zeros(3, dtype='object')  # <-", "the dtype 'object'"),
    ("dtype-pipe-O", _NP + "    return np.array([1], '|O')  # <-", "the dtype '|O'"),
    ("astype-O", _NP + "    return x.astype('O')  # <-", "the dtype 'O'"),
    ("astype-list", _NP + "    return x.astype(list)  # <-", "the dtype list"),
    ("dtype-keyword-dict", _NP + "    return np.zeros(3, dtype=dict)  # <-", "the dtype dict"),
    ("dtype-call-tuple", _NP + "    np.dtype(tuple)  # <-\n    return x", "the dtype tuple"),
    ("void", _NP + "    return np.zeros(3, 'V8')  # <-", "the dtype 'V8'"),
    (
        "structured-object",
        _NP + "    return np.zeros(3, dtype=[('p', 'O')])  # <-",
        "the dtype 'O'",
    ),
    (
        "structured-dict-object",
        _NP + "    return np.zeros(3, {'names': ['p'], 'formats': ['O']})  # <-",
        "the dtype 'O'",
    ),
    ("object-scalar-type", _NP + "    return x.astype(np.object_)  # <-", "attribute 'object_'"),
    ("void-type", _NP + "    return x.astype(np.void)  # <-", "attribute 'void'"),
    (
        "as-strided",
        _NP + "    return np.lib.stride_tricks.as_strided(x, strides=(0,))  # <-",
        "attribute 'lib'",
    ),
    (
        "import-stride-tricks",
        "from numpy.lib.stride_tricks import as_strided  # <-\n\ndef op(x):\n    return x",
        "import from 'numpy.lib.stride_tricks'",
    ),
    ("recarray", _NP + "    return np.recarray((1,), [('a', 'f8')])  # <-", "'recarray'"),
    ("np-rec", _NP + "    return np.rec.fromarrays([x])  # <-", "attribute 'rec'"),
    ("np-char", _NP + "    return np.char.add(x, x)  # <-", "attribute 'char'"),
    ("frompyfunc", _NP + "    np.frompyfunc(print, 1, 1)(x)  # <-", "attribute 'frompyfunc'"),
    ("vectorize", _NP + "    np.vectorize(print)(x)  # <-", "attribute 'vectorize'"),
    ("fromiter", _NP + "    return np.fromiter(x, 'O')  # <-", "attribute 'fromiter'"),
    ("fromfunction", _NP + "    return np.fromfunction(print, (2,))  # <-", "'fromfunction'"),
    (
        "apply-along-axis",
        _NP + "    return np.apply_along_axis(print, 0, x)  # <-",
        "'apply_along_axis'",
    ),
    ("piecewise", _NP + "    return np.piecewise(x, [x > 0], [print])  # <-", "'piecewise'"),
    ("np-load-allow-pickle", _NP + "    np.load('a', allow_pickle=True)  # <-", "'load'"),
    ("ctypeslib", _NP + "    return np.ctypeslib.as_array(x)  # <-", "'ctypeslib'"),
    ("array-ctypes", _NP + "    return x.ctypes  # <-", "attribute 'ctypes'"),
    ("array-interface-dunder", _NP + "    x.__array_interface__  # <-", "'__array_interface__'"),
    ("view-as-object", _NP + "    return x.view('O')  # <-", "attribute 'view'"),
    ("tobytes", _NP + "    return x.tobytes()  # <-", "attribute 'tobytes'"),
    (
        "decorator-array",
        "import numpy as np\n\n\n@np.array  # <-\ndef op(x):\n    return x",
        "a decorator",
    ),
]
ESCAPES += RAW_MEMORY_ESCAPES


def _line_of_marker(source: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if line.endswith("# <-"))


def test_corpus_is_large():
    assert len(ESCAPES) >= 20
    assert len({entry[0] for entry in ESCAPES}) == len(ESCAPES)


@pytest.mark.parametrize(
    ("source", "construct"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES]
)
def test_check_source_refuses_escape(source, construct):
    line = _line_of_marker(source)
    with pytest.raises(TestprioError) as caught:
        check_source(source, "evil.py")
    message = str(caught.value)
    assert message.startswith(f"custom op file evil.py line {line}: "), message
    assert construct in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


# Module-level payloads run with the source check bypassed: each is stopped by the
# restricted builtins or the guarded import alone. Harmless if they ever got through.
RESTRICTED_ESCAPES = [
    ("__import__('os').getpid()", ImportError),
    ("import os", ImportError),
    ("import importlib", ImportError),
    ("from subprocess import run", ImportError),
    ("from numpy.ctypeslib import load_library", ImportError),
    ("from numpy.lib import format", ImportError),
    ("import numpy.distutils", ImportError),  # not loaded: importing it would run code
    ("from numpy import ctypeslib", ImportError),
    ("from numpy import load", ImportError),
    ("from . import helper", ImportError),
    ("open('/etc/hostname').read()", NameError),
    ("eval('1')", NameError),
    ("exec('1')", NameError),
    ("compile('1', 'f', 'eval')", NameError),
    ("getattr(1, 'real')", NameError),
    ("globals()", NameError),
    ("vars()", NameError),
    ("breakpoint()", NameError),
    ("input()", NameError),
    ("type(1)", NameError),
    ("memoryview(b'1')", NameError),
    ("class Meta:\n    pass", NameError),
    ("__builtins__['open']", KeyError),
]


@pytest.mark.parametrize(("payload", "error"), RESTRICTED_ESCAPES)
def test_restricted_execution_holds_without_the_check(payload, error):
    source = f"import numpy as np\n{payload}\n\ndef op(x):\n    return x\n"
    with pytest.raises(error):
        sandbox_worker.exec_restricted(source, "evil.py")


# Op bodies that get past a source check by computing what it looks for ('%c' % 79 is 'O',
# list resolves to the object dtype): the worker's runtime guard alone refuses each one.
# (id, op body, what the refusal names)
RUNTIME_ESCAPES = [
    (
        "reported-ndarray-object-buffer",
        "cell = np.zeros((1,), np.int64)\n    np.ndarray((1,), np.dtype('%c' % 79), buffer=cell)",
        "the object dtype ('O') was given to np.dtype",
    ),
    (
        "ndarray-numeric-buffer",
        "cell = np.zeros((1,), np.int64)\n    np.ndarray((8,), np.uint8, buffer=cell)",
        "np.ndarray(...) cannot be called",
    ),
    ("dtype-computed-O", "np.dtype('%c' % 79)", "object dtype"),
    ("astype-computed-O", "x.astype('%c' % 79)", "object dtype"),
    ("astype-list", "x.astype([list][0])", "object dtype"),
    ("zeros-dict", "np.zeros(2, dtype=[dict][0])", "object dtype"),
    ("structured", "np.zeros(2, {'names': ['p'], 'formats': ['%c' % 79]})", "object dtype"),
    ("structured-numeric", "np.dtype([('a', np.float32)])", "void dtype"),
    ("void", "np.zeros(2, 'V' + '8')", "void dtype"),
    ("array-of-functions", "np.array([np.sum])", "a function was given to np.array"),
    ("nested-array-of-functions", "np.array([[np.sum]])", "object dtype (object) reached"),
    ("full-of-print", "np.full(2, [print][0])", "a function"),
    ("pad-with-callable", "np.pad(x, 1, mode=lambda *a: None)", "a function"),
    ("map-bound-method", "list(map(x.astype, [list]))", "object dtype"),
    ("result-type", "np.result_type('%c' % 79)", "object dtype"),
    ("operator-object-array", "o = np.arange(2) + [2 ** 70, 1]\n    o.tolist()", "object dtype"),
    ("object-array-argument", "o = np.arange(2) + [2 ** 70, 1]\n    np.copy(o)", "object dtype"),
    ("object-array-in-list", "o = np.arange(2) + [2 ** 70, 1]\n    np.stack([o])", "object dtype"),
    (
        "ndarray-by-name",
        "f = [np.ndarray][0]\n    f((1,), 'f8', x)",
        "np.ndarray(...) cannot be called",
    ),
    ("frombuffer-by-attribute", "np.frombuffer", "attribute 'frombuffer'"),
    (
        "math-with-object-array",
        "import math\n    o = np.arange(2) + [2 ** 70, 1]\n    math.prod([o])",
        "object dtype (object) reached math.prod",
    ),
    ("math-calls-back", "from math import prod\n    prod([1], start=print)", "a function"),
    ("dunder-attribute", "x.__array_interface__", "attribute '__array_interface__'"),
]


@pytest.mark.parametrize(
    ("body", "names"), [e[1:] for e in RUNTIME_ESCAPES], ids=[e[0] for e in RUNTIME_ESCAPES]
)
def test_runtime_guard_holds_without_the_check(body, names):
    op = sandbox_worker.exec_restricted(f"import numpy as np\n\n\ndef op(x):\n    {body}\n", "e.py")
    with pytest.raises(sandbox_worker.SandboxRefusal, match=re.escape(names)):
        op(np.ones((2, 2), np.float32))


def test_runtime_guard_keeps_isinstance_and_numeric_dtypes():
    op = sandbox_worker.exec_restricted(
        textwrap.dedent(
            """
            import numpy as np
            from numpy import dtype, ndarray


            def op(x):
                assert isinstance(x, np.ndarray) and isinstance(x, ndarray)
                assert isinstance(x.dtype, dtype) and not isinstance(1, np.ndarray)
                y = x.astype(dtype('float32')).astype(float) + np.zeros(1, dtype='f4')
                return np.stack([y.astype(np.float16), np.asarray(y, 'u1')], axis=1)
            """
        ),
        "ops.py",
    )
    y = op(np.arange(6, dtype=np.int64).reshape(3, 2))
    assert y.dtype == np.float16 and y.shape == (3, 2, 2)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (
            "y = x + 1\n    return y.astype('%c' % 79)",
            "the object dtype ('O') was given to .astype",
        ),
        (
            "y = x + 1\n    return np.zeros(2, {'names': ['p'], 'formats': ['%c' % 79]})",
            "the object dtype ({'names'",
        ),
        ("y = x + 1\n    return np.zeros(2, 'i4,' + 'i4')", "the void dtype ('i4,i4')"),
        ("y = x + 1\n    return np.array([[np.sum]])", "object dtype (object) reached np.array"),
    ],
    ids=["astype", "structured-dict", "comma-string", "result"],
)
def test_a_refusal_in_the_worker_is_one_sentence_with_the_line(body, names):
    """Under the worker's limits too (nothing numpy parses a dtype with is loaded lazily)."""
    with _op(body) as op:
        with pytest.raises(TestprioError) as caught:
            op.apply(np.ones((2, 2)))
        assert psutil.pid_exists(op.pid)  # a refusal is an error of the op, not of the worker
    message = str(caught.value)
    assert message.startswith("custom op file ops.py line 6: "), message
    assert names in message and message.endswith(".") and ". " not in message


def test_a_swallowed_refusal_still_refuses_the_batch():
    """The refusal is recorded before it is raised: catching it does not get a batch out."""

    def op(x):
        try:
            sandbox_worker.guarded_attribute(x, "view")
        except sandbox_worker.SandboxRefusal:
            pass
        return x

    payload = bytearray(b"".join(bytes(p) for p in sandbox_worker.encode_array(np.ones((2,)))))
    tag, parts = sandbox_worker._run_batch(op, payload, "ops.py")
    reply = json.loads(b"".join(parts))
    assert tag == sandbox_worker.JSON_TAG and reply["kind"] == "refused"
    assert (
        reply["detail"] == "custom op file ops.py: attribute 'view' is not allowed in a custom op."
    )
    assert not sandbox_worker.refusals


def test_attribute_changes_are_refused_without_the_check():
    with pytest.raises(sandbox_worker.SandboxRefusal, match="changing attribute 'shape'"):
        sandbox_worker.exec_restricted("def op(x):\n    x.shape = (1,)\n    return x\n", "e.py")


def test_the_numpy_stand_ins_hand_out_nothing_real():
    """No allow-listed attribute of np.ndarray or np.dtype as op code sees them leads back to
    the real classes (np.ndarray.real on a plain class attribute would)."""
    proxy = sandbox_worker.NUMPY_PROXY
    for attribute in sorted(sandbox_worker.ALLOWED_ATTRIBUTES):
        for stand_in in (proxy.ndarray, proxy.dtype):
            try:
                value = sandbox_worker.guarded_attribute(stand_in, attribute)
            except (AttributeError, sandbox_worker.SandboxRefusal):
                continue
            assert isinstance(value, sandbox_worker._GuardedCallable), (attribute, value)


def test_the_numpy_proxy_holds_only_allow_listed_names():
    proxy = sandbox_worker.NUMPY_PROXY
    public = {name for name in vars(proxy) if not name.startswith("_")}
    assert public == set(sandbox_worker.NUMPY_NAMES)
    for name in public - {"linalg", "fft"}:
        value = getattr(proxy, name)
        assert not isinstance(value, types.ModuleType)
        if callable(value) and not isinstance(value, type):
            assert isinstance(value, sandbox_worker._GuardedCallable), name


ESCAPE_FILE = pathlib.Path(__file__).parent / "sandbox_escapes" / "forged_pointer_exec.py"
# Runs the escape with the source check skipped: the restricted builtins, the runtime guard
# and the resource limits are all that stand in its way.
UNCHECKED_RUNNER = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("sandbox_worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
with open(sys.argv[2]) as handle:
    source = handle.read()
worker.apply_limits(10, 512)
try:
    worker.exec_restricted(source, "evil.py")(np.ones((2, 2)))
    print("ran")
except BaseException as exc:
    print(type(exc).__name__, exc)
"""


def _run_checked(path, tmp_path):
    with pytest.raises(TestprioError, match=r"custom op file evil\.py line \d+: calling np\.nd"):
        with CustomOp(path.read_text(), "evil.py", cpu_seconds=10, memory_mb=512) as op:
            op.apply(np.ones((2, 2)))


def _run_unchecked(path, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-I", "-c", UNCHECKED_RUNNER, sandbox.WORKER_PATH, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.startswith("SandboxRefusal np.ndarray(...) cannot be called"), (
        completed.stdout + completed.stderr[-2000:]
    )


@pytest.mark.parametrize("run", [_run_checked, _run_unchecked], ids=["custom-op", "unchecked"])
def test_the_reported_escape_leaves_no_trace(run, tmp_path):
    """It cannot read the parent's environment, create a file or open a socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    source = ESCAPE_FILE.read_text().replace("@TARGET@", str(tmp_path))
    source = source.replace("PORT = 0  # @PORT@", f"PORT = {port}")
    evil = tmp_path / "evil.py"
    evil.write_text(source)
    with listener:
        run(evil, tmp_path)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.py"]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("import numpy as np\n\ndef op(x):\n    ().__class__.__bases__[0]\n", 4),
        ("import numpy as np\n\ndef op(x):\n    return np.ctypeslib.as_array(x)\n", 4),
        ("def op(x):\n    return x\n\nopen('/etc/hostname')\n", 4),
    ],
    ids=["subclasses-walk", "np-ctypeslib", "open"],
)
def test_worker_checks_the_source_again(source, line):
    """A parent that skipped check_source still gets the worker's own refusal."""
    with pytest.raises(TestprioError, match=rf"custom op file evil\.py line {line}: "):
        sandbox._WorkerProcess(source, "evil.py", cpu_seconds=5, memory_mb=256, batch_timeout_s=20)


def test_allow_lists_hold_no_io_and_no_modules_but_linalg_and_fft():
    for name in sandbox_worker.NUMPY_NAMES:
        assert hasattr(np, name), name  # a typo would silently refuse a harmless function
    for name in sandbox_worker.NUMPY_SUBMODULE_NAMES:
        assert hasattr(np.linalg, name) or hasattr(np.fft, name), name
    modules = {
        name
        for name in sandbox_worker.NUMPY_NAMES
        if isinstance(getattr(np, name), types.ModuleType)
    }
    assert modules == {"linalg", "fft"}
    refused = """load save savez savez_compressed fromfile tofile memmap loadtxt savetxt
        genfromtxt fromregex frombuffer fromstring ctypeslib lib DataSource get_include
        show_config info source f2py distutils testing random set_printoptions seterr
        format dump dumps ctypes data base setflags view tobytes resize core char rec
        gi_frame f_globals f_back f_builtins tb_frame with_traceback mro type modules""".split()
    assert not set(refused) & sandbox_worker.ALLOWED_ATTRIBUTES


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("import numpy as np\n", "has no top-level 'def op\\(x\\)'"),
        ("def op(x, y):\n    return x\n", "line 1: op must take exactly one positional"),
        ("def op(*xs):\n    return xs\n", "line 1: op must take exactly one positional"),
        ("def op(x):\n    return x +\n", "line 2: syntax error"),
        ("def op(x):\n    return x\n" + "#" * sandbox_worker.MAX_SOURCE_BYTES, "larger than"),
    ],
)
def test_check_source_refuses_a_file_without_a_usable_op(source, match):
    with pytest.raises(TestprioError, match=match):
        check_source(source, "ops.py")


# --- running allowed ops -----------------------------------------------------------------

ALLOWED_OP = textwrap.dedent(
    """
    import math

    import numpy as np
    from numpy import clip

    SCALE = 2.0


    def centre(x):
        flat = x.reshape(x.shape[0], -1).astype(np.float32)
        return flat - flat.mean(axis=1, keepdims=True)


    def op(x: np.ndarray) -> np.ndarray:
        assert isinstance(x, np.ndarray)
        y = clip(x * SCALE / 255.0, 0, 1) * math.sqrt(4.0)
        spectrum = np.abs(np.fft.rfft(centre(x), axis=1))
        norms = np.linalg.norm(spectrum, axis=1, keepdims=True)
        q = np.percentile(y.reshape(len(y), -1), 90, axis=1)
        padded = np.pad(y, [(0, 0)] + [(1, 1)] * (y.ndim - 1))
        features = [padded.sum(axis=tuple(range(1, padded.ndim))), q, norms[:, 0]]
        features.append(np.einsum("ij->i", centre(x) ** 2))
        print("op ran on", x.shape)  # goes to the worker's stderr, not into the frames
        return np.stack([np.float32(f) for f in features], axis=1)
    """
)


def _reference(source: str, x: np.ndarray) -> np.ndarray:
    """The same source run in-process with nothing restricted: the oracle."""
    namespace: dict = {}
    exec(compile(source, "ops.py", "exec"), namespace)
    return namespace["op"](x)


@pytest.fixture
def allowed_op():
    with CustomOp(ALLOWED_OP, "ops.py", cpu_seconds=10, memory_mb=512) as op:
        yield op


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_allowed_op_matches_numpy_over_several_batches(allowed_op, dtype):
    rng = np.random.default_rng(0)
    pids = set()
    for n in (5, 1, 7):
        x = (rng.random((n, 3, 4, 4)) * 255).astype(dtype)
        y = allowed_op.apply(x)
        np.testing.assert_allclose(y, _reference(ALLOWED_OP, x), rtol=1e-6)
        assert y.shape == (n, 4) and y.dtype == np.float32
        pids.add(allowed_op.pid)
    assert len(pids) == 1  # one worker served every batch


def test_sharded_equals_whole(allowed_op):
    x = np.random.default_rng(1).random((9, 2, 3, 3)).astype(np.float32)
    whole = allowed_op.apply(x)
    parts = [allowed_op.apply(x[a:b]) for a, b in ((0, 4), (4, 5), (5, 9))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(allowed_op.apply(x), whole)  # deterministic


def test_record_and_op_protocol():
    source = "def op(x):\n    return x\n"
    op = CustomOp(source, "ops.py", cpu_seconds=7, memory_mb=300)
    assert op.record() == {
        "op": "custom",
        "file": "ops.py",
        "sha256": hashlib.sha256(source.encode()).hexdigest(),
        "source": source,
        "cpu_seconds": 7,
        "memory_mb": 300,
    }
    assert op.name == "custom" and CustomOp.per_sample_safe is False and op.needs_fit is False
    op.fit([np.zeros((1, 1))])
    assert op.pid is None  # the worker starts on the first apply
    op.close()
    op.close()


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({"cpu_seconds": 0}, "--custom-op-cpu-seconds 0 must be positive"),
        ({"memory_mb": 8}, "--custom-op-memory-mb 8 must be at least 16"),
        ({"batch_timeout_s": -1}, "--custom-op-batch-timeout-s -1 must be positive"),
    ],
)
def test_limits_are_checked(limits, match):
    with pytest.raises(TestprioError, match=match):
        CustomOp("def op(x):\n    return x\n", "ops.py", **limits)


def test_input_must_be_a_numeric_batch():
    with CustomOp("def op(x):\n    return x\n", "ops.py") as op:
        with pytest.raises(TestprioError, match="was given a list; ops take a numeric"):
            op.apply([1, 2])
        with pytest.raises(TestprioError, match="was given an array of dtype object"):
            op.apply(np.array([None, 1]))
        assert op.pid is None


# --- errors and limits -------------------------------------------------------------------


def _op(body: str, **limits) -> CustomOp:
    source = f"import numpy as np\n\n\ndef op(x):\n    {body}\n"
    return CustomOp(source, "ops.py", **limits)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("return x[:1]", r"returned an array of shape \(1, 2\) for a batch of 3; op\(x\) must"),
        ("return [1, 2, 3]", r"returned a list instead of a numpy array on a batch of shape"),
        ("return x.astype(str)", r"returned an array of dtype <U32; op\(x\) must return"),
        ("return np.float64(x.sum())", r"returned a float64 instead of a numpy array"),
        (
            "raise ValueError('negative pixels')",
            r"raised ValueError: negative pixels at line 5 on a batch of shape \(3, 2\)",
        ),
        ("return x / {}['k']", r"raised KeyError: 'k' at line 5"),
    ],
)
def test_op_errors_become_sentences(body, match):
    with _op(body) as op:
        with pytest.raises(TestprioError, match=match):
            op.apply(np.ones((3, 2)))
        assert op.pid is not None and psutil.pid_exists(op.pid)  # the worker lives on


def test_module_body_error_is_reported_while_loading():
    op = CustomOp("import numpy as np\n\nscale = 1 / 0\n\ndef op(x):\n    return x\n", "ops.py")
    with pytest.raises(
        TestprioError, match="raised ZeroDivisionError: division by zero at line 3 while loading"
    ):
        op.apply(np.ones((1,)))


def test_cpu_limit_stops_an_infinite_loop():
    with _op("while True:\n        pass", cpu_seconds=1, batch_timeout_s=30) as op:
        start = time.monotonic()
        with pytest.raises(
            TestprioError,
            match=r"exceeded its 1 s CPU limit on a batch of shape \(2, 2\); make it faster "
            "or raise --custom-op-cpu-seconds",
        ):
            op.apply(np.ones((2, 2)))
        assert time.monotonic() - start < 10


def test_cpu_limit_stops_an_endless_module_body():
    source = "while True:\n    pass\n\ndef op(x):\n    return x\n"
    with CustomOp(source, "ops.py", cpu_seconds=1) as op:
        with pytest.raises(TestprioError, match=r"exceeded its 1 s CPU limit while loading"):
            op.apply(np.ones((1,)))


def _loop_count_for(seconds: float) -> int:
    start = time.process_time()
    count = 0
    for _ in range(300_000):
        count += 1
    return int(300_000 * seconds / max(time.process_time() - start, 1e-4))


def test_cpu_limit_is_per_batch():
    """Five batches of ~0.4 s each pass a 1 s limit: the budget is not for the whole run."""
    body = (
        f"total = 0\n    for i in range({_loop_count_for(0.4)}):\n        total += 1\n    return x"
    )
    with _op(body, cpu_seconds=1) as op:
        for _ in range(5):
            op.apply(np.ones((1, 1)))
        assert psutil.Process(op.pid).cpu_times().user > 1.0


def test_memory_limit_stops_a_huge_allocation():
    body = "if x.shape[0] == 1:\n        return x\n    return np.ones((10**10,))"
    with _op(body, memory_mb=512) as op:
        with pytest.raises(
            TestprioError,
            match=r"ran out of memory on a batch of shape \(2, 2\) under its 512 MB limit "
            r"\(MemoryError: .*\); use less memory .* raise --custom-op-memory-mb",
        ):
            op.apply(np.ones((2, 2)))
        pid = op.pid
        np.testing.assert_array_equal(op.apply(np.ones((1, 2))), np.ones((1, 2)))
        assert op.pid == pid  # the same worker serves the next batch


def test_memory_limit_stops_a_batch_too_big_for_the_worker():
    with _op("return x", memory_mb=64) as op:
        with pytest.raises(TestprioError, match=r"ran out of memory .* under its 64 MB limit"):
            op.apply(np.zeros((100, 1024, 1024), dtype=np.uint8))
        pid = op.pid
        np.testing.assert_array_equal(op.apply(np.ones((2, 2))), np.ones((2, 2)))
        assert op.pid == pid  # the worker read past the batch and serves the next one


def test_wall_clock_limit_stops_a_slow_batch():
    with _op("while True:\n        pass", cpu_seconds=60, batch_timeout_s=1) as op:
        start = time.monotonic()
        with pytest.raises(
            TestprioError,
            match=r"took longer than its 1 s wall-clock limit on a batch of shape \(2, 2\) and "
            "was stopped; make it faster or raise --custom-op-batch-timeout-s",
        ):
            op.apply(np.ones((2, 2)))
        assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("signum", "match"),
    [
        (signal.SIGKILL, r"worker process was killed by SIGKILL .* on a batch of shape \(2, 2\)"),
        (signal.SIGSEGV, r"worker process crashed with SIGSEGV .*its last output was 'spinning'"),
    ],
)
def test_a_killed_worker_is_reported_and_replaced(signum, match):
    body = "if len(x) == 1:\n        return x\n    print('spinning')\n    while True:\n        pass"
    with _op(body, cpu_seconds=60, batch_timeout_s=30) as op:
        op.apply(np.ones((1, 2)))
        first = op.pid
        killer = threading.Timer(0.5, os.kill, (first, signum))
        killer.start()
        with pytest.raises(TestprioError, match=match):
            op.apply(np.ones((2, 2)))
        killer.join()
        np.testing.assert_array_equal(op.apply(np.ones((1, 2))), np.ones((1, 2)))
        assert op.pid != first  # a fresh worker took over


def test_close_stops_the_worker():
    op = _op("return x")
    op.apply(np.ones((1, 1)))
    worker = psutil.Process(op.pid)
    assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    op.close()
    assert not worker.is_running()
    op.close()  # idempotent
    assert op.pid is None


def test_worker_runs_with_a_bare_environment(monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secret/key.json")
    with _op("return x") as op:
        op.apply(np.ones((1, 1)))
        worker = psutil.Process(op.pid)
        environment = worker.environ()
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in environment
        assert environment["OPENBLAS_NUM_THREADS"] == "1"
        assert worker.cmdline()[1] == "-I"
        limits = {
            name: worker.rlimit(getattr(psutil, name))
            for name in ("RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CORE")
        }
        assert all(limit == (0, 0) for limit in limits.values()), limits
        assert worker.rlimit(psutil.RLIMIT_NOFILE)[0] <= 8
        assert worker.num_threads() == 1


LIMITS_PROBE = """
import errno, json, os, sys
import importlib.util
spec = importlib.util.spec_from_file_location("sandbox_worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
handle = open(sys.argv[2], "wb", buffering=0)
worker.apply_limits(5, 256)


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


result = {}
for what, attempt in (
    ("write", lambda: handle.write(b"escaped")),
    ("open", lambda: open("/etc/hostname").read()),
    ("fork", fork),
):
    try:
        attempt()
        result[what] = "ok"
    except OSError as exc:
        result[what] = errno.errorcode[exc.errno]
print(json.dumps(result))
"""


def test_limits_stop_file_writes_opens_and_forks_even_without_the_check(tmp_path):
    """Code that got past every check still cannot write a byte, open a file or fork."""
    target = tmp_path / "out.bin"
    completed = subprocess.run(
        [sys.executable, "-I", "-c", LIMITS_PROBE, sandbox.WORKER_PATH, str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(completed.stdout)
    assert result["write"] == "EFBIG" and target.read_bytes() == b""
    assert result["open"] == "EMFILE"
    if os.getuid() != 0:  # root is exempt from RLIMIT_NPROC
        assert result["fork"] == "EAGAIN"


def test_check_is_fast_on_a_large_file():
    source = "import numpy as np\n\n\ndef op(x):\n" + "    x = x + 1\n" * 5000 + "    return x\n"
    start = time.monotonic()
    check_source(source, "ops.py")
    assert time.monotonic() - start < 2
