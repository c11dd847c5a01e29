"""Image files and preprocessing records as predict and show read them
(netdsl/data/images.py): bit depth honoured, size checked before decoding, every problem a
located user error."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from netdsl.core.errors import NetdslError
from netdsl.data.images import MAX_IMAGE_PIXELS, check_record, decode_image

Image = pytest.importorskip("PIL.Image")


def _digit():
    """A 28×28 grey '1': a bright vertical stroke on black, as in MNIST."""
    a = np.zeros((28, 28), np.float64)
    a[4:24, 12:16] = 1.0
    a[4:8, 10:12] = 0.6
    return a


def test_a_16_bit_grey_png_reads_as_the_8_bit_one(tmp_path):
    """Pillow's convert('L') clips 16-bit values to 255: the digit became a white square."""
    a = _digit()
    Image.fromarray((a * 255).round().astype(np.uint8)).save(tmp_path / "d8.png")
    Image.fromarray((a * 65535).round().astype(np.uint16)).save(tmp_path / "d16.png")
    eight = decode_image(str(tmp_path / "d8.png"), True)
    sixteen = decode_image(str(tmp_path / "d16.png"), True)
    assert sixteen.shape == eight.shape == (28, 28, 1)
    assert np.abs(sixteen - eight).max() <= 1 / 255
    assert sixteen.mean() < 0.2          # mostly black, not a white square


def test_float_tiffs_in_the_unit_range_are_read_and_others_refused(tmp_path):
    a = _digit().astype(np.float32)
    Image.fromarray(a, mode="F").save(tmp_path / "ok.tif")
    assert np.allclose(decode_image(str(tmp_path / "ok.tif"), True)[..., 0], a)
    Image.fromarray(a * 1000, mode="F").save(tmp_path / "hot.tif")
    with pytest.raises(NetdslError, match=r"float pixels 0\.\.1000"):
        decode_image(str(tmp_path / "hot.tif"), True)


def test_transparent_pixels_are_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255          # white, but fully transparent except one pixel
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    a = decode_image(str(tmp_path / "t.png"), False)
    assert a[0, 0].tolist() == [1, 1, 1] and a[1:].max() == 0


def _png_header_only(path, w, h):
    """A PNG whose header claims w×h pixels, with one tiny data chunk: decoding it would
    allocate w·h bytes, the header alone says so."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side,says", [(10_000, "10000×10000 = 100,000,000 pixels"),
                                       (100_000, "too large")])   # Pillow refuses at open
def test_an_image_too_large_is_refused_from_its_header(tmp_path, side, says):
    path = tmp_path / "bomb.png"
    _png_header_only(path, side, side)
    with pytest.raises(NetdslError, match=says) as err:
        decode_image(str(path), True)
    assert f"{MAX_IMAGE_PIXELS:,}" in err.value.message


def test_broken_and_odd_files_are_user_errors(tmp_path):
    cases = {"truncated.png": None, "text.png": b"not an image at all",
             "bigtext.png": None}
    a = (_digit() * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "truncated.png")
    data = (tmp_path / "truncated.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.png").write_bytes(cases["text.png"])
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text("comment", "x" * (4 << 20), zip=True)   # an oversized compressed text chunk
    Image.fromarray(a).save(tmp_path / "bigtext.png", pnginfo=info)
    for name in cases:
        try:
            decode_image(str(tmp_path / name), True)
        except NetdslError as err:
            assert name in err.message
    with pytest.raises(NetdslError, match="does not exist"):
        decode_image(str(tmp_path / "missing.png"), True)


@pytest.mark.parametrize("record,what", [
    ({"native_shape": [10 ** 6, 10 ** 6, 1], "mean": [0.1], "std": [0.3]}, "outside"),
    ({"native_shape": [28, 28, 1], "mean": [0.1], "std": [0.0]}, "positive"),
    ({"native_shape": [28, 28, 5000], "mean": [0] * 5000, "std": [1] * 5000}, "channels"),
    ({"native_shape": [28, 28, 2], "mean": [0], "std": [1, 1]}, "mean"),
    ({"native_shape": "28x28", "mean": [0.1], "std": [0.3]}, "native_shape"),
    ({"native_shape": [28, 28, 1], "mean": ["a"], "std": [0.3]}, "mean"),
    ({"native_shape": [28.5, 28, 1], "mean": [0.1], "std": [0.3]}, "native_shape"),
    (["not", "a", "dict"], "mapping"),
])
def test_malformed_records_are_refused_before_anything_is_sized(record, what):
    with pytest.raises(NetdslError, match=what):
        check_record(record, "ck.npz")


def test_predict_refuses_a_checkpoint_whose_record_asks_for_a_huge_image(tmp_path, capsys):
    """The checkpoint's native size decides what predict resizes to: 10⁶×10⁶ grew without
    bound; now it is a user error before any image is read."""
    from netdsl.cli.app import main
    from netdsl.train.checkpoint import load_checkpoint, save_checkpoint
    from conftest import NETS
    run = tmp_path / "run"
    assert main(["run", str(NETS / "lenet5.net"), "--epochs", "1", "--out", str(run),
                 "--quiet"]) == 0
    ck = load_checkpoint(str(run / "checkpoint.npz"))
    meta = ck["meta"]
    meta["preprocess"]["native_shape"] = [10 ** 6, 10 ** 6, 1]
    bad = tmp_path / "bad.npz"
    save_checkpoint(bad, params=ck["params"], optimizer_state={}, epoch=ck["epoch"],
                    step=ck["step"], metrics=ck["metrics"], meta=meta)
    Image.fromarray((_digit() * 255).astype(np.uint8)).save(tmp_path / "d.png")
    capsys.readouterr()
    assert main(["predict", str(NETS / "lenet5.net"), "--weights", str(bad),
                 str(tmp_path / "d.png")]) == 1
    assert "preprocessing record is malformed" in capsys.readouterr().err


def test_import_drops_a_preprocessing_record_that_asks_for_a_huge_image(tmp_path, capsys):
    """An ONNX file's netdsl.preprocess metadata is copied into the imported checkpoint: one
    whose native size is 10⁶×10⁶ made predict grow without bound. It is dropped (with the
    note that images are fed as they are) and predict stays bounded."""
    onnx = pytest.importorskip("onnx")
    import json as _json
    from netdsl.cli.app import main
    from netdsl.interchange.onnx_export import PREPROCESS_KEY
    from conftest import NETS
    run = tmp_path / "run"
    assert main(["run", str(NETS / "lenet5.net"), "--epochs", "1", "--out", str(run),
                 "--quiet"]) == 0
    model_path = tmp_path / "m.onnx"
    assert main(["export", str(NETS / "lenet5.net"), "--weights", str(run / "checkpoint.npz"),
                 "-o", str(model_path)]) == 0
    model = onnx.load(str(model_path))
    prop = next(p for p in model.metadata_props if p.key == PREPROCESS_KEY)
    record = _json.loads(prop.value)
    record["native_shape"] = [10 ** 6, 10 ** 6, 1]
    prop.value = _json.dumps(record)
    onnx.save(model, str(model_path))
    capsys.readouterr()
    assert main(["import", str(model_path), "-o", str(tmp_path / "i.net")]) == 0
    assert "predict feeds images scaled to [0, 1]" in capsys.readouterr().out
    Image.fromarray((_digit() * 255).astype(np.uint8)).save(tmp_path / "d.png")
    assert main(["predict", str(tmp_path / "i.net"), "--weights", str(tmp_path / "i.npz"),
                 str(tmp_path / "d.png")]) == 0
