"Baselines and the method registry: sweeps over methods, crop sizes and batch sizes; determinism; errors."
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import fastcore.test as fct
from faceanon.methods.base import AnonMethod, FaceBatch, available_methods, get_method, register_method
from faceanon.methods.baselines import Blur, gaussian_blur, opencv_sigma, pixelate, scaled_kernel

BASELINES = ['identity', 'blur9', 'blur17', 'pixelate8', 'pixelate16', 'mask', 'noise', 'edge', 'superpixel']

def make_batch(B=2, S=64, seed=0, dtype=torch.float32):
    "Random textured crops with an oval mask (soft edge) and random 68-point landmarks."
    g = torch.Generator().manual_seed(seed)
    imgs = F.interpolate(torch.rand(B, 3, S // 4, S // 4, generator=g) * 2 - 1, size=S, mode='bilinear', align_corners=False)
    imgs = (imgs + 0.2 * torch.randn(B, 3, S, S, generator=g)).clamp(-1, 1).to(dtype)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing='ij')
    r = ((xx - S / 2) / (0.35 * S)) ** 2 + ((yy - S * 0.55) / (0.45 * S)) ** 2
    mask = (1.2 - r).clamp(0, 0.2).div(0.2).to(dtype)[None, None].expand(B, 1, S, S).clone()
    return FaceBatch(imgs, mask, landmarks=torch.rand(B, 68, 2, generator=g) * S)

def test_all_baselines_registered():
    assert set(BASELINES) <= set(available_methods())

@pytest.mark.parametrize('name', BASELINES)
@pytest.mark.parametrize('S,B', [(32, 1), (64, 3), (128, 2)])
def test_shape_range_and_outside_mask(name, S, B):
    b = make_batch(B, S)
    out = get_method(name)(b, seed=0)
    fct.test_eq(out.shape, b.images.shape)
    fct.test_eq(out.dtype, b.images.dtype)
    assert out.min() >= -1 and out.max() <= 1
    out0 = b.masks.expand_as(b.images) == 0
    fct.test_eq(out[out0], b.images[out0])                       # bit-exact outside the mask
    inside = b.masks.expand_as(b.images) == 1
    changed = (out - b.images)[inside].abs().mean().item()
    if name == 'identity': fct.test_eq(changed, 0.)
    else: assert changed > 0.02, (name, changed)                # every real baseline changes the face

@pytest.mark.parametrize('name', BASELINES)
def test_seeded_and_batch_independent(name):
    b = make_batch(3, 64)
    m = get_method(name)
    a1, a2 = m(b, seed=5), m(b, seed=5)
    fct.test_eq(a1, a2)
    if name != 'noise':                                           # deterministic methods: per-sample, order-free
        fct.test_close(m(b[1], seed=5), a1[1:2], eps=1e-5)

def test_noise_depends_on_seed():
    b = make_batch(1, 32)
    assert not torch.equal(get_method('noise')(b, seed=0), get_method('noise')(b, seed=1))

def test_float64_and_mask_zero_is_identity():
    b = make_batch(2, 32, dtype=torch.float64)
    b0 = FaceBatch(b.images, torch.zeros_like(b.masks))
    for n in BASELINES:
        out = get_method(n)(b0, seed=0)
        fct.test_eq(out.dtype, torch.float64)
        fct.test_eq(out, b.images)

def test_gaussian_blur_matches_explicit_2d_kernel():
    x = make_batch(1, 48).images
    for k, s in [(3, 0.8), (9, 1.7), (17, 2.9)]:
        g = torch.exp(-(torch.arange(k) - k // 2).float() ** 2 / (2 * s * s)); g = g / g.sum()
        ref = F.conv2d(F.pad(x, [k // 2] * 4, mode='reflect'), (g[:, None] * g[None]).expand(3, 1, k, k), groups=3)
        fct.test_close(gaussian_blur(x, k, s), ref, eps=1e-5)

def test_blur_kernel_defined_at_128px():
    fct.test_eq(scaled_kernel(9, 128), (9, opencv_sigma(9)))
    fct.test_close(opencv_sigma(9), 1.7); fct.test_close(opencv_sigma(17), 2.9)
    for k in (9, 17):
        for S in (32, 64, 128, 256):
            w, s = scaled_kernel(k, S)
            assert w % 2 == 1 and abs(s - opencv_sigma(k) * S / 128) < 1e-9
    # the same face at 64 px and at 128 px blurs to (nearly) the same picture
    b = make_batch(1, 128)
    small = FaceBatch(F.interpolate(b.images, size=64, mode='area'), torch.ones(1, 1, 64, 64))
    big = Blur(kernel=17)(FaceBatch(b.images, torch.ones(1, 1, 128, 128)))
    err = (F.interpolate(big, size=64, mode='area') - Blur(kernel=17)(small)).abs().mean().item()
    assert err < 0.02, err
    unscaled = gaussian_blur(small.images, 17, opencv_sigma(17))  # without scaling: far too strong at 64 px
    assert (F.interpolate(big, size=64, mode='area') - unscaled).abs().mean().item() > 2 * err

def test_stronger_blur_and_coarser_pixelation_change_more():
    b = make_batch(2, 128)
    d = lambda n: (get_method(n)(b) - b.images).abs().mean().item()
    assert d('blur17') > d('blur9') > 0
    assert d('pixelate8') > d('pixelate16') > 0

@pytest.mark.parametrize('cells', [8, 16])
def test_pixelate_grid(cells):
    x = make_batch(1, 128).images
    out = pixelate(x, torch.ones(1, 1, 128, 128), cells)
    fct.test_eq(len(torch.unique(out[0, 0])), cells * cells)     # one colour per cell (random texture: all distinct)
    c = 128 // cells
    fct.test_close(out[0, :, :c, :c].mean((1, 2)), x[0, :, :c, :c].mean((1, 2)), eps=1e-5)

def test_pixelate_ignores_background_in_a_cell():
    x = torch.full((1, 3, 16, 16), -1.); x[..., :, 8:] = 1.        # left half black (background), right half white (face)
    m = torch.zeros(1, 1, 16, 16); m[..., :, 6:] = 1.               # the mask reaches 2 px into the black half
    out = pixelate(x, m, 1)
    fct.test_close(out[0, :, 0, 0], torch.full((3,), 0.6), eps=1e-5)   # weighted: (2*-1 + 8*1)/10, not the plain mean 0

def test_mask_colour_and_edge_grey():
    b = make_batch(2, 64)
    inside = b.masks[:, 0] == 1
    out = get_method('mask', color=(1., 0., -1.))(b)
    fct.test_eq(out.permute(0, 2, 3, 1)[inside].unique(dim=0), torch.tensor([[1., 0., -1.]]))
    e = get_method('edge')(b).permute(0, 2, 3, 1)[inside]       # (N, 3) pixels inside the mask
    fct.test_eq(e[:, 0], e[:, 1]); fct.test_eq(e[:, 1], e[:, 2])

def test_superpixel_makes_flat_patches():
    from skimage.data import astronaut
    from faceanon.core import to_tensor
    b = make_batch(1, 128)
    b = FaceBatch(to_tensor([astronaut()[60:188, 160:288]]), b.masks)   # SLIC needs a real picture, not noise
    out = get_method('superpixel', n_segments=30)(b)
    inside = b.masks[0, 0] == 1
    colours = out[0].permute(1, 2, 0)[inside].unique(dim=0)
    assert 5 <= len(colours) <= 60, len(colours)

def test_registry_errors_and_names():
    with pytest.raises(KeyError, match="unknown method 'blur10'; known methods: .*blur17.*blur9"): get_method('blur10')
    fct.test_eq(get_method('blur17').name, 'blur17')
    with pytest.raises(TypeError): get_method('blur9', sigma=3)    # unknown option for the factory
    with pytest.raises(ValueError, match='already registered'): register_method('mask')(Blur)
    @register_method('_test_tmp')
    def _f(): return 'not a method'
    try:
        with pytest.raises(TypeError, match='not an AnonMethod'): get_method('_test_tmp')
    finally:
        from faceanon.methods import base; base._METHODS.pop('_test_tmp')

def test_facebatch_validation_and_from_aligned():
    from types import SimpleNamespace
    with pytest.raises(ValueError, match='masks must have shape'): FaceBatch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match='landmarks must have shape'): FaceBatch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), landmarks=torch.zeros(1, 5, 2))
    lm = np.random.default_rng(0).uniform(0, 32, (68, 2)).astype(np.float32)
    af = SimpleNamespace(image=np.zeros((32, 32, 3), np.uint8), mask=np.ones((32, 32), np.float32), landmarks5=None, landmarks68=lm)
    b = FaceBatch.from_aligned([af, af, af])
    fct.test_eq(b.images.shape, (3, 3, 32, 32)); fct.test_eq(b.images.min().item(), -1.)
    fct.test_close(b.landmarks5[0, 2], torch.tensor(lm[30]))        # nose tip from the 68 points
