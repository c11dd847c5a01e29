"""Is a checkpoint for this network? Its parameters' names and shapes, and the graph
fingerprint it was trained with (netdsl/train/fingerprint.py), checked before resuming or
loading weights."""
from __future__ import annotations

from ..core.errors import NetdslError
from .checkpoint import load_header
from .fingerprint import diff_fingerprints, graph_fingerprint, well_formed


def check_compatible(ex, saved: dict, path: str) -> None:
    """Every parameter of executor ``ex`` is in ``saved`` with the same shape, or a NetdslError."""
    for name, tensors in ex.params.items():
        for key, value in tensors.items():
            if name not in saved or key not in saved[name]:
                raise NetdslError(f"checkpoint {path} has no parameter {name}/{key}",
                                  hint="resume with the same .net file and --set values it was "
                                       "trained with")
            if tuple(saved[name][key].shape) != tuple(value.shape):
                raise NetdslError(f"checkpoint {path}: {name}/{key} has shape "
                                  f"{tuple(saved[name][key].shape)}, the network needs "
                                  f"{tuple(value.shape)}",
                                  hint="resume with the same .net file and --set values")


def check_same_network(g, path: str) -> None:
    """Refuse, with a diff, to resume ``path`` into another network than the one it was
    trained with; reads only the checkpoint's header (called before any data is loaded)."""
    meta = load_header(path).get("meta", {})
    check_same_graph(meta.get("graph"), graph_fingerprint(g), path)


def check_same_graph(saved, current: dict, path: str) -> None:
    """Refuse another architecture, listing what changed; old checkpoints have no fingerprint."""
    if saved is None:
        return
    if not well_formed(saved):
        raise NetdslError(f"checkpoint {path} is damaged: its graph fingerprint is malformed")
    if saved.get("hash") == current["hash"]:
        return
    changes = diff_fingerprints(saved, current)
    raise NetdslError(f"checkpoint {path} was trained with a different network",
                      detail="changed since the checkpoint:\n    " + "\n    ".join(changes),
                      hint="resume with the same .net file and --set values it was trained "
                           "with, or start a fresh run with another --out")
