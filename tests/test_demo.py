"""stunet-demo: argument handling (fast) and the whole run (slow)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stunet.cli.demo import main


def test_refuses_a_non_empty_workdir(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    with pytest.raises(SystemExit) as stop:
        main(["--workdir", str(tmp_path)])
    assert stop.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end_with_good_dice(tmp_path):
    demo = Path(sys.executable).parent / "stunet-demo"
    out = subprocess.run([str(demo), "--workdir", str(tmp_path / "demo")], capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mean = re.search(r"mean\s+([\d.]+)\s+([\d.]+)", out.stdout)
    assert mean and min(map(float, mean.groups())) > 0.75, out.stdout
