"Tests of faceanon.learner: phases freeze the other nets, training moves, exact resume, safetensors checkpoints, torchrun on 2 CPU processes."
import math, os, socket, subprocess, sys
from functools import partial
from pathlib import Path
import pytest
import torch
import fastcore.test as fct
sys.path.insert(0, str(Path(__file__).parent))
from learner_ddp_job import make, main, Points
from faceanon.learner import (Callback, CancelFitException, CheckpointCB, EMACB, Learner, LRDropCB, MetricsCB, Phase, ProgressCB, SamplesCB,
                              SingleBatchCB, load_checkpoint, save_checkpoint)

REPO = Path(__file__).parents[1]

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny nets on a shared 2-core machine: one thread is faster and steadier."
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

class Watch(Callback):
    "Record which nets changed and which got gradients in each phase."
    def __init__(self): self.changed, self.grads = {}, {}
    def before_step(self, l): self.before = {n: [p.detach().clone() for p in m.parameters()] for n, m in l.models.items()}
    def after_step(self, l):
        self.changed[l.phase.name] = sorted(n for n, ps in self.before.items() if any(not torch.equal(a, b) for a, b in zip(ps, l.models[n].parameters())))
        self.grads[l.phase.name] = sorted(n for n, m in l.models.items() if any(p.grad is not None for p in m.parameters()))

def test_each_phase_updates_only_its_nets():
    w = Watch(); learn = make(cbs=[w]); learn.fit(max_steps=1)
    fct.test_eq(w.changed, {'D': ['D'], 'G': ['G']})
    fct.test_eq(w.grads['D'], ['D'])                       # G(z) in D's phase built no graph into G
    assert all(p.requires_grad for p in learn.models.parameters())

def test_gan_losses_finite_and_recon_falls():
    mets = MetricsCB(every=5); learn = make(cbs=[mets]); learn.fit(max_steps=60)
    fct.test_eq(len(mets.history), 12)
    assert all(math.isfinite(v) for r in mets.history for v in r.values())
    _, recon = mets.series('G/recon')
    assert recon[-1] < recon[0] / 2, recon

def test_single_batch_and_every():
    runs = []
    count = lambda l: (runs.append(l.iter), l.A.weight.sum())[1]
    mk = lambda: Learner(dict(A=torch.nn.Linear(4, 4)), [Phase('A', 'A', partial(torch.optim.SGD, lr=0.0), count, every=3)], Points(), bs=8, device='cpu')
    learn = mk(); learn.fit(n_epochs=5, cbs=[SingleBatchCB()])
    fct.test_eq((learn.global_step, runs), (1, [0]))
    runs.clear(); mk().fit(max_steps=10); fct.test_eq(runs, [0, 3, 6, 9])

def test_cancel_fit_and_absolute_schedule():
    class StopAt(Callback):
        def after_batch(self, l):
            if l.global_step == 4: raise CancelFitException()
    learn = make(); learn.fit(n_epochs=3, cbs=[StopAt()]); fct.test_eq(learn.global_step, 4)
    learn.fit(n_epochs=3); fct.test_eq((learn.epoch, learn.global_step), (3, 18))    # 48 items / 8 = 6 steps per epoch

def test_progress_bar_only_when_asked(capsys):
    make(cbs=[ProgressCB()]).fit(max_steps=3)                             # stderr is not a terminal under pytest: silent
    fct.test_eq(capsys.readouterr().err, '')
    make(cbs=[ProgressCB(enabled=True, refresh=1)]).fit(max_steps=3)
    err = capsys.readouterr().err
    assert '3/3' in err and 'G/recon' in err, err

def test_phase_declaration_errors():
    G, D = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    sgd = partial(torch.optim.SGD, lr=0.1)
    fct.test_fail(lambda: Learner(dict(G=G), [Phase('D', 'D', sgd, None)], Points(), device='cpu'), contains="updates ['D']")
    fct.test_fail(lambda: Learner(dict(G=G, D=D), [Phase('G', 'G', torch.optim.SGD(D.parameters(), lr=0.1), None)], Points(), device='cpu'),
                  contains='outside its modules')
    fct.test_fail(lambda: Learner(dict(G=G), [Phase('G', 'G', sgd, None), Phase('G', 'G', sgd, None)], Points(), device='cpu'), contains='unique')
    fct.test_fail(lambda: Phase('G', 'G', sgd, None, every=0), contains='every must be >= 1')

def test_bf16_autocast_on_cpu():
    seen = []
    def loss(l): seen.append(l.G(l.batch['z'], l.batch['y']).dtype); return l.G(l.batch['z'], l.batch['y']).float().pow(2).mean()
    learn = Learner(dict(G=make().G), [Phase('G', 'G', partial(torch.optim.Adam, lr=1e-2), loss)], Points(), bs=8, device='cpu', precision='bf16')
    learn.fit(max_steps=20)
    fct.test_eq(seen[0], torch.bfloat16); fct.test_eq(learn.G.net[0].weight.dtype, torch.float32)
    assert math.isfinite(learn.logs['G']['loss'])

def test_auto_precision_takes_bf16_only_on_native_cpus(monkeypatch):
    import faceanon.learner as L
    for native, want in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(L, 'native_bf16', lambda device='cpu': native)
        learn = Learner(dict(G=make().G), [Phase('G', 'G', partial(torch.optim.Adam, lr=1e-2), lambda l: l.G(l.batch['z'], l.batch['y']).float().pow(2).mean())],
                        Points(), bs=8, device='cpu', precision='auto')
        fct.test_eq(learn.amp_dtype, want)

def test_channels_last_layout_same_training(tmp_path):
    "channels_last=True stores conv weights NHWC, keeps them so through training, and trains like NCHW; checkpoints cross layouts."
    def conv_learner(cl):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
        data = [dict(x=x) for x in torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
        loss = lambda l: (l.net(l.batch['x']) - l.batch['x']).pow(2).mean()
        return Learner(dict(net=net), [Phase('net', 'net', partial(torch.optim.Adam, lr=1e-2), loss)], data, bs=8, device='cpu', channels_last=cl)
    nchw, nhwc = conv_learner(False), conv_learner(True)
    nchw.fit(max_steps=20); nhwc.fit(max_steps=20)
    cl = torch.channels_last
    assert nhwc.net[0].weight.is_contiguous(memory_format=cl) and not nchw.net[0].weight.is_contiguous(memory_format=cl)
    fct.test_close(nhwc.net[2].weight.detach(), nchw.net[2].weight.detach(), eps=1e-4)
    assert nhwc.logs['net']['loss'] < 0.9                      # it trained
    nhwc.save(tmp_path / 'c.safetensors')
    back = conv_learner(False).load(tmp_path / 'c.safetensors')
    fct.test_eq(back.net[2].weight.detach(), nhwc.net[2].weight.detach())

def test_fp16_gradscaler_per_phase_roundtrips(tmp_path):
    learn = make(precision='fp16'); learn.fit(max_steps=5)
    assert all(ph.scaler.is_enabled() for ph in learn.phases)
    assert all(math.isfinite(v) for d in learn.logs.values() for v in d.values())
    learn.phases[1].scaler.update(123.0); learn.save(tmp_path / 'h.safetensors')
    other = make(precision='fp16').load(tmp_path / 'h.safetensors')
    fct.test_eq(other.phases[1].scaler.get_scale(), 123.0); fct.test_eq(other.global_step, 5)

class Crash(Callback):
    def before_batch(self, l):
        if l.global_step == 11: raise RuntimeError('power cut')

def noisy_sample(l): return torch.rand(2, 3, 4, 4) * 2 - 1          # draws from torch's RNG: must not disturb training

def test_resume_is_bit_identical(tmp_path):
    "Crash at step 11 of 16 (checkpoints every 4, mid-epoch), resume into fresh nets: identical to an uninterrupted run."
    ck = tmp_path / 'run.safetensors'
    full = make(cbs=[EMACB('G', 0.9), MetricsCB(every=3), SamplesCB(noisy_sample, every=2)]).fit(max_steps=16)
    after_full = torch.randn(3)
    fct.test_fail(lambda: make(cbs=[EMACB('G', 0.9), MetricsCB(every=3), CheckpointCB(ck, every=4), Crash()]).fit(max_steps=16), contains='power cut')
    fct.test_eq(load_checkpoint(ck)['counters'], dict(epoch=1, epoch_step=2, global_step=8, seed=0, world=1))
    resumed = make(seed=99, cbs=[EMACB('G', 0.9), MetricsCB(every=3), CheckpointCB(ck, every=4, resume=True)])
    assert not torch.equal(resumed.G.net[0].weight, full.G.net[0].weight)
    resumed.fit(max_steps=16)
    fct.test_eq(torch.randn(3), after_full)                                  # RNG stream continues identically
    for k, v in full.models.state_dict().items(): fct.test_eq(resumed.models.state_dict()[k], v)
    for a, b in zip(full.phases, resumed.phases):
        for s, t in zip(a.opt.state_dict()['state'].values(), b.opt.state_dict()['state'].values()): fct.test_eq(s['exp_avg_sq'], t['exp_avg_sq'])
    fct.test_eq(resumed.cbs[1].history, full.cbs[1].history)
    fct.test_eq((resumed.epoch, resumed.epoch_step, resumed.global_step), (2, 4, 16))

class LRSpy(Callback):
    "Record phase D's learning rate before each batch (after LRDropCB, order 60)."
    order = 70
    def __init__(self): self.lrs = []
    def before_batch(self, l): self.lrs.append(l.phases[0].opt.param_groups[0]['lr'])

def test_lr_drop_schedule_and_resume(tmp_path):
    "Drops at steps 3 and 6 multiply lr by 0.1 each; a run stopped at 4 and resumed matches one that never stopped."
    full = make(cbs=[LRDropCB(at=(3, 6)), spy := LRSpy()]).fit(max_steps=8)
    fct.test_close(torch.tensor(spy.lrs), torch.tensor([3e-3] * 3 + [3e-4] * 3 + [3e-5] * 2))
    ck = tmp_path / 'run.safetensors'
    make(cbs=[LRDropCB(at=(3, 6)), CheckpointCB(ck)]).fit(max_steps=4)
    resumed = make(seed=5, cbs=[LRDropCB(at=(3, 6)), CheckpointCB(ck, resume=True), spy2 := LRSpy()]).fit(max_steps=8)
    fct.test_close(torch.tensor(spy2.lrs), torch.tensor(spy.lrs[4:]))
    for k, v in full.models.state_dict().items(): fct.test_eq(resumed.models.state_dict()[k], v)
    plain = make().fit(max_steps=8)
    assert not torch.equal(plain.G.net[0].weight, full.G.net[0].weight)      # the drop changed training

def test_checkpoint_format_and_atomicity(tmp_path, monkeypatch):
    learn = make(); learn.fit(max_steps=2); p = learn.save(tmp_path / 'a.safetensors')
    from safetensors import safe_open
    with safe_open(str(p), 'pt') as f: assert 'faceanon' in f.metadata() and '/models/G/net.0.weight' in f.keys()
    before = p.read_bytes()
    import faceanon.learner as L
    def broken(*a, **k): raise OSError('disk full')
    monkeypatch.setattr('safetensors.torch.save', broken)
    fct.test_fail(lambda: learn.save(p), contains='disk full')
    fct.test_eq(p.read_bytes(), before); fct.test_eq(sorted(os.listdir(tmp_path)), ['a.safetensors'])
    monkeypatch.undo()
    save_checkpoint(dict(format='other'), tmp_path / 'b.safetensors')
    fct.test_fail(lambda: make().load(tmp_path / 'b.safetensors'), contains='expected a faceanon.learner/1 checkpoint')
    from safetensors.torch import save_file
    save_file({'w': torch.zeros(1)}, str(tmp_path / 'c.safetensors'))
    fct.test_fail(lambda: load_checkpoint(tmp_path / 'c.safetensors'), contains='not a faceanon checkpoint')

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_torchrun_two_cpu_processes_match_one(tmp_path):
    "Global batch 8: one process vs two gloo processes of 4 each give the same nets and logged losses after 6 steps of both phases."
    one, two, ck = tmp_path / 'one.safetensors', tmp_path / 'two.safetensors', tmp_path / 'ck.safetensors'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): env.pop(k, None)
    launch = lambda: subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--nnodes', '1', '--master_addr', '127.0.0.1',
                                       '--master_port', str(_free_port()), str(Path(__file__).parent / 'learner_ddp_job.py'), str(two), '6', str(ck)],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = launch()
    main(one, 6)                                                              # the single-process run, meanwhile, in this process
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0 and 'terminate called without an active exception' in out:
        # a worker sometimes aborts (SIGABRT) in gloo's C++ side, though the job ends with barrier and destroy_process_group: 4 of ~55 runs of
        # this test on a 2-core machine, none in 22 direct torchrun runs. One relaunch, printed; any other failure, or a second abort, fails.
        print('torchrun worker aborted in gloo; relaunching once:', out[-600:])
        proc = launch(); out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    a, b = load_checkpoint(one), load_checkpoint(two)
    fct.test_eq((a['world'], a['local_bs'], b['world'], b['local_bs']), (1, 8, 2, 4))
    init = make().models.state_dict()
    assert not torch.allclose(a['models']['G.net.0.weight'], init['G.net.0.weight'])   # training moved the nets
    for k, v in a['models'].items(): fct.test_close(b['models'][k], v, eps=1e-5)
    for ra, rb in zip(a['history'], b['history']):                          # logged losses are averaged over the processes
        fct.test_eq(ra.keys(), rb.keys()); fct.test_close(torch.tensor(list(rb.values())), torch.tensor(list(ra.values())), eps=1e-4)
    c = load_checkpoint(ck)                                                 # written collectively at step 6 by both ranks
    fct.test_eq((c['counters']['global_step'], c['counters']['world'], len(c['rng'])), (6, 2, 2))
    assert not torch.equal(c['rng'][0]['torch'], c['rng'][1]['torch'])     # each rank has its own RNG stream
    for k, v in b['models'].items(): fct.test_eq(c['models'][k.split('.')[0]]['.'.join(k.split('.')[1:])], v)


def test_conditional_gan_on_synthfaces_learns_identities():
    "Reduced scale of the notebook's SynthFaces cGAN: a classifier trained on real faces recognises the samples' identities."
    import torch.nn as nn, torch.nn.functional as F
    from functools import partial
    from faceanon.data.synthetic import SynthFaces
    from faceanon.learner import Learner, Phase, EMACB
    torch.manual_seed(0)
    s = SynthFaces(6, 40, 16, 'train').stacked(); X, Y = s['image'], s['identity']
    clf = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 6))
    opt = torch.optim.Adam(clf.parameters(), 3e-3)
    for _ in range(300):
        i = torch.randint(len(X), (64,)); loss = F.cross_entropy(clf(X[i]), Y[i]); opt.zero_grad(); loss.backward(); opt.step()
    clf.eval()
    class G_(nn.Module):
        def __init__(self, nz=16):
            super().__init__(); self.nz, self.emb = nz, nn.Embedding(6, nz)
            self.net = nn.Sequential(nn.Linear(2 * nz, 64 * 16), nn.Unflatten(1, (64, 4, 4)), nn.Upsample(scale_factor=2), nn.Conv2d(64, 32, 3, 1, 1), nn.LeakyReLU(0.2),
                                     nn.Upsample(scale_factor=2), nn.Conv2d(32, 3, 3, 1, 1), nn.Tanh())
        def forward(self, z, y): return self.net(torch.cat([z, self.emb(y)], 1))
    class D_(nn.Module):
        def __init__(self):
            super().__init__(); self.net = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64 * 16, 64), nn.LeakyReLU(0.2))
            self.out, self.emb = nn.Linear(64, 1), nn.Embedding(6, 64)
        def forward(self, x, y): h = self.net(x); return self.out(h).squeeze(1) + (self.emb(y) * h).sum(1)
    class Data(torch.utils.data.Dataset):
        n_classes = 6
        def __len__(self): return len(Y)
        def __getitem__(self, i): return dict(image=X[i], identity=Y[i])
    def d_loss(l):
        x, y = l.batch['image'], l.batch['identity']
        return F.softplus(-l.D(x, y)).mean() + F.softplus(l.D(l.G(torch.randn(len(y), l.G.nz), y), y)).mean()
    def g_loss(l):
        y = l.batch['identity']; return F.softplus(-l.D(l.G(torch.randn(len(y), l.G.nz), y), y)).mean()
    adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    learn = Learner(dict(G=G_(), D=D_()), [Phase('D', 'D', adam, d_loss), Phase('G', 'G', adam, g_loss)], Data(), bs=32, cbs=[EMACB('G', beta=0.99)], device='cpu', seed=0)
    y = torch.arange(6).repeat(10); z = torch.randn(len(y), 16, generator=torch.Generator().manual_seed(1))
    acc = lambda: (clf(learn.G_ema(z, y)).argmax(1) == y).float().mean().item()
    with torch.no_grad(): a0 = acc()
    learn.fit(max_steps=250)
    with torch.no_grad(): a1 = acc()
    assert a1 > a0 + 0.3 and a1 > 0.5, (a0, a1)                       # chance: 1/6
