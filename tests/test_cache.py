"""The decoded-image cache is reused, and invalidated by file or setting changes."""

import os

import fer_lightning.data.cache as cache_mod
import pytest
import torch

from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.data.store import decode_store


def _forbid_decoding(monkeypatch):
    def boom(path):
        raise AssertionError(f"decoded {path} although the cache should have been used")

    monkeypatch.setattr(cache_mod, "read_grey", boom)


def test_second_load_does_not_decode(jaffe_dir, tmp_path, monkeypatch):
    cdir = tmp_path / "c"
    first = decode_store(scan_jaffe(jaffe_dir), 48, cdir, name="jaffe")
    assert first.images.shape == (210, 1, 48, 48) and first.images.dtype == torch.uint8
    assert len(list(cdir.glob("*.pt"))) == 1
    _forbid_decoding(monkeypatch)
    second = decode_store(scan_jaffe(jaffe_dir), 48, cdir, name="jaffe")
    assert torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint
    assert second.labels == first.labels and second.files == first.files


def test_changes_invalidate(jaffe_dir, tmp_path, monkeypatch):
    cdir = tmp_path / "c"
    base = decode_store(scan_jaffe(jaffe_dir), 48, cdir)
    assert decode_store(scan_jaffe(jaffe_dir), 32, cdir).fingerprint != base.fingerprint  # image size
    f = next(iter(sorted(jaffe_dir.iterdir())))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touched file
    assert decode_store(scan_jaffe(jaffe_dir), 48, cdir).fingerprint != base.fingerprint
    f.unlink()  # a removed file
    assert len(decode_store(scan_jaffe(jaffe_dir), 48, cdir).labels) == 209


def test_corrupt_cache_file_is_rebuilt(jaffe_dir, tmp_path):
    cdir = tmp_path / "c"
    good = decode_store(scan_jaffe(jaffe_dir), 48, cdir)
    (entry,) = cdir.glob("*.pt")
    entry.write_bytes(b"truncated")
    again = decode_store(scan_jaffe(jaffe_dir), 48, cdir)
    assert torch.equal(again.images, good.images)
    assert torch.load(entry, weights_only=True)["images"].shape == good.images.shape


def test_datamodule_reuses_cache(jaffe_dir, tmp_path, monkeypatch):
    from fer_lightning.data import JAFFEDataModule

    JAFFEDataModule(root=str(jaffe_dir), image_size=48, cache_dir=str(tmp_path / "c")).prepare_data()
    _forbid_decoding(monkeypatch)
    dm = JAFFEDataModule(root=str(jaffe_dir), image_size=48, cache_dir=str(tmp_path / "c"))
    dm.prepare_data()
    dm.setup()
    assert len(dm.split.test) == 57


@pytest.mark.parametrize("size", [48])
def test_no_cache_dir_still_works(jaffe_dir, size):
    assert decode_store(scan_jaffe(jaffe_dir), size, None).images.shape[0] == 210
