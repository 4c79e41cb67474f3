"""Face pairs and image loading."""
from .images import ImageLoadError, decode_image, load_image, load_images
from .pairs import (
    DataError,
    Pair,
    PairSet,
    SkippedPair,
    identity_folder_pairs,
    load_pairs,
    read_csv_pairs,
    read_lfw_pairs,
)

__all__ = [
    "DataError",
    "ImageLoadError",
    "Pair",
    "PairSet",
    "SkippedPair",
    "decode_image",
    "identity_folder_pairs",
    "load_image",
    "load_images",
    "load_pairs",
    "read_csv_pairs",
    "read_lfw_pairs",
]
