"Alignment, regions and paste-back tests."
import numpy as np
import pytest
from skimage.data import astronaut
import fastcore.test as fct
import torch
torch.set_num_threads(1)   # shared 2-core CI: oversubscribed threads make MTCNN ~20x slower
from faceanon.detect import Face, detect_faces
from faceanon.align import (template5, similarity_transform, invert_affine, apply_affine, warp_affine, align_face,
                            landmark_regions, ellipse_mask, feather_mask, warped_alpha, paste_back, face_landmarks5)

AST = astronaut()
RNG = np.random.default_rng(0)

@pytest.mark.parametrize('seed', range(10))
def test_similarity_recovers_known_transform(seed):
    r = np.random.default_rng(seed)
    src = r.normal(size=(5, 2)) * 30 + 100
    th, s, t = r.uniform(-np.pi, np.pi), r.uniform(0.1, 5), r.normal(size=2) * 50
    M = np.c_[s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]), t]
    fct.test_close(similarity_transform(src, apply_affine(M, src)), M, eps=1e-8)
    fct.test_close(invert_affine(M) @ np.r_[M, [[0, 0, 1]]], np.eye(3)[:2], eps=1e-10)

def test_similarity_is_least_squares():
    src, dst = RNG.normal(size=(5, 2)), RNG.normal(size=(5, 2))
    M = similarity_transform(src, dst)
    err = lambda M: ((apply_affine(M, src) - dst) ** 2).sum()
    for _ in range(50):                                       # no nearby similarity does better
        d = RNG.normal(size=4) * 1e-3; a, b = M[0, 0] + d[0], M[1, 0] + d[1]
        assert err(np.array([[a, -b, M[0, 2] + d[2]], [b, a, M[1, 2] + d[3]]])) >= err(M) - 1e-12

@pytest.mark.parametrize('size', [64, 128, 256])
def test_align_round_trip_and_template(size):
    f = detect_faces(AST)[0]
    a = align_face(AST, f, size)
    fct.test_eq(a.image.shape, (size, size, 3)); fct.test_eq(a.mask.dtype, np.float32)
    fct.test_close(apply_affine(invert_affine(a.M), a.landmarks5), f.landmarks5, eps=1e-4)
    assert np.abs(a.landmarks5 - template5(size)).max() < 0.05 * size

def test_box_only_fallback():
    f = detect_faces(AST)[0]
    box_only = Face(f.box, f.score, None, None, 'haar')
    a = align_face(AST, box_only, 128)
    fct.test_eq(a.landmarks68, None)
    assert a.mask.sum() > 0.1 * 128 * 128
    fct.test_close(face_landmarks5(box_only)[:, 0].mean(), (f.box[0] + f.box[2]) / 2, eps=1e-3)

def test_warp_matches_integer_shift():
    x = RNG.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    fct.test_close(warp_affine(x, np.array([[1., 0, -3], [0, 1, -4]]), (10, 12)), x[4:14, 3:15], eps=1e-3)

def test_regions_inside_face():
    f = detect_faces(AST, 'dlib')[0]
    a = align_face(AST, f, 128)
    r = landmark_regions(a.landmarks68, 128)
    for k in ['eyes', 'brows', 'nose', 'lips']:
        assert r[k].sum() > 10 and (r[k] & ~r['face']).sum() <= 0.05 * r[k].sum(), k
    assert (r['eyes'] & r['lips']).sum() == 0
    fct.test_fail(lambda: landmark_regions(np.zeros((5, 2)), 64), contains='expected (68, 2)')

def test_ellipse_symmetric():
    m = ellipse_mask(template5(64), 64)
    fct.test_eq(m, m[:, ::-1])

def test_feather_zero_at_border():
    a = feather_mask(np.ones((64, 64), np.float32), 0.05)
    fct.test_eq(a[0].max(), 0); fct.test_eq(a[:, -1].max(), 0)
    assert 0.9 < a[32, 32] <= 1

@pytest.mark.parametrize('color_match', [False, True])
def test_paste_back_exact_outside(color_match):
    f = detect_faces(AST)[0]; a = align_face(AST, f, 128)
    crop = RNG.integers(0, 256, a.image.shape).astype(np.uint8)
    out = paste_back(AST, crop, a.M, a.mask, color_match=color_match)
    alpha, (x0, y0, x1, y1) = warped_alpha(AST.shape, a.M, a.mask)
    outside = np.ones(AST.shape[:2], bool); outside[y0:y1, x0:x1] = alpha == 0
    fct.test_eq(out[outside], AST[outside])
    assert (out[~outside] != AST[~outside]).mean() > 0.5

def test_paste_identity_crop_is_close():
    f = detect_faces(AST)[0]; a = align_face(AST, f, 256)
    out = paste_back(AST, a.image, a.M, a.mask, color_match=False)
    assert np.abs(out.astype(int) - AST).mean() < 0.5

@pytest.mark.parametrize('color_match', [False, True])
def test_paste_back_out_in_place(color_match):
    f = detect_faces(AST)[0]; a = align_face(AST, f, 128)
    crop = RNG.integers(0, 256, a.image.shape).astype(np.uint8)
    ref = paste_back(AST, crop, a.M, a.mask, color_match=color_match)
    buf = AST.copy()
    res = paste_back(buf, crop, a.M, a.mask, color_match=color_match, out=buf)
    assert res is buf                                          # in place, the same object returned
    fct.test_eq(buf, ref)                                      # bit-identical to the copying call
    assert (buf != AST).any()
    other = np.full_like(AST, 7)                               # out need not be img: only pixels with weight > 0 are written
    paste_back(AST, crop, a.M, a.mask, color_match=color_match, out=other)
    alpha, (x0, y0, x1, y1) = warped_alpha(AST.shape, a.M, a.mask)
    written = np.zeros(AST.shape[:2], bool); written[y0:y1, x0:x1] = alpha > 0
    fct.test_eq(other[written], ref[written]); assert (other[~written] == 7).all()
    with pytest.raises(ValueError, match='out must be'): paste_back(AST, crop, a.M, a.mask, out=AST[:10].copy())
    with pytest.raises(ValueError, match='out must be'): paste_back(AST, crop, a.M, a.mask, out=AST.astype(np.float32))

def test_paste_off_image_face():
    img = np.zeros((50, 60, 3), np.uint8)
    M = np.array([[1., 0, 500], [0, 1, 500]])                 # the crop maps far outside the image
    fct.test_eq(paste_back(img, np.full((64, 64, 3), 255, np.uint8), M, np.ones((64, 64))), img)
    buf = img.copy()
    assert paste_back(img, np.full((64, 64, 3), 255, np.uint8), M, np.ones((64, 64)), out=buf) is buf
    fct.test_eq(buf, img)
