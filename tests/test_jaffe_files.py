"""The JAFFE file grammar, folder scanning and image decoding."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_lightning.data.images import read_grey, resize_grey
from fer_lightning.data.sources.jaffe import parse_jaffe_name, scan_jaffe
from fer_lightning.errors import FERError


@pytest.mark.parametrize(
    ("name", "subject", "label"),
    [
        ("KA.AN1.39.tiff", "KA", "anger"),
        ("KL.DI3.166.tiff", "KL", "disgust"),
        ("km.fe2.59.TIFF", "KM", "fear"),
        ("NM.HA1.95.tif", "NM", "happiness"),
        ("UY.NE1.113.TIF", "UY", "neutral"),
        ("YM.SA2.56.tiff", "YM", "sadness"),
        ("TM.SU1.190.tiff", "TM", "surprise"),
        ("MK.NE.113.tiff", "MK", "neutral"),  # no expression index
    ],
)
def test_parse_names(name, subject, label):
    r = parse_jaffe_name(Path("/data") / name)
    assert (r.subject, r.label) == (subject, label)


def test_unknown_code_names_file_and_codes():
    with pytest.raises(FERError) as e:
        parse_jaffe_name(Path("/data/KA.XX1.39.tiff"))
    msg = str(e.value)
    assert "KA.XX1.39.tiff" in msg and "unknown expression code 'XX'" in msg and "AN (anger)" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["KA_AN1_39.tiff", "KA.AN1.tiff", "photo.tiff"])
def test_bad_names_are_rejected_with_the_grammar(name):
    with pytest.raises(FERError, match=r"not a JAFFE file name.*KA\.AN1\.39\.tiff"):
        parse_jaffe_name(Path(name))


def test_scan_ignores_other_files_and_sorts(tmp_path):
    arr = np.zeros((8, 8), np.uint8)
    for n in ["KL.HA1.2.tiff", "KA.AN1.1.TIF"]:
        Image.fromarray(arr).save(tmp_path / n, format="TIFF")
    (tmp_path / "README.txt").write_text("JAFFE")
    (tmp_path / "sub").mkdir()
    recs = scan_jaffe(tmp_path)
    assert [r.path.name for r in recs] == ["KA.AN1.1.TIF", "KL.HA1.2.tiff"]


def test_scan_missing_and_empty_folders(tmp_path):
    with pytest.raises(FERError, match=r"data.root=.*nope is not a folder"):
        scan_jaffe(tmp_path / "nope")
    with pytest.raises(FERError, match=r"holds no \.tiff/\.tif images"):
        scan_jaffe(tmp_path)


def test_read_grey_modes(tmp_path):
    grey = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    # palette image with a grey palette -> exact grey values
    p = Image.frombytes("P", (64, 64), grey.tobytes())
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    p.save(tmp_path / "p.tiff")
    assert Image.open(tmp_path / "p.tiff").mode == "P"
    np.testing.assert_array_equal(read_grey(tmp_path / "p.tiff"), grey)
    # palette image with a colour palette -> luma of the palette colours
    p2 = Image.frombytes("P", (64, 64), grey.tobytes())
    p2.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    p2.save(tmp_path / "p2.tiff")
    expected = np.asarray(p2.convert("RGB").convert("L"))
    np.testing.assert_array_equal(read_grey(tmp_path / "p2.tiff"), expected)
    # RGB
    rgb = np.stack([grey, grey, grey], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.tiff")
    np.testing.assert_array_equal(read_grey(tmp_path / "rgb.tiff"), grey)
    # 16-bit
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.tiff")
    np.testing.assert_array_equal(read_grey(tmp_path / "g16.tiff"), grey)


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "KA.AN1.1.tiff"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(FERError, match=r"KA\.AN1\.1\.tiff: cannot read this image"):
        read_grey(bad)


def test_resize():
    arr = np.full((256, 256), 100, np.uint8)
    out = resize_grey(arr, 224)
    assert out.shape == (224, 224) and out.dtype == np.uint8 and (out == 100).all()
    assert resize_grey(arr, 256) is arr
