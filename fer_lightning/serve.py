"""The serve command: a trained model behind HTTP (LitServe), with a page to try it in a browser.

    fer-serve ckpt_path=<run folder, .ckpt file or exported .onnx> [port=8000] [max_batch_size=8]
    python -m fer_lightning.serve ckpt_path=...

``POST /predict`` with an image (a multipart upload or the raw body) answers its label, the probability of every
class and the face box, as ``fer-predict`` would classify the same file; ``/`` is the page (a photo or the camera),
``/health``, ``/info`` and ``/metrics`` describe the server. Needs the optional extra ``serve``. The server:
:mod:`fer_lightning.deploy.serving`. Bad options: one line on stderr, exit code 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.startup import checkpoint_option, command, fail, start_command
from fer_lightning.errors import FERError
from fer_lightning.runtime.optional import require

__all__ = ["main"]


@command
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
def main(cfg: DictConfig) -> None:
    start_command(cfg)
    try:
        if not cfg.ckpt_path:
            raise FERError("give ckpt_path=<a fer-lightning checkpoint, its run folder, or an exported .onnx file>")
        require("litserve", "serve", "fer-serve")
        require("multipart", "serve", "fer-serve")
        checkpoint_option(cfg)
        from fer_lightning.deploy.serving import build_server, run

        server = build_server(
            str(cfg.ckpt_path), accelerator=cfg.accelerator, devices=cfg.devices,
            workers_per_device=cfg.workers_per_device, max_batch_size=cfg.max_batch_size,
            batch_timeout=cfg.batch_timeout, max_bytes=cfg.max_bytes, max_pixels=cfg.max_pixels,
            threads=cfg.threads, timeout=cfg.timeout)
    except FERError as e:
        fail(e)
    run(server, cfg.host, cfg.port, cfg.log_level)


if __name__ == "__main__":
    main()
