"""The diagnostic commands of the `netdsl` command line: show, sweep, convert, sizes, and the
training-memory report of `summary`; and the pictures `run` draws into --out.

They share cli/common.py's helpers (compile with --set/--input, flag checks, errors → exit 1).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..core.backend import to_numpy
from .common import EXIT_USER_ERROR, compile_args
from ..lang.overrides import parse_dims, split_sets
from ..core.errors import NetdslError
from ..core.files import refuse_input_as_output, write_text


def training_memory(args, c):
    """summary --optimizer/--memory: the training-memory report (dict, text)."""
    from ..tools.trainmem import TrainMemory, format_report, parse_bytes
    budget = parse_bytes(args.memory) if args.memory else None
    cfg = c.config
    opt = args.optimizer or cfg.optimizer
    tm = TrainMemory(c.graph, optimizer=opt, passes=args.passes,
                     momentum=cfg.momentum if opt == "sgd" else 0.0, weight_decay=cfg.weight_decay)
    report = tm.report(args.batch)
    fits = tm.largest_batch(budget) if budget is not None else None
    if budget is not None:
        report = dict(report, budget=budget, largest_batch=fits)
    return report, format_report(report, budget, fits)


class Pictures:
    """run's pictures in --out: curves after every epoch, filters at the end. Without
    matplotlib they are skipped with one warning: a missing extra must not stop a training."""

    warned = False      # one warning per process, however many epochs and pictures

    def __init__(self, out_dir, test_name):
        self.out_dir, self.test_name = out_dir, test_name

    def _try(self, draw) -> None:
        try:
            draw()
        except (NetdslError, OSError) as err:
            if not Pictures.warned:
                hint = getattr(err, "hint", None)
                print(f"netdsl: warning: no pictures: {getattr(err, 'message', err)}"
                      + (f" ({hint})" if hint else ""), file=sys.stderr)
                Pictures.warned = True

    def __call__(self, trainer) -> None:
        from ..tools.plots import plot_curves
        self._try(lambda: plot_curves(trainer.history, self.out_dir, self.test_name))

    def filters(self, ex) -> None:
        from ..tools.plots import plot_filters
        convs = [st.node.name for st in ex.plan if st.node.op == "conv"]
        if convs:
            self._try(lambda: plot_filters(to_numpy(ex.params[convs[0]]["weight"]),
                                           os.path.join(self.out_dir, "filters.png")))


def cmd_show(args) -> int:
    from ..runtime.executor import Executor
    from ..tools.plots import plot_feature_maps, plot_filters
    from ..tools.show import feature_maps, first_conv, load_image
    from ..train.checkpoint import load_checkpoint
    if not args.filters and not args.layer:
        raise NetdslError("show needs --filters, or an IMAGE and --layer NAME",
                          hint="e.g. netdsl show net.net --weights runs/x/checkpoint.npz --filters")
    if bool(args.image) != bool(args.layer):
        raise NetdslError("feature maps need both an IMAGE and --layer NAME")
    c = compile_args(args)
    ck = load_checkpoint(args.weights)
    from ..train.loop import check_compatible
    ex = Executor(c.graph, passes="O0")
    check_compatible(ex, ck["params"], args.weights)
    for name, tensors in ex.params.items():
        for key in tensors:
            tensors[key][...] = ex.xp.asarray(ck["params"][name][key])
    # pictures go where asked (-o) or beside the checkpoint (its run directory), never into
    # the current directory unasked
    here = os.path.dirname(os.path.abspath(args.weights))
    if args.filters:
        rec = first_conv(c.graph)
        out = args.output if not args.layer and args.output else os.path.join(here,
                                                                               "filters.png")
        print("\n".join(plot_filters(to_numpy(ex.params[rec.name]["weight"]), out,
                                     f"{rec.name} filters")))
    if args.layer:
        maps = feature_maps(ex, load_image(args.image, ex.input_shape), args.layer)
        out = args.output or os.path.join(here, f"{args.layer.replace('/', '_')}_maps.png")
        print("\n".join(plot_feature_maps(maps, out, f"{args.layer} on {args.image}")))
    return 0


def cmd_sizes(args) -> int:
    from ..compile.compiler import build_graph, read_source, train_config
    from ..core.graph import nodes
    from ..layers import get
    from ..tools.sizes import nearest, parse_range, valid_sizes
    lo, hi = parse_range(args.range)
    if args.near is not None and not 1 <= args.near <= 8192:
        raise NetdslError(f"--near {args.near} is out of range: a side between 1 and 8,192")
    params, train = split_sets(args.set)
    g = build_graph(read_source(args.file), params)
    src = next(rec for rec in nodes(g)
               if get(rec.op).role == "source")
    shape, classes = src.attrs.get("shape"), 10
    if args.input:
        shape = parse_dims(args.input)
    if not isinstance(shape, tuple):    # INPUT without a shape: the configured dataset's
        from ..data.loader import dataset_info
        shape, classes = dataset_info(train_config(g, train).data)
    if len(shape) != 3:
        raise NetdslError(f"sizes looks for image sides, but the input is flat "
                          f"({'×'.join(map(str, shape))} values)",
                          hint="sizes is for networks whose INPUT is HxWxC")
    checks, complete = valid_sizes(g, lo, hi, shape[2], classes, near=args.near)
    ok = [c.size for c in checks if c.valid]
    if not complete:
        checked = sorted(c.size for c in checks)
        print(f"netdsl: note: {g.graph['name']} has {g.number_of_nodes():,} layers: checked "
              f"{len(checks)} of the {hi - lo + 1} sides ({checked[0]}..{checked[-1]}"
              + (f", nearest {args.near} first" if args.near is not None else "")
              + "); narrow --range to check the others", file=sys.stderr)
    print(f"{g.graph['name']}: {len(ok)} exact input side(s) in {lo}..{hi}"
          + ("" if complete else " (of those checked)")
          + (f": {', '.join(map(str, ok))}" if ok else ""))
    if args.near is not None:
        here = check_at(checks, args.near)
        if here is not None and not here.valid:
            print(f"{args.near} is not exact: {here.reason}")
        near = nearest(checks, args.near)
        print(f"nearest exact sides to {args.near}: {', '.join(map(str, near)) or 'none in range'}")
    return 0 if ok else EXIT_USER_ERROR


def check_at(checks, size):
    """The check for side ``size`` among ``checks``, or None outside the range."""
    return next((c for c in checks if c.size == size), None)


def cmd_sweep(args) -> int:
    from ..tools.sweep import cost, format_table, instances, parse_sweep_sets, plot, write_csv
    from ..train.distributed import launched_by_mpi, world
    from .workers import cores, spawn
    if args.workers and not launched_by_mpi():   # the same command on N MPI ranks
        return spawn(args.argv, args.workers, threads=False)
    comm = world()   # under MPI: rank r trains every size-th instance, rank 0 prints the table
    # Float sums, hence accuracies, depend on the thread count: every instance trains with
    # the same count whether the sweep runs serially or on MPI ranks (--threads, else all
    # cores), so both print the same table. Ranks on one machine then share the cores.
    from ..runtime import kernels
    kernels.set_threads(args.threads or cores())
    axes = parse_sweep_sets(args.set)
    shape = parse_dims(args.input) if args.input else None
    cli_train = {"data": args.data, "epochs": args.epochs, "seed": args.seed}
    rows = [cost(args.file, b, input_shape=shape, cli_train=cli_train) for b in instances(axes)]
    out = args.out or os.path.join("runs", "sweep-" + os.path.splitext(os.path.basename(args.file))[0])
    try:   # before any training: a bad --out must not cost the results
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise NetdslError(f"--out '{out}' cannot be made a directory: {exc.strerror or exc}",
                          hint="choose a directory path that is not under a file") from None
    trainable = [i for i, row in enumerate(rows) if args.epochs and row["valid"]]
    try:
        for i in trainable if comm is None else trainable[comm.rank::comm.size]:
            if not args.quiet:
                print(f"training {i + 1}/{len(rows)}: {rows[i]['instance'] or '(as written)'}",
                      file=sys.stderr)
            _train_row(rows[i], args)
        if comm is not None:
            _gather_rows(comm, rows, trainable)
    finally:   # what was trained is kept even when a later instance fails or Ctrl-C comes
        if comm is None or comm.rank == 0:   # under MPI rank 0 alone prints and writes
            print(format_table(rows))
            print(f"wrote {write_csv(rows, os.path.join(out, 'sweep.csv'))}")
    if comm is not None and comm.rank != 0:
        return 0
    if any(r["valid"] for r in rows):
        try:
            print("wrote " + ", ".join(plot(rows, os.path.join(out, "sweep.png"))))
        except NetdslError as err:     # matplotlib missing: the table and CSV still stand
            print(f"netdsl: warning: no plot: {err.message}", file=sys.stderr)
    return 0 if any(r["valid"] for r in rows) else EXIT_USER_ERROR


def _gather_rows(comm, rows: list, trainable: list) -> None:
    """Rank 0 gets every rank's trained rows into ``rows``; the other ranks send theirs.
    A plain gather, no timeout: instances take different times, and a dead rank ends the job
    through mpiexec."""
    keys = ("accuracy", "valid", "untrained", "error")
    mine = {i: {k: rows[i][k] for k in keys if k in rows[i]}
            for i in trainable[comm.rank::comm.size]}
    for part in comm.comm.gather(mine, root=0) or []:   # None on the other ranks
        for i, fields in part.items():
            rows[i].update(fields)


def _train_row(row: dict, args) -> None:
    """Train one sweep instance into ``row``; an instance that cannot be trained (too big for
    the memory, a data problem) is marked with why, and the sweep goes on."""
    from ..runtime.memory_estimate import (available_bytes, check_fits, estimate_run_bytes)
    from ..tools.sweep import train_one
    cfg = row["compiled"].config
    try:
        check_fits(estimate_run_bytes(row["compiled"].graph, batch_size=cfg.batch_size,
                                      optimizer=cfg.optimizer, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay),
                   available=available_bytes(), what="training it")
        row["accuracy"] = train_one(row, data_spec=args.data, limit=args.limit)
    except NetdslError as err:
        row.update(valid=False, untrained=True, error=f"not trained: {err.message}")
    except MemoryError:
        row.update(valid=False, untrained=True, error="not trained: out of memory")


def cmd_convert(args) -> int:
    from ..tools.convert import convert_weights, fc_to_conv
    if not args.fc_to_conv:
        raise NetdslError("convert needs a conversion to do", hint="use --fc-to-conv")
    out_weights = os.path.splitext(args.output)[0] + ".npz" if args.weights else None
    for flag, path in (("-o", args.output), ("the weights it writes,", out_weights)):
        refuse_input_as_output(path, {"network file": args.file, "checkpoint": args.weights},
                               flag)
    c = compile_args(args)
    text, kernels = fc_to_conv(c.graph, parse_dims(args.slide) if args.slide else None)
    from ..compile.compiler import compile_text
    compile_text(text, name=args.output, num_classes=10)    # the result must compile
    done = f"wrote {args.output} ({len(kernels)} FC layer(s) now convolutions: " \
           f"{', '.join(kernels) or 'none'})"
    if not args.weights:
        write_text(args.output, text, ".net file")
        print(done)
        return 0
    from ..core.files import write_together
    from ..train.checkpoint import checkpoint_writer, load_checkpoint
    ck = load_checkpoint(args.weights)
    from ..interchange.trained import bind_params
    bind_params(c.graph, ck["params"], args.weights)   # the checkpoint is this network's
    weights = checkpoint_writer(params=convert_weights(ck["params"], kernels),
                                optimizer_state={}, epoch=ck["epoch"], step=ck["step"],
                                metrics=ck["metrics"],
                                meta=dict(ck["meta"], converted_from=args.weights, source=text))
    data = text.encode("utf-8")
    # the .net and its weights together: both new, or both as they were
    write_together([(args.output, lambda f: f.write(data)), (out_weights, weights)],
                   "the converted network")
    print(done)
    print(f"wrote {out_weights} (weights for {args.output})")
    return 0


def add_parsers(sub, common) -> None:
    """The diagnostic subcommands, on the main parser's ``sub``."""
    sh = sub.add_parser("show", help="pictures of a trained net: filters, feature maps",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  netdsl show nets/lenet5.net --weights "
                               "runs/lenet5/checkpoint.npz --filters\n  netdsl show nets/lenet5.net "
                               "--weights runs/lenet5/checkpoint.npz digit.png --layer C1")
    common(sh)
    sh.add_argument("image", nargs="?", help="an image (PNG/JPEG, or .npy) for --layer")
    sh.add_argument("--weights", required=True, metavar="CKPT", help="a checkpoint .npz")
    sh.add_argument("--filters", action="store_true", help="draw the first conv's filters")
    sh.add_argument("--layer", metavar="NAME", help="draw the feature maps of IMAGE at NAME")
    sh.add_argument("-o", "--output", metavar="OUT.png", help="picture file (.png or .svg; "
                    "default filters.png or LAYER_maps.png beside the checkpoint)")
    sh.set_defaults(func=cmd_show)

    sw = sub.add_parser("sweep", help="cost (and train) every instance of a template",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example: netdsl sweep nets/cs231n.net --set N=1..2 --set M=2..3 "
                               "--epochs 2\n  writes sweep.csv and sweep.png/svg into --out "
                               "(default runs/sweep-NAME)")
    sw.add_argument("file", help="a .net file")
    sw.add_argument("--set", action="append", metavar="K=VALUES", default=[],
                    help="values to sweep: N=1..3 (a range) or POOL=true,false (a list); "
                         "repeatable, the sweep is their product")
    sw.add_argument("--input", metavar="HxWxC", help="input shape when INPUT has none")
    sw.add_argument("--epochs", type=int, help="also train each instance this many epochs")
    sw.add_argument("--data", help="digits | mnist:DIR | cifar10:DIR | npz:FILE")
    sw.add_argument("--limit", type=int, metavar="N", help="train on the first N examples only")
    sw.add_argument("--seed", type=int)
    sw.add_argument("--out", metavar="DIR", help="where sweep.csv and the plot go")
    sw.add_argument("--quiet", action="store_true", help="no per-instance progress lines")
    sw.add_argument("--workers", type=int, metavar="N",
                    help="train the instances on N MPI ranks (starts mpiexec; needs the mpi "
                         "extra); the same table as one process with the same --threads")
    sw.add_argument("--threads", type=int, metavar="N",
                    help="threads per instance (default: all cores, serially and on MPI "
                         "ranks alike: the thread count changes float sums, so the same "
                         "count gives the same table)")
    sw.set_defaults(func=cmd_sweep)

    cv = sub.add_parser("convert", help="rewrite a network (FC layers as convolutions)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example: netdsl convert nets/vgg16.net --fc-to-conv --slide "
                               "384x384x3 --weights vgg.npz -o vgg16_conv.net\n  (writes "
                               "vgg16_conv.net and vgg16_conv.npz; at 384 it answers a 6×6 grid)")
    common(cv)
    cv.add_argument("--fc-to-conv", action="store_true",
                    help="FC layers as convolutions with the same weights")
    cv.add_argument("--weights", metavar="CKPT", help="also convert this checkpoint")
    cv.add_argument("--slide", metavar="HxWxC", help="input shape of the converted net "
                    "(default: the original's)")
    cv.add_argument("-o", "--output", required=True, metavar="OUT.net")
    cv.set_defaults(func=cmd_convert)

    sz = sub.add_parser("sizes", help="input sizes every conv/pool divides exactly",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example: netdsl sizes nets/alexnet.net --near 224   (answers 227, ...)")
    common(sz)
    sz.add_argument("--near", type=int, metavar="S", help="also list the exact sides nearest S")
    sz.add_argument("--range", default="32:512", metavar="LO:HI",
                    help="square sides to try (default 32:512)")
    sz.set_defaults(func=cmd_sizes)
