"""Export a trained F for other runtimes:
`python export.py ckpt=PATH format=onnx|torchscript|exported_program [out=PATH]`.
"""

import hydra
from omegaconf import DictConfig

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from portrait_toon.tasks.export import export

    export(cfg)


if __name__ == "__main__":
    main()
