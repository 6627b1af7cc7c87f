"The `faceanon` command line, run as a user would: in a subprocess."
import hashlib, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
import fastcore.test as fct
from skimage.data import astronaut

AST = astronaut()
ENV = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '2'}

def run(*args, cwd=None, exe=(sys.executable, '-m', 'faceanon.cli')):
    "Run the CLI; return (exit code, stdout, stderr)."
    p = subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)
    return p.returncode, p.stdout, p.stderr

def digest(folder: Path) -> dict:
    "Relative path -> sha256 of every file below `folder`."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def batch(tmp_path_factory):
    "A folder with good, broken, tiny and huge pictures, run once through `faceanon anonymize --fail-closed`."
    root = tmp_path_factory.mktemp('cli'); src = root / 'photos'; (src / 'trip').mkdir(parents=True)
    ex = Image.Exif(); gps = ex.get_ifd(0x8825); gps[1] = 'N'; gps[2] = (48.0, 8.0, 30.0)
    Image.fromarray(AST).save(src / 'trip' / 'astronaut.jpg', exif=ex, quality=95)
    (src / 'corrupt.jpg').write_bytes((src / 'trip' / 'astronaut.jpg').read_bytes()[:6000])
    (src / 'notes.jpg').write_text('this is a text file with an image name\n')
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(src / 'pixel.png')
    huge = np.full((10_000, 10_000, 3), 140, np.uint8)                        # mostly flat, one face big enough to be
    huge[6000:8048, 3000:5048] = np.asarray(Image.fromarray(AST).resize((2048, 2048)))   # found on the 1024 px detection copy
    Image.fromarray(huge).save(src / 'huge.jpg', quality=90); del huge
    before = digest(src)
    code, out, err = run('anonymize', src, '-o', root / 'out', '--method', 'pixelate8', '--fail-closed', '--seed', '0')
    return dict(root=root, src=src, out=root / 'out', before=before, code=code, stdout=out, stderr=err)

def test_batch_exit_code_and_one_line_per_bad_file(batch):
    fct.test_eq(batch['code'], 1)
    lines = batch['stderr'].splitlines()
    for bad, why in [('corrupt.jpg', 'cannot decode image'), ('notes.jpg', 'not an image file')]:
        hits = [l for l in lines if 'skipped' in l and bad in l]
        fct.test_eq(len(hits), 1); assert why in hits[0], hits[0]
    assert not any('Traceback' in l for l in lines), batch['stderr']
    assert '5 files, 3 written, 2 faces anonymized, 2 failed' in batch['stderr'], batch['stderr']
    no_face = [l for l in lines if 'no face found' in l]
    fct.test_eq(len(no_face), 1); assert 'pixel.png' in no_face[0] and 'obscured' in no_face[0]

def test_batch_good_files_written_mirrored_inputs_untouched(batch):
    fct.test_eq(sorted(digest(batch['out'])), ['huge.jpg', 'pixel.png', 'trip/astronaut.jpg'])
    fct.test_eq(digest(batch['src']), batch['before'])                         # nothing overwritten, not a byte
    fct.test_eq(sorted(p.name for p in batch['out'].rglob('*.tmp')), [])       # no half-written files

def test_batch_outputs_anonymized_without_metadata(batch):
    a = Image.open(batch['out'] / 'trip' / 'astronaut.jpg')
    fct.test_eq(a.size, (512, 512)); fct.test_eq(dict(a.getexif()), {}); fct.test_eq(dict(a.getexif().get_ifd(0x8825)), {})
    diff = np.abs(np.asarray(a).astype(int) - AST.astype(int)).sum(-1)
    assert diff[90:160, 190:260].mean() > 30 and np.median(diff[:60]) < 6     # face changed, top rows ~JPEG noise only

def test_huge_image_face_found_size_kept(batch, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', None)                      # this test's own 100 Mpx file, only here
    with Image.open(batch['out'] / 'huge.jpg') as h:
        fct.test_eq(h.size, (10_000, 10_000))
        face = np.asarray(h.crop((3000, 6000, 5048, 8048)).resize((512, 512)))
        corner = np.asarray(h.crop((0, 0, 256, 256)))
    assert np.abs(face.astype(int) - AST.astype(int)).sum(-1)[90:160, 190:260].mean() > 30
    assert np.abs(face.astype(int) - AST.astype(int)).sum(-1)[300:].mean() < 10              # below the face: unchanged
    assert np.abs(corner.astype(int) - 140).max() <= 3                          # flat background stays flat (not obscured)

def test_refuses_output_over_input(tmp_path):
    Image.fromarray(AST).save(tmp_path / 'a.jpg'); before = digest(tmp_path)
    code, _, err = run('anonymize', tmp_path, '-o', tmp_path, '--method', 'mask', '--no-progress')
    fct.test_eq(code, 2); assert 'refused' in err and 'is an input' in err
    fct.test_eq(digest(tmp_path), before)

def test_unknown_options_refused_in_a_subprocess(tmp_path):
    code, _, err = run('anonymize', tmp_path, '-o', tmp_path / 'o', '--method', 'mask', '--fail-close')
    fct.test_eq(code, 2); assert 'unrecognized arguments: --fail-close' in err
    assert not (tmp_path / 'o').exists()

@pytest.mark.parametrize('argv,msg', [(['anonymize', 'x', '-o', 'o', '--method', 'gan9000'], "invalid choice: 'gan9000'"),
                                      (['anonymize', 'x', '-o', 'o', '--meth', 'mask'], 'required: --method'),
                                      (['anonymize', 'x', '--method', 'mask'], 'required: -o/--outdir'),
                                      (['anonymize', '-o', 'o', '--method', 'mask'], 'required: INPUT'),
                                      (['train'], 'required: METHOD'), (['frobnicate'], "invalid choice: 'frobnicate'"),
                                      ([], 'required: COMMAND')])
def test_bad_command_lines(argv, msg, capsys):
    from faceanon.cli import main
    with pytest.raises(SystemExit) as e: main(argv)
    fct.test_eq(e.value.code, 2)
    assert msg in capsys.readouterr().err

def test_console_script_lists_methods():
    exe = Path(sys.executable).parent / 'faceanon'
    if not exe.exists(): pytest.skip(f"console script not installed at {exe} (pip install -e .)")
    code, out, _ = run('methods', exe=(str(exe),))
    fct.test_eq(code, 0)
    names = {l.split()[0] for l in out.splitlines()}
    assert {'identity', 'blur9', 'blur17', 'pixelate8', 'pixelate16', 'mask', 'noise', 'edge', 'superpixel'} <= names

def test_demo_writes_one_grid_in_outputs(tmp_path):
    code, out, err = run('demo', cwd=tmp_path)
    fct.test_eq(code, 0)
    png = tmp_path / 'outputs' / 'demo.png'
    assert png.exists() and str(png.resolve()) in out, (out, err)
    grid = np.asarray(Image.open(png))
    h, w = grid.shape[:2]
    assert w <= 2.5 * h and w >= 1400 and h >= 800                                 # rows wrap: readable on a laptop screen, tiles of 240 px
    assert '13 methods on 3 photos' in out or '13 methods on 2 photos' in out      # the group photo joins when the face-api photos are cached
    fct.test_eq(sorted(os.listdir(tmp_path / 'outputs')), ['demo.png'])
    print(out)

@pytest.mark.parametrize('flag,expected', [([], True), (['--own-outline', 'no'], False), (['--own-outline', 'yes'], True)])
def test_own_outline_flag_reaches_distraction(flag, expected):
    from faceanon.cli import build_parser, method_from_args
    args = build_parser().parse_args(['anonymize', 'x', '-o', 'o', '--method', 'distraction', *flag])
    fct.test_eq(method_from_args(args).own_outline, expected)
