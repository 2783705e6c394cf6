"""Benchmark exported ONNX variants with MLPerf LoadGen: python bench.py source=... (see conf/bench.yaml)."""

import hydra

from bertprune.config import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="bench")
def main(cfg) -> bool:
    from bertprune.bench import bench

    return bench(cfg).complete


if __name__ == "__main__":
    main()
