"""deploybench/jobs/overhead.py's reading of py-spy's samples: the model's run apart from the
server around it, the rest by package and function."""

from __future__ import annotations

from deploybench.jobs.overhead import split_samples
from deploybench.settings import REPO_ROOT

KIT = f"{REPO_ROOT}/serving/kserve_server.py"
RUNTIMES = f"{REPO_ROOT}/deploybench/runtimes.py"
VENV = f"{REPO_ROOT}/.venv/lib/python3.11/site-packages"


def test_samples_under_the_runner_are_the_model_and_the_rest_is_split_by_innermost_frame(
) -> None:
    raw = "\n".join([
        f"run (threading.py:1);predict ({RUNTIMES}:75);forward ({VENV}/torch/nn/m.py:3) 60",
        f"run (threading.py:1);predict ({RUNTIMES}:75) 10",
        f"handle ({VENV}/uvicorn/protocols/h.py:1);predict ({KIT}:108);"
        f"decode_tensor ({REPO_ROOT}/serving/input_validation.py:9) 12",
        f"handle ({VENV}/uvicorn/protocols/h.py:1);__call__ ({VENV}/starlette/r.py:2) 8",
        f"run ({VENV}/kserve/model_server.py:5);info ({VENV}/logging/__init__.py:1) 10",
        "_run_once (asyncio/base_events.py:1);select (selectors.py:468) 40",
        "_Predicts.predict (deploybench/runtimes.py:77);__call__ (torch/export/p.py:7) 20",
        "v2_batch (serving/kserve_server.py:78) 5",
        "not a sample line",
    ])
    split = split_samples(raw)
    assert (split["samples"], split["model_samples"], split["server_samples"]) == (125, 90, 35)
    assert split["idle_samples"] == 40 and split["server_share"] == 0.28
    # the KServe model's own `predict` (the kit's server) is not the runner's; paths as py-spy
    # shortens them (relative to the interpreter's path) or whole
    assert split["packages"] == {"deploybench (the kit)": 17, "logging": 10, "starlette": 8}
    assert split["functions"][f"decode_tensor ({REPO_ROOT}/serving/input_validation.py:9)"] == 12
