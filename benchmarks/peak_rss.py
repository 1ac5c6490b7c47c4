"""Run a command; print its wall time and peak resident memory as JSON.

    python -m benchmarks.peak_rss CMD [ARGS ...]

This process has exactly one child, so RUSAGE_CHILDREN's ru_maxrss is that command's own peak.
"""

import json
import resource
import subprocess
import sys
import time


def main() -> None:
    start = time.perf_counter()
    result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(sys.argv[1:])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss": peak_kib * 1024}))


if __name__ == "__main__":
    main()
