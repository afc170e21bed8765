"""The video-encode queue's payload and result."""

from __future__ import annotations

import msgspec

QUEUE = "video-encode"


class VideoJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Encode one uploaded video into a set of resolutions."""

    video_id: str
    source_url: str
    resolutions: list[int] = msgspec.field(default_factory=lambda: [480, 720, 1080])


class Encoded(msgspec.Struct, frozen=True):
    """Where the encoded files went."""

    video_id: str
    outputs: list[str]
