"""Settings for the broker, workers and clients: frozen dataclasses, env-var defaults.

Nothing here reads the environment at import time; call the `from_env` helpers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_MODEL = "u2netp"
OUTPUT_FORMATS = ("png", "webp")
# what a worker may name as a result's format: rembg's outputs, plus what noop/sleep
# sniff from the input they return; the broker fails a result with anything else
RESULT_EXTENSIONS = frozenset({"png", "webp", "jpg", "gif", "bmp", "tif", "avif", "bin"})
MODELS_ON_DISK_SUFFIX = ".onnx"


def parse_duration(text: str) -> float:
    """'90', '30s', '15m', '1h', '7d' -> seconds; ValueError with the reason otherwise."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    number = t[:-1] if scale is not None else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (say 30s, 15m, 1h or 7d)") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"not a duration: {text!r} (must be 0 or more)")
    return value


def default_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The broker endpoint: $CUTQ_CONNECT or tcp://127.0.0.1:5555."""
    env = os.environ if env is None else env
    return env.get("CUTQ_CONNECT") or DEFAULT_ENDPOINT


def endpoint_problem(endpoint: str) -> str:
    """Why `endpoint` cannot name a broker to connect to ("" when it can): tcp://HOST:PORT,
    ipc://PATH or inproc://NAME.  ZeroMQ itself takes `tcp://host:99999` and fails later."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        return "expected tcp://HOST:PORT or ipc://PATH"
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or host == "*" or not port.isdigit() or not 0 < int(port) < 65536:
            return "expected tcp://HOST:PORT with a host name or address and a port from 1 to 65535"
    elif scheme not in ("ipc", "inproc"):
        return f"unknown transport {scheme!r}: expected tcp://HOST:PORT or ipc://PATH"
    return ""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """$CUTQ_DATA, else $XDG_DATA_HOME/cutq, else ~/.local/share/cutq."""
    env = os.environ if env is None else env
    if env.get("CUTQ_DATA"):
        return Path(env["CUTQ_DATA"])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cutq"


def model_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where rembg looks for weights: $U2NET_HOME, else ~/.u2net (rembg's own rule)."""
    env = os.environ if env is None else env
    return Path(env.get("U2NET_HOME") or (Path.home() / ".u2net"))


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the broker needs to run; tests build one directly."""

    bind: str = DEFAULT_ENDPOINT
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    max_message_bytes: int = 256 * 1024 * 1024
    max_queued_tasks: int = 1_000_000
    max_tasks_per_submit: int = 10_000
    max_attempts: int = 3  # transient failures (worker errors) before a task is failed
    max_worker_deaths: int = 3  # a task that took this many workers down is quarantined
    retry_backoff: float = 1.0  # first retry delay in seconds, doubled per attempt, jittered
    retry_backoff_max: float = 60.0
    synchronous: str = "FULL"
    busy_timeout_ms: int = 5000
    dispatch_batch: int = 64  # most tasks sent to one worker in one DISPATCH frame
    sndhwm: int = 100_000
    rcvhwm: int = 100_000
    insecure: bool = False  # allow a non-loopback bind without CURVE keys
    retention_s: float = 24 * 3600.0  # finished jobs are deleted this long after they end (0: never)
    upload_idle_s: float = 600.0  # a streamed upload untouched this long is dropped
    upload_part_bytes: int = 8 * 1024 * 1024  # what clients are told to send per UploadPart
    # an image up to this size is kept in the database, in the transaction that names it (one fsync
    # instead of a file's three: docs/ARCHITECTURE.md); 0: every image is a file
    inline_blob_bytes: int = 1024
    webhook_allow: str = ""  # addresses/networks webhooks may call although private: "127.0.0.1,10.0.0.0/8"
    webhook_retry_s: float = 24 * 3600.0  # a webhook failing this long after the job ended is given up
    public_url: str = ""  # the HTTP gateway's base URL, for result links in webhook bodies
    metrics: str = ""  # host:port to serve Prometheus metrics on ("" : off)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to run."""

    connect: str = DEFAULT_ENDPOINT
    concurrency: int = 1  # slots; 0: auto (cores and a short trial, worker/autotune.py)
    name: str = ""
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    reconnect_initial: float = 0.25
    reconnect_max: float = 8.0
    threads_per_slot: int = 0  # 0: cores // concurrency, at least 1
    preload_models: tuple[str, ...] = (DEFAULT_MODEL,)
    drain_timeout: float = 30.0
    max_image_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    recycle_after_tasks: int = 0  # 0: never; recycle an inference process after N tasks
    # recycle a slot above this RSS in MiB; 0: never; -1: auto, max(1024, 2x its RSS after its first
    # task) (a u2netp slot settles near 525 MiB: docs/ARCHITECTURE.md, Workers)
    recycle_rss_mb: int = -1
    # micro-batching: a slot takes up to N queued rembg tasks of one model as one onnxruntime run
    # (same pixels; for GPUs: on CPU it gains nothing). 1: off. The worker asks for slots x N tasks.
    batch_size: int = 1
    key: str = ""  # this worker's secret CURVE certificate (CUTQ_KEY)
    server_key: str = ""  # the broker's public certificate (CUTQ_SERVER_KEY)
