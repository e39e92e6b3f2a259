"""Import layering: the core never imports a transport (nor llfuse); only
the transport package, daemon and (lazily) cli do, and within the transport
package only the llfuse binding imports llfuse. Checked on the source (AST)
and in a fresh interpreter."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import cctmpfs

PKG_DIR = pathlib.Path(cctmpfs.__file__).resolve().parent
TRANSPORT_DIR = PKG_DIR / "transport"
#: The adapters: the transport package (the FUSE bindings), daemon and cli.
ADAPTERS = {"transport", "daemon", "cli"}
#: Modules that import llfuse or a transport, directly or through another of these.
LLFUSE_USERS = {"llfuse", "transport", "daemon"}
#: The one module that imports llfuse itself.
LLFUSE_BINDING = "transport/llfuse_ops"


def module_names() -> list[str]:
    return sorted([p.stem for p in PKG_DIR.glob("*.py")]
                  + [p.parent.name for p in PKG_DIR.glob("*/__init__.py")])


def transport_modules() -> list[str]:
    return sorted(f"transport/{p.stem}" for p in TRANSPORT_DIR.glob("*.py"))


CORE = [m for m in module_names() if m not in ADAPTERS and m != "__main__"]
#: C extensions of the core (_pools.c): they import no module.
C_EXTENSIONS = sorted(p.stem for p in PKG_DIR.glob("*.c"))


def imports(tree: ast.AST, module: str) -> list[tuple[ast.AST, str]]:
    """(node, imported module) for every import in tree, relative ones resolved
    to their cctmpfs submodule name ("filemap", ...), absolute ones as written."""
    out: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                out.append((node, mod))
                if mod == "cctmpfs":      # from cctmpfs import fuseops
                    out.extend((node, a.name) for a in node.names)
                elif mod.startswith("cctmpfs."):
                    out.append((node, mod.split(".", 1)[1]))
            elif node.level == 2 and module.startswith("transport/"):
                # from ..filemap import X, inside cctmpfs/transport/
                if node.module:
                    out.append((node, node.module.split(".")[0]))
                else:
                    out.extend((node, a.name) for a in node.names)
            elif node.level == 1 and module.startswith("transport/"):
                # from .frontend import X, from . import wire: the transport package
                if node.module:
                    out.append((node, "transport." + node.module.split(".")[0]))
                else:
                    out.extend((node, "transport." + a.name) for a in node.names)
            elif node.module:            # from .filemap import X
                out.append((node, node.module.split(".")[0]))
            else:                        # from . import fuseops
                out.extend((node, a.name) for a in node.names)
    return out


def parse(module: str) -> ast.Module:
    path = PKG_DIR / f"{module}.py"
    if not path.exists():
        path = PKG_DIR / module / "__init__.py"
    return ast.parse(path.read_text(), filename=str(path))


def is_llfuse_user(name: str) -> bool:
    return name.split(".")[0] in LLFUSE_USERS or name.startswith(
        ("cctmpfs.fuseops", "cctmpfs.daemon", "cctmpfs.transport"))


def test_the_core_is_what_the_package_says() -> None:
    assert {"namespace", "filemap", "hotbuffer", "eviction", "recompress", "blockstore",
            "codec", "options", "locking", "sealer", "stats", "errors"} <= set(CORE)
    assert ADAPTERS <= set(module_names())
    assert {"transport/frontend", "transport/llfuse_ops", "transport/native",
            "transport/wire", "transport/mounting"} <= set(transport_modules())


@pytest.mark.parametrize("module", CORE)
def test_core_module_never_imports_llfuse(module: str) -> None:
    bad = [(n.lineno, name) for n, name in imports(parse(module), module) if is_llfuse_user(name)]
    assert bad == [], f"cctmpfs/{module}.py imports an llfuse user: {bad}"


@pytest.mark.parametrize("module", CORE)
def test_core_module_has_no_dynamic_imports(module: str) -> None:
    """importlib / __import__ would get past the AST check."""
    tree = parse(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            assert name not in ("__import__", "import_module"), f"{module}.py:{node.lineno}"


def test_core_imports_only_core_modules() -> None:
    for module in CORE:
        for node, name in imports(parse(module), module):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert name in CORE or name in C_EXTENSIONS, \
                    f"{module}.py:{node.lineno} imports .{name}"


def test_cli_imports_llfuse_users_only_inside_functions() -> None:
    tree = parse("cli")
    top_level = set()
    for stmt in tree.body:                       # module-level statements, incl. if/try blocks
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        top_level.update(name for _, name in imports(stmt, "cli"))
    assert not any(is_llfuse_user(n) for n in top_level), sorted(top_level)
    # ... and it does use them lazily (or the test above proves nothing).
    lazy = [name for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for _, name in imports(f, "cli")]
    assert any(is_llfuse_user(n) for n in lazy)


def test_adapters_are_where_llfuse_is_used() -> None:
    names = [name for _, name in imports(parse(LLFUSE_BINDING), LLFUSE_BINDING)]
    assert "llfuse" in names
    names = [name for _, name in imports(parse("daemon"), "daemon")]
    assert "transport" in names


@pytest.mark.parametrize("module", [m for m in transport_modules() if m != LLFUSE_BINDING])
def test_only_the_llfuse_binding_imports_llfuse(module: str) -> None:
    """The native binding, the shared frontend and the package itself run
    without llfuse: they import neither it nor the llfuse binding (except
    open_session(), inside a function)."""
    tree = parse(module)
    top_level = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        top_level.update(name for _, name in imports(stmt, module))
    assert "llfuse" not in top_level and "transport.llfuse_ops" not in top_level, module
    everywhere = [name for _, name in imports(tree, module)]
    assert "llfuse" not in everywhere, module


@pytest.mark.parametrize("module", transport_modules())
def test_transports_import_only_the_core_and_each_other(module: str) -> None:
    """Imports only go down: a binding never imports the daemon or the CLI."""
    for node, name in imports(parse(module), module):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert name in CORE or name.startswith("transport."), f"{module}.py:{node.lineno} imports {name}"


def loaded_after(code: str, forbidden: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running code that
    match forbidden, a boolean expression in the module name m."""
    script = (f"import sys\n{code}\n"
              f"print(sorted(m for m in sys.modules if {forbidden}))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip())


LLFUSE = "m == 'llfuse' or m.startswith('llfuse.')"


def test_importing_the_core_and_cli_does_not_load_llfuse() -> None:
    mods = ", ".join(f"cctmpfs.{m}" for m in CORE + ["cli"])
    assert loaded_after(f"import {mods}", f"{LLFUSE} or m.startswith('cctmpfs.transport')"
                        " or m in ('cctmpfs.fuseops', 'cctmpfs.daemon')") == []


def test_the_native_transport_runs_without_llfuse() -> None:
    code = ("import cctmpfs.daemon, cctmpfs.transport.native\n"
            "from cctmpfs.transport import open_session\n"
            "open_session('native')")
    assert loaded_after(code, f"{LLFUSE} or m == 'cctmpfs.transport.llfuse_ops'") == []


def test_import_checker_finds_llfuse_imports() -> None:
    """The checker itself: each form of importing llfuse is caught."""
    for src in ("import llfuse", "import llfuse as l", "from llfuse import FUSEError",
                "from . import transport", "from .transport import open_session",
                "from .transport.native import Server", "import cctmpfs.transport.native",
                "from cctmpfs import transport",
                "from .daemon import run", "from cctmpfs import daemon",
                "import cctmpfs.fuseops", "def f():\n    import llfuse",
                "try:\n    import llfuse\nexcept ImportError:\n    pass"):
        names = [n for _, n in imports(ast.parse(src), "x")]
        assert any(is_llfuse_user(n) for n in names), src
    for src in ("import os", "from .filemap import DataEngine", "from . import errors",
                "import llfuse_extra_stuff_not"):
        names = [n for _, n in imports(ast.parse(src), "x")]
        assert not any(is_llfuse_user(n) for n in names), src


def test_a_mount_without_an_encrypted_device_never_loads_cryptography():
    """`cryptography` adds 6.5 MB to the daemon's RSS (cipher.py), so only a
    RecordCipher (backing_encrypt with a backing device) may import it; a
    fresh interpreter that loads the daemon, the CLI and both transports has
    not, and one that builds a RecordCipher has, and it works."""
    code = ("import sys, cctmpfs.cli, cctmpfs.daemon, cctmpfs.transport.native, "
            "cctmpfs.transport.llfuse_ops\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
            "from cctmpfs.cipher import RecordCipher, DecryptError\n"
            "c = RecordCipher()\n"
            "assert c.open(7, c.seal(7, b'x' * 100)) == b'x' * 100\n"
            "try:\n"
            "    c.open(8, c.seal(7, b'y'))\n"
            "except DecryptError:\n"
            "    print('refused')\n"
            "print('cryptography' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["[]", "refused", "True"], out.stdout + out.stderr
