"""Video data: dataset layouts (and published annotation files), PyAV clip decoding, clip sampling, transforms,
the loader, checks, synthetic data."""

from .check import DatasetReport, UnreadableVideo, check_dataset
from .dataset import ClipLoader, FailureLog, VideoClipDataset, collate_clips, make_loader
from .decode import DecodeError, StreamScan, VideoInfo, VideoReader, probe_video, read_frames
from .layouts import LAYOUTS, MissingVideo, VideoIndex, VideoRecord, index_dataset
from .sampling import clip_span, clip_starts, clip_times
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import write_synthetic_dataset
from .transforms import NORMALIZATION, ClipTransform

__all__ = [
    "LAYOUTS",
    "NORMALIZATION",
    "SYNTHETIC_CLASSES",
    "ClipLoader",
    "ClipTransform",
    "DatasetReport",
    "DecodeError",
    "FailureLog",
    "MissingVideo",
    "StreamScan",
    "UnreadableVideo",
    "VideoClipDataset",
    "VideoIndex",
    "VideoInfo",
    "VideoReader",
    "VideoRecord",
    "check_dataset",
    "clip_span",
    "clip_starts",
    "clip_times",
    "collate_clips",
    "index_dataset",
    "make_loader",
    "probe_video",
    "read_frames",
    "write_synthetic_dataset",
]
