"""A trained LeNet-5 used the way a user would: exported to ONNX (checked by onnxruntime),
asked for predictions on a PNG and an .npy batch, and evaluated on its held-out data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from netdsl.cli.app import main
from netdsl.train.checkpoint import load_checkpoint
from netdsl.data.loader import load_dataset

from conftest import NETS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """LeNet-5 trained for one epoch on 400 of scikit-learn's digits (an npz data set), with a
    held-out set of 100; returns the paths and the data spec."""
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp("lenet")
    d = load_digits()
    data = root / "digits400.npz"
    np.savez(data, x=(d.images[:400] / 16).astype(np.float32), y=d.target[:400])
    spec = f"npz:{data}"
    out = root / "run"
    assert main(["run", str(NETS / "lenet5.net"), "--data", spec, "--epochs", "1",
                 "--holdout", "100", "--out", str(out), "--quiet"]) == 0
    return {"net": str(NETS / "lenet5.net"), "ckpt": str(out / "checkpoint.npz"),
            "spec": spec, "root": root, "images": d.images[:400] / 16, "labels": d.target[:400]}


def held_out(trained):
    """The held-out examples as training prepared them (load_dataset's own normalisation)."""
    ds = load_dataset(trained["spec"], input_shape=(32, 32, 1), holdout=100)
    return ds.x_test, ds.y_test


def test_checkpoint_records_preprocessing(trained):
    pre = load_checkpoint(trained["ckpt"])["meta"]["preprocess"]
    assert pre["native_shape"] == [8, 8, 1] and pre["input_shape"] == [32, 32, 1]
    assert pre["classes"] == 10
    # The statistics are those of the training images as the net sees them: 8×8 digits
    # resized to 32×32 (bilinear, half-pixel centres, clamped at the borders), computed here
    # by a naive float64 loop over output pixels.
    small = trained["images"][:300].astype(np.float64)
    big = np.empty((300, 32, 32))
    for i in range(32):
        for j in range(32):
            y = min(max((i + 0.5) * 8 / 32 - 0.5, 0), 7)
            x = min(max((j + 0.5) * 8 / 32 - 0.5, 0), 7)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, 7), min(x0 + 1, 7)
            dy, dx = y - y0, x - x0
            big[:, i, j] = ((1 - dy) * ((1 - dx) * small[:, y0, x0] + dx * small[:, y0, x1])
                            + dy * ((1 - dx) * small[:, y1, x0] + dx * small[:, y1, x1]))
    np.testing.assert_allclose(pre["mean"], [big.mean()], rtol=1e-5)
    np.testing.assert_allclose(pre["std"], [big.std()], rtol=1e-5)


def test_trained_lenet5_matches_onnxruntime(trained, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from netdsl.interchange.trained import load_trained
    out = tmp_path / "lenet5.onnx"
    assert main(["export", trained["net"], "--weights", trained["ckpt"], "-o", str(out)]) == 0
    x, _ = held_out(trained)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = sess.run(["logits"], {"input": x.transpose(0, 3, 1, 2).copy()})[0]
    ours = load_trained(trained["net"], trained["ckpt"]).executor().forward(x).logits
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()


def test_eval_reproduces_training_accuracy(trained, capsys):
    assert main(["eval", trained["net"], "--weights", trained["ckpt"], "--data",
                 trained["spec"], "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    history = load_checkpoint(trained["ckpt"])["metrics"]["history"]
    assert report["split"] == "held-out last 100" and report["examples"] == 100
    # The accuracy the trainer measured at the end of the epoch, by its own pipeline.
    assert report["accuracy"] == pytest.approx(history[-1]["test_acc"], abs=1e-9)
    # Confusion matrix from an independent count (scikit-learn) of the executor's predictions
    # on the trainer's own held-out tensors.
    from sklearn.metrics import confusion_matrix
    from netdsl.interchange.trained import load_trained
    x, y = held_out(trained)
    pred = load_trained(trained["net"], trained["ckpt"]).executor().predict(x)
    expected = confusion_matrix(y, pred, labels=range(10))
    assert report["confusion"] == expected.tolist()
    for c in report["per_class"]:
        n = int((y == c["class"]).sum())
        assert c["examples"] == n
        assert c["correct"] == int(((y == c["class"]) & (pred == y)).sum())


def test_eval_table(trained, capsys):
    # Without --data: the data named in the checkpoint (the same npz set here).
    assert main(["eval", trained["net"], "--weights", trained["ckpt"]]) == 0
    out = capsys.readouterr().out
    assert "held-out last 100): accuracy" in out and "confusion matrix" in out
    assert out.count("\n") >= 1 + 1 + 11 + 2 + 10


def test_predict_npy_and_png_agree_with_softmax_of_logits(trained, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    images = trained["images"][-3:]
    batch = tmp_path / "three.npy"
    np.save(batch, images.astype(np.float32))
    png = tmp_path / "digit.png"
    Image.fromarray((images[0] * 255).round().astype(np.uint8)).save(png)
    assert main(["predict", trained["net"], "--weights", trained["ckpt"], str(batch), str(png),
                 "--top", "10", "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in results] == [f"{batch}[0]", f"{batch}[1]", f"{batch}[2]",
                                             str(png)]
    # Expected: float64 softmax of the logits on the trainer's own prepared tensors.
    from netdsl.interchange.trained import load_trained
    x, _ = held_out(trained)
    logits = load_trained(trained["net"], trained["ckpt"]).executor().forward(
        x[-3:]).logits.astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for row, r in zip(p, results):
        got = {t["class"]: t["probability"] for t in r["top"]}
        assert [t["class"] for t in r["top"]][0] == int(row.argmax())
        np.testing.assert_allclose([got[c] for c in range(10)], row, rtol=1e-4)
    # The PNG (8-bit rounding of the same image) gets the same ranking of the top class.
    assert results[3]["top"][0]["class"] == results[0]["top"][0]["class"]


def test_predict_table_and_errors(trained, tmp_path, capsys):
    batch = tmp_path / "one.npy"
    np.save(batch, trained["images"][:1].astype(np.float32))
    assert main(["predict", trained["net"], "--weights", trained["ckpt"], str(batch),
                 "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{batch}[0]: ") and line.count("%") == 2
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((1, 8, 8), 3.0, np.float32))
    assert main(["predict", trained["net"], "--weights", trained["ckpt"], str(bad)]) == 1
    assert "must lie in [0, 1]" in capsys.readouterr().err
    assert main(["predict", trained["net"], str(batch)]) == 1
    assert "needs --weights" in capsys.readouterr().err
    assert main(["predict", trained["net"], "--weights", trained["ckpt"],
                 str(tmp_path / "nope.png")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", trained["net"], "--weights", trained["ckpt"], str(batch),
                 "--top", "0"]) == 1
    assert "--top" in capsys.readouterr().err


def test_checkpoint_without_preprocessing_record_is_rebuilt(trained, tmp_path, capsys):
    # A checkpoint from before the record existed: the record is rebuilt from the training
    # data named in its config, and predictions do not change.
    from netdsl.train.checkpoint import save_checkpoint
    ck = load_checkpoint(trained["ckpt"])
    meta = {k: v for k, v in ck["meta"].items() if k != "preprocess"}
    old = tmp_path / "old.npz"
    save_checkpoint(str(old), params=ck["params"], optimizer_state={}, epoch=1, step=5,
                    metrics={}, meta=meta)
    batch = tmp_path / "b.npy"
    np.save(batch, trained["images"][:4].astype(np.float32))
    outs = []
    for weights in (trained["ckpt"], str(old)):
        assert main(["predict", trained["net"], "--weights", weights, str(batch),
                     "--format", "json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1]
    # Without a record and without a config there is nothing to go on: a clear error.
    bare = tmp_path / "bare.npz"
    save_checkpoint(str(bare), params=ck["params"], optimizer_state={}, epoch=0, step=0,
                    metrics={}, meta={})
    assert main(["predict", trained["net"], "--weights", str(bare), str(batch)]) == 1
    assert "does not say how its training images were preprocessed" in capsys.readouterr().err


def test_rgb_png_is_converted_like_training_data(trained, tmp_path, capsys):
    # An RGB image of a grey digit (R = G = B) gives the grey image's probabilities.
    Image = pytest.importorskip("PIL.Image")
    grey = (trained["images"][-1] * 255).round().astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    assert main(["predict", trained["net"], "--weights", trained["ckpt"],
                 str(tmp_path / "g.png"), str(tmp_path / "rgb.png"), "--format", "json"]) == 0
    g, rgb = json.loads(capsys.readouterr().out)
    assert [t["class"] for t in g["top"]] == [t["class"] for t in rgb["top"]]
    np.testing.assert_allclose([t["probability"] for t in g["top"]],
                               [t["probability"] for t in rgb["top"]], rtol=1e-3)


@pytest.mark.parametrize("command", ["export", "import", "predict", "eval"])
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"netdsl {command} " in out


def test_safetensors_weights(trained, tmp_path, capsys):
    out = tmp_path / "lenet5.safetensors"
    assert main(["export", trained["net"], "--weights", trained["ckpt"], "-o", str(out)]) == 0
    assert "tensors (safetensors)" in capsys.readouterr().out
    ck = load_checkpoint(trained["ckpt"])
    # The official reader sees the same arrays under the checkpoint's key names.
    st = pytest.importorskip("safetensors.numpy")
    tensors = st.load_file(str(out))
    expected = {f"param/{n}/{k}": v for n, t in ck["params"].items() for k, v in t.items()}
    assert sorted(tensors) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(tensors[key], value)
    # predict reads the file (weights and preprocessing record) like the checkpoint.
    batch = tmp_path / "b.npy"
    np.save(batch, trained["images"][:3].astype(np.float32))
    outs = []
    for weights in (trained["ckpt"], str(out)):
        assert main(["predict", trained["net"], "--weights", weights, str(batch),
                     "--format", "json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1]
    # A file written by the official writer reads back too.
    other = tmp_path / "official.safetensors"
    st.save_file(expected, str(other))
    from netdsl.interchange.safetensors_io import read_safetensors
    back = read_safetensors(str(other))["params"]
    for node, t in ck["params"].items():
        for k, v in t.items():
            np.testing.assert_array_equal(back[node][k], v)


def test_crop_ink_cuts_the_bounding_box_into_a_square():
    from netdsl.data.preprocess import crop_ink
    a = np.zeros((10, 12, 1), np.float32)
    a[2:5, 3:9, 0] = 1.0          # ink: 3 rows × 6 columns
    a[0, 0, 0] = 0.05             # below 10% of the brightest: background
    out = crop_ink(a)
    expected = np.zeros((6, 6, 1), np.float32)
    expected[1:4, :, 0] = 1.0     # centred vertically in a 6×6 square
    np.testing.assert_array_equal(out, expected)
    blank = np.zeros((4, 4, 1), np.float32)
    assert crop_ink(blank) is blank


def test_predict_crop_ink_finds_a_small_digit_in_a_big_frame(trained, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    digit = (trained["images"][-2] * 255).round().astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "tight.png")
    frame = np.zeros((40, 40), np.uint8)           # the same digit, small, off-centre
    frame[5:13, 20:28] = digit
    Image.fromarray(frame).save(tmp_path / "framed.png")
    assert main(["predict", trained["net"], "--weights", trained["ckpt"], "--crop-ink",
                 str(tmp_path / "tight.png"), str(tmp_path / "framed.png"),
                 "--format", "json"]) == 0
    tight, framed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([t["probability"] for t in framed["top"]],
                               [t["probability"] for t in tight["top"]], rtol=1e-5)


def test_exported_then_imported_net_predicts_like_the_original(trained, tmp_path, capsys):
    # The preprocessing record travels in the ONNX metadata, so the imported net prepares
    # images exactly as the original checkpoint does.
    pytest.importorskip("onnx")
    model = tmp_path / "lenet5.onnx"
    assert main(["export", trained["net"], "--weights", trained["ckpt"], "-o", str(model)]) == 0
    assert main(["import", str(model), "-o", str(tmp_path / "back.net")]) == 0
    assert "preprocessing netdsl export stored" in capsys.readouterr().out
    batch = tmp_path / "b.npy"
    np.save(batch, trained["images"][:5].astype(np.float32))
    outs = []
    for net, weights in ((trained["net"], trained["ckpt"]),
                         (str(tmp_path / "back.net"), str(tmp_path / "back.npz"))):
        assert main(["predict", net, "--weights", weights, str(batch), "--top", "10",
                     "--format", "json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    for a, b in zip(*outs):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]],
                                   [t["probability"] for t in b["top"]], rtol=1e-5, atol=1e-7)


def test_eval_plot_draws_the_confusion_matrix(trained, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    svg = tmp_path / "confusion.svg"
    assert main(["eval", trained["net"], "--weights", trained["ckpt"], "--data",
                 trained["spec"], "--format", "json", "--plot", str(svg)]) == 0
    report = json.loads(capsys.readouterr().out)
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "predicted class" in text
    assert f"{100 * report['accuracy']:.2f}%" in text
    png = tmp_path / "confusion.png"
    assert main(["eval", trained["net"], "--weights", trained["ckpt"], "--data",
                 trained["spec"], "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", trained["net"], "--weights", trained["ckpt"], "--data",
                 trained["spec"], "--plot", str(tmp_path / "no" / "c.png")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_missing_optional_packages_are_clear_errors(trained, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)      # import onnx now raises ImportError
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main(["export", trained["net"], "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "needs the 'onnx' package" in err and "pip install 'netdsl[onnx]'" in err
    assert main(["import", str(tmp_path / "x.onnx"), "-o", str(tmp_path / "x.net")]) == 1
    assert "needs the 'onnx' package" in capsys.readouterr().err
    png = tmp_path / "d.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["predict", trained["net"], "--weights", trained["ckpt"], str(png)]) == 1
    assert "needs Pillow" in capsys.readouterr().err


def test_predict_refuses_a_map_of_scores():
    from netdsl.compile.compiler import compile_text
    from netdsl.core.errors import NetdslError
    from netdsl.runtime.executor import Executor
    from netdsl.layers import lookup
    from netdsl.tools.predict import logits_of
    from netdsl.interchange.trained import Trained
    if lookup("softmax_xent2d") is None:
        pytest.skip("no per-position loss layer")
    c = compile_text("INPUT(6x6x1) -> CONV(3, 1) -> SOFTMAX_XENT2D", mode="infer")
    t = Trained(c.graph, Executor(c.graph).params)
    with pytest.raises(NetdslError) as info:
        logits_of(t, np.zeros((1, 6, 6, 1), np.float32))
    assert "predicts a 6×6×3 map of scores" in info.value.message
