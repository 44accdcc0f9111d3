"""Handlers for a streamed upload: a job too big for one message comes in parts.

UploadStart opens an upload; each UploadPart's images are written off the loop and
pinned (no deletion takes them) until the Submit that names the upload turns them
into a job, or the upload expires after `upload_idle_s` without a part.
"""

from __future__ import annotations

import uuid

from broker import access
from broker.blobio import describe
from broker.core import Core, Upload
from broker.keys import Principal
from broker.store import BlobRef
from shared import protocol as p
from shared.names import validate_input_name


class UploadHandlers:
    """UploadStart and UploadPart, the lookup a Submit of an upload makes, and expiry."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def start(self, ident: bytes, msg: p.UploadStart, who: Principal) -> None:
        upload_id = uuid.uuid4().hex
        self.core.uploads[upload_id] = Upload(who.name, access.scope(who), self.core.clock())
        self.core.out.reply(ident, msg, upload_id=upload_id, part_bytes=self.core.config.upload_part_bytes)

    def find(self, ident: bytes, msg: p.Message, upload_id: str, who: Principal) -> Upload | None:
        upload = self.core.uploads.get(upload_id)
        if upload is None or upload.user != who.name:
            self.core.out.error(ident, msg, f"upload {upload_id[:12]} not found (it expires after "
                                f"{self.core.config.upload_idle_s:g}s without a part)", "not_found")
            return None
        upload.last_seen = self.core.clock()
        return upload

    def part(self, ident: bytes, msg: p.UploadPart, who: Principal) -> None:
        core = self.core
        upload = self.find(ident, msg, msg.upload_id, who)
        if upload is None:
            return
        if len(msg.names) != len(msg.blobs):
            return core.out.error(ident, msg, f"a part needs one image per name (got {len(msg.names)} names, "
                                  f"{len(msg.blobs)} images)", "bad_request")
        if upload.count + len(msg.names) > core.config.max_tasks_per_submit:
            return core.out.error(ident, msg, f"too many images in one submission: more than "
                                  f"{core.config.max_tasks_per_submit}", "bad_request")
        for name in msg.names:
            problem = validate_input_name(name)
            if problem:
                return core.out.error(ident, msg, problem, "bad_request")
        sizes = [len(b) for b in msg.blobs]

        def stored(result: list[str] | OSError) -> None:
            if isinstance(result, OSError):
                why = describe(result)
                return core.out.error(ident, msg, f"storage error, this part was not saved: {why}", "storage")
            if core.uploads.get(msg.upload_id) is not upload:
                return core.out.error(ident, msg, f"upload {msg.upload_id[:12]} expired", "not_found")
            upload.parts[msg.part] = (list(msg.names), [BlobRef(d, n) for d, n in zip(result, sizes, strict=True)])
            core.blobio.pinned.update(result)
            upload.last_seen = core.clock()
            core.out.reply(ident, msg, received=upload.count)

        core.blobio.write(msg.blobs, stored)

    def expire(self) -> None:
        """Drop uploads nobody finished; their images go unless a row refers to them."""
        core = self.core
        cutoff = core.clock() - core.config.upload_idle_s
        for upload_id in [u for u, up in core.uploads.items() if up.last_seen < cutoff]:
            _, refs = core.uploads.pop(upload_id).joined()
            core.blobio.pinned.subtract(r.digest for r in refs)
            core.blobio.delete([r.digest for r in refs if not core.store.is_referenced(r.digest)])
