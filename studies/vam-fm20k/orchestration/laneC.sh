#!/usr/bin/env bash
# at off seed 2 and at + tree seeds 1 2 into grid3 (grid2 is locked by lane A's crd + tree); marks them done
# for lane A's grid2 steps too, so that lane A skips them
set -euo pipefail
wt=/work/study-runs/wt-vam
export KDX="env PYTHONPATH=$wt /work/main/.venv/bin/python -m kdx" R=/work/study-runs/fm20k STORE=/work/main/studies/vam-fm20k \
  DATA=/work/shared/data/fashion-mnist PY=/work/main/.venv/bin/python
set -- true
source $wt/scripts/vam_study.sh
HERE=$wt/scripts
W=$(cat $STORE/grid/w.txt)
T="--hierarchy $R/analysis --arch resnet8"
SEEDS=2 grid grid3 at-off $T --compare --no-compare-ce --compare-methods at --compare-vam off
for s in 1 2; do
  SEEDS=$s grid grid3 "at-tree-$W" $T --compare --no-compare-ce --compare-methods at --compare-vam tree --compare-weights $W
  mkdir -p $STORE/grid2/seed$s; touch $STORE/grid2/seed$s/.done-at-tree-$W
done
echo "lane C finished $(date)"
