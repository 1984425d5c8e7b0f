"""The `make demo` scripts: train a digits CNN, then rank its unlabeled pool."""
