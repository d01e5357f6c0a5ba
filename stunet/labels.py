"""Label names across datasets: matching names that differ in spelling or word order, and the declarative maps in
``stunet/label_maps/`` from the pretrained models' classes to downstream datasets' labels."""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Mapping

# names that no reordering of words can match; keys and values in canonical form
SYNONYMS = {
    "bladder_gall": "gallbladder",
    "bladder": "bladder_urinary",
    "postcava": "cava_inferior_vena",
    "ivc": "cava_inferior_vena",
    "oesophagus": "esophagus",
    "rag": "adrenal_gland_right",
    "lag": "adrenal_gland_left",
}


def canonical(name: str) -> str:
    """Lower case, words sorted: 'Right Kidney', 'kidney_right' and 'kidney-right' are all 'kidney_right'."""
    words = sorted(w for w in re.split(r"[^a-z0-9]+", name.lower()) if w)
    key = "_".join(words)
    return SYNONYMS.get(key, key)


def match_labels(target: Mapping[int, str], source: Mapping[int, str],
                 name_map: Mapping[str, list[str]] | None = None) -> dict[int, list[int]]:
    """For each target label index, the source indices that make it up (background always maps to background).

    ``name_map`` maps target label names to source label names (e.g. a merged 'kidney' -> kidney_left, kidney_right);
    otherwise names are matched after :func:`canonical`. Unmatched target labels are left out.
    """
    by_name = {canonical(n): i for i, n in source.items()}
    explicit = {canonical(k): [canonical(s) for s in v] for k, v in (name_map or {}).items()}
    matches = {}
    for index, name in target.items():
        wanted = explicit.get(canonical(name), [canonical(name)])
        found = [by_name[w] for w in wanted if w in by_name]
        if index == 0 and 0 in source:
            found = [0]
        if found:
            matches[index] = found
    return matches


def list_label_maps() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("stunet.label_maps").iterdir() if p.name.endswith(".json"))


def load_label_map(name_or_path: str | Path) -> dict:
    """A label map by name (see :func:`list_label_maps`) or from a JSON file:
    ``{"name": ..., "source": "totalseg104", "labels": {"1": {"name": "spleen", "from": ["spleen"]}, ...}}``."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"{path}: no such label map file")
        text = path.read_text()
    else:
        if name_or_path not in list_label_maps():
            raise ValueError(f"unknown label map {name_or_path!r}; shipped maps: {', '.join(list_label_maps())}, or "
                             f"give a JSON file")
        text = resources.files("stunet.label_maps").joinpath(f"{name_or_path}.json").read_text()
    try:
        label_map = json.loads(text)
        labels = {int(k): {"name": v["name"], "from": list(v["from"])} for k, v in label_map["labels"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{name_or_path}: not a label map ({type(e).__name__}: {e}); expected "
                         '{"labels": {"1": {"name": "spleen", "from": ["spleen"]}, ...}}') from None
    return {**label_map, "labels": labels}


def name_map_of(label_map: dict) -> dict[str, list[str]]:
    """Target label name -> source label names, as :func:`match_labels` takes it."""
    return {entry["name"]: entry["from"] for entry in label_map["labels"].values()}
