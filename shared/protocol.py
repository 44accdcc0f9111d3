"""The cutq wire protocol: message dataclasses, msgpack encode/decode, validation.

Every message is a list of ZeroMQ frames (after the ROUTER envelope):

    [VERSION, TYPE, BODY, *BLOBS]

VERSION is b"CUTQ1", TYPE the message's ASCII name, BODY a msgpack map of the
dataclass fields (except `blobs`), and BLOBS raw image bytes, kept out of msgpack
so that a 20 MB photo is never copied into a map. See docs/PROTOCOL.md.
No sockets and no SQL here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypedDict

import msgpack

from shared.typecheck import conforms, fields_of, hints_of

VERSION = b"CUTQ1"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a BODY is metadata only; images travel as BLOBS
MAX_LIST_ITEMS = 100_000
MAX_STR = 64 * 1024


class ProtocolError(ValueError):
    """A frame list that is not a valid cutq message (bad version, type, body or field)."""


# ---------------------------------------------------------------- records inside messages
# Entries of Dispatch and Results, validated once on decode like every field: a
# handler can index them without checking types again.


# (required keys in a base class: NotRequired[] is not seen under `from __future__ import annotations`)
class _TaskSpecKeys(TypedDict):
    task_id: int
    attempt: int
    name: str
    processor: str
    options: dict[str, Any]


class TaskSpec(_TaskSpecKeys, total=False):
    """One task in a Dispatch; its input is the blob at the same index."""

    job_id: str


class _TaskResultKeys(TypedDict):
    task_id: int
    attempt: int
    ok: bool


class TaskResult(_TaskResultKeys, total=False):
    """One finished attempt in Results; an ok one's bytes are the next blob.

    error_kind is "input" (deterministic, never retried) or "transient"."""

    ext: str
    error: str
    error_kind: str
    processor: str
    model_file: str  # sha256 of the weights that made it (rembg)


@dataclass
class Message:
    """Base of all messages; subclasses set TYPE and declare typed fields."""

    TYPE: ClassVar[bytes] = b""
    blobs: list[bytes] = field(default_factory=list, repr=False, kw_only=True)
    # a gateway key (the HTTP gateway) names the tenant a request is made for; nobody else may
    as_tenant: str | None = field(default=None, kw_only=True)


# ---------------------------------------------------------------- client -> broker
# Every client request carries `req`, echoed in the Reply so a client can match
# replies to requests on one DEALER socket that also receives pushed events.


@dataclass
class Submit(Message):
    """A job: one blob per file in `names`, all sharing processor and options."""

    TYPE: ClassVar[bytes] = b"SUBMIT"
    req: int
    names: list[str]
    processor: str = "rembg"
    options: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    tenant: str = "default"
    upload_id: str | None = None  # the images were sent before, in UploadParts; names and blobs empty
    no_cache: bool = False  # run every task even if an equal one has a result already
    webhook: str | None = None  # POSTed a signed JSON summary when the job ends


@dataclass
class UploadStart(Message):
    """Begin a streamed submission: the reply holds an upload_id for its parts."""

    TYPE: ClassVar[bytes] = b"UPLOAD_START"
    req: int


@dataclass
class UploadPart(Message):
    """Some of a streamed submission's images, one blob per name; acknowledged once durable."""

    TYPE: ClassVar[bytes] = b"UPLOAD_PART"
    req: int
    upload_id: str
    part: int  # the client's running number: parts are joined in this order
    names: list[str]


@dataclass
class Delete(Message):
    """Cancel what runs of a job, then remove it with its images and results."""

    TYPE: ClassVar[bytes] = b"DELETE"
    req: int
    job_id: str


@dataclass
class DrainWorker(Message):
    """Admin: a worker takes no new tasks (`drain`), or takes them again; what it runs goes on."""

    TYPE: ClassVar[bytes] = b"DRAIN_WORKER"
    req: int
    worker: str  # its name or id, as `workers` lists them
    drain: bool = True


@dataclass
class Purge(Message):
    """Delete finished jobs matching the filters (a client key: only its own tenant's)."""

    TYPE: ClassVar[bytes] = b"PURGE"
    req: int
    state: str | None = None
    older_than_s: float | None = None
    tenant: str | None = None
    limit: int = 1000


@dataclass
class Status(Message):
    TYPE: ClassVar[bytes] = b"STATUS"
    req: int
    job_id: str  # a full id, or any unique prefix of one
    tasks: bool = True
    task_state: str | None = None  # only tasks in this state
    task_limit: int = 0  # a page of tasks (0: all of them)
    task_offset: int = 0


@dataclass
class ListJobs(Message):
    TYPE: ClassVar[bytes] = b"LIST"
    req: int
    state: str | None = None
    search: str | None = None
    limit: int = 50
    offset: int = 0
    sort: str = "created"  # created, state, progress, errors or tenant: over every job, not a page
    descending: bool = True


@dataclass
class Stats(Message):
    TYPE: ClassVar[bytes] = b"STATS"
    req: int


@dataclass
class Workers(Message):
    TYPE: ClassVar[bytes] = b"WORKERS"
    req: int


@dataclass
class Cancel(Message):
    """Cancel a job's queued and running tasks (or only `task_ids`, when given)."""

    TYPE: ClassVar[bytes] = b"CANCEL"
    req: int
    job_id: str
    task_ids: list[int] | None = None


@dataclass
class Retry(Message):
    """Re-queue a job's failed and cancelled tasks (or only `task_ids`)."""

    TYPE: ClassVar[bytes] = b"RETRY"
    req: int
    job_id: str
    task_ids: list[int] | None = None


@dataclass
class Fetch(Message):
    """Ask for one task's result (`what="result"`) or its input (`what="input"`)."""

    TYPE: ClassVar[bytes] = b"FETCH"
    req: int
    task_id: int
    what: str = "result"


@dataclass
class Subscribe(Message):
    """Lease a live event stream for `ttl` seconds (renew before it lapses)."""

    TYPE: ClassVar[bytes] = b"SUBSCRIBE"
    req: int
    job_id: str | None = None
    ttl: float = 10.0


@dataclass
class Unsubscribe(Message):
    TYPE: ClassVar[bytes] = b"UNSUBSCRIBE"
    req: int


@dataclass
class Pause(Message):
    """Pause (paused=True) or resume dispatch, globally when tenant is None."""

    TYPE: ClassVar[bytes] = b"PAUSE"
    req: int
    paused: bool
    tenant: str | None = None


@dataclass
class Tenants(Message):
    """List tenants: their policies, task counts and pause flags."""

    TYPE: ClassVar[bytes] = b"TENANTS"
    req: int


@dataclass
class TenantSet(Message):
    """Set a tenant's policy (admin): weight, max_running, rate, max_queued; persisted."""

    TYPE: ClassVar[bytes] = b"TENANT_SET"
    req: int
    tenant: str
    policy: dict[str, Any]


# ---------------------------------------------------------------- broker -> client


@dataclass
class Reply(Message):
    """The answer to request `req`: ok with `data` (and blobs), or an error."""

    TYPE: ClassVar[bytes] = b"REPLY"
    req: int
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    code: str = ""  # machine-readable: not_found, queue_full, bad_request, storage, ...


@dataclass
class Events(Message):
    """Pushed state changes: each event is {"kind", "job_id", "task_id", "state", ...}."""

    TYPE: ClassVar[bytes] = b"EVENTS"
    events: list[dict[str, Any]]


# ---------------------------------------------------------------- worker <-> broker


@dataclass
class Ready(Message):
    """A worker announces itself; sent on connect and again after a broker restart."""

    TYPE: ClassVar[bytes] = b"READY"
    name: str
    host: str
    pid: int
    slots: int
    models: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    processors: list[str] = field(default_factory=list)
    running: list[list[int]] = field(default_factory=list)  # [task_id, attempt] still held
    model_files: dict[str, str] = field(default_factory=dict)  # model -> sha256 of its weights
    threads: int = 0  # onnxruntime threads per slot (0: not said; older workers)


@dataclass
class Heartbeat(Message):
    """Liveness, both ways; a worker sets `draining` once it takes no new tasks, and says which
    models it has loaded and which weights are in its model dir now (None: as announced)."""

    TYPE: ClassVar[bytes] = b"HEARTBEAT"
    draining: bool = False
    models: list[str] | None = None
    model_files: dict[str, str] | None = None


@dataclass
class Dispatch(Message):
    """Broker -> worker: tasks to run, blob i is the input of tasks[i]."""

    TYPE: ClassVar[bytes] = b"DISPATCH"
    tasks: list[TaskSpec]


@dataclass
class Progress(Message):
    TYPE: ClassVar[bytes] = b"PROGRESS"
    task_id: int
    attempt: int
    stage: str
    fraction: float = 0.0


@dataclass
class Results(Message):
    """Worker -> broker: finished tasks; ok results carry their bytes in blobs, in order."""

    TYPE: ClassVar[bytes] = b"RESULTS"
    results: list[TaskResult]


@dataclass
class CancelTasks(Message):
    TYPE: ClassVar[bytes] = b"CANCEL_TASKS"
    task_ids: list[int]


@dataclass
class Disconnect(Message):
    """Broker -> worker: you are not registered (broker restarted, or declared you dead)."""

    TYPE: ClassVar[bytes] = b"DISCONNECT"
    reason: str = ""


@dataclass
class Goodbye(Message):
    """Worker -> broker: leaving; tasks in `returned` go back to the queue unspent."""

    TYPE: ClassVar[bytes] = b"GOODBYE"
    returned: list[list[int]] = field(default_factory=list)


MESSAGE_TYPES: dict[bytes, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Submit, Status, ListJobs, Stats, Workers, Cancel, Retry, Fetch, Subscribe, Unsubscribe, Pause,
        Tenants, TenantSet, UploadStart, UploadPart, Delete, Purge, DrainWorker, Reply, Events, Ready, Heartbeat,
        Dispatch, Progress, Results, CancelTasks, Disconnect, Goodbye,
    )
}
CLIENT_REQUESTS: frozenset[type[Message]] = frozenset(
    {Submit, Status, ListJobs, Stats, Workers, Cancel, Retry, Fetch, Subscribe, Unsubscribe, Pause, Tenants,
     TenantSet, UploadStart, UploadPart, Delete, Purge, DrainWorker}
)
WORKER_MESSAGES: frozenset[type[Message]] = frozenset({Ready, Heartbeat, Progress, Results, Goodbye})
ADMIN_REQUESTS: frozenset[type[Message]] = frozenset({Pause, TenantSet, DrainWorker})


def encode(msg: Message) -> list[bytes]:
    """Frames for `msg`: version, type, msgpack body, then its blobs."""
    body = {f.name: getattr(msg, f.name) for f in fields_of(type(msg))}
    return [VERSION, msg.TYPE, msgpack.packb(body, use_bin_type=True), *msg.blobs]


def decode(frames: list[bytes]) -> Message:
    """Parse and validate frames into a Message; raise ProtocolError on anything off."""
    if len(frames) < 3:
        raise ProtocolError(f"expected at least 3 frames, got {len(frames)}")
    version, kind, body = bytes(frames[0]), bytes(frames[1]), frames[2]
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version[:16]!r} (want {VERSION!r})")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind[:32]!r}")
    if len(body) > MAX_BODY_BYTES:
        raise ProtocolError(f"message body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        data = msgpack.unpackb(
            bytes(body), raw=False, strict_map_key=True,
            max_str_len=MAX_STR, max_bin_len=MAX_BODY_BYTES,
            max_array_len=MAX_LIST_ITEMS, max_map_len=MAX_LIST_ITEMS,
        )
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"body is not valid msgpack: {e.__class__.__name__}") from e
    if not isinstance(data, dict):
        raise ProtocolError("body must be a map")
    kwargs: dict[str, Any] = {}
    hints = hints_of(cls)
    for f in fields_of(cls):
        if f.name in data:
            value = data[f.name]
            if not conforms(value, hints[f.name]):
                raise ProtocolError(f"{cls.__name__}.{f.name}: wrong type {type(value).__name__}")
            kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{cls.__name__}: missing field {f.name!r}")
    msg = cls(**kwargs)
    # a buffer the receiver kept uncopied (a big frame: an image) stays one; anything else becomes bytes
    msg.blobs = [b if isinstance(b, (bytes, memoryview)) else bytes(b) for b in frames[3:]]
    return msg
