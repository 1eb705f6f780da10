"""Media IO: decode what strangers upload, refuse what we cannot use, encode what browsers play."""

from animate.media.errors import MEDIA_ERROR_CODES, MediaError
from animate.media.image import ReferenceImage, load_image
from animate.media.video import DrivingVideo, VideoInfo, cover_size, open_video, probe_video
from animate.media.writer import VideoWriters, WrittenVideo, write_video

__all__ = [
    "MEDIA_ERROR_CODES",
    "DrivingVideo",
    "MediaError",
    "ReferenceImage",
    "VideoInfo",
    "VideoWriters",
    "WrittenVideo",
    "cover_size",
    "load_image",
    "open_video",
    "probe_video",
    "write_video",
]
