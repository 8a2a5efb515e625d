"""The CUDA code paths that training, evaluation and prediction take: augmentation, metrics and a classifier on the
device give the CPU's results; data loaders pin host memory only for a CUDA trainer."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fer_lightning.data import JAFFEDataModule
from fer_lightning.data.augment import FaceAugment
from fer_lightning.deploy.inference import Classifier
from fer_lightning.models.components.metrics import ClassificationMetrics


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_loaders_pin_memory_only_for_a_cuda_trainer(cache_dir, monkeypatch, device, pinned):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, training wherever it is told
    dm = JAFFEDataModule(root=None, image_size=32, cache_dir=str(cache_dir), on_device="false")
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device(device)),
                                 fit_loop=None)
    monkeypatch.setattr(type(dm), "_epoch", property(lambda self: 0))
    assert dm.train_dataloader().pin_memory is pinned


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_augmentation_on_the_device_gives_the_cpus_pixels_for_the_same_draws(device):
    """kornia (0.8 and later) draws an augmentation's parameters on the device its module is on, from that device's
    generator: ``torch.manual_seed`` (and exact resume's reseeding) seeds it too, so a run repeats itself on its
    device, but CUDA's draws are not the CPU's (seen on an H200: a test that assumed so failed). Given the same
    draws, the device computes the CPU's pixels."""
    x = torch.rand(8, 1, 48, 48)
    augment = FaceAugment()
    torch.manual_seed(0)
    params = augment.aug.forward_parameters(x.shape)  # drawn on the CPU
    on_cpu = augment.aug(x.clone(), params=params)
    on_device = augment.to(device).aug(x.to(device), params=params)  # kornia moves the parameters to the batch
    assert on_device.device.type == device
    assert torch.allclose(on_device.cpu(), on_cpu, atol=1e-4)

    torch.manual_seed(1)
    cpu_state = torch.get_rng_state()
    first = augment(x.to(device))
    assert torch.equal(torch.get_rng_state(), cpu_state) is (device == "cuda")  # drawn from the device's generator
    torch.manual_seed(1)
    assert torch.equal(augment(x.to(device)), first)  # and repeated under the same seed


@pytest.mark.gpu
def test_metrics_on_cuda_equal_cpu():
    torch.manual_seed(0)
    probs, target = torch.rand(50, 7).softmax(-1), torch.randint(0, 7, (50,))
    names = [str(i) for i in range(7)]
    cpu, cuda = ClassificationMetrics(names), ClassificationMetrics(names).cuda()
    cpu.update(probs, target)
    cuda.update(probs.cuda(), target.cuda())
    expected, got = cpu.compute(), cuda.compute()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.allclose(got[k].cpu(), expected[k], atol=1e-6, equal_nan=True), k
    assert torch.equal(cuda.confusion_matrix().cpu(), cpu.confusion_matrix())


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["deep", "handcrafted"])
def test_classifier_on_cuda_equals_cpu(tiny_checkpoints, model):
    faces = [np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8) for i in range(4)]
    on_cpu = Classifier(tiny_checkpoints[model], device="cpu").probabilities(faces)
    on_cuda = Classifier(tiny_checkpoints[model], device="cuda")
    assert on_cuda.model.device.type == "cuda"
    np.testing.assert_allclose(on_cuda.probabilities(faces), on_cpu, atol=1e-4)
