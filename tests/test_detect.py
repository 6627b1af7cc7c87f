"Detector tests on real photos (astronaut, LFW crops, optional face-api group photos)."
import os
from pathlib import Path
import numpy as np
import pytest
import skimage
from PIL import Image
from skimage.data import astronaut
import fastcore.test as fct
import torch
torch.set_num_threads(1)   # shared 2-core CI: oversubscribed threads make MTCNN ~20x slower
from faceanon.detect import Face, box_iou, merge_faces, detect_faces, get_detector, landmarks5_from_68, draw_faces

AST = astronaut()
DEMO = Path(os.environ.get('FACEANON_FACEAPI_DIR', '/tmp/faceapi/package/demo'))

@pytest.mark.parametrize('name', ['mtcnn', 'dlib', 'haar', 'ensemble'])
def test_astronaut_one_face(name):
    fs = detect_faces(AST, name)
    fct.test_eq(len(fs), 1)
    ref = detect_faces(AST, 'mtcnn')[0]
    assert box_iou(fs[0].box, ref.box)[0, 0] > 0.6
    assert fs[0].box[0] > 150 and fs[0].box[2] < 290          # the face is at x ~ 180..270

def test_mtcnn_score_and_landmarks():
    f = detect_faces(AST)[0]
    assert f.score > 0.999 and f.detector == 'mtcnn'
    l = f.landmarks5
    assert l[0, 0] < l[1, 0] and l[3, 0] < l[4, 0]              # image-left first
    assert l[0, 1] < l[2, 1] < l[3, 1]                          # eyes above nose above mouth

def test_dlib_68_consistent_with_5():
    f = detect_faces(AST, 'dlib')[0]
    fct.test_close(landmarks5_from_68(f.landmarks68), f.landmarks5, eps=1e-5)

def test_no_face_in_blank_and_noise():
    for img in [np.zeros((256, 256, 3), np.uint8), np.random.default_rng(0).integers(0, 256, (256, 256, 3)).astype(np.uint8)]:
        fct.test_eq(detect_faces(img, 'ensemble'), [])

def test_downscale_scales_back():
    small = detect_faces(AST, 'mtcnn', max_side=256)
    fct.test_eq(len(small), 1)
    fct.test_close(small[0].box, detect_faces(AST)[0].box, eps=6)

def test_flip_moves_face():
    f, g = detect_faces(AST)[0], detect_faces(np.ascontiguousarray(AST[:, ::-1]))[0]
    fct.test_close(g.box[[2, 0]], 511 - f.box[[0, 2]], eps=4)

def test_detector_cached_and_errors():
    assert get_detector('mtcnn') is get_detector('mtcnn')
    assert get_detector('mtcnn', min_score=0.5) is not get_detector('mtcnn')
    fct.test_fail(lambda: get_detector('nope'), contains='unknown detector')

def test_merge_iou_threshold():
    a, b = Face([0, 0, 10, 10], 1, None, None, 'mtcnn'), Face([5, 0, 15, 10], 1, None, None, 'dlib')   # IoU 1/3
    fct.test_eq(len(merge_faces([a, b], ['mtcnn', 'dlib'], iou=0.3)), 1)
    fct.test_eq(len(merge_faces([a, b], ['mtcnn', 'dlib'], iou=0.4)), 2)

def test_lfw_detection_rate():
    lfw = np.load(os.path.join(os.path.dirname(skimage.data.__file__), 'lfw_subset.npy'))
    def prep(a):
        im = np.asarray(Image.fromarray(np.round(a * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC))
        return np.repeat(np.pad(im, 50, mode='edge')[..., None], 3, -1)
    idx = list(range(0, 100, 5)) + list(range(100, 200, 5))        # 20 faces, 20 non-faces
    hits = {n: np.array([len(detect_faces(prep(lfw[i]), n)) > 0 for i in idx]) for n in ['mtcnn', 'ensemble']}
    assert hits['mtcnn'][:20].sum() >= 16, hits['mtcnn'][:20].sum()
    assert hits['ensemble'][:20].sum() >= hits['mtcnn'][:20].sum()
    assert hits['mtcnn'][20:].sum() <= 4, hits['mtcnn'][20:].sum()

def test_draw_faces_changes_only_copy():
    f = detect_faces(AST)
    out = draw_faces(AST, f)
    assert (out != AST).any() and out.shape == AST.shape and AST is not out

@pytest.mark.skipif(not (DEMO / 'sample3.jpg').exists(), reason=f"face-api group photos absent from {DEMO}: cd /tmp && npm pack @vladmandic/face-api && mkdir -p faceapi && tar xzf vladmandic-face-api-*.tgz -C faceapi")
def test_group_photo_ensemble_not_worse():
    im = Image.open(DEMO / 'sample3.jpg').convert('RGB'); im.thumbnail((768, 768), Image.BOX); im = np.asarray(im)
    n = {d: len(detect_faces(im, d)) for d in ['mtcnn', 'dlib', 'ensemble']}
    assert n['ensemble'] >= max(n['mtcnn'], n['dlib'])
    fct.test_eq(n['ensemble'], 3)                                   # three people, counted by eye
