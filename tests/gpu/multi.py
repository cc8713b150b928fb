"""Two-GPU checks for scripts/gpu-multi.sh. Modes:
  ddp    one rank of a two-process DDP job (RANK, WORLD_SIZE, MASTER_ADDR/PORT set): train a few steps with
         NCCL, all-reduce a tensor, then fill its GPU until the cap refuses;
  both   one process on both GPUs: a peer copy, then fill cuda:0, then cuda:1, each until refused.
Prints key=value lines, then holds its memory while the script reads nvidia-smi."""
import os
import sys
import torch
from common import say, hold

CHUNK = 256 << 20


def fill(dev):
    xs = []
    try:
        while len(xs) < 4096:
            xs.append(torch.empty(CHUNK, dtype=torch.uint8, device=dev))
    except torch.OutOfMemoryError:
        return xs, "OutOfMemoryError"
    except Exception as e:  # noqa: BLE001 - reported, and the row fails on it
        return xs, type(e).__name__
    return xs, "none"


mode = sys.argv[1]
if mode == "ddp":
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    torch.cuda.set_device(rank)
    dev = f"cuda:{rank}"
    dist.init_process_group("nccl")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1024, 1024).to(dev), device_ids=[rank])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(64, 1024, device=dev)).sum().backward()
        opt.step()
    t = torch.full((1 << 20,), float(rank + 1), device=dev)
    dist.all_reduce(t)
    torch.cuda.synchronize()
    ok = int(bool((t == 3.0).all().item()))
    xs, err = fill(dev)
    say(rank=rank, allreduce_ok=ok, tensors=len(xs), error=err, info_total=torch.cuda.mem_get_info(rank)[1])
    hold()
    del xs
    dist.destroy_process_group()
else:
    a = torch.arange(1 << 22, device="cuda:0", dtype=torch.float32)
    b = a.to("cuda:1")
    torch.cuda.synchronize()
    say(peer_ok=int(torch.equal(a.cpu(), b.cpu())))
    x0, e0 = fill("cuda:0")
    x1, e1 = fill("cuda:1")
    say(n0=len(x0), e0=e0, n1=len(x1), e1=e1,
        info0=torch.cuda.mem_get_info(0)[1], info1=torch.cuda.mem_get_info(1)[1])
    hold()
