"Decoupled anonymization: the face region, the proxy task, HarmonizationNet and its temporal encoder, the stages, the model file, the method, CLI."
import subprocess, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import fastcore.test as fct
from faceanon.methods import decoupled as D
from faceanon.methods import decoupled_nets as N
from faceanon.methods.ciagan import CiaganGenerator, load_generator, default_weights as ciagan_weights, summary
from faceanon.methods.distraction import face_parts
from faceanon.methods.base import FaceBatch, get_method
from faceanon.evalsets import synth_eval_set
from faceanon.measures import flicker, seam_score
from faceanon.data.synthetic import SynthFaces

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
TINY = N.DecoupledConfig(size=32, n_ids=4, h_widths=(8, 16, 32), h_mid=1, h_d_ch=4, a_ch=4, a_d_ch=4)


@pytest.fixture(scope='module')
def faces():
    return SynthFaces(n_ids=4, per_id=2, size=64, split='test', seed=0).stacked()


@pytest.fixture(scope='module')
def eset():
    return synth_eval_set(n_ids=4, per_id=2, n_gallery=1, n_clips=2, n_frames=5)


def test_anonymization_net_is_ciagan_table2_on_a_parsing_map(faces):
    rows = summary(N.CiaganConfig(size=128, n_ids=1200, d_landmarks=False), show=False)['generator']
    assert all(tuple(p) == tuple(o) for _, p, o in rows)
    cfg = N.DecoupledConfig()
    A, (G, _) = D.anonymization_net(cfg), load_generator(ciagan_weights())
    fct.test_eq(A.out.weight.detach(), G.out.weight.detach())                                 # starts from the committed CIAGAN generator
    fct.test_eq(sum(p.numel() for p in D.anonymization_net(cfg, None).parameters()), sum(p.numel() for p in A.parameters()))
    with pytest.raises(ValueError, match="init must be"): D.anonymization_net(cfg, 'imagenet')
    pairs = D.ParsingPairs(faces['image'], faces['parsing'], faces['identity'], cfg)
    it = pairs[3]
    region = N.face_region(face_parts(faces['parsing'][3:4]), cfg.grow)[0]
    fct.test_eq(it['mask'], region.flip(-1) if pairs.pair(3)[3] else region)
    assert it['lmk'][:, it['mask'][0] == 0].eq(1).all()                      # white paper outside the region A repaints
    ink = it['lmk'][0] < 0                                                    # CIAGAN's blue lines: the parts' outlines
    fct.test_eq(ink.float(), N.part_lines(faces['parsing'][3:4])[0, 0].flip(-1) if pairs.pair(3)[3] else N.part_lines(faces['parsing'][3:4])[0, 0])
    with pytest.raises(ValueError, match='identities in the data'): D.ParsingPairs(faces['image'], faces['parsing'], torch.arange(8), replace(cfg, n_ids=4))


def test_face_region_grows_per_face_and_feather_stays_inside(faces):
    parts = face_parts(faces['parsing'])
    m0, m3 = N.face_region(parts), N.face_region(parts, 3)
    assert (m3 >= m0).all() and (m3.sum((1, 2, 3)) > m0.sum((1, 2, 3))).all()
    per = N.face_region(parts, torch.tensor([0, 3] * 4))
    fct.test_eq(per[::2], m0[::2]); fct.test_eq(per[1::2], m3[1::2])
    fm = N.feather(m3, 2)
    fct.test_eq(fm[m3 == 0].max(), 0.); assert fm.max() == 1 and fm[m3 == 1].min() < 1


def test_hue_rotation_and_proxy_degradation(faces):
    x = faces['image'][:3]
    fct.test_close(N.hue_rotate(x, torch.zeros(3)), x, eps=1e-5)
    fct.test_close(N.hue_rotate(N.hue_rotate(x, torch.full((3,), 0.2)), torch.full((3,), -0.2)), x, eps=1e-4)
    luma = lambda im: torch.einsum('j,bjhw->bhw', N._YIQ[0], im)
    fct.test_close(luma(N.hue_rotate(x, torch.tensor([0.1, 0.3, 0.5]))), luma(x), eps=1e-5)
    assert (N.hue_rotate(x, torch.full((3,), 0.25)) - x).abs().mean() > 0.02
    cfg = N.DecoupledConfig()
    p = N.sample_degradation(3, cfg, torch.Generator().manual_seed(0))
    m = N.face_region(face_parts(faces['parsing'][:3]), 2)
    xin = N.proxy_input(x, m, p)
    fct.test_eq(xin, N.proxy_input(x, m, p))                                 # parameters fix everything, noise included
    out = m.expand_as(x) == 0
    fct.test_eq(xin[out], x[out]); assert (xin - x)[~out].abs().mean() > 0.02
    j = N.jitter_degradation(p, generator=torch.Generator().manual_seed(1))
    assert (j['hue'] - p['hue']).abs().max() <= 0.02 and torch.equal(j['zoom'], p['zoom'])


@pytest.mark.parametrize('size', [64, 128])
def test_harmonization_net_shapes_temporal_start_and_band(size):
    cfg = N.DecoupledConfig(size=size)
    torch.manual_seed(0)
    H = N.HarmonizationNet(cfg).eval()
    x0 = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad(): fct.test_eq(H(x0, torch.ones(2, 1, size, size)), x0)   # untrained, H's colour transform is the identity
    x = torch.rand(2, 3, size, size) * 2 - 1
    m = torch.zeros(2, 1, size, size); m[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    Ht = N.HarmonizationNet(replace(cfg, temporal=True)).eval()
    for p in H.parameters(): p.data.add_(torch.randn_like(p) * 0.05)           # away from the identity start
    Ht.load_state_dict(H.state_dict(), strict=False)
    with torch.no_grad():
        fct.test_eq(H(x, m).shape, (2, 3, size, size))
        fct.test_close(Ht(x, m, prev=torch.rand_like(x)), H(x, m), eps=1e-6)     # the fine-tune starts at the image model
        out = N.blend(H, x, m)
    band = F.max_pool2d(m, 2 * cfg.band + 1, 1, cfg.band).expand_as(x)
    fct.test_eq(out[band == 0], x[band == 0])
    fct.test_eq(N.harmonization_critic(cfg, 7)(torch.cat([x, x, m], 1)).shape, (2, 1))


def test_stages_train_resume_and_write_one_model_file(tmp_path):
    a = D.train_decoupled(tmp_path, steps=3, harm_steps=50, temporal_steps=3, bs=4, init=None, real=False, cfg=TINY, progress=False, ckpt_every=1000)
    A, H, info = D.load_decoupled(a)
    assert hasattr(H, 'enc_prev') and H.cfg.temporal and info['stage'] == 'temporal' and info['harm_steps'] == 50
    fct.test_eq(load_generator(tmp_path / 'anon.safetensors')[1]['steps'], 3)
    fct.test_eq(A.cfg.size, 32)
    h = D.load_checkpoint(tmp_path / 'harm' / 'checkpoint.safetensors')['callbacks']['MetricsCB']['history']
    assert h[-1]['H/l1'] < h[0]['H/l1'], h                                   # the proxy task is learned
    b = D.train_decoupled(tmp_path, stages=['temporal'], temporal_steps=5, cfg=TINY, progress=False, resume=True, ckpt_every=1000)
    fct.test_eq(D.load_decoupled(b)[2]['steps'], 5)                          # resumed from step 3, the earlier stages' files reused
    c = D.train_decoupled(tmp_path / 'a_only', stages=['anon'], steps=2, bs=4, init=None, cfg=TINY, h_from=b, progress=False, ckpt_every=1000)
    A2, H2, info2 = D.load_decoupled(c)                                        # A retrained alone, H taken from the file
    Hb, A2f = D.load_decoupled(b)[1].state_dict(), load_generator(tmp_path / 'a_only' / 'anon.safetensors')[0].state_dict()
    fct.test_eq(set(H2.state_dict()), set(Hb)); assert hasattr(H2, 'enc_prev') and all(torch.equal(v, Hb[k]) for k, v in H2.state_dict().items())
    assert all(torch.allclose(v, A2f[k], atol=1e-3) for k, v in A2.state_dict().items())             # A is this run's (float16 in the file)
    fct.test_eq((info2['a_steps'], info2['steps'], info2['stages']), (2, 5, ['anon'])); assert info2['h_from'].startswith(b.name + ' (sha256 ')
    with pytest.raises(ValueError, match='replaces'): D.train_decoupled(tmp_path / 'x', stages=['anon', 'harm'], cfg=TINY, h_from=b)
    with pytest.raises(FileNotFoundError, match='no such decoupled model'): D.train_decoupled(tmp_path / 'x', stages=['anon'], cfg=TINY, h_from=tmp_path / 'nope.safetensors')
    with pytest.raises(ValueError, match='H works at 32 px'): D.train_decoupled(tmp_path / 'x', stages=['anon'], cfg=replace(TINY, size=64), h_from=b)
    assert not (tmp_path / 'x').exists()                                       # refused before anything is trained or written
    with pytest.raises(FileNotFoundError, match='anon.safetensors is missing'): D.train_decoupled(tmp_path / 'empty', stages=['harm'], cfg=TINY)
    with pytest.raises(ValueError, match='not a decoupled'): D.load_decoupled(tmp_path / 'anon.safetensors')


def test_committed_method_seeded_composited_any_size_and_refuses_bad_input(eset):
    m = get_method('decoupled')
    fb = eset.probes
    a = m(fb, seed=3)
    fct.test_eq(a, m(fb, seed=3)); assert (a - m(fb, seed=4)).abs().mean() > 1e-3
    fct.test_eq(a[fb.masks.expand_as(a) == 0], fb.images[fb.masks.expand_as(a) == 0])
    fct.test_eq(get_method('decoupled', target_id=5)(fb, seed=1), get_method('decoupled', target_id=5)(fb, seed=2))   # the target fixes the identity
    big = FaceBatch(F.interpolate(fb.images, size=128), torch.ones(len(fb), 1, 128, 128), fb.landmarks * 2)
    fct.test_eq(m(big, seed=0).shape, (len(fb), 3, 128, 128))               # any crop size: warped to the model's and back
    with pytest.raises(ValueError, match='needs landmarks'): m(FaceBatch(fb.images[:1], fb.masks[:1]))
    with pytest.raises(ValueError, match='target_id must be'): get_method('decoupled', target_id=-1)
    with pytest.raises(FileNotFoundError, match='faceanon train decoupled'): get_method('decoupled', weights='/nope.safetensors')
    with pytest.raises(ValueError, match='must be square'): m(FaceBatch(torch.zeros(1, 3, 64, 48), torch.ones(1, 1, 64, 48)))


def test_clip_keeps_one_identity_and_the_temporal_module_steadies_it(eset):
    m, m0 = get_method('decoupled'), get_method('decoupled', temporal=False)
    fb, boxes = eset.clips[0]
    c1, c0 = m.clip(fb, seed=0), m0.clip(fb, seed=0)
    fct.test_eq(c1.shape, fb.images.shape); fct.test_close(c1[0], c0[0], eps=1e-4)      # frame 0 sees an empty previous output either way
    fct.test_eq(c1, m.clip(fb, seed=0))
    assert (c1[1:] - c0[1:]).abs().mean() > 0                                # later frames see the previous output
    assert flicker(c1, boxes) < flicker(get_method('decoupled', carry=0.0).clip(fb, seed=0), boxes)    # carrying the previous output steadies the clip
    with pytest.raises(ValueError, match='carry must be'): get_method('decoupled', carry=1.0)
    one = get_method('decoupled', harmonize=False).clip(fb, seed=0)
    fct.test_close(one, get_method('decoupled', harmonize=False, target_id=int(m.targets(1, torch.Generator().manual_seed(0))[0])).clip(fb, seed=5), eps=1e-4)   # one identity per clip


def test_harmonization_pulls_a_recoloured_face_back_to_its_surroundings(faces):
    m = get_method('decoupled')
    x, parts = faces['image'], face_parts(faces['parsing'])
    reg = N.face_region(parts, 2)
    shifted = torch.lerp(x, N.hue_rotate(x, torch.full((len(x),), 0.15)) * 0.8, reg)      # a face in the wrong colour and light
    with torch.no_grad(): fixed = N.blend(m.H, shifted, reg)
    before, after = seam_score(shifted, x, reg, 3), seam_score(fixed, x, reg, 3)
    assert after['colour_excess'].mean() < 0.85 * before['colour_excess'].mean(), (before, after)
    assert (fixed - x).abs().mean() < (shifted - x).abs().mean()


def test_cli_anonymize_and_train_refuse_bad_options(tmp_path):
    from PIL import Image
    from faceanon.data.photos import astronaut
    Image.fromarray(astronaut()).save(tmp_path / 'a.png')
    r = subprocess.run([sys.executable, '-m', 'faceanon.cli', 'anonymize', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'), '--method', 'decoupled',
                        '--seed', '1', '--target-id', '3', '--no-progress'], capture_output=True, text=True, cwd=ROOT)
    fct.test_eq(r.returncode, 0); assert (tmp_path / 'out' / 'a.png').exists(), r.stderr
    out = np.asarray(Image.open(tmp_path / 'out' / 'a.png'))
    assert (out != astronaut()).any()
    for method, msg in (('decoupled', 'carry must be in'), ('blur9', 'takes none of --carry')):
        r = subprocess.run([sys.executable, '-m', 'faceanon.cli', 'anonymize', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'bad'), '--method', method,
                            '--carry', '1.5', '--no-progress'], capture_output=True, text=True, cwd=ROOT)
        fct.test_eq(r.returncode, 2); assert msg in r.stderr, r.stderr
    assert not (tmp_path / 'bad').exists() or not any((tmp_path / 'bad').iterdir())
    r = subprocess.run([sys.executable, '-m', 'faceanon.cli', 'train', 'decoupled', '-o', str(tmp_path / 'run'), '--stages', 'harm,anon'], capture_output=True, text=True, cwd=ROOT)
    fct.test_eq(r.returncode, 2); assert 'run in the order' in r.stderr


def test_bench_rows():
    rows = D.bench_decoupled(sizes=(32,), batches=(1,), repeats=1, precisions=('fp32',))
    fct.test_eq([r['impl'] for r in rows], ['ciagan G', 'decoupled A+H', 'decoupled A+H temporal'])
    assert all(r['ms_per_image'] > 0 and r['size'] == 32 for r in rows)


def test_h_scale_shipped_at_half_and_old_files_load_full_size(tmp_path):
    from dataclasses import asdict
    from faceanon.learner import save_checkpoint
    fct.test_eq(get_method('decoupled').H.cfg.h_scale, 2)                   # the shipped H reads its input at half size
    cfg = replace(TINY, h_scale=1)
    A, H = CiaganGenerator(cfg.anon_config()), N.HarmonizationNet(cfg)
    with torch.no_grad(): H.out.weight.normal_(0, 0.1); H.out.bias.normal_()   # not the identity, so the scale shows in the output
    old_cfg = {k: v for k, v in asdict(cfg).items() if k != 'h_scale'}       # a file written before h_scale existed
    save_checkpoint(dict(format=D._FORMAT, a_config=asdict(A.cfg), config=old_cfg, A=D._half(A.state_dict()), H=D._half(H.state_dict()), info={}),
                    tmp_path / 'old.safetensors')
    _, H1, _ = D.load_decoupled(tmp_path / 'old.safetensors')
    fct.test_eq(H1.cfg.h_scale, 1)
    x, m = torch.rand(2, 3, 32, 32) * 2 - 1, torch.ones(2, 1, 32, 32)
    H2 = N.HarmonizationNet(replace(cfg, h_scale=2)); H2.load_state_dict(H1.state_dict())
    with torch.no_grad():
        fct.test_close(H1(x, m), H.half().float()(x, m), eps=1e-3)           # loaded as written (float16 weights)
        assert (H2(x, m) - H1(x, m)).abs().max() > 1e-3                      # the same weights at half size give another output
