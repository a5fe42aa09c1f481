"""The paper's ablation ladder and its report: `python ablation.py [experiment=BASE] [...]`
(`make ablation`); see conf/ablation.yaml and src/portrait_toon/tasks/ablation.py."""

import sys

import portrait_toon.config  # noqa: F401  (registers the resolvers the config tree uses)

if __name__ == "__main__":
    from portrait_toon.tasks.ablation import main

    main(sys.argv[1:])
