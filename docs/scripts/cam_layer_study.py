"""Where does Grad-CAM put its mass on dlib's ResNet, layer by layer?

Prints, for 16 seeded pairs of the shared LFW sample, the share of each map's mass inside the
central 120x120 square (64% of the 150x150 image) and in the bottom/right 15-px bands, where
dlib's add_prev zero-pads the deeper stages. Run: python docs/scripts/cam_layer_study.py [DATA]
"""
import sys

import torch

from falsify.attribution import get_explainer
from falsify.data import load_images, load_pairs
from falsify.models import load_model

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/lfw-sample"
m = load_model("dlib-resnet", device="cpu")
ps = load_pairs(data).sample(16, seed=2)
xa, _ = load_images([p.a for p in ps], m.input_size)
xb, _ = load_images([p.b for p in ps], m.input_size)
with torch.no_grad():
    refs = m(xb)
print("layer             inside(64% area) mean/min   bottom+right bands (19% area) mean")
for layer in ["layer4.2.conv2", "layer4.2", "layer3.2.conv2", "layer3.2", "layer2.3.conv2", "layer2.3"]:
    maps = get_explainer("gradcam", m, layer=layer)(xa, refs)
    total = maps.sum((1, 2)).clamp_min(1e-12)
    inside = maps[:, 15:135, 15:135].sum((1, 2)) / total
    br = (maps[:, 135:, :].sum((1, 2)) + maps[:, :135, 135:].sum((1, 2))) / total
    print(f"{layer:17s} {inside.mean():.2f} / {inside.min():.2f}                  {br.mean():.2f}")
