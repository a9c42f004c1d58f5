#!/bin/sh
# Install OpenBLAS (Debian/Ubuntu libopenblas-dev) for the optional cgo BLAS
# build of the trainer:
#
#   scripts/install-openblas.sh
#   go build -tags openblas ./cmd/entropi
#
# The default build (no tag) is pure Go (gonum's native BLAS) and needs none
# of this; it is about 4.5x slower per CPU-second for training (measured
# figures: model/train/loop.go, "BLAS builds").
set -eu
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends libopenblas-dev pkg-config gcc
# Show what got installed and where the library lives.
dpkg -s libopenblas-dev | sed -n 's/^Version: /libopenblas-dev /p'
ldconfig -p | grep -m1 'libopenblas\.so' || true
