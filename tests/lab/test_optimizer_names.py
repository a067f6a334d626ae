"""Issue 18 item 16: ``--optimizer NAME`` resolves from an allow-list and imports nothing else."""

from __future__ import annotations

import sys

import pytest
import torch
from click.testing import CliRunner

from adamlab.lab.cli import cli
from adamlab.lab.data import LabInputError
from adamlab.lab.names import resolve_optimizer


def _train(tmp_path, name: str):
    out = tmp_path / "out"
    args = ["train", "--trainer", "concise", "--optimizer", name, "--epochs", "1", "--out", str(out)]
    return CliRunner().invoke(cli, args), out


def test_a_name_outside_the_allow_list_imports_nothing(tmp_path, monkeypatch):
    # A module whose import has a visible effect, importable from sys.path.
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Opt: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result, out = _train(tmp_path, "sideeffect_mod.Opt")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "unknown optimizer 'sideeffect_mod.Opt'" in result.stderr
    assert not marker.exists(), "the module was imported"
    assert "sideeffect_mod" not in sys.modules and not out.exists()


@pytest.mark.skipif("this" in sys.modules, reason="`this` was imported before the test")
def test_this_does_not_print_the_zen_of_python(tmp_path):
    result, _ = _train(tmp_path, "this.X")
    assert result.exit_code == 2 and "unknown optimizer 'this.X'" in result.stderr
    assert "Beautiful is better than ugly" not in result.output
    assert "this" not in sys.modules


@pytest.mark.parametrize(
    "name, needle",
    [
        ("os.system", "unknown optimizer 'os.system'"),
        ("adamlab.reference.step", "unknown optimizer 'adamlab.reference.step'"),
        ("Adam", "unknown optimizer 'Adam'"),
        ("torch.optim._private", "unknown optimizer"),
        ("torch.optim.NoSuchThing", "torch.optim has no 'NoSuchThing'"),
        ("torch.optim.lr_scheduler", "is not a torch.optim.Optimizer class"),
        ("torch.optim.Optimizer", "is not a torch.optim.Optimizer class"),  # the abstract base
        ("adamlab.lab.family.member", "unknown optimizer"),  # in the module, not a factory
    ],
)
def test_refused_names(name, needle):
    with pytest.raises(LabInputError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        resolve_optimizer(name)


def test_allowed_names_resolve():
    import adamlab
    from adamlab.lab.family import FAMILY

    assert resolve_optimizer("torch.optim.Adam") is torch.optim.Adam
    assert resolve_optimizer("torch.optim.AdamW") is torch.optim.AdamW
    assert resolve_optimizer("adamlab.Yogi") is adamlab.Yogi
    assert resolve_optimizer("adamlab.optim.Adam") is adamlab.Adam
    for member in FAMILY.values():
        assert resolve_optimizer(member.target) is member.make


@pytest.mark.parametrize("module", ["torch_optimizer", "pytorch_optimizer"])
def test_the_benchmarks_peers_resolve_when_installed(module):
    pytest.importorskip(module)
    assert issubclass(resolve_optimizer(f"{module}.Yogi"), torch.optim.Optimizer)


def test_the_docstring_states_the_allow_list():
    import adamlab.lab.names as names
    from adamlab.lab.frameworks import torch_chapter

    assert torch_chapter.resolve_optimizer is names.resolve_optimizer
    for module in names.allowed_modules():
        assert f"``{module}``" in names.__doc__
