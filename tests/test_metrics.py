"""torchmetrics-based metrics against scikit-learn."""

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from fer_lightning.data.classes import CLASS_NAMES
from fer_lightning.models.components.metrics import ClassificationMetrics


def test_against_sklearn():
    g = torch.Generator().manual_seed(0)
    target = torch.arange(70) % 7
    logits = torch.randn(70, 7, generator=g) + 2.0 * torch.nn.functional.one_hot(target, 7)
    probs = logits.softmax(-1)
    m = ClassificationMetrics(CLASS_NAMES)
    for chunk in range(0, 70, 16):  # accumulated over batches
        m.update(probs[chunk : chunk + 16], target[chunk : chunk + 16])
    out = {k: float(v) for k, v in m.compute().items()}
    y, p = target.numpy(), probs.argmax(-1).numpy()
    np.testing.assert_allclose(out["acc"], accuracy_score(y, p), atol=1e-6)
    np.testing.assert_allclose(out["precision_macro"], precision_score(y, p, average="macro"), atol=1e-6)
    np.testing.assert_allclose(out["recall_macro"], recall_score(y, p, average="macro"), atol=1e-6)
    np.testing.assert_allclose(out["f1_macro"], f1_score(y, p, average="macro"), atol=1e-6)
    np.testing.assert_allclose(out["auroc"], roc_auc_score(y, probs.numpy(), multi_class="ovr"), atol=1e-5)
    cm = confusion_matrix(y, p)
    np.testing.assert_array_equal(m.confusion_matrix().numpy(), cm)
    for k, c in enumerate(CLASS_NAMES):
        np.testing.assert_allclose(out[f"acc_{c}"], cm[k, k] / cm[k].sum(), atol=1e-6)
    m.reset()
    m.update(probs[:7], target[:7])
    assert m.confusion_matrix().sum() == 7
