"""Preprocessing presets: named op lists, each the evaluation transform of a dataset's usual
training recipe (``--preset``)."""

from __future__ import annotations

# Named op lists. Each reproduces the evaluation transform of its dataset's usual training
# recipe, for images with values 0..255 (uint8 images, or arrays holding such values).
PRESETS: dict[str, list[dict]] = {
    # PyTorch examples/mnist/main.py: ToTensor() then Normalize((0.1307,), (0.3081,)). RGB and
    # RGBA inputs are turned gray first, so any image works -> (1, 28, 28).
    "mnist": [
        {"op": "grayscale"},
        {"op": "resize", "size": [28, 28]},
        {"op": "scale", "divide": 255},
        {"op": "standardize", "mean": [0.1307], "std": [0.3081]},
        {"op": "layout", "to": "NCHW"},
    ],
    # CIFAR-10 training-set channel mean and (population) std of pixels in 0..1, as in most
    # PyTorch CIFAR recipes. Gray images are repeated into RGB (Pillow's convert("RGB"), as
    # image-folder loaders do) -> (3, 32, 32).
    "cifar10": [
        {"op": "rgb"},
        {"op": "resize", "size": [32, 32]},
        {"op": "scale", "divide": 255},
        {"op": "standardize", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
        {"op": "layout", "to": "NCHW"},
    ],
    # torchvision's ImageNet classification reference (references/classification/presets.py):
    # Resize(256) of the shorter side, CenterCrop(224), ToTensor(), Normalize(ImageNet mean,
    # std). Gray images are repeated into RGB, as torchvision's ImageFolder loader does.
    "imagenet": [
        {"op": "rgb"},
        {"op": "resize", "size": 256},
        {"op": "center_crop", "size": 224},
        {"op": "scale", "divide": 255},
        {"op": "standardize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"op": "layout", "to": "NCHW"},
    ],
    # Sermanet & LeCun, "Traffic Sign Recognition with Multi-Scale Convolutional Networks"
    # (IJCNN 2011): 32x32 images, the Y channel of YUV only, contrast normalization (here
    # histogram equalization, as common reproductions do), then standardized with statistics
    # computed from the pool. Gray images pass through rgb_to_y -> (1, 32, 32).
    "gtsrb": [
        {"op": "resize", "size": [32, 32]},
        {"op": "rgb_to_y"},
        {"op": "equalize"},
        {"op": "scale", "divide": 255},
        {"op": "standardize"},
        {"op": "layout", "to": "NCHW"},
    ],
}
