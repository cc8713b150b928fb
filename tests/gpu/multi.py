"""Two-GPU checks for scripts/gpu-multi.sh. Modes:
  ddp    one rank of a two-process DDP job (RANK, WORLD_SIZE, MASTER_ADDR/PORT set): train a few steps with
         NCCL, all-reduce a tensor, then fill its GPU until the cap refuses;
  both   one process on both GPUs: a peer copy, then fill cuda:0, then cuda:1, each until refused;
  ddp_graph  one rank of a two-process DDP job whose whole training step (forward, backward with NCCL's
         all-reduce, optimizer) is captured in a torch.cuda.graph and replayed, as torch's docs describe
         for NCCL >= 2.9.6; then fills its GPU until refused and replays once more there. Run under
         PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync (graph allocation nodes) or the default allocator
         (the graph's private pool).
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
elif mode == "ddp_graph":
    # DDP's async error handling must be off for a captured backward (torch's CUDA graphs notes).
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    replays = int(os.environ.get("REPLAYS", "50"))
    torch.cuda.set_device(rank)
    dev = f"cuda:{rank}"
    dist.init_process_group("nccl", device_id=torch.device(dev))
    torch.manual_seed(0)

    def charged():
        """What vramcap charges on this GPU (its capped total minus free), in MiB."""
        free, total = torch.cuda.mem_get_info(rank)
        return (total - free) >> 20

    def checksum():
        return torch.cat([p.detach().flatten() for p in model.parameters()]).double().sum()

    x = torch.randn(256, 1024, device=dev)
    y = torch.randn(256, 1024, device=dev)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        # Built on a side stream and warmed up there for 11 eager steps, as a full-backward capture
        # under DDP needs.
        net = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024))
        model = torch.nn.parallel.DistributedDataParallel(net.to(dev), device_ids=[rank])
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(11):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    def step():
        x.copy_(torch.randn(256, 1024, device=dev))
        g.replay()

    step()
    before = checksum()
    torch.cuda.synchronize()
    # Only replays (and their inputs) between the two readings: the checksums' temporaries stay outside.
    first = charged()
    for _ in range(replays):
        step()
    torch.cuda.synchronize()
    after_replays = charged()
    trained = checksum()
    # Both ranks applied the same averaged gradients: their parameters agree.
    sums = [torch.zeros(1, dtype=torch.float64, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, trained.reshape(1))
    same = int(all(bool(torch.equal(sums[0], s)) for s in sums))
    say(rank=rank, replays=replays, loss_finite=int(bool(torch.isfinite(loss).item())),
        params_moved=int(bool((trained != before).item())), params_agree=same,
        charged_first_mib=first, charged_replays_mib=after_replays)
    xs, err = fill(dev)
    # At the cap: the graph's memory is its own already, so a replay takes nothing more.
    try:
        g.replay()
        torch.cuda.synchronize()
        at_cap = 1
    except Exception as e:  # noqa: BLE001 - reported, and the row fails on it
        say(replay_at_cap_error=type(e).__name__)
        at_cap = 0
    say(tensors=len(xs), error=err, replay_at_cap_ok=at_cap, charged_at_cap_mib=charged(),
        info_total=torch.cuda.mem_get_info(rank)[1])
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
