"""``ModelSpec``: a model name parsed once (built-in, ``ARCH:PATH``, a file, ``:random``, the
alignment), read by the loader, the alignment, the model's file and experiment 6.4."""
from __future__ import annotations

import pytest

from falsify.experiments.exp_6_4 import base_of, is_random, slug
from falsify.models import ModelSpec, builtin_name, model_file, resolve_align


@pytest.mark.parametrize("name, fields", [
    ("dlib", dict(base="dlib", random=False, builtin="dlib-resnet", arch=None, path=None)),
    ("sface:random", dict(base="sface", random=True, builtin="sface", arch=None, path=None)),
    ("iresnet50:/w/a:b.pth:random", dict(base="iresnet50:/w/a:b.pth", random=True, builtin=None, arch="iresnet50",
                                         path="/w/a:b.pth")),
    ("iresnet50", dict(base="iresnet50", random=False, builtin=None, arch="iresnet50", path=None)),
    ("net.onnx:random", dict(base="net.onnx", random=True, builtin=None, arch=None, path="net.onnx")),
    ("./iresnet50:x.onnx", dict(base="./iresnet50:x.onnx", builtin=None, arch=None, path="./iresnet50:x.onnx")),
])
def test_a_name_is_parsed_once_into_its_parts(name, fields):
    spec = ModelSpec.parse(name)
    assert {k: getattr(spec, k) for k in fields} == fields
    assert ModelSpec.parse(spec) is spec and ModelSpec.parse(spec, "none").align == "none"
    assert is_random(name) == spec.random and base_of(name) == spec.base  # 6.4 reads the same parse


def test_the_spec_answers_what_the_names_answered():
    assert builtin_name("dlib") == "dlib-resnet" and builtin_name("iresnet50:/w/b.pth") == "iresnet50"
    assert resolve_align(ModelSpec.parse("sface:random")) == "arcface-112"
    assert resolve_align(ModelSpec.parse("sface", "none")) is None and resolve_align("x.dat") == "dlib-150"
    assert model_file("iresnet50:/w/b.pth:random").as_posix() == "/w/b.pth" and model_file("iresnet50") is None
    assert slug("iresnet50:/w/backbone.pth:random").startswith("iresnet50_backbone.pth_")
    assert slug("iresnet50:/w/backbone.pth:random").endswith("_random")


@pytest.mark.parametrize("name, message", [
    ("iresnet50:random", "iresnet50 is an architecture without weights"),
    ("nope:random", "unknown model 'nope' in 'nope:random'"),
    ("iresnet51:FILE", "iresnet51: unknown architecture; did you mean iresnet50?"),
])
def test_names_that_name_no_model_are_refused_by_the_spec(name, message, tmp_path):
    (tmp_path / "b.pth").write_bytes(b"")  # a typo is told apart from a missing file by the file existing
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(name.replace("FILE", str(tmp_path / "b.pth"))).check()
