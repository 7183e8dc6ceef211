#!/usr/bin/env bash
# The VAM study of docs/reproducing.md (issue 18): Fashion-MNIST, 20,000 training images, resnet20
# teacher, resnet8 students (and wrn_16_1), 3 seeds, one CPU thread per process.
#
#   scripts/vam_study.sh prelude    # teacher, kd explainer, its analysis (the class tree)
#   scripts/vam_study.sh lane1      # kd: ce, alone, + tree at 5 weights, + head; then + tree + head, dkd, fitnet
#   scripts/vam_study.sh lane2      # kd 20-epoch budget check, wrn_16_1, at, crd (waits for lane 1's w)
#   scripts/vam_study.sh report     # the tables
#
# Every step skips what finished and resumes what was interrupted, so a stopped lane is simply started
# again. The two lanes may run at the same time (2 cores, one thread each). Variables: KDX (the kdx
# command), R (the runs folder), DATA (the four Fashion-MNIST IDX files).
set -euo pipefail
KDX=${KDX:-kdx}
R=${R:-runs/vam-study}
DATA=${DATA:-../shared/data/fashion-mnist}
PY=${PY:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
D="--dataset fashion-mnist --data-root $DATA --max-train-samples 20000 --threads 1 --quiet"
S="$D --teacher $R/teacher --preset quick --epochs 10 --dkd-warmup 2 --seeds 0,1,2"
done_() { [ -f "$1/results.json" ]; }

single() {  # single() DIR COMMAND ARGS...: skip a finished run, resume a started one, else train it
  local dir=$1 cmd=$2; shift 2
  if done_ "$dir"; then return; fi
  if [ -f "$dir/config.json" ]; then $KDX "$cmd" --resume "$dir"; else $KDX "$cmd" "$@" --out "$dir"; fi
}

prelude() {
  single $R/teacher train-teacher $D --arch resnet20 --preset quick --epochs 10
  single $R/explainer-kd distill-explainer $D --method kd --teacher $R/teacher --preset quick
  done_ $R/analysis || $KDX analyze-conflicts $R/explainer-kd --split val --threads 1 --out $R/analysis
}

chosen_w() {  # w of the kd + tree arms with the best mean validation top-1 (lane 1's first grid)
  $PY "$HERE/vam_study_report.py" --choose-w $R/grid
}

wait_for_w() {
  until [ -f $R/grid/w.txt ]; do sleep 60; done
  cat $R/grid/w.txt
}

lane1() {
  local T="--hierarchy $R/analysis --arch resnet8 --out $R/grid"
  $KDX train-vam-student $S $T --compare --compare-methods kd --compare-vam off,tree,head \
      --compare-weights 0.01,0.05,0.1,0.3,0.5
  [ -f $R/grid/w.txt ] || chosen_w > $R/grid/w.txt
  local W; W=$(cat $R/grid/w.txt)
  $KDX train-vam-student $S $T --compare --no-compare-ce --compare-methods kd --compare-vam tree+head --compare-weights $W
  $KDX train-vam-student $S $T --compare --no-compare-ce --compare-methods dkd,fitnet --compare-vam off,tree --compare-weights $W
}

lane2() {
  done_ $R/kd-20ep || $KDX train-vam-student $S --arch resnet8 --epochs 20 --method kd --vam off --out $R/kd-20ep
  local G="--hierarchy $R/analysis --out $R/grid-wrn --arch wrn_16_1"
  $KDX train-vam-student $S $G --compare --compare-methods kd --compare-vam off
  local T="--hierarchy $R/analysis --arch resnet8 --out $R/grid2"
  $KDX train-vam-student $S $T --compare --no-compare-ce --compare-methods at,crd --compare-vam off
  local W; W=$(wait_for_w)
  done_ $R/kdtree-20ep || $KDX train-vam-student $S --arch resnet8 --epochs 20 --method kd --vam tree \
      --hierarchy $R/analysis --hierarchy-weight $W --out $R/kdtree-20ep
  $KDX train-vam-student $S $T --compare --no-compare-ce --compare-methods at,crd --compare-vam off,tree --compare-weights $W
  $KDX train-vam-student $S $G --compare --no-compare-ce --compare-methods kd --compare-vam tree --compare-weights $W
}

report() {
  $PY "$HERE/vam_study_report.py" resnet8=$R/grid resnet8=$R/grid2 wrn_16_1=$R/grid-wrn
  for f in kd-20ep kdtree-20ep; do
    [ -d $R/$f ] && echo "$f: $($PY - "$R/$f" <<'PYEOF'
import json, pathlib, statistics, sys
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("seed*/results.json"))]
best = [100 * r["test_top1_best"] for r in rows]; last = [100 * r["test_top1_last"] for r in rows]
print(f"{len(rows)} seeds, best-val {statistics.fmean(best):.2f} (per seed {', '.join(f'{v:.2f}' for v in best)}), "
      f"last {statistics.fmean(last):.2f}" if rows else "none finished")
PYEOF
)"
  done
}

"${1:?usage: vam_study.sh prelude|lane1|lane2|report}"
