"""Precision and speed options: trainer.precision, model.channels_last, model.compile; handcrafted features and
the fitted z-score/PCA layers stay exact under autocast."""

import logging
import shutil
from types import SimpleNamespace

import pytest
import torch

from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.models.components.fusion import FusionHead
from fer_lightning.models.deep import DeepFER

CUDA = torch.cuda.is_available()


def faces(n=6, size=64):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_handcrafted_features_and_fitted_layers_exact_under_autocast(device):
    x = faces().to(device)
    extractor = HandcraftedFeatures(hog={"scales": [64, 32]}, lbp={"scales": [64]}).to(device)
    head = FusionHead(extractor.block_dims(), 7, n_components=4).to(device)
    head.fit(extractor(x))
    reference = extractor(x.float() / 255)
    reduced = head.reduce(reference)
    dtypes = [torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
    for dtype in dtypes:
        with torch.autocast(device, dtype=dtype):
            blocks = extractor(x.float() / 255)
            under = head.reduce(blocks)
        for k, v in reference.items():
            assert blocks[k].dtype == torch.float32 and torch.equal(blocks[k], v), k
        assert under.dtype == torch.float32 and torch.equal(under, reduced)


def test_bf16_mixed_trains(make_cfg, caplog):
    with caplog.at_level(logging.INFO):
        m = train(make_cfg("model=hybrid", "trainer.precision=bf16-mixed", "trainer.fast_dev_run=true"))
    assert any("bfloat16 Automatic Mixed Precision" in r.getMessage() for r in caplog.records)
    assert m["n_test"] == 16 and 0.0 <= m["test/acc"] <= 1.0 and m["test/auroc"] == m["test/auroc"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_on_cuda(make_cfg, precision):
    m = train(make_cfg("trainer=gpu", f"trainer.precision={precision}", "trainer.fast_dev_run=true"))
    assert m["n_test"] == 16


def test_16_mixed_needs_a_gpu():
    if CUDA:
        pytest.skip("a GPU is here: test_mixed_precision_on_cuda runs 16-mixed")
    import pytorch_lightning as pl

    # float16 autocast with loss scaling is a GPU feature: on the CPU Lightning runs bf16-mixed instead (warned)
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU"):
        trainer = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False, enable_progress_bar=False)
    assert trainer.precision == "bf16-mixed"


def test_channels_last_same_outputs(make_cfg):
    torch.manual_seed(0)
    plain = DeepFER(["a", "b"], backbone={"weights": "none"}).eval()
    fast = DeepFER(["a", "b"], backbone={"weights": "none"}, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    conv = fast.backbone.features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = faces(4).float() / 255
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
    m = train(make_cfg("model.channels_last=true", "trainer.fast_dev_run=true"))
    assert m["n_test"] == 16


@pytest.mark.parametrize(("device", "precision", "expected"), [
    ("cpu", "32-true", True), ("cuda", "bf16-mixed", True), ("cuda", "16-mixed", True), ("cuda", "32-true", False)])
def test_channels_last_auto_follows_the_trainers_device_and_precision(device, precision, expected):
    model = DeepFER(["a", "b"], backbone={"weights": "none"}, channels_last="auto")
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), precision=precision)
    model.configure_model()
    assert model.backbone.channels_last is expected
    assert model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last) is expected


def test_channels_last_other_values_are_refused_in_one_line():
    with pytest.raises(FERError, match=r"^model.channels_last=maybe: give true, false or auto"):
        DeepFER(["a", "b"], backbone={"weights": "none"}, channels_last="maybe")


def test_deep_training_on_the_cpu_is_channels_last_by_default(make_cfg):
    """The default (auto) trains the CNN in channels-last memory format on the CPU: the checkpoint's convolution
    weights keep that layout, load into a model in the plain layout, and classify as it does."""
    cfg = make_cfg("trainer.max_epochs=1")
    assert cfg.model.channels_last == "auto"
    m = train(cfg)
    state = torch.load(m["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    conv = state["backbone.features.0.0.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast = DeepFER.from_checkpoint(m["best_checkpoint"]).eval()
    plain = DeepFER(list(fast.class_names), backbone={"weights": "none"}, head=fast.hparams["head"],
                    channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    fast.configure_model()
    x = faces(4).float() / 255
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)


def test_gap_features_do_not_depend_on_which_layout_filled_the_cache(make_cfg, tmp_path):
    """A frozen backbone's GAP features are cached per dataset, weights and device; they are computed when the
    model is set up, before ``channels_last`` applies: a hybrid with ``channels_last=true`` and one without build
    the same table, bit for bit, so a run's numbers do not depend on which of them filled the cache first."""
    tables, cache = {}, tmp_path / "cache"
    for channels_last in ("true", "false"):
        train(make_cfg("model=hybrid", f"model.channels_last={channels_last}", "trainer.fast_dev_run=true",
                       f"data.cache_dir={cache}", out=tmp_path / f"run-{channels_last}"))
        (table,) = [p for p in cache.glob("gap-*") if p.is_dir()]
        tables[channels_last] = (table.name, (table / "deep.npy").read_bytes())
        shutil.rmtree(table)  # the next run computes its own
    assert tables["true"] == tables["false"]


def test_compile_wraps_the_backbone_and_keeps_the_state_dict():
    """Compilation itself takes minutes for MobileNetV2 on 2 CPU cores: here the wiring (lazy, nothing runs);
    test_compiled_training_on_cuda trains with it where there is a GPU."""
    plain = DeepFER(["a", "b"], backbone={"weights": "none"})
    compiled = DeepFER(["a", "b"], backbone={"weights": "none"}, compile="aot_eager")
    compiled.configure_model()
    assert compiled.backbone._compiled_call_impl is not None and plain.backbone._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.configure_model()  # a second fit/test does not compile again
    assert compiled.hparams["compile"] == "aot_eager"


@pytest.mark.gpu
def test_compiled_training_on_cuda(make_cfg):
    m = train(make_cfg("trainer=gpu", "model.compile=true", "model.channels_last=true", "trainer.fast_dev_run=true"))
    assert m["n_test"] == 16
