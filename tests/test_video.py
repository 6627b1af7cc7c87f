"Video: no leaked face-frame on a real moving-camera clip, the CLI on a mixed folder, the decoupled method's frame step."
import numpy as np, pytest, torch
from faceanon.video import (VideoOptions, anonymize_video, leaks, photo_clip, probe_video, read_frames, synth_track_clip, write_video)
from faceanon.detect import detect_faces
from faceanon.cli import main
from faceanon.data.photos import face_api_samples

def _inside(b, W, H, share=0.9):
    "A judge's face counts where it is (nearly) all in the frame, as the clip's own truth does."
    return (np.minimum(b[2:], [W, H]) - np.maximum(b[:2], 0)).clip(0).prod() >= share * (b[2:] - b[:2]).prod()

@pytest.fixture(scope='module')
def real_clip(tmp_path_factory):
    "A face-api group photo filmed by a panning, zooming, turning camera: 48 frames of 640x360 with the true face boxes."
    photos = face_api_samples()
    if not photos: pytest.skip('face-api sample photos not in the cache (make photos)')
    from faceanon.pipeline import read_image
    photo = read_image(photos[1])
    faces = detect_faces(photo, 'ensemble')
    frames, truth = photo_clip(photo, [f.box for f in faces], 48, (640, 360))
    path = write_video(tmp_path_factory.mktemp('clip') / 'pan.mp4', frames, 25)
    ins = read_frames(path)
    judges = dict(truth=truth, **{d: [[f.box for f in detect_faces(x, d) if _inside(f.box, 640, 360)] for x in ins] for d in ('mtcnn', 'dlib')})
    assert sum(map(len, truth)) > 60 and sum(map(len, judges['dlib'])) > 20     # a clip with faces in it, seen by every judge
    return path, ins, judges

@pytest.mark.parametrize('method', ['mask', 'blur9'])
def test_real_clip_no_leak(real_clip, method, tmp_path):
    path, ins, judges = real_clip
    r = anonymize_video(path, tmp_path / 'out.mp4', method, progress=False)
    test = {j: leaks(b, r.boxes) for j, b in judges.items()}
    assert {j: len(v) for j, v in test.items()} == dict(truth=0, mtcnn=0, dlib=0), {j: [i for i, _ in v] for j, v in test.items()}
    outs = read_frames(tmp_path / 'out.mp4')
    assert len(outs) == len(ins) == probe_video(path).frames
    if method == 'mask':                                           # the pixels really changed where the true faces are
        for i, bs in enumerate(judges['truth']):
            for b in bs:
                x0, y0, x1, y1 = np.round(b).astype(int)
                assert np.abs(outs[i][y0:y1, x0:x1].astype(float) - ins[i][y0:y1, x0:x1]).mean() > 10

def test_leaks_sees_a_missed_face():
    "The judge itself can fail: with the tracker's boxes taken away, every face-frame is a leak."
    _, truth = synth_track_clip(12)
    assert len(leaks(truth, [[] for _ in truth])) == sum(map(len, truth)) > 0

def test_cli_mixed_folder(tmp_path, capsys):
    frames, _ = synth_track_clip(12)
    src = tmp_path / 'in'; src.mkdir()
    write_video(src / 'walk.mov', frames, 25, audio=0.2 * np.sin(np.arange(8000) / 4.0))
    (src / 'zero.mp4').touch()
    code = main(['anonymize', str(src), '-o', str(tmp_path / 'out'), '--method', 'mask', '--no-progress', '--no-audio', '--detect-every', '2'])
    assert code == 1                                               # one bad file: reported, the rest written
    err = capsys.readouterr().err
    assert 'zero.mp4: empty file (0 bytes)' in err and '2 files, 1 written' in err
    info = probe_video(tmp_path / 'out' / 'walk.mp4')
    assert (info.frames, info.width, info.height, info.audio) == (12, 320, 240, None)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['walk.mp4']   # nothing half-written
    assert main(['anonymize', str(src), '-o', str(tmp_path / 'out2'), '--method', 'mask', '--detect-every', '0']) == 2
    assert 'detect_every must be >= 1' in capsys.readouterr().err

def test_decoupled_track_step_is_clip():
    "Frame by frame through track_step (as video runs it) gives exactly what clip() gives for the whole track."
    import faceanon.methods.decoupled
    from faceanon.methods.base import FaceBatch, get_method
    from faceanon.data.synthetic import synth_clip
    m, c = get_method('decoupled'), synth_clip(3, 4, 64)
    fb = FaceBatch(torch.from_numpy(c['image']).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.ones(4, 1, 64, 64),
                   landmarks=torch.from_numpy(c['landmarks']).float(), parsing=torch.from_numpy(c['parsing']).long())
    ref, state, outs = m.clip(fb, seed=11), [None], []
    for t in range(4):
        o, state = m.track_step(fb[t], [11], state); outs.append(o)
    torch.testing.assert_close(torch.cat(outs), ref)
    no_temporal = get_method('decoupled', temporal=False).track_step(fb[1], [11], [outs[0]])[0]
    assert (no_temporal - outs[1]).abs().max() > 0                 # the carried output matters only with the temporal module
