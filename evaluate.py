"""Evaluate a trained F on held-out pairs: `python evaluate.py ckpt_path=RUN_DIR_OR_CKPT`."""

import hydra
from omegaconf import DictConfig

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from portrait_toon.tasks.evaluate import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
