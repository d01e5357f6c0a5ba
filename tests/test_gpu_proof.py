"""benchmarks/gpu_proof.py's CPU dry run: the GPU proof's code paths with tiny shapes, so that the script runs unchanged
the day a GPU is lent. Every item that ran must give a figure: the script records a failure as a row and exits 0, so the
rows themselves are checked. Only the time budget may leave items out (skipped, or stopped with the budget named), and
items that depend on one it left out."""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_proof.py"
# exceptions that mean a bug in the script (or a library API it calls that changed), not a limit of the machine
HARNESS_BUGS = re.compile(r"\b(NameError|TypeError|AttributeError|KeyError|IndexError|UnboundLocalError|ImportError|"
                          r"ModuleNotFoundError|SyntaxError|AssertionError)\b")


def _out_of_time(row: dict) -> bool:
    return row["status"] == "skipped" or "time budget" in row["error"]


def failed_rows(rows: list[dict]) -> list[str]:
    """The rows that neither gave a figure nor were left out by the time budget (an item that depends on one the budget
    left out, "not run: ..." / "not computed: ...", counts as left out too)."""
    short = {r["section"] for r in rows if _out_of_time(r)}
    return [f"[{r['section']}] {r['item']}: {r['status']}: {r['error']}" for r in rows
            if r["status"] != "ok" and not _out_of_time(r)
            and not (r["section"] in short and re.search(r"\bnot (run|computed):", r["error"]))]


def _dry_run(out: Path, sections: str, timeout: float) -> list[dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--sections", sections,
                           "--out", str(out), "--work", str(out / "work")], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    md, table = out / "gpu_proof_cpu_tiny.md", out / "gpu_proof_cpu_tiny.csv"
    assert md.is_file() and table.is_file()
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    bugs = [f"[{r['section']}] {r['item']}: {r['error']}" for r in rows if HARNESS_BUGS.search(r["error"])]
    assert not bugs, "\n".join(bugs)
    for r in rows:
        assert r["status"] in ("ok", "error", "OOM", "skipped"), r
        assert r["status"] != "ok" or r["value"], r  # a figure for every item that worked
        assert r["status"] == "ok" or r["error"], r  # the error for every other
    failed = failed_rows(rows)
    assert not failed, "items of the dry run that failed:\n" + "\n".join(failed)
    for section in sections.split(","):
        assert any(r["section"] == section and r["status"] == "ok" for r in rows), \
            f"section {section}: no item gave a figure ({len(rows)} rows)"
    text = md.read_text()
    assert "torch " in text and "CPU: " in text and "Total wall time" in text
    return rows


def test_dry_run_of_training_steps(tmp_path):
    rows = _dry_run(tmp_path, "A", timeout=600)
    small = [r for r in rows if r["section"] == "A" and r["model"] == "stunet_small" and r["status"] == "ok"]
    assert small and float(small[0]["value"]) > 0
    assert any(r["precision"] == "bf16" for r in small) and any(r["precision"] == "fp16->fp32" for r in small)
    assert {r["section"] for r in rows} == {"A"}
    text = (tmp_path / "gpu_proof_cpu_tiny.md").read_text()
    assert "H in 24 GB" in text


@pytest.mark.slow
def test_dry_run_of_prediction(tmp_path):
    rows = _dry_run(tmp_path, "C", timeout=600)
    assert {r["section"] for r in rows} == {"C"}


@pytest.mark.slow
def test_dry_run_of_nnunet_commands(tmp_path):
    rows = _dry_run(tmp_path, "B", timeout=1200)
    by_item = {r["item"]: r for r in rows}
    plan = next(r for r in rows if r["item"].startswith("nnUNetv2_plan_and_preprocess"))
    assert plan["status"] == "ok", plan
    fp16 = next(r for r in rows if "STUNetTrainer_small_ft_smoke" in r["item"])
    assert fp16["status"] == "ok" and "finite" in fp16["details"] and "pretrained weights loaded" in fp16["details"], \
        by_item
