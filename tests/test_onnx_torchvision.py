"""torchvision's classification nets, exported by ``torch.onnx.export`` (opset 17) and imported
with ``netdsl import``: netdsl's logits against PyTorch's own, relative L2 error ≤ 1e-5 (float32),
for each net freshly built with its default initialisation and once more with random BN
statistics and affine parameters and random biases (default init leaves them 0/1, which would
hide a mis-mapped bias or normalisation). Skips without torch and torchvision."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")

MODELS = ["alexnet", "vgg11", "vgg16_bn", "resnet18", "resnet50", "googlenet", "squeezenet1_1",
          "densenet121", "mobilenet_v2", "inception_v3", "shufflenet_v2_x1_0", "efficientnet_b0",
          "mnasnet1_0"]


def randomise(model, torch, seed: int) -> None:
    """Random BN running statistics and affine parameters, random biases (in place)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                uniform(m.running_mean, -0.5, 0.5)
                uniform(m.running_var, 0.5, 2.0)
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.5, 0.5)
            elif getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
                uniform(m.bias, -0.2, 0.2)


def compare(name: str, random_stats: bool, tmp_path, batch: int = 2) -> dict:
    """Export torchvision's ``name``, import it with `netdsl import`, run both on a random
    input; returns params, the relative L2 error of the logits and the import time."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from netdsl.cli.app import main
    from netdsl.interchange.trained import load_trained
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(torchvision.models, name)(weights=None).eval()
        if random_stats:
            randomise(model, torch, seed=1)
        size = 299 if name == "inception_v3" else 224
        path = tmp_path / f"{name}.onnx"
        # dynamo=False: the TorchScript exporter; the dynamo one needs onnxscript
        torch.onnx.export(model, torch.zeros(1, 3, size, size), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["logits"])
    start = time.perf_counter()
    assert main(["import", str(path), "-o", str(tmp_path / f"{name}.net")]) == 0
    seconds = time.perf_counter() - start
    t = load_trained(str(tmp_path / f"{name}.net"), str(tmp_path / f"{name}.npz"))
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy().astype(np.float64)
    got = t.executor().forward(x.transpose(0, 2, 3, 1)).logits.astype(np.float64)
    return {"params": sum(p.numel() for p in model.parameters()), "import_s": seconds,
            "rel": float(np.linalg.norm(got - want) / np.linalg.norm(want))}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("random_stats", [False, True], ids=["default", "random_bn"])
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_imports_exactly(name, random_stats, tmp_path):
    result = compare(name, random_stats, tmp_path)
    print(f"{name} {'random' if random_stats else 'default'}: {result}")   # the docs' table
    assert result["rel"] <= 1e-5, result
