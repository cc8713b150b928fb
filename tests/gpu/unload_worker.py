"""A worker for the unloader check: holds GIB of tensors and serves POST /memory/unload on 127.0.0.1:PORT,
which drops them and gives the memory back to the driver, and POST /memory/reload, which takes them again
(vLLM's /sleep and /wake_up). Usage: unload_worker.py NAME GIB PORT"""
import http.server
import sys
import threading
import time
import torch

name, gib, port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
held = [torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32, device="cuda")]
torch.cuda.synchronize()
lock = threading.Lock()


class Unload(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path == "/memory/reload":
            with lock:
                if not held:
                    held.append(torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32, device="cuda"))
                    torch.cuda.synchronize()
                    print(f"EVENT t={time.time():.3f} {name} reloaded", flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/memory/unload":
            self.send_response(404)
            self.end_headers()
            return
        with lock:
            if held:
                # A real worker would check or save state here; verify the data was intact.
                ok = bool(held[0][:1024].eq(1).all().item())
                held.clear()
                torch.cuda.empty_cache()
                print(f"EVENT t={time.time():.3f} {name} unloaded data_ok={int(ok)}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Unload)
print(f"READY t={time.time():.3f} {name} holds {gib} GiB pid={__import__('os').getpid()}", flush=True)
server.serve_forever()
