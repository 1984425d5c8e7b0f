"""Container images of the components: the one place their names and tags live.

``TESTPRIO_REGISTRY`` and ``TESTPRIO_IMAGE_TAG`` (read when the components are imported,
i.e. at compile time) point the compiled pipeline at your own registry. Each image is built
from ``images/<name>/Dockerfile`` (``make images``), where ``<name>`` is the last part of
its repository here: ``{REGISTRY}/<name>:{TAG}``.
"""

import os

REGISTRY = os.environ.get("TESTPRIO_REGISTRY", "ghcr.io/testprio").rstrip("/")
TAG = os.environ.get("TESTPRIO_IMAGE_TAG", "0.1.0")

RUNTIME = f"{REGISTRY}/runtime:{TAG}"
RUNTIME_GPU = f"{REGISTRY}/runtime-gpu:{TAG}"
# One convert image per framework: the runtime plus that framework and its ONNX converter
# (TensorFlow and Paddle cannot share a process, nor sensibly an image).
CONVERT_PYTORCH = f"{REGISTRY}/convert-pytorch:{TAG}"
CONVERT_TENSORFLOW = f"{REGISTRY}/convert-tensorflow:{TAG}"
CONVERT_PADDLE = f"{REGISTRY}/convert-paddle:{TAG}"
# Not a component image: the report app's Deployment (manifests/) runs it.
REPORT_APP = f"{REGISTRY}/report-app:{TAG}"
