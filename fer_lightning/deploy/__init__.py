"""Using a trained model: classifying images (:mod:`~fer_lightning.deploy.prediction`), videos and cameras
(:mod:`~fer_lightning.deploy.video`), exporting to ONNX or ``torch.export`` (:mod:`~fer_lightning.deploy.exporters`)
and running an exported file (:mod:`~fer_lightning.deploy.exported`)."""
