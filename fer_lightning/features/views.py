"""Augmented views of the training images for heads on fixed features (``model.augment.copies``).

A head on fixed features (the handcrafted model, the hybrid with a frozen backbone) looks its blocks up from
tables computed once from the un-augmented images, so the training augmentation never reaches it: it sees 133
JAFFE training points, and PCA fitted on them has at most 132 directions. :class:`AugmentedViews` computes the
blocks of ``copies`` augmented copies of every training image once (the data module's training augmentation,
seeded by the split's seed), so that

* the fitted layers (z-score, PCA) are fitted on the training images *and* their copies, and
* each training epoch shows every training image as one of its ``copies + 1`` views (view 0: the image itself),
  drawn per image from ``(seed, epoch)`` only, so a resumed run draws what an uninterrupted one did.

Validation and test images are never augmented and never enter a view. Memory: ``copies x n_train x D`` float32
values for the blocks that are looked up from tables (the handcrafted blocks when precomputed, the frozen GAP).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fer_lightning.features.extractor import blocks_in_batches, to_uint8, to_unit
from fer_lightning.runtime.seeding import epoch_seed

log = logging.getLogger(__name__)
# offsets the seed of the views from the seed of everything else drawn from data.seed
VIEW_SEED_SALT = 0x5EED_71E5


class AugmentedViews:
    """``copies`` augmented views of the training images ``rows`` of a dataset, as feature blocks.

    ``images``: the dataset's ``(N, 1, H, W)`` uint8 images; ``rows``: the training images' indices;
    ``augment``: ``(B, 1, H, W)`` float in ``[0, 1]`` -> the same, augmented (drawn from torch's global generator,
    which is forked and seeded here, so nothing else's draws change); ``compute``: ``(B, 1, H, W)`` uint8 ->
    ``{block: (B, D)}``, the blocks that training looks up from tables. Views: ``{block: (copies, n_rows, D)}``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        rows: Sequence[int],
        augment: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        compute: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        copies: int,
        seed: int,
        batch_size: int = 256,
    ) -> None:
        if int(copies) < 1:
            raise ValueError(f"copies must be 1 or more, got {copies}")
        self.copies, self.seed = int(copies), int(seed)
        self.rows = torch.as_tensor(list(rows), dtype=torch.long)
        self.position = torch.full((len(images),), -1, dtype=torch.long)  # dataset index -> row of the views
        self.position[self.rows] = torch.arange(len(self.rows))
        parts: dict[str, list[torch.Tensor]] = {}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(epoch_seed(self.seed ^ VIEW_SEED_SALT, 0))
            for _ in range(self.copies):
                copy = blocks_in_batches(lambda x: compute(to_uint8(augment(to_unit(x)))),
                                         images[self.rows], batch_size)
                for k, v in copy.items():
                    parts.setdefault(k, []).append(v)
        n = len(self.rows)
        self.blocks = {k: torch.cat(v).view(self.copies, n, -1) for k, v in parts.items()}
        self._drawn: tuple[int, torch.Tensor] | None = None
        log.info("augmented views: %d copies of %d training images (blocks %s, %.1f MiB)", self.copies, n,
                 ", ".join(self.blocks), sum(v.numel() for v in self.blocks.values()) * 4 / 2**20)

    def fit_blocks(self, fit_rows: Sequence[int], clean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``clean`` (the blocks of ``fit_rows``) followed by every view of those rows, block by block: what the
        fitted layers are fitted on. Blocks without views (computed on each batch) repeat the clean values."""
        pos = self.position[torch.as_tensor(list(fit_rows), dtype=torch.long)]
        if bool((pos < 0).any()):
            raise ValueError("fit rows must be training images")
        out = {}
        for k, v in clean.items():
            extra = self.blocks[k][:, pos].reshape(-1, v.shape[1]) if k in self.blocks else v.repeat(self.copies, 1)
            out[k] = torch.cat([v.float().cpu(), extra])
        return out

    def view_of(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The view (0: the image itself, ``c >= 1``: copy ``c``) each of the dataset images ``index`` shows in
        ``epoch``: a function of ``(seed, epoch, image)`` only."""
        if self._drawn is None or self._drawn[0] != epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed ^ VIEW_SEED_SALT, int(epoch) + 1))
            self._drawn = (int(epoch), torch.randint(0, self.copies + 1, (len(self.position),), generator=g))
        return self._drawn[1][index.cpu()]

    def swap(self, blocks: dict[str, torch.Tensor], index: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """``blocks`` of a training batch of the images ``index`` with each image's rows replaced by its view of
        ``epoch`` (blocks without views are left as they are)."""
        index = index.cpu()
        view = self.view_of(index, epoch)
        if bool((self.position[index] < 0).any()):
            raise ValueError("a training batch holds an image that is not a training image")
        take = (view > 0).nonzero().flatten()
        if len(take) == 0:
            return blocks
        copy, pos = view[take] - 1, self.position[index[take]]
        out = dict(blocks)
        for k, table in self.blocks.items():
            if k in out:
                x = out[k].clone()
                x[take.to(x.device)] = table[copy, pos].to(device=x.device, dtype=x.dtype)
                out[k] = x
        return out
