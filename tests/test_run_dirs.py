"""Run folders: a finished run is never written into (not even Hydra's .hydra/ record and log), and a folder of
an interrupted run only takes the run that resumes it from its own checkpoint."""

import os

import pytest

from fer_lightning.errors import FERError

from .conftest import run_cli


def interrupted_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("last.ckpt", "epoch_003.ckpt"):
        (folder / "checkpoints" / name).write_bytes(b"x")
    return folder


def test_interrupted_run_folder_takes_only_its_own_resume(tmp_path):
    from fer_lightning.runs.guard import check_output_dir

    run = interrupted_run(tmp_path / "run")
    check_output_dir(tmp_path / "new")  # a new folder: fine
    check_output_dir(run, resume_from=str(run / "checkpoints" / "last.ckpt"))  # resuming in place: fine
    with pytest.raises(FERError, match=r"holds the checkpoints of an interrupted run: resume it with "
                                       r"ckpt_path=.*run/checkpoints/last.ckpt"):
        check_output_dir(run)
    other = interrupted_run(tmp_path / "other")
    with pytest.raises(FERError, match="holds the checkpoints of another run"):
        check_output_dir(run, resume_from=str(other / "checkpoints" / "last.ckpt"))
    with pytest.raises(FERError, match="holds the checkpoints of a training run"):
        check_output_dir(run, training=False)  # an evaluation never writes into a training run
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    with pytest.raises(FERError, match="already holds a finished run"):
        check_output_dir(tmp_path / "done", training=False)


@pytest.mark.slow
def test_refused_runs_leave_the_folder_untouched(tmp_path, cache_dir):
    """The refusal comes before Hydra writes .hydra/ or its log, for train and evaluate."""
    done = tmp_path / "done"
    (done / ".hydra").mkdir(parents=True)
    files = {"metrics.json": "{}", ".hydra/overrides.yaml": "- data.seed=7\n", ".hydra/config.yaml": "a: 1\n",
             "train.log": "old log\n", "eval.log": "old log\n"}
    for name, text in files.items():
        (done / name).write_text(text)
        os.utime(done / name, (1, 1))
    for args in (("fer_lightning.train", "experiment=smoke", f"hydra.run.dir={done}"),
                 ("fer_lightning.evaluate", "ckpt_path=x.ckpt", f"hydra.run.dir={done}")):
        res = run_cli(*args, f"data.cache_dir={cache_dir}", cwd=tmp_path)
        assert res.returncode == 2, res.stderr[-2000:]
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("fer-lightning: error: ") and "already holds" in last and str(tmp_path) in last
        assert sorted(p.relative_to(done).as_posix() for p in done.rglob("*") if p.is_file()) == sorted(files)
        for name, text in files.items():
            assert (done / name).read_text() == text and os.stat(done / name).st_mtime == 1, name


def test_a_sweep_folder_holding_finished_runs_is_refused(tmp_path):
    """The guard raises (it never prints or exits itself); the command prints the refusal as its one error line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.runs.guard import RunDirGuard, RunFolderRefused

    (tmp_path / "3_job" / "deep").mkdir(parents=True)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    try:
        RunDirGuard().on_multirun_start(cfg)  # no finished run there yet
        (tmp_path / "3_job" / "deep" / "metrics.json").write_text("{}")
        with pytest.raises(RunFolderRefused) as e:
            RunDirGuard().on_multirun_start(cfg)
    finally:
        HydraConfig.instance().cfg = None  # what the guard set for Hydra, which is not running here
    assert e.value.code == 2 and str(e.value).startswith(f"hydra.sweep.dir={tmp_path} already holds finished runs")


def test_a_sweep_of_pipelines_may_be_finished_in_its_folder(tmp_path):
    """Running a pipeline sweep again in its folder goes on (finished stages are reused, see test_ablation)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.runs.guard import RunDirGuard

    (tmp_path / "0_paper_fold0_seed0" / "deep").mkdir(parents=True)
    (tmp_path / "0_paper_fold0_seed0" / "deep" / "metrics.json").write_text("{}")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=paper", f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    try:
        RunDirGuard().on_multirun_start(cfg)  # no exit
    finally:
        HydraConfig.instance().cfg = None


def test_a_pipeline_stage_interrupted_earlier_resumes_from_its_own_last_checkpoint(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import fer_lightning.engine.pipeline as pipeline

    stage = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "deep")}, "variant": "deep", "ckpt_path": None})
    seen = []
    monkeypatch.setattr(pipeline, "train", lambda cfg: seen.append(cfg.ckpt_path) or {})
    pipeline._train_stage(stage.copy())  # nothing there yet: a fresh stage
    interrupted_run(tmp_path / "deep")
    pipeline._train_stage(stage.copy())
    assert seen == [None, str(tmp_path / "deep" / "checkpoints" / "last.ckpt")]


def test_the_resume_command_of_a_run_and_of_a_pipeline_stage(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.engine.resume import resume_hint, typed_command

    run = interrupted_run(tmp_path / "run")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["data.seed=3", "ckpt_path=old.ckpt"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run)
    HydraConfig.instance().set_config(cfg)
    try:
        alone = resume_hint(run)
        stage = resume_hint(interrupted_run(run / "deep"))  # a stage of the pipeline whose folder is `run`
    finally:
        HydraConfig.instance().cfg = None
    typed = typed_command()  # as this process was started (uv run python -m ... under `uv run pytest`)
    assert typed.endswith("python -m fer_lightning.train")
    assert alone == (f"training was interrupted; resume it with: {typed} data.seed=3 "
                     f"ckpt_path={run.resolve()}/checkpoints/last.ckpt hydra.run.dir={run.resolve()}")
    assert stage == f"training was interrupted; resume it with: {typed} data.seed=3 " \
                    f"hydra.run.dir={run.resolve()}"
    assert resume_hint(tmp_path / "empty").startswith("training was interrupted before its first checkpoint")
