"""`netdsl lr-find NET.net`: the learning-rate range test (netdsl/tools/lr_find.py) on the
file's data and optimizer, a suggested lr and the loss-vs-lr plot."""
from __future__ import annotations

import json
import os

from .common import check_data, check_heads, compile_args, print_warnings


def cmd_lr_find(args) -> int:
    """Run the range test and print the suggestions; draw the plot unless --no-plot."""
    from ..core.graph import nodes
    from ..data.loader import load_dataset
    from ..runtime.executor import Executor
    from ..tools.lr_find import lr_range_test, plot_range_test
    c = compile_args(args, cli_train={"data": args.data, "batch_size": args.batch_size,
                                      "seed": args.seed}, need_data=True)
    g, cfg = c.graph, c.config
    try:
        check_data(c)
    finally:
        print_warnings(g)
    input_shape = next(n.out_shape for n in nodes(g) if not n.inputs)
    data = load_dataset(cfg.data, input_shape=input_shape, holdout=cfg.holdout)
    check_heads(g, data.num_classes, data.name)
    ex = Executor(g, seed=cfg.seed, kernels=args.kernels)
    ex.check_labels(data.y_train)
    r = lr_range_test(ex, cfg, data.x_train, data.y_train, start=args.start_lr,
                      end=args.end_lr, steps=args.steps)
    plot = None
    if not args.no_plot:
        plot = plot_range_test(r, args.output or os.path.join("runs", g.graph["name"],
                                                              "lr_find.png"), cfg.lr)
    if args.format == "json":
        print(json.dumps(dict(r, plot=plot, file_lr=cfg.lr), indent=2))
        return 0
    print(f"{g.graph['name']}: {len(r['lr'])} steps of {cfg.optimizer} at batch "
          f"{cfg.batch_size} on {data.name}, lr {r['lr'][0]:.2g} to {r['lr'][-1]:.3g}"
          + (" (stopped: the loss diverged)" if r["stopped_early"] else ""))
    print(f"suggested lr: {r['suggested']:.3g} (steepest descent of the smoothed loss)")
    print(f"minimum of the smoothed loss at lr {r['lr_at_min']:.3g} (/10: "
          f"{r['min_over_10']:.3g}); the file's lr: {cfg.lr:g}")
    if plot:
        print(f"plot: {plot}")
    return 0


def add_lr_find(sub, common) -> None:
    """The `lr-find` subcommand on the main parser's ``sub``."""
    p = sub.add_parser("lr-find", help="learning-rate range test (Smith 2017): suggest an lr "
                       "and plot the loss against it")
    common(p)
    p.add_argument("--data", help="digits | mnist:DIR | cifar10:DIR | npz:FILE")
    p.add_argument("--batch-size", type=int, help="examples per step (default: the file's)")
    p.add_argument("--seed", type=int, help="initial weights and shuffle (default: the file's)")
    p.add_argument("--steps", type=int, default=100, help="steps of the ramp (default 100)")
    p.add_argument("--start-lr", type=float, default=1e-6, help="first lr (default 1e-6)")
    p.add_argument("--end-lr", type=float, default=1.0, help="last lr (default 1)")
    p.add_argument("-o", "--output", metavar="PLOT", help="the plot, .png/.svg/.pdf "
                   "(default runs/NAME/lr_find.png)")
    p.add_argument("--no-plot", action="store_true", help="print the suggestion only")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--kernels", default="auto", choices=["auto", "numpy", "onednn"])
    p.set_defaults(func=cmd_lr_find)
