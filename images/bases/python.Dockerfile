# syntax=docker/dockerfile:1
# A stand-in for python:3.11-slim-bookworm, built from Debian bookworm's own packages where
# no registry can be reached (python images/build.py bases). Bookworm's python3 is 3.11, as
# in the official image; python, python3 and pip are on PATH, and pip may install into the
# system interpreter (no EXTERNALLY-MANAGED marker), as there. Images built on it inherit
# the stand-in label, so that build.py never pushes them. Context: images/bases.

ARG BASE=localhost/debian:bookworm
FROM ${BASE}
ARG SOURCE=https://github.com/testprio/testprio
LABEL org.opencontainers.image.title="python:3.11-slim-bookworm stand-in" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="3.11-bookworm" \
      org.opencontainers.image.description="Debian bookworm python3 3.11, venv, pip, ca-certificates" \
      org.testprio.stand-in="true"
RUN apt-get update \
 && apt-get install --yes --no-install-recommends \
      python3 python3-venv python3-pip python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python \
 && ln -s /usr/bin/python3 /usr/local/bin/python3
ENV LANG=C.UTF-8
CMD ["python3"]
