"""`netdsl bench --compare PEER` beyond PyTorch eager: onnxruntime and OpenVINO on the ONNX
file `netdsl export --optimize` writes, and PyTorch's ``torch.compile`` (inductor); plus what
ISA the host runs (every figure depends on it: oneDNN picks its kernels per ISA).

Each peer is optional: :func:`setup` raises :class:`Skipped` with a note when its package is
not installed or it cannot run the mode (onnxruntime and OpenVINO time inference only), and
`bench` prints the note instead of failing.
"""
from __future__ import annotations

import os

import numpy as np

PEERS = ("torch", "onnxruntime", "openvino", "torch.compile")
"""What ``--compare`` accepts (besides ``none``)."""

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class Skipped(Exception):
    """A peer that cannot run here; the message says why (and how to get it)."""

ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")
"""The environment variables that cap the vector ISA of oneDNN, MKL and OpenBLAS."""


def host_isa(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The host's vector ISA as the benchmarks see it: the relevant /proc/cpuinfo flags, the
    widest of them, ``ONEDNN_MAX_CPU_ISA`` (a cap that oneDNN, netdsl's and PyTorch's
    alike, honours; None when unset) and, under ``caps``, every ISA cap set in the
    environment (MKL's ``MKL_ENABLE_INSTRUCTIONS`` holds PyTorch's BLAS, OpenBLAS's
    ``OPENBLAS_CORETYPE`` NumPy's), so that a number taken under a cap says so."""
    flags: set = set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    present = [f for f in ISA_FLAGS if f in flags]
    widest = ("amx" if "amx_tile" in flags else "avx512" if "avx512f" in flags
              else "avx2" if "avx2" in flags else "avx" if "avx" in flags
              else "sse4" if "sse4_2" in flags else "unknown")
    caps = {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}
    return {"flags": present, "widest": widest,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "caps": caps}


def onnx_bytes(ex) -> bytes:
    """The ONNX model of inference executor ``ex``'s graph and weights: the inference pipeline
    (BN folded, activations fused), i.e. what `netdsl export --optimize` writes."""
    from ..interchange.onnx_export import to_onnx
    return to_onnx(ex.model.graph, ex.model.params).SerializeToString()


def _nchw(x) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, -1, 1)) if x.ndim == 4 else x


def onnxruntime_setup(ex, x, threads: int):
    """(step, version): one inference batch in onnxruntime's CPU provider, intra-op
    ``threads`` threads, on the same ONNX model and input (NCHW)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skipped("onnxruntime is not installed: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes(ex), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: _nchw(x)}
    return (lambda: sess.run(None, feed)), ort.__version__


def openvino_setup(ex, x, threads: int):
    """(step, version): one inference batch in OpenVINO's CPU plugin, ``threads`` inference
    threads, float32, on the same ONNX model and input (NCHW)."""
    try:
        import openvino as ov
    except ImportError:
        raise Skipped("OpenVINO is not installed: pip install openvino") from None
    import tempfile
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(onnx_bytes(ex))
        model = core.read_model(path)
        # float32 as netdsl computes: on AVX-512-BF16/AMX hosts OpenVINO's CPU plugin would
        # otherwise run bfloat16 (logits 2e-3 off here) and time another computation
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                     "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feed = {0: _nchw(x)}
    return (lambda: request.infer(feed)), ov.__version__


def torch_compile_setup(c, batch: int, mode: str, threads: int, labels):
    """(step, version): the same network in PyTorch compiled by ``torch.compile`` (inductor),
    a training step (SGD, momentum) or an inference batch. ``labels``: (classes, shape)."""
    try:
        import torch
    except ImportError:
        raise Skipped("PyTorch is not installed: pip install torch") from None
    from .bench_torch import build, make_step
    from ..core.graph import nodes
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(c.graph)
    h, w, ch = next(n for n in nodes(c.graph) if n.op == "input").out_shape
    x = torch.randn(batch, ch, h, w)
    y = torch.randint(0, labels[0], labels[1])
    compiled = torch.compile(model, backend="inductor")
    return make_step(model, x, y, mode, run=compiled), torch.__version__ + " inductor"


def setup(peer: str, c, ex, x, batch: int, mode: str, threads: int, labels):
    """(step, version) of ``peer`` (not ``torch``, which bench.torch_setup builds) for the
    same network, input and mode as netdsl's ``ex`` on ``x`` (``labels``: the number of
    classes and the labels' shape); :class:`Skipped` if it cannot."""
    if peer in ("onnxruntime", "openvino"):
        if mode != "infer":
            raise Skipped(f"{peer} runs inference only: use --mode infer")
        x = np.asarray(x, dtype=np.float32)
        return (onnxruntime_setup if peer == "onnxruntime" else openvino_setup)(ex, x, threads)
    if peer == "torch.compile":
        return torch_compile_setup(c, batch, mode, threads, labels)
    raise ValueError(peer)
