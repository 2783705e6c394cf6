"""Fine-tune a dense teacher: python train.py [model=...] [task=...] (see conf/train.yaml)."""

import hydra

from bertprune.config import register

register()


@hydra.main(version_base="1.3", config_path="bertprune/conf", config_name="train")
def main(cfg) -> float | None:
    from bertprune.config import validate_train
    from bertprune.jobs.train import train

    validate_train(cfg)  # every value checked before the data is loaded or the teacher trained
    return train(cfg).metrics.get("eval/accuracy")


if __name__ == "__main__":
    main()
