from __future__ import annotations

from animate.errors import AnimateError

#: Every code a media check can raise. Stable: clients match on them.
MEDIA_ERROR_CODES = (
    "not_found",  # no such local file
    "unsupported_source",  # a URL or device instead of a local file
    "unsupported_format",  # not one of the accepted containers / image formats, or not media at all
    "unsupported_codec",  # a known container holding a codec we do not decode
    "corrupt_media",  # the right kind of file, but damaged or truncated
    "no_video_stream",  # e.g. an audio-only file
    "empty_media",  # zero bytes, or no frame could be decoded
    "too_large",  # bytes or pixels over the limit (this includes decompression bombs)
    "too_small",  # too few pixels to hold a person
    "too_long",  # duration or frame count over the limit
)


class MediaError(AnimateError):
    """A file a user gave us cannot be used; ``code`` is one of ``MEDIA_ERROR_CODES``."""

    code = "corrupt_media"
