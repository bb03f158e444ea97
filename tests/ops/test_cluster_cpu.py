"""`ops.cluster.cpu_seconds` counts a process's live descendants (a worker's inference child) with it."""

from __future__ import annotations

import subprocess
import sys
import time

from genrec.ops.cluster import cpu_seconds


def test_a_busy_child_counts_for_its_idle_parent() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\ntime.sleep(3)"
    wait_for_child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    parent = subprocess.Popen([sys.executable, "-c", wait_for_child])
    try:
        deadline = time.monotonic() + 20
        seen = 0.0
        while time.monotonic() < deadline:
            seen = cpu_seconds(parent.pid) or 0.0
            if seen >= 0.8:
                break
            time.sleep(0.2)
        assert seen >= 0.8, seen  # the parent itself only waits: this is the child's time
        assert (cpu_seconds(parent.pid, descendants=False) or 0.0) < 0.5
    finally:
        parent.kill()
        parent.wait()
    assert cpu_seconds(parent.pid) is None  # gone
