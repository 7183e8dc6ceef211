"""Hierarchy guidance (KDEXPLAINER.md section 5, part 2): cluster-supervised auxiliary heads.

Clusters come from ``clusters/layer{L}.json`` files that ``kdx analyze-conflicts`` writes
(``{"merged_classes": [[0, 8], [1, 9], ...], ...}``; extra keys are ignored, so the official
one-key format is accepted too). Every class must appear in exactly one cluster.

On chosen student stages (``stage_names``, hooked with :class:`kdx.models.FeatureHooks`) a
head (global average pool + Linear) predicts the cluster of the true class; its loss is the
cross-entropy with per-cluster weights 1/|cluster| (PyTorch's weighted mean:
``sum_n w[t_n] * ce_n / sum_n w[t_n]``). [kdx] each head's loss is multiplied by the weight
W and the heads' losses are summed.

Stages are mapped to explainer layers in one of two ways (``--hierarchy-mapping``):

* ``authors`` (the official code, the paper presets' default): two heads, on student stages 1
  and 2, fed by the clusters of explainer layers 1 and 2; deeper cluster layers are not used.
* ``kdx-depth`` [kdx]: every cluster layer, by relative depth: layer l of L goes to student stage
  ``floor(l * S / L + 0.5)`` of S (1-based, at least 1); with S == L stage i <-> layer i.

``--hierarchy-stages`` overrides either (a list of stage names, one per layer in layer order, or
``STAGE=LAYER`` items).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.errors import KdxError

_LAYER_FILE = re.compile(r"layer(\d+)\.json$")


def parse_clusters(data, num_classes: int, source: str = "clusters") -> list[list[int]]:
    """``{"merged_classes": [[...], ...], ...}`` (or the list itself) -> validated clusters."""
    if isinstance(data, dict):
        if "merged_classes" not in data:
            raise KdxError(f"{source}: no 'merged_classes' key (expected {{\"merged_classes\": [[0, 8], [1, 9], ...]}})")
        data = data["merged_classes"]
    if not isinstance(data, list) or not data or not all(isinstance(g, list) and g for g in data):
        raise KdxError(f"{source}: 'merged_classes' must be a non-empty list of non-empty lists of class indices")
    clusters, seen = [], {}
    for i, group in enumerate(data):
        members = []
        for c in group:
            if isinstance(c, bool) or not isinstance(c, int) and not (isinstance(c, float) and c.is_integer()):
                raise KdxError(f"{source}: cluster {i} holds {c!r}, not a class index")
            c = int(c)
            if not 0 <= c < num_classes:
                raise KdxError(f"{source}: class {c} in cluster {i} is out of range for {num_classes} classes")
            if c in seen:
                raise KdxError(f"{source}: class {c} is in clusters {seen[c]} and {i}; each class belongs to one cluster")
            seen[c] = i
            members.append(c)
        clusters.append(members)
    missing = [c for c in range(num_classes) if c not in seen]
    if missing:
        raise KdxError(f"{source}: class(es) {', '.join(map(str, missing))} are in no cluster; "
                       f"the clusters must cover all {num_classes} classes")
    return clusters


def read_cluster_file(path: str | Path, num_classes: int) -> list[list[int]]:
    from kdx.engine.metadata import json_depth
    from kdx.io import read_text_checked

    path = Path(path)
    text = read_text_checked(path, "cluster file")  # a FIFO, a device, non-UTF-8 bytes: one line
    if json_depth(text) > 8:  # a cluster file is 2-3 levels deep; json's recursion never meets 100,000
        raise KdxError(f"cluster file {path} is nested {json_depth(text)} levels deep; not a cluster file")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise KdxError(f"{path} is not valid JSON: {exc}") from None
    return parse_clusters(data, num_classes, str(path))


def check_class_names(hierarchy: dict[int, dict], class_names) -> None:
    """Refuse cluster files written for another dataset: kdx's files record the ``class_names``
    they were computed on (the official format does not; such files are taken as they are)."""
    for layer in hierarchy.values():
        try:
            data = json.loads(Path(layer["file"]).read_text())
        except (OSError, ValueError):
            continue
        names = data.get("class_names") if isinstance(data, dict) else None
        if isinstance(names, list) and list(names) != list(class_names):
            raise KdxError(f"--hierarchy {layer['file']}: its clusters are of classes {', '.join(map(str, names[:4]))}, "
                           f"... but the data's are {', '.join(map(str, list(class_names)[:4]))}, ...: a tree of "
                           f"another dataset")


def load_hierarchy(sources, num_classes: int) -> dict[int, dict]:
    """Analysis dirs (``DIR/clusters/layer{L}.json`` or ``DIR/layer{L}.json``) or explicit json
    files -> ``{layer: {"file": path, "clusters": [[...], ...]}}`` sorted by layer.

    Explicit files not named ``layer{L}.json`` get the layers 1, 2, ... in the order given."""
    files: list[tuple[int | None, Path]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = []
            for d in (p / "clusters", p):
                found = sorted((int(m.group(1)), f) for f in d.glob("layer*.json") if (m := _LAYER_FILE.search(f.name)))
                if found:
                    break
            if not found:
                raise KdxError(f"--hierarchy {p}: no clusters/layer{{L}}.json files there (written by kdx analyze-conflicts)")
            files.extend(found)
        elif p.is_file():
            m = _LAYER_FILE.search(p.name)
            files.append((int(m.group(1)) if m else None, p))
        else:
            raise KdxError(f"--hierarchy {p}: no such file or directory")
    layers: dict[int, dict] = {}
    next_layer = 1
    for layer, f in files:
        if layer is None:
            while next_layer in layers:
                next_layer += 1
            layer = next_layer
        if layer in layers:
            raise KdxError(f"--hierarchy: layer {layer} is given twice ({layers[layer]['file']} and {f})")
        layers[layer] = {"file": str(f), "clusters": read_cluster_file(f, num_classes)}
    return dict(sorted(layers.items()))


def map_stages(stage_names: list[str], layers: list[int], override=None,
               mode: str = "kdx-depth") -> list[tuple[str, int]]:
    """[(student stage, explainer layer)] as ``mode`` (authors | kdx-depth) or ``override`` says."""
    layers = sorted(layers)
    if mode == "authors" and not override:
        missing = [layer for layer in (1, 2) if layer not in layers]
        if missing or len(stage_names) < 2:
            raise KdxError(f"--hierarchy-mapping authors needs the clusters of explainer layers 1 and 2 and a "
                           f"student with 2 stages; missing layer(s) {missing or '-'}, stages {stage_names}")
        return [(stage_names[0], 1), (stage_names[1], 2)]
    if override:
        items = [str(s).strip() for s in override if str(s).strip()]
        if all("=" in s for s in items):
            pairs = []
            for s in items:
                name, _, layer = s.partition("=")
                if not layer.strip().isdigit() or int(layer) not in layers:
                    raise KdxError(f"--hierarchy-stages {s}: layer must be one of {layers}")
                pairs.append((name.strip(), int(layer)))
        else:
            if len(items) != len(layers):
                raise KdxError(f"--hierarchy-stages names {len(items)} stage(s) but there are {len(layers)} "
                               f"cluster layer(s) {layers}; give one stage per layer or STAGE=LAYER items")
            pairs = list(zip(items, layers))
        bad = [s for s, _ in pairs if s not in stage_names]
        if bad:
            raise KdxError(f"--hierarchy-stages: unknown stage(s) {', '.join(bad)}; stages: {', '.join(stage_names)}")
        return pairs
    S, L = len(stage_names), max(len(layers), 1)
    out = []
    for i, layer in enumerate(layers, start=1):
        s = min(S, max(1, math.floor(i * S / L + 0.5)))
        out.append((stage_names[s - 1], layer))
    return out


class HierarchyHeads(nn.Module):
    """One GAP + Linear head per (stage, layer) pair, with its class -> cluster map and weights."""

    def __init__(self, mapping: list[tuple[str, int]], stage_channels: dict[str, int], hierarchy: dict[int, dict],
                 num_classes: int):
        super().__init__()
        self.mapping = [(s, int(layer)) for s, layer in mapping]
        self.heads = nn.ModuleList()
        for i, (stage, layer) in enumerate(self.mapping):
            clusters = hierarchy[layer]["clusters"]
            self.heads.append(nn.Linear(int(stage_channels[stage]), len(clusters)))
            cluster_of = torch.empty(num_classes, dtype=torch.long)
            for j, group in enumerate(clusters):
                cluster_of[group] = j
            self.register_buffer(f"cluster_of_{i}", cluster_of)
            self.register_buffer(f"cluster_weight_{i}", torch.tensor([1.0 / len(g) for g in clusters]))

    def head_losses(self, features: dict[str, Tensor], y: Tensor) -> list[Tensor]:
        out = []
        for i, (stage, _) in enumerate(self.mapping):
            feat = features[stage]
            pooled = F.adaptive_avg_pool2d(feat, 1).flatten(1) if feat.dim() == 4 else feat.flatten(1)
            logits = self.heads[i](pooled).float()
            target = getattr(self, f"cluster_of_{i}")[y]
            out.append(F.cross_entropy(logits, target, weight=getattr(self, f"cluster_weight_{i}").float()))
        return out
