"""Execute the teaching notebooks with nbclient on a kernel started with this interpreter
(sys.executable), so they run in whatever virtual environment runs the tests. A notebook fails
the test if any cell raises (the notebooks assert the claims their text makes).

Notebooks that need engine modules from other branches check for them in their first cells and
say so; they run (and are tested) in reduced form until those modules are merged."""
import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "schedule-lab"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec named like the notebooks' ('schedule-lab') whose argv is this interpreter."""
    d = tmp_path_factory.mktemp("kernels")
    spec = d / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Schedule Lab (Python)", "language": "python",
        "env": {"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}}))
    return d


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_why_the_schedule_matters.ipynb", "02_align_your_steps.ipynb",
                                           "03_three_optimizers.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, kernel_dir):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    assert outs, "the notebook showed nothing"
