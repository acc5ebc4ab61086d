"""Unmodified pycaffe scripts run with ``import caffe`` as fcnwild.caffe: through
``fcnwild pycaffe SCRIPT ARGS`` and through the opt-in shim on PYTHONPATH."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fcnwild.caffe as caffe
from fcnwild.tools import cli
from pycaffe_cases import IP_NET
from solver_cases import write

REPO = Path(__file__).resolve().parent.parent

SCRIPT = '''
import json
import sys

import caffe
import caffe.proto.caffe_pb2 as caffe_pb2
from caffe import Net, TEST, layers as L
from caffe.coord_map import crop

import helper                       # lives beside the script

assert __name__ == "__main__"
net = Net(sys.argv[1], TEST, weights=sys.argv[2])
out = net.forward(data=helper.batch())
with open(sys.argv[3], "w") as f:
    json.dump({"argv": sys.argv[1:], "alpha": out["alpha"].tolist(), "module": caffe.__name__,
               "one_module": caffe_pb2 is sys.modules["fcnwild.base.caffe_pb2"]
               and caffe.io is sys.modules["fcnwild.caffe.io"],
               "net_class": Net is caffe.Net and crop.__module__ == "fcnwild.caffe.coord_map",
               "net_spec": str(caffe.to_proto(L.Input(shape=dict(dim=[1])))).count("layer"),
               "phase": caffe_pb2.TEST == TEST}, f)
if len(sys.argv) > 4:
    sys.exit(int(sys.argv[4]))
'''

HELPER = '''
import numpy as np


def batch():
    return np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 10
'''


@pytest.fixture
def script(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    write(folder / "helper.py", HELPER)
    net_file = write(tmp_path / "ipnet.prototxt", IP_NET)
    net = caffe.Net(str(net_file), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    expected = net.forward(data=np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 10)
    return write(folder / "run_net.py", SCRIPT), net_file, tmp_path, expected["alpha"].copy()


def _run(command, cwd, env=None):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _check(result, out_file, args, expected):
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(out_file.read_text())
    assert seen["argv"] == args and seen["module"] == "fcnwild.caffe"
    assert seen["one_module"] and seen["net_class"] and seen["phase"]
    assert seen["net_spec"] == 1
    np.testing.assert_allclose(seen["alpha"], expected, rtol=1e-6)


def test_fcnwild_pycaffe_runs_a_script_as_python_would(script):
    path, net_file, tmp_path, expected = script
    args = [str(net_file), str(tmp_path / "w.caffemodel"), str(tmp_path / "out.json")]
    result = _run([sys.executable, "-m", "fcnwild.tools.cli", "pycaffe", str(path), *args],
                  cwd=tmp_path)
    _check(result, tmp_path / "out.json", args, expected)


def test_the_scripts_exit_status_and_errors_come_through(script):
    path, net_file, tmp_path, _ = script
    args = [str(net_file), str(tmp_path / "w.caffemodel"), str(tmp_path / "o.json"), "3"]
    result = _run([sys.executable, "-m", "fcnwild.tools.cli", "pycaffe", str(path), *args],
                  cwd=tmp_path)
    assert result.returncode == 3
    broken = write(tmp_path / "broken.py", "raise RuntimeError('from the script')\n")
    result = _run([sys.executable, "-m", "fcnwild.tools.cli", "pycaffe", str(broken)],
                  cwd=tmp_path)
    assert result.returncode == 1 and "RuntimeError: from the script" in result.stderr


def test_the_shim_on_pythonpath_makes_plain_python_find_caffe(script, capsys):
    path, net_file, tmp_path, expected = script
    assert cli.main(["pycaffe", "--shim-path"]) == 0
    shim = capsys.readouterr().out.strip()
    assert (Path(shim) / "caffe" / "__init__.py").is_file()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [shim] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    args = [str(net_file), str(tmp_path / "w.caffemodel"), str(tmp_path / "shim.json")]
    result = _run([sys.executable, str(path), *args], cwd=tmp_path, env=env)
    _check(result, tmp_path / "shim.json", args, expected)


def test_installing_fcnwild_adds_no_top_level_caffe():
    """From the repository root and anywhere else, ``import caffe`` finds nothing of
    ours unless the shim is put on PYTHONPATH."""
    probe = "import importlib.util, sys; print(importlib.util.find_spec('caffe'))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cwd in (REPO, REPO / "pycaffe"):
        result = _run([sys.executable, "-c", probe], cwd=cwd, env=env)
        assert result.returncode == 0 and result.stdout.strip() == "None", result.stdout


TRAIN_SCRIPT = '''
import caffe
solver = caffe.SGDSolver("solver.prototxt")
solver.step(2)
'''


def test_solver_log_shows_on_stderr_as_pycaffes_glog_does(tmp_path, capsys):
    """pycaffe writes Caffe's log to stderr until a script calls init_log: so do the
    runner and the shim; importing fcnwild.caffe alone configures no logging."""
    write(tmp_path / "ipnet.prototxt", IP_NET.replace(
        'layer { name: "zeta"', 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" '
        'bottom: "ip" top: "loss" }\nlayer { name: "zeta"'))
    write(tmp_path / "solver.prototxt", 'net: "ipnet.prototxt" base_lr: 0.01 '
                                        'lr_policy: "fixed" max_iter: 2 display: 1')
    script = write(tmp_path / "train.py", TRAIN_SCRIPT)
    assert cli.main(["pycaffe", "--shim-path"]) == 0
    shim = capsys.readouterr().out.strip()
    env = dict(os.environ, PYTHONPATH=shim)
    for command, environment in (
            ([sys.executable, "-m", "fcnwild.tools.cli", "pycaffe", str(script)], None),
            ([sys.executable, str(script)], env)):
        result = _run(command, cwd=tmp_path, env=environment)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Iteration 0" in result.stderr and "Iteration 1" in result.stderr
        assert "Train net output #0: loss" in result.stderr
    probe = "import logging, fcnwild.caffe; print(logging.getLogger('fcnwild').handlers)"
    assert _run([sys.executable, "-c", probe], cwd=tmp_path).stdout.strip() == "[]"
