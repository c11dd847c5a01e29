"""A minimal ctypes binding to oneDNN's C API (libdnnl.so.3 from the onednn-cpu-gomp wheel).

Only what the provider needs: memory descriptors, primitive descriptors for convolution,
pooling, batch normalisation, LRN, inner product and reorder, primitives, and execution with
argument arrays built once per primitive. Every primitive is made in user scratchpad mode and
runs on the one :class:`Scratchpad` region (NumPy memory the planner and `bench` count). Enum values are those of oneDNN 3.2's
dnnl_types.h / dnnl_common_types.h (onednn-devel-cpu-gomp 2023.2.0); the library's version is
checked on load so that another ABI is refused instead of misread.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import numpy as np

from ....core import workspace

# --- enum values (oneDNN 3.2 headers) ----------------------------------------------------------
F32 = 3
FORMAT_ANY = 1
DATA_TYPE_UNDEF = 0   # dnnl_data_type_undef: a sum post-op then uses the destination's type
CPU = 1
STREAM_IN_ORDER = 1
FORWARD_TRAINING, FORWARD_INFERENCE, BACKWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = 64, 96, 128, 160, 192
CONV_DIRECT = 0x1
ELTWISE_RELU, ELTWISE_TANH, ELTWISE_LINEAR, ELTWISE_LOGISTIC = 0x20, 0x21, 0x26, 0x29
ELTWISE_RELU_DST, ELTWISE_TANH_DST, ELTWISE_LOGISTIC_DST = 0x100, 0x101, 0x104  # *_use_dst_for_bwd
ELTWISE_CLIP_V2_DST = 0x106   # dnnl_eltwise_clip_v2_use_dst_for_bwd
ELTWISE_HARDSIGMOID, ELTWISE_SWISH, ELTWISE_HARDSWISH = 0x28, 0x2c, 0x34
ACTIVATIONS = ("relu", "tanh", "sigmoid")
"""Activations a conv or fc applies to its output as eltwise post-ops (``Lib.attr``)."""
POST_OPS = {"relu": ((ELTWISE_RELU, 0.0, 0.0),), "tanh": ((ELTWISE_TANH, 0.0, 0.0),),
            "sigmoid": ((ELTWISE_LOGISTIC, 0.0, 0.0),),
            # tanh(x) = 2σ(2x) − 1 (eltwise.py: oneDNN's AVX2 tanh is slow), from x or 2x
            "tanh:logistic": ((ELTWISE_LINEAR, 2.0, 0.0), (ELTWISE_LOGISTIC, 0.0, 0.0),
                              (ELTWISE_LINEAR, 2.0, -1.0)),
            "tanh:logistic-of-2x": ((ELTWISE_LOGISTIC, 0.0, 0.0), (ELTWISE_LINEAR, 2.0, -1.0))}
"""The eltwise post-ops (algorithm, alpha, beta) of each post-op form (``Lib.attr``)."""
BINARY_ADD, BINARY_MUL = 0x1fff0, 0x1fff1   # dnnl_binary_add, dnnl_binary_mul
POOL_MAX, POOL_AVG_INCLUDE, POOL_AVG_EXCLUDE = 0x1FF, 0x2FF, 0x3FF
LRN_ACROSS = 0xAFF
BN_GLOBAL_STATS, BN_SCALE, BN_SHIFT, BN_FUSE_RELU = 0x1, 0x2, 0x4, 0x8
QUERY_IMPL_INFO_STR = 8  # dnnl_query_impl_info_str
QUERY_EXEC_ARG_MD = 255
SCRATCHPAD_MODE_USER = 1  # dnnl_scratchpad_mode_user
ARG = {"scratchpad": 80, "src": 1, "src_1": 2, "dst": 17, "weights": 33, "bias": 41, "mean": 49, "variance": 50,
       "scale": 51, "shift": 52, "workspace": 64, "diff_src": 129, "diff_dst": 145,
       "diff_weights": 161, "diff_bias": 169, "diff_scale": 255, "diff_shift": 256}
MULTIPLE_SRC, MAX_MULTIPLE_SRC = 1024, 64   # DNNL_ARG_MULTIPLE_SRC + i: a concat's i-th input
ARG.update({f"src#{i}": MULTIPLE_SRC + i for i in range(MAX_MULTIPLE_SRC)})


def multiple_src(i: int) -> str:
    """The :data:`ARG` name of a concat's ``i``-th input (DNNL_ARG_MULTIPLE_SRC + i)."""
    return f"src#{i}"

DIMS = ctypes.c_int64 * 12
VP = ctypes.c_void_p


class ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", VP)]


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


class DnnlError(RuntimeError):
    """A oneDNN call returned a status other than success (3 = unimplemented)."""

    def __init__(self, func: str, status: int):
        super().__init__(f"{func} failed with oneDNN status {status}")
        self.status = status


def dims(values) -> DIMS:
    """A dnnl_dims_t from a sequence of ints."""
    out = DIMS()
    for i, v in enumerate(values):
        out[i] = int(v)
    return out


def _candidates() -> list[str]:
    env = os.environ.get("NETDSL_DNNL_LIB")
    if env:  # an explicit choice: only that file (also how tests simulate a missing library)
        return [env]
    paths = [str(Path(sys.prefix) / "lib" / "libdnnl.so.3"),
              str(Path(sys.base_prefix) / "lib" / "libdnnl.so.3")]
    found = ctypes.util.find_library("dnnl")
    if found:
        paths.append(found)
    return paths


class Lib:
    """The loaded library, a CPU engine and an in-order stream."""

    def __init__(self):
        # Busy-waiting OpenMP threads cost ~8 ms per small parallel region on a loaded machine;
        # libgomp reads this once, when it initialises, so set it before loading (user wins).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        errors = []
        self.dll = None
        for path in _candidates():
            if "/" in path and not os.path.exists(path):
                errors.append(f"{path}: no such file")
                continue
            try:
                self.dll = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                self.path = path
                break
            except OSError as e:
                errors.append(f"{path}: {e}")
        if self.dll is None:
            raise OSError("libdnnl.so.3 not found (pip install onednn-cpu-gomp==2023.2.0)"
                          + ("; " + "; ".join(errors) if errors else ""))
        d = self.dll
        d.dnnl_version.restype = ctypes.POINTER(Version)
        v = d.dnnl_version().contents
        self.version = (v.major, v.minor, v.patch)
        if (v.major, v.minor) != (3, 2) and not (os.environ.get("NETDSL_DNNL_LIB")
                                                 and v.major == 3 and v.minor > 2):
            # A later 3.x only when chosen explicitly: oneDNN keeps the ABI within a major
            # version, and 3.13's headers give every enum value and prototype used here
            # unchanged (docs/performance.md, "The oneDNN build"), but only 3.2 is tested.
            raise OSError(f"oneDNN {v.major}.{v.minor} found; netdsl's binding is for 3.2 "
                          "(a later 3.x can be named with NETDSL_DNNL_LIB)")
        d.dnnl_primitive_desc_query_md.restype = VP
        d.dnnl_primitive_desc_query_md.argtypes = [VP, ctypes.c_int, ctypes.c_int]
        d.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        d.dnnl_memory_desc_get_size.argtypes = [VP]
        d.dnnl_memory_desc_equal.restype = ctypes.c_int
        d.dnnl_memory_desc_equal.argtypes = [VP, VP]
        d.dnnl_memory_set_data_handle.argtypes = [VP, VP]
        d.dnnl_primitive_execute.argtypes = [VP, VP, ctypes.c_int, VP]
        d.dnnl_stream_wait.argtypes = [VP]
        d.dnnl_post_ops_append_eltwise.argtypes = [VP, ctypes.c_int, ctypes.c_float,
                                                   ctypes.c_float]
        self.engine = VP()
        self.call("dnnl_engine_create", ctypes.byref(self.engine), CPU, ctypes.c_size_t(0))
        self.stream = VP()
        self.call("dnnl_stream_create", ctypes.byref(self.stream), self.engine, STREAM_IN_ORDER)
        self._execute = d.dnnl_primitive_execute
        self._set_handle = d.dnnl_memory_set_data_handle
        self._wait = d.dnnl_stream_wait
        self._attrs: dict = {}
        self.scratchpad = Scratchpad()
        workspace.register(self.scratchpad)   # held_bytes() counts it (netdsl/core/workspace.py)

    def call(self, name: str, *args) -> None:
        status = getattr(self.dll, name)(*args)
        if status != 0:
            raise DnnlError(name, status)

    # -- memory descriptors -----------------------------------------------------------------
    def md_strides(self, logical_dims, strides) -> VP:
        md = VP()
        self.call("dnnl_memory_desc_create_with_strides", ctypes.byref(md),
                  len(logical_dims), dims(logical_dims), F32, dims(strides))
        return md

    def md_any(self, logical_dims) -> VP:
        md = VP()
        self.call("dnnl_memory_desc_create_with_tag", ctypes.byref(md), len(logical_dims),
                  dims(logical_dims), F32, FORMAT_ANY)
        return md

    def md_size(self, md) -> int:
        return int(self.dll.dnnl_memory_desc_get_size(md))

    def md_equal(self, a, b) -> bool:
        return bool(self.dll.dnnl_memory_desc_equal(a, b))

    def pd_md(self, pd, arg: str) -> VP:
        """The memory descriptor a primitive descriptor chose for an execute argument."""
        return VP(self.dll.dnnl_primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, ARG[arg]))

    def impl_name(self, pd) -> str:
        out = ctypes.c_char_p()
        self.call("dnnl_primitive_desc_query", pd, QUERY_IMPL_INFO_STR, 0, ctypes.byref(out))
        return out.value.decode()

    def attr(self, act: str | None = None, add: bool = False) -> VP:
        """Primitive attributes: the user scratchpad mode, a ``sum`` post-op if ``add`` (the
        result is added to what the destination holds: a residual join), then one eltwise
        post-ops of the form ``act`` (a key of :data:`POST_OPS`), if any.

        Every primitive is created with these. Why the user mode: oneDNN's own scratchpad is
        malloc'ed inside the library, invisible to tracemalloc and to the memory planner; in
        user mode each primitive says how much it needs (:attr:`Primitive.scratch`) and runs
        on the one :class:`Scratchpad` region the provider owns. (A primitive descriptor
        copies its attributes, so one object of each kind serves every primitive.)
        """
        key = ("sum+" if add else "") + (act or "plain")
        if key not in self._attrs:
            attr = VP()
            self.call("dnnl_primitive_attr_create", ctypes.byref(attr))
            self.call("dnnl_primitive_attr_set_scratchpad_mode", attr, SCRATCHPAD_MODE_USER)
            if act or add:
                post = VP()
                self.call("dnnl_post_ops_create", ctypes.byref(post))
                if add:   # scale 1, zero point 0, the destination's own data type
                    self.call("dnnl_post_ops_append_sum", post, ctypes.c_float(1.0),
                              ctypes.c_int32(0), DATA_TYPE_UNDEF)
                for alg, alpha, beta in POST_OPS[act] if act else ():
                    self.call("dnnl_post_ops_append_eltwise", post, alg, alpha, beta)
                self.call("dnnl_primitive_attr_set_post_ops", attr, post)
            self._attrs[key] = attr
        return self._attrs[key]

    def scratch_size(self, pd) -> int:
        """Bytes of scratchpad the primitive of ``pd`` needs (user mode; 0 for none)."""
        return self.md_size(self.pd_md(pd, "scratchpad"))

    def pd(self, func: str, *args) -> VP:
        pd = VP()
        self.call(func, ctypes.byref(pd), *args)
        return pd

    def reorder_pd(self, src_md, dst_md) -> VP:
        return self.pd("dnnl_reorder_primitive_desc_create", src_md, self.engine, dst_md,
                       self.engine, self.attr())


class Scratchpad:
    """The one scratchpad region every oneDNN primitive of the process runs on.

    What oneDNN's own global scratchpad is, but a NumPy array: tracemalloc sees it, it is
    registered with :mod:`netdsl.core.workspace` (held across steps on purpose) and the memory
    planner plans it (:func:`held_bytes`). Steps run one at a time, so one region of the
    largest size any primitive (plus the blocked-weight buffer of a backward convolution, which
    lives in it too) needs is enough. It grows when a larger need comes (at a primitive's first
    call, i.e. in the warm-up step) and never shrinks unless released (:meth:`release`).
    """

    ALIGN = 64   # oneDNN's kernels want cache-line aligned buffers

    def __init__(self):
        self._raw: np.ndarray | None = None
        self._base = 0
        self.capacity = 0
        self._window, self._window_need = 0, 0   # the largest need in the last window

    @property
    def nbytes(self) -> int:
        return 0 if self._raw is None else int(self._raw.nbytes)

    @classmethod
    def held_bytes(cls, need: int) -> int:
        """Bytes the region holds once it has grown to ``need`` (what :attr:`nbytes` says)."""
        return need + cls.ALIGN if need > 0 else 0

    @staticmethod
    def aligned(nbytes: int) -> int:
        """``nbytes`` rounded up to the alignment: the offset of what follows a buffer."""
        return -(-int(nbytes) // Scratchpad.ALIGN) * Scratchpad.ALIGN

    def used_bytes(self, window: int) -> int:
        """What the region holds for the calls of ``window`` (workspace.open_window): its size
        had it grown only for their largest need, 0 if none ran; earlier networks' larger
        primitives, which grew it further, are not theirs."""
        return self.held_bytes(self._window_need) if self._window == window else 0

    def reserve(self, need: int) -> int:
        """The (aligned) address of a region of at least ``need`` bytes; grows it if needed."""
        window = workspace.current_window()
        if self._window != window:
            self._window, self._window_need = window, 0
        self._window_need = max(self._window_need, int(need))
        if need > self.capacity:
            self._raw = None                       # let the old one go before the new one
            self._raw = np.empty(self.held_bytes(need), dtype=np.uint8)
            addr = self._raw.ctypes.data
            self._base, self.capacity = addr + (-addr) % self.ALIGN, need
        return self._base

    def array(self, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of the region as a uint8 array (a buffer that a primitive
        then runs next to, with its own scratchpad at :meth:`aligned` (nbytes))."""
        base = self.reserve(nbytes)
        off = base - self._raw.ctypes.data
        return self._raw[off:off + nbytes]

    def release(self) -> None:
        """Free the region (it grows again at the next primitive call that needs it)."""
        self._raw, self._base, self.capacity = None, 0, 0


def address(arr: np.ndarray) -> int:
    """The address of ``arr``'s first byte. Why not ``arr.ctypes.data``: that builds a ctypes
    helper object per call, ~4× the cost of this, and a training step of LeNet-5 makes ~90."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(arr))
    except (TypeError, ValueError):     # read-only or empty: the general way
        return arr.ctypes.data


class Primitive:
    """A created primitive with one memory object per execute argument, made once.

    Calling it points each memory object at the given array and executes; the argument array
    itself never changes, which keeps one call at ~15–25 µs.
    """

    def __init__(self, lib: Lib, pd, args: tuple[str, ...]):
        self.lib, self.pd, self.args = lib, pd, args
        self.prim = VP()
        lib.call("dnnl_primitive_create", ctypes.byref(self.prim), pd)
        self.mds = {a: lib.pd_md(pd, a) for a in args}
        self.sizes = {a: lib.md_size(md) for a, md in self.mds.items()}
        # Bytes of scratchpad it runs on (user mode: it is handed a part of lib.scratchpad).
        self.scratch = lib.scratch_size(pd)
        if self.scratch:
            args = args + ("scratchpad",)
            self.mds["scratchpad"] = lib.pd_md(pd, "scratchpad")
        self.mems = []
        self.exec_args = (ExecArg * len(args))()
        for i, a in enumerate(args):
            mem = VP()
            lib.call("dnnl_memory_create", ctypes.byref(mem), self.mds[a], lib.engine, None)
            self.mems.append(mem)
            self.exec_args[i].arg = ARG[a]
            self.exec_args[i].memory = mem
        self.impl = lib.impl_name(pd)
        self._last = [None] * len(self.mems)     # the address each memory object points at

    def __call__(self, *arrays: np.ndarray, at: int = 0) -> None:
        """Execute with ``arrays`` bound to ``args`` in order (each must be large enough and
        laid out as the primitive's descriptor says; the kernels guarantee it). The
        scratchpad is the shared region from byte ``at`` (aligned) on."""
        set_handle, last = self.lib._set_handle, self._last
        for i, (mem, arr) in enumerate(zip(self.mems, arrays)):
            addr = address(arr)
            if last[i] != addr:     # a memory object keeps its handle: set it when it moved
                set_handle(mem, addr)
                last[i] = addr
        if self.scratch:
            addr = self.lib.scratchpad.reserve(at + self.scratch) + at
            if last[-1] != addr:
                set_handle(self.mems[-1], addr)
                last[-1] = addr
        status = self.lib._execute(self.prim, self.lib.stream, len(self.mems), self.exec_args)
        if status != 0:
            raise DnnlError("dnnl_primitive_execute", status)
        self.lib._wait(self.lib.stream)
