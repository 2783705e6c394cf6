"""Export checkpoints to ONNX (MLPerf BERT interface): python export.py source=DIR [quantize=int8] (conf/export.yaml)."""

import hydra

from bertprune.config import register

register()


@hydra.main(version_base="1.3", config_path="bertprune/conf", config_name="export")
def main(cfg) -> int:
    from bertprune.jobs.export import export

    return len(export(cfg))


if __name__ == "__main__":
    main()
