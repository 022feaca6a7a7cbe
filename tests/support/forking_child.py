"""A process that forks a worker of its own, as the dramatiq worker does, and sleeps: for the supervisor's tests.

The worker's pid goes to the file named by ``FORKING_CHILD_PID_FILE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

if __name__ == "__main__":
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    path = os.environ["FORKING_CHILD_PID_FILE"]
    with open(path + ".tmp", "w") as out:
        out.write(str(worker.pid))
    os.replace(path + ".tmp", path)
    time.sleep(600)
