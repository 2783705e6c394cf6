"""Fine-tune a dense teacher: python train.py [model=...] [task=...] (see conf/train.yaml)."""

import hydra

from bertprune.resources import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg) -> float | None:
    from bertprune.train import train

    return train(cfg).metrics.get("eval/accuracy")


if __name__ == "__main__":
    main()
