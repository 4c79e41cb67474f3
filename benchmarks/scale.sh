#!/usr/bin/env bash
# The measurements of benchmarks/README.md, "Scale": one run, one section after the other, on
# this machine. Prints markdown; nothing here asserts a timing.
#
#   bash benchmarks/scale.sh [BEFORE_REV] 2>&1 | tee runs/scale.md     # about 45 minutes on 2 cores
#
# BEFORE_REV (default deba5fa, main before the scale work) is profiled from `git archive` of its
# src/ on PYTHONPATH. FULL_N=200 sets the pairs of the full 6.1 run (every method and control,
# the run's defaults, a fresh folder); FULL_N=0 skips it. N_PROFILE=8 sets the profiles' pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/lfw-sample}
BEFORE=${1:-deba5fa}
N_PROFILE=${N_PROFILE:-8}
FULL_N=${FULL_N:-200}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$BEFORE" src | tar -x -C "$tmp"
echo "## Scale benchmarks"
echo
echo "$(date -u +%FT%TZ); main at $(git rev-parse --short HEAD); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); torch threads: torch's default"
echo
PYTHONPATH="$tmp/src" $PY benchmarks/profile_6_1.py --data "$DATA" --n-pairs "$N_PROFILE" --title "before: $BEFORE"
echo
$PY benchmarks/profile_6_1.py --data "$DATA" --n-pairs "$N_PROFILE" --title "after: $(git rev-parse --short HEAD)"
echo
$PY benchmarks/ig_refinement.py --data "$DATA"
echo
echo "### Ray executor (2 local workers, one torch thread each) against in-process"
echo
$PY benchmarks/ray_vs_inprocess.py --data "$DATA" --methods all --n-pairs 8 --workers 2
echo
if [ "$FULL_N" -gt 0 ]; then
  echo "### The full Experiment 6.1: $FULL_N pairs, every method and control, the run's defaults"
  echo
  start=$(date +%s)
  $PY -m falsify.cli run 6.1 --data "$DATA" --n-pairs "$FULL_N" --out "$tmp/full" --quiet > "$tmp/full.txt"
  end=$(date +%s)
  echo "command: \`falsify run 6.1 --data $DATA --n-pairs $FULL_N --out OUT --quiet\`; wall time $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s; load average after $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo '```'
  sed -n '/^experiment 6.1/,/^$/p' "$tmp/full.txt"
  echo '```'
fi
