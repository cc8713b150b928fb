#!/usr/bin/env bash
# scripts/build-wheel.sh [OUT]: the manylinux x86-64 wheel of vramcap, into OUT (default target/wheels).
# It is `pip wheel .`: pip fetches maturin into an isolated build environment, and the build backend
# (python/build_backend/vramcap_build.py) builds libvramcap.so into the wheel's data folder before maturin
# builds the binaries and packs everything. The tag is manylinux_<glibc>: the binaries need the glibc they
# were linked against (2.34 on Debian 12, where CI builds); VRAMCAP_MANYLINUX=manylinux_2_XX names another,
# and maturin refuses a tag the binaries do not meet. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/wheels}
python=${PYTHON:-python3}
tag=${VRAMCAP_MANYLINUX:-manylinux_2_34}
mkdir -p "$out"
MATURIN_PEP517_ARGS="--compatibility $tag --locked" \
  "$python" -m pip wheel --no-deps --disable-pip-version-check -w "$out" .
# The newest wheel of that tag in OUT (no pipe: a reader that stops early would fail the script).
wheel=$(ls -t "$out"/vramcap-*-"${tag}"_x86_64.whl)
echo "${wheel%%$'\n'*}"
