"""Run the test suite under coverage.py, the host and the worker side, and report both merged.

    python scripts/measure_coverage.py [pytest arguments...]       # e.g. -x, or tests/test_executor.py
    python scripts/measure_coverage.py --html DIR [pytest arguments...]
    python scripts/measure_coverage.py --json FILE [pytest arguments...]   # per-line data, merged

Needs the test requirements (coverage is pinned in requirements-test.txt).  How
each side is measured:

- the host: ``coverage run -m pytest``;
- subprocesses of this interpreter (the CLI run as a program, helper scripts):
  coverage's ``patch = subprocess``;
- executor workers, which run a copy of wetlite.py in an environment's own
  Python: the worker's boot script starts coverage when COVERAGE_PROCESS_START
  is set, importing it from WETLITE_COVERAGE_PATH when the environment lacks it
  (a directory holding only a link to this coverage package).  Workers on a
  Python this coverage release does not support are not measured; neither are
  workers that are killed.

The workers' copies (``{root}/state/runtime/<hash>/wetlite.py``) are mapped back
to wetlite.py before the report.  Excluded from the figures, by name: code that
runs only on Windows (``if _WINDOWS:``, ``if os.name == "nt":``) or only on
macOS (``if _MACOS:``), which no test here can reach.
"""
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RC = """\
[run]
branch = True
parallel = True
include = */wetlite.py
patch = subprocess
data_file = {data}

[paths]
wetlite =
    {repo}/
    */state/runtime/{digest}/
    */_vendor/
    */bundle.zip/

[report]
# A copy some test made and removed (a vendored one in a temp dir) has no source left to show.
ignore_errors = True
exclude_also =
    # Windows only
    if _WINDOWS:
    if os\\.name == .nt.:
    # macOS only
    if _MACOS:
"""


def runtime_digest():
    """The name of the runtime dir that holds the workers' copy of this wetlite.py."""
    sys.path.insert(0, REPO)
    try:
        import wetlite
        return wetlite._self_source()[1]
    finally:
        sys.path.remove(REPO)


def measured(data_file):
    """The files ``data_file`` measured, or None if it cannot be read: a process that a test
    limited (RLIMIT_FSIZE) or killed while it saved its data leaves a broken file."""
    import coverage
    from coverage.exceptions import CoverageException
    data = coverage.CoverageData(data_file)
    try:
        data.read()
        return data.measured_files()
    except CoverageException as exc:
        print("skipped unreadable coverage data %s: %s" % (os.path.basename(data_file), exc))
        return None


def totals(json_report):
    import json
    with open(json_report) as f:
        return json.load(f)["totals"]


def main(argv):
    html = as_json = None
    while argv[:1] in (["--html"], ["--json"]):
        if argv[0] == "--html":
            html = argv[1]
        else:
            as_json = argv[1]
        argv = argv[2:]
    import coverage                      # fails here, with a clear message, when it is missing
    work = tempfile.mkdtemp(prefix="wetlite-coverage-")
    try:
        return measure(work, argv, html, as_json, coverage)
    except BaseException:
        print("the coverage data is kept in %s" % work)
        raise


def measure(work, argv, html, as_json, coverage):
    rc = os.path.join(work, "coveragerc")
    with open(rc, "w") as f:
        f.write(RC.format(data=os.path.join(work, ".coverage"), repo=REPO, digest=runtime_digest()))
    site = os.path.join(work, "site")
    os.mkdir(site)
    os.symlink(os.path.dirname(coverage.__file__), os.path.join(site, "coverage"))
    env = dict(os.environ, COVERAGE_PROCESS_START=rc, WETLITE_COVERAGE_PATH=site)
    run = [sys.executable, "-m", "coverage"]
    tests = subprocess.call(run + ["run", "--rcfile", rc, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + argv,
                            cwd=REPO, env=env)
    return report(work, rc, env, html, as_json) or tests


def report(work, rc, env, html=None, as_json=None):
    """Combine the data files in ``work`` and print the figures; the exit status of the report."""
    run = [sys.executable, "-m", "coverage"]
    # Only this wetlite.py: copies of another source (a vendored or older version some test made)
    # are measured too, and would be reported while the run's temp dir still holds them.
    only = ["--include", os.path.join(REPO, "wetlite.py")]
    # The host's own figures too (its data measured this wetlite.py itself), to see what the
    # workers add.
    parts = {}
    for name in sorted(os.listdir(work)):
        if name.startswith(".coverage."):
            files = measured(os.path.join(work, name))
            if files is not None:
                parts[os.path.join(work, name)] = files
    host = [p for p, files in parts.items() if os.path.join(REPO, "wetlite.py") in files]
    parts = list(parts)
    rows = []
    for label, files in (("host", host), ("host and workers", parts)):
        data = os.path.join(work, label.replace(" ", "-") + ".data")
        subprocess.check_call(run + ["combine", "--rcfile", rc, "--keep", "-q", "--data-file", data] + files,
                              cwd=REPO, env=env)
        out = os.path.join(work, label.replace(" ", "-") + ".json")
        subprocess.check_call(run + ["json", "--rcfile", rc, "-q", "--data-file", data, "-o", out] + only,
                              cwd=REPO, env=env)
        rows.append((label, totals(out)))
    data = os.path.join(work, "host-and-workers.data")
    status = subprocess.call(run + ["report", "--rcfile", rc, "--data-file", data] + only, cwd=REPO, env=env)
    for label, t in rows:
        print("%-17s lines %5.1f%% (%d of %d)   branches %5.1f%% (%d of %d)" % (
            label, 100.0 * t["covered_lines"] / t["num_statements"], t["covered_lines"], t["num_statements"],
            100.0 * t["covered_branches"] / t["num_branches"], t["covered_branches"], t["num_branches"]))
    if html:
        subprocess.call(run + ["html", "--rcfile", rc, "--data-file", data, "-d", os.path.abspath(html)] + only,
                        cwd=REPO, env=env)
    if as_json:
        import shutil
        shutil.copyfile(os.path.join(work, "host-and-workers.json"), as_json)
    if status == 0:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("the coverage data is kept in %s" % work)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
