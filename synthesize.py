"""Write synthetic pairs to shards, or preview the stages: `python synthesize.py [task=preview]`."""

import hydra
from omegaconf import DictConfig

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)


@hydra.main(config_path="conf", config_name="synthesize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from portrait_toon.tasks.synthesize import synthesize

    synthesize(cfg)


if __name__ == "__main__":
    main()
