"""Reading from the Hugging Face hub: a download that fails for lack of a network becomes one clear error naming
the local-folder option to use instead. Models, tokenizers and hub data sets all load through ``hub_errors``."""

from __future__ import annotations

import contextlib
import socket


def _is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` (or anything in its chain) says the Hugging Face hub could not be reached."""
    try:  # lazy: huggingface_hub comes with transformers, and this module sits below everything that loads it
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
        hub = (LocalEntryNotFoundError, OfflineModeIsEnabled)
    except ImportError:  # pragma: no cover - very old huggingface_hub
        hub = ()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (*hub, ConnectionError, TimeoutError, socket.gaierror)) or \
                type(exc).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def hub_errors(name: str, what: str = "model", local: str = "model.name_or_path=/path/to/a/local/folder"):
    """Context manager: a hub download that fails for lack of a network becomes one clear error
    ("no network: give a local folder"); every other error passes through unchanged."""
    try:
        yield
    except Exception as e:
        if not _is_connection_error(e):
            raise
        raise OSError(f"no network: the {what} {name!r} is not a local folder, so it is read as a Hugging Face "
                      f"hub name, and the hub cannot be reached (nor is it in the hub cache). Give a local folder "
                      f"instead ({local}), or run once with a network to fill the hub cache.") from None
