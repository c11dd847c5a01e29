"""`predict` and `eval` for nets whose head is not a classifier: regression heads (mse, l1,
smooth_l1) print and score values, multi-label heads (bce) per-label probabilities, and an
inference-only net (OUTPUT) its raw outputs (see train/metrics.py for the kinds)."""
from __future__ import annotations

import numpy as np

from ..compile.verify import main_head
from ..layers import Ctx, get
from ..train.metrics import head_kind


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Element-wise 1/(1 + e^−z) in float64, without overflow."""
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, np.float64)))


def target_predictions(kind: str, names, logits: np.ndarray) -> list[dict]:
    """One record per input: ``values`` (regression, OUTPUT) or ``probabilities`` (bce)."""
    if kind == "labels":
        return [{"input": n, "probabilities": [float(p) for p in row]}
                for n, row in zip(names, sigmoid(logits))]
    return [{"input": n, "values": [float(v) for v in row]} for n, row in zip(names, logits)]


def format_target_predictions(results: list[dict]) -> str:
    """``a.png: 0.731, -1.2`` (values) or ``a.png: label 0 91.2%, label 1 3.4%``."""
    lines = []
    for r in results:
        if "probabilities" in r:
            body = ", ".join(f"label {i} {100 * p:.1f}%" for i, p in enumerate(r["probabilities"]))
        else:
            body = ", ".join(f"{v:.6g}" for v in r["values"])
        lines.append(f"{r['input']}: {body}")
    return "\n".join(lines)


def target_report(graph, logits: np.ndarray, y: np.ndarray, data_name: str, split: str) -> dict:
    """The eval report of a regression or multi-label head: the head's own loss on the split,
    and MAE/RMSE (values) or exact-match and per-label accuracy (labels)."""
    kind, head = head_kind(graph), main_head(graph)
    y = np.asarray(y, np.float64).reshape(logits.shape)
    p = np.asarray(logits, np.float64)
    spec = get(head.op)
    loss, _ = spec.forward(Ctx(xp=np, labels=y), head.attrs, {}, [p])
    report = {"data": data_name, "split": split, "examples": int(len(y)), "head": head.op,
              "loss": float(loss)}
    if kind == "values":
        report.update(metric="mae", mae=float(np.abs(p - y).mean()),
                      rmse=float(np.sqrt(((p - y) ** 2).mean())))
    else:
        right = (p > 0) == (y > 0.5)
        report.update(metric="exact_match", exact_match=float(right.all(axis=1).mean()),
                      per_label=[float(a) for a in right.mean(axis=0)])
    return report


def format_target_report(r: dict) -> str:
    head = f"{r['data']} ({r['split']}, {r['examples']} examples): {r['head']} loss {r['loss']:.6g}"
    if r["metric"] == "mae":
        return f"{head}, MAE {r['mae']:.6g}, RMSE {r['rmse']:.6g}"
    labels = "\n".join(f"  label {i}: {100 * a:.2f}%" for i, a in enumerate(r["per_label"]))
    return (f"{head}, exact-match accuracy {100 * r['exact_match']:.2f}%\n"
            f"per-label accuracy:\n{labels}")
