"""Models known by their content: the sha256 of a model's file is stored with a run's settings,
so a file replaced at the same path between a run and its resume is refused in one line and the
rows already stored are kept (a checkpoint, an ``.onnx``, a dlib ``.dat``; experiment 6.4 too).
Also: checkpoints nested one level under a single key, and a misspelt architecture."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from falsify import fingerprints
from falsify.cli import main
from falsify.fingerprints import file_fingerprint
from falsify.models import load_model, model_file, model_sha256
from falsify.models.iresnet import iresnet
from tests.test_checkpoints import _refused
from tests.test_models import _tiny_onnx

#: A tiny 6.1 run: two pairs, one cheap method, given thresholds (no calibration), the plain test
#: (no prior), no ceiling search.
TINY = ["--n-pairs", "2", "--preset", "plain", "--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05",
        "--no-ceiling", "--device", "cpu", "-q"]


def _rows(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT * FROM results ORDER BY method, pair").fetchall()


def _replaced_is_refused(model: str, path: Path, replace, data: Path, out: Path, capsys) -> None:
    """Run 6.1 on ``model`` (whose file is ``path``) with saliency, replace the file, resume with
    saliency and gradcam: refused in one line naming both sha256s and --out NEW; rows kept."""
    run = ["run", "6.1", "--model", model, "--data", str(data), "--out", str(out), *TINY]
    assert main([*run, "--methods", "saliency"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    before = _rows(out)
    assert len(before) == 2
    old = file_fingerprint(path)
    replace(path)
    new = file_fingerprint(path)
    assert new != old
    err = _refused([*run, "--methods", "saliency,gradcam"], capsys, "was replaced", "--out NEW",
                   f"sha256 {old[:12]} when the store was made, {new[:12]} now")
    assert str(out) in err
    assert _rows(out) == before  # nothing computed with the new weights, nothing lost
    # the same file back: the run resumes and adds gradcam's rows
    return old


# --- the fingerprint --------------------------------------------------------------------------


def test_file_fingerprint_is_the_sha256_hashed_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "w.bin"
    path.write_bytes(b"weights one")
    reads = []
    real_open = open

    def counting_open(p, *a, **kw):
        reads.append(Path(p))
        return real_open(p, *a, **kw)

    monkeypatch.setattr(fingerprints, "open", counting_open, raising=False)
    assert file_fingerprint(path) == hashlib.sha256(b"weights one").hexdigest()
    assert file_fingerprint(tmp_path / "." / "w.bin") == file_fingerprint(path)  # another spelling, same file
    assert len(reads) == 1  # hashed once
    path.write_bytes(b"weights two")  # rewritten in place, same size
    assert file_fingerprint(path) == hashlib.sha256(b"weights two").hexdigest()
    other = tmp_path / "x.bin"
    other.write_bytes(b"weights one")
    other.replace(path)  # replaced by another file
    assert file_fingerprint(path) == hashlib.sha256(b"weights one").hexdigest()
    assert len(reads) == 3
    with pytest.raises(FileNotFoundError):
        file_fingerprint(tmp_path / "missing.bin")


def test_model_files_of_every_kind_of_name(tmp_path):
    ckpt = tmp_path / "backbone.pth"
    ckpt.write_bytes(b"x")
    assert model_file(f"iresnet18:{ckpt}") == ckpt and model_file(f"iresnet18:{ckpt}:random") == ckpt
    assert model_file(str(ckpt)) == ckpt and model_file(f"{tmp_path}/m.onnx") == tmp_path / "m.onnx"
    assert model_file("dlib-resnet").suffix == ".dat" and model_file("dlib") == model_file("dlib-resnet:random")
    assert model_sha256("dlib-resnet") == file_fingerprint(model_file("dlib-resnet"))
    assert model_file("iresnet50") is None and model_file("nope") is None
    assert model_sha256(f"iresnet18:{ckpt}") == file_fingerprint(ckpt)


def test_the_stored_settings_hold_the_model_file_sha256(lfw_sample, tmp_path):
    from falsify.experiments import ResultsStore

    out = tmp_path / "run"
    assert main(["run", "6.1", "--data", str(lfw_sample), "--methods", "random", "--out", str(out), *TINY]) == 0
    with ResultsStore(out / "results.sqlite") as store:
        settings = store.get_meta("settings")
    assert settings["model_sha256"] == {"dlib-resnet": model_sha256("dlib-resnet")}


# --- a replaced file is refused on resume -----------------------------------------------------


def test_a_replaced_checkpoint_is_refused_and_the_rows_are_kept(lfw_sample, tmp_path, capsys):
    path = tmp_path / "r18" / "backbone.pth"  # arcface_torch names every checkpoint so
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save(iresnet("iresnet18").state_dict(), path)
    kept = tmp_path / "first.pth"
    shutil.copyfile(path, kept)

    def replace(p: Path) -> None:
        torch.manual_seed(1)
        torch.save(iresnet("iresnet18").state_dict(), p)

    out = tmp_path / "run"
    _replaced_is_refused(f"iresnet18:{path}", path, replace, lfw_sample, out, capsys)
    shutil.copyfile(kept, path)  # the first weights back: the same command resumes
    before = _rows(out)
    assert main(["run", "6.1", "--model", f"iresnet18:{path}", "--data", str(lfw_sample), "--out", str(out),
                 "--methods", "saliency,gradcam", *TINY]) == 0
    after = _rows(out)
    assert len(after) == 4 and set(before) <= set(after)


def test_a_replaced_onnx_is_refused_and_the_rows_are_kept(lfw_sample, tmp_path, capsys):
    pytest.importorskip("onnx")
    path = _tiny_onnx(tmp_path / "model.onnx", seed=0)
    _replaced_is_refused(str(path), path, lambda p: _tiny_onnx(p, seed=1), lfw_sample, tmp_path / "run", capsys)


def test_a_replaced_dlib_dat_is_refused_and_the_rows_are_kept(lfw_sample, tmp_path, capsys, monkeypatch):
    """A copy of the shipped .dat, then the same file with the last bit of one weight flipped: it
    still loads (a weight one float32 step away), and its sha256 differs. The weight is found by
    its bytes: dlib stores a tensor's values as raw little-endian float32."""
    from falsify.models.dlib_resnet import default_dat_path, read_dlib_dat

    monkeypatch.setenv("FALSIFY_CACHE", str(tmp_path / "cache"))  # the altered file's conversion stays here
    path = tmp_path / "net.dat"
    shutil.copyfile(default_dat_path(), path)
    weights = read_dlib_dat(path)
    key = next(k for k, v in weights.items() if v.numel() >= 64 and v.ndim == 4)
    needle = weights[key].numpy().astype("<f4").tobytes()[:64]

    def replace(p: Path) -> None:
        data = bytearray(p.read_bytes())
        at = data.find(needle)
        assert at > 0 and data.find(needle, at + 1) == -1
        data[at] ^= 0x01  # the lowest mantissa bit of the tensor's first value
        p.write_bytes(bytes(data))
        changed = read_dlib_dat(p)[key]
        assert not torch.equal(changed, weights[key]) and torch.allclose(changed, weights[key])

    _replaced_is_refused(str(path), path, replace, lfw_sample, tmp_path / "run", capsys)


def test_6_4_refuses_a_replaced_checkpoint_before_any_model_runs(lfw_sample, tmp_path, capsys):
    """6.4 records every model's sha256 in OUT's settings (and each model's store its own): a
    checkpoint replaced between a run and its resume is refused before any model computes."""
    from falsify.experiments import ResultsStore
    from falsify.experiments.exp_6_4 import slug

    path = tmp_path / "model.onnx"
    pytest.importorskip("onnx")
    _tiny_onnx(path, seed=0)
    out = tmp_path / "run"
    run = ["run", "6.4", "--models", f"{path},{path}:random", "--data", str(lfw_sample), "--out", str(out),
           "--methods", "random", *TINY]
    assert main(run) == 0, capsys.readouterr().err
    capsys.readouterr()
    sha = file_fingerprint(path)
    with ResultsStore(out / "results.sqlite") as store:
        assert store.get_meta("settings")["model_sha256"] == {str(path): sha, f"{path}:random": sha}
    sub = out / "models" / slug(str(path))
    with ResultsStore(sub / "results.sqlite") as store:
        assert store.get_meta("settings")["model_sha256"] == {str(path): sha}
    before = {d: _rows(d) for d in (sub, out / "models" / slug(f"{path}:random"))}
    _tiny_onnx(path, seed=1)
    _refused(run, capsys, "was replaced", "--out NEW", f"sha256 {sha[:12]} when the store was made")
    assert {d: _rows(d) for d in before} == before


def test_a_store_without_the_model_sha256_is_not_resumed(lfw_sample, tmp_path):
    """A store made by a falsify that did not record the model file's sha256 is refused, as one
    without the data fingerprint is: its rows could be of other weights."""
    from falsify.experiments import ResultsStore, RunConfig, Runner, runner_for

    out = tmp_path / "run"
    base = dict(data=str(lfw_sample), methods=["random"], n_pairs=2, out=str(out), tau_high=0.2, tau_low=0.1,
                epsilon=0.05, grid_pairs=0, preset="plain", ceiling=False)
    runner_for(RunConfig(**base), progress=False, log=lambda *a: None).run()
    before = _rows(out)
    with ResultsStore(out / "results.sqlite") as store:
        settings = store.get_meta("settings")
        del settings["model_sha256"]
        store.set_meta("settings", settings)
    with pytest.raises(ValueError, match=r"older falsify that did not record the sha256 of the model's file.*"
                                         r"Use another --out"):
        runner_for(RunConfig(**base), progress=False, log=lambda *a: None).run()
    assert _rows(out) == before


# --- checkpoint layouts and names ---------------------------------------------------------------


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("r18") / "backbone.pth"
    torch.manual_seed(0)
    state = iresnet("iresnet18").state_dict()
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("key", ["model", "net", "backbone", "ema", "module", "state_dict"])
def test_a_state_dict_one_level_down_is_loaded(key, r18, tmp_path):
    path, state = r18
    nested = tmp_path / "ckpt.pth"
    torch.save({key: state, "epoch": 7, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, nested)
    model = load_model(f"iresnet18:{nested}", device="cpu")
    assert model.checkpoint_key == key
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert load_model(f"iresnet18:{path}", device="cpu").checkpoint_key is None


def test_several_nested_state_dicts_take_the_one_that_fits_else_name_them(r18, tmp_path):
    path, state = r18
    two = tmp_path / "two.pth"
    torch.save({"backbone": state, "head": {"weight": torch.zeros(10, 512)}}, two)
    assert load_model(f"iresnet18:{two}", device="cpu").checkpoint_key == "backbone"
    both = tmp_path / "both.pth"
    torch.save({"model": state, "ema": state}, both)
    with pytest.raises(ValueError, match=r"holds state dicts under several keys \('model', 'ema'\); save the one"):
        load_model(f"iresnet18:{both}", device="cpu")
    empty = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "x"}, empty)
    with pytest.raises(ValueError, match="holds a dict without tensors"):
        load_model(f"iresnet18:{empty}", device="cpu")


def test_verify_names_the_key_of_a_nested_checkpoint(r18, lfw_sample, tmp_path, capsys):
    path, state = r18
    nested = tmp_path / "ckpt.pth"
    torch.save({"model": state}, nested)
    assert main(["verify", "--model", f"iresnet18:{nested}", "--data", str(lfw_sample), "--n-pairs", "4",
                 "--device", "cpu", "-q"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("model "))
    assert line.split(None, 1)[1] == "iresnet18:ckpt.pth (weights under the checkpoint's key 'model')"


def test_a_misspelt_architecture_names_the_known_ones(r18, lfw_sample, tmp_path, capsys):
    path, _ = r18
    with pytest.raises(ValueError, match=r"^iresnet51: unknown architecture; did you mean iresnet50\? known: "
                                         r"iresnet18, .*adaface-ir101"):
        load_model(f"iresnet51:{path}", device="cpu")
    with pytest.raises(ValueError, match=r"^adaface-ir51: unknown architecture; did you mean adaface-ir50\?"):
        load_model(f"adaface-ir51:{path}:random", device="cpu")
    with pytest.raises(ValueError, match=r"^vggface: unknown architecture; known: iresnet18"):
        load_model(f"vggface:{path}", device="cpu")  # no close match, but the file exists
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(f"runs:{tmp_path}/missing.onnx", device="cpu")  # like no architecture, and no file
    out = tmp_path / "run"
    err = _refused(["run", "6.1", "--model", f"iresnet51:{path}", "--data", str(lfw_sample), "--out", str(out),
                    "--methods", "saliency", *TINY], capsys, "did you mean iresnet50?", "known: iresnet18")
    assert "not found" not in err and not out.exists()
    _refused(["run", "6.4", "--models", f"dlib-resnet,iresnet51:{path}", "--data", str(lfw_sample), "--out", str(out),
              "--methods", "random", *TINY], capsys, "iresnet51: unknown architecture; did you mean iresnet50?")
    _refused(["verify", "--model", f"iresnet51:{path}", "--data", str(lfw_sample)], capsys,
             "did you mean iresnet50?")
    assert not out.exists()


# --- a file replaced during a Ray run ---------------------------------------------------------------


def test_a_ray_worker_that_loads_other_weights_is_refused(lfw_sample, tmp_path, monkeypatch):
    """Ray workers load the model from its path themselves: when the file was replaced after the
    run started, the driver refuses their rows in one line (none is written), and the run resumes
    once the first file is back."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'falsify[ray]'")
    pytest.importorskip("onnx")
    import hashlib

    from falsify.experiments import RunConfig, Runner, runner_for

    path = _tiny_onnx(tmp_path / "model.onnx", seed=0)
    first = path.read_bytes()
    out = tmp_path / "run"
    settings = dict(data=str(lfw_sample), model=str(path), methods=["saliency"], n_pairs=2, out=str(out),
                    tau_high=0.2, tau_low=0.1, epsilon=0.05, preset="plain", ceiling=False, grid_pairs=0)
    opened = Runner._open

    def open_then_replace(self, store):  # after the run's settings (and the file's sha256) are fixed
        opened(self, store)
        _tiny_onnx(path, seed=1)

    monkeypatch.setattr(Runner, "_open", open_then_replace)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        with pytest.raises(ValueError) as exc:
            runner_for(RunConfig(**settings, executor="ray", workers=1), progress=False, log=lambda *a: None).run()
    finally:
        ray.shutdown()
    message = str(exc.value)
    assert "\n" not in message and "the model file was replaced while the run was going" in message
    old, new = hashlib.sha256(first).hexdigest(), file_fingerprint(path)
    assert f"(sha256 {old[:12]} when it started, {new[:12]} on a Ray worker)" in message
    assert _rows(out) == []
    monkeypatch.setattr(Runner, "_open", opened)
    path.write_bytes(first)
    summary = runner_for(RunConfig(**settings), progress=False, log=lambda *a: None).run()
    assert summary["n_rows"] == 2 and len(_rows(out)) == 2
