"Tests for faceanon.layers: shapes against the supplements' tables, AdaIN against its formula, gradcheck in float64."
import itertools
import pytest
import torch
from torch import nn
import fastcore.test as fct
from faceanon.layers import (adain, AdaIN, conv2d, linear, norm_layer, act_layer, conv_block, ResBlock, CIAGAN_BLOCKS,
                             ciagan_block, SumPool, ResizeConv, resnet_generator, patch_discriminator, patch_channels,
                             MultiscaleDiscriminator, ChunkHead)


def _chain(mods, x):
    out = []
    for m in mods: x = m(x); out.append(tuple(x.shape[1:]))
    return x, out


def test_adain_matches_formula():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 2 + 1
    scale, bias = torch.rand(3, 4, dtype=torch.float64) + .5, torch.randn(3, 4, dtype=torch.float64)
    mu = x.mean((2, 3), keepdim=True); sd = (x.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    ref = scale[..., None, None] * (x - mu) / sd + bias[..., None, None]
    fct.test_close(adain(x, scale, bias), ref, eps=1e-10)
    # and the output statistics are the requested ones
    fct.test_close(adain(x, scale, bias).mean((2, 3)), bias, eps=1e-8)


def test_adain_layer_params_and_projection():
    x = torch.randn(2, 3, 4, 4)
    a = AdaIN(3)
    fct.test_eq(a.n_style, 6)
    # zero style -> plain instance norm (scale 1 + 0)
    fct.test_close(a(x, torch.zeros(2, 6)), nn.functional.instance_norm(x), eps=1e-6)
    ap = AdaIN(3, style_dim=5)
    fct.test_eq(ap.n_style, 0)
    fct.test_eq(ap(x, torch.randn(2, 5)).shape, x.shape)
    fct.test_fail(lambda: a(x, torch.zeros(2, 4)), contains='(B, 6)')


@pytest.mark.parametrize('resample,order,norm', list(itertools.product([None, 'down', 'up'], ['pre', 'post'], ['none', 'instance', 'batch', 'adain'])))
def test_resblock_shapes_sweep(resample, order, norm):
    b = ResBlock(3, 5, resample, norm=norm, order=order)
    x = torch.randn(2, 3, 8, 8)
    y = b(x, torch.randn(2, b.n_style)) if norm == 'adain' else b(x)
    size = {None: 8, 'down': 4, 'up': 16}[resample]
    fct.test_eq(y.shape, (2, 5, size, size))


def test_resblock_adain_style_widths():
    b = ResBlock(4, 6, 'up', norm='adain', order='pre')
    fct.test_eq(b.n_style, 2 * 4 + 2 * 6)
    fct.test_eq(ResBlock(4, 6, norm='adain', order='post').n_style, 2 * 6 + 2 * 6)
    bs = ResBlock(4, 6, norm='adain', style_dim=7)
    fct.test_eq(bs.n_style, 0)
    fct.test_eq(bs(torch.randn(2, 4, 5, 5), torch.randn(2, 7)).shape, (2, 6, 5, 5))
    fct.test_fail(lambda: b(torch.randn(1, 4, 4, 4)), contains='needs a style')


def test_resblock_identity_invariant():
    b = ResBlock(4, norm='none')
    nn.init.zeros_(b.conv2.weight); nn.init.zeros_(b.conv2.bias)
    x = torch.randn(2, 4, 6, 6)
    fct.test_close(b(x), x)


def test_resblock_errors():
    fct.test_fail(lambda: ResBlock(4, resample='sideways'), contains="resample must be None, 'up' or 'down'")
    fct.test_fail(lambda: ResBlock(4, order='middle'), contains="order must be 'pre' or 'post'")
    fct.test_fail(lambda: ResBlock(4, out_norm='adain'), contains="out_norm cannot be 'adain'")
    fct.test_fail(lambda: norm_layer('group', 4), contains='unknown norm')
    fct.test_fail(lambda: act_layer('gelu'), contains='unknown activation')
    fct.test_fail(lambda: ciagan_block('sideways', 4), contains='kind must be one of')


def test_ciagan_blocks_follow_tables():
    d, u, p = ciagan_block('down', 4, 8), ciagan_block('up', 8, 4), ciagan_block('plain', 8)
    fct.test_eq(type(d.norm1), nn.Identity); fct.test_eq(type(d.out_norm), nn.InstanceNorm2d)   # Table 5
    fct.test_eq(type(u.norm1), nn.InstanceNorm2d); fct.test_eq(u.norm1.num_features, 8)         # Table 6: IN on the input
    fct.test_eq(type(u.out_norm), nn.InstanceNorm2d)
    fct.test_eq(type(p.skip), nn.Identity); fct.test_eq(type(p.out_norm), nn.Identity)          # Table 7
    fct.test_eq(d.skip.kernel_size, (1, 1)); fct.test_eq(u.skip.kernel_size, (1, 1))
    fct.test_eq(set(CIAGAN_BLOCKS), {'down', 'up', 'plain'})


def test_ciagan_table2_generator_chain_128px():
    torch.manual_seed(0)
    enc = [ciagan_block('down', a, b) for a, b in [(6, 32), (32, 64), (64, 128), (128, 256), (256, 256)]]
    h, s = _chain(enc, torch.randn(1, 6, 128, 128))
    fct.test_eq(s, [(32, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 4, 4)])
    h = torch.cat([h, torch.randn(1, 256, 4, 4)], 1)
    mid = [conv_block(512, 256, norm='none')] + [ciagan_block('plain', 256) for _ in range(4)]
    dec = [ciagan_block('up', a, b) for a, b in [(256, 256), (256, 128), (128, 64), (64, 32), (32, 16)]] + [conv2d(16, 3)]
    _, s = _chain(mid + dec, h)
    fct.test_eq(s, [(256, 4, 4)] * 5 + [(256, 8, 8), (128, 16, 16), (64, 32, 32), (32, 64, 64), (16, 128, 128), (3, 128, 128)])


def test_ciagan_table3_discriminator_trunk_128px():
    with torch.device('meta'):
        disc = [ciagan_block('down', a, b, sn=True, padding_mode='reflect') for a, b in [(3, 32), (32, 64), (64, 128), (128, 256), (256, 512)]]
        h, s = _chain(disc, torch.empty(2, 3, 128, 128))
        fc = nn.Sequential(nn.Flatten(), linear(512 * 16, 1024), nn.LeakyReLU(0.2), linear(1024, 1))
        fct.test_eq(fc(h).shape, (2, 1))
    fct.test_eq(s, [(32, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)])


def test_attention_distraction_o0_width_is_13056():
    mids = [ResBlock(512, 512, None, norm='adain', order='pre') for _ in range(4)]
    ups = [ResBlock(a, b, 'up', norm='adain', order='pre') for a, b in [(512, 512), (512, 256), (256, 128), (128, 64)]]
    fct.test_eq(sum(b.n_style for b in mids + ups) + AdaIN(64).n_style, 13056)


def test_attention_distraction_encoder_and_discriminator_256px():
    chs = [(64, 128), (128, 256), (256, 512), (512, 512), (512, 512)]
    with torch.device('meta'):
        E = [ResBlock(3, 64, 'down', order='pre')] + [ResBlock(a, b, 'down', order='pre') for a, b in chs] + [SumPool()]
        _, s = _chain(E, torch.empty(1, 3, 256, 256))
        D = [ResBlock(6, 64, 'down', norm='none', order='pre', sn=True)] + \
            [ResBlock(a, b, 'down', norm='none', order='pre', sn=True) for a, b in chs] + \
            [ResBlock(512, norm='none', order='pre', sn=True), SumPool(), linear(512, 1, sn=True)]
        _, sd = _chain(D, torch.empty(1, 6, 256, 256))
    fct.test_eq(s, [(64, 128, 128), (128, 64, 64), (256, 32, 32), (512, 16, 16), (512, 8, 8), (512, 4, 4), (512,)])
    fct.test_eq(sd[-4:], [(512, 4, 4), (512, 4, 4), (512,), (1,)])


def test_sumpool():
    x = torch.arange(24.).view(1, 2, 3, 4)
    fct.test_eq(SumPool()(x), torch.tensor([[66., 210.]]))


def test_resize_conv_is_uniform_transpose_is_not():
    ones = torch.ones(1, 1, 6, 6)
    r = ResizeConv(1, 1, bias=False); t = nn.ConvTranspose2d(1, 1, 3, 2, 1, output_padding=1, bias=False)
    with torch.no_grad():
        r.conv.weight.fill_(1.); t.weight.fill_(1.)
        fct.test_eq(r(ones).unique(), torch.tensor([9.]))
        assert len(t(ones)[0, 0, 2:-2, 2:-2].unique()) == 3
    fct.test_eq(ResizeConv(2, 3, scale=4)(torch.randn(1, 2, 3, 5)).shape, (1, 3, 12, 20))


def test_resnet_generator():
    G = resnet_generator(3 + 16, 3, nf=8)
    y = G(torch.randn(2, 19, 32, 32))
    fct.test_eq(y.shape, (2, 3, 32, 32)); assert y.abs().max() <= 1
    fct.test_eq(sum(isinstance(m, ResBlock) for m in G), 9)
    blocks = [m for m in G if isinstance(m, ResBlock)]
    assert all(isinstance(b.norm1, nn.BatchNorm2d) for b in blocks)
    assert all(b.conv1.padding_mode == 'reflect' for b in blocks)
    fct.test_eq(sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules()), 0)
    fct.test_eq(sum(isinstance(m, ResizeConv) for m in G.modules()), 2)
    fct.test_fail(lambda: resnet_generator(3, up='pixelshuffle'), contains="up must be 'resize' or 'transpose'")


def test_patch_and_multiscale_and_chunk_head():
    fct.test_eq(patch_discriminator(6, nf=8)(torch.randn(1, 6, 256, 256)).shape, (1, 1, 30, 30))
    fct.test_eq(patch_discriminator(3, nf=8, n_layers=2)(torch.randn(1, 3, 64, 64)).shape, (1, 1, 14, 14))
    fct.test_eq(patch_channels(64, 3), 512); fct.test_eq(patch_channels(64, 5), 512)
    outs = MultiscaleDiscriminator(3, n_scales=2, nf=8, sn=True)(torch.randn(2, 3, 64, 64))
    fct.test_eq([tuple(o.shape) for o in outs], [(2, 1, 6, 6), (2, 1, 2, 2)])
    trunk = patch_discriminator(6, nf=8, head=False)
    fct.test_eq(trunk(torch.randn(2, 6, 64, 64)).shape[1], patch_channels(8))
    fct.test_eq(ChunkHead(64, n_bits=32)(torch.randn(2, 64, 3, 3)).shape, (2, 8, 16))
    fct.test_eq(ChunkHead(64, n_bits=8, chunk=2)(torch.randn(2, 64, 3, 3)).shape, (2, 4, 4))
    fct.test_fail(lambda: ChunkHead(64, n_bits=10), contains='not a multiple')


def test_spectral_norm_option_bounds_sigma():
    torch.manual_seed(0)
    c = conv2d(8, 16, sn=True)
    for _ in range(30): c(torch.randn(1, 8, 4, 4))
    fct.test_close(torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2), 1.0, eps=1e-2)
    assert hasattr(ResBlock(4, 8, 'down', sn=True).conv1, 'parametrizations')
    assert not hasattr(ResBlock(4, 8, 'down').conv1, 'parametrizations')


def test_deterministic_init_under_seed():
    torch.manual_seed(3); a = ResBlock(3, 4, 'down')
    torch.manual_seed(3); b = ResBlock(3, 4, 'down')
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(): fct.test_eq(a(x), b(x))


# --- gradcheck in float64 on small inputs -------------------------------------------------------------
def _gc(f, *xs):
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-5)


def test_gradcheck_adain_function():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    _gc(adain, x, s, b)


def test_gradcheck_adain_layer():
    torch.manual_seed(0)
    a = AdaIN(2, style_dim=3).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    st = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    _gc(a, x, st)


@pytest.mark.parametrize('resample,order,norm', [(None, 'post', 'instance'), ('down', 'post', 'none'), ('up', 'pre', 'instance'),
                                                 (None, 'post', 'batch'), ('up', 'pre', 'adain'), ('down', 'pre', 'adain')])
def test_gradcheck_resblocks(resample, order, norm):
    torch.manual_seed(0)
    b = ResBlock(2, 3, resample, norm=norm, order=order, out_norm='instance' if resample else 'none').double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    if norm == 'adain':
        st = torch.randn(2, b.n_style, dtype=torch.float64, requires_grad=True)
        _gc(b, x, st)
    else: _gc(b, x)


def test_gradcheck_ciagan_blocks_with_sn_in_eval():
    torch.manual_seed(0)
    for kind, (ni, nf) in [('down', (2, 3)), ('up', (2, 3)), ('plain', (2, 2))]:
        b = ciagan_block(kind, ni, nf, sn=True, padding_mode='reflect').double().eval()
        _gc(b, torch.randn(1, ni, 4, 4, dtype=torch.float64, requires_grad=True))


def test_gradcheck_resize_conv():
    torch.manual_seed(0)
    r = ResizeConv(2, 2).double()
    _gc(r, torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True))
    rb = ResizeConv(2, 2, mode='bilinear').double()
    _gc(rb, torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True))
