"""Event-camera (neuromorphic) data: readers of the original recordings, frame integration by event
count (tonic), the event-camera simulator behind ``event_digits``, and the datasets."""

from .datasets import CLASSES, LAYOUTS, EventDigits, EventFrames, Sample, load_recorded
from .frames import FrameAugment, integrate, resize_frames
from .readers import EventFileError, read_cifar10_dvs, read_dvs_gesture, read_nmnist
from .simulator import simulate_saccades

__all__ = [
    "CLASSES",
    "LAYOUTS",
    "EventDigits",
    "EventFileError",
    "EventFrames",
    "FrameAugment",
    "Sample",
    "integrate",
    "load_recorded",
    "read_cifar10_dvs",
    "read_dvs_gesture",
    "read_nmnist",
    "resize_frames",
    "simulate_saccades",
]
