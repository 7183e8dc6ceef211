#!/usr/bin/env bash
# analyse.sh: the six fm20k explainers (kd and ce, seeds 0-2) side by side, from the worktree at ANALYSIS_COMMIT.
set -eu
W=/work/study-runs/wt-ana2; R=/work/study-runs/fm20k-trees; PY=/work/main/.venv/bin/python
runs=(); labels=()
for m in kd ce; do for s in 0 1 2; do runs+=("$R/explainer-$m-s$s"); labels+=("$m-s$s"); done; done
(cd $W && git rev-parse HEAD > $R/ANALYSIS_COMMIT && PYTHONPATH=$W nice -n 5 $PY -m kdx analyze-conflicts "${runs[@]}" \
   --label "$(IFS=,; echo "${labels[*]}")" --dataset fashion-mnist --data-root /work/shared/data/fashion-mnist \
   --images 600 --split val --conflict-images 256 --quiet --out $R/analysis)
