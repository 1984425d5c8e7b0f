"""Container images of the components: the one place their names and tags live.

``TESTPRIO_REGISTRY`` and ``TESTPRIO_IMAGE_TAG`` (read when the components are imported,
i.e. at compile time) point the compiled pipeline at your own registry.
"""

import os

REGISTRY = os.environ.get("TESTPRIO_REGISTRY", "ghcr.io/testprio").rstrip("/")
TAG = os.environ.get("TESTPRIO_IMAGE_TAG", "0.1.0")

RUNTIME = f"{REGISTRY}/runtime:{TAG}"
RUNTIME_GPU = f"{REGISTRY}/runtime-gpu:{TAG}"
