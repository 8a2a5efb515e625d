"""The run folder: its file names, reading and writing (:mod:`~fer_lightning.runs.folder`), what may be written where
(:mod:`~fer_lightning.runs.guard`), reading checkpoints safely (:mod:`~fer_lightning.runs.checkpoints`), finding runs
(:mod:`~fer_lightning.runs.survey`) and reading the folders of older versions (:mod:`~fer_lightning.runs.legacy`)."""
