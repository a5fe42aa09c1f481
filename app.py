"""Serve the web page: upload a photo, see it stylized beside it, download the result:
`python app.py [ckpt=PATH/stylizer.pt] [port=7860]` (default: the newest trained stylizer under
logs/). Serves on http://127.0.0.1:7860 until Ctrl-C.
"""

import hydra
from omegaconf import DictConfig

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)


@hydra.main(config_path="conf", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from portrait_toon.tasks.app import serve

    serve(cfg)


if __name__ == "__main__":
    main()
