"Tests for faceanon.methods.password: passwords, networks, training steps, files, data layouts, method, CLI, bench."
import argparse, hashlib
from pathlib import Path
from dataclasses import replace
import numpy as np
import pytest
import torch
import fastcore.test as fct
from faceanon.methods import password as pw
from faceanon.methods.base import FaceBatch, get_method, available_methods

torch.set_num_threads(1)

TINY = pw.PasswordConfig(size=32, ngf=4, n_blocks=2, ndf=8, d_scales=1, n_ids=4, nff=8, n_bits=4, pool_size=8)


def smooth_faces(n_ids=4, per_id=4, size=32, seed=0):
    "A coloured disc per identity on a plain jittered background."
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing='ij')
    ids = torch.arange(n_ids).repeat_interleave(per_id)
    col = torch.rand(n_ids, 3, generator=g) * 2 - 1
    r = 0.5 + 0.1 * torch.rand(len(ids), generator=g)
    disc = ((xx ** 2 + yy ** 2)[None] < r[:, None, None] ** 2).float()[:, None]
    bg = (torch.rand(len(ids), 3, 1, 1, generator=g) * 2 - 1) * 0.5
    return pw.FaceTensors((disc * col[ids][:, :, None, None] + (1 - disc) * bg).clamp(-1, 1), ids)


# ---------------- passwords ----------------
@pytest.mark.parametrize('n_bits', [4, 8, 16, 32])
def test_passwords(n_bits):
    g = torch.Generator().manual_seed(n_bits)
    p = pw.random_bits(256, n_bits, g)
    fct.test_eq(pw.inverse(pw.inverse(p)), p)
    fct.test_eq((p + pw.inverse(p)).unique().tolist(), [1])
    q = pw.random_other([pw.inverse(p), p], n_bits, g)
    assert not (q == pw.inverse(p)).all(1).any() and not (q == p).all(1).any()
    fct.test_eq(pw.password_planes(pw.inverse(p), 4), -pw.password_planes(p, 4))
    k = int(torch.randint(2 ** min(n_bits, 30), (1,), generator=g))
    fct.test_eq(pw.bits_int(pw.int_bits(k, n_bits)), k)
    b = pw.passphrase_bits('a phrase', n_bits)
    fct.test_eq(b.shape, (n_bits,))
    fct.test_eq(pw.as_bits('a phrase', n_bits), b)


def test_passphrase_kdf_is_documented_pbkdf2():
    key = hashlib.pbkdf2_hmac('sha256', b'open sesame', pw.PASSWORD_SALT, pw.PBKDF2_ITERATIONS, dklen=2)
    expect = [int(c) for c in f"{int.from_bytes(key, 'big'):016b}"]
    fct.test_eq(pw.passphrase_bits('open sesame').tolist(), expect)
    assert (pw.passphrase_bits('open sesame') != pw.passphrase_bits('open sesamE')).any()
    fct.test_eq(pw.as_bits('0000000000000101'), pw.int_bits(5))
    fct.test_eq(pw.as_bits(5, 8), pw.int_bits(5, 8))
    fct.test_fail(lambda: pw.as_bits('', 8), contains='must not be empty')
    fct.test_fail(lambda: pw.as_bits(256, 8), contains='outside')


# ---------------- networks ----------------
def test_networks_shapes_and_errors():
    T, Q = pw.Transformer(TINY), pw.PasswordQ(TINY)
    x, p = torch.rand(3, 3, 32, 32) * 2 - 1, pw.random_bits(3, 4)
    fct.test_eq(T(x, p).shape, x.shape)
    assert T(x, p).abs().max() <= 1
    fct.test_eq(Q(x, x).shape, (3, 1, 16))
    fct.test_fail(lambda: T(x, pw.random_bits(3, 8)), contains='passwords of shape (3, 4)')
    fct.test_fail(lambda: pw.PasswordConfig(n_bits=6), contains='multiple of 4')
    fct.test_fail(lambda: pw.PasswordConfig(size=32), contains='lower d_scales')
    F = pw.build_recognizer(TINY)
    h, l = pw.recognizer_outputs(F, x)
    fct.test_eq(l.shape, (3, 4))
    assert (T(x, p) - T(x, pw.inverse(p))).abs().mean() > 0      # the password reaches the output


def test_f_sees_only_the_face_view():
    F = pw.build_recognizer(TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    fct.test_eq(pw.face_view(x, 0.625).shape, (2, 3, 20, 20))
    fct.test_eq(pw.face_view(x, 0.625), x[..., 6:26, 6:26])
    y = x.clone(); y[..., :6, :] = 1; y[..., :, 26:] = -1          # change only pixels outside the view
    fct.test_close(pw.recognizer_outputs(F, y, 0.625)[1], pw.recognizer_outputs(F, x, 0.625)[1])
    assert (pw.recognizer_outputs(F, y)[1] - pw.recognizer_outputs(F, x)[1]).abs().max() > 1e-4   # the full frame does see them
    fct.test_fail(lambda: pw.face_view(x, 0), contains='f_view must be in (0, 1]')


def test_paper_size_counts():
    cfg = pw.PasswordConfig()
    fct.test_eq(sum(p.numel() for p in pw.Transformer(cfg).parameters()), 11_438_211)   # the brief's 11.4 M; 30 GFLOP is checked in the notebook


@pytest.mark.parametrize('ngf,n_blocks', [(4, 1), (8, 2)])
def test_fold_batchnorm_is_exact(ngf, n_blocks):
    T = pw.Transformer(pw.PasswordConfig(size=32, ngf=ngf, n_blocks=n_blocks, d_scales=1)).train()
    with torch.no_grad():
        for _ in range(3): T(torch.randn(6, 3, 32, 32), pw.random_bits(6, 16))
    T.eval()
    fast = pw.prepare_for_inference(T)
    x, p = torch.randn(2, 3, 32, 32), pw.random_bits(2, 16)
    fct.test_close(fast(x.contiguous(memory_format=torch.channels_last), p), T(x, p), eps=1e-4)
    fct.test_eq(sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()), 0)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in T.modules())        # the original is untouched


def test_image_pool():
    import random
    random.seed(0)
    pool = pw.ImagePool(3)
    fct.test_eq(pool.query(torch.arange(3.)[:, None]), torch.arange(3.)[:, None])
    out = pool.query(torch.full((50, 1), 7.))
    assert 0 < int((out < 7).sum()) <= 3 and len(pool.images) == 3
    fct.test_eq(pw.ImagePool(0).query(torch.ones(2, 1)), torch.ones(2, 1))


# ---------------- training ----------------
def test_recovery_beats_wrong_password_after_a_few_steps():
    data = smooth_faces()
    cfg = pw.PasswordConfig(**{**TINY.__dict__, 'lr': 3e-3})
    learn = pw.password_learner(cfg, data, bs=8, device='cpu', seed=0, cbs=[mets := pw.MetricsCB(every=5)])
    pw.pretrain_recognizer(learn.F, data, 20, bs=8)
    learn.fit(max_steps=40)
    T = learn.T.eval()
    x = data.images
    p = pw.random_bits(len(x), 4, torch.Generator().manual_seed(1))
    q = pw.random_other([pw.inverse(p)], 4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        A = T(x, p); R, WR = T(A, pw.inverse(p)), T(A, q)
    l1_r, l1_wr = (R - x).abs().mean().item(), (WR - x).abs().mean().item()
    assert l1_r < l1_wr, (l1_r, l1_wr)
    h = mets.history
    assert h[-1]['G/l1_R'] < h[0]['G/l1_R'], (h[0], h[-1])


def test_non_adversarial_ablation_freezes_F():
    data = smooth_faces()
    learn = pw.password_learner(pw.PasswordConfig(**{**TINY.__dict__, 'adversarial_fr': False}), data, bs=4, device='cpu')
    before = [p.clone() for p in learn.F.parameters()]
    learn.fit(max_steps=2)
    fct.test_eq(sorted(learn.logs), ['D', 'G'])
    for a, b in zip(before, learn.F.parameters()): fct.test_eq(a, b)
    adv = pw.password_learner(TINY, data, bs=4, device='cpu')
    adv.fit(max_steps=2)
    fct.test_eq(sorted(adv.logs), ['DF', 'G'])
    lrs = [g['lr'] for g in adv.phases[1].opt.param_groups]
    fct.test_close(lrs[1], lrs[0] * 0.1)


def test_train_resume_and_files(tmp_path):
    data = smooth_faces()
    kw = dict(bs=4, device='cpu', progress=False, f_pretrain_steps=2, ckpt_every=1)
    a = pw.train_password(TINY, tmp_path / 'a', data, steps=4, **kw)
    pw.train_password(TINY, tmp_path / 'b', data, steps=2, **kw)
    b = pw.train_password(TINY, tmp_path / 'b', data, steps=4, resume=True, **kw)
    for v, w in zip(a.T.state_dict().values(), b.T.state_dict().values()): fct.test_close(v.float(), w.float(), eps=1e-5)
    T, Q, info = pw.load_transformer(tmp_path / 'a' / 'transformer.safetensors')
    fct.test_eq(info['steps'], 4)
    x, p = data.images[:2], pw.random_bits(2, 4)
    fct.test_close(T(x, p), a.T.eval()(x, p), eps=1e-5)
    fct.test_close(Q(x, x), a.Q.eval()(x, x), eps=1e-5)
    (tmp_path / 'bad.safetensors').write_bytes(b'not a file')
    with pytest.raises(Exception): pw.load_transformer(tmp_path / 'bad.safetensors')


# ---------------- data layouts ----------------
def _fixture(root: Path, layout: str, n_ids=3, per_id=2):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n_ids):
        name = dict(casia=f'{i:07d}', vggface2=f'n{i:06d}', lfw=f'Person_{chr(65 + i)}')[layout]
        (root / name).mkdir(parents=True)
        for j in range(per_id):
            fn = dict(casia=f'{j + 1:03d}.jpg', vggface2=f'{j + 1:04d}_01.jpg', lfw=f'{name}_{j + 1:04d}.jpg')[layout]
            Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(root / name / fn)
    (root / 'README.txt').write_text('not an identity')


@pytest.mark.parametrize('layout', ['casia', 'vggface2', 'lfw'])
def test_identity_folders(tmp_path, layout):
    _fixture(tmp_path / layout, layout)
    ds = pw.password_data(f'{layout}:{tmp_path / layout}', pw.PasswordConfig(size=32, n_ids=10, d_scales=1))
    fct.test_eq((len(ds), ds.n_classes), (6, 3))
    it = ds[5]
    fct.test_eq(it['image'].shape, (3, 32, 32)); fct.test_eq(int(it['identity']), 2)
    assert it['image'].min() >= -1 and it['image'].max() <= 1
    fct.test_eq(len(pw.IdentityFolders(tmp_path / layout, 32, max_ids=2)), 4)
    fct.test_fail(lambda: pw.password_data('celeb:/nowhere', TINY), contains="'folder:PATH'")
    fct.test_fail(lambda: pw.IdentityFolders(tmp_path / 'missing'), contains='expected ROOT/<identity>')


# ---------------- method, CLI, bench ----------------
def _tiny_weights(tmp_path) -> Path:
    T, Q = pw.Transformer(TINY), pw.PasswordQ(TINY)
    with torch.no_grad(): T.train()(torch.randn(4, 3, 32, 32), pw.random_bits(4, 4))
    return pw.save_transformer(T.eval(), Q, tmp_path / 'w.safetensors', dict(steps=0))


def test_method_anonymize_and_recover(tmp_path):
    path = _tiny_weights(tmp_path)
    assert 'password' in available_methods()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = FaceBatch(images=x, masks=torch.ones(2, 1, 32, 32))
    m = get_method('password', weights=path, password='open sesame')
    r = get_method('password', weights=path, password='open sesame', recover=True)
    T = m.T
    bits = pw.as_bits('open sesame', 4).expand(2, 4)
    fct.test_close(m(batch), T(x, bits).clamp(-1, 1), eps=1e-4)      # the method runs the folded channels-last copy
    fct.test_close(r(batch), T(x, pw.inverse(bits)).clamp(-1, 1), eps=1e-4)
    assert m._fast is not None and not any(isinstance(k, torch.nn.BatchNorm2d) for k in m._fast.modules())
    fct.test_close(pw.recover(T, x, 'open sesame'), T(x, pw.inverse(bits)), eps=1e-6)
    rand = get_method('password', weights=path)
    fct.test_eq(rand(batch, seed=3), rand(batch, seed=3))
    fct.test_fail(lambda: get_method('password', weights=path, recover=True), contains='needs the password')
    fct.test_fail(lambda: get_method('password', weights=tmp_path / 'none.safetensors'), contains='not found')
    big = FaceBatch(images=torch.nn.functional.interpolate(x, size=64, mode='bilinear'), masks=torch.ones(2, 1, 64, 64))
    rs = lambda t, n: torch.nn.functional.interpolate(t, size=(n, n), mode='bilinear', align_corners=False, antialias=True)
    fct.test_close(m(big), rs(T(rs(big.images, 32), bits), 64).clamp(-1, 1), eps=1e-4)   # any crop size: run at the model's 32 px and back


def test_train_main(tmp_path):
    _fixture(tmp_path / 'lfw', 'lfw', n_ids=3, per_id=4)
    p = argparse.ArgumentParser(); pw.add_train_args(p)
    argv = ['--data', f'lfw:{tmp_path / "lfw"}', '--size', '32', '--bits', '8', '--ngf', '4', '--ndf', '8', '--d-scales', '1', '--nff', '8',
            '--n-ids', '3', '--steps', '2', '--bs', '4', '--f-pretrain-steps', '1', '--pool-size', '4', '--device', 'cpu', '--no-progress',
            '-o', str(tmp_path / 'run'), '--n-down', '1', '--lr-drop', '1', '--channels-last', '--w-aux', '4']
    fct.test_eq(pw.train_main(p.parse_args(argv)), 0)
    T, _, info = pw.load_transformer(tmp_path / 'run' / 'transformer.safetensors')
    fct.test_eq((info['steps'], T.cfg.n_down, T.cfg.ngf, tuple(T.cfg.lr_drop), T.cfg.w_aux), (2, 1, 4, (1,), 4.))
    src = str(tmp_path / 'run' / 'transformer.safetensors')                  # --init: a fine-tune starts from that file
    fct.test_eq(pw.train_main(p.parse_args(argv[:-2] + ['--init', src, '-o', str(tmp_path / 'tuned'), '--steps', '0'])), 0)
    T2, _, info2 = pw.load_transformer(tmp_path / 'tuned' / 'transformer.safetensors')
    fct.test_eq((info2['init'], T2.cfg.w_aux), (dict(path=src, steps=2), 1.))
    for v, w in zip(T.state_dict().values(), T2.state_dict().values()): fct.test_eq(v, w)
    fct.test_eq(pw.train_main(p.parse_args(argv + ['--init', str(tmp_path / 'nothing.safetensors'), '-o', str(tmp_path / 'x')])), 2)
    groups = pw.load_checkpoint(tmp_path / 'run' / 'checkpoint.safetensors')['phases']['G']['opt']['param_groups']
    fct.test_close(groups[0]['lr'], 1e-4)                                    # --lr 1e-3 dropped 10x after step 1
    fct.test_eq(pw.train_main(p.parse_args(argv + ['--bits', '6'])), 2)
    fct.test_eq(pw.train_main(p.parse_args(argv + ['--data', 'nowhere'])), 2)
    fct.test_eq(pw.train_main(p.parse_args(argv + ['--set', 'w_l1r=2', '-o', str(tmp_path / 'typo')])), 2)   # a typo trains nothing
    assert not (tmp_path / 'typo').exists()
    fct.test_eq(pw.train_main(p.parse_args(argv + ['--set', 'w_l1_r=200', '--set', 'w-aux=2', '--set', 'lr_drop=', '-o', str(tmp_path / 'set')])), 0)
    T3 = pw.load_transformer(tmp_path / 'set' / 'transformer.safetensors')[0]
    fct.test_eq((T3.cfg.w_l1_r, T3.cfg.w_aux, T3.cfg.lr_drop, T3.cfg.w_l1_a), (200., 2., (), pw.PasswordConfig().w_l1_a))   # --set wins over --w-aux 4


def test_apply_sets_parses_by_field_type():
    c = pw.apply_sets(pw.PasswordConfig(), ['adversarial_fr=no', 'lr=3e-4', 'recognizer=facenet', 'lr_drop=5, 7', 'pool_size=9'])
    fct.test_eq((c.adversarial_fr, c.lr, c.recognizer, c.lr_drop, c.pool_size), (False, 3e-4, 'facenet', (5, 7), 9))
    fct.test_eq(pw.apply_sets(c), c)
    for bad, msg in [('pool_size=1.5', 'invalid literal'), ('adversarial_fr=maybe', 'not a bool'), ('recognizer=vgg', "'small' or 'facenet'"), ('=3', 'KEY one of')]:
        with pytest.raises(ValueError, match=msg): pw.apply_sets(c, [bad])


def test_brute_force_and_panel(tmp_path):
    T = pw.load_transformer(_tiny_weights(tmp_path))[0]

    class PixelRec:
        def embed(self, x): return x.flatten(1)
        def distance(self, a, b): return (a - b).norm(dim=-1)
    x = torch.rand(3, 32, 32) * 2 - 1
    a = pw.password_anonymize(T, x[None], 5)[0]
    bf = pw.brute_force(T, a, PixelRec(), x.flatten()[None], bs=5)
    fct.test_eq((bf['tried'], bf['distances'].shape, bf['nearest']), (16, (16,), 0))
    assert torch.isfinite(bf['distances']).all()
    k = pw.bits_int(pw.inverse(bf['password']))
    fct.test_eq(bf['distances'].argmin().item(), k)
    panel = pw.password_panel(T, x, '0101')
    fct.test_eq((panel.ndim, panel.shape[-1], panel.dtype), (3, 3, np.uint8))


def test_bit_sensitivity_finds_an_ignored_bit():
    "Cut bit 2's planes out of T's first convolution: its sensitivity is exactly 0, every other bit's is not."
    torch.manual_seed(0)
    T = pw.Transformer(TINY).eval()
    x, p = torch.rand(4, 3, 32, 32) * 2 - 1, pw.random_bits(4, TINY.n_bits)
    assert (pw.bit_sensitivity(T, x, p) > 0).all()
    with torch.no_grad(): T.net[0][0].weight[:, 3 + 2] = 0                # input channels: RGB, then one plane per bit
    s = pw.bit_sensitivity(T, x, p)
    fct.test_eq(s.shape, (TINY.n_bits,)); fct.test_eq(s[2].item(), 0.)
    assert (s[[0, 1, 3]] > 1e-4).all(), s


def test_train_channels_last(tmp_path):
    learn = pw.train_password(TINY, tmp_path / 'run', smooth_faces(), steps=2, bs=4, device='cpu', progress=False, f_pretrain_steps=1,
                              channels_last=True)
    assert learn.T.net[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    T, _, info = pw.load_transformer(tmp_path / 'run' / 'transformer.safetensors')
    fct.test_eq(info['steps'], 2)
    fct.test_eq(T.net[0][0].weight.detach(), learn.T.net[0][0].weight.detach())


def test_bench_rows():
    rows = pw.bench_password(size=32, ngf=4, batch_sizes=(1,), repeats=1, train_bs=2, threads=None, precisions=('fp32', 'bf16'))
    fct.test_eq([(r['task'], r['impl']) for r in rows][2:], [('inference', 'ours bf16 folded channels-last'), ('forward+backward', 'official-style fp32'),
                                                         ('forward+backward', 'ours fp32 channels-last'), ('forward+backward', 'ours bf16 channels-last')])
    assert all(r.get('ms_per_image', r.get('s_per_step')) > 0 for r in rows)


def test_bench_times_bf16_only_where_native(monkeypatch):
    import faceanon.core
    for native, n_rows in ((False, 4), (True, 6)):                 # official + ours per precision, inference and training
        monkeypatch.setattr(faceanon.core, 'native_bf16', lambda device='cpu': native)
        rows = pw.bench_password(size=32, ngf=4, batch_sizes=(1,), repeats=1, train_bs=2, threads=None)
        fct.test_eq(len(rows), n_rows)
        fct.test_eq(any('bf16' in r['impl'] for r in rows), native)


def test_committed_weights():
    path = pw.default_weights()
    if not path.exists(): pytest.fail(f"the committed checkpoint {path} is missing")
    assert path.stat().st_size <= 20e6
    T, Q, info = pw.load_transformer(path)
    fct.test_eq((T.cfg.size, T.cfg.n_bits, T.cfg.n_blocks), (64, 16, 9))
    assert Q is not None and info['steps'] > 0
    x = torch.zeros(1, 3, 64, 64)
    fct.test_eq(pw.recover(T, pw.password_anonymize(T, x, 'x'), 'x').shape, x.shape)


def test_init_from_file_then_fine_tune(tmp_path):
    "init= starts T and Q from a file (0 steps: identical), refuses another architecture, and a fine-tune moves away from it."
    kw = dict(bs=4, device='cpu', progress=False, f_pretrain_steps=1)
    base = pw.train_password(TINY, tmp_path / 'base', smooth_faces(), steps=2, **kw)
    src = tmp_path / 'base' / 'transformer.safetensors'
    same = pw.train_password(TINY, tmp_path / 'same', smooth_faces(), steps=0, init=src, **kw)
    for v, w in zip(base.T.state_dict().values(), same.T.state_dict().values()): fct.test_eq(v, w)
    for v, w in zip(base.Q.state_dict().values(), same.Q.state_dict().values()): fct.test_eq(v, w)
    tuned = pw.train_password(replace(TINY, w_aux=4.), tmp_path / 'tuned', smooth_faces(), steps=2, init=src, **kw)
    moved = sum((v.float() - w.float()).abs().sum() for v, w in zip(base.T.state_dict().values(), tuned.T.state_dict().values()))
    assert moved > 0
    fct.test_eq(pw.load_transformer(tmp_path / 'tuned' / 'transformer.safetensors')[2]['init'], dict(path=str(src), steps=2))
    # extra callbacks reach the learner; an EMA of T starts from the file's weights, not from the random init
    from faceanon.learner import EMACB
    still = pw.train_password(TINY, tmp_path / 'ema0', smooth_faces(), steps=0, init=src, cbs=[EMACB('T', 0.5, warmup=False)], **kw)
    for v, w in zip(base.T.parameters(), still.T_ema.parameters()): fct.test_eq(v.detach(), w)
    ema = pw.train_password(TINY, tmp_path / 'ema2', smooth_faces(), steps=2, init=src, cbs=[EMACB('T', 0.5, warmup=False)], **kw)
    gap = lambda a, b: sum((v.detach() - w.detach()).abs().sum().item() for v, w in zip(a.parameters(), b.parameters()))
    assert gap(ema.T_ema, base.T) > 0 and gap(ema.T_ema, ema.T) > 0 and gap(ema.T_ema, base.T) < gap(ema.T, base.T)
    with pytest.raises(ValueError, match="'n_bits': \\(4, 8\\)"):
        pw.train_password(replace(TINY, n_bits=8), tmp_path / 'bad', smooth_faces(), steps=0, init=src, **kw)


def test_aux4_weights_use_every_bit():
    "The aux4 model writes all 16 bits (the default model leaves bits 13-16 dead) and Q reads every chunk well above chance."
    from faceanon.evalsets import synth_eval_set
    T, Q, info = pw.load_transformer(pw.default_weights().with_name('password_aux4_synth64.safetensors'))
    fct.test_eq((T.cfg.n_bits, T.cfg.w_aux, info['steps']), (16, 4., 12000))
    x = synth_eval_set(n_ids=20, per_id=4, n_gallery=2, size=64, n_clips=0).probes.images
    p = pw.fixed_passwords(len(x), 16)[0]
    s = pw.bit_sensitivity(T, x, p)
    assert s.min() > 0.2 * s.median(), s
    assert (pw.q_chunk_accuracy(T, Q, x, p) > 4 / 16).all()
    T1, _, _ = pw.load_transformer(pw.default_weights())
    s1 = pw.bit_sensitivity(T1, x, p)
    assert (s1[12:] < 0.1 * s1.median()).all(), s1               # the default's dead bits, as the notebook says


@pytest.mark.parametrize('n_down', [1, 2])
def test_widen_transformer_keeps_the_function(n_down):
    "Doubling T's width computes the same faces in train and eval mode; the noise breaks the tie between copied channels."
    T = pw.Transformer(replace(TINY, n_down=n_down))
    x, p = torch.rand(4, 3, 32, 32) * 2 - 1, pw.random_bits(4, TINY.n_bits, torch.Generator().manual_seed(1))
    for train in (True, False):
        T.train(train)
        W = pw.widen_transformer(T, noise=0.)
        fct.test_eq((W.cfg.ngf, W.training), (2 * T.cfg.ngf, train))
        with torch.no_grad(): assert (W(x, p) - T(x, p)).abs().max() < 1e-5
    W2 = pw.widen_transformer(W, noise=0.)                       # again: 4 times the width
    with torch.no_grad(): assert (W2(x, p) - T(x, p)).abs().max() < 1e-5
    w0 = W.net[0][0].weight.detach()
    fct.test_eq(w0[:4], w0[4:])                                  # copied channels are tied ...
    Wn = pw.widen_transformer(T, noise=0.01); wn = Wn.net[0][0].weight.detach()
    assert (wn[:4] - wn[4:]).abs().max() > 0                     # ... until the noise unties them
    with torch.no_grad(): assert 0 < (Wn(x, p) - T(x, p)).abs().mean() < 0.05


def test_widen_transformer_refuses_transposed_convs():
    T = pw.Transformer(TINY)
    T.net.append(torch.nn.ConvTranspose2d(3, 3, 1))                 # its weight is (in, out, k, k): widening would mix up the axes
    fct.test_fail(lambda: pw.widen_transformer(T), contains='not transposed convolutions')


def test_batch_statistics_of_one_face_erase_the_password():
    "Official-style test (BN on each batch's own statistics) with one face per batch: the constant password planes are normalised away."
    T = pw.Transformer(TINY).train()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    p, q = pw.int_bits(3, TINY.n_bits)[None], pw.int_bits(12, TINY.n_bits)[None]
    with torch.no_grad():
        fct.test_close(T(x, p), T(x, q), eps=1e-5)                     # same face under two passwords
        T.eval(); assert (T(x, p) - T(x, q)).abs().max() > 1e-4        # running statistics keep the password


def test_faceanon_bench_gan_runs_both_generator_benches():
    "`faceanon bench --gan --quick` calls every method's bench with quick=True; the password bench must accept it."
    from faceanon.bench import BenchConfig, _gan_benches
    rows = _gan_benches(BenchConfig(quick=True, gan=True))
    assert any(r['impl'] == 'official-style fp32' for r in rows)
    pw_rows = [r for r in rows if r.get('params') == sum(p.numel() for p in pw.Transformer(pw.PasswordConfig(size=64, ngf=16, d_scales=1)).parameters())]
    fct.test_eq(sorted({r['task'] for r in pw_rows}), ['inference'])          # quick: no training step
    assert len(pw_rows) >= 2 and all(r['ms_per_image'] > 0 for r in pw_rows), rows
