#!/usr/bin/env bash
# The rest of the VAM study (issue 18) in two lanes, cut to fit one session (crd trains at ~50 min a run):
# laneA: crd/at off seed 1 (resumes), then at+crd + tree seed 0, then at + tree seeds 1 2
# laneB: kd + tree 20 epochs, wrn kd + tree, at off seed 2
# Uses the study commit's vam_study.sh functions (sourced from the worktree).
set -euo pipefail
wt=/work/study-runs/wt-vam
export KDX="env PYTHONPATH=$wt /work/main/.venv/bin/python -m kdx" R=/work/study-runs/fm20k STORE=/work/main/studies/vam-fm20k \
  DATA=/work/shared/data/fashion-mnist PY=/work/main/.venv/bin/python
lane=$1
set -- true
source $wt/scripts/vam_study.sh
HERE=$wt/scripts
W=$(cat $STORE/grid/w.txt)
T="--hierarchy $R/analysis --arch resnet8"
G="--hierarchy $R/analysis --arch wrn_16_1"
case $lane in
  A)
    SEEDS=1 grid grid2 at-crd-off $T --compare --no-compare-ce --compare-methods at,crd --compare-vam off
    SEEDS=0 grid grid2 "at-crd-tree-$W" $T --compare --no-compare-ce --compare-methods at,crd --compare-vam tree --compare-weights $W
    SEEDS="1 2" grid grid2 "at-tree-$W" $T --compare --no-compare-ce --compare-methods at --compare-vam tree --compare-weights $W
    ;;
  B)
    grid kdtree-20ep "20ep-$W" --arch resnet8 --epochs 20 --method kd --vam tree --hierarchy $R/analysis --hierarchy-weight $W
    grid grid-wrn "kd-tree-$W" $G --compare --no-compare-ce --compare-methods kd --compare-vam tree --compare-weights $W
    SEEDS=2 grid grid2 at-off $T --compare --no-compare-ce --compare-methods at --compare-vam off
    ;;
esac
echo "lane $lane finished $(date)"
