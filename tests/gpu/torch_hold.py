"""A torch worker that holds a tensor (MiB from argv[1]) after a matmul, until the script lets it go."""
import sys
import torch
from common import hold, say

a = torch.randn(1024, 1024, device="cuda")
(a @ a).sum().item()
x = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device="cuda").fill_(1)
torch.cuda.synchronize()
say(held_mib=sys.argv[1])
hold()
