"""Face alignment: templates, the similarity transform, YuNet landmarks on real faces, the
landmark cache, the no-face fallback, and alignment inside verify and run."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from falsify.data import decode_image, load_image, load_images
from falsify.data.images import image_key
from falsify.models.alignment import (
    DETECT_MAX_SIDE,
    TEMPLATES,
    FaceAligner,
    LandmarkCache,
    similarity_matrix,
    template_points,
    warp,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def aligner(tmp_path):
    return FaceAligner("arcface-112", (112, 112), cache=LandmarkCache(tmp_path / "landmarks.sqlite"))


@pytest.fixture(scope="module")
def faces(lfw_sample):
    return sorted(lfw_sample.glob("*/*.jpg"))[:6]


def test_templates_are_faces_seen_from_the_front():
    for name, ((h, w), pts) in TEMPLATES.items():
        left_eye, right_eye, nose, mouth_l, mouth_r = pts
        assert left_eye[0] < nose[0] < right_eye[0] and mouth_l[0] < mouth_r[0], name
        assert left_eye[1] < nose[1] < mouth_l[1], name  # eyes above the nose above the mouth
        # symmetric about the nose within a pixel, and inside the crop
        assert abs((left_eye[0] + right_eye[0]) / 2 - nose[0]) < 1.0, name
        assert (pts > 0).all() and (pts[:, 0] < w).all() and (pts[:, 1] < h).all(), name
    # scaled to another input size
    np.testing.assert_allclose(template_points("arcface-112", (224, 224)), TEMPLATES["arcface-112"][1] * 2)


def test_similarity_transform_recovers_a_known_one():
    pts = TEMPLATES["arcface-112"][1]
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = pts @ rot.T + shift  # the face as it sits in a photo
    m = similarity_matrix(moved, pts)
    back = moved @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(back, pts, atol=1e-9)
    # warping moves pixels with the landmarks: a bright dot at a landmark lands on the template
    img = np.zeros((200, 200, 3), np.uint8)
    x, y = np.round(moved[2]).astype(int)
    img[y - 2:y + 3, x - 2:x + 3] = 255
    out = warp(img, m, (112, 112))
    ys, xs = np.nonzero(out[:, :, 0] > 64)
    assert abs(xs.mean() - pts[2, 0]) < 1.5 and abs(ys.mean() - pts[2, 1]) < 1.5


@pytest.mark.slow
def test_aligned_faces_have_their_landmarks_where_the_transform_puts_them(tmp_path, faces):
    """Known answer on real photos: detect again in the aligned crop, and the five landmarks sit
    where the similarity transform maps the photo's landmarks, which is near the template (a
    similarity cannot fit five points of another face exactly). The crop is made at 3x the
    template's size (the template scales with the input), where YuNet's own jitter is 1-3
    pixels; a wrong transform (mirrored, inverted, eyes swapped) misses by tens."""
    big = FaceAligner("arcface-112", (336, 336), cache=LandmarkCache(tmp_path / "lm.sqlite"))
    template = TEMPLATES["arcface-112"][1] * 3
    for path in faces:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        face = big.detect(rgb)
        m = similarity_matrix(face.landmarks, template)
        expected = face.landmarks @ m[:, :2].T + m[:, 2]
        assert np.linalg.norm(expected - template, axis=1).mean() < 24.0, path
        crop = (load_image(path, (336, 336), big).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        # margin: YuNet wants context; one YuNet pass on the padded crop as it is (672 px, which
        # detect() would reduce to DETECT_MAX_SIDE first), as these thresholds were set with
        again = big._find(np.pad(crop, ((168, 168), (168, 168), (0, 0))))
        assert again is not None, path
        err = np.linalg.norm(again.landmarks - 168 - expected, axis=1) / 3  # in pixels of the 112 crop
        assert np.median(err) < 3.5 and err.max() < 5.0, (path, err)
    assert len(big.stats.aligned) == len(faces) and not big.stats.not_found


def test_landmarks_are_detected_once_then_cached(tmp_path, faces):
    cache_file = tmp_path / "lm.sqlite"
    first = FaceAligner("arcface-112", (112, 112), cache=LandmarkCache(cache_file))
    a, _ = load_images(faces, (112, 112), align=first)
    load_images(faces, (112, 112), align=first)  # again in the same process
    assert first.stats.detections == len(faces)
    second = FaceAligner("arcface-112", (112, 112), cache=LandmarkCache(cache_file))  # a resumed run
    b, _ = load_images(faces, (112, 112), align=second)
    assert second.stats.detections == 0
    assert torch.equal(a, b)
    survey = second.survey(faces)
    assert survey["images"] == len(faces) and survey["no_face_found"] == 0 and second.stats.detections == 0


def test_no_face_falls_back_to_a_resize_and_is_counted(aligner, tmp_path):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((90, 60, 3), 128, np.uint8)).save(blank)
    x = load_image(blank, (112, 112), aligner)
    assert x.shape == (3, 112, 112) and torch.allclose(x, torch.full_like(x, 128 / 255))
    assert aligner.stats.not_found == {str(blank)}
    assert aligner.survey([blank])["no_face_found"] == 1


def test_unusable_cache_file_warns_and_works_in_memory(tmp_path):
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_text("garbage " * 100)
    with pytest.warns(UserWarning, match="landmark cache"):
        cache = LandmarkCache(bad)
    cache.put("k", "d", None)
    assert cache.get("k", "d") == (True, None)


@pytest.mark.slow
def test_verify_reports_alignment(lfw_sample, tmp_path, capsys, monkeypatch):
    from falsify.cli import main

    monkeypatch.setenv("FALSIFY_CACHE", str(tmp_path))
    assert main(["verify", "--model", "sface", "--data", str(lfw_sample), "--n-pairs", "12", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["align"] == "arcface-112"
    a = out["alignment"]
    assert 12 <= a["aligned"] + a["no_face_found"] <= 24 and a["aligned"] > 0  # every distinct image, once
    assert main(["verify", "--model", "sface", "--align", "none", "--data", str(lfw_sample), "--n-pairs", "12",
                 "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["align"] is None


# --- photos as cameras and phones save them ----------------------------------------------------

def _cosines(model, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.nn.functional.cosine_similarity(model(a), model(b), dim=1).numpy()


def _recording(aligner, monkeypatch) -> list:
    """The sizes of the images YuNet is run on."""
    seen, find = [], aligner._find
    monkeypatch.setattr(aligner, "_find", lambda rgb, near=None: seen.append(rgb.shape[:2]) or find(rgb, near))
    return seen


@pytest.mark.slow
def test_camera_sized_photo_is_aligned(tmp_path, faces, dlib_model, monkeypatch):
    """A real face upscaled to 3000 x 3000 (a JPEG, as a camera saves it): detected on copies of
    at most DETECT_MAX_SIDE pixels, aligned from the full-size pixels, and embedded within 0.02
    (cosine) of the original 350 px crop. (6000 x 6000 through load_model: benchmarks/big_photo.py.)"""
    aligner = FaceAligner("dlib-150", dlib_model.input_size, cache=LandmarkCache(tmp_path / "lm.sqlite"))
    seen = _recording(aligner, monkeypatch)
    bigs = []
    for i, path in enumerate(faces[:2]):
        bigs.append(tmp_path / f"camera{i}.jpg")
        with Image.open(path) as img:
            img.convert("RGB").resize((3000, 3000), Image.BICUBIC).save(bigs[-1], quality=95)
    big, _ = load_images(bigs, dlib_model.input_size, align=aligner)
    assert aligner.stats.aligned == {str(p) for p in bigs} and not aligner.stats.not_found
    assert seen and max(max(s) for s in seen) <= DETECT_MAX_SIDE, seen
    original, _ = load_images(faces[:2], dlib_model.input_size, align=aligner)
    cos = _cosines(dlib_model, big, original)
    assert (cos > 0.98).all(), cos


@pytest.mark.slow
def test_small_face_in_a_big_photo(tmp_path, faces, dlib_model, monkeypatch):
    """A face of 175 px off-centre in a 4000 x 3000 photo (4% of its width): found on a bounded
    copy, its landmarks taken again from the full-size pixels around it, aligned as the face alone."""
    aligner = FaceAligner("dlib-150", dlib_model.input_size, cache=LandmarkCache(None))
    seen = _recording(aligner, monkeypatch)
    rng = np.random.default_rng(0)
    alone, in_photo = [], []
    for i, path in enumerate(faces[:2]):
        rgb, _ = decode_image(path)
        face = np.asarray(Image.fromarray(rgb).resize((175, 175), Image.BICUBIC))
        photo = (rng.integers(70, 110, (3000, 4000, 3))).astype(np.uint8)
        y, x = 700 + 900 * i, 2600 - 1500 * i
        photo[y:y + 175, x:x + 175] = face
        alone.append(aligner(face, f"alone{i}", f"alone{i}"))
        in_photo.append(aligner(photo, f"photo{i}", f"photo{i}"))
    assert aligner.stats.aligned == {"alone0", "alone1", "photo0", "photo1"}
    assert max(max(s) for s in seen) <= 1280, seen

    def tensor(crops):
        return torch.from_numpy(np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)

    cos = _cosines(dlib_model, tensor(in_photo), tensor(alone))
    assert (cos > 0.98).all(), cos


def test_photos_up_to_the_bound_are_detected_as_before(tmp_path, faces):
    """A photo up to DETECT_MAX_SIDE with a face YuNet places well is detected as it is, in one
    pass, exactly as before; a larger photo is not. Landmarks an older falsify cached (under
    previous_detector_key, by an OpenCV build nobody recorded) are not read: detected again."""
    cache_file = tmp_path / "lm.sqlite"
    before = FaceAligner("arcface-112", (112, 112), cache=LandmarkCache(cache_file))
    rgb, key = decode_image(faces[0])
    one_pass = before._find(rgb)  # what the detection before cached
    assert np.array_equal(before.detect(rgb).landmarks, one_pass.landmarks)
    rgb1, key1 = decode_image(faces[1])
    big = np.asarray(Image.fromarray(rgb).resize((900, 900), Image.BICUBIC))
    before.cache.put(key, before.previous_detector_key, one_pass)
    before.cache.put(key1, before.previous_detector_key, None)
    before.cache.put("big", before.previous_detector_key, one_pass)
    now = FaceAligner("arcface-112", (112, 112), cache=LandmarkCache(cache_file))
    assert np.array_equal(now.landmarks(rgb, key).landmarks, one_pass.landmarks) and now.stats.detections == 1
    assert now.landmarks(rgb1, key1) is not None and now.stats.detections == 2
    assert now.landmarks(big, "big") is not None and now.stats.detections == 3
    assert now.landmarks(rgb, key) is not None and now.stats.detections == 3  # cached under its own key
    assert now.detector_key.endswith(f"-opencv{cv2.__version__}")
    assert not np.allclose(now.landmarks(big, "big").landmarks, one_pass.landmarks)


def test_sixteen_bit_png_is_its_8_bit_version(tmp_path, faces):
    """A 16-bit PNG decodes, everywhere, to the pixels of its 8-bit version: the same survey, the
    same landmarks (also in 6.3's frame), the same crop. The survey once read it as white and
    cached "no face" for the file: that answer is not kept."""
    from types import SimpleNamespace

    from falsify.experiments.exp_6_3 import frame_points

    gray = np.asarray(Image.open(faces[0]).convert("L"))
    p8, p16 = tmp_path / "face8.png", tmp_path / "face16.png"
    Image.fromarray(gray).save(p8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(p16)
    with Image.open(p16) as img:
        assert img.mode.startswith("I")
    (rgb8, key8), (rgb16, key16) = decode_image(p8), decode_image(p16)
    assert np.array_equal(rgb8, rgb16)
    aligner = FaceAligner("arcface-112", (112, 112), cache=LandmarkCache(tmp_path / "lm.sqlite"))
    aligner.cache.put(key16, aligner.previous_detector_key, None)  # the survey's white image, before
    survey = aligner.survey([p8, p16])
    assert survey["aligned"] == 2 and survey["no_face_found"] == 0 and aligner.stats.detections == 2
    np.testing.assert_array_equal(aligner.landmarks(rgb16, key16).landmarks, aligner.landmarks(rgb8, key8).landmarks)
    assert torch.equal(load_image(p8, (112, 112), aligner), load_image(p16, (112, 112), aligner))
    model = SimpleNamespace(aligner=aligner, input_size=(112, 112))
    np.testing.assert_array_equal(frame_points(model, p8)[0], frame_points(model, p16)[0])
    assert aligner.stats.detections == 2


def test_unreadable_images_in_the_survey_and_in_6_3(tmp_path, aligner):
    """The survey leaves an unreadable file to the loaders (which name it); 6.3's landmarks
    raise an error that names it."""
    from types import SimpleNamespace

    from falsify.data import ImageLoadError
    from falsify.experiments.exp_6_3 import frame_points

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    link = tmp_path / "face.jpg"
    link.symlink_to(notes)
    assert aligner.survey([link])["images"] == 0
    with pytest.raises(ImageLoadError, match=r"face\.jpg .*not an image format") as err:
        frame_points(SimpleNamespace(aligner=aligner, input_size=(112, 112)), link)
    assert "BytesIO" not in str(err.value)


def test_phone_photo_stored_sideways_is_aligned(tmp_path, faces, aligner):
    """EXIF orientation 6: the face is found upright, its landmarks cached under the ':exif6' key."""
    with Image.open(faces[0]) as img:
        upright = img.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    phone = tmp_path / "phone.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(phone, exif=exif, quality=95)
    x = load_image(phone, (112, 112), aligner)
    assert aligner.stats.aligned == {str(phone)}
    key, _ = image_key(phone)
    assert key.endswith(":exif6") and aligner.cache.get(key, aligner.detector_key)[0]
    y = load_image(faces[0], (112, 112), aligner)
    assert float((x - y).abs().mean()) < 0.05


def test_antialiased_warp_averages_what_it_shrinks():
    """Warping 1-pixel stripes down 20x: the plain bilinear warp samples stripes (aliasing); the
    antialiased one (the aligner's for photos over DETECT_MAX_SIDE) gives their mean, and on a
    smooth image both agree."""
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255
    m = np.array([[0.05, 0.0, 0.0], [0.0, 0.05, 0.0]])
    plain = warp(stripes, m, (100, 100)).astype(float)
    smooth = warp(stripes, m, (100, 100), antialias=True).astype(float)
    assert plain.std() > 50 or abs(plain.mean() - 127.5) > 50
    assert abs(smooth[2:-2, 2:-2].mean() - 127.5) < 1 and smooth[2:-2, 2:-2].std() < 1
    yy, xx = np.mgrid[0:2000, 0:2000]
    ramp = np.repeat(((xx + yy) / 4000 * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    angle = 0.3
    rot = 0.05 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = np.hstack([rot, (np.array([40.0, 40.0]) - rot @ np.array([1000.0, 1000.0]))[:, None]])
    a, b = warp(ramp, m, (80, 80)).astype(float), warp(ramp, m, (80, 80), antialias=True).astype(float)
    d = (a - b)[3:-3, 3:-3]  # the corners reach the photo's edge
    assert np.abs(d).max() <= 1.0 and abs(d.mean()) < 0.1
