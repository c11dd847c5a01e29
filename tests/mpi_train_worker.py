"""Trains a toy net for 20 steps, alone or as one MPI rank (tests/test_distributed.py runs it
under mpiexec); rank 0 (or the single process) saves the parameters and the history to OUT.

    python tests/mpi_train_worker.py nobn|bn float32|float64 OUT.npz [--no-overlap] [--sync-bn]
"""
import sys

import numpy as np

from netdsl.compile.compiler import compile_text
from netdsl.data.loader import Dataset
from netdsl.lang.train_config import TrainConfig
from netdsl.runtime.executor import Executor
from netdsl.train.distributed import world
from netdsl.train.loop import Trainer
from netdsl.train.parallel import DataParallel

NETS = {
    "nobn": "INPUT(6x6x1) -> CONV(4, 3) -> RELU -> DROPOUT(0.3) -> POOL -> FC(12) -> "
            "DROPOUT(0.5) -> FC",
    "bn": "INPUT(6x6x1) -> CONV(4, 3) -> BN -> RELU -> DROPOUT(0.3) -> POOL -> FC(12) -> FC",
}
# 151 training examples in batches of 16: 9 full batches and a last one of 7 (4 + 3 on two
# ranks), 10 steps an epoch, 20 in two epochs.
N_TRAIN, N_TEST = 151, 20


def dataset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, N_TRAIN + N_TEST)
    x = (rng.standard_normal((len(y), 6, 6, 1)) + y[:, None, None, None]).astype(np.float32)
    return Dataset("toy", x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], 3, (6, 6, 1),
                   "held-out last 20")


def train(kind: str, dtype: str, overlap: bool = True, bucket_mb: float = 1e-3,
          sync_bn: bool = False):
    """The trainer after 20 steps (a tiny bucket size: several buckets even for this net)."""
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3,
                      augment="affine+crop+flip", seed=3, sync_bn=sync_bn)
    g = compile_text(NETS[kind], num_classes=3).graph
    ex = Executor(g, seed=cfg.seed, dtype=np.dtype(dtype))
    comm = world()
    par = DataParallel(comm, ex, bucket_mb, overlap, sync_bn) if comm is not None else None
    t = Trainer(ex, cfg, dataset(), out_dir=None, show_progress=False, log=lambda *a: None,
                parallel=par)
    t.run()
    return t, (comm.rank if comm is not None else 0)


def flat(t) -> dict:
    """Every parameter and buffer, and the history's loss and accuracies, as arrays."""
    out = {f"p/{n}/{k}": np.asarray(v) for n, ts in t.ex.params.items() for k, v in ts.items()}
    for key in ("loss", "train_acc", "test_acc"):
        out[f"h/{key}"] = np.array([row[key] for row in t.history])
    out["step"] = np.array(t.step)
    return out


if __name__ == "__main__":
    kind, dtype, path = sys.argv[1:4]
    trainer, rank = train(kind, dtype, overlap="--no-overlap" not in sys.argv,
                          sync_bn="--sync-bn" in sys.argv)
    if rank == 0:
        np.savez(path, **flat(trainer))
