"""Fixtures beyond the ResNet family (imported by make_fixtures.py).

Each entry: (constructor, .net file, --set overrides, input resolution). Reduced
resolutions (and depth/width where noted) keep CI fast; the weights are still
generated for the whole model and nothing but inputs and outputs is stored.
"""
import torchvision

from replknet_ref import RepLKNet


def tv(name, **kw):
    return lambda: getattr(torchvision.models, name)(weights=None, **kw)


MORE = {
    "efficientnet_b0": (tv("efficientnet_b0"), "models/efficientnet_b0.net", ["resolution=64"], 64),
    "convnext_tiny": (tv("convnext_tiny"), "models/convnext_tiny.net", ["resolution=64"], 64),
    "googlenet": (tv("googlenet", aux_logits=False, init_weights=False), "models/googlenet.net", ["resolution=64"], 64),
    # ViT-B/16 reduced to 2 encoder layers at 64x64 (17 tokens).
    "vit_b_16": (
        lambda: torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=12,
                                                     hidden_dim=768, mlp_dim=3072),
        "models/vit_b_16.net", ["resolution=64", "num_layers=2"], 64),
    # RepLKNet-31B's kernels with one block per stage and a quarter of the width.
    "replknet31b": (
        lambda: RepLKNet([31, 29, 27, 13], [1, 1, 1, 1], [32, 64, 128, 256], small_kernel=5),
        "models/replknet31b.net", ["resolution=64", "layers=[1, 1, 1, 1]", "channels=[32, 64, 128, 256]"], 64),
    "densenet121": (tv("densenet121"), "models/densenet121.net", ["resolution=64"], 64),
    "mobilenet_v2": (tv("mobilenet_v2"), "models/mobilenet_v2.net", ["resolution=64"], 64),
}

# Native-size variants for `make_fixtures.py --full` where the CI fixture is reduced.
FULL = {
    "vit_b_16": (tv("vit_b_16"), "models/vit_b_16.net", [], 224),
    "replknet31b": (lambda: RepLKNet([31, 29, 27, 13], [2, 2, 18, 2], [128, 256, 512, 1024], small_kernel=5),
                    "models/replknet31b.net", [], 224),
}
