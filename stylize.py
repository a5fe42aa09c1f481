"""Stylize photos with a trained F:
`python stylize.py ckpt=PATH input=FILE_OR_FOLDER output=DIR [overwrite=true tile=1024 ...]`.
Exit status 1 when any input failed (each is listed in OUTPUT/stylize_report.json).
"""

import sys

import hydra
from omegaconf import DictConfig

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)


@hydra.main(config_path="conf", config_name="stylize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from portrait_toon.tasks.stylize import stylize

    report = stylize(cfg)
    if report.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
