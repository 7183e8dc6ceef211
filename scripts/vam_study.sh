#!/usr/bin/env bash
# The VAM study of docs/reproducing.md (issue 18): Fashion-MNIST, 20,000 training images, resnet20
# teacher, resnet8 students (and wrn_16_1), 3 seeds, one CPU thread per student process.
#
#   scripts/vam_study.sh prelude    # teacher, kd explainer, its analysis (the class tree)
#   scripts/vam_study.sh lane1      # kd: ce, alone, + tree at 5 weights, + head; then + tree + head, dkd, fitnet
#   scripts/vam_study.sh lane2      # kd 20-epoch budget check, wrn_16_1, at, crd (waits for lane 1's w)
#   scripts/vam_study.sh report     # the tables, from the records
#
# Every step skips what finished and resumes what was interrupted, so a stopped lane is simply started
# again. The two lanes may run at the same time (2 cores, one thread each). Variables: KDX (the kdx
# command), R (the runs folder), DATA (the four Fashion-MNIST IDX files), STORE (the records folder).
#
# Surviving a new machine: R holds the full runs (weights, resume state) and may be lost between
# sessions. STORE holds the records that matter and is meant to be committed: the teacher (with its
# weights, 1 MB), the analysis (the class tree), and per finished (grid, seed) call the arms'
# results.json, config.json, metrics.csv, timing.json and cost.csv (no student weights). A step whose
# record is in STORE is skipped; the teacher and the analysis are copied back into R when R lacks them.
# The unit of work is one grid for one seed: a call interrupted halfway is trained again from its start
# on a new machine (on the same machine, kdx resumes it from R).
set -euo pipefail
KDX=${KDX:-kdx}
R=${R:-runs/vam-study}
DATA=${DATA:-../shared/data/fashion-mnist}
PY=${PY:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
STORE=${STORE:-$HERE/../studies/vam-fm20k}
SEEDS=${SEEDS:-0 1 2}
D="--dataset fashion-mnist --data-root $DATA --max-train-samples 20000 --quiet"
S="$D --threads 1 --teacher $R/teacher --preset quick --epochs 10 --dkd-warmup 2"
done_() { [ -f "$1/results.json" ]; }

keep() {  # keep NAME [FILES...]: copy the run R/NAME's small records (or the named files) into STORE/NAME
  local name=$1; shift
  mkdir -p "$STORE/$name"
  local files=("$@")
  [ ${#files[@]} -gt 0 ] || files=(results.json config.json metrics.csv timing.json cost.csv tree.json)
  for f in "${files[@]}"; do [ -f "$R/$name/$f" ] && cp "$R/$name/$f" "$STORE/$name/$f.tmp" && mv "$STORE/$name/$f.tmp" "$STORE/$name/$f"; done
  return 0
}

bring_back() {  # bring_back NAME: a run recorded in STORE in full, copied into R when R lacks it
  local name=$1
  if ! done_ "$R/$name" && done_ "$STORE/$name"; then  # a private copy, then one rename: two lanes may race here
    local tmp="$R/$name.restoring.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"; cp -r "$STORE/$name/." "$tmp/"
    done_ "$R/$name" || { rm -rf "$R/$name"; mv "$tmp" "$R/$name" 2>/dev/null || true; }
    rm -rf "$tmp"
    done_ "$R/$name"
  fi
}

single() {  # single() DIR COMMAND ARGS...: skip a finished run, resume a started one, else train it
  local dir=$1 cmd=$2; shift 2
  if done_ "$dir"; then return; fi
  if [ -f "$dir/config.json" ]; then $KDX "$cmd" --resume "$dir" --threads 1 --quiet; else $KDX "$cmd" "$@" --out "$dir"; fi
}

grid() {  # grid NAME TAG ARGS...: one train-vam-student group call per seed into R/NAME, recorded per seed
  local name=$1 tag=$2; shift 2
  local s
  for s in $SEEDS; do
    [ -f "$STORE/$name/seed$s/.done-$tag" ] && continue
    $KDX train-vam-student $S "$@" --seeds "$s" --out "$R/$name"
    local arm
    for arm in "$R/$name/seed$s"/*/ "$R/$name/seed$s/"; do
      done_ "$arm" || continue
      keep "${arm#"$R/"}"
    done
    touch "$STORE/$name/seed$s/.done-$tag"
  done
}

prelude() {
  mkdir -p "$R" "$STORE"
  [ -f "$STORE/COMMIT" ] || git -C "$HERE" rev-parse HEAD > "$STORE/COMMIT"
  bring_back teacher
  single $R/teacher train-teacher $D --threads 2 --arch resnet20 --preset quick --epochs 10
  keep teacher results.json config.json metrics.csv timing.json model.safetensors
  bring_back analysis
  if ! done_ $R/analysis; then
    single $R/explainer-kd distill-explainer $D --threads 1 --method kd --teacher $R/teacher --preset quick
    keep explainer-kd
    OMP_NUM_THREADS=1 $KDX analyze-conflicts $R/explainer-kd --split val --quiet --out $R/analysis
  fi
  [ -f "$STORE/analysis/results.json" ] || (cd $R/analysis && find . -type f -size -2M -print0 | while IFS= read -r -d '' f; do
    mkdir -p "$STORE/analysis/$(dirname "$f")"; cp "$f" "$STORE/analysis/$f"; done)
}

wait_for() {  # wait_for FILE: until another lane has written it
  until [ -f "$1" ]; do sleep 60; done
}

chosen_w() {  # w of the kd + tree arms with the best mean validation top-1 (lane 1's first grid)
  [ -f $STORE/grid/w.txt ] || $PY "$HERE/vam_study_report.py" --choose-w $STORE/grid > $STORE/grid/w.txt
  cat $STORE/grid/w.txt
}

lane1() {
  wait_for "$STORE/analysis/results.json"; bring_back teacher; bring_back analysis
  local T="--hierarchy $R/analysis --arch resnet8"
  grid grid kd-wgrid $T --compare --compare-methods kd --compare-vam off,tree,head --compare-weights 0.01,0.05,0.1,0.3,0.5
  local W; W=$(chosen_w)
  grid grid "kd-treehead-$W" $T --compare --no-compare-ce --compare-methods kd --compare-vam tree+head --compare-weights $W
  grid grid "dkd-fitnet-$W" $T --compare --no-compare-ce --compare-methods dkd,fitnet --compare-vam off,tree --compare-weights $W
}

lane2() {
  wait_for "$STORE/teacher/results.json"; bring_back teacher
  grid kd-20ep 20ep --arch resnet8 --epochs 20 --method kd --vam off
  wait_for "$STORE/analysis/results.json"; bring_back analysis
  local G="--hierarchy $R/analysis --arch wrn_16_1"
  grid grid-wrn kd-off $G --compare --compare-methods kd --compare-vam off
  local T="--hierarchy $R/analysis --arch resnet8"
  grid grid2 at-crd-off $T --compare --no-compare-ce --compare-methods at,crd --compare-vam off
  wait_for "$STORE/grid/w.txt"; local W; W=$(cat "$STORE/grid/w.txt")
  grid kdtree-20ep "20ep-$W" --arch resnet8 --epochs 20 --method kd --vam tree --hierarchy $R/analysis --hierarchy-weight $W
  grid grid2 "at-crd-tree-$W" $T --compare --no-compare-ce --compare-methods at,crd --compare-vam tree --compare-weights $W
  grid grid-wrn "kd-tree-$W" $G --compare --no-compare-ce --compare-methods kd --compare-vam tree --compare-weights $W
}

report() {
  $PY "$HERE/vam_study_report.py" resnet8=$STORE/grid resnet8=$STORE/grid2 resnet8=$STORE/grid3 wrn_16_1=$STORE/grid-wrn \
    "resnet8, 20 epochs=$STORE/kd-20ep:kd" "resnet8, 20 epochs=$STORE/kdtree-20ep:kd+tree"
  echo "records: $STORE; the kdx commit of the runs: $(cat "$STORE/COMMIT" 2>/dev/null || echo unrecorded)"
}

"${1:?usage: vam_study.sh prelude|lane1|lane2|report}"
