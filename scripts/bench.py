#!/usr/bin/env python3
"""Measure wetlite's hot paths, in one run, and print a table and JSON.

    python scripts/bench.py [--quick] [--json-only]

Measured here:
  import     `import wetlite`, cumulative, from `python -X importtime`
             (cached bytecode), median of several runs.
  reuse      `mgr.create(name, deps)` returning an existing environment: the
             recipe check, the lock and the record read, no tool call. Timed
             with a fresh manager each time (the cold path) and with the same
             manager (the registry path).

The machine is shared and noisy: every figure is a median over many runs.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import wetlite  # noqa: E402


def bench_import(runs):
    cache = tempfile.mkdtemp(prefix="wetlite-bench-pycache-")
    env = dict(os.environ, PYTHONPYCACHEPREFIX=cache, PYTHONPATH=REPO)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        subprocess.run([sys.executable, "-c", "import wetlite"], env=env, check=True)
        samples = []
        for _ in range(runs):
            err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wetlite"], env=env,
                                 stderr=subprocess.PIPE, check=True).stderr.decode()
            for line in err.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 3 and parts[2] == "wetlite":
                    samples.append(int(parts[1]) / 1000.0)
        return {"median_ms": statistics.median(samples), "min_ms": min(samples), "runs": len(samples)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def bench_reuse(runs):
    root = tempfile.mkdtemp(prefix="wetlite-bench-")
    try:
        deps = {"pip": ["wetlite-bench-not-on-the-host>=1"]}
        mgr = wetlite.EnvironmentManager(root=root, tool="venv")
        recipe = mgr._recipe(deps, None)
        # Build the environment without pip (the bench measures reuse, not pip):
        # a venv plus the record that create() writes.
        prefix = os.path.join(root, "envs", "bench")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", prefix], check=True)
        wetlite._write_json(mgr._record_path("bench"), {
            "name": "bench", "tool": "venv", "dir": prefix, "prefix": prefix, "manifest": None,
            "python": wetlite._env_python(prefix, "venv"), "recipe_hash": recipe["hash"],
            "recipe": recipe["identity"], "state": "ready", "python_version": "%d.%d.%d" % sys.version_info[:3]})
        cold, warm = [], []
        for _ in range(runs):
            start = time.perf_counter()
            env = wetlite.EnvironmentManager(root=root, tool="venv").create("bench", deps)
            cold.append((time.perf_counter() - start) * 1000)
            assert env.path == prefix
        for _ in range(runs):
            start = time.perf_counter()
            mgr.create("bench", deps)
            warm.append((time.perf_counter() - start) * 1000)
        return {"cold_median_ms": statistics.median(cold), "cold_p90_ms": sorted(cold)[int(runs * 0.9) - 1],
                "warm_median_ms": statistics.median(warm), "runs": runs}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    runs = 5 if args.quick else 15
    results = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "wetlite": wetlite.__version__,
        "import": bench_import(runs),
        "reuse": bench_reuse(runs * 10),
    }
    if not args.json_only:
        print("%-34s %10s" % ("measure", "value"))
        print("%-34s %8.2f ms  (goal <= 10 ms)" % ("import wetlite (median, cumulative)", results["import"]["median_ms"]))
        print("%-34s %8.2f ms  (goal <= 20 ms)" % ("create() reuse, fresh manager", results["reuse"]["cold_median_ms"]))
        print("%-34s %8.2f ms" % ("create() reuse, fresh manager p90", results["reuse"]["cold_p90_ms"]))
        print("%-34s %8.2f ms" % ("create() reuse, same manager", results["reuse"]["warm_median_ms"]))
        print()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
