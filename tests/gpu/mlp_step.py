"""Time of a small MLP training step (the script compares it with and without vramcap). The batch keeps the
GPU busy for about a millisecond a step, so the figure is the GPU's, not the host's scheduling noise."""
import statistics
import sys
import time
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(1024, 1024, device="cuda")
y = torch.randn(1024, 1024, device="cuda")


def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()


for _ in range(50):
    step()
torch.cuda.synchronize()
rounds = []
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 9):
    t = time.perf_counter()
    for _ in range(100):
        step()
    torch.cuda.synchronize()
    rounds.append((time.perf_counter() - t) / 100 * 1e6)
# The fastest round: interference on a shared machine only ever adds time.
print(f"mlp_step_us={min(rounds):.3f} median_us={statistics.median(rounds):.3f}")
