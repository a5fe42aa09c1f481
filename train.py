"""Train the stylization network F: `python train.py [experiment=demo] [key=value ...]`.

Resume a run in its folder with `python train.py hydra.run.dir=<run> ckpt_path=last`: the run's
own overrides (its .hydra/overrides.yaml) are applied first, the ones typed now on top.
"""

import sys

import hydra
from omegaconf import DictConfig

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)
import portrait_toon.resume


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from portrait_toon.tasks.train import train

    metrics = train(cfg)
    # a sweeper (hparams_search config) optimises the metric it names in `optimized_metric`
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name and metrics else None


if __name__ == "__main__":
    # before Hydra composes (and rewrites the run's .hydra/overrides.yaml)
    sys.argv[1:] = portrait_toon.resume.resume_arguments(sys.argv[1:])
    main()
