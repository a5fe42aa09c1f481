"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher behind a clear error.

The real launcher comes with the optional `slurm` extra (`pip install -e ".[slurm]"`). This
thin wrapper keeps conf/hydra/launcher/slurm.yaml composable without it and turns its absence
into an error that says what to install, instead of Hydra's "unknown plugin".
"""

from __future__ import annotations

from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

INSTALL_HINT = (
    "hydra/launcher=slurm needs hydra-submitit-launcher, the project's optional `slurm` "
    "extra: pip install -e '.[slurm]' (or pip install 'hydra-submitit-launcher>=1.2'). "
    "On a single machine use hydra/launcher=process instead."
)


class SlurmLauncherMissingError(ImportError):
    """hydra/launcher=slurm was selected but hydra-submitit-launcher is not installed."""


def submitit_slurm_launcher_class() -> type[Launcher]:
    """hydra-submitit-launcher's SlurmLauncher class, or SlurmLauncherMissingError."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
            SlurmLauncher as SubmititSlurmLauncher,
        )
    except ImportError as error:
        raise SlurmLauncherMissingError(INSTALL_HINT) from error
    return SubmititSlurmLauncher


class SlurmLauncher(Launcher):
    """Delegates to hydra-submitit-launcher's SlurmLauncher with the same parameters
    (conf/hydra/launcher/slurm.yaml: partition, nodes, tasks_per_node, timeout_min, ...)."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.launcher = submitit_slurm_launcher_class()(**params)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        return list(self.launcher.launch(job_overrides, initial_job_idx))
