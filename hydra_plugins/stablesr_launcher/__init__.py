"""Hydra launcher plugin of this project (Hydra instantiates launchers from the ``hydra_plugins`` package only)."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from sr.launcher import check_partition


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that first refuses a request the partition cannot satisfy
    (``sr.launcher``: sizes, limits and the messages)."""

    def launch(self, job_overrides, initial_job_idx):
        check_partition(self.params)
        return super().launch(job_overrides, initial_job_idx)
