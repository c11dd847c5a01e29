"""The `netdsl` commands for using a trained net: export, import, predict, eval.

Kept apart from cli.py so that each command's flags, examples and handler sit together;
``add_commands`` registers them on the main parser.
"""
from __future__ import annotations

import argparse
import json
import os

from ..core.errors import NetdslError
from ..core.files import refuse_input_as_output

EXPORT_EXAMPLE = """example:
  netdsl run nets/lenet5.net --epochs 2 --out runs/lenet5
  netdsl export nets/lenet5.net --weights runs/lenet5/checkpoint.npz -o lenet5.onnx --check

  netdsl export nets/lenet5.net --weights ckpt.npz -o lenet5.safetensors   # weights only

The file's input is NCHW (N×C×H×W, float32) named 'input'; its output is 'logits' (N×K).
Without --weights the net's seeded initial weights are exported. An output ending in
.safetensors gets the weights (netdsl layout and names) and the checkpoint's meta instead."""

IMPORT_EXAMPLE = """example:
  netdsl import lenet5.onnx -o imported.net      # also writes imported.npz (the weights)
  netdsl predict imported.net --weights imported.npz digit.png"""

PREDICT_EXAMPLE = """example:
  netdsl predict nets/lenet5.net --weights runs/lenet5/checkpoint.npz digit.png --top 3
  netdsl predict nets/lenet5.net --weights runs/lenet5/checkpoint.npz batch.npy --format json

Images (PNG, JPEG, ...; needs Pillow) are scaled to [0, 1], resized to the training data's
size, then fitted and normalised exactly as in training. An .npy file holds a batch N×H×W×C
(or N×H×W) with values in [0, 1]. --invert for dark ink on white paper; --crop-ink to cut a
digit drawn small in a big frame (e.g. MNIST) to its bounding box first."""

EVAL_EXAMPLE = """example:
  netdsl eval nets/lenet5.net --weights runs/lenet5/checkpoint.npz          # training data
  netdsl eval nets/lenet5.net --weights runs/lenet5/checkpoint.npz --data digits
  netdsl eval nets/lenet5.net --weights ckpt.npz --data mnist:data/mnist --format json
  netdsl eval nets/lenet5.net --weights ckpt.npz --data digits --plot confusion.png

The data's test split is used; a source without one is evaluated on the same held-out last
examples as in training (--holdout to change)."""


def _weights_and_sets(args, weights_required: bool):
    from ..lang.overrides import parse_dims, split_sets
    params, _train = split_sets(args.set)
    if weights_required and not args.weights:
        raise NetdslError(f"{args.command} needs --weights CKPT (a checkpoint from netdsl run)")
    return params, (parse_dims(args.input) if getattr(args, "input", None) else None)


def cmd_export(args) -> int:
    """Compile FILE for inference, bind weights, write ONNX."""
    from ..interchange.onnx_export import export_file, require_onnx, to_onnx
    from ..interchange.trained import load_trained
    sets, input_shape = _weights_and_sets(args, weights_required=False)
    refuse_input_as_output(args.output, {"network file": args.file, "checkpoint": args.weights})
    if args.output.lower().endswith(".safetensors"):
        from ..interchange.safetensors_io import write_safetensors
        t = load_trained(args.file, args.weights, sets=sets, input_shape=input_shape)
        write_safetensors(args.output, t.params, t.meta)
        print(f"{args.output}: {sum(len(v) for v in t.params.values())} tensors (safetensors)")
        return 0
    require_onnx()
    t = load_trained(args.file, args.weights, sets=sets, input_shape=input_shape)
    graph, params = t.graph, t.params
    if args.optimize:   # the compiler's inference pipeline: BN folded, activations fused
        m = t.bound().for_inference()
        graph, params = m.graph, m.params
    model = to_onnx(graph, params, opset=args.opset, preprocess=t.meta.get("preprocess"))
    export_file(model, args.output)
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"{args.output}: {len(model.graph.node)} ONNX nodes ({', '.join(ops)}), "
          f"weights from {args.weights or 'initialisation (seeded)'}")
    if args.check:
        from ..interchange.onnx_export import check_with_onnxruntime
        err = check_with_onnxruntime(model, t)
        verdict = "agree" if err <= 1e-5 else "DIFFER (please report this as a bug)"
        print(f"onnxruntime check on a random batch of 2: max |difference| = {err:.1e} of the "
              f"largest logit: netdsl and onnxruntime {verdict}")
        return 0 if err <= 1e-5 else 70
    return 0


def cmd_import(args) -> int:
    """Turn an ONNX model into a .net file and a checkpoint of its weights."""
    from ..interchange.onnx_import import import_file
    weights = args.weights_out or os.path.splitext(args.output)[0] + ".npz"
    if os.path.abspath(args.output) == os.path.abspath(weights):
        raise NetdslError(f"-o and --weights-out are the same file '{weights}'",
                          hint="the network and its weights need two files")
    for flag, path in (("-o", args.output), ("--weights-out", weights)):
        refuse_input_as_output(path, {"ONNX model": args.model}, flag)
        if os.path.exists(path) and not args.overwrite:
            raise NetdslError(f"{flag} '{path}' exists: import would replace it",
                              hint="add --overwrite to replace it, or choose another path")
    result = import_file(args.model, args.output, weights, name=args.name)
    print(f"{args.output}: {result['layers']} layers; weights in {weights}")
    for note in result["notes"]:
        print(f"netdsl: note: {note}")
    return 0


def cmd_predict(args) -> int:
    """Top-K classes with probabilities for each image."""
    from ..tools.predict import format_predictions, predict_files
    sets, input_shape = _weights_and_sets(args, weights_required=True)
    results = predict_files(args.file, args.weights, args.images, top=args.top, sets=sets,
                            input_shape=input_shape, invert=args.invert, ink=args.crop_ink)
    print(json.dumps(results, indent=2) if args.format == "json"
          else format_predictions(results))
    return 0


def cmd_eval(args) -> int:
    """Accuracy, per-class accuracy and the confusion matrix on a data set."""
    from ..tools.evaluate import evaluate_file, format_report
    sets, input_shape = _weights_and_sets(args, weights_required=True)
    report = evaluate_file(args.file, args.weights, args.data, sets=sets,
                           input_shape=input_shape, holdout=args.holdout)
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    if args.plot and "metric" in report:   # a regression or multi-label report
        raise NetdslError("--plot draws a confusion matrix, which a regression or "
                          "multi-label net does not have", hint="leave out --plot")
    if args.plot:
        refuse_input_as_output(args.plot, {"network file": args.file,
                                           "checkpoint": args.weights}, "--plot")
        from ..tools.evaluate import plot_confusion
        plot_confusion(report, args.plot)
    return 0


def add_commands(sub, common) -> None:
    """Register export, import, predict and eval on the subparsers ``sub``."""
    raw = argparse.RawDescriptionHelpFormatter

    e = sub.add_parser("export", help="write the inference graph as ONNX",
                       epilog=EXPORT_EXAMPLE, formatter_class=raw)
    common(e)
    e.add_argument("--weights", metavar="CKPT", help="checkpoint .npz (default: initial weights)")
    e.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                   help="OUT.onnx, or OUT.safetensors for the weights alone")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    e.add_argument("--optimize", action="store_true",
                   help="export what netdsl's inference pipeline runs: batch norm folded into "
                        "the conv/FC before it (fewer nodes; the file no longer has BN layers)")
    e.add_argument("--check", action="store_true",
                   help="run the file in onnxruntime on a random batch and compare its logits "
                        "with netdsl's")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="turn an ONNX model into a .net file and weights",
                       epilog=IMPORT_EXAMPLE, formatter_class=raw)
    i.add_argument("model", help="an .onnx file")
    i.add_argument("-o", "--output", required=True, metavar="OUT.net")
    i.add_argument("--weights-out", metavar="CKPT", help="checkpoint to write (default: OUT.npz)")
    i.add_argument("--name", help="network name (default: the output file's stem)")
    i.add_argument("--overwrite", action="store_true",
                   help="replace OUT.net and its weights if they exist (both are written "
                        "together: either both are new or both stay as they were)")
    i.set_defaults(func=cmd_import)

    p = sub.add_parser("predict", help="classify images with a trained network",
                       epilog=PREDICT_EXAMPLE, formatter_class=raw)
    common(p)
    p.add_argument("--weights", metavar="CKPT", help="checkpoint .npz from netdsl run")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files or an .npy batch")
    p.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--invert", action="store_true",
                   help="dark ink on a light background (the digit sets are light on dark)")
    p.add_argument("--crop-ink", action="store_true",
                   help="cut each image to its ink's bounding box first, as the digits data "
                        "was made (for a digit drawn small in a big frame, e.g. MNIST)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_predict)

    v = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix",
                       epilog=EVAL_EXAMPLE, formatter_class=raw)
    common(v)
    v.add_argument("--weights", metavar="CKPT", help="checkpoint .npz from netdsl run")
    v.add_argument("--data", help="digits | mnist:DIR | cifar10:DIR | npz:FILE (default: the "
                                  "data the checkpoint was trained on)")
    v.add_argument("--holdout", type=int, help="held-out examples when the data has no test "
                                               "split (default: as in training)")
    v.add_argument("--format", choices=["table", "json"], default="table")
    v.add_argument("--plot", metavar="FILE", help="also draw the confusion matrix (PNG, SVG "
                                                  "or PDF; needs matplotlib)")
    v.set_defaults(func=cmd_eval)
