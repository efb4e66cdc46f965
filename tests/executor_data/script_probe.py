"""A script for run_script: records sys.argv and __name__ in the file named by argv[1]."""
import json
import sys

record = {"argv": sys.argv, "name": __name__, "main_block": False}
if __name__ == "__main__":
    record["main_block"] = True
with open(sys.argv[1], "w") as f:
    json.dump(record, f)
