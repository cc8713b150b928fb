"""Per-process figures from nvidia-smi (MiB), polled until the file argv[1] exists; prints the largest
figure seen for each PID (the given PIDs, or every process when none is given)."""
import subprocess
import sys
import os
import time

stop, pids = sys.argv[1], set(sys.argv[2:])
peak = {p: 0 for p in pids}
while not os.path.exists(stop):
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        pid = pid.strip()
        if pid in peak or not pids:
            peak[pid] = max(peak.get(pid, 0), int(mib.strip() or 0))
    time.sleep(0.1)
print(" ".join(f"{p}:{m}" for p, m in sorted(peak.items())))
