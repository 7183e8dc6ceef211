#!/usr/bin/env bash
# lane.sh METHOD SEED...: quick-recipe explainers on Fashion-MNIST (20,000 training images) from the fm20k teacher,
# one after the other, 1 thread, from the worktree at COMMIT; a rerun skips finished runs and resumes an interrupted one.
set -u
W=/work/study-runs/wt-trees; R=/work/study-runs/fm20k-trees; PY=/work/main/.venv/bin/python
m=$1; shift
for s in "$@"; do
  out=$R/explainer-$m-s$s
  if PYTHONPATH=$W $PY -c "import sys; from kdx.engine.rundir import finished; sys.exit(0 if finished(sys.argv[1]) else 1)" "$out"; then
    echo "skip $out (finished)"; continue; fi
  if [ -d "$out" ]; then args=(--resume "$out"); else args=(--dataset fashion-mnist --data-root /work/shared/data/fashion-mnist \
      --max-train-samples 20000 --method "$m" --teacher /work/study-runs/fm20k/teacher --preset quick --seed "$s" --out "$out"); fi
  (cd $W && PYTHONPATH=$W nice -n 5 $PY -m kdx distill-explainer "${args[@]}" --threads 1 --quiet) || echo "FAILED $out rc=$?"
done
