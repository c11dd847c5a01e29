"""``netdsl eval``: accuracy, per-class accuracy and the confusion matrix of a trained net.

The evaluation images are prepared with the checkpoint's preprocessing record (the TRAINING
data's statistics), not with statistics of the evaluation data, so the numbers are those of
the model as it would be used.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import NetdslError
from ..train.metrics import head_kind
from .target_reports import format_target_report, target_report


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """``m[t, p]`` = how many examples of true class t were predicted as p."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def report_from(y_true, y_pred, classes: int, data_name: str, split: str) -> dict:
    """The eval report (JSON-able) of labels and predictions."""
    m = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), classes)
    support = m.sum(axis=1)
    per_class = [{"class": c, "examples": int(support[c]), "correct": int(m[c, c]),
                  "accuracy": (float(m[c, c] / support[c]) if support[c] else None)}
                 for c in range(classes)]
    total = int(support.sum())
    return {"data": data_name, "split": split, "examples": total,
            "correct": int(np.trace(m)), "accuracy": float(np.trace(m) / total) if total else None,
            "per_class": per_class, "confusion": m.tolist()}


def eval_split(spec: str, holdout: int) -> tuple:
    """(x, y, split name, classes) of the data to evaluate: the test split, or the held-out
    last examples of a single-split source (the same ones training held out)."""
    from ..data.loader import holdout_count, read_splits
    splits = read_splits(spec)
    if splits.test is not None:
        x, y = splits.test
        return x, y, "test split", splits.num_classes
    x, y = splits.train
    count = holdout_count(len(x), holdout, splits.name)
    return x[-count:], y[-count:], f"held-out last {count}", splits.num_classes


def evaluate_file(path: str, weights: str, spec: str | None = None, *, sets=None,
                  input_shape=None, holdout: int | None = None, batch_size: int = 256) -> dict:
    """Evaluate checkpoint ``weights`` of ``path`` on data ``spec`` (default: the data it was
    trained on, from the checkpoint); see :func:`report_from`."""
    from .predict import input_shape_of, logits_of
    from ..data.preprocess import prepare, record_for
    from ..interchange.trained import load_trained
    trained = load_trained(path, weights, sets=sets, input_shape=input_shape)
    record = record_for(trained.meta, input_shape_of(trained), weights)
    if spec is None:
        spec = (trained.meta.get("config") or {}).get("data")
        if not spec:
            raise NetdslError(f"'{weights}' does not name the data it was trained on",
                              hint="give the data: --data digits, mnist:DIR, cifar10:DIR or "
                                   "npz:FILE")
    if holdout is None:
        holdout = int((trained.meta.get("config") or {}).get("holdout", -1))
    x, y, split, classes = eval_split(spec, holdout)
    logits = logits_of(trained, prepare(x, record), batch_size)
    if head_kind(trained.graph) != "classes":   # regression or multi-label (target_reports)
        return target_report(trained.graph, logits, y, spec, split)
    if logits.shape[1] < classes:
        raise NetdslError(f"the network gives {logits.shape[1]} logits but {spec} has "
                          f"{classes} classes", hint="evaluate on data with the classes the "
                                                     "network was trained on")
    return report_from(y, logits.argmax(axis=1), max(classes, logits.shape[1]), spec, split)


def format_report(r: dict) -> str:
    if "metric" in r:
        return format_target_report(r)
    """Accuracy line, per-class table, then the confusion matrix (rows: true, cols: predicted)."""
    lines = [f"{r['data']} ({r['split']}): accuracy {100 * r['accuracy']:.2f}% "
             f"({r['correct']}/{r['examples']})", "", "class  examples  correct  accuracy"]
    for c in r["per_class"]:
        acc = "-" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
        lines.append(f"{c['class']:>5}  {c['examples']:>8}  {c['correct']:>7}  {acc:>8}")
    m = np.asarray(r["confusion"])
    width = max(4, len(str(m.max())) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              "true\\pred" + "".join(f"{p:>{width}}" for p in range(m.shape[1]))]
    for t, row in enumerate(m):
        lines.append(f"{t:>9}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def plot_confusion(report: dict, path: str) -> None:
    """Draw the confusion matrix as an image (PNG, SVG or PDF by the file's suffix), counts in
    the cells, darker for more examples; rows are true classes, columns predictions."""
    try:
        import matplotlib
        matplotlib.use("Agg")   # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise NetdslError("--plot needs matplotlib, which is not installed",
                          hint="pip install 'netdsl[plots]' (or: pip install matplotlib)") from None
    m = np.asarray(report["confusion"])
    k = m.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
    ax.imshow(m, cmap="Blues")
    for t in range(k):
        for p in range(k):
            ax.text(p, t, str(m[t, p]), ha="center", va="center", fontsize=8,
                    color="white" if m[t, p] > m.max() / 2 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{report['data']}: {100 * report['accuracy']:.2f}% of {report['examples']}",
                 fontsize=9)
    fig.tight_layout()
    from .plots import write_figure
    try:
        write_figure(fig, path, "confusion matrix")
    finally:
        plt.close(fig)
