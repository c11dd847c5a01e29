"""The `netdsl` command line: summary, check, draw, layers (and run, bench from cli_run.py;
export, import, predict, eval from cli_interchange.py; show, sweep, convert, sizes from
cli_diag.py).

Every user mistake (bad file, bad flag value, bad data) ends as a NetdslError printed with its
location and hint, and a non-zero exit status; no traceback reaches the user.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import NetdslError

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, what `yes | head -1` reports for `yes`

# Whole-number flags: (smallest, largest, what the number means). The upper bounds keep a typo
# (--batch 6400000) from becoming a multi-gigabyte allocation or a run that never ends.
INT_FLAGS = {
    "epochs": (1, 1_000_000, "epochs"),
    "batch_size": (1, 1_000_000, "examples per step"),
    "holdout": (-1, 10**9, "held-out examples (-1 = 20%)"),  # 0: refused by check_with_data
    "seed": (0, 2**63 - 1, "random seed"),
    "batch": (1, 10**15, "examples"),          # summary: arithmetic only
    "threads": (1, 1024, "threads"),
    "steps": (1, 1_000_000, "timed steps"),
    "rounds": (1, 10_000, "rounds"),
    "top": (1, 1_000_000, "classes shown per input"),   # predict
    "limit": (1, 10**9, "training examples"),
}
INT_FLAGS_BY_COMMAND = {"bench": {"batch": (1, 65_536, "examples per step")}}


def check_int_flags(args) -> None:
    """Every whole-number flag the user gave lies in its range, or a NetdslError naming it."""
    ranges = {**INT_FLAGS, **INT_FLAGS_BY_COMMAND.get(args.command, {})}
    for key, (lo, hi, what) in ranges.items():
        value = getattr(args, key, None)
        if value is not None and not lo <= value <= hi:
            raise NetdslError(f"--{key.replace('_', '-')} {value} is out of range: {what} must be "
                              f"between {lo:,} and {hi:,}")


def _dims(text: str) -> tuple:
    """--input: HxWxC, HxW (one channel: 28x28 is 28×28×1) or one size (a flat input, 784)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1 or max(dims) > 1_000_000:
        raise NetdslError(f"--input expects HxWxC like 32x32x3, HxW like 28x28 (one channel) "
                          f"or a flat size like 784, got '{text}'")
    return dims + (1,) if len(dims) == 2 else dims


def _split_sets(pairs: list[str]) -> tuple[dict, dict]:
    """--set K=V values: program parameters, and training settings (keys like lr, epochs)."""
    from .lang import parse_value
    from .train.config import train_keys
    params, train = {}, {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NetdslError(f"--set expects NAME=VALUE, got '{pair}'", hint="e.g. --set N=3")
        key, value = pair.split("=", 1)
        key = key.strip()
        (train if key in train_keys() else params)[key] = parse_value(value.strip())
    return params, train


def _compile(args, mode="train", cli_train=None, need_data=False):
    from .compiler import compile_file
    params, train = _split_sets(getattr(args, "set", None))
    train.update({k: v for k, v in (cli_train or {}).items() if v is not None})
    override = _dims(args.input) if getattr(args, "input", None) else None
    return compile_file(args.file, overrides=params, cli_train=train, input_override=override,
                        mode=mode, need_data=need_data)


def _print_warnings(g) -> None:
    for message, loc in g.graph.get("notes", []):
        print(f"{loc}: note: {message}" if loc else f"netdsl: note: {message}", file=sys.stderr)
    for message, loc in g.graph.get("warnings", []):
        print(f"{loc}: warning: {message}" if loc else f"netdsl: warning: {message}",
              file=sys.stderr)


def _check_data(c, need_data: bool = True) -> None:
    """Settings and heads against the data's headers, before anything is loaded. Without
    ``need_data`` (check) a dataset that cannot be read is noted and these checks skipped:
    checking a network never needs its data."""
    from .train.config import check_with_data
    from .train.data import data_facts
    if not need_data and "data_unreadable" in c.graph.graph:
        c.graph.graph.setdefault("notes", []).append((
            f"the data was not checked: {c.graph.graph['data_unreadable']}", None))
        return
    facts = c.graph.graph.get("data_facts") or data_facts(c.config.data)
    check_with_data(c.graph, c.config, facts)
    # check on the default dataset (not named by the file): per-pixel heads are not held to it
    named = need_data or "data" in c.graph.graph.get("train", {}) or c.config.data != "digits"
    _check_heads(c.graph, facts.num_classes, c.config.data, per_position=named)


def cmd_check(args) -> int:
    from .graph import records
    c = _compile(args)
    try:
        _check_data(c, need_data=False)
    finally:
        _print_warnings(c.graph)
    total = sum(n.n_params for n in records(c.graph))
    print(f"{args.file}: ok ({c.graph.number_of_nodes()} nodes, {total:,} parameters)")
    return 0


def cmd_summary(args) -> int:
    from .summary import format_table, human_bytes, summarize
    c = _compile(args)
    _print_warnings(c.graph)
    from .memory import memory_table
    s = summarize(c.graph, batch=args.batch)
    s["compile_passes"] = [{"pass": name, "changed": changed} for name, changed in c.pass_log]
    s["memory"] = m = memory_table(c.graph, args.batch, passes=args.passes)
    from .cli_diag import training_memory
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
    from .draw import draw
    c = _compile(args)
    _print_warnings(c.graph)
    print(draw(c.graph, args.output, fold=args.fold))
    return 0


def _as_written(value) -> str:
    """A default value the way a .net file writes it: 3x3, true, same, auto."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).lower() if not isinstance(value, (int, float)) else f"{value:g}"


def cmd_layers(args) -> int:
    from .layers import all_specs
    for spec in all_specs():
        names = ", ".join((spec.name, *spec.aliases))
        sig = ", ".join(f"{a.name}={_as_written(a.default)}" for a in spec.args)
        print(f"{names}\n    {spec.doc}\n    args: {sig or '-'}")
        outputs = getattr(spec, "output_names", ())
        if spec.outputs > 1:   # read other outputs as @label.name or @label.index
            print("    outputs: " + ", ".join(f"{i} {n}" if n else str(i) for i, n in
                                              enumerate(list(outputs) + [""] * spec.outputs)
                                              if i < spec.outputs))
    return 0


def _check_heads(g, num_classes: int, data_name: str, per_position: bool = True) -> None:
    """Every loss head needs at least one logit per class of the data, or training fails: a
    flat (K,) vector, or an H×W×K map for a per-position head (softmax_xent2d). Without
    ``per_position`` (check on a dataset the file does not name) per-position heads are left
    alone: the default dataset has no per-pixel labels to hold them against."""
    from .graph import losses, node
    from .layers import get
    for head in losses(g):
        src = node(g, head.inputs[0][0])
        width = src.out_shapes[head.inputs[0][1]]
        if get(head.op).name == "softmax_xent2d":
            if per_position and len(width) == 3 and width[2] < num_classes:
                raise NetdslError(
                    f"{src.name} gives {width[2]} channels per position to the per-pixel loss "
                    f"{head.name}, but {data_name} has {num_classes} classes", src.loc,
                    hint=f"end with a 1×1 conv of {num_classes} filters: "
                         f"CONV(filters={num_classes}, kernel=1)")
            continue  # the loss's own shape rule already demanded H×W×K
        if len(width) != 1 or width[0] < num_classes:
            raise NetdslError(
                f"{src.name} gives {'×'.join(map(str, width))} outputs to the loss {head.name}, but "
                f"{data_name} has {num_classes} classes", src.loc,
                hint=f"leave the last FC bare (FC) to get one unit per class, or write FC({num_classes})")


def pass_flags(sp) -> None:
    """-O0 and --passes, shared by run, summary and bench."""
    sp.add_argument("-O0", dest="passes", action="store_const", const="O0",
                    help="run no optimisation pass (training and inference pipelines)")
    sp.add_argument("--passes", metavar="A,B", help="run only these passes (e.g. "
                    "fold_batchnorm,fuse_activations), each where its mode allows")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netdsl", description="Compile, check, draw and train "
                                "convolutional networks written in the netdsl language.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, input_flag=True):
        sp.add_argument("file", help="a .net file")
        sp.add_argument("--set", action="append", metavar="K=V", default=[],
                        help="bind a program parameter (or a train setting such as lr); repeatable")
        if input_flag:
            sp.add_argument("--input", metavar="HxWxC",
                            help="input shape: replaces INPUT's (HxW = one channel, N = flat)")

    from .cli_run import add_bench, add_run
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

    d = sub.add_parser("draw", help="draw the architecture with graphviz")
    common(d)
    d.add_argument("-o", "--output", required=True, help="OUT.svg, OUT.png, OUT.pdf or OUT.dot")
    d.add_argument("--fold", action="store_true", help="show repeated blocks once, marked ×N")
    d.set_defaults(func=cmd_draw)

    ly = sub.add_parser("layers", help="list the layers netdsl knows")
    ly.set_defaults(func=cmd_layers)

    from .cli_diag import add_parsers
    add_parsers(sub, common)

    add_bench(sub)   # bench: cli_run.py


    from .cli_interchange import add_commands
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
