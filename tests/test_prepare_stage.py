"""The `prepare` stage is all or nothing: a failure or a kill leaves the previous outputs whole
(sets, metrics and record together) and no staging debris; an interrupted swap is finished."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("data/prepared", "records/prepare.json")


def _params(tmp_path: Path, **detection) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["object"].update(num_train=200, num_val=100)
    params["prepare"]["detection"] = {"source": "synthetic", "num_trainval": 4, "num_test": 2, "image_size": 64,
                                      **detection}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _prepare(cwd: Path, params: Path, **kw):
    env = {**os.environ, "LOCALAGG_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages", "prepare", "--params", str(params)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under the outputs."""
    out = {}
    for name in OUTPUTS:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out.update({str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return out


def _debris(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".tmp", ".old")) or
            "staging" in p.name]


@pytest.fixture
def prepared(tmp_path):
    params = _params(tmp_path)
    proc = _prepare(tmp_path, params)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return tmp_path, params


def test_a_failure_after_some_sets_were_built_leaves_the_previous_outputs_whole(prepared):
    root, _ = prepared
    before = _digest(root)
    record = json.loads((root / "records/prepare.json").read_text())["object"]
    assert (record["train"]["total"], record["val"]["total"]) == (200, 100)
    # a VOC tree whose split list is missing: the object and transfer sets are built, then the detection set fails
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"]["object"]["num_train"] = 300  # would change the object set
    params["prepare"]["detection"] = {"source": "voc", "root": str(root / "VOCdevkit"),
                                      "trainval": [["VOC2007", "trainval"]], "test": [["VOC2007", "test"]]}
    bad = root / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = _prepare(root, bad)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "trainval.txt: missing split file" in err and "Traceback" not in err
    assert _digest(root) == before
    assert _debris(root) == []


def test_a_kill_at_any_moment_leaves_old_or_new_outputs_never_a_mix(prepared):
    root, params = prepared
    before = _digest(root)
    changed = _params(root, num_test=3)
    for delay in (0.5, 1.5, 3.0):
        proc = _prepare(root, changed)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        found = _digest(root)
        if found != before:  # the kill came after the commit: the next run finishes the swap
            break
    proc = _prepare(root, changed)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert _debris(root) == []
    after = _digest(root)
    assert json.loads((root / "records/prepare.json").read_text())["detection"]["test"]["images"] == 3
    # only the detection set changed; the object and transfer sets are the same bytes
    assert {k for k in after if after[k] != before.get(k)} <= {
        k for k in after if k.startswith("data/prepared/detection") or k.endswith("prepare.json")}


def test_a_committed_but_interrupted_swap_is_finished_at_the_next_start(prepared, monkeypatch):
    from stages import prepare as stage

    root, _ = prepared
    monkeypatch.chdir(root)
    staging = stage.STAGING
    staging.mkdir()
    (staging / "record.json").write_text('{"new": true}\n')
    (staging / stage.COMMIT).write_text("{}\n")
    # the swap had moved object, transfer and detection already; the record was still to go
    stage.recover()
    assert json.loads(Path("records/prepare.json").read_text()) == {"new": True}
    assert not staging.exists()
    staging.mkdir()  # without COMMIT: discarded, outputs untouched
    (staging / "record.json").write_text('{"newer": true}\n')
    stage.recover()
    assert json.loads(Path("records/prepare.json").read_text()) == {"new": True} and not staging.exists()
