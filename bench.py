"""Benchmark exported ONNX variants with MLPerf LoadGen: python bench.py source=... (see conf/bench.yaml).

Exits with status 1 when any run failed (the summary is still written, failed runs marked)."""

import sys

import hydra

from bertprune.config import register

register()


@hydra.main(version_base="1.3", config_path="bertprune/conf", config_name="bench")
def main(cfg) -> None:
    from bertprune.jobs.bench import bench

    summary = bench(cfg)
    if not summary.complete:
        failed = summary.failed_runs
        print(f"bench: {len(failed)} of {len(summary.runs)} runs failed (marked in {summary.files.get('md')}); "
              f"first: {failed[0].get('error') if failed else 'interrupted'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
