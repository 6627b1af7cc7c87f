"The Ray engine on a real two-node cluster (ray start --head + one worker on 127.0.0.1), against the local engine, byte for byte."
import os, shutil, socket, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def cluster(tmp_path):
    "RAY_ADDRESS of a head and one worker node started on 127.0.0.1 for the test, stopped afterwards."
    pytest.importorskip('ray')
    ray = Path(sys.executable).with_name('ray')
    env = dict(os.environ, RAY_AUTH_MODE='disabled', RAY_USAGE_STATS_ENABLED='0')
    env.pop('RAY_ADDRESS', None)
    port = _free_port()
    common = ['--node-ip-address=127.0.0.1', '--num-cpus=1', '--disable-usage-stats']
    try:
        subprocess.run([str(ray), 'start', '--head', f'--port={port}', '--include-dashboard=false', *common], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([str(ray), 'start', f'--address=127.0.0.1:{port}', *common], env=env, check=True, capture_output=True, timeout=180)
        yield dict(env, RAY_ADDRESS=f'127.0.0.1:{port}')
    finally:
        subprocess.run([str(ray), 'stop', '--force'], env=env, capture_output=True, timeout=120)

def _photos(folder: Path) -> Path:
    "A folder of real photos: the face-api group photos when cached, else the astronaut and copies; plus one broken file."
    folder.mkdir()
    from faceanon.data.photos import face_api_samples
    from skimage.data import astronaut
    real = face_api_samples()
    if real:
        for p in real: shutil.copy(p, folder / p.name)
    else:
        for k, im in enumerate([astronaut(), astronaut()[:, ::-1]]): Image.fromarray(np.ascontiguousarray(im)).save(folder / f'astronaut{k}.jpg')
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    return folder

def test_ray_cluster_matches_local_engine(cluster, tmp_path):
    src = _photos(tmp_path / 'in')
    run = lambda engine, out: subprocess.run([sys.executable, '-m', 'faceanon.cli', 'anonymize', str(src), '-o', str(out), '--method', 'blur17',
                                              '--engine', engine, '--no-progress'], env=cluster, cwd=ROOT, capture_output=True, text=True, timeout=600)
    loc, ray_ = run('local', tmp_path / 'local'), run('ray', tmp_path / 'ray')
    assert loc.returncode == ray_.returncode == 1, (loc.stderr[-1500:], ray_.stderr[-1500:])     # the broken file fails, the rest is written
    names = sorted(p.name for p in (tmp_path / 'local').iterdir())
    assert names == sorted(p.name for p in (tmp_path / 'ray').iterdir()) and len(names) >= 2
    for n in names: assert (tmp_path / 'local' / n).read_bytes() == (tmp_path / 'ray' / n).read_bytes(), n
    line = lambda err: [l for l in err.splitlines() if 'broken.jpg' in l and 'skipped' in l]
    assert line(loc.stderr) == line(ray_.stderr) != []                                       # reported the same way
    again = run('ray', tmp_path / 'ray')                                                      # an interrupted job resumes: nothing redone
    assert f'{len(names)} already written (skipped)' in again.stderr, again.stderr[-1500:]
    code = 'import ray; ray.init(); print(sum(n["Alive"] for n in ray.nodes()))'
    assert subprocess.run([sys.executable, '-c', code], env=cluster, capture_output=True, text=True, timeout=120).stdout.strip() == '2'

def test_engine_ray_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    from faceanon.cli import main
    monkeypatch.setitem(sys.modules, 'ray', None)                                             # as if Ray were not installed
    (tmp_path / 'a.png').write_bytes(b'')
    assert main(['anonymize', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'o'), '--method', 'blur9', '--engine', 'ray']) == 2
    assert 'pip install "faceanon[ray]"' in capsys.readouterr().err
