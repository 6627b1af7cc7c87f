"CIAGAN: shapes against the supplement's tables, data, training (resume, falling loss), CelebA layout, the committed model, CLI."
import argparse
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import fastcore.test as fct
from faceanon.methods import ciagan as C
from faceanon.methods.base import FaceBatch, get_method
from faceanon.identity import DlibRecognizer

torch.set_num_threads(2)
TINY = C.CiaganConfig(size=32, n_ids=6, ch=4, d_ch=4)

def n_params(m): return sum(p.numel() for p in m.parameters())

@pytest.fixture(scope='module')
def tiny_pairs():
    a = C.synth_arrays(6, 4, 32)
    return C.CiaganPairs(a['images'], a['landmarks'], a['ids'], TINY)

@pytest.fixture(scope='module')
def test_faces():
    from faceanon.data.synthetic import SynthFaces
    ds = SynthFaces(n_ids=4, per_id=2, size=64, split='test', seed=0)
    return (torch.stack([ds[k]['image'] for k in range(len(ds))]),
            torch.stack([torch.as_tensor(ds[k]['landmarks']) for k in range(len(ds))]).float())

def test_summary_equals_tables_at_128():
    s = C.summary(C.CiaganConfig(d_landmarks=False), show=False)
    fct.test_eq([len(s[k]) for k in ('generator', 'critic', 'embedding')], [18, 8, 7])
    for rows in s.values():
        for name, paper, ours in rows: fct.test_eq(tuple(ours), tuple(paper))
    crit = C.summary(C.CiaganConfig(), show=False)['critic']          # the official 6-channel critic differs in its input only
    fct.test_eq([r[2] for r in crit[1:]], [r[1] for r in crit[1:]]); fct.test_eq(crit[0][2], (6, 128, 128))

def test_parameters_match_official_generator():
    G = C.CiaganGenerator(C.CiaganConfig(sn=True, padding_mode='reflect'))
    fct.test_eq(n_params(G), 11_801_123 - 512)                           # official count minus the IN after its embed conv
    fct.test_close(C.generator_gflop(C.CiaganConfig()), 3.3, eps=0.2)

@pytest.mark.parametrize('size', [8, 16, 32, 64])
def test_sizes(size):
    cfg = C.CiaganConfig(size=size, n_ids=5, ch=4, d_ch=4)
    fct.test_eq(C.CiaganGenerator(cfg)(torch.randn(2, 6, size, size), torch.tensor([0, 4])).shape, (2, 3, size, size))
    fct.test_eq(C.build_critic(cfg)(torch.randn(2, 6, size, size)).shape, (2, 1))
    fct.test_eq(C.build_siamese(cfg)(torch.randn(2, 3, size, size)).shape, (2, 128))

def test_bad_size_and_ids():
    fct.test_fail(lambda: C.CiaganConfig(size=96), contains='4 * 2**k')
    emb = C.IdEmbedding(10).eval()
    ids = torch.tensor([0, 9, 3])
    fct.test_close(emb(ids), emb(F.one_hot(ids, 10).float()), eps=1e-5)

def test_landmark_image_and_mask(test_faces):
    _, lm = test_faces
    img, m = C.landmark_image(lm, 64), C.face_mask(lm, 64)
    fct.test_eq(set(m.unique().tolist()), {0., 1.})
    assert (img[:, 2] == 1).all() and img.min() < -0.1
    fl = lm.clone(); fl[..., 0] = 63 - fl[..., 0]
    assert (C.face_mask(fl, 64) != m.flip(-1)).float().mean() < 0.01
    assert (C.landmark_ink(fl, 64) - C.landmark_ink(lm, 64).flip(-1)).abs().mean() < 0.02
    fct.test_close((C.face_mask(lm[:1] * 2, 128).mean() / m[:1].mean()).item(), 1.0, eps=0.1)   # same region at twice the size

def test_pairs_fixed_and_balanced(tiny_pairs):
    fct.test_eq([tiny_pairs.pair(p) for p in range(24)], [tiny_pairs.pair(p) for p in range(24)])
    big = C.CiaganPairs(tiny_pairs.images.permute(0, 2, 3, 1).numpy(), np.zeros((24, 68, 2)) + 16, tiny_pairs.ids.numpy(), TINY, n_pairs=400)
    share = np.mean([big.pair(p)[1] == int(big.ids[big.pair(p)[0]]) for p in range(400)])
    assert 0.4 < share < 0.6, share
    assert all(tiny_pairs[p]['same'] == (tiny_pairs.pair(p)[1] == int(tiny_pairs.ids[p % 24])) for p in range(24))

def test_exact_resume_and_file_roundtrip(tiny_pairs, tmp_path):
    a = C.train_ciagan(TINY, tmp_path / 'a', tiny_pairs, steps=4, bs=8, device='cpu', progress=False)
    C.train_ciagan(TINY, tmp_path / 'b', tiny_pairs, steps=2, bs=8, device='cpu', progress=False)
    b = C.train_ciagan(TINY, tmp_path / 'b', tiny_pairs, steps=4, bs=8, device='cpu', progress=False, resume=True)
    for v, w in zip(a.G.state_dict().values(), b.G.state_dict().values()): fct.test_eq(v, w)
    G, info = C.load_generator(tmp_path / 'a' / 'generator.safetensors')
    x, ids = torch.randn(2, 6, 32, 32), torch.tensor([1, 2])
    fct.test_close(G(x, ids), a.G.eval()(x, ids), eps=1e-5)
    fct.test_eq(info['steps'], 4)
    fct.test_fail(lambda: C.load_generator(tmp_path / 'a' / 'checkpoint.safetensors'), contains='not a CIAGAN generator file')

def test_siamese_loss_falls(tiny_pairs):
    cfg = replace(TINY, every_d=10_000, every_g=10_000, lr=1e-3)         # only the siamese phase after the first batch
    from faceanon.learner import MetricsCB
    mets = MetricsCB(every=1)
    C.ciagan_learner(cfg, C.CiaganPairs(tiny_pairs.images.permute(0, 2, 3, 1).numpy(), np.zeros((24, 68, 2)) + 16, tiny_pairs.ids.numpy(), cfg, n_pairs=240),
                     bs=8, cbs=[mets], device='cpu').fit(max_steps=30)
    s = [r['S/loss'] for r in mets.history]
    assert np.mean(s[-5:]) < 0.7 * np.mean(s[:5]), s

def test_celeba_layout_loads_and_trains(tmp_path):
    root = C.write_celeba_fixture(tmp_path / 'celeba', n_ids=2, per_id=30)
    lines = (root / 'list_landmarks_align_celeba.txt').read_text().splitlines()
    fct.test_eq((lines[0], lines[1].split()[0], len(lines[2].split())), ('60', 'lefteye_x', 11))
    fct.test_eq((root / 'identity_CelebA.txt').read_text().splitlines()[30], '000031.jpg 2')
    learn = C.train_ciagan(C.CiaganConfig(size=32, n_ids=2, ch=4, d_ch=4), tmp_path / 'run', f'celeba:{root}', steps=1, bs=4, device='cpu', progress=False)
    fct.test_eq((len(learn.data), list(learn.data.labels)), (60, [1, 2]))
    fct.test_fail(lambda: C.read_celeba_lists(tmp_path), contains='img_align_celeba')

def test_committed_method_seeded_and_diverse(test_faces):
    imgs, lm = test_faces
    batch = FaceBatch(imgs, C.face_mask(lm, 64), landmarks=lm)
    m = get_method('ciagan')
    a, b, c = m(batch, seed=0), m(batch, seed=0), m(batch, seed=1)
    fct.test_eq(a, b)
    assert (a - c).abs().mean() > 1e-6      # the committed 725-step model barely uses the control yet (measured ~1e-5): see the notebook
    out = C.face_mask(lm, 64).expand_as(imgs) == 0
    fct.test_eq(a[out], imgs[out])
    fixed = get_method('ciagan', target_id=7)
    fct.test_eq(fixed(batch, seed=0), fixed(batch, seed=5))
    five = FaceBatch(imgs[:2], batch.masks[:2], landmarks5=batch.landmarks5[:2])   # no 68 points: dlib predicts them
    fct.test_eq(m(five, seed=0).shape, (2, 3, 64, 64))

def test_reid_drops_at_reduced_scale():
    from faceanon.evalsets import synth_eval_set
    from faceanon.evaluate import anonymize_all
    from faceanon.measures import embed_all, reid_rate, identity_distance
    e = synth_eval_set(n_ids=16, per_id=3, n_gallery=1, size=64, n_clips=0)
    rec = DlibRecognizer()                                            # the same judge on every machine (the cached FaceNet may be absent)
    gal, src = embed_all(rec, e.gallery), embed_all(rec, e.probes.images)
    def judged(name, **kw):
        em = embed_all(rec, anonymize_all(get_method(name, **kw), e.probes, seed=0))
        return reid_rate(em, e.probe_ids, gal, e.gallery_ids, rec.distance), identity_distance(em, src, rec.distance)
    (r0, _), (r9, d9), (rc, dc) = judged('identity'), judged('blur9'), judged('ciagan', realign=False)
    assert rc <= r0 / 2 and dc > d9, (r0, r9, rc, d9, dc)            # measured with dlib at 64 px: 0.31 -> 0.125 (blur 9: 0.16); distance 0.45 vs 0.40

def test_bench_rows():
    rows = C.bench_ciagan(size=16, n_ids=10, batch_sizes=(1,), repeats=1, train_bs=2, train_steps=1, precisions=('fp32', 'bf16'))
    fct.test_eq([(r['impl'], r['task']) for r in rows][-2:], [('official-style fp32', 'train step S+D+G'), ('ours bf16, fakes reused', 'train step S+D+G')])
    assert all(r.get('ms_per_image', 1) > 0 and r.get('s_per_step', 1) > 0 for r in rows)

def test_cli_train_main(tmp_path):
    p = argparse.ArgumentParser(); C.add_train_args(p)
    argv = ['--size', '32', '--n-ids', '4', '--ch', '4', '--d-ch', '4', '--steps', '1', '--bs', '4', '--precision', 'fp32', '--no-progress', '-o', str(tmp_path)]
    fct.test_eq(C.train_main(p.parse_args(argv)), 0)
    assert (tmp_path / 'generator.safetensors').exists() and (tmp_path / 'checkpoint.safetensors').exists()
    fct.test_eq(C.train_main(p.parse_args(argv + ['--data', 'nope'])), 2)
