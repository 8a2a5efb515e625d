"""Small datasets on the training device (data.on_device): the same batches, random draws and results as the
DataLoader path."""

import pytest
import torch
from torch.utils.data import DataLoader

from fer_lightning.data.datamodule import JAFFEDataModule
from fer_lightning.data.dataset import IndexedImages
from fer_lightning.data.device import DeviceBatches
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.io.chunked import open_or_build

from .test_train import VOLATILE


def store(n=37):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % 7, {"hog": torch.randn(n, 5, generator=g)}


def on_disk(arrays):
    """The same arrays as a (temporary) chunked store, as the host path reads them."""
    def fill(start, stop, out):
        for k, a in arrays.items():
            out[k][start:stop] = a[start:stop].numpy()

    specs = {k: (tuple(a.shape[1:]), str(a.numpy().dtype)) for k, a in arrays.items()}
    n = len(next(iter(arrays.values())))
    return open_or_build(None, "s", specs, n, fill, chunk=10)


@pytest.mark.parametrize(("shuffle", "drop_last"), [(True, False), (True, True), (False, False)])
def test_same_batches_and_random_draws_as_a_dataloader(shuffle, drop_last):
    images, targets, features = store()
    split = torch.tensor([3, 5, 8, 13, 21, 34, 1, 2, 0, 30, 31, 4, 6, 9, 10, 11, 12, 14, 15, 16])
    host = DataLoader(IndexedImages(on_disk({"images": images}), targets, split, on_disk(features)), batch_size=6,
                      shuffle=shuffle, drop_last=drop_last)
    device = DeviceBatches(images, targets, split, features, batch_size=6, shuffle=shuffle, drop_last=drop_last)
    assert len(device) == len(host)
    state = torch.get_rng_state()
    iter(device)  # Lightning checks that a loader is iterable: no random draw for that
    assert torch.equal(state, torch.get_rng_state())
    for _ in range(2):  # two epochs, and the global RNG afterwards
        torch.manual_seed(5)
        a = list(host)
        after_a = torch.rand(3)
        torch.manual_seed(5)
        b = list(device)
        after_b = torch.rand(3)
        assert len(a) == len(b) and torch.equal(after_a, after_b)
        for x, y in zip(a, b, strict=True):
            for k in ("image", "label", "index"):
                assert torch.equal(x[k], y[k]), k
            assert torch.equal(x["features"]["hog"], y["features"]["hog"])


@pytest.mark.slow
def test_same_results_as_the_host_path(make_cfg, tmp_path, caplog):
    caplog.set_level("INFO")
    on = train(make_cfg("trainer.max_epochs=1", "data.on_device=true", out=tmp_path / "on"))
    assert "data on cpu: 210 images" in caplog.text
    caplog.clear()
    off = train(make_cfg("trainer.max_epochs=1", "data.on_device=false", out=tmp_path / "off"))
    assert "data on cpu" not in caplog.text
    assert {k: v for k, v in on.items() if k not in VOLATILE} == {k: v for k, v in off.items() if k not in VOLATILE}
    assert (tmp_path / "on" / "predictions.csv").read_text() == (tmp_path / "off" / "predictions.csv").read_text()


def test_on_device_option(tmp_path):
    with pytest.raises(FERError, match="data.on_device=gpu is unknown"):
        JAFFEDataModule(on_device="gpu", cache_dir=str(tmp_path))
    assert JAFFEDataModule(on_device=True, cache_dir=str(tmp_path)).loader.on_device == "true"


def test_an_epoch_order_of_its_own_draws_nothing_from_the_global_generator():
    """With the training order of fer_lightning.runtime.seeding (what exact resume needs), both paths give the same
    batches, a function of (seed, epoch) only, and leave torch's global generator as it was."""
    from fer_lightning.runtime.seeding import EpochShuffle

    images, targets, features = store()
    split = torch.arange(3, 23)
    epoch = [0]
    host = DataLoader(IndexedImages(on_disk({"images": images}), targets, split), batch_size=6,
                      sampler=EpochShuffle(len(split), 7, lambda: epoch[0]), generator=torch.Generator())
    device = DeviceBatches(images, targets, split, None, batch_size=6, shuffle=True,
                           sampler=EpochShuffle(len(split), 7, lambda: epoch[0]))
    orders = []
    for e in (0, 1, 0):
        epoch[0] = e
        state = torch.get_rng_state()
        a, b = [x["index"] for x in host], [x["index"] for x in device]
        assert torch.equal(state, torch.get_rng_state())
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        orders.append(torch.cat(a))
    assert not torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])
