# The offline stand-in for python:3.11-slim-bookworm as the Triton image's base
# (docker/triton/Dockerfile), for machines that reach no image registry: `make images` builds
# it and passes it as that Dockerfile's BASE_IMAGE.
#
# DEBIAN_IMAGE: the Debian bookworm root of docker/offline/Dockerfile (with libpython3.11, which
# Triton's Python backend stub loads). The build context is a wheelhouse the host filled with
# requirements-triton.txt's wheels (`pip download`, at the versions of the host's Triton
# environment): nothing is fetched inside the build. The Triton environment is installed here,
# where the Triton image keeps it, so that image's own `pip install` lines find it complete;
# it is not the kit's other stand-in: Triton needs numpy<2, that one has numpy 2.
ARG DEBIAN_IMAGE=deploybench-offline/debian:bookworm

FROM ${DEBIAN_IMAGE} AS install
COPY . /wheels
RUN python3.11 -m venv /opt/triton-venv \
    && /opt/triton-venv/bin/pip install --no-index --find-links /wheels --no-cache-dir \
        -r /wheels/requirements.txt \
    && mkdir /opt/wheels && cp /wheels/setuptools-*.whl /wheels/wheel-*.whl /opt/wheels/

# A second stage, so the wheelhouse is no layer of the image
FROM ${DEBIAN_IMAGE}
COPY --from=install /opt/triton-venv /opt/triton-venv
COPY --from=install /opt/wheels /opt/wheels
# the kit is built from its sources in the Triton image: its build backend, from /opt/wheels
ENV PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/opt/wheels \
    PYTHONUNBUFFERED=1
