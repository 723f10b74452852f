"""Shared fixtures: where the corpus is, how to run the helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VIRT_AA_SHARED", REPO.parent / "shared"))
# the project's own corpus (tests/corpus/domains) and recordings (tests/oracle)
CORPUS = REPO / "tests" / "corpus"
STOCK_HELPER = "/usr/lib/libvirt/virt-aa-helper"
PARSER = shutil.which("apparmor_parser") or "/sbin/apparmor_parser"
FEATURES = "/usr/share/apparmor-features/features"
# the project's own test data (no ../shared needed)
GENDENIALS = REPO / "tests" / "tools" / "gendenials.py"
DENIAL_SAMPLES = REPO / "tests" / "data" / "denials-real-samples.txt"


def pytest_configure(config: pytest.Config) -> None:
    """The suite tests this checkout (or a copy a test built on purpose), never a
    system-wide install such as the Debian package's copy in dist-packages."""
    import virt_aa

    origin = Path(virt_aa.__file__).resolve()
    if origin.is_relative_to("/usr"):
        raise pytest.UsageError(f"virt_aa is imported from {origin}, not from this checkout "
                                f"({REPO / 'src'}): run the tests with the project's venv "
                                f"(bash scripts/test.sh)")


def helper_argv() -> list[str]:
    """Our installed console script (what users run), else the module."""
    script = Path(sys.executable).parent / "virt-aa-helper"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "virt_aa.helper"]


def cli_argv() -> list[str]:
    script = Path(sys.executable).parent / "virt-aa"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "virt_aa.cli"]


def run_helper(args: list[str], xml: bytes | None = None, root: str | None = None,
               stock: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    argv = ([STOCK_HELPER] if stock else helper_argv()) + args
    env = dict(os.environ, VIRT_AA_DEBUG="1")  # an internal error shows as a traceback
    if root is not None:
        env["VIRT_AA_ROOT"] = root
    return subprocess.run(argv, input=xml if xml is not None else b"", capture_output=True,
                          env=env, timeout=timeout, check=False)


def rules_of(stderr: bytes) -> list[str]:
    """The rule lines of a dry run (comment lines dropped)."""
    text = stderr.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    out = []
    seen = 0
    for i, line in enumerate(lines):
        if line.endswith(":") and not line.startswith(" ") and i + 1 < len(lines):
            seen += 1
            if seen == 2:
                for rule in lines[i + 1:]:
                    if not rule:
                        break
                    if not rule.lstrip().startswith("#"):
                        out.append(rule.strip())
                break
    return out


def domain_xml(devices: str = "", name: str = "t", uuid: str =
               "11111111-2222-3333-4444-555555555555", virt: str = "kvm",
               extra: str = "") -> bytes:
    return (f"<domain type='{virt}'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"{extra}<devices>{devices}</devices></domain>").encode()


PROFILE = "libvirt-11111111-2222-3333-4444-555555555555"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    from virt_aa.host.sandbox import seed

    root = tmp_path / "root"
    seed(str(root))
    yield root


def compile_profile(path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """The DESIGN §3.1 compile check with the real parser."""
    argv = [PARSER, "-Q", "-T", "-K", "-I", str(root / "etc/apparmor.d"),
            "-I", "/etc/apparmor.d"]
    if os.path.exists(FEATURES):
        argv += ["--features-file", FEATURES]
    return subprocess.run(argv + [str(path)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def corpus_images() -> Path:
    """/tmp/virt-aa-corpus as the corpus expects it (built once per run)."""
    subprocess.run(["sh", str(CORPUS / "domains" / "setup-images.sh")], check=True,
                   capture_output=True)
    return Path("/tmp/virt-aa-corpus")
