"""The decoded-image store: reused, invalidated by changes, checksummed, resumable, built by one process."""

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fer_lightning.data.decoded import decode_store
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.base import Record
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.io import chunked


def _forbid_decoding(monkeypatch):
    def boom(self):
        raise AssertionError(f"decoded {self.path} although the store should have been used")

    monkeypatch.setattr(Record, "read", boom)


def test_second_load_does_not_decode(jaffe_dir, tmp_path, monkeypatch):
    cdir = tmp_path / "c"
    first = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir, name="jaffe")
    assert first.images.shape == (210, 1, 48, 48) and first.images.dtype == torch.uint8
    assert [p.name for p in cdir.iterdir() if p.is_dir()] == [f"jaffe-48px-{first.fingerprint}"]
    _forbid_decoding(monkeypatch)
    second = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir, name="jaffe")
    assert torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint
    assert second.labels == first.labels and second.files == first.files


def test_changes_invalidate(jaffe_dir, tmp_path):
    cdir = tmp_path / "c"
    base = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir)
    assert decode_store(scan_jaffe(jaffe_dir), Preprocessing(32), cdir).fingerprint != base.fingerprint  # image size
    f = next(iter(sorted(jaffe_dir.iterdir())))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touched file
    assert decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir).fingerprint != base.fingerprint
    f.unlink()  # a removed file
    assert len(decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir).labels) == 209


def test_parallel_decode_equals_serial(jaffe_dir, tmp_path, monkeypatch):
    import fer_lightning.data.decoded as store_mod

    monkeypatch.setattr(store_mod, "POOL_MIN_ROWS", 1)
    serial = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), tmp_path / "a", workers=0)
    parallel = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), tmp_path / "b", workers=2)
    assert torch.equal(serial.images, parallel.images)
    assert np.array_equal(serial.hashes, parallel.hashes) and np.array_equal(serial.sizes, parallel.sizes)
    assert serial.sizes.tolist()[0] == [256, 256]


def test_flipped_byte_is_detected_and_rebuilt(jaffe_dir, tmp_path, caplog):
    """issue 10, item 14: a flipped byte inside a store file is caught by its checksum and rebuilt, saying so."""
    cdir = tmp_path / "c"
    good = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir).images.clone()
    (store,) = [p for p in cdir.iterdir() if p.is_dir()]
    raw = bytearray((store / "images.npy").read_bytes())
    raw[-1000] ^= 0xFF
    (store / "images.npy").write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        again = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir)
    assert torch.equal(again.images, good)
    assert any("does not match its checksum; rebuilding it" in r.message for r in caplog.records)
    (store / "meta.json").write_text("{ truncated")  # an unreadable record is rebuilt too
    with caplog.at_level(logging.WARNING):
        assert torch.equal(decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), cdir).images, good)
    assert any("unreadable or written with other settings" in r.message for r in caplog.records)


def _fill_rows(log_file):
    def fill(start, stop, arrays):
        with open(log_file, "a") as f:
            f.write(f"{start} {stop}\n")
        arrays["x"][start:stop] = np.arange(start, stop)[:, None] * np.ones(3)
        return {"rows": stop - start}
    return fill


class _Crash(BaseException):
    pass


def test_half_built_store_is_resumed_never_used(tmp_path, caplog):
    """A build that dies halfway leaves only ``<name>.partial``; the next build resumes the missing chunks."""
    calls = tmp_path / "calls.txt"
    fill = _fill_rows(calls)

    def crashing(start, stop, arrays):
        if start >= 40:
            raise _Crash
        return fill(start, stop, arrays)

    with pytest.raises(_Crash):
        chunked.open_or_build(tmp_path / "s", "demo", {"x": ((3,), "float32")}, 100, crashing, chunk=10)
    assert not (tmp_path / "s" / "demo").exists() and (tmp_path / "s" / "demo.partial").is_dir()
    with caplog.at_level(logging.WARNING):
        store = chunked.open_or_build(tmp_path / "s", "demo", {"x": ((3,), "float32")}, 100, fill, chunk=10)
    assert "resuming the half-built" in caplog.text and "4 of 10 chunks already done" in caplog.text
    assert np.array_equal(store.array("x")[:, 0], np.arange(100))
    assert len(calls.read_text().splitlines()) == 10  # every chunk filled exactly once over both builds
    assert [n["rows"] for n in store.notes] == [10] * 10
    # a partial whose progress record does not fit is restarted, and says so
    (tmp_path / "s" / "other.partial").mkdir()
    (tmp_path / "s" / "other.partial" / "progress.json").write_text(json.dumps({"rows": 7}))
    with caplog.at_level(logging.WARNING):
        chunked.open_or_build(tmp_path / "s", "other", {"x": ((3,), "float32")}, 100, fill, chunk=10)
    assert "restarting the half-built" in caplog.text


def _build_in_process(folder, log_file, delay):
    def fill(start, stop, arrays):
        time.sleep(delay)
        return _fill_rows(log_file)(start, stop, arrays)

    chunked.open_or_build(folder, "shared", {"x": ((3,), "float32")}, 60, fill, chunk=10)


def test_one_process_builds_the_others_wait(tmp_path):
    calls = tmp_path / "calls.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / "s", calls, 0.05)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(calls.read_text().splitlines()) == 6  # built once, by one of them


KILLED_BUILD = """
import sys, time
import numpy as np
from fer_lightning.io.chunked import open_or_build

def fill(start, stop, arrays):
    time.sleep(0.05)
    arrays["x"][start:stop] = np.arange(start, stop)[:, None] * np.ones(3)

if __name__ == "__main__":
    open_or_build(sys.argv[1], "killed", {"x": ((3,), "float32")}, 4000, fill, chunk=10, workers=2)
"""


@pytest.mark.slow
def test_sigkill_halfway_then_resume(tmp_path):
    """A build killed with SIGKILL (its worker processes too) is never used as complete; the next build resumes it
    and the result equals a clean build."""
    script = tmp_path / "build.py"
    script.write_text(KILLED_BUILD)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "s" / "killed.partial" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and len(json.loads(progress.read_text()).get("done", {}) if progress.exists()
                                         else {}) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(json.loads(progress.read_text())["done"])
    assert 3 <= done < 400 and not (tmp_path / "s" / "killed").exists()
    calls = tmp_path / "calls.txt"
    store = chunked.open_or_build(tmp_path / "s", "killed", {"x": ((3,), "float32")}, 4000, _fill_rows(calls),
                                  chunk=10)
    assert np.array_equal(store.array("x"), np.arange(4000)[:, None] * np.ones((1, 3), np.float32))
    assert len(calls.read_text().splitlines()) <= 400 - done + 2  # resumed, not restarted
    assert not (tmp_path / "s" / "killed.partial").exists()


def test_datamodule_reuses_store(jaffe_dir, tmp_path, monkeypatch):
    from fer_lightning.data import FERDataModule

    FERDataModule.from_options(root=str(jaffe_dir), image_size=48, cache_dir=str(tmp_path / "c")).prepare_data()
    _forbid_decoding(monkeypatch)
    dm = FERDataModule.from_options(root=str(jaffe_dir), image_size=48, cache_dir=str(tmp_path / "c"))
    dm.prepare_data()
    dm.setup()
    assert len(dm.split.test) == 57


def test_no_cache_dir_still_works(jaffe_dir):
    assert decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), None).images.shape[0] == 210


def test_store_pickles_as_its_folder(jaffe_dir, tmp_path):
    import pickle

    d = decode_store(scan_jaffe(jaffe_dir), Preprocessing(48), tmp_path / "c")
    d.images.sum()  # mapped in this process
    blob = pickle.dumps(d.store)
    assert len(blob) < 20_000  # the folder and its metadata, not 210 x 48 x 48 pixels
    assert torch.equal(pickle.loads(blob).tensor("images"), d.images)
