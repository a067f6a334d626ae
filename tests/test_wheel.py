"""The package as users get it: ``python -m build`` -> a wheel with the compiled kernels inside,
installed into a clean environment with torch, run on a machine with no compiler on PATH.

This is the end-to-end proof that nothing compiles at run time: the build makes an sdist and
builds the wheel from it (so the sources ship too), the environment sees only the wheel's
adamlab (plus torch and NumPy from the test environment's site-packages, appended to
``sys.path``), and PATH holds no compiler while ``adamlab.Yogi(fused=True)`` steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="wheel check on Linux"),
]

CHILD = r"""
import os, shutil, sys, warnings
warnings.simplefilter("error")  # a fallback warning ("not installed", "damaged") fails the check
compilers = [c for c in ("cc", "c++", "gcc", "g++", "clang", "clang++") if shutil.which(c)]
assert not compilers, f"compilers still on PATH: {compilers}"
import torch, adamlab
from adamlab.optim import fused_cpu
assert os.path.realpath(adamlab.__file__).startswith(os.path.realpath(sys.prefix)), adamlab.__file__
torch.manual_seed(0)
fused = [torch.randn(64, 32, requires_grad=True), torch.randn(7, requires_grad=True)]
loop = [p.detach().clone().requires_grad_() for p in fused]
a, b = adamlab.Yogi(fused, fused=True), adamlab.Yogi(loop, foreach=False)
for _ in range(5):
    for p, q in zip(fused, loop):
        g = torch.randn_like(p)
        p.grad, q.grad = g, g.clone()
    a.step(); b.step()
worst = max((p - q).abs().max().item() for p, q in zip(fused, loop))
assert worst < 1e-6, worst
print("ok", fused_cpu.load()._name, worst)
"""


def test_wheel_installs_and_runs_fused_without_a_compiler(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="python -m build (adamlab[dev]) builds the wheel")
    # nothing of this checkout may leak into the build or the clean environment
    tools_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
        env=tools_env,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("adamlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("adamlab/_fused_cpu.") and n.endswith(".so") for n in names), names
    assert any(n.startswith("adamlab/_online1d.") and n.endswith(".so") for n in names), names
    assert "-linux_" in wheel.name or "manylinux" in wheel.name, wheel.name  # a platform wheel

    env_dir = tmp_path / "clean-env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        env=tools_env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # torch and NumPy from this environment, *after* the clean one's own site-packages
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "zz_test_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    no_compiler = tmp_path / "bin"
    no_compiler.mkdir()
    env = {"PATH": str(no_compiler), "HOME": str(tmp_path), "OMP_NUM_THREADS": "2"}
    run = subprocess.run([str(python), "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.startswith("ok " + str(Path(site).resolve())) or run.stdout.startswith("ok " + site), run.stdout

    # a byte flipped inside the installed library: RECORD's hash catches what the ELF checks cannot
    (library,) = Path(site, "adamlab").glob("_fused_cpu.*.so")
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    flipped = "from adamlab.optim import fused_cpu\nprint(fused_cpu.is_available())\n"
    check = subprocess.run([str(python), "-c", flipped], capture_output=True, text=True, env=env, timeout=600)
    assert check.stdout.strip() == "False", check.stdout + check.stderr[-2000:]
    why = "from adamlab import _library\ntry:\n _library.load('_fused_cpu')\nexcept RuntimeError as e:\n print(e)"
    detail = subprocess.run([str(python), "-c", why], capture_output=True, text=True, env=env, timeout=600)
    assert "sha256 differs" in detail.stdout, detail.stdout + detail.stderr


if os.name != "posix":  # pragma: no cover
    pytestmark.append(pytest.mark.skip(reason="POSIX only"))
