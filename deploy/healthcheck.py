"""Container health check: GET /health on the local port; exit 0 when it answers 200, 1 otherwise.

Written in Python because the runtime image has no curl. Liveness only: ``/health`` consults no dependency, so
a database outage never makes Docker restart a healthy process.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Probe ``http://127.0.0.1:$PORT/health`` with a short timeout and report the outcome as an exit status."""
    port = os.environ.get("PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"health check failed: {url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
