"""The distribution claims one import name, ``nicodec``: a project with its own ``models``,
``eval``, ``bitstream`` and ``codec`` packages first on ``sys.path`` still encodes and decodes;
the import root gives the public API; pyproject lists every package; no module imports a bare
top-level name again (``from codec...``), which would break in such a project."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nicodec

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BARE = ("codec", "models", "bitstream", "eval", "cli")


def test_the_tested_package_is_this_tree():
    """Tests import nicodec as installed (pip install -e .): it must be this checkout."""
    assert Path(nicodec.__file__).resolve().parent == ROOT, (
        f"nicodec is imported from {nicodec.__file__}, not from {ROOT}: run "
        f"'pip install -e .' in this checkout")


def _users_project(tmp_path: Path) -> Path:
    """A project whose own packages have the generic names the wheel used to take."""
    project = tmp_path / "project"
    for name in ("models", "eval", "bitstream", "codec"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"MINE = {name!r}\n")
    y, x = np.mgrid[0:24, 0:40]
    pixels = np.stack([x * 6, y * 10, (x + y) * 3], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(project / "photo.png")
    return project


def _env(first: str) -> dict[str, str]:
    """The environment with ``first`` at the head of PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (first, env.get("PYTHONPATH")) if p)
    return env


def test_a_project_with_its_own_models_eval_bitstream_packages(tmp_path):
    project = _users_project(tmp_path)
    script = textwrap.dedent("""
        import sys
        import models, eval, bitstream, codec
        import nicodec
        from nicodec import codec as nic

        data = nicodec.encode("photo.png", model="mcq-tiny", quality=2)
        open("photo.nic", "wb").write(data)
        image = nicodec.decode("photo.nic")
        array = nic.decode_array(data)
        assert image.size == (40, 24) and array.shape == (24, 40, 3)
        assert [models.MINE, eval.MINE, bitstream.MINE, codec.MINE] == [
            "models", "eval", "bitstream", "codec"]
        assert sys.modules["models"] is models and nic.__name__ == "nicodec.codec"
        print("ok", len(data))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True,
                         text=True, env=_env(str(project)))
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr
    # the command line from the same place: python -m nicodec.cli
    res = subprocess.run([sys.executable, "-m", "nicodec.cli", "decode", "photo.nic", "-o",
                          "back.png"], cwd=project, capture_output=True, text=True,
                         env=_env(str(project)))
    assert res.returncode == 0, res.stderr
    assert Image.open(project / "back.png").size == (40, 24)


def test_import_nicodec_is_cheap_and_gives_the_api():
    probe = textwrap.dedent("""
        import sys
        import nicodec
        probed = hasattr(nicodec, "setup_module")  # as pytest asks of a package: no import
        loaded = [m for m in ("torch", "numpy", "nicodec.codec") if m in sys.modules]
        cheap = not probed and not loaded
        from nicodec import codec
        same = all(getattr(nicodec, n) is getattr(codec, n) for n in codec.__all__)
        print(cheap, same, "encode" in dir(nicodec), nicodec.__all__ == codec.__all__)
        try:
            nicodec.no_such_name
        except AttributeError:
            print("AttributeError")
    """)
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert res.stdout.split() == ["True", "True", "True", "True", "AttributeError"], res.stderr


def test_pyproject_lists_every_package_and_the_console_script():
    tools = PYPROJECT["tool"]["setuptools"]
    assert tools["package-dir"] == {"nicodec": "."}
    found = {"nicodec"} | {
        "nicodec." + ".".join(init.parent.relative_to(ROOT).parts)
        for package in BARE[:4] for init in (ROOT / package).rglob("__init__.py")}
    assert set(tools["packages"]) == found
    for package, patterns in tools["package-data"].items():
        folder = ROOT.joinpath(*package.split(".")[1:])
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches nothing"
    module, _, function = PYPROJECT["project"]["scripts"]["codec"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in BARE]
    return found


@pytest.mark.parametrize("folder", [*BARE[:4], "tests"])
def test_no_module_imports_a_bare_top_level_name(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    if folder == "tests":
        files += [ROOT / "cli.py", ROOT / "__init__.py"]
    bare = [hit for path in files for hit in _bare_imports(path)]
    assert not bare, "import through nicodec. (python rename_to_nicodec.py):\n" + "\n".join(bare)
