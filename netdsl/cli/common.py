"""What the command groups of the `netdsl` command line share: exit statuses, whole-number flag
ranges, compiling FILE with --set/--input, the data and head checks run before any data is
loaded, and the compiler's warnings. Only the CLI's own modules import it."""
from __future__ import annotations

import sys

from ..core.errors import NetdslError
from ..lang.overrides import parse_dims, split_sets

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
    "early_stop": (0, 1_000_000, "epochs of patience (0 = off)"),
    "warmup": (0, 1_000_000, "warm-up epochs"),
    "workers": (1, 1024, "MPI ranks"),
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


def compile_args(args, mode="train", cli_train=None, need_data=False):
    """Compile ``args.file`` with the command's --set and --input (and ``cli_train``'s flags)."""
    from ..compile.compiler import compile_file
    params, train = split_sets(getattr(args, "set", None))
    train.update({k: v for k, v in (cli_train or {}).items() if v is not None})
    override = parse_dims(args.input) if getattr(args, "input", None) else None
    return compile_file(args.file, overrides=params, cli_train=train, input_override=override,
                        mode=mode, need_data=need_data)


def print_warnings(g) -> None:
    """The compiler's notes and warnings for ``g``, on stderr, each at its source location."""
    for message, loc in g.graph.get("notes", []):
        print(f"{loc}: note: {message}" if loc else f"netdsl: note: {message}", file=sys.stderr)
    for message, loc in g.graph.get("warnings", []):
        print(f"{loc}: warning: {message}" if loc else f"netdsl: warning: {message}",
              file=sys.stderr)


def check_data(c, need_data: bool = True) -> None:
    """Settings and heads against the data's headers, before anything is loaded. Without
    ``need_data`` (check) a dataset that cannot be read is noted and these checks skipped:
    checking a network never needs its data."""
    from ..lang.train_config import check_with_data
    from ..data.loader import data_facts
    if not need_data and "data_unreadable" in c.graph.graph:
        c.graph.graph.setdefault("notes", []).append((
            f"the data was not checked: {c.graph.graph['data_unreadable']}", None))
        return
    facts = c.graph.graph.get("data_facts") or data_facts(c.config.data)
    check_with_data(c.graph, c.config, facts)
    # check on the default dataset (not named by the file): per-pixel heads are not held to it
    named = need_data or "data" in c.graph.graph.get("train", {}) or c.config.data != "digits"
    check_heads(c.graph, facts.num_classes, c.config.data, per_position=named)


def check_heads(g, num_classes: int, data_name: str, per_position: bool = True) -> None:
    """Every loss head needs at least one logit per class of the data, or training fails: a
    flat (K,) vector, or an H×W×K map for a per-position head (softmax_xent2d). Without
    ``per_position`` (check on a dataset the file does not name) per-position heads are left
    alone: the default dataset has no per-pixel labels to hold them against."""
    from ..core.graph import node
    from ..compile.verify import losses
    from ..layers import get
    from ..layers.loss_targets import TARGET_LOSSES
    for head in losses(g):
        src = node(g, head.inputs[0][0])
        width = src.out_shapes[head.inputs[0][1]]
        if get(head.op).name in TARGET_LOSSES + ("output",):
            continue  # held against the targets themselves once they are read (check_labels)
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
