"""Label names across datasets: matching names that differ in spelling or word order, and the declarative maps in
``stunet/label_maps/`` from the pretrained models' classes to downstream datasets' labels."""
from __future__ import annotations

import json
import numbers
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


# -- nnU-Net's dataset.json labels ----------------------------------------------------------------------------------
IGNORE = "ignore"  # nnU-Net's name of the ignore label


def _is_index(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def label_values_of(dataset_json: Mapping, source: str = "dataset.json") -> dict[str, tuple[int, ...]]:
    """Name -> indices of nnU-Net's dataset.json ``labels`` (``{"background": 0, "liver": 1, "tumour": [1, 2]}``: one
    index, or a region's non-empty list of them). Raises ValueError, one line naming ``source``, for any other value
    (``1.7``, ``true``, ``[]``) and for an index that two names claim alone."""
    labels = dataset_json.get("labels") if isinstance(dataset_json, Mapping) else None
    if not isinstance(labels, Mapping):
        raise ValueError(f'{source}: no "labels" object (name -> label index)')
    values: dict[str, tuple[int, ...]] = {}
    named: dict[int, str] = {}
    for name, value in labels.items():
        indices = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not indices or not all(_is_index(i) for i in indices):
            raise ValueError(f"{source}: label {name!r} is {json.dumps(value, default=repr)}, not an integer index nor a non-empty "
                             f"list of them (a region); fix the file")
        if _is_index(value):
            if int(value) in named:
                raise ValueError(f"{source}: labels {named[int(value)]!r} and {name!r} both have index {value}; give "
                                 f"each name its own index")
            named[int(value)] = str(name)
        values[str(name)] = tuple(int(i) for i in indices)
    return values


def is_region_based(dataset_json: Mapping) -> bool:
    """Whether dataset.json's labels hold nnU-Net regions (a list of indices for a name)."""
    return any(isinstance(v, (list, tuple)) for v in dataset_json.get("labels", {}).values())


def label_names_of(dataset_json: Mapping, source: str = "dataset.json") -> dict[int, str]:
    """Index -> name of dataset.json's labels that have one index each (regions have none), the ignore label left
    out; checked as :func:`label_values_of` says."""
    values = label_values_of(dataset_json, source)
    regions = {str(name) for name, value in dataset_json["labels"].items() if isinstance(value, (list, tuple))}
    return {indices[0]: name for name, indices in values.items() if name != IGNORE and name not in regions}


def check_label_map(label_map: str, dataset_json: dict) -> None:
    """Raise ValueError, one line, when ``label_map`` (a shipped map's name or a JSON file) names none of the dataset's
    labels: it was written for another label system, and would transfer no pretrained class."""
    spec = load_label_map(label_map)
    mapped = [entry["name"] for entry in spec["labels"].values()]
    dataset = [name for index, name in sorted(label_names_of(dataset_json).items()) if index != 0]
    if dataset and not {canonical(n) for n in dataset} & {canonical(n) for n in mapped}:
        raise ValueError(f"--label-map {label_map}: its labels ({', '.join(mapped)}) are none of the dataset's "
                         f"({', '.join(dataset)}); give the map of this dataset's labels, or none (labels are then "
                         f"matched to the pretrained classes by name)")
