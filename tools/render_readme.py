#!/usr/bin/env python
"""Render README.md from index.ipynb (Quarto is not available here, so nbdev-readme cannot).

Markdown cells are copied; code cells are shown as ```python blocks with their stored outputs;
`#| hide` cells are dropped and other `#|` directives stripped; image outputs are written to
`index_files/` and linked. `--check` fails if README.md is not what index.ipynb renders to.
"""
import argparse, base64, hashlib, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']

def _directives(src):
    return {l[3:].strip().split(':')[0].split()[0] for l in src.splitlines() if l.startswith('#|') and l[3:].strip()}

def _strip_directives(src):
    return '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')

def _text(out):
    if out['output_type'] == 'stream': return ''.join(out['text'])
    data = out.get('data', {})
    return ''.join(data.get('text/plain', '')) if 'image/png' not in data else ''

def _image(out, images):
    data = out.get('data', {}) if out['output_type'] in ('display_data', 'execute_result') else {}
    if 'image/png' not in data: return None
    raw = base64.b64decode(data['image/png'])
    name = f"index_files/figure-{hashlib.sha1(raw).hexdigest()[:10]}.png"
    images[name] = raw
    return f"![]({name})"

def render(nb):
    "Return (markdown text, {relative image path: bytes})."
    parts, images = [], {}
    for cell in nb['cells']:
        src = _src(cell)
        if cell['cell_type'] == 'markdown': parts.append(src.strip('\n')); continue
        if cell['cell_type'] != 'code' or 'hide' in _directives(src): continue
        code = _strip_directives(src)
        if code and 'hide_input' not in _directives(src): parts.append(f"```python\n{code}\n```")
        for out in cell.get('outputs', []):
            img = _image(out, images)
            if img: parts.append(img); continue
            txt = _text(out).rstrip('\n')
            if txt: parts.append(f"```\n{txt}\n```")
    front = parts and parts[0].startswith('---')
    return '\n\n'.join(parts[1:] if front else parts) + '\n', images

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--check', action='store_true', help='fail if README.md is out of date')
    a = p.parse_args(argv)
    md, images = render(json.loads((ROOT / 'index.ipynb').read_text()))
    readme = ROOT / 'README.md'
    if a.check:
        stale = [n for n, b in images.items() if not (ROOT / n).exists() or (ROOT / n).read_bytes() != b]
        if not readme.exists() or readme.read_text() != md or stale:
            sys.exit('README.md is out of date with index.ipynb: run `make readme` and commit the result')
        return
    (ROOT / 'index_files').mkdir(exist_ok=True)
    for old in (ROOT / 'index_files').glob('figure-*.png'):
        if old.relative_to(ROOT).as_posix() not in images: old.unlink()
    for n, b in images.items(): (ROOT / n).write_bytes(b)
    readme.write_text(md)
    print(f"wrote {readme.relative_to(ROOT)} and {len(images)} figure(s)")

if __name__ == '__main__': main()
