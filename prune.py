"""Prune a fine-tuned BERT without retraining: python prune.py [-m] constraint=0.4,0.5,0.6 (conf/prune.yaml)."""

import sys

import hydra

from bertprune.config import refuse_old_method_keys, register

register()


@hydra.main(version_base="1.3", config_path="bertprune/conf", config_name="prune")
def main(cfg) -> float:
    from bertprune.jobs.prune import prune

    return prune(cfg)["prune/mac_ratio"]


if __name__ == "__main__":
    refuse_old_method_keys(sys.argv[1:])  # tuning.damping=... & co. moved under method.: one message naming the new key
    main()
