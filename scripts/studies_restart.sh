#!/usr/bin/env bash
# Start (or continue) the long studies of docs/reproducing.md in the background, each from a git
# worktree at its fixed commit, so that editing the code does not change a running study.
#
#   scripts/studies_restart.sh            # both: the VAM study (two lanes) and explain-methods
#   scripts/studies_restart.sh vam        # only the VAM study
#   scripts/studies_restart.sh explain    # only the explain-methods pipeline
#
# Variables: RUNS (where the run folders go, default ../study-runs beside the checkout), DATA (the
# Fashion-MNIST IDX files, default ../shared/data/fashion-mnist), EXPLAIN_COMMIT (default 9ca3f59),
# EXPLAIN_OUT (the explain-methods study folder, default $RUNS/explain-methods).
# The VAM study's commit is studies/vam-fm20k/COMMIT; its records go to studies/vam-fm20k/ of this
# checkout (commit them). Uses this checkout's .venv (make install) with the worktree on PYTHONPATH.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
RUNS=${RUNS:-$(cd "$ROOT/.." && pwd)/study-runs}
DATA=${DATA:-$(cd "$ROOT/.." && pwd)/shared/data/fashion-mnist}
PY="$ROOT/.venv/bin/python"
EXPLAIN_COMMIT=${EXPLAIN_COMMIT:-9ca3f59}
EXPLAIN_OUT=${EXPLAIN_OUT:-$RUNS/explain-methods}
[ -x "$PY" ] || { echo "no $PY: run make install first" >&2; exit 1; }
mkdir -p "$RUNS"

worktree() {  # worktree DIR COMMIT: a worktree at COMMIT (kept if it is there already)
  [ -d "$1" ] || git -C "$ROOT" worktree add -q --detach "$1" "$2"
}

vam() {
  local wt="$RUNS/wt-vam" commit
  commit=$(cat "$ROOT/studies/vam-fm20k/COMMIT")
  worktree "$wt" "$commit"
  local env="KDX='env PYTHONPATH=$wt $PY -m kdx' R=$RUNS/fm20k STORE=$ROOT/studies/vam-fm20k DATA=$DATA PY=$PY"
  (cd "$wt" && nohup setsid bash -c "export $env; bash scripts/vam_study.sh prelude >> $RUNS/pre.log 2>&1 && \
     bash scripts/vam_study.sh lane1 >> $RUNS/lane1.log 2>&1" > /dev/null 2>&1 &)
  # lane 2 starts a minute later: the study commit's copy-back of the teacher is not safe for two lanes at once
  (cd "$wt" && nohup setsid bash -c "export $env; sleep 60; bash scripts/vam_study.sh lane2 >> $RUNS/lane2.log 2>&1" \
     > /dev/null 2>&1 &)
  echo "VAM study from $commit: logs $RUNS/{pre,lane1,lane2}.log, records $ROOT/studies/vam-fm20k"
}

explain() {
  local wt="$RUNS/wt-explain"
  worktree "$wt" "$EXPLAIN_COMMIT"
  # a study already started continues from its own study.json (which a session may have edited, e.g. its seeds)
  local what=(--preset explain-methods --threads 1 --quiet)
  [ -f "$EXPLAIN_OUT/study.json" ] && what=(--config "$EXPLAIN_OUT/study.json")
  (cd "$wt" && nohup setsid nice -n 5 env PYTHONPATH="$wt" "$PY" -m kdx pipeline "${what[@]}" \
     --out "$EXPLAIN_OUT" >> "$RUNS/explain.log" 2>&1 < /dev/null &)
  echo "explain-methods from $EXPLAIN_COMMIT (nice 5): log $RUNS/explain.log, study $EXPLAIN_OUT"
}

case "${1:-both}" in
  vam) vam ;;
  explain) explain ;;
  both) vam; explain ;;
  *) echo "usage: scripts/studies_restart.sh [vam|explain|both]" >&2; exit 2 ;;
esac
