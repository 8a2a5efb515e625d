"""Atomic writes: the umask's permissions, and file names that are not UTF-8 written escaped."""

import json
import os
import stat

import pytest

from fer_lightning.errors import FERError
from fer_lightning.io import atomic
from fer_lightning.io.atomic import atomic_write_bytes, atomic_write_text, escape_surrogates, write_csv, write_json


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    for mask, expected in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
        umask(mask)
        atomic_write_text(tmp_path / f"a{mask}.txt", "x")
        write_json(tmp_path / f"m{mask}.json", {"a": 1})
        write_csv(tmp_path / f"p{mask}.csv", [{"f": "x"}], ["f"])
        atomic_write_bytes(tmp_path / f"c{mask}.pt", b"\x80\x02")
        with open(tmp_path / f"plain{mask}", "w"):  # what open() gives, the reference
            pass
        for name in (f"a{mask}.txt", f"m{mask}.json", f"p{mask}.csv", f"c{mask}.pt", f"plain{mask}"):
            assert mode(tmp_path / name) == expected, (name, oct(mode(tmp_path / name)))
    assert not list(tmp_path.glob("*.tmp"))


def test_non_utf8_file_names_are_written_escaped(tmp_path):
    name = os.fsdecode(b"happy/caf\xe9.jpg")  # a Latin-1 name as Python carries it: a lone surrogate
    assert escape_surrogates(name) == "happy/caf\\xe9.jpg" and escape_surrogates("été") == "été"
    write_csv(tmp_path / "p.csv", [{"file": name}], ["file"])
    write_json(tmp_path / "m.json", {"file": name})
    assert (tmp_path / "p.csv").read_bytes().decode("utf-8") == "file\nhappy/caf\\xe9.jpg\n"
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["file"] == name


def test_caches_honour_the_umask(tmp_path, umask):
    """The synthetic set, the decoded-image store and its checksums: what open() and mkdir() would give (0644 /
    0755 under umask 022), not mkstemp's 0600 or mkdtemp's 0700, so the users of a shared cache can read it."""
    from fer_lightning.data import JAFFEDataModule
    from fer_lightning.data.synthetic import ensure_synthetic

    umask(0o022)
    root = ensure_synthetic(tmp_path / "synthetic", n_subjects=2, per_expression=1, seed=0)
    dm = JAFFEDataModule(root=str(root), image_size=32, cache_dir=str(tmp_path / "cache"), decode_workers=1)
    dm.prepare_data()
    written = [p for p in tmp_path.rglob("*") if not p.name.endswith(".lock")]
    assert any(p.suffix == ".npy" for p in written)
    wrong = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written
             if mode(p) != (0o755 if p.is_dir() else 0o644)}
    assert not wrong


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """No room left: one FERError line naming the file, the earlier file unchanged, no temporary file left."""
    import errno

    write_json(tmp_path / "metrics.json", {"test/acc": 0.5})
    real_open = open

    def full(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", full, raising=False)
    with pytest.raises(FERError, match=r"metrics.json: the disk is full .* free some space in"):
        write_json(tmp_path / "metrics.json", {"test/acc": 0.9})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test/acc": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_full_disk_during_training_ends_with_one_line_and_leaves_no_checkpoint(make_cfg, tmp_path, monkeypatch):
    """The first checkpoint finds no room: one FERError line naming it, no partial checkpoint, no metrics.json."""
    import errno

    from fer_lightning.engine.training import train

    real_open = open

    def full(path, mode="r", *args, **kwargs):
        if "w" in mode and ".ckpt" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", full, raising=False)
    with pytest.raises(FERError, match=r"epoch_000.ckpt: the disk is full .* free some space in .*checkpoints"):
        train(make_cfg("model=handcrafted", "trainer.max_epochs=1", "logger=none", "callbacks.training_pictures=null"))
    run = tmp_path / "run"
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob("*.tmp")) and not (run / "metrics.json").exists()
