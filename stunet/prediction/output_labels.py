"""The labels a prediction writes: the model's classes, mapped onto another label system (``label_map``, a shipped map
or a JSON file) and/or restricted to some (``labels``), as ``stunet-predict --label-map/--labels`` and
``Segmenter(label_map=, labels=)`` ask."""
from __future__ import annotations

import torch

from stunet.labels import canonical, load_label_map


def output_labels(model_labels: dict[int, str], label_map: str | None, keep: str | None):
    """(output index -> name, lookup from model class to output label or None, model classes per output label)."""
    names, members = dict(model_labels), {i: [i] for i in model_labels}
    if label_map:
        spec = load_label_map(label_map)
        by_name = {canonical(n): i for i, n in model_labels.items()}
        unknown = [s for e in spec["labels"].values() for s in e["from"] if canonical(s) not in by_name]
        if unknown:
            raise ValueError(f"label map {label_map}: {', '.join(unknown)} "
                             f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of this model (its "
                             f"classes: {', '.join(model_labels[i] for i in sorted(model_labels) if i)})")
        names = {0: "background", **{i: e["name"] for i, e in spec["labels"].items()}}
        members = {0: [0], **{i: [by_name[canonical(s)] for s in e["from"]] for i, e in spec["labels"].items()}}
    if keep:
        wanted = {w.strip() for w in keep.split(",") if w.strip()}
        chosen = {i for i, n in names.items() if str(i) in wanted or canonical(n) in {canonical(w) for w in wanted}}
        missing = wanted - {str(i) for i in chosen} - {names[i] for i in chosen}
        missing = {w for w in missing if canonical(w) not in {canonical(names[i]) for i in chosen}}
        if missing:
            raise ValueError(f"--labels: {', '.join(sorted(missing))} not among the output labels "
                             f"({', '.join(names[i] for i in sorted(names) if i)})")
        names = {i: n for i, n in names.items() if i in chosen or i == 0}
        members = {i: m for i, m in members.items() if i in names}
    identity = not label_map and not keep
    lookup = None
    if not identity:
        lookup = torch.zeros(max(model_labels) + 1, dtype=torch.int64)
        for out_index, classes in members.items():
            lookup[classes] = out_index
    return names, lookup, [members[i] for i in sorted(names)]
