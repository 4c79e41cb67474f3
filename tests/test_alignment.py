"""Face alignment: templates, the similarity transform, YuNet landmarks on real faces, the
landmark cache, the no-face fallback, and alignment inside verify and run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from falsify.data import load_image, load_images
from falsify.models.alignment import (
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
        again = big.detect(np.pad(crop, ((168, 168), (168, 168), (0, 0))))  # margin: YuNet wants context
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
