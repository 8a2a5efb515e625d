"""fer-export: ONNX and torch.export files of every model, equal to the PyTorch model; the exact LBP graph."""

import json

import numpy as np
import pytest
import torch
from skimage.feature import hog as sk_hog
from skimage.feature import local_binary_pattern
from torch import nn

from fer_lightning.data.decoded import decode_store
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.deploy.exported import ExportedModel
from fer_lightning.deploy.exporters import OPSET, export, metadata
from fer_lightning.errors import FERError
from fer_lightning.features.graph import hog_graph, lbp_codes_graph, lbp_histograms_graph
from fer_lightning.features.lbp import lbp_codes, lbp_histograms
from fer_lightning.models import load_model

from .conftest import run_cli
from .test_features import HOG_KW, _images

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def parity_images(synthetic_dir):
    return _images(synthetic_dir)


@pytest.fixture(scope="module")
def faces(synthetic_dir, cache_dir) -> torch.Tensor:
    """24 synthetic faces at the tiny checkpoints' 64 px, every expression."""
    records = scan_jaffe(synthetic_dir)[::9][:24]
    return decode_store(records, Preprocessing(64), cache_dir, name="export-faces").images


@pytest.mark.filterwarnings("ignore:Applying `local_binary_pattern` to floating-point")
def test_lbp_graph_is_exact(parity_images):
    for name, img in parity_images.items():
        ref = local_binary_pattern(img, 8, 1, method="uniform")
        np.testing.assert_array_equal(lbp_codes_graph(torch.from_numpy(img.copy())[None, None])[0, 0].numpy(), ref,
                                      err_msg=name)
    img = parity_images["synthetic_face_1"][:96, :96].astype(np.float64)
    for P, R in ((16, 2), (8, 1.5)):
        ref = local_binary_pattern(img, P, R, method="uniform")
        ours = lbp_codes_graph(torch.from_numpy(img)[None, None], P, R)[0, 0].numpy()
        np.testing.assert_array_equal(ours, ref, err_msg=f"P={P} R={R}")


def test_hog_and_histogram_graphs_equal_the_batched_ops(parity_images):
    batch = torch.from_numpy(np.stack([v for v in parity_images.values() if v.shape == (224, 224)]))[:, None]
    ours = hog_graph(batch)
    for i, img in enumerate(v for v in parity_images.values() if v.shape == (224, 224)):
        assert np.abs(ours[i].numpy() - sk_hog(img, **HOG_KW, feature_vector=True)).max() < 1e-5
    odd = torch.from_numpy(parity_images["odd_61x77"])[None, None]
    assert np.abs(hog_graph(odd)[0].numpy() - sk_hog(odd[0, 0].numpy(), **HOG_KW)).max() < 1e-5
    codes = lbp_codes(batch)
    for grid in ((7, 7), (5, 3)):  # 224 / 3: cells of unequal size
        assert torch.equal(lbp_histograms_graph(codes, 10, grid), lbp_histograms(codes, 10, grid))


class _Codes(nn.Module):
    def forward(self, x):
        return lbp_codes_graph(x)


@pytest.mark.slow
def test_lbp_codes_are_exact_in_onnxruntime(parity_images, tmp_path):
    """The float64 replay survives the ONNX conversion and onnxruntime's kernels bit for bit."""
    imgs = np.stack([v for v in parity_images.values() if v.shape == (224, 224)])[:, None]
    path = tmp_path / "lbp.onnx"
    program = torch.onnx.export(_Codes().eval(), (torch.from_numpy(imgs[:2]),), dynamo=True, opset_version=OPSET,
                                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}}, verbose=False)
    program.save(str(path))
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": imgs})[0]
    for i, img in enumerate(imgs[:, 0]):
        np.testing.assert_array_equal(got[i, 0], local_binary_pattern(img, 8, 1, method="uniform"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deep", "handcrafted", "hybrid"])
def test_exported_files_equal_the_pytorch_model(tiny_checkpoints, faces, tmp_path, model):
    ckpt = tiny_checkpoints[model]
    paths = export(ckpt, ["onnx", "pt2"], tmp_path / model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{model}.onnx", f"{model}.pt2"]  # no staged files left
    net = load_model(str(ckpt)).eval()
    with torch.no_grad():
        expected = net(faces.float() / 255).softmax(-1).numpy()
    for fmt, path in paths.items():
        exported = ExportedModel(path)
        meta = exported.metadata
        assert meta["model"] == model and meta["class_names"] == list(net.class_names)
        assert meta["image_size"] == 64 and meta["face_crop"] == {"mode": "none"}
        assert meta["input"]["dtype"] == "uint8" and meta["opset"] == (OPSET if fmt == "onnx" else None)
        for batch in (faces[:1], faces):  # the batch size is dynamic
            got = exported(batch.numpy())
            assert got.shape == (len(batch), 7) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected[: len(batch)], rtol=0, atol=1e-4, err_msg=f"{model} {fmt}")
    proto = onnx.load(str(paths["onnx"]))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["fer_lightning"])["model"] == model


@pytest.mark.slow
def test_export_cli_float_input_and_errors(tiny_checkpoints, faces, tmp_path):
    ckpt = tiny_checkpoints["handcrafted"]
    out = tmp_path / "hc.pt2"
    res = run_cli("fer_lightning.export", f"ckpt_path={ckpt}", "format=pt2", f"output={out}", "input_dtype=float32")
    assert res.returncode == 0, res.stderr[-2000:]
    exported = ExportedModel(out)
    assert exported.metadata["input"]["dtype"] == "float32"
    with torch.no_grad():
        expected = load_model(str(ckpt)).eval()(faces.float() / 255).softmax(-1).numpy()
    np.testing.assert_allclose(exported(faces.float() / 255), expected, rtol=0, atol=1e-4)
    before = out.read_bytes()
    res = run_cli("fer_lightning.export", f"ckpt_path={ckpt}", "format=pt2", f"output={out}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"fer-lightning: error: output={out} exists; give another output= " \
                                                  "or overwrite=true"
    assert out.read_bytes() == before


def test_export_errors(tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["handcrafted"]
    with pytest.raises(FERError, match="format=tflite is unknown"):
        export(ckpt, "tflite")
    with pytest.raises(FERError, match="input_dtype=float16 is unknown"):
        export(ckpt, "pt2", input_dtype="float16")
    with pytest.raises(FERError, match=r"ending in \.onnx"):
        export(ckpt, "onnx", tmp_path / "model.pt2")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(FERError, match="not a fer-lightning checkpoint"):
        export(tmp_path / "foreign.ckpt", "pt2")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(FERError, match="not a fer-lightning export|cannot read"):
        ExportedModel(tmp_path / "junk.onnx")


def test_metadata_records_the_checkpoints_preprocessing(tiny_checkpoints):
    ckpt = tiny_checkpoints["deep"]
    record = torch.load(ckpt, weights_only=True)
    meta = metadata(record, ckpt, load_model(record), "uint8")
    record = record["fer_lightning"]
    assert meta["face_crop"] == record["preprocessing"]["face_crop"] and meta["image_size"] == 64
    assert meta["checkpoint"]["file"] == ckpt.name and len(meta["checkpoint"]["sha256"]) == 64
