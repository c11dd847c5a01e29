"""The commands of the `netdsl` command line that execute a network: run (train) and bench
(time), with their flags. They share cli/common.py's helpers (compile with --set/--input, data and head
checks, warnings, errors → exit 1)."""
from __future__ import annotations

import os
import sys

from .common import (EXIT_INTERRUPTED, check_data, check_heads, compile_args, pass_flags,
                     print_warnings)
from ..core.errors import NetdslError


def cmd_run(args) -> int:
    """`netdsl run FILE`: train on the file's (or --data's) dataset, checkpointing into --out."""
    from ..core.backend import get_xp
    from ..runtime.executor import Executor
    from ..core.graph import nodes
    from ..runtime.memory_estimate import check_fits, device_available_bytes, estimate_run_bytes
    from ..data.preprocess import make_record
    from ..data.loader import in_memory_examples, load_dataset
    from .diag import Pictures
    from ..train.fingerprint import graph_fingerprint
    from ..train.loop import Interrupted, Trainer, check_same_network, default_out_dir
    from ..train.rundir import open_run_dir
    from ..train.logs import RunLog
    from ..train.distributed import launched_by_mpi, world
    from .workers import setup_rank, spawn
    if args.workers and not launched_by_mpi():   # start the ranks, each running this command
        return spawn(args.argv, args.workers)
    comm = world()
    if comm is not None:
        setup_rank(args, comm)
    cli_train = {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                 "lr": args.lr, "holdout": args.holdout, "seed": args.seed, "keep": args.keep,
                 "early_stop": args.early_stop, "monitor": args.monitor,
                 "clip_grad_norm": args.clip_grad_norm, "label_smoothing": args.label_smoothing,
                 "warmup": args.warmup}
    c = compile_args(args, cli_train=cli_train, need_data=True)
    g, cfg = c.graph, c.config
    try:
        check_data(c)
    finally:
        print_warnings(g)
    refuse_inference_only(g)
    if args.resume:   # a missing file or another network: refused before any other work
        check_same_network(g, args.resume)
    flat = next(n.out_shape for n in nodes(g) if not n.inputs)
    if len(flat) == 1 and cfg.augment != "none":
        raise NetdslError(f"augment = {cfg.augment} needs images, but the input is flat "
                          f"({flat[0]} values)",
                          hint="use augment = none, or INPUT(HxWxC) -> ... -> FLATTEN")
    # Checked and locked before any data is read or weight made: a bad --out costs nothing.
    out_dir = args.out or default_out_dir(g.graph["name"])
    # Rank 0 alone locks and writes the run directory and its log; the other ranks write nothing.
    writes = comm is None or comm.rank == 0
    run_log = RunLog(out_dir, args.log if writes else "none")   # no tensorboardX: refused now
    with (open_run_dir(out_dir, resume=args.resume, overwrite=args.overwrite)
          if writes else _NoRunDir()) as run_dir:
        for name in run_dir.removed_temps:
            print(f"netdsl: removed {os.path.join(out_dir, name)}, left by an interrupted save",
                  file=sys.stderr)
        # Ranks run on the CPU (GPU ranks are not built): auto means cpu under MPI.
        xp = get_xp("cpu" if comm is not None and args.device == "auto" else args.device)
        on_gpu = xp.__name__ == "cupy"
        if on_gpu and comm is not None:
            raise NetdslError("data-parallel training on GPUs (one rank per GPU, NCCL) is not "
                              "built yet", hint="run the ranks with --device cpu, or one "
                              "process on the GPU; docs/distributed.md says what remains")
        from ..runtime import kernels
        kernels.set_threads(args.threads)
        size = dict(optimizer=cfg.optimizer, momentum=cfg.momentum, passes=args.passes,
                    kernels=args.kernels,
                    weight_decay=cfg.weight_decay, batch_size=cfg.batch_size)
        available = device_available_bytes(xp)   # measured before the data takes its share
        check_fits(estimate_run_bytes(g, **size), available=available,
                   what=f"training {g.graph['name']} at batch {cfg.batch_size}")
        input_shape = next(n.out_shape for n in nodes(g) if not n.inputs)
        data = load_dataset(cfg.data, input_shape=input_shape, holdout=cfg.holdout)
        check_heads(g, data.num_classes, data.name)   # the labels read, not just the headers
        if not on_gpu:   # on a GPU the dataset stays in host memory, the rest on the device
            check_fits(estimate_run_bytes(g, **size, input_shape=input_shape,
                                          dataset_examples=in_memory_examples(data)),
                       available=available,
                       what=f"training {g.graph['name']} on {data.name} at batch "
                            f"{cfg.batch_size}")
        ex = Executor(g, xp=xp, seed=cfg.seed, passes=args.passes, kernels=args.kernels)
        n_params = sum(n.n_params for n in nodes(g))
        print(f"{g.graph['name']}: {n_params:,} parameters, input "
              f"{'×'.join(map(str, ex.input_shape))}, data {data.name} ({len(data.x_train)} "
              f"train / {len(data.x_test)} {data.test_name}), {cfg.optimizer} lr {cfg.lr} "
              f"{cfg.schedule}, batch {cfg.batch_size}, {'GPU' if on_gpu else 'CPU'}, "
              f"checkpoints in {out_dir}/")
        # The fingerprint of the network as compiled, not as the training passes rewrote it:
        # --passes/-O0 change how it runs, not what it is.
        parallel = None
        if comm is not None:
            from ..train.parallel import DataParallel
            parallel = DataParallel(comm, ex, args.bucket_mb, overlap=not args.no_overlap,
                                    sync_bn=cfg.sync_bn)
            print(f"data parallel: {comm.size} ranks × {args.threads} thread(s), "
                  f"{len(parallel.sync.buckets)} gradient bucket(s) of ≤{args.bucket_mb:g} MB, "
                  f"overlap {'off' if args.no_overlap else 'on'}, batch norm "
                  f"{'synchronised (sync_bn)' if cfg.sync_bn else 'per rank'}")
        trainer = Trainer(ex, cfg, data, out_dir=out_dir, show_progress=not args.quiet,
                          parallel=parallel,
                          on_epoch=None if args.no_plots else Pictures(out_dir, data.test_name),
                          meta={"network": g.graph["name"], "source": g.graph["source"].text,
                                "params": {k: str(v) for k, v in g.graph["params"].items()},
                                "graph": graph_fingerprint(g),
                                # what predict/eval need to prepare new images as these were
                                "preprocess": make_record(data, input_shape)},
                          run_log=run_log)
        if args.resume:
            trainer.resume(args.resume, schedule_restart=args.schedule_restart)
        try:
            result = trainer.run()
        except Interrupted as stop:
            return stop.exit_status
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if not args.no_plots:
            Pictures(out_dir, data.test_name).filters(ex)
        if parallel is not None:
            print(parallel.report(sum(r["seconds"] for r in result["history"])))
    n_test = len(data.y_test)
    acc = result["accuracy"]
    if trainer.kind == "values":
        print(f"final {data.test_name} mean absolute error: {acc:.4g} ({n_test} examples)")
    else:
        what = "exact-match accuracy" if trainer.kind == "labels" else "accuracy"
        print(f"final {data.test_name} {what}: {100 * acc:.2f}% ({round(acc * n_test)}/{n_test})")
    return 0


def refuse_inference_only(g) -> None:
    """A located error when the net ends in OUTPUT (no loss): nothing to train."""
    from ..compile.verify import main_head
    head = main_head(g)
    if head.op == "output":
        raise NetdslError(f"{g.graph['name']} ends in OUTPUT, without a loss: it is for "
                          f"inference (export, predict), not for training", head.loc,
                          hint="end the net in a loss to train it: LOSS (softmax "
                               "cross-entropy), MSE, L1, SMOOTH_L1 or BCE")


class _NoRunDir:
    """What a rank other than 0 opens instead of the run directory: nothing."""
    removed_temps: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cmd_bench(args) -> int:
    """`netdsl bench [FILE]`: netdsl/tools/bench.py (and bench_ablate.py for --ablate)."""
    if getattr(args, "ablate", False):
        from ..tools.bench_ablate import main as ablate_main
        return ablate_main(args)
    from ..tools.bench import main as bench_main
    return bench_main(args)


def kernel_flags(sp, threads_default) -> None:
    """--kernels and --threads, shared by run and bench."""
    sp.add_argument("--kernels", default="auto", choices=["auto", "numpy", "onednn"],
                    help="kernel provider: onednn where it loads (auto), or the NumPy reference")
    sp.add_argument("--threads", type=int, default=threads_default, metavar="N",
                    help="threads for BLAS, OpenMP and oneDNN together"
                         + (" (default: the libraries' own)" if threads_default is None else ""))


def add_run(sub, common) -> None:
    """The `run` subcommand on the main parser's ``sub``."""
    r = sub.add_parser("run", help="train a network")
    common(r)
    r.add_argument("--data", help="digits | mnist:DIR | cifar10:DIR | npz:FILE | folder:DIR "
                                       "(one sub-folder of images per class)")
    r.add_argument("--epochs", type=int, metavar="N",
                   help="passes over the training set (default: the file's train block, else 10)")
    r.add_argument("--batch-size", type=int, metavar="N",
                   help="examples per training step (default: the file's, else 64)")
    r.add_argument("--lr", type=float, metavar="LR",
                   help="learning rate, the schedule's starting value (default: the file's, "
                        "else 0.05)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    r.add_argument("--out", metavar="DIR", help="checkpoint directory (default runs/NAME)")
    r.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint .npz")
    r.add_argument("--overwrite", action="store_true",
                   help="allow a fresh run into an --out that holds a checkpoint; the new run's "
                        "first save replaces it")
    r.add_argument("--holdout", type=int, help="examples kept for evaluation when the data has "
                                               "no test split (default 20%%)")
    r.add_argument("--seed", type=int, metavar="N",
                   help="seed of the initial weights, shuffling, augmentation and dropout "
                        "(default: the file's, else 0); the same seed gives the same run")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-plots", action="store_true",
                   help="do not draw curves.png/svg and filters.png into --out")
    add_control_flags(r)
    r.add_argument("--workers", type=int, metavar="N",
                   help="train data-parallel on N MPI ranks on this machine (starts mpiexec; "
                        "needs the mpi extra); the same run as one process (batch norm: with "
                        "sync_bn = true)")
    r.add_argument("--bucket-mb", type=float, default=25.0, metavar="MB",
                   help="under MPI: gradient all-reduce bucket size (default 25)")
    r.add_argument("--no-overlap", action="store_true",
                   help="under MPI: all-reduce the gradients after backward, not during it")
    pass_flags(r)
    kernel_flags(r, threads_default=None)
    r.set_defaults(func=cmd_run)


def add_control_flags(r) -> None:
    """run's logging and training-control flags (docs/runs.md); each train setting among
    them overrides the file's train section."""
    r.add_argument("--log", default="csv", choices=["csv", "tensorboard", "none"],
                   help="per-epoch log in --out: log.csv (default), TensorBoard event files "
                        "in tb/ (needs tensorboardX), or none")
    r.add_argument("--keep", choices=["last", "best", "both"],
                   help="weights kept: the last epoch's (default), the best held-out epoch's "
                        "(best.npz, loaded at the end), or both")
    r.add_argument("--early-stop", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better held-out metric")
    r.add_argument("--monitor", choices=["acc", "loss"],
                   help="held-out metric of --keep best and --early-stop (default acc)")
    r.add_argument("--clip-grad-norm", type=float, metavar="NORM",
                   help="rescale gradients to a global L2 norm of at most NORM")
    r.add_argument("--label-smoothing", type=float, metavar="E",
                   help="softmax_xent targets (1-E) one-hot + E/K, e.g. 0.1")
    r.add_argument("--warmup", type=int, metavar="EPOCHS",
                   help="epochs of linear lr warm-up before the schedule")
    r.add_argument("--schedule-restart", action="store_true",
                   help="with --resume and more --epochs: a new schedule cycle over the added "
                        "epochs (default: continue at the final lr)")


def add_bench(sub) -> None:
    """The `bench` subcommand on the main parser's ``sub``."""
    b = sub.add_parser("bench", help="time a network's training step or inference, per layer "
                       "and whole, optionally against PyTorch (default: the cs231n yardstick)")
    b.add_argument("file", nargs="?", help="a .net file (default: nets/cs231n.net, N=2 M=3 K=2)")
    b.add_argument("--set", action="append", metavar="K=V", default=[],
                   help="bind a program parameter; repeatable")
    b.add_argument("--input", metavar="HxWxC", help="input shape when INPUT has none")
    b.add_argument("--batch-size", "--batch", dest="batch", type=int, default=64)
    b.add_argument("--mode", choices=["train", "infer"], default="train")
    b.add_argument("--steps", type=int, default=20, help="timed steps per framework")
    b.add_argument("--rounds", type=int, default=5, help="rounds the steps are split into")
    b.add_argument("--compare", choices=["torch", "onnxruntime", "openvino", "torch.compile",
                                         "none"],
                   help="also time the same network in PyTorch eager (torch), onnxruntime or "
                        "OpenVINO (inference, on the ONNX file `export --optimize` writes) or "
                        "torch.compile; skipped with a note when not installed (default "
                        "without FILE: torch when installed)")
    b.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    b.add_argument("--format", choices=["table", "json"], default="table")
    b.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    b.add_argument("--ablate", action="store_true", help="time the full pipeline against each "
                   "pass, plan decision and kernel provider switched off in turn")
    pass_flags(b)
    kernel_flags(b, threads_default=2)
    b.set_defaults(func=cmd_bench)
