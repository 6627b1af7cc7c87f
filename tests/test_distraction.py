"Attention distraction: Tables 1-4 shapes, geometry maps, delegate choice, the identity loss, the recast Z_id, training steps, the model file, the method, CLI."
import argparse, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import fastcore.test as fct
from faceanon.methods import distraction as D
from faceanon.methods.base import FaceBatch, get_method, landmarks68_to_5
from faceanon.losses import distraction_identity_loss
from faceanon.data.synthetic import SynthFaces

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
TINY = D.DistractionConfig(size=32, widths=(8, 16, 32, 64), n_bottleneck=1, n_ids=6)


@pytest.fixture(scope='module')
def faces():
    return SynthFaces(n_ids=4, per_id=2, size=64, split='test', seed=0).stacked()


@pytest.mark.parametrize('size,widths,n_mid,n_style', [(256, (64, 128, 256, 512), 4, 13056), (64, (16, 32, 64, 128), 2, 2240)])
def test_generator_adain_count_and_shapes(size, widths, n_mid, n_style):
    cfg = D.DistractionConfig(size=size, widths=widths, n_bottleneck=n_mid)
    G = D.DistractionGenerator(cfg)
    fct.test_eq(G.fc.out_features, n_style)                                 # Table 2's O_0 = 13,056 at the paper's scale
    fct.test_eq(G.fc.out_features, 2 * (n_mid * 2 * widths[-1] + sum(a + b for a, b in zip((widths[-1],) + widths[::-1][:-1], widths[::-1])) + widths[0]))
    if size == 64:
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        y = G(F.normalize(torch.randn(2, 512), dim=1), G.E(x), x)
        fct.test_eq(y.shape, (2, 3, 64, 64)); assert y.abs().max() <= 1
        fct.test_eq(D.DistractionCritic(cfg)(y, x).shape, (2, 1))


def test_generator_uses_identity_appearance_and_geometry():
    torch.manual_seed(0)
    G = D.DistractionGenerator(TINY).eval()
    x, z = torch.rand(1, 3, 32, 32) * 2 - 1, F.normalize(torch.randn(2, 512), dim=1)
    with torch.no_grad():
        base = G(z[:1], G.E(x), x)
        for other in (G(z[1:], G.E(x), x), G(z[:1], G.E(-x), x), G(z[:1], G.E(x), x.flip(-1))):
            assert (other - base).abs().mean() > 1e-4                       # each of Z_id, f_a and Z_g reaches the output


def test_geometry_maps_agree_with_parsing(faces):
    drawn = D.landmark_labels(faces['landmarks'], 64)
    parts = torch.where(faces['parsing'] <= 6, faces['parsing'], torch.zeros_like(faces['parsing']))
    inter = ((drawn > 0) & (parts > 0)).sum((1, 2)).float(); union = ((drawn > 0) | (parts > 0)).sum((1, 2)).float()
    assert (inter / union).min() > 0.75, inter / union
    g = D.geometry_map(parts)
    fct.test_eq(g.shape, (8, 3, 64, 64)); assert g.min() >= -1 and g.max() <= 1
    fct.test_eq(D.geometry_map(torch.full((1, 4, 4), 7)), torch.zeros(1, 3, 4, 4) - 1)   # hair is no geometry


def test_delegates_keep_five_points_and_eps_moves_away(faces):
    pool = SynthFaces(n_ids=20, per_id=2, size=64, split='train', seed=0).stacked()['landmarks']
    face = faces['landmarks'][0]
    al = D.align_delegates(pool, face)
    fct.test_close(D.align_delegates(face[None], face)[0], face, eps=1e-3)   # the face itself fits exactly
    d = D.geometry_distance(al, face)
    g = torch.Generator().manual_seed(1)
    means = [torch.stack([d[D.pick_delegate(d, eps, g)] for _ in range(400)]).mean() for eps in (0.0, 20.0)]
    assert means[1] > means[0] + 0.02, means
    fct.test_eq(D.pick_delegate(d, 1e4, g), int(d.argmax()))
    idx, fitted = D.choose_delegates(pool, faces['landmarks'][:3], 6.0, torch.Generator().manual_seed(0))
    fct.test_eq(idx, D.choose_delegates(pool, faces['landmarks'][:3], 6.0, torch.Generator().manual_seed(0))[0])
    fct.test_eq(fitted.shape, (3, 68, 2))


def test_distraction_identity_loss_values_and_gradient():
    f, fh = torch.tensor([[1., 0.]]), torch.tensor([[0., 1.]])
    fct.test_close(distraction_identity_loss(fh, fh, f), 0.)
    e = torch.tensor([[1., 0.2]], requires_grad=True)
    distraction_identity_loss(e, fh, f).backward()
    assert e.grad[0, 1] < 0 < e.grad[0, 0]                                  # descent moves e toward f_hat, away from f


def test_recast_identity_is_unit_orthogonal_to_f_and_recentred():
    torch.manual_seed(0)
    f = F.normalize(torch.randn(64, 512), dim=1)
    common = F.normalize(torch.randn(1, 512), dim=1)
    f_hat = F.normalize(0.6 * f + 0.8 * common + 0.1 * torch.randn(64, 512), dim=1)     # as the distraction makes them: near f, sharing one direction
    means = torch.stack([f.mean(0), f_hat.mean(0)])
    z = D.recast_identity(f, f_hat, means)
    fct.test_close(z.norm(dim=1), torch.ones(64), eps=1e-5)
    fct.test_close((z * f).sum(1), torch.zeros(64), eps=1e-5)                 # nothing of the face's own feature is left
    assert (z @ common.T).abs().mean() < 0.5 * (f_hat @ common.T).mean(), ((z @ common.T).abs().mean(), (f_hat @ common.T).mean())
    assert z.mean(0).norm() < 0.5 * f_hat.mean(0).norm()                       # the shared direction is gone: codes spread like real ones
    fct.test_close(D.recast_identity(f, f_hat, means), z)                      # deterministic


def test_int8_facenet_round_trip_and_model_file(tmp_path, faces):
    torch.manual_seed(0)
    Fn = D.facenet_for(TINY).eval()
    Fq = D.facenet_for(TINY); Fq.load_state_dict(D._unpack_facenet(D._pack_facenet(Fn))); Fq.eval()
    x = faces['image']
    cos = F.cosine_similarity(Fn.features(x), Fq.features(x))
    assert cos.min() > 0.99, cos
    G = D.DistractionGenerator(TINY)
    means = torch.randn(2, 512)
    with pytest.raises(ValueError, match='needs its code_means'): D.save_distraction(G, Fn, faces['landmarks'], torch.randn(8, TINY.widths[-1]), tmp_path / 'x.safetensors')
    assert not (tmp_path / 'x.safetensors').exists()
    p = D.save_distraction(G, Fn, faces['landmarks'], torch.randn(8, TINY.widths[-1]), tmp_path / 'm.safetensors', dict(steps=3), code_means=means)
    m = D.load_distraction(p)
    fct.test_eq(m['cfg'], TINY); fct.test_eq(m['info']['steps'], 3); fct.test_eq(m['pool_landmarks'].shape, (8, 68, 2))
    fct.test_eq(m['code_means'], means)
    G0 = D.DistractionGenerator(D.DistractionConfig(**{**TINY.__dict__, 'recast': False}))          # a model without recast codes needs no means
    m0 = D.load_distraction(D.save_distraction(G0, Fn, faces['landmarks'], torch.randn(8, TINY.widths[-1]), tmp_path / 'm0.safetensors'))
    assert m0['code_means'] is None and not m0['cfg'].recast
    from faceanon.learner import load_checkpoint, save_checkpoint
    old = load_checkpoint(p); old['config'] = {**old['config'], 'margin': 0.3}; del old['code_means']        # a file from before recast
    m1 = D.load_distraction(save_checkpoint(old, tmp_path / 'old.safetensors'))
    assert m1['code_means'] is None and not m1['cfg'].recast
    old['config']['nope'] = 1
    with pytest.raises(ValueError, match="unknown config fields \\['nope'\\]"): D.load_distraction(save_checkpoint(old, tmp_path / 'bad.safetensors'))
    for k, v in G.state_dict().items(): fct.test_close(m['G'].state_dict()[k], v.half().float(), eps=1e-6)
    with pytest.raises(ValueError, match='not an attention-distraction model file'):
        D.load_distraction(ROOT / 'faceanon' / 'weights' / 'password_synth64.safetensors')


def test_training_steps_lower_reconstruction_and_resume(tmp_path):
    torch.manual_seed(0)
    Fn = D.facenet_for(TINY).eval().requires_grad_(False)                 # an untrained FaceNet is enough to test the loop
    learn, ds = D.train_distraction(TINY, Fn, tmp_path, steps=40, bs=4, progress=False, sample_every=1000, log_every=10, per_id=3)
    h = next(cb for cb in learn.cbs if isinstance(cb, D.MetricsCB)).history
    assert h[-1]['G/rec'] < h[0]['G/rec'], h
    assert (tmp_path / 'checkpoint.safetensors').exists() and 'G_ema' in learn.models
    learn2, _ = D.train_distraction(TINY, Fn, tmp_path, steps=44, bs=4, progress=False, resume=True, per_id=3)
    fct.test_eq(learn2.global_step, 44)
    out = D.export_distraction(learn2, ds, tmp_path / 'm.safetensors')
    m = D.load_distraction(out)
    fct.test_eq(m['info']['steps'], 44); fct.test_eq(m['code_means'], torch.stack([ds.f.mean(0), ds.f_hat.mean(0)]))


def test_committed_method_is_seeded_composited_and_refuses_bad_input(faces):
    m = get_method('distraction')
    fb = FaceBatch(faces['image'][:4], (torch.rand(4, 1, 64, 64) > 0.3).float(), faces['landmarks'][:4].float(), parsing=faces['parsing'][:4])
    a = m(fb, seed=3)
    fct.test_eq(a, m(fb, seed=3))
    assert (a - m(fb, seed=4)).abs().mean() > 1e-3
    fct.test_eq(a[fb.masks.expand_as(a) == 0], fb.images[fb.masks.expand_as(a) == 0])
    big = FaceBatch(F.interpolate(fb.images, size=128), torch.ones(4, 1, 128, 128), fb.landmarks * 2)
    fct.test_eq(m(big, seed=0).shape, (4, 3, 128, 128))                     # any crop size: resized to the model's and back
    with pytest.raises(ValueError, match='must have shape'): m(FaceBatch(torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64)))   # grey crop
    with pytest.raises(ValueError, match='must be square'): m(FaceBatch(torch.zeros(1, 3, 64, 48), torch.ones(1, 1, 64, 48)))
    f, f_hat = D.identity_features(m.F, fb.images, 1.0, m.cfg.cam_layer)
    fct.test_eq(m.identity_code(f, f_hat, 0.0), f)                          # strength 0: no intrinsic distraction, Z_id = f
    fct.test_close((m.identity_code(f, f_hat) * f).sum(1), torch.zeros(4), eps=1e-5)   # the committed model recasts f_hat: nothing of f left
    whole = get_method('distraction', own_outline=False)(fb, seed=3)
    assert (whole - a).abs().mean() > 1e-3                                  # own_outline reaches the output (same delegates, other geometry)
    with pytest.raises(FileNotFoundError, match='faceanon train distraction'): get_method('distraction', weights='/nope.safetensors')
    with pytest.raises(ValueError, match='eps must be'): get_method('distraction', eps=-1)


def test_cli_anonymize_with_knobs_and_train_refuses_bad_options(tmp_path):
    from PIL import Image
    from faceanon.data.photos import astronaut
    Image.fromarray(astronaut()).save(tmp_path / 'a.png')
    r = subprocess.run([sys.executable, '-m', 'faceanon.cli', 'anonymize', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'), '--method', 'distraction',
                        '--seed', '1', '--strength', '0.5', '--eps', '3', '--no-progress'], capture_output=True, text=True, cwd=ROOT)
    fct.test_eq(r.returncode, 0); assert (tmp_path / 'out' / 'a.png').exists(), r.stderr
    r = subprocess.run([sys.executable, '-m', 'faceanon.cli', 'train', 'distraction', '-o', str(tmp_path / 'run'), '--nope'], capture_output=True, text=True, cwd=ROOT)
    fct.test_eq(r.returncode, 2); assert 'unrecognized arguments: --nope' in r.stderr and not (tmp_path / 'run').exists()
