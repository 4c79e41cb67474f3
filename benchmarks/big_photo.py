"""A camera-sized photo through the public API, as `falsify verify` loads it.

Makes a big photo from a real face of the shared sample (the 350 x 350 crop upscaled with
Pillow's bicubic filter to SIZE x SIZE, saved as a JPEG of quality 95 or a PNG), then, in a fresh Python
process: ``load_model("dlib-resnet")`` and ``load_image(path, model.input_size, model.aligner)``
on the big photo (landmarks detected, not taken from a cache), and the same for the original
crop. Prints whether the big photo was aligned, the cosine between the two embeddings (the
original is what the face looks like at the size YuNet and the model were made for), the
seconds load_image took on the big photo, and the process's peak RSS (getrusage) after the
model was loaded and after the big photo.

    python benchmarks/big_photo.py             # 6000 x 6000, the first image of pairs.txt
    python benchmarks/big_photo.py --count 3   # three faces, through load_images
    python benchmarks/big_photo.py --size 3000 --format png
    python benchmarks/big_photo.py --image path/to/face.jpg --format png
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-sample"


def _child(original: list[str], big: list[str]) -> dict:
    import resource
    import time

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    import torch
    import torch.nn.functional as F

    from falsify.data import load_image, load_images
    from falsify.models import load_model
    from falsify.models.alignment import LandmarkCache

    model = load_model("dlib-resnet")
    model.aligner.cache = LandmarkCache(None)  # detect: no landmarks from an earlier run
    with torch.inference_mode():
        model(torch.zeros(1, 3, *model.input_size))
    after_model = peak_mib()
    t = time.perf_counter()
    if len(big) == 1:
        xb = load_image(big[0], model.input_size, model.aligner).unsqueeze(0)
    else:
        xb, _ = load_images(big, model.input_size, align=model.aligner)
    seconds = time.perf_counter() - t
    after_big = peak_mib()
    aligned = sorted(model.aligner.stats.aligned)
    xo, _ = load_images(original, model.input_size, align=model.aligner)
    with torch.inference_mode():
        cos = F.cosine_similarity(model(xb), model(xo), dim=1).tolist()
    return {"aligned": [p in aligned for p in big], "cosine": cos, "seconds": seconds,
            "peak_rss_mib_after_model": after_model, "peak_rss_mib": after_big}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the shared LFW sample")
    ap.add_argument("--image", action="append", help="a face photo (repeatable); default: from pairs.txt")
    ap.add_argument("--size", type=int, default=6000, help="the big photo's side in pixels (default 6000)")
    ap.add_argument("--count", type=int, default=1, help="how many faces (>1: through load_images)")
    ap.add_argument("--format", choices=("jpg", "png"), default="jpg")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child[0]), json.loads(args.child[1]))))
        return 0

    from PIL import Image

    if args.image:
        originals = [Path(p) for p in args.image]
    else:
        from falsify.data import load_pairs

        seen: list[Path] = []
        for p in load_pairs(args.data):
            for q in (p.a, p.b):
                if q not in seen:
                    seen.append(Path(q))
        originals = seen[: args.count]
    with tempfile.TemporaryDirectory() as tmp:
        bigs = []
        for i, path in enumerate(originals):
            out = Path(tmp) / f"big{i}_{path.stem}.{args.format}"
            with Image.open(path) as img:
                img.convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(out, quality=95)
            bigs.append(out)
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps([str(p) for p in originals]),
                              json.dumps([str(p) for p in bigs])], capture_output=True, text=True)
        if res.returncode:
            print(res.stdout + res.stderr, file=sys.stderr)
            return res.returncode
        r = json.loads(res.stdout.strip().splitlines()[-1])
        sizes = ", ".join(f"{p.stat().st_size / 2**20:.1f} MiB" for p in bigs)
    print(f"{len(bigs)} photo(s) of {args.size} x {args.size} ({args.format}, {sizes}) from "
          f"{', '.join(p.name for p in originals)}; dlib-resnet, landmarks detected (no cache)")
    for p, ok, c in zip(originals, r["aligned"], r["cosine"]):
        print(f"  {p.name}: aligned {'yes' if ok else 'NO (no face found)'}, cosine to the original {c:.4f}")
    print(f"load_image{'s' if len(bigs) > 1 else ''}: {r['seconds']:.2f} s; peak RSS "
          f"{r['peak_rss_mib']:.0f} MiB ({r['peak_rss_mib_after_model']:.0f} MiB after loading the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
