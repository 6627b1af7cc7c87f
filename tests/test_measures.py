"Measures: closed-form Fréchet distances, SSIM against scikit-image, KID against a loop, privacy/utility/temporal numbers."
import numpy as np
import pytest
import torch
import fastcore.test as fct
from skimage.metrics import structural_similarity, peak_signal_noise_ratio
from faceanon.measures import (frechet_distance, frechet_distance_features, frechet_terms, fd_difference, gaussian_stats, kid, mmd2_unbiased, ssim, psnr,
                              l1_error, l2_error, reconstruction_metrics, lpips_distance, get_features, fd_name, InceptionFeatures,
                              reid_rate, verification_rate, identity_distance, diversity, flicker, identity_drift, landmark_nme,
                              measure_speed, realism)


def rel(a, b): return abs(a / b - 1)


@pytest.mark.parametrize('d', [1, 2, 5, 32])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_frechet_closed_form_commuting(d, seed):
    rng = np.random.default_rng(seed)
    R = np.linalg.qr(rng.normal(size=(d, d)))[0]
    l1, l2 = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    exact = ((m1 - m2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert rel(frechet_distance(m1, R * l1 @ R.T, m2, R * l2 @ R.T), exact) < 1e-4


@pytest.mark.parametrize('scale', [1e-3, 1.0, 1e3])
def test_frechet_scalar_and_scaling(scale):
    s1, s2 = 2.0 * scale, 3.5 * scale                                    # standard deviations
    exact = (scale * 1.0) ** 2 + (s1 - s2) ** 2
    assert rel(frechet_distance([0.], [[s1 ** 2]], [scale], [[s2 ** 2]]), exact) < 1e-4
    # isotropic Gaussians in 10-D: d * (s1 - s2)^2
    assert rel(frechet_distance(np.zeros(10), np.eye(10) * s1 ** 2, np.zeros(10), np.eye(10) * s2 ** 2), 10 * (s1 - s2) ** 2) < 1e-4


def test_frechet_float64_and_torch_inputs():
    rng = np.random.default_rng(3)
    a = torch.tensor(rng.normal(size=(500, 4)), dtype=torch.float32)
    b = a * 2 + 1
    mu, S = gaussian_stats(a)
    assert mu.dtype == np.float64
    # exact for the fitted Gaussians: b's mean is 2*mu+1 and covariance 4*S (commutes with S)
    exact = ((mu - (2 * mu + 1)) ** 2).sum() + np.trace(S)                # Tr(S + 4S - 2*2S) = Tr(S)
    assert rel(frechet_distance_features(a, b), exact) < 1e-4
    fct.test_close(frechet_distance_features(a, a), 0, eps=1e-8)


@pytest.mark.parametrize('n1,n2,d', [(5, 9, 16), (30, 30, 64), (3, 3, 2), (40, 10, 8)])
def test_frechet_gram_route_equals_covariance_route(n1, n2, d):
    rng = np.random.default_rng(n1 * d)
    x, y = rng.normal(size=(n1, d)), rng.normal(0.5, 2, size=(n2, d)) @ rng.normal(size=(d, d))
    cov_route = frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    assert rel(frechet_distance_features(x, y), cov_route) < 1e-6


def test_frechet_sample_estimate_converges():
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, size=(20000, 3)), rng.normal(1, 2, size=(20000, 3))
    assert rel(frechet_distance_features(x, y), 3 * 1 + 3 * 1) < 0.05


@pytest.mark.parametrize('n1,n2,d', [(30, 40, 64), (500, 300, 6)])
def test_frechet_terms_sum_to_fd_and_mean_term_meets_its_floor(n1, n2, d):
    rng = np.random.default_rng(d)
    x, y = rng.normal(size=(n1, d)), rng.normal(0.5, 2, size=(n2, d))
    t = frechet_terms(x, y)
    fct.test_close(t['fd'], frechet_distance_features(x, y), eps=1e-12)
    fct.test_close(t['mean'] + t['trace_1'] + t['trace_2'] - t['cross'], t['fd'], eps=1e-9)
    expected = d * 0.25 + d / n1 + 4 * d / n2                         # the true shift (0.5 per dimension) squared, plus the floor
    fct.test_close(t['mean'], expected, eps=0.25 * expected)
    fct.test_close(t['floor'], d / n1 + 4 * d / n2, eps=0.2 * (d / n1 + 4 * d / n2))
    fct.test_close(t['trace_2'] / t['trace_1'], 4, eps=1)
    # one distribution on both sides: the mean term averages to its floor tr1/n1 + tr2/n2, not to 0
    same = [frechet_terms(rng.normal(size=(n1, d)), rng.normal(size=(n2, d))) for _ in range(100)]
    ratio = np.mean([s['mean'] for s in same]) / np.mean([s['floor'] for s in same])
    assert 0.85 < ratio < 1.15, ratio
    fct.test_close(same[0]['floor'], d / n1 + d / n2, eps=0.3 * (d / n1 + d / n2))

def test_fd_difference_is_paired_and_separates_only_real_shifts():
    rng = np.random.default_rng(9)
    ref, inp = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    shifted = fd_difference(ref, inp, inp + 1.0, n_boot=200)
    assert shifted['hi'] < 0 and shifted['p_below_0'] == 1, shifted
    fct.test_close(shifted['diff'], frechet_distance_features(ref, inp) - frechet_distance_features(ref, inp + 1.0), eps=1e-12)
    itself = fd_difference(ref, inp, inp.copy(), n_boot=50)              # a method against itself: every draw's difference is 0
    fct.test_eq((itself['lo'], itself['hi'], itself['p_below_0']), (0., 0., 0.))
    with pytest.raises(ValueError, match='paired'): fd_difference(ref, inp, inp[:30])

def test_kid_matches_loop_and_is_unbiased():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 4)), rng.normal(1, 1, size=(8, 4))
    k = lambda a, b: (a @ b / 4 + 1) ** 3
    loop = (sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
            + sum(k(y[i], y[j]) for i in range(8) for j in range(8) if i != j) / 56
            - 2 * sum(k(a, b) for a in x for b in y) / 48)
    fct.test_close(mmd2_unbiased(x, y), loop, eps=1e-10)
    same = [mmd2_unbiased(rng.normal(size=(20, 4)), rng.normal(size=(20, 4))) for _ in range(300)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(300)
    m, s = kid(rng.normal(size=(100, 4)), rng.normal(1, 1, size=(100, 4)), n_subsets=10, subset_size=50)
    assert m > 5 * s > 0
    fct.test_eq(kid(x, y, seed=1), kid(x, y, seed=1))
    fct.test_fail(lambda: kid(x[:1], y), contains='at least 2 samples')


@pytest.mark.parametrize('shape', [(11, 11, 3), (32, 40, 3), (64, 64, 1)])
@pytest.mark.parametrize('noise', [5, 30, 80])
def test_ssim_matches_skimage(shape, noise):
    rng = np.random.default_rng(noise)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(a + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    ta, tb = [torch.from_numpy(i).permute(2, 0, 1)[None].double() for i in (a, b)]
    fct.test_close(ssim(ta, tb, data_range=255).item(), ref, eps=1e-3)
    fct.test_close(ssim(ta / 255, tb / 255, data_range=1).item(), ref, eps=1e-3)
    fct.test_close(psnr(ta, tb, 255).item(), peak_signal_noise_ratio(a, b, data_range=255), eps=1e-6)


def test_ssim_float_images_and_batch():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 1, (2, 24, 24, 3)), rng.uniform(0, 1, (2, 24, 24, 3))
    got = ssim(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2))
    fct.test_eq(got.shape, (2,))
    for i in range(2):
        ref = structural_similarity(a[i], b[i], channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
        fct.test_close(got[i].item(), ref, eps=1e-3)


def test_reconstruction_metrics_scale():
    x = torch.zeros(2, 3, 16, 16)
    y = x + 0.2                                                          # 0.1 on the [0, 1] scale
    r = reconstruction_metrics(y, x)
    fct.test_close(r['L1'], 0.1, eps=1e-6); fct.test_close(r['L2'], 0.01, eps=1e-6); fct.test_close(r['PSNR'], 20, eps=1e-4)
    fct.test_close(l1_error(y, x, 2.0), torch.full((2,), 0.1)); fct.test_close(l2_error(y, x, 2.0), torch.full((2,), 0.01))
    fct.test_close(reconstruction_metrics(x, x)['SSIM'], 1, eps=1e-9)


def test_lpips_clear_message():
    try:
        import lpips  # noqa: F401
    except ImportError:
        fct.test_fail(lambda: lpips_distance(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)), contains='lpips')
        return
    from pathlib import Path
    if not (Path(torch.hub.get_dir()) / 'checkpoints' / 'vgg16-397923af.pth').exists():
        fct.test_fail(lambda: lpips_distance(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), net='vgg'), contains='never downloads')


def test_inception_missing_and_nonstandard_weights(tmp_path):
    fct.test_fail(lambda: get_features('inception', weights_path=tmp_path / 'nope.pth'), contains='faceanon never downloads')
    from torchvision.models import inception_v3
    torch.manual_seed(0)
    p = tmp_path / 'random_inception.pth'
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), p)
    f = InceptionFeatures(p)
    fct.test_eq(fd_name(f), 'FD-Inception')                              # not FID: not the standard weights
    fct.test_eq(f(torch.zeros(1, 3, 32, 32)).shape, (1, 2048))


def test_realism_onet_names_and_orders():
    torch.manual_seed(0)
    real = torch.rand(24, 3, 48, 48) * 2 - 1
    r_same = realism(real, real.flip(-1), 'onet', kid_subset=24)
    r_far = realism(real, torch.zeros_like(real), 'onet', kid_subset=24)
    fct.test_eq(sorted(r_same), ['FD-ONet', 'KID', 'KID_std'])
    assert r_far['FD-ONet'] > r_same['FD-ONet'] and r_far['KID'] > r_same['KID']


def test_privacy_rates():
    torch.manual_seed(0)
    n_ids, D = 10, 16
    centres = torch.randn(n_ids, D) * 5
    gallery = centres.repeat(3, 1) + torch.randn(3 * n_ids, D) * 0.3
    gids = torch.arange(n_ids).repeat(3)
    src = centres + torch.randn(n_ids, D) * 0.3
    fct.test_eq(reid_rate(src, torch.arange(n_ids), gallery, gids), 1.0)
    shuffled = src[torch.roll(torch.arange(n_ids), 1)]                   # everybody becomes the next person
    fct.test_eq(reid_rate(shuffled, torch.arange(n_ids), gallery, gids), 0.0)
    fct.test_eq(verification_rate(src, src, 0.1), 1.0)
    fct.test_eq(verification_rate(shuffled, src, 1.0), 0.0)
    fct.test_close(identity_distance(src + 1, src), 4.0, eps=1e-5)       # sqrt(16)


def test_diversity_drift_flicker_nme():
    e = torch.zeros(2, 4, 3); e[1, :, 0] = torch.arange(4.)                 # face 0 collapsed; face 1 on a line
    fct.test_close(diversity(e), (0 + (1 + 2 + 3 + 1 + 2 + 1) / 6) / 2)
    fct.test_close(identity_drift(torch.arange(5.)[:, None] * 2), 2.0)
    clip = torch.zeros(4, 3, 8, 8); clip[1] = 1; clip[3] = 1               # alternate -> |diff| 1 = 0.5 on [0,1]
    fct.test_close(flicker(clip), 0.5)
    ref = torch.tensor([[[0., 0], [10, 0], [5, 5], [2, 8], [8, 8]]])
    fct.test_close(landmark_nme(ref + torch.tensor([3., 4.]), ref), torch.tensor([0.5]))


def test_measure_speed_rows():
    rows = measure_speed(lambda x: x * 2, lambda bs: torch.zeros(bs, 3, 8, 8), (1, 2), repeats=1)
    fct.test_eq([r['batch'] for r in rows], [1, 2])
    for r in rows:
        fct.test_close(r['faces_per_s'] * r['ms_per_face'], 1000, eps=1e-6)
        assert r['rss_peak_mb'] > 10 and r['cuda_peak_mb'] is None
