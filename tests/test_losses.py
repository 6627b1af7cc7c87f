"Tests for faceanon.losses: hand-computed values, multiscale lists, R1 double-backward, bit-chunk helpers."
import math
import pytest
import torch
import torch.nn.functional as F
import fastcore.test as fct
from faceanon.losses import (over_scales, lsgan_d_loss, lsgan_g_loss, ns_d_loss, ns_g_loss, hinge_d_loss, hinge_g_loss,
                             GAN_LOSSES, gan_losses, r1_penalty, contrastive_loss, cosine_distance, identity_loss,
                             id_classify_loss, id_confuse_loss, recon_loss, bits_to_chunks, chunks_to_bits, bitchunk_loss,
                             chunk_accuracy, bit_accuracy)

T = torch.tensor


def test_lsgan_hand_values():
    # real (0.5, 1.5): (−0.5)², (0.5)² -> mean 0.25; fake (1, −1): 1, 1 -> mean 1; ½(0.25 + 1)
    fct.test_close(lsgan_d_loss(T([.5, 1.5]), T([1., -1.])), 0.625)
    fct.test_close(lsgan_g_loss(T([1., -1.])), 0.5 * (0 + 4) / 2)
    fct.test_close(lsgan_d_loss(T([1., 1.]), T([0., 0.])), 0.)


def test_ns_hand_values():
    l = T([math.log(3.)])                                   # sigmoid = 3/4
    fct.test_close(ns_g_loss(l), -math.log(.75))
    fct.test_close(ns_d_loss(l, l), -math.log(.75) - math.log(.25))
    # agrees with BCE-with-logits
    r, f = torch.randn(7), torch.randn(7)
    ref = F.binary_cross_entropy_with_logits(r, torch.ones(7)) + F.binary_cross_entropy_with_logits(f, torch.zeros(7))
    fct.test_close(ns_d_loss(r, f), ref, eps=1e-6)


def test_hinge_hand_values():
    fct.test_close(hinge_d_loss(T([0., 3.]), T([-3., 1.])), (1 + 0) / 2 + (0 + 2) / 2)
    fct.test_close(hinge_g_loss(T([0.5, -1.5])), 0.5)


@pytest.mark.parametrize('kind', ['lsgan', 'ns', 'hinge'])
def test_gan_losses_prefer_correct_discriminator(kind):
    d, g = gan_losses(kind)
    good, bad = d(T([3., 3.]), T([-3., -3.])), d(T([-3., -3.]), T([3., 3.]))
    assert good < bad
    assert g(T([3., 3.])) < g(T([-3., -3.]))
    # multiscale list = mean over scales
    fct.test_close(d([T([1.]), T([2.])], [T([0.]), T([-1.])]), (d(T([1.]), T([0.])) + d(T([2.]), T([-1.]))) / 2)
    fct.test_close(g((T([1.]), T([2.]))), (g(T([1.])) + g(T([2.]))) / 2)


def test_gan_losses_errors():
    fct.test_fail(lambda: gan_losses('wgan'), contains='unknown GAN loss')
    fct.test_fail(lambda: lsgan_d_loss([T([1.])], [T([1.]), T([0.])]), contains='same number of scales')
    fct.test_eq(set(GAN_LOSSES), {'lsgan', 'ns', 'hinge'})


def test_over_scales_keeps_name_and_kwargs():
    @over_scales
    def f(x, k=1.): "doc"; return x.sum() * k
    fct.test_eq(f.__name__, 'f'); fct.test_eq(f.__doc__, 'doc')
    fct.test_close(f([T([1.]), T([3.])], k=2.), 4.)


def test_r1_quadratic_discriminator():
    # D(x) = sum x² -> grad 2x -> ||2x||² = 4 * sum x²
    x = T([[1., 2.], [0., 3.]]).requires_grad_(True)
    pen = r1_penalty((x ** 2).sum(1), x)
    fct.test_close(pen, 4 * (5 + 9) / 2)
    # multiscale list: gradients of all outputs add up
    x2 = T([[1., 0.]]).requires_grad_(True)
    fct.test_close(r1_penalty([x2.sum(1), 2 * x2.sum(1)], x2), 9 + 9)


def test_r1_is_differentiable_wrt_weights():
    lin = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad(): lin.weight.copy_(T([[1., -2., 2.]]))
    x = torch.randn(5, 3, requires_grad=True)
    pen = r1_penalty(lin(x), x)
    fct.test_close(pen, 9.)
    pen.backward()
    fct.test_close(lin.weight.grad, 2 * lin.weight.detach())


def test_contrastive_values_and_margin_sweep():
    e1, e2 = torch.zeros(3, 2), T([[0., 1.], [0., 2.], [0., 4.]])     # d = 1, 2, 4
    fct.test_close(contrastive_loss(e1, e2, T([1, 1, 1])), 0.5 * (1 + 4 + 16) / 3)
    for m in [0.5, 1., 3., 5.]:
        exp = 0.5 * sum(max(0., m - d) ** 2 for d in (1, 2, 4)) / 3
        fct.test_close(contrastive_loss(e1, e2, T([0, 0, 0]), margin=m), exp, eps=1e-5)
    fct.test_close(contrastive_loss(e1, e2, T([True, False, True]), margin=3.), 0.5 * (1 + 1 + 16) / 3, eps=1e-5)


def test_identity_losses():
    a = T([[1., 0., 0.]]); b = T([[0., 0., -2.]])
    fct.test_close(cosine_distance(a, b), T([1.]))
    fct.test_close(cosine_distance(a, -a), T([2.]))
    fct.test_close(identity_loss(a, 3 * a, 'same'), 0., eps=1e-6)
    fct.test_close(identity_loss(a, 3 * a, 'different'), 1.)
    fct.test_close(identity_loss(a, 3 * a, 'different', margin=0.3), 0.7)
    fct.test_close(identity_loss(a, -a, 'different'), 0.)
    logits = T([[math.log(2.), 0., 0.]])           # p = (1/2, 1/4, 1/4)
    fct.test_close(id_classify_loss(logits, T([0])), math.log(2))
    fct.test_close(id_classify_loss(logits, T([1])), math.log(4))
    fct.test_close(id_confuse_loss(logits, T([1])), -math.log(4))
    fct.test_close(id_confuse_loss(logits, T([0]), 'ns'), math.log(2))   # -log(1 - 1/2)
    fct.test_fail(lambda: id_confuse_loss(logits, T([0]), 'hinge'), contains="kind must be 'neg_ce' or 'ns'")


def test_id_confuse_ns_is_finite_when_classifier_is_certain():
    l = T([[100., 0.]], requires_grad=True)
    v = id_confuse_loss(l, T([0]), 'ns'); v.backward()
    assert torch.isfinite(v) and torch.isfinite(l.grad).all()


def test_recon_loss():
    x = torch.zeros(2, 3, 2, 2); y = torch.ones(2, 3, 2, 2) * 2
    fct.test_close(recon_loss(x, y), 2.); fct.test_close(recon_loss(x, y, p=2), 4.)
    y2 = y.clone(); y2[1] = 0
    m = torch.zeros(2, 1, 2, 2); m[1] = 1                        # only the sample that matches
    fct.test_close(recon_loss(x, y2, m), 0.)
    m[0, 0, 0, 0] = 0.5                                          # half-weight pixel with error 2
    fct.test_close(recon_loss(x, y2, m), (0.5 * 2 * 3) / (0.5 * 3 + 4 * 3))
    fct.test_close(recon_loss(x, y, None, 1), F.l1_loss(x, y)); fct.test_close(recon_loss(x, y, None, 2), F.mse_loss(x, y))


@pytest.mark.parametrize('n_bits,chunk', [(4, 4), (16, 4), (32, 4), (8, 2), (9, 3)])
def test_bits_chunks_round_trip(n_bits, chunk):
    g = torch.Generator().manual_seed(n_bits)
    b = torch.randint(0, 2, (6, n_bits), generator=g)
    c = bits_to_chunks(b, chunk)
    fct.test_eq(c.shape, (6, n_bits // chunk)); assert c.max() < 2 ** chunk
    fct.test_eq(chunks_to_bits(c, chunk), b)


def test_bits_to_chunks_msb_first():
    fct.test_eq(bits_to_chunks(T([[0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1]])), T([[1, 8, 15]]))
    fct.test_eq(chunks_to_bits(T([[5]])), T([[0, 1, 0, 1]]))


def test_bitchunk_loss_values():
    bits = T([[0, 0, 1, 0]])                 # one chunk, value 2
    logits = torch.zeros(1, 1, 16); logits[0, 0, 2] = math.log(15.)   # p(2) = 15 / (15 + 15) = 1/2
    fct.test_close(bitchunk_loss(logits, bits), math.log(2))
    # sum over chunks, mean over batch
    bits2 = T([[0, 0, 1, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    lg = torch.zeros(2, 2, 16); lg[0, :, 2] = math.log(15.)
    fct.test_close(bitchunk_loss(lg, bits2), (2 * math.log(2) + 2 * math.log(16)) / 2)
    # equals the explicit sum of per-chunk cross-entropies
    lr = torch.randn(3, 4, 16); br = torch.randint(0, 2, (3, 16))
    ref = sum(F.cross_entropy(lr[:, i], bits_to_chunks(br)[:, i], reduction='sum') for i in range(4)) / 3
    fct.test_close(bitchunk_loss(lr, br), ref, eps=1e-5)


def test_bitchunk_loss_gradient_flows_and_errors():
    lg = torch.zeros(2, 4, 16, requires_grad=True)
    bitchunk_loss(lg, torch.ones(2, 16, dtype=torch.long)).backward()
    assert (lg.grad[..., 15] < 0).all() and (lg.grad[..., :15] > 0).all()
    fct.test_fail(lambda: bitchunk_loss(torch.zeros(2, 3, 16), torch.ones(2, 16)), contains='expected (B, 4, 16)')
    fct.test_fail(lambda: bits_to_chunks(T([[0, 1, -1, 0]])), contains='bits must be 0/1')


def test_accuracies():
    bits = T([[1, 0, 0, 0, 0, 1, 1, 1]])                 # chunks 8, 7
    lg = torch.zeros(1, 2, 16); lg[0, 0, 8] = 1; lg[0, 1, 6] = 1      # second chunk wrong by one bit (0110)
    fct.test_eq(chunk_accuracy(lg, bits), 0.5)
    fct.test_eq(bit_accuracy(lg, bits), 7 / 8)
    lg[0, 1, 6] = 0; lg[0, 1, 8] = 1                      # 1000 vs 0111: all four bits wrong
    fct.test_eq(bit_accuracy(lg, bits), 4 / 8)
