"""The fake's ``deepsparse.cpu``: what check_runtime's probe reads."""

from types import SimpleNamespace


def cpu_architecture():
    return SimpleNamespace(isa="fake", vnni=False)
