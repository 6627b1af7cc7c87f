"Identity networks: FaceNet loader, Recognizer contract, SynthFaces training, cache, dlib adapter, CIAGAN siamese net."
import io, os
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import fastcore.test as fct
from facenet_pytorch import InceptionResnetV1
from faceanon.core import to_tensor
from faceanon.identity import (FACENET_FILES, FaceNet, FaceNetConfig, FaceNetRecognizer, SiameseConfig, SiameseNet,
                               cached_recognizer, calibrate_threshold, cosine_distance, euclidean_distance, load_facenet,
                               load_recognizer, recognizer_cache_path, sample_pairs, save_recognizer, stack_faces,
                               train_recognizer)
from faceanon.data.synthetic import SynthFaces

torch.set_num_threads(min(2, torch.get_num_threads()))

def test_loader_names_the_missing_file_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    for name, fname in FACENET_FILES.items():
        fct.test_fail(lambda: load_facenet(name), contains=str(tmp_path / 'checkpoints' / fname))
    assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())

def test_loader_round_trip_casia_head(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    torch.manual_seed(0)
    ref = InceptionResnetV1(classify=True, num_classes=10575).eval()       # CASIA-WebFace head size
    (tmp_path / 'checkpoints').mkdir()
    torch.save(ref.state_dict(), tmp_path / 'checkpoints' / FACENET_FILES['casia-webface'])
    m = load_facenet('casia-webface').eval()
    fct.test_eq(m.num_classes, 10575)
    x = torch.rand(2, 3, 160, 160) * 2 - 1
    with torch.no_grad(): fct.test_close(m.classify(x), ref(x * 127.5 / 128), eps=1e-4)
    ref.classify = False                                                   # facenet-pytorch's own embedding mode
    with torch.no_grad(): fct.test_close(m(x), ref(x * 127.5 / 128), eps=1e-4)
    fct.test_eq(load_facenet(tmp_path / 'checkpoints' / FACENET_FILES['casia-webface'], num_classes=7).num_classes, 7)

@pytest.mark.parametrize('size', [64, 80, 112])
def test_facenet_shapes_and_unit_embeddings(size):
    m = FaceNet(num_classes=3, input_size=80, blocks=(1, 1, 1)).eval()
    x = torch.rand(3, 3, size, size) * 2 - 1
    with torch.no_grad():
        fct.test_eq(m(x).shape, (3, 512)); fct.test_eq(m.classify(x).shape, (3, 3))
        fct.test_close(m(x).norm(dim=1), torch.ones(3), eps=1e-5)

def test_distances_broadcast_and_agree():
    a = F.normalize(torch.randn(5, 16), dim=1); b = F.normalize(torch.randn(7, 16), dim=1)
    D = cosine_distance(a[:, None], b[None])
    fct.test_eq(D.shape, (5, 7))
    fct.test_close(D, 1 - a @ b.T, eps=1e-5)
    fct.test_close(2 * D, euclidean_distance(a[:, None], b[None]) ** 2, eps=1e-4)

def test_calibrate_threshold_separates_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    ids = torch.arange(4).repeat_interleave(5)
    emb = F.normalize(centres[ids] + 0.05 * torch.randn(20, 8, generator=g), dim=1)
    t, bal = calibrate_threshold(emb, ids)
    fct.test_eq(bal, 1.0)
    same = ids[:, None] == ids[None]; D = cosine_distance(emb[:, None], emb[None])
    assert D[same].max() < t < D[~same].min()

def test_recognizer_save_load_round_trip(tmp_path):
    rec = FaceNetRecognizer(FaceNet(num_classes=4, input_size=80, blocks=(1, 2, 1)), threshold=0.37, info=dict(heldout_acc=0.5))
    p = save_recognizer(rec, tmp_path / 'r.safetensors')
    back = load_recognizer(p)
    fct.test_eq(back.threshold, 0.37); fct.test_eq(back.info, dict(heldout_acc=0.5)); fct.test_eq(back.model.num_classes, 4)
    fct.test_eq(back.model.blocks, (1, 2, 1))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    fct.test_close(back.embed(x), rec.embed(x), eps=1e-6)

def test_short_training_ranks_same_identity_closer(tmp_path, monkeypatch):
    monkeypatch.setenv('FACEANON_CACHE', str(tmp_path))
    cfg = FaceNetConfig(n_ids=4, per_id=4, epochs=3, batch_size=8, blocks=(1, 1, 1))
    rec = cached_recognizer(cfg)
    fct.test_eq(recognizer_cache_path(cfg).parent, tmp_path)
    assert recognizer_cache_path(cfg).exists()
    x, y = stack_faces(SynthFaces(4, 4, 64, 'heldout'))
    e = rec.embed(x)
    D = rec.distance(e[:, None], e[None])
    same, off = y[:, None] == y[None], ~torch.eye(len(y), dtype=bool)
    d_same, d_diff = D[same & off].mean().item(), D[~same].mean().item()
    assert d_same < d_diff, (d_same, d_diff)
    assert 0 <= rec.info['heldout_acc'] <= 1 and np.isfinite(rec.info['losses']).all(), rec.info
    again = cached_recognizer(cfg)                                   # read from the cache, same numbers
    fct.test_close(again.embed(x[:3]), e[:3], eps=1e-6)

def test_siamese_table3_shapes_and_discriminator():
    net = SiameseNet()
    h = torch.randn(1, 3, 128, 128)
    shapes = []
    for blk in net.body: h = blk(h); shapes.append(tuple(h.shape[1:]))
    fct.test_eq(shapes, [(32, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)])
    fct.test_close(net(torch.randn(2, 3, 128, 128)).norm(dim=1), torch.ones(2), eps=1e-5)
    fct.test_eq(SiameseNet(SiameseConfig(out_dim=1, normalize=False))(torch.randn(2, 3, 128, 128)).shape, (2, 1))
    fct.test_fail(lambda: SiameseNet(SiameseConfig(img_size=48)), contains='multiple of 32')

def test_siamese_contrastive_loss_falls():
    from faceanon.losses import contrastive_loss
    torch.manual_seed(0)
    net = SiameseNet(SiameseConfig(img_size=32, widths=(8, 16, 32), hidden=64, out_dim=16))
    x, y = stack_faces(SynthFaces(4, 4, 32, 'train'))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g, losses = torch.Generator().manual_seed(0), []
    i, j, same = sample_pairs(y, 16, g)
    fct.test_eq(same.sum().item(), 8)
    for _ in range(15):
        loss = contrastive_loss(net(x[i]), net(x[j]), same)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses

def _astronaut_face():
    from PIL import Image
    from skimage.data import astronaut
    from faceanon.identity import DlibRecognizer
    dl = DlibRecognizer()
    ast = astronaut()
    r = max(dl.det(ast, 1), key=lambda r: r.area())
    cx, cy, s = r.center().x, r.center().y, r.width() * 1.6
    box = (round(cx - s / 2), round(cy - s / 2), round(cx + s / 2), round(cy + s / 2))
    return dl, np.array(Image.fromarray(ast).crop(box).resize((128, 128), Image.BICUBIC))

def test_dlib_adapter_on_astronaut():
    try:
        import dlib, face_recognition_models  # noqa: F401
    except ImportError as e:
        pytest.skip(f"dlib adapter not tested: {e.name} is not installed (pip install 'faceanon[eval]')")
    from PIL import Image, ImageFilter
    dl, face = _astronaut_face()
    b = io.BytesIO(); Image.fromarray(face).save(b, 'JPEG', quality=15); jpg = np.array(Image.open(b))
    blurred = np.array(Image.fromarray(face).filter(ImageFilter.GaussianBlur(8)))
    masked = face.copy(); masked[30:100, 30:100] = 128
    d = dl.compare(to_tensor([face] * 5), to_tensor([face[:, ::-1], jpg, (face * 0.4).astype(np.uint8), blurred, masked]))
    fct.test_eq(d.shape, (5,)); fct.test_eq(dl.threshold, 0.6)
    assert (d[:3] < 0.6).all() and (d[3:] > 0.6).all(), d
    fct.test_eq(dl.same(to_tensor([face]), to_tensor([face[:, ::-1]])).tolist(), [True])


def test_cam_layer_and_distraction_head_reproduce_the_forward():
    from faceanon.identity import facenet_cam_layer, facenet_distraction_of
    net = FaceNet(3, 80, blocks=(1, 1, 1)).eval()
    fct.test_eq(facenet_cam_layer(net), 'repeat_2')                     # block8 is 1x1 at 80 px
    fct.test_eq(facenet_cam_layer(FaceNet(3, 160, blocks=(1, 1, 1))), 'block8')
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    o = facenet_distraction_of(net, strength=0.)(x, cls=torch.tensor([0, 1, 2]))
    fct.test_close(o.f_hat, net.features(x).detach(), eps=1e-4)        # feature head = the rest of the network
    fct.test_eq(o.acts.shape, (3, 896, 3, 3))
    o1 = facenet_distraction_of(net, strength=1.)(x, cls=torch.tensor([0, 1, 2]))
    assert (o1.acts_hat <= o1.acts.abs() + 1e-6).all() and not torch.equal(o1.f_hat, o1.f)
    with pytest.raises(ValueError, match='class scores'): facenet_distraction_of(FaceNet(None, 80, blocks=(1, 1, 1)))


def test_face_crops_for_facenet():
    from faceanon.identity import FaceNetConfig, synth_face_data, crop_boxes, recognizer_cache_path
    crops = synth_face_data(FaceNetConfig(n_ids=3, per_id=2, img_size=128, crop=0., hair_per_image=True))
    frames = synth_face_data(FaceNetConfig(n_ids=3, per_id=2))
    fct.test_eq(crops['image'].shape, (6, 3, 80, 80)); fct.test_eq(crops['face'].shape, (6, 80, 80))
    assert crops['face'].float().mean() > 0.5 and frames['face'].float().mean() < 0.3   # the face fills the crop
    x = frames['image']
    fct.test_close(crop_boxes(x, torch.tensor([[0., 0., 64., 64.]]).expand(6, 4)), x, eps=1e-4)        # whole-image box: the image
    half = crop_boxes(x, torch.tensor([[16., 16., 48., 48.]]).expand(6, 4), size=32)
    fct.test_close(half, x[..., 16:48, 16:48], eps=1e-4)                                                  # a box at scale 1: a plain slice
    # configs cached before `crop` and `hair_per_image` existed keep their cache file
    fct.test_eq(recognizer_cache_path(FaceNetConfig(), '/c'), recognizer_cache_path(FaceNetConfig(crop=None, hair_per_image=False), '/c'))
    assert recognizer_cache_path(FaceNetConfig(crop=0.), '/c') != recognizer_cache_path(FaceNetConfig(), '/c')
