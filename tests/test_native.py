"""adamlab._native: the one compile-cache-load path of the C/C++ kernels.

Each test builds a tiny C library (tens of milliseconds) into a cache under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adamlab import _native

pytestmark = pytest.mark.skipif(
    _native.find_compiler("c") is None or not hasattr(os, "getuid"), reason="needs a POSIX C compiler"
)

SOURCE = "int adamlab_answer(void) { return 42; }\n"
FLAGS = ("-O1", "-fPIC", "-shared")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ADAMLAB_CACHE_DIR", str(root))
    return root


def _build(name: str = "t_answer", source: str = SOURCE, **kw):
    if "flag_sets" not in kw:
        kw.setdefault("flags", FLAGS)
    return _native.build_cached(name, source, lang="c", **kw)


def _run_child(cache: Path, body: str) -> subprocess.Popen[str]:
    """Start a Python process that runs ``body`` with ``cache`` as ADAMLAB_CACHE_DIR."""
    prelude = textwrap.dedent(
        f"""
        from adamlab import _native
        calls = []
        _compile = _native._compile
        def counting(cmd, timeout):
            calls.append(cmd)
            return _compile(cmd, timeout)
        _native._compile = counting
        SOURCE, FLAGS = {SOURCE!r}, {FLAGS!r}
        """
    )
    env = {**os.environ, "ADAMLAB_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(body)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_cache_key_covers_flags_source_abi_and_compiler() -> None:
    cc = _native.find_compiler("c")
    key = _native.cache_key("k", SOURCE, lang="c", compiler=cc, flags=FLAGS)
    assert key == _native.cache_key("k", SOURCE.encode(), lang="c", compiler=cc, flags=FLAGS)
    others = [
        _native.cache_key("k", SOURCE, lang="c", compiler=cc, flags=("-O2", "-fPIC", "-shared")),
        _native.cache_key("k", SOURCE, lang="c", compiler=cc, flags=(*FLAGS, "-ffp-contract=off")),
        _native.cache_key("k", SOURCE, lang="c", compiler=cc, flag_sets=[FLAGS, ("-fPIC", "-shared")]),
        _native.cache_key("k", SOURCE, lang="c", compiler=cc, flags=FLAGS, libs=["-lm"]),
        _native.cache_key("k", SOURCE, lang="c", compiler=cc, flags=FLAGS, abi=2),
        _native.cache_key("k", SOURCE + " ", lang="c", compiler=cc, flags=FLAGS),
        _native.cache_key("k", SOURCE, lang="c", compiler=cc + "-other", flags=FLAGS),
        _native.cache_key("k2", SOURCE, lang="c", compiler=cc, flags=FLAGS),
    ]
    assert len({key, *others}) == len(others) + 1


def test_flags_only_change_rebuilds(cache: Path) -> None:
    a = _build()
    b = _build(flags=("-O2", "-fPIC", "-shared"))
    assert a.adamlab_answer() == b.adamlab_answer() == 42
    assert a._name != b._name
    assert {Path(a._name).parent, Path(b._name).parent} == {cache}
    assert len(list(cache.glob("t_answer-*.so"))) == 2


def test_first_flag_set_that_compiles_is_used_and_a_failure_is_remembered(cache: Path) -> None:
    source = "#ifdef FAIL\n#error this flag set does not work\n#endif\n" + SOURCE
    sets = [("-DFAIL", *FLAGS), FLAGS]
    lib = _build(source=source, flag_sets=sets)
    assert lib.adamlab_answer() == 42 and lib._name.endswith("-1.so")
    (marker,) = cache.glob("t_answer-*-0.failed")
    assert "this flag set does not work" in marker.read_text()
    child = _run_child(
        cache,
        f"""
        lib = _native.build_cached("t_answer", {source!r}, lang="c", flag_sets={sets!r})
        assert lib.adamlab_answer() == 42 and not calls, calls  # cached; the failing set not retried
        print(lib._name)
        """,
    )
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == lib._name


def test_another_process_reuses_the_cache(cache: Path) -> None:
    lib = _build()
    child = _run_child(
        cache,
        """
        lib = _native.build_cached("t_answer", SOURCE, lang="c", flags=FLAGS)
        assert lib.adamlab_answer() == 42 and not calls, calls
        print(lib._name)
        """,
    )
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == lib._name


def test_concurrent_builds_compile_once_and_both_load(cache: Path) -> None:
    body = """
        lib = _native.build_cached("t_answer", SOURCE, lang="c", flags=FLAGS)
        assert lib.adamlab_answer() == 42
        print(len(calls), lib._name)
        """
    children = [_run_child(cache, body) for _ in range(2)]
    results = [c.communicate(timeout=60)[0].split() for c in children]
    assert [c.returncode for c in children] == [0, 0]
    assert sorted(int(n) for n, _ in results) == [0, 1]  # the flock: one compiles, the other waits
    assert results[0][1] == results[1][1]
    assert len(list(cache.glob("t_answer-*.so"))) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def _plant(cache: Path) -> Path:
    """A valid library at the exact path a build would use, answering 666 instead of 42."""
    cc = _native.find_compiler("c")
    key = _native.cache_key("t_answer", SOURCE, lang="c", compiler=cc, flags=FLAGS)
    planted = cache / f"t_answer-{key}-0.so"
    src = cache.parent / "evil.c"
    src.write_text("int adamlab_answer(void) { return 666; }\n")
    subprocess.run([cc, *FLAGS, str(src), "-o", str(planted)], check=True)
    return planted


@pytest.mark.parametrize("how", ["world-writable", "foreign-owned"])
def test_untrusted_cache_dir_is_not_used(cache: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cache.mkdir(mode=0o700)
    planted = _plant(cache)
    if how == "world-writable":
        cache.chmod(0o777)
    else:  # pretend to be someone else (chown needs root)
        uid = os.getuid() + 1
        monkeypatch.setattr(os, "getuid", lambda: uid)
    before = sorted(p.name for p in cache.iterdir())
    lib = _build()
    assert lib.adamlab_answer() == 42
    assert Path(lib._name).parent == _native.private_dir() != cache
    assert sorted(p.name for p in cache.iterdir()) == before  # nothing written there
    assert planted.exists()
    mode = os.stat(_native.private_dir()).st_mode & 0o777
    assert mode == 0o700


def test_group_writable_library_in_a_trusted_dir_is_rebuilt(cache: Path) -> None:
    cache.mkdir(mode=0o700)
    planted = _plant(cache)
    planted.chmod(0o777)
    lib = _build()
    assert lib.adamlab_answer() == 42 and lib._name == str(planted)  # rebuilt, atomically replaced
    assert planted.stat().st_mode & 0o777 == 0o755


def test_lock_file_symlink_is_not_followed(cache: Path, tmp_path: Path) -> None:
    cache.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    cc = _native.find_compiler("c")
    key = _native.cache_key("t_answer", SOURCE, lang="c", compiler=cc, flags=FLAGS)
    (cache / f"t_answer-{key}.lock").symlink_to(victim)
    lib = _build()
    assert lib.adamlab_answer() == 42
    assert victim.read_text() == "precious"
    assert Path(lib._name).parent == _native.private_dir()


def test_default_cache_dir_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADAMLAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    lib = _build()
    assert Path(lib._name).parent == tmp_path / "xdg" / "adamlab"
    assert (tmp_path / "xdg" / "adamlab").stat().st_mode & 0o777 == 0o700


def test_no_compiler_and_a_broken_source_raise_runtime_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="could not compile t_broken"):
        _build("t_broken", source="this is not C")
    monkeypatch.setattr(_native, "find_compiler", lambda lang: None)
    with pytest.raises(RuntimeError, match="no C compiler found"):
        _build()
