"""resdepth's sweeper, `hydra/sweeper=plan`: launches the jobs a sweep planned, one per pack.

Hydra's basic sweeper launches the grid's product, one job per run; a sweep that packs runs
launches one job per pack (resdepth.sweep writes which in sweep.json), under any launcher.
"""

import os
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf


class PlanSweeper(Sweeper):
    def __init__(self, **settings) -> None:  # the basic sweeper's (params: the grid) are unused
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments):
        from resdepth.sweep import SWEEP_PLAN_ENV, launched_jobs

        jobs = launched_jobs(Path(os.environ[SWEEP_PLAN_ENV]))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as the basic sweeper does
        return self.launcher.launch(jobs, initial_job_idx=0)
