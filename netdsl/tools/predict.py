"""``netdsl predict``: the top-K classes, with probabilities, of images or an .npy batch."""
from __future__ import annotations

import numpy as np

from ..core.backend import to_numpy


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the row max is subtracted so exp() cannot overflow)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def logits_of(trained, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The main head's logits for a prepared NHWC batch, batch by batch."""
    from ..core import graph as G
    from ..core.errors import NetdslError
    from ..compile.verify import main_head
    head = main_head(trained.graph)
    src = G.node(trained.graph, head.inputs[0][0])
    shape = src.out_shapes[head.inputs[0][1]]
    if len(shape) != 1:   # e.g. per-pixel logits of a segmentation net
        raise NetdslError(f"this network predicts a {'×'.join(map(str, shape))} map of "
                          f"scores ({src.name}), not one class per image", src.loc,
                          hint="predict and eval classify whole images; export the net to "
                               "ONNX to use its maps")
    ex = trained.executor()
    out = [to_numpy(ex.forward(x[i:i + batch_size]).logits)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def top_k(probs: np.ndarray, k: int) -> list[list[dict]]:
    """For each row the ``k`` most probable classes, most probable first (ties: lower class)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"class": int(c), "probability": float(p[c])} for c in row]
            for row, p in zip(order, probs)]


def predict_files(path: str, weights: str, inputs: list[str], *, top: int = 3, sets=None,
                  input_shape=None, invert: bool = False, ink: bool = False) -> list[dict]:
    """Compile ``path``, bind ``weights``, prepare ``inputs`` as in training and classify.
    Returns ``[{"input": name, "top": [{"class": c, "probability": p}, ...]}, ...]``."""
    from ..data.preprocess import load_inputs, record_for
    from ..interchange.trained import load_trained
    trained = load_trained(path, weights, sets=sets, input_shape=input_shape)
    record = record_for(trained.meta, input_shape_of(trained), weights)
    names, x = load_inputs(inputs, record, invert=invert, ink=ink)
    from ..train.metrics import head_kind
    from .target_reports import target_predictions
    kind = head_kind(trained.graph)
    if kind != "classes":   # values, per-label probabilities or raw outputs: no classes
        return target_predictions(kind, names, logits_of(trained, x))
    probs = softmax(logits_of(trained, x))
    return [{"input": name, "top": best} for name, best in zip(names, top_k(probs, top))]


def input_shape_of(trained) -> tuple:
    from ..core import graph as G
    return next(r for r in G.nodes(trained.graph) if r.op == "input").out_shape


def format_predictions(results: list[dict]) -> str:
    """One line per input: ``digit.png: 3 (97.1%), 8 (1.2%), 5 (0.5%)``; regression and
    multi-label nets' lines come from target_reports."""
    if results and "top" not in results[0]:
        from .target_reports import format_target_predictions
        return format_target_predictions(results)
    return "\n".join(f"{r['input']}: " + ", ".join(
        f"{t['class']} ({100 * t['probability']:.1f}%)" for t in r["top"]) for r in results)
