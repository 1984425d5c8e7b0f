"""testprio: rank unlabeled inputs by how unsure a classifier is about them."""

__version__ = "0.1.0"
