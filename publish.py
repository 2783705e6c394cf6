"""Publish pruned variants as Hugging Face model repositories: python publish.py source=<run | sweep> [repo_id=<org>/<name>]
[dry_run=false] (conf/publish.yaml). Dry run by default: prints each variant's files and model card, sends nothing.

Exits with status 1 when an upload did not happen (no network, no token: the staged folders are kept and named)."""

import sys

import hydra

from bertprune.config import register

register()


@hydra.main(version_base="1.3", config_path="bertprune/conf", config_name="publish")
def main(cfg) -> None:
    from bertprune.jobs.publish import publish

    if not publish(cfg).ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
