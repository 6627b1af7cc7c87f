"""A tiny class-conditional GAN on 4-D points, for tests of faceanon.learner.

Run as a job: `python learner_ddp_job.py OUT [STEPS]` trains on one process; under
`torchrun --nproc_per_node 2 learner_ddp_job.py OUT` the same global batches are split over two
gloo processes. Rank 0 writes the final nets to OUT (a safetensors checkpoint).
"""
from __future__ import annotations
import sys
from functools import partial
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from faceanon.core import set_seed
from faceanon.learner import CheckpointCB, Learner, MetricsCB, Phase, init_distributed, save_checkpoint

class Points(torch.utils.data.Dataset):
    "Class y -> a point near a class centre in 4-D, plus per-item noise z (so noise does not depend on the process)."
    def __init__(self, n: int = 48, n_classes: int = 3):
        g = torch.Generator().manual_seed(1)
        self.y = torch.arange(n) % n_classes
        self.x = F.one_hot(self.y, 4).float() * 2 - 1 + 0.1 * torch.randn(n, 4, generator=g)
        self.z = torch.randn(n, 2, generator=g)
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return dict(x=self.x[i], y=self.y[i], z=self.z[i])

class Gen(nn.Module):
    def __init__(self, n_classes=3, h=32):
        super().__init__(); self.emb = nn.Embedding(n_classes, 4)
        self.net = nn.Sequential(nn.Linear(6, h), nn.LeakyReLU(0.2), nn.Linear(h, 4))
    def forward(self, z, y): return self.net(torch.cat([z, self.emb(y)], 1))

class Disc(nn.Module):
    def __init__(self, n_classes=3, h=32):
        super().__init__(); self.net = nn.Sequential(nn.Linear(4, h), nn.LeakyReLU(0.2)); self.out, self.emb = nn.Linear(h, 1), nn.Embedding(n_classes, h)
    def forward(self, x, y): h = self.net(x); return self.out(h).squeeze(1) + (self.emb(y) * h).sum(1)

def d_loss(l):
    b = l.batch
    return F.softplus(-l.D(b['x'], b['y'])).mean() + F.softplus(l.D(l.G(b['z'], b['y']), b['y'])).mean()

def g_loss(l):
    b = l.batch; fake = l.G(b['z'], b['y'])
    recon = (fake - b['x']).abs().mean()
    return F.softplus(-l.D(fake, b['y'])).mean() + 5 * recon, {'recon': recon}

def make(device='cpu', seed: int = 0, n: int = 48, bs: int = 8, **kw) -> Learner:
    "A learner with phases D then G (Adam), seeded nets."
    set_seed(seed)
    adam = partial(torch.optim.Adam, lr=3e-3, betas=(0.5, 0.999))
    return Learner(dict(G=Gen(), D=Disc()), [Phase('D', 'D', adam, d_loss), Phase('G', 'G', adam, g_loss)], Points(n), bs=bs, device=device, seed=0, **kw)

def main(out, steps: int = 6, ckpt=None):
    "Train `steps` steps on however many processes torchrun started (checkpoint every 3 to `ckpt`); rank 0 writes nets and metrics to `out`."
    rank, world, dev = init_distributed('cpu')
    mets = MetricsCB(every=2)
    learn = make(device=dev, cbs=[mets] + ([CheckpointCB(ckpt, every=3)] if ckpt else [])).fit(max_steps=steps)
    if rank == 0: save_checkpoint(dict(world=world, models=learn.models.state_dict(), local_bs=len(learn.batch['y']), history=mets.history), out)
    if world > 1: dist.barrier(); dist.destroy_process_group()

if __name__ == '__main__': main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
