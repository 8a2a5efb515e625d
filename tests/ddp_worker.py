"""Run by ``torch.multiprocessing.spawn`` from tests/test_distributed.py: a 2-process gloo group exercising
:func:`gather_outputs` and :func:`agree_on_fitted` with real collectives, without Lightning."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.distributed as dist

from fer_lightning.models.components.fitted import PCAProjection, ZScore, agree_on_fitted, fitted_digest
from fer_lightning.runtime.collectives import gather_outputs


class Broadcasting(SimpleNamespace):
    def broadcast(self, obj, src=0):
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def work(rank: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=2)
    strategy = Broadcasting(world_size=2, root_device=torch.device("cpu"))
    # rank 0 has 3 images in two batches, rank 1 has 2 (one of them a padded repeat of rank 0's index 4)
    batches = [[{"index": torch.tensor([4, 0]), "logits": torch.tensor([[1.0, 0.0], [0.0, 1.0]])},
                {"index": torch.tensor([2]), "logits": torch.tensor([[2.0, 2.0]])}],
               [{"index": torch.tensor([1, 4]), "logits": torch.tensor([[3.0, 0.0], [9.0, 9.0]])}]][rank]
    gathered = gather_outputs(batches, strategy)

    torch.manual_seed(rank)  # each process fits on different numbers: they must end up with rank 0's
    fitted = torch.nn.ModuleDict({"z": ZScore(4), "pca": PCAProjection(4, 2)})
    fitted["z"].fit(torch.randn(10, 4))
    fitted["pca"].fit(torch.randn(10, 4))
    before = fitted_digest(fitted)
    agree_on_fitted(fitted, strategy)
    torch.save({"gathered": gathered, "before": before, "after": fitted_digest(fitted)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
