"""The `netdsl` command line: summary, check, draw, layers here; run and bench in cli/run.py;
export, import, predict and eval in cli/interchange.py; show, sweep, convert and sizes in
cli/diag.py; what they share in cli/common.py.

Every user mistake (bad file, bad flag value, bad data) ends as a NetdslError printed with its
location and hint, and a non-zero exit status; no traceback reaches the user.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..core.errors import NetdslError
from .common import (EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USER_ERROR, check_data,
                     check_int_flags, compile_args, pass_flags, print_warnings)


def cmd_check(args) -> int:
    from ..core.graph import records
    c = compile_args(args)
    try:
        check_data(c, need_data=False)
    finally:
        print_warnings(c.graph)
    total = sum(n.n_params for n in records(c.graph))
    print(f"{args.file}: ok ({c.graph.number_of_nodes()} nodes, {total:,} parameters)")
    return 0


def cmd_summary(args) -> int:
    from ..compile.summary import format_table, human_bytes, summarize
    c = compile_args(args)
    print_warnings(c.graph)
    from ..runtime.memory import memory_table
    s = summarize(c.graph, batch=args.batch)
    s["compile_passes"] = [{"pass": name, "changed": changed} for name, changed in c.pass_log]
    s["memory"] = m = memory_table(c.graph, args.batch, passes=args.passes)
    from .diag import training_memory
    training = training_memory(args, c) if (args.optimizer or args.memory) else None
    if training:
        s["training_memory"] = training[0]
    if args.format == "json":
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    print(format_table(s))
    if "unplanned" in m:
        print(f"planned peak memory: not planned ({m['unplanned']})")
        return 0
    print(f"planned peak memory, batch {args.batch} float32 (activations, caches, workspace"
          f"{', gradients' if m['train_gradient_bytes'] else ''}; weights apart): training step "
          f"{human_bytes(m['train_peak_bytes'])} (at {m['train_peak_at']}), inference "
          f"{human_bytes(m['infer_peak_bytes'])} (at {m['infer_peak_at']})")
    if training:
        print(training[1])
    return 0


def cmd_draw(args) -> int:
    from ..compile.draw import draw
    from ..core.files import refuse_input_as_output
    refuse_input_as_output(args.output, {"network file": args.file})
    c = compile_args(args)
    print_warnings(c.graph)
    if args.style == "volumes":
        from ..compile.draw_volumes import draw_volumes
        print(draw_volumes(c.graph, args.output))
    else:
        print(draw(c.graph, args.output, fold=args.fold, rankdir=args.rankdir))
    return 0


def _as_written(value) -> str:
    """A default value the way a .net file writes it: 3x3, true, same, auto."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).lower() if not isinstance(value, (int, float)) else f"{value:g}"


def cmd_layers(args) -> int:
    from ..layers import all_specs
    for spec in all_specs():
        names = ", ".join((spec.name, *spec.aliases))
        sig = ", ".join(f"{a.name}={_as_written(a.default)}" for a in spec.args)
        print(f"{names}\n    {spec.doc}\n    args: {sig or '-'}")
        outputs = getattr(spec, "output_names", ())
        if spec.outputs_arg:   # as many outputs as an argument says (split's parts)
            print(f"    outputs: 0 … {spec.outputs_arg}−1")
        elif spec.outputs > 1:   # read other outputs as @label.name or @label.index
            print("    outputs: " + ", ".join(f"{i} {n}" if n else str(i) for i, n in
                                              enumerate(list(outputs) + [""] * spec.outputs)
                                              if i < spec.outputs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netdsl", description="Compile, check, draw and train "
                                "convolutional networks written in the netdsl language.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"netdsl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, input_flag=True):
        sp.add_argument("file", help="a .net file")
        sp.add_argument("--set", action="append", metavar="K=V", default=[],
                        help="bind a program parameter (or a train setting such as lr); repeatable")
        if input_flag:
            sp.add_argument("--input", metavar="HxWxC",
                            help="input shape: replaces INPUT's (HxW = one channel, N = flat)")

    from .run import add_bench, add_run
    add_run(sub, common)   # run: cli_run.py

    s = sub.add_parser("summary", help="per-layer shapes, parameters, activations and MACs",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: netdsl summary nets/vgg16.net --batch 32 --optimizer adam "
                              "--memory 8GB")
    common(s)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.add_argument("--optimizer", choices=["sgd", "adam"],
                   help="add the training-memory report for this optimizer (default: the file's)")
    s.add_argument("--memory", metavar="SIZE", help="e.g. 8GB: also answer the largest batch "
                   "whose training step fits")
    pass_flags(s)
    s.set_defaults(func=cmd_summary)

    c = sub.add_parser("check", help="validate a .net file")
    common(c)
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("draw", help="draw the architecture: a graphviz graph, or the feature "
                       "maps as 3-D boxes (--style volumes)")
    common(d)
    d.add_argument("-o", "--output", required=True, help="OUT.svg, OUT.png, OUT.pdf or OUT.dot "
                   "(volumes: OUT.svg)")
    d.add_argument("--style", choices=["graph", "volumes"], default="graph",
                   help="graph: one node per layer (graphviz); volumes: the feature maps as "
                        "3-D boxes with their sizes and kernels, left to right, as in the "
                        "LeNet-5 and AlexNet papers (SVG, no graphviz needed)")
    d.add_argument("--fold", action="store_true", help="graph: show each repeat, and each run "
                   "of equal consecutive block calls, once, marked ×N")
    d.add_argument("--rankdir", choices=["TB", "LR"], default="TB",
                   help="graph: top to bottom (default) or left to right")
    d.set_defaults(func=cmd_draw)

    ly = sub.add_parser("layers", help="list the layers netdsl knows")
    ly.set_defaults(func=cmd_layers)

    from .diag import add_parsers
    add_parsers(sub, common)

    add_bench(sub)   # bench: cli_run.py
    from .lrfind import add_lr_find
    add_lr_find(sub, common)   # lr-find: cli/lrfind.py


    from .interchange import add_commands
    add_commands(sub, common)   # export, import, predict, eval
    return p


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the reader went away (`netdsl layers | head -1`), and Python
    would otherwise complain about the failed final flush at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


def main(argv=None) -> int:
    """Run the command line ``argv`` (default sys.argv[1:]) and return the exit status."""
    try:
        status = _dispatch(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


def _dispatch(argv) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # --workers reruns it under MPI
    # `show FILE --weights CKPT IMAGE`: argparse gives out positionals at their first run, so an
    # IMAGE after an option comes back unparsed; it is the optional positional.
    if extra and getattr(args, "command", None) == "show" and args.image is None \
            and len(extra) == 1 and not extra[0].startswith("-"):
        args.image, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        check_int_flags(args)
        return args.func(args)
    except BrokenPipeError:
        raise
    except NetdslError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("netdsl: error: out of memory", file=sys.stderr)
        print("  hint: use a smaller batch size, input or network", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:  # a bug in netdsl, not in the user's input
        if os.environ.get("NETDSL_DEBUG"):
            raise
        print(f"netdsl: internal error: {type(err).__name__}: {err}\n"
              "  this is a bug in netdsl; rerun with NETDSL_DEBUG=1 for a traceback and report it",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
