"""Execute every notebook in notebooks/ headless and write executed copies and HTML to build/.

Prints a table of notebook, status and seconds; exits with status 1 if any notebook fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, out_dir: Path, timeout: int) -> tuple[str, float]:
    """Run one notebook in its own folder; save the executed copy and its HTML rendering."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": path.parent}},
    )
    start = time.perf_counter()
    status = "ok"
    try:
        client.execute()
    except CellExecutionError as error:  # The traceback ends with the exception line.
        status = f"failed: {str(error).strip().splitlines()[-1][:80]}"
    except (CellTimeoutError, DeadKernelError) as error:  # These messages start with the cause.
        status = f"failed: {str(error).strip().splitlines()[0][:80]}"
    seconds = time.perf_counter() - start
    nbformat.write(notebook, out_dir / path.name)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    (out_dir / path.with_suffix(".html").name).write_text(html)
    return status, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output folder")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args()

    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        rows.append((path.name, *execute(path.resolve(), args.out, args.timeout)))

    width = max(len(name) for name, _, _ in rows)
    print(f"\n| {'notebook':<{width}} | status | seconds |")
    print(f"| {'-' * width} | ------ | ------- |")
    for name, status, seconds in rows:
        print(f"| {name:<{width}} | {status} | {seconds:7.1f} |")
    print(f"\nexecuted notebooks and HTML in {args.out}")
    return 0 if all(status == "ok" for _, status, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
