"""Run the run-jobs flow in a child process (for kill/restart tests): argv[1] is a JSON kwargs dict."""
import json
import sys

from flows.run_jobs import run_jobs

if __name__ == "__main__":
    stats = run_jobs(**json.loads(sys.argv[1]))
    print(json.dumps({"status": stats["status"]}))
