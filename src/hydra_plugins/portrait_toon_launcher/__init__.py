"""Hydra launchers of portrait_toon: `hydra/launcher=process` (each multirun job in a fresh
process, so Lightning DDP inside a job sees a plain single run) and `hydra/launcher=slurm`
(hydra-submitit-launcher's SLURM launcher, from the optional `slurm` extra).

Hydra finds these classes by scanning the `hydra_plugins` namespace package; the configs live
in the project's conf/hydra/launcher/.
"""
