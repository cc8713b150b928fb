"""A CUDA worker for the Python tests, on the driver-API through ctypes (the fake driver here; the real
one would do as well), run under the installed ``vramcap-run``.

    python worker.py --hold MIB [--try MIB] [--serve] [--fail-unload TEXT]

- ``--hold MIB``: one allocation of MIB, held by ``app.model`` (a ``Model`` that frees it when collected,
  as a framework's tensors are);
- ``--try MIB``: then one more allocation of MIB, printing ``TRY code=N`` (2: out of memory), freed at once;
- ``--serve``: ``vramcap.serve_unload`` on ``VRAMCAP_UNLOAD_URL`` with ``vramcap.torch_unloader(app,
  "model")`` and a reloader that allocates MIB again (``torch`` is the tests' stub);
- ``--fail-unload TEXT``: the unload callback raises ``RuntimeError(TEXT)`` instead.

It prints ``READY pid=N`` once set up, then waits for ``quit`` (or the end of its input).
"""

import argparse
import ctypes
import os
import sys

MIB = 1 << 20

cu = ctypes.CDLL("libcuda.so.1")


def check(what, code):
    if code != 0:
        print(f"FAILED {what} code={code}", flush=True)
        raise RuntimeError(f"{what} answered {code}")


class Model:
    context = None

    def __init__(self, mib):
        self.ptr = ctypes.c_uint64()
        self.mib = mib
        # A context is current per thread: the reloader runs on the endpoint's thread.
        check("cuCtxSetCurrent", cu.cuCtxSetCurrent(Model.context))
        check("cuMemAlloc_v2", cu.cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(mib * MIB)))
        print(f"LOADED mib={mib}", flush=True)

    def __del__(self):
        if not self.ptr.value:
            return
        cu.cuMemFree_v2(self.ptr)
        print(f"FREED mib={self.mib}", flush=True)


class App:
    model = None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=int, required=True)
    parser.add_argument("--try", dest="try_mib", type=int)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--fail-unload")
    args = parser.parse_args()

    check("cuInit", cu.cuInit(0))
    ctx = ctypes.c_void_p()
    check("cuDevicePrimaryCtxRetain", cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0))
    check("cuCtxSetCurrent", cu.cuCtxSetCurrent(ctx))
    Model.context = ctx
    app = App()
    if args.hold:
        app.model = Model(args.hold)
    if args.try_mib is not None:
        p = ctypes.c_uint64()
        code = cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(args.try_mib * MIB))
        print(f"TRY code={code}", flush=True)
        if code == 0:
            cu.cuMemFree_v2(p)
    server = None
    if args.serve:
        import vramcap

        unload = vramcap.torch_unloader(app, "model")
        if args.fail_unload:

            def unload():
                raise RuntimeError(args.fail_unload)

        server = vramcap.serve_unload(
            unload, vramcap.torch_reloader(app, "model", lambda: Model(args.hold))
        )
        print(f"SERVING {server.unload_url} {server.reload_url}", flush=True)
    print(f"READY pid={os.getpid()}", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    if server:
        server.close()


if __name__ == "__main__":
    main()
