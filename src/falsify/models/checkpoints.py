"""Face models from researchers' own checkpoints: ``--model ARCH:PATH``.

A checkpoint here is a file of weights, not of code: ``torch.load(path, weights_only=True)``
reads it, which accepts tensors and plain containers and refuses anything else without running
it. falsify builds the network itself (:mod:`.iresnet`, :mod:`.facenet`, :mod:`.adaface`, each
written to its reference's key names), checks every key and shape of the file against it, and
loads the weights. So a checkpoint is refused, with one line naming the first difference, when
it is of another architecture (with a guess at which, when one of ``ARCHITECTURES`` matches),
when it holds pickled objects (``argparse.Namespace``, a whole ``nn.Module``, ...), or when it
is not a PyTorch file at all; nothing is written in any of these cases.

What is read:

* a state dict (a dict of tensors), or one under ``"state_dict"`` (PyTorch Lightning),
  ``"state_dict_backbone"`` (arcface_torch's ``checkpoint_gpu_N.pt``) or ``"model_state_dict"``,
  or one level down under any other single key (``{'model': sd}``, ``'net'``, ``'backbone'``,
  ``'ema'``, ...; when several keys hold one, the one that fits the architecture; ``falsify
  verify`` names the key);
* key prefixes a training wrapper adds are removed: ``module.`` (DataParallel / DDP) for every
  architecture, ``model.`` for AdaFace's Lightning checkpoints (whose other tensors, ``head.*``,
  are the training head and are ignored);
* tensors that are no part of the embedding network are ignored: facenet-pytorch's classifier
  (``logits.*``);
* a missing ``num_batches_tracked`` (old or converted files) is taken as 0: it is not used at
  inference.

A user's checkpoint has no published decision threshold: the model's ``threshold`` is None,
and each run calibrates one on its data (``falsify verify`` prints the best one on the pairs it
is given).
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn

from ..choices import CHECKPOINT_ARCHS
from .adaface import ADAFACE_BLOCKS, ADAFACE_INPUT_SIZE
from .base import FaceEmbedder
from .facenet import FACENET_INPUT_SIZE, FACENET_MEAN, FACENET_STD
from .iresnet import IRESNET_BLOCKS, IRESNET_INPUT_SIZE

#: where a wrapped state dict may sit in a checkpoint dict, in the order they are looked for
NESTED_KEYS = ("state_dict", "state_dict_backbone", "model_state_dict")
#: key prefixes every architecture accepts (DataParallel / DistributedDataParallel)
COMMON_PREFIXES = ("module.",)


@dataclass(frozen=True)
class Architecture:
    """A network falsify builds for a user's checkpoint, with the preprocessing it was trained
    with (``falsify models`` prints these fields)."""

    name: str
    family: str  # "iresnet", "facenet" or "adaface": which module builds it
    description: str
    input_size: tuple[int, int]
    embedding_dim: int
    align: str  # what --align auto picks (a template of falsify.models.alignment)
    alignment_note: str  # how that compares with the alignment the weights were trained on
    mean: float  # the embedder's (x - mean) / std, x RGB in [0, 1]
    std: float
    channel_order: str
    normalisation: str  # the same, as the checkpoint's own code writes it
    checkpoint: str  # the layout of the file falsify reads
    cam_layer: str  # the CAM methods' default layer
    cam_note: str  # what that layer is
    source: str  # the reference the key names follow
    save_hint: str  # how to write a weights-only file from a pickled one
    blocks: tuple[int, ...] = ()  # residual blocks per stage (the ResNets)
    prefixes: tuple[str, ...] = ()  # key prefixes a training wrapper adds, besides COMMON_PREFIXES
    ignored: tuple[str, ...] = ()  # key prefixes (after the wrapper's) that are no part of the network

    def build(self) -> nn.Module:
        """The network with PyTorch's default initialisation."""
        if self.family == "iresnet":
            from .iresnet import iresnet

            return iresnet(self.name)
        if self.family == "adaface":
            from .adaface import adaface_ir

            return adaface_ir(self.name)
        from .facenet import InceptionResnetV1

        return InceptionResnetV1()


_ARCFACE_NOTE = "the five points arcface_torch's training data was aligned to"
_STATE_DICT_HINT = "torch.save(model.state_dict(), PATH)"

ARCHITECTURES: dict[str, Architecture] = {}
for _name, _blocks in IRESNET_BLOCKS.items():
    ARCHITECTURES[_name] = Architecture(
        name=_name, family="iresnet",
        description=f"insightface arcface_torch's IResNet-{_name[len('iresnet'):]} "
                    f"({'-'.join(map(str, _blocks))} blocks), e.g. its model zoo's backbone.pth",
        input_size=IRESNET_INPUT_SIZE, embedding_dim=512, align="arcface-112", alignment_note=_ARCFACE_NOTE,
        mean=0.5, std=0.5, channel_order="RGB",
        normalisation="(x - 0.5) / 0.5 on RGB in [0, 1] ((v - 127.5) / 127.5 on 0..255)",
        checkpoint="arcface_torch's backbone.pth: the state dict of backbones.get_model(name) (conv1, bn1, prelu, "
                   "layer1..4, bn2, fc, features), or checkpoint_gpu_N.pt's 'state_dict_backbone'",
        cam_layer="layer4", cam_note="the output of the last residual stage (512 x 7 x 7)",
        source="deepinsight/insightface recognition/arcface_torch/backbones/iresnet.py (MIT)",
        save_hint=_STATE_DICT_HINT, blocks=_blocks,
    )
ARCHITECTURES["facenet"] = Architecture(
    name="facenet", family="facenet",
    description="FaceNet's Inception-ResNet-v1 as facenet-pytorch ports it, e.g. 20180402-114759-vggface2.pt",
    input_size=FACENET_INPUT_SIZE, embedding_dim=512, align="arcface-112",
    alignment_note="the ArcFace five points scaled to 160 x 160 (falsify has no MTCNN: facenet-pytorch's "
                   "MTCNN crops the detected box, unrotated, with margin pixels, and resizes it; give "
                   "--align none for photos that are such crops already)",
    mean=FACENET_MEAN, std=FACENET_STD, channel_order="RGB",
    normalisation="facenet-pytorch's fixed_image_standardization, (v - 127.5) / 128 on RGB 0..255",
    checkpoint="the state dict of facenet_pytorch.InceptionResnetV1 (conv2d_1a ... block8, last_linear, "
               "last_bn); its classifier logits.* is ignored",
    cam_layer="repeat_3",
    cam_note="the output of the last rectified Inception-ResNet-C block (1792 x 3 x 3); block8 after it has no "
             "ReLU; --layer repeat_2 gives 896 x 8 x 8",
    source="timesler/facenet-pytorch models/inception_resnet_v1.py (MIT)",
    save_hint=_STATE_DICT_HINT,
    ignored=("logits.",),
)
for _name, _blocks in ADAFACE_BLOCKS.items():
    ARCHITECTURES[_name] = Architecture(
        name=_name, family="adaface",
        description=f"AdaFace's IR-{_name[len('adaface-ir'):]} ({'-'.join(map(str, _blocks))} blocks), e.g. "
                    f"adaface_ir{_name[len('adaface-ir'):]}_ms1mv2.ckpt",
        input_size=ADAFACE_INPUT_SIZE, embedding_dim=512, align="arcface-112",
        alignment_note="AdaFace's MTCNN alignment maps onto the same five points at 112 x 112",
        mean=0.5, std=0.5, channel_order="BGR", normalisation="(x - 0.5) / 0.5 on BGR in [0, 1] (AdaFace's to_input)",
        checkpoint="AdaFace's PyTorch Lightning .ckpt ('state_dict' with the network under model.; head.* "
                   "ignored), read only if it holds tensors and plain values alone; or the network's own "
                   "state dict (input_layer, body, output_layer)",
        cam_layer=f"body.{sum(_blocks) - 1}", cam_note="the output of the last residual block (512 x 7 x 7)",
        source="mk-minchul/AdaFace net.py (MIT)",
        save_hint="sd = torch.load(CKPT, weights_only=False)['state_dict']; "
                  "torch.save({k[6:]: v for k, v in sd.items() if k.startswith('model.')}, PATH)",
        prefixes=("model.",), blocks=_blocks,
    )
del _name, _blocks

#: one line per family of architectures, for ``falsify models``
FAMILIES = {
    "iresnet": "insightface arcface_torch's IResNets (ArcFace, CosFace, Partial FC: the model zoo's backbone.pth)",
    "facenet": "FaceNet's Inception-ResNet-v1 as facenet-pytorch ports it (20180402-114759-vggface2.pt, "
               "20180408-102900-casia-webface.pt)",
    "adaface": "AdaFace's IR ResNets (adaface_ir50_ms1mv2.ckpt, adaface_ir101_webface12m.ckpt, ...)",
}

if tuple(ARCHITECTURES) != CHECKPOINT_ARCHS:
    raise RuntimeError("falsify.choices.CHECKPOINT_ARCHS and the checkpoint architectures disagree")


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


@lru_cache(maxsize=None)
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The state dict keys of architecture ``name`` (module order) and their shapes, from a
    network built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        net = architecture(name).build()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# reading


def read_checkpoint(path: str | Path, label: str, save_hint: str = _STATE_DICT_HINT):
    """``torch.load(path, weights_only=True)`` on the CPU, every failure as one ``ValueError``
    (or ``FileNotFoundError``) line that starts with ``label``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{label}: checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"{label}: {path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)", str(exc))
        if found:
            raise ValueError(
                f"{label} holds pickled Python objects (e.g. {found.group(1)}), and falsify does not unpickle "
                "checkpoints: that could run any code the file names (--trust-pickle does not change this). "
                f"Where you trust the file, save the weights alone and pass that file: {save_hint}"
            ) from None
        raise ValueError(f"{label} is not a PyTorch checkpoint, or it is damaged (torch.load: "
                         f"{_last_line(exc)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - RuntimeError, EOFError, KeyError ... from a non-PyTorch file
        raise ValueError(f"{label} is not a PyTorch checkpoint, or it is damaged (torch.load: "
                         f"{type(exc).__name__}: {_last_line(exc)})") from None


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Check the doc")]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def find_state(obj, label: str, arch: "Architecture | None" = None) -> tuple[dict, str | None]:
    """The state dict in a loaded checkpoint, and the key it was found under (None: the file is
    the state dict itself). Looked for in this order: ``obj`` itself when it maps names to
    tensors; the dict under one of ``NESTED_KEYS``; the dict of tensors under any other single
    key, one level down (``{'model': sd}``, ``'net'``, ``'backbone'``, ``'ema'``, ``'module'``, ...).
    When several keys hold one, the one that fits ``arch`` is taken if only one does; else
    ``ValueError`` names them."""
    if not isinstance(obj, dict):
        raise ValueError(f"{label} holds a {type(obj).__name__}, not a state dict; save one with "
                         f"{_STATE_DICT_HINT}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, key
    nested = [k for k, v in obj.items()
              if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
    if len(nested) > 1 and arch is not None:
        fitting = [k for k in nested if mismatch(arch, obj[k])[0] is None]
        nested = fitting if len(fitting) == 1 else nested
    if len(nested) == 1:
        return obj[nested[0]], str(nested[0])
    if nested:
        keys = ", ".join(repr(k) for k in nested)
        raise ValueError(f"{label} holds state dicts under several keys ({keys}); save the one to test alone: "
                         f"sd = torch.load(CKPT, weights_only=True)[{nested[0]!r}]; torch.save(sd, PATH)")
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise ValueError(f"{label}: key {bad} holds a {type(obj[bad]).__name__}, not a tensor; a state dict "
                         f"maps names to tensors ({_STATE_DICT_HINT})")
    keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
    raise ValueError(f"{label} holds a dict without tensors ({keys or 'empty'}), and no state dict one level down "
                     f"under any of its keys; save one with {_STATE_DICT_HINT}")


def unwrap(obj, label: str) -> dict:
    """The state dict in a loaded checkpoint (:func:`find_state` without the key)."""
    return find_state(obj, label)[0]


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _network_keys(arch: Architecture, state: dict) -> tuple[dict, str]:
    """``state``'s entries for the network (the wrapper prefix that fits best removed, ignored
    keys left out), and that prefix."""
    expected = expected_shapes(arch.name)
    best: tuple[int, str] | None = None
    for prefix in ("",) + arch.prefixes + COMMON_PREFIXES:
        n = sum(1 for k in state if isinstance(k, str) and k.startswith(prefix) and k[len(prefix):] in expected)
        if best is None or n > best[0]:
            best = (n, prefix)
    prefix = best[1] if best else ""
    inner = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    return {k: v for k, v in inner.items() if not k.startswith(arch.ignored)}, prefix


def mismatch(arch: Architecture, state: dict) -> tuple[str | None, int]:
    """The first difference between ``state`` and ``arch``'s network (None: it loads), and how
    many of the network's keys were found."""
    expected = expected_shapes(arch.name)
    net, prefix = _network_keys(arch, state)
    found = sum(1 for k in expected if k in net)
    for key, shape in expected.items():
        if key not in net:
            if key.endswith("num_batches_tracked"):
                continue
            first = next(iter(state), None)
            hint = f" (its first key is {first})" if first is not None and found == 0 else ""
            return f"key {prefix}{key} is missing from the checkpoint{hint}", found
        value = net[key]
        if not isinstance(value, torch.Tensor):
            return f"key {prefix}{key} holds a {type(value).__name__}, not a tensor", found
        if tuple(value.shape) != shape:
            return (f"key {prefix}{key} has shape {_shape(value.shape)} in the checkpoint, {_shape(shape)} in "
                    f"{arch.name}"), found
        if not (value.is_floating_point() or key.endswith("num_batches_tracked")):
            return f"key {prefix}{key} holds {value.dtype} values, not floating point", found
    extra = next((k for k in net if k not in expected), None)
    if extra is not None:
        return f"key {prefix}{extra} is in the checkpoint but not in {arch.name}", found
    return None, found


def network_state(arch: Architecture, state: dict, label: str) -> dict[str, torch.Tensor]:
    """``state`` as the network's complete state dict, or a ``ValueError`` naming the first
    mismatch (and the architecture the checkpoint matches instead, when one does)."""
    problem, found = mismatch(arch, state)
    if problem is not None:
        others = [a.name for a in ARCHITECTURES.values() if a.name != arch.name and mismatch(a, state)[0] is None]
        if others:
            guess = f"; is it {' or '.join(others)}? (--model {others[0]}:PATH)"
        elif found == 0:
            guess = (f"; it is not a {arch.name} checkpoint, nor one of another architecture falsify knows "
                     "(falsify models lists them and their layouts)")
        else:
            guess = f"; it is not a {arch.name} checkpoint ({arch.checkpoint})"
        raise ValueError(f"{label}: {problem}{guess}")
    net, _ = _network_keys(arch, state)
    return {k: net[k] if k in net else torch.zeros((), dtype=torch.long) for k in expected_shapes(arch.name)}


# ---------------------------------------------------------------------------------------------
# loading


def check_checkpoint(arch_name: str, path: str | Path, label: str | None = None) -> None:
    """Read ``path`` and check it against ``arch_name`` without building the network: the
    errors of :func:`load_checkpoint`, at the cost of reading the file."""
    arch = architecture(arch_name)
    label = label or f"{arch_name}:{path}"
    network_state(arch, find_state(read_checkpoint(_path(arch, path, label), label, arch.save_hint), label, arch)[0],
                  label)


def _path(arch: Architecture, path, label: str) -> Path:
    if not str(path).strip():
        raise ValueError(f"{label}: give the checkpoint's path after the colon, e.g. "
                         f"--model {arch.name}:/path/to/{'backbone.pth' if arch.family == 'iresnet' else 'weights.pt'}")
    return Path(path).expanduser()


def load_checkpoint(arch_name: str, path: str | Path, label: str | None = None) -> FaceEmbedder:
    """Architecture ``arch_name`` with the weights in ``path``, as a :class:`FaceEmbedder` in eval
    mode on the CPU: its input size, normalisation and channel order, its CAM layer, no
    threshold (a run calibrates one). Named ``ARCH:FILENAME`` in reports and result stores."""
    arch = architecture(arch_name)
    label = label or f"{arch_name}:{path}"
    file = _path(arch, path, label)
    state, key = find_state(read_checkpoint(file, label, arch.save_hint), label, arch)
    state = network_state(arch, state, label)
    with torch.device("meta"):  # no memory and no initialisation: every tensor comes from the file
        net = arch.build()
    state = {k: v.to(torch.float32).contiguous() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)
    # a NaN or infinity anywhere makes the sum one (finite weights would need magnitudes near 1e32 to overflow it)
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v.sum())), None)
    if bad is not None:
        raise ValueError(f"{label}: key {bad} holds NaN or infinite values; the checkpoint is damaged")
    model = FaceEmbedder(
        net, input_size=arch.input_size, mean=arch.mean, std=arch.std, channel_order=arch.channel_order,
        name=f"{arch.name}:{file.name}", threshold=None, cam_layer=arch.cam_layer,
    ).eval()
    model.checkpoint_key = key  # where in the file the weights were (None: the file is the state dict)
    return model


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "FAMILIES",
    "architecture",
    "check_checkpoint",
    "expected_shapes",
    "find_state",
    "load_checkpoint",
    "mismatch",
    "network_state",
    "read_checkpoint",
    "unwrap",
]
