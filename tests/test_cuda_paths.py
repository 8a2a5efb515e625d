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


@pytest.mark.gpu
def test_augmentation_on_cuda_equals_cpu():
    x = torch.rand(8, 1, 48, 48)
    augment = FaceAugment()
    torch.manual_seed(0)
    on_cpu = augment(x.clone())
    torch.manual_seed(0)  # kornia draws its parameters from the CPU generator: the same draws on either device
    on_cuda = augment.cuda()(x.cuda())
    assert on_cuda.is_cuda and torch.allclose(on_cuda.cpu(), on_cpu, atol=1e-4)


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
