"""The float32 rounding of the test's distances (docs/method.md, "Nothing to test"): how far one
image's embedding moves when it is computed again in another batch, and how far a flat-colour
image's counterfactuals move it, against ``falsify.geometry.angle_rounding``.

    python docs/scripts/rounding.py --data ../shared/data/lfw-sample
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/scripts/rounding.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an LFW-layout folder (its first 8 images are used)")
    parser.add_argument("--model", default="dlib-resnet")
    args = parser.parse_args(argv)

    import tempfile
    from pathlib import Path

    import torch
    from PIL import Image

    from falsify.data import load_image
    from falsify.falsification import FalsificationConfig, falsification_test
    from falsify.geometry import FLOAT32_EPS, angle_rounding, geodesic_distance
    from falsify.models import load_model

    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    paths = sorted(Path(args.data).glob("*/*.jpg"))[:8]
    faces = torch.stack([load_image(p, model.input_size, model.aligner) for p in paths])
    with torch.inference_mode():
        alone = torch.cat([model(f[None]).float() for f in faces])
        batched = model(faces).float()
        batch64 = model(faces.repeat(8, 1, 1, 1)).float()[: len(faces)]
    dim = alone.shape[1]
    print(f"model {model.name}, {dim}-d; angle_rounding({dim}) = {angle_rounding(dim):.2e} rad "
          f"(512-d: {angle_rounding(512):.2e})")
    for label, other in (("a batch of 8", batched), ("a batch of 64", batch64)):
        ulps = float((alone - other).abs().max()) / FLOAT32_EPS
        angle = float(geodesic_distance(alone.double(), other.double()).max())
        print(f"each image alone vs in {label}: largest component difference {ulps:.1f} spacings of 1, "
              f"largest angle {angle:.2e} rad")

    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.png"
        Image.new("RGB", (200, 200), (128, 100, 90)).save(flat)
        x = load_image(flat, model.input_size, model.aligner)[None]
    maps = torch.rand(1, *model.input_size, generator=torch.Generator().manual_seed(0))
    for fill in ("mean", "blur"):
        config = FalsificationConfig.preset("plain", fill=fill, tau_high=0.1, tau_low=0.05, epsilon=0.05)
        (r,) = falsification_test(model, x, None, maps, config)
        print(f"flat-colour image, fill {fill}: d_high {r.d_high:.2e}, d_low {r.d_low:.2e} rad -> {r.verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
