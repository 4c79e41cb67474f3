"""The names users choose from (methods, fills, region granularities, experiments).

Kept free of heavy imports so that ``falsify --help`` and argument checking do not load torch;
the packages that implement each choice import their tuples from here, so there is one list.
"""
from __future__ import annotations

#: Attribution methods, in the order reports list them (``falsify.attribution`` checks that its
#: registry matches this tuple).
METHODS: tuple[str, ...] = (
    "gradcam", "gradcam++", "biometric-gradcam", "ig", "geodesic-ig", "saliency",
    "gradient-x-input", "occlusion", "kernelshap", "lime", "smoothgrad", "vargrad", "similarity-map", "xssab", "rise",
    "rise-dissimilarity", "random", "centre", "edge",
)

#: What a run computes when ``--methods`` is not given: the eleven methods the experiments were
#: designed around, and the controls. ``--methods all`` runs every name of :data:`METHODS`; methods
#: added later (smoothgrad, vargrad, the face-verification methods) are run by name or with ``all``,
#: so a default run's rows, cost and recorded results stay those of ``make run``.
DEFAULT_METHODS: tuple[str, ...] = (
    "gradcam", "gradcam++", "biometric-gradcam", "ig", "geodesic-ig", "saliency",
    "gradient-x-input", "occlusion", "kernelshap", "lime", "random", "centre", "edge",
)

#: Methods that need the model's decision threshold (a model without one of its own gets the
#: calibrated threshold, or the method's ``threshold`` option).
THRESHOLD_METHODS: tuple[str, ...] = ("biometric-gradcam", "xssab")

#: Control maps: they cannot be right about the model on this image (``random`` ignores both,
#: ``centre`` ignores the image, ``edge`` ignores the model). Reports mark them as controls.
CONTROLS: tuple[str, ...] = ("random", "centre", "edge")

#: Suffixes of control rows derived from a method: its map computed on a randomised copy of the
#: model (tested on the real one), or against another pair's reference.
RANDOM_MODEL = "@random-model"
#: ``--model NAME:random``: the model with every weight redrawn (``falsify.models``), a control
#: (experiment 6.4 compares it with the real models).
RANDOM_SUFFIX = ":random"
#: Built-in face models (``falsify.models.MODELS`` holds what each is, and checks that it matches
#: this tuple), and the other names they answer to.
MODEL_NAMES: tuple[str, ...] = ("dlib-resnet", "sface")
MODEL_ALIASES: dict[str, str] = {"dlib": "dlib-resnet"}
OTHER_REFERENCE = "@other-reference"


def is_control(method: str) -> bool:
    """Whether a row name is a control (``centre``, ``edge``, ``random``, ``METHOD@random-model``, ...)."""
    return method in CONTROLS or method.endswith((RANDOM_MODEL, OTHER_REFERENCE))

#: ``--align``: the model's own choice, a plain resize, or a template (falsify.models.alignment).
ALIGN_CHOICES: tuple[str, ...] = ("auto", "none", "arcface-112", "dlib-150")

#: What a model's network runs in (``--precision``; ``falsify.models.precision`` says where each runs).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

#: Counterfactual fills: what replaces the hidden pixels.
FILLS: tuple[str, ...] = ("blur", "mean", "zero", "mirror", "noise", "optimised")
STOCHASTIC_FILLS: tuple[str, ...] = ("noise", "optimised")
DETERMINISTIC_FILLS: tuple[str, ...] = ("blur", "mean", "zero", "mirror")

#: Feature granularities of the falsification regions.
GRANULARITIES: tuple[str, ...] = ("pixel", "grid", "superpixel")

#: Falsification criteria (docs/method.md): the plain thresholds, beating the model's prior map on
#: the same image, or beating the map's own mirror image (its sets reflected left-right).
CRITERIA: tuple[str, ...] = ("absolute", "beyond-prior", "beyond-mirror")

#: Named test configurations (``falsify.falsification.core.PRESETS`` holds their values).
PRESET_NAMES: tuple[str, ...] = ("beyond-prior", "plain")

#: What the test's distances measure: how far f(x) moves (``embedding``), or how far the pair's
#: angle to the reference moves (``pair``), or only how far it moves away from the reference
#: (``signed-pair``: hiding evidence must lower the similarity; a move towards it counts as none),
#: or the signed change of that angle (``signed-angle``: a move towards the reference is negative).
TARGETS: tuple[str, ...] = ("embedding", "pair", "signed-pair", "signed-angle")
#: the targets measured against the pair's reference (they need one)
PAIR_TARGETS: tuple[str, ...] = ("pair", "signed-pair", "signed-angle")

#: Experiments ``falsify run`` knows.
EXPERIMENTS: tuple[str, ...] = ("6.1", "6.2", "6.3", "6.4", "6.5", "6.6", "validity", "known-truth")

#: ``falsify run --executor``: who computes every experiment's rows (``falsify.experiments.executor``); the first is the default.
EXECUTORS: tuple[str, ...] = ("in-process", "ray")

#: Experiment 6.6's paired families: (standard method, its biometric counterpart). Each pair is two
#: real methods (``falsify.attribution``), not a rescaled copy of one.
METHOD_FAMILIES: tuple[tuple[str, str], ...] = (("gradcam", "biometric-gradcam"), ("ig", "geodesic-ig"))

#: ``--stratify``: sample pairs balanced by this attribute of image A (``falsify.data.labels``).
STRATIFY_CHOICES: tuple[str, ...] = ("gender",)

#: Architectures whose checkpoints (state dicts) falsify loads as ``ARCH:PATH``
#: (``--model iresnet50:/path/backbone.pth``); ``falsify.models.checkpoints`` holds each one's
#: network, preprocessing and checkpoint layout, and checks that its registry matches this tuple.
CHECKPOINT_ARCHS: tuple[str, ...] = (
    "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "facenet",
    "adaface-ir18", "adaface-ir34", "adaface-ir50", "adaface-ir101",
)


def split_checkpoint(name) -> tuple[str, str] | None:
    """``"ARCH:PATH"`` -> ``(ARCH, PATH)`` when ARCH is one of ``CHECKPOINT_ARCHS``, else None.

    The text is split at its first ``:`` (no architecture name has one), so PATH may hold ``:``
    itself; a trailing ``:random`` is not part of PATH here only because ``load_model`` and
    experiment 6.4 strip it first (the randomised control). A model file whose own name starts
    with an architecture name and a colon is given as ``./iresnet50:x.onnx``.
    """
    if not isinstance(name, str):
        return None
    arch, sep, path = name.partition(":")
    return (arch, path) if sep and arch in CHECKPOINT_ARCHS else None

def unknown_architecture(name) -> str | None:
    """The one-line answer to ``ARCH:PATH`` whose ``ARCH`` is no architecture falsify knows (a
    typo such as ``iresnet51``): the known ones and the closest match. None when ``name`` is not
    such a spec: ``ARCH`` is known, or is no name (a path such as ``./x:y.onnx``, a drive letter),
    or ``name`` is itself an existing file, or nothing after the colon exists and ``ARCH`` is like
    no architecture (then it is an ordinary missing file)."""
    import difflib
    import os
    import re

    if not isinstance(name, str):
        return None
    arch, sep, path = name.partition(":")
    if (not sep or arch in CHECKPOINT_ARCHS or len(arch) < 2
            or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]*", arch) or os.path.isfile(os.path.expanduser(name))):
        return None
    if ":" + path == RANDOM_SUFFIX:  # NAME:random, the randomised control of a built-in model
        return None
    path = path[: -len(RANDOM_SUFFIX)] if path.endswith(RANDOM_SUFFIX) else path
    close = difflib.get_close_matches(arch.lower(), CHECKPOINT_ARCHS, n=1, cutoff=0.6)
    if not close and not (path and os.path.isfile(os.path.expanduser(path))):
        return None
    guess = f"did you mean {close[0]}? " if close else ""
    return f"{arch}: unknown architecture; {guess}known: {', '.join(CHECKPOINT_ARCHS)} (--model ARCH:PATH)"


#: ``falsify run known-truth``: how a composite is made (a part of the donor on image A, or on the
#: average face), and which parts it takes (falsify.experiments.known_truth)
TRUTH_CONSTRUCTIONS: tuple[str, ...] = ("lateral", "parts", "swap", "average")
TRUTH_PARTS: tuple[str, ...] = ("eyes", "eyes+nose", "inner")
#: the methods the known-truth benchmark runs when none are given: the gradient and CAM methods
#: that cost little, and the controls
TRUTH_METHODS: tuple[str, ...] = ("saliency", "gradient-x-input", "gradcam", "gradcam++", "biometric-gradcam",
                                  "random", "centre", "edge")
