"""The weights in the worker's model dir, and their digests: what it announces it can serve.

A look at the dir is a few stat calls, made every heartbeat; a change (weights added,
replaced or removed) has them hashed again on a thread, since a big model takes seconds
and heartbeats must go on, and the new digests go out with the next heartbeat.
"""

from __future__ import annotations

import logging
import threading

from shared.config import MODELS_ON_DISK_SUFFIX, model_dir
from worker.processors import model_file_digests

log = logging.getLogger("cutq.worker")


class ModelFiles:
    """Model name -> sha256 of its weights, kept up to date by `rescan()`."""

    def __init__(self) -> None:
        self._weights = _weights_on_disk()
        self.digests: dict[str, str] = model_file_digests()
        self._hashing: threading.Thread | None = None
        self._hashed: dict[str, str] | None = None

    def rescan(self) -> None:
        """Take the digests a finished hashing found; start one if the dir changed since the last look."""
        if self._hashing is not None:
            if self._hashing.is_alive():
                return
            self._hashing = None
            if self._hashed is not None:
                self.digests, self._hashed = self._hashed, None
        weights = _weights_on_disk()
        if weights == self._weights:
            return
        self._weights = weights

        def work() -> None:
            try:
                self._hashed = model_file_digests()
            except OSError as e:  # removed while hashed: the next look sees it
                log.warning("could not hash the model weights: %s", e)
                self._weights = {}

        self._hashing = threading.Thread(target=work, name="model-digests", daemon=True)
        self._hashing.start()


def _weights_on_disk() -> dict[str, tuple[int, int]]:
    """(size, mtime) of each model's weights in the model dir (rembg's two layouts): what a look costs
    is a few stat calls, so it runs every heartbeat."""
    root = model_dir()
    out = {}
    for path in (*root.glob(f"*{MODELS_ON_DISK_SUFFIX}"), *root.glob(f"models/*/*{MODELS_ON_DISK_SUFFIX}")):
        try:
            st = path.stat()
        except OSError:
            continue
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
