"""What runs a job: training one model (:mod:`~fer_lightning.engine.training`), the stages of an experiment
(:mod:`~fer_lightning.engine.pipeline`), evaluating a checkpoint (:mod:`~fer_lightning.engine.evaluation`), building
parts from configs, option checks, callbacks, loggers, exact resume and DDP. Only the commands import it."""
