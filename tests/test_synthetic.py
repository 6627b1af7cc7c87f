"Tests of faceanon.data.synthetic at reduced scale (no timing assertions)."
import numpy as np, torch
import fastcore.test as fct
from faceanon.data.synthetic import (PARSING_CLASSES, SynthConfig, SynthFaces, synth_sample, synth_clip, synth_scene,
                                     landmark_agreement, draw_landmarks, overlay_parsing, identity_params)

def test_deterministic_in_seed_and_index():
    a, b = synth_sample(5, 3, 48), synth_sample(5, 3, 48)
    for k in ('image', 'landmarks', 'parsing', 'pose', 'box'): fct.test_eq(a[k], b[k])
    assert (synth_sample(5, 4, 48)['image'] != a['image']).mean() > .5
    assert (synth_sample(6, 3, 48)['image'] != a['image']).mean() > .5
    assert (synth_sample(5, 3, 48, seed=9)['image'] != a['image']).mean() > .5

def test_shapes_dtypes_and_sizes():
    for n in (32, 64, 97, 256):
        s = synth_sample(1, 2, n)
        fct.test_eq(s['image'].shape, (n, n, 3)); fct.test_eq(s['image'].dtype, np.uint8)
        fct.test_eq(s['parsing'].shape, (n, n)); fct.test_eq(s['landmarks'].shape, (68, 2))
        assert s['parsing'].max() < len(PARSING_CLASSES)
        x0, y0, x1, y1 = s['box']; assert 0 <= x0 < x1 <= n and 0 <= y0 < y1 <= n
    fct.test_fail(lambda: synth_sample(0, 0, 2), contains='size must be in')

def test_identity_parameters_are_shape_not_only_colour():
    p, q = identity_params(0), identity_params(1)
    assert sum(abs(p[k] - q[k]) > 1e-3 for k in ('fw', 'fh', 'eye_sep', 'nose_len', 'mouth_w')) == 5

def test_ibug_order_frontal():
    s = synth_sample(0, 0, 128, cfg=SynthConfig(max_yaw=0, max_pitch=0, max_roll=0))
    lm = s['landmarks']
    assert lm[0, 0] < lm[8, 0] < lm[16, 0] and lm[8, 1] == lm[:17, 1].max()        # jaw: image-left temple, chin, right temple
    assert lm[36:42, 0].mean() < lm[27, 0] < lm[42:48, 0].mean()                     # subject's right eye is image-left
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]                             # corners left to right
    assert lm[19, 1] < lm[37, 1] and lm[27, 1] < lm[30, 1] < lm[33, 1] < lm[51, 1] < lm[57, 1]   # brows, nose, mouth top to bottom
    assert lm[48, 0] < lm[51, 0] < lm[54, 0] and lm[60, 0] < lm[62, 0] < lm[64, 0]

def test_landmarks_agree_with_parsing():
    scores = [landmark_agreement(s['landmarks'], s['parsing']) for s in (synth_sample(i, j, 64) for i in range(8) for j in range(4))]
    for k in ('eyes', 'mouth', 'jaw'): assert np.mean([sc[k] for sc in scores]) > .97, (k, scores)
    s = synth_sample(0, 1, 64)
    assert landmark_agreement(s['landmarks'] + [0, 8], s['parsing'])['jaw'] < .5     # the check can fail

def test_dataset_splits():
    tr, ho, te = (SynthFaces(n_ids=3, per_id=4, size=32, split=sp, n_heldout=2) for sp in ('train', 'heldout', 'test'))
    fct.test_eq((len(tr), len(ho), len(te)), (12, 6, 12)); fct.test_eq(tr.n_classes, 3)
    fct.test_eq(tr.identities, ho.identities); assert not set(tr.identities) & set(te.identities)
    it = ho[5]; fct.test_eq(it['identity'].item(), 2); fct.test_eq(it['image'].shape, (3, 32, 32))
    assert it['image'].min() >= -1 and it['image'].max() <= 1 and it['parsing'].dtype == torch.long
    st = tr.stacked(); assert not any((h['image'] == st['image']).all((1, 2, 3)).any() for h in ho)
    fct.test_fail(lambda: SynthFaces(split='dev'), contains='split must be')

def test_clip_is_smooth_and_deterministic():
    c = synth_clip(4, n_frames=10, size=48)
    fct.test_eq(c['image'].shape, (10, 48, 48, 3)); fct.test_eq(c['pose'].shape, (10, 3))
    fct.test_eq(synth_clip(4, n_frames=10, size=48)['landmarks'], c['landmarks'])
    step = np.abs(np.diff(c['landmarks'], axis=0)).mean()
    indep = np.mean([np.abs(synth_sample(4, i, 48)['landmarks'] - synth_sample(4, i + 1, 48)['landmarks']).mean() for i in range(6)])
    assert step < indep / 2

def test_scene_boxes_and_landmarks():
    sc = synth_scene(2, size=(160, 240), seed=3, face_sizes=(48, 96))
    fct.test_eq(sc['image'].shape, (160, 240, 3)); fct.test_eq(sc['boxes'].shape, (2, 4)); fct.test_eq(sc['landmarks'].shape, (2, 68, 2))
    for b, lm in zip(sc['boxes'], sc['landmarks']):
        assert (lm[:, 0] >= b[0] - 1e-3).all() and (lm[:, 0] <= b[2] + 1e-3).all() and (lm[:, 1] <= b[3] + 1e-3).all()
        assert sc['parsing'][int(lm[30, 1]), int(lm[30, 0])] == PARSING_CLASSES.index('nose')
    fct.test_fail(lambda: synth_scene(50, size=(96, 96)), contains='could not place')

def test_figure_helpers():
    s = synth_sample(0, 0, 32)
    d = draw_landmarks(s['image'], s['landmarks']); assert (d != s['image']).any() and d.shape == s['image'].shape
    o = overlay_parsing(s['image'], s['parsing']); fct.test_eq(o[s['parsing'] == 0], s['image'][s['parsing'] == 0])

def _cnn(n):
    blk = lambda ci, co: torch.nn.Sequential(torch.nn.Conv2d(ci, co, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(co), torch.nn.ReLU())
    return torch.nn.Sequential(blk(3, 16), blk(16, 32), blk(32, 64), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, n))

def test_identity_is_learnable_beyond_colour():
    torch.manual_seed(0); n, epochs, bs = 10, 15, 32
    tr, ho = (SynthFaces(n, 12, 32, sp, n_heldout=4).stacked() for sp in ('train', 'heldout'))
    m = _cnn(n); opt = torch.optim.AdamW(m.parameters(), 1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=epochs * -(-len(tr['image']) // bs))
    for _ in range(epochs):
        for idx in torch.randperm(len(tr['image'])).split(bs):
            x = torch.roll(tr['image'][idx], tuple(torch.randint(-2, 3, (2,)).tolist()), (2, 3))
            loss = torch.nn.functional.cross_entropy(m(x), tr['identity'][idx]); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    with torch.no_grad(): acc = (m.eval()(ho['image']).argmax(1) == ho['identity']).float().mean().item()
    f = lambda d: d['image'].mean((2, 3))
    C = torch.stack([f(tr)[tr['identity'] == k].mean(0) for k in range(n)])
    colour = (torch.cdist(f(ho), C).argmin(1) == ho['identity']).float().mean().item()
    assert acc > .4 and acc > colour + .1, (acc, colour)      # chance is 0.1


def test_hair_per_image_changes_hair_not_features():
    from faceanon.data.synthetic import SynthConfig, synth_sample
    hp = SynthConfig(hair_per_image=True)
    feats = lambda s: np.isin(s['parsing'], (2, 3, 4, 5, 6))
    changed = 0
    for i in range(6):
        h, plain = synth_sample(2, i, 64, cfg=hp), synth_sample(2, i, 64)
        np.testing.assert_array_equal(feats(h), feats(plain))                      # brows, eyes, nose, lips, mouth: same pixels
        np.testing.assert_array_equal(synth_sample(2, i, 64, cfg=hp)['image'], h['image'])   # deterministic
        changed += bool((h['image'] != plain['image']).any())
    assert changed >= 5                                                             # new hair in (nearly) every image
