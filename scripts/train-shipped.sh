#!/bin/sh
# Trains, calibrates and measures the three shipped models of models/README.md
# with the exact commands used for them (same size, same 10M-token budget,
# same seed). OpenBLAS build (scripts/install-openblas.sh first); on 2 cores
# each softmax-only model takes about 40 minutes of phase 1, the baseline
# about 70 (idle cores; models/README.md has the measured wall times).
#
#   scripts/train-shipped.sh [ereg|baseline|sm] ...   (default: all three)
set -eu
cd "$(dirname "$0")/.."
go build -tags openblas -o /tmp/entropi-blas ./cmd/entropi
RUNS=${RUNS:-/tmp/entropi-runs}
mkdir -p "$RUNS" models

phase1() { # name variant [extra flags]
	name=$1
	variant=$2
	shift 2
	/tmp/entropi-blas train --variant "$variant" --tokens 10000000 --workers 2 --blas-threads 1 \
		--seed 1 --checkpoint-every 200 --out "$RUNS/$name.safetensors" --state "$RUNS/$name.state" "$@"
}

train() { # name variant [extra flags]
	name=$1
	phase1 "$@"
	# Phase 2: 1M tokens at lr 1e-3, then 1M at 5e-4, with the score-range
	# penalty, so that the attention scores stay near [-4, 4] where CKKS
	# evaluates exp (model/train/range.go).
	cp "$RUNS/$name.state" "$RUNS/$name-ft.state"
	/tmp/entropi-blas train --resume "$RUNS/$name-ft.state" --state "$RUNS/$name-ft.state" \
		--extend-tokens 1000000 --extend-lr 0.001 --score-bound 4 --score-penalty 1 \
		--workers 2 --blas-threads 1 --out "$RUNS/$name-ft.safetensors"
	/tmp/entropi-blas train --resume "$RUNS/$name-ft.state" --state "$RUNS/$name-ft.state" \
		--extend-tokens 1000000 --extend-lr 0.0005 --score-bound 4 --score-penalty 1 \
		--workers 2 --blas-threads 1 --out "$RUNS/$name-ft.safetensors"
	# and 1M at 5e-4 that also keeps each row's log mean exp-score in
	# [-2.5, 2.5] (the range of the encrypted softmax's reciprocal).
	/tmp/entropi-blas train --resume "$RUNS/$name-ft.state" --state "$RUNS/$name-ft.state" \
		--extend-tokens 1000000 --extend-lr 0.0005 --mean-bound 2.5 --mean-penalty 1 \
		--workers 2 --blas-threads 1 --out "$RUNS/$name-ft.safetensors"
	ship "$name" "$RUNS/$name-ft.safetensors"
}

ship() { # name trained-checkpoint
	name=$1
	# Calibrate the HE approximations on held-out tokens and ship that file.
	/tmp/entropi-blas eval --model "$2" --data go-heldout --calibrate \
		--save "models/$name.safetensors" --quiet
	/tmp/entropi-blas eval --model "models/$name.safetensors" --data go-heldout --tokens 65536 --quiet
	/tmp/entropi-blas eval --model "models/$name.safetensors" --data go-heldout --tokens 65536 --preset n14-128 --quiet
	/tmp/entropi-blas entropy --model "models/$name.safetensors" --data go-heldout \
		--png "models/$name.entropy.png" --quiet
}

[ $# -gt 0 ] || set -- ereg baseline sm
for m in "$@"; do
	case $m in
	ereg) train ereg-sm-t-scfuffn ereg-sm-t-scfuffn --lambda 0.01 ;;
	baseline) train baseline baseline ;;
	sm)
		# Without the entropy regularizer and the learnable temperature,
		# this block diverged at the shared learning rate (models/README.md:
		# scores past 10^8, entropy collapse in layers 1-3 by step 600), so
		# its score-range penalty is on from the first step; it stays within
		# range, and is calibrated and shipped as phase 1 left it.
		phase1 sm-scfuffn sm-scfuffn --score-bound 4 --score-penalty 1
		ship sm-scfuffn "$RUNS/sm-scfuffn.safetensors"
		;;
	*) echo "unknown model $m (ereg|baseline|sm)" >&2; exit 2 ;;
	esac
done
