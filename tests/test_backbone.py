"""MobileNetV2 weights: the real ImageNet file, random init, state-dict paths, and the offline error."""

import urllib.error

import pytest
import torch
from skimage.data import chelsea

from fer_lightning.errors import FERError
from fer_lightning.models.backbone import (
    IMAGENET_WEIGHTS,
    MobileNetV2Backbone,
    imagenet_weights_file,
    load_mobilenet_v2,
)
from fer_lightning.models.components.heads import MLPHead


def _imagenet_or_skip():
    try:
        return load_mobilenet_v2("imagenet")
    except FERError as e:
        pytest.skip(f"ImageNet weights can be neither found nor downloaded here: {e}")


def test_real_imagenet_weights_see_a_cat():
    """Before the head is replaced, the real weights (TORCH_HOME cache or download) classify chelsea as a cat."""
    net = _imagenet_or_skip().eval()
    img = torch.from_numpy(chelsea()).permute(2, 0, 1)
    x = IMAGENET_WEIGHTS.transforms()(img).unsqueeze(0)
    with torch.no_grad():
        top5 = net(x).topk(5).indices[0].tolist()
    assert any(281 <= k <= 285 for k in top5), top5  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in range(281, 286)


def test_offline_error_names_torch_home_file_and_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    # torchvision -> torch.hub.load_state_dict_from_url -> torch.hub.download_url_to_file: cut the network there
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FERError) as e:
        load_mobilenet_v2("imagenet")
    msg = str(e.value)
    assert str(imagenet_weights_file()) in msg and str(tmp_path / "th") in msg
    assert "TORCH_HOME" in msg and "model.backbone.weights=none" in msg and "/path/to/" in msg
    assert "\n" not in msg


def test_none_and_state_dict_path(tmp_path):
    torch.manual_seed(0)
    net = load_mobilenet_v2("none")
    path = tmp_path / "mnv2.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # a DataParallel-style dict
    again = load_mobilenet_v2(str(path))
    for (k, a), b in zip(net.features.state_dict().items(), again.features.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_bad_paths(tmp_path):
    with pytest.raises(FERError, match="no such file"):
        load_mobilenet_v2(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(FERError, match="not a loadable PyTorch state dict"):
        load_mobilenet_v2(str(tmp_path / "junk.pth"))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FERError, match="not a MobileNetV2 state dict"):
        load_mobilenet_v2(str(tmp_path / "other.pth"))


def test_backbone_shapes_and_frozen_mode():
    bb = MobileNetV2Backbone(weights="none", trainable=False)
    assert all(not p.requires_grad for p in bb.parameters())
    parent = torch.nn.Sequential(bb)
    parent.train()
    assert not bb.training and not any(m.training for m in bb.modules())
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    out = parent(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 1280)
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())  # BN statistics unchanged
    assert MobileNetV2Backbone(weights="none", trainable=True).train().training


def test_paper_heads():
    deep = MLPHead(1280, 7, hidden=[256], dropout=[0.5])
    assert [type(m).__name__ for m in deep] == ["Linear", "ReLU", "Dropout", "Linear"]
    fusion = MLPHead(300, 7, hidden=[512, 256], dropout=[0.5, 0.3], input_dropout=0.5, batchnorm=True)
    names = [type(m).__name__ for m in fusion]
    assert names == ["Dropout", "BatchNorm1d", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.p for m in fusion if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5, 0.3]
    with pytest.raises(FERError, match="one rate per hidden layer"):
        MLPHead(10, 7, hidden=[5, 5], dropout=[0.5, 0.1, 0.2])
    assert [m.p for m in MLPHead(10, 7, hidden=[5, 5], dropout=0.2) if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    linear = MLPHead(10, 7, hidden=[], dropout=[0.5, 0.3])  # model.head.hidden=[] alone gives a linear head
    assert [type(m).__name__ for m in linear] == ["Linear"]
