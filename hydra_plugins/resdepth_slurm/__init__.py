"""resdepth's SLURM launcher, `hydra/launcher=slurm`: submitit's, waiting on the whole job array.

A Hydra launcher must live in the hydra_plugins package to be found; its work is in resdepth.slurm.
"""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Submitit


class SlurmLauncher(_Submitit):
    """submitit's SLURM launcher, except how it waits: Hydra's waits on each job in turn, forever
    for one that was cancelled where SLURM keeps no accounting, and raises the first failure."""

    def launch(self, job_overrides, initial_job_idx):
        from resdepth.slurm import launch  # here: Hydra imports every plugin at start-up

        return launch(self, job_overrides, initial_job_idx)
