#!/bin/bash
# One small run of every experiment with the code of SRC (a checkout), into OUT_PREFIX/<experiment>:
# a refactor that must not change results is checked by running this before and after and comparing
# each folder with benchmarks/compare_runs.py (6.1's verdicts also with compare_verdicts.py).
#   bash benchmarks/every_experiment.sh /path/to/old-checkout runs/before
#   bash benchmarks/every_experiment.sh "$PWD" runs/after
#   for e in 6.1 6.3 6.4 6.5 6.6 validity kt; do python benchmarks/compare_runs.py runs/before/$e runs/after/$e; done
SRC=$1; P=$2
D=${DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/lfw-sample}
PY=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
export PYTHONPATH=$SRC/src
F="$PY -m falsify.cli"
M=saliency,gradcam,occlusion,random,centre
set -ex
$F run 6.1 --data $D --n-pairs 12 --out $P/6.1 -q
$F run 6.2 --data $D --n-pairs 12 --out $P/6.1 -q
$F run 6.3 --data $D --n-pairs 6 --methods $M --out $P/6.3 -q
$F run 6.4 --data $D --n-pairs 4 --methods saliency,random --out $P/6.4 -q
$F run 6.5 --data $D --n-pairs 6 --methods $M --out $P/6.5 -q
$F run 6.6 --data $D --n-pairs 8 --methods gradcam,biometric-gradcam,random --labels $D/../lfw-labels --out $P/6.6 -q
$F run validity --data $D --n-pairs 6 --out $P/validity -q
$F run known-truth --data $D --n-pairs 20 --out $P/kt -q
