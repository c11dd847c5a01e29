"""Pictures: curves and filters written by run, `show` filters and feature maps, confusion."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from netdsl.cli.app import main
from netdsl.compile.compiler import compile_text
from netdsl.runtime.executor import Executor
from netdsl.tools.plots import plot_confusion
from netdsl.tools.show import feature_maps

TINY = "net tiny\nINPUT -> C1: CONV(4, 3, pad=valid) -> RELU -> POOL -> FC\n"


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def test_run_writes_curves_and_filters_then_show_draws(tmp_path, capsys):
    net = tmp_path / "tiny.net"
    net.write_text(TINY)
    out = tmp_path / "run"
    assert main(["run", str(net), "--data", "digits", "--epochs", "2", "--out", str(out),
                 "--quiet"]) == 0
    for name in ("curves.png", "curves.svg", "filters.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "<svg" in (out / "curves.svg").read_text()[:500]
    img = tmp_path / "digit.npy"
    np.save(img, np.arange(64, dtype=np.float64).reshape(8, 8))
    maps = tmp_path / "maps.svg"
    assert main(["show", str(net), "--weights", str(out / "checkpoint.npz"), str(img),
                 "--layer", "C1", "-o", str(maps)]) == 0
    assert "<svg" in maps.read_text()[:500]
    assert main(["show", str(net), "--weights", str(out / "checkpoint.npz"), "--filters",
                 "-o", str(tmp_path / "f.png")]) == 0
    assert _png_size(tmp_path / "f.png")[0] > 50
    assert main(["show", str(net), "--weights", str(out / "checkpoint.npz"), str(img),
                 "--layer", "C11"]) == 1
    assert "did you mean" in capsys.readouterr().err


def test_feature_maps_equal_a_naive_convolution():
    g = compile_text(TINY, input_shape=(8, 8, 1), num_classes=10).graph
    ex = Executor(g, seed=1, passes="O0")
    x = np.random.default_rng(0).standard_normal((8, 8, 1)).astype(np.float32)
    got = feature_maps(ex, x, "C1")
    w = ex.params["C1"]["weight"].astype(np.float64)     # (3, 3, 1, 4)
    b = ex.params["C1"]["bias"].astype(np.float64)
    want = np.zeros((6, 6, 4))
    for i in range(6):
        for j in range(6):
            for f in range(4):
                want[i, j, f] = (x[i:i + 3, j:j + 3, :] * w[:, :, :, f]).sum() + b[f]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_plot_confusion(tmp_path):
    m = np.array([[5, 1], [0, 7]])
    (path,) = plot_confusion(m, ["cat", "dog"], tmp_path / "cm.png")
    assert _png_size(path)[0] > 50
    with pytest.raises(Exception, match="square"):
        plot_confusion(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")


def test_missing_matplotlib_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import netdsl.tools.plots
    from netdsl.cli.diag import Pictures
    from netdsl.core.errors import NetdslError

    def no_matplotlib():
        raise NetdslError("pictures need matplotlib, which is not installed", hint="pip install")
    monkeypatch.setattr(netdsl.tools.plots, "pyplot", no_matplotlib)
    monkeypatch.setattr(Pictures, "warned", False)
    net = tmp_path / "tiny.net"
    net.write_text(TINY)
    assert main(["run", str(net), "--data", "digits", "--epochs", "2", "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    assert capsys.readouterr().err.count("no pictures: pictures need matplotlib") == 1
    assert (tmp_path / "r" / "checkpoint.npz").exists()
