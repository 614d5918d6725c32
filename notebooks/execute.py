"""Execute the notebooks in a fresh kernel and store them WITH their outputs (`make notebooks`).

    python notebooks/execute.py                 # every notebooks/*.ipynb
    python notebooks/execute.py 04_tune_your_own_model.ipynb

The kernel runs this interpreter (sys.executable) with the environment tests/test_notebooks.py
uses, from the notebooks/ folder. Figures get a static PNG next to the interactive output when
kaleido finds a Chrome / Chromium (notebooks/nbfigures.py); commit the notebooks executed so.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL = "schedule-lab"
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def execute(path: Path, kernel_dir: str) -> float:
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
            c.metadata.pop("execution", None)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernel_dir]))
    t0 = time.perf_counter()
    NotebookClient(nb, km=km, timeout=600, record_timing=False, coalesce_streams=True,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    dt = time.perf_counter() - t0
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return dt


def main(argv=None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or sorted(p.name for p in HERE.glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / KERNEL
        spec.mkdir()
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Schedule Lab (Python)", "language": "python", "env": ENV}))
        for name in names:
            print(f"{name}: executed and stored in {execute(HERE / Path(name).name, d):.1f} s", flush=True)


if __name__ == "__main__":
    main()
