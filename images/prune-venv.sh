#!/bin/sh
# Removes from a virtual environment what no task of an image runs: the packages' own test
# suites and test data, C/C++ headers, Cython sources and static libraries (only for
# compiling against a package), and pyarrow's Flight and S3 modules (testprio reads gs://
# through google-cloud-storage and serves nothing; pyarrow.fs imports without them).
# Usage: sh prune-venv.sh VENV
set -eu
site=$(echo "$1"/lib/python3.*/site-packages)
find "$site" -depth -type d \( -name tests -o -name include \) -exec rm -rf {} +
rm -rf "$site/onnx/backend/test" "$site/pyarrow/src"
find "$site" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' \
    -o -name '*.hpp' -o -name '*.cuh' -o -name '*.a' \) -delete
rm -f "$site"/pyarrow/*flight* "$site"/pyarrow/*_s3* "$site"/pyarrow/_pyarrow_cpp_tests*
find "$site" -depth -type d -empty -delete
