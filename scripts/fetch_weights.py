"""Fetch the public checkpoints with direct URLs into the weights folder (`make weights`).

    python scripts/fetch_weights.py [paths.weights_dir=DIR] [only=a.pth,b.pt] [all=true]
                                    [force=true] [timeout=SECONDS]

Default folder: $PROJECT_ROOT/weights, else ./weights (as conf/paths/default.yaml). `all=true`
adds the optional files that no config reads: torchvision VGG16 (an LPIPS-VGG trunk) and
CoinCheung's BiSeNetV2 Cityscapes weights (not a face parser); `only=NAME` fetches one by name.
The table of files is src/portrait_toon/weights_registry.py.

Downloads are atomic (temporary file + rename) and verified where a check is published
(torchvision: SHA-256 prefix in the file name; AnimeGANv2: git blob SHA-1). Files that only
exist on Google Drive are listed with instructions to place them by hand. Without internet
it stops after one short probe and says what to place where. Prints each file's licence.
Exit status: 0 all fetchable files present, 1 a download failed, 2 offline / bad arguments.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from portrait_toon.weights_registry import (  # noqa: E402
    KNOWN_WEIGHTS,
    KnownWeight,
    verify_weight_file,
)

urlopen = urllib.request.urlopen  # module attribute so tests can replace it (never download)
DEFAULT_TIMEOUT_S = 5.0
CHUNK = 1 << 20
USER_AGENT = "portrait_toon-fetch-weights/0.1"


class FetchError(RuntimeError):
    """A download failed or did not verify."""


def default_weights_dir() -> Path:
    """conf/paths/default.yaml's `${paths.root_dir}/weights`: $PROJECT_ROOT or the launch dir."""
    return Path(os.environ.get("PROJECT_ROOT") or ".") / "weights"


@dataclass
class Options:
    weights_dir: Path = field(default_factory=default_weights_dir)
    only: list[str] = field(default_factory=list)
    include_optional: bool = False
    force: bool = False
    timeout: float = DEFAULT_TIMEOUT_S


def parse_args(argv: list[str]) -> Options:
    """Hydra-style `key=value` words (what `make weights key=value` passes through)."""
    opts = Options()
    for word in argv:
        if word in ("-h", "--help"):
            raise SystemExit(__doc__)
        key, sep, value = word.partition("=")
        key = key.lstrip("+")
        if not sep:
            raise SystemExit(f"fetch_weights: expected key=value, got '{word}'\n{__doc__}")
        if key in ("paths.weights_dir", "weights_dir"):
            opts.weights_dir = Path(value).expanduser()
        elif key == "only":
            opts.only = [name.strip() for name in value.split(",") if name.strip()]
            unknown = [n for n in opts.only if n not in KNOWN_WEIGHTS]
            if unknown:
                raise SystemExit(
                    f"fetch_weights: unknown file(s) {unknown}; known: {', '.join(KNOWN_WEIGHTS)}"
                )
        elif key == "all":
            opts.include_optional = _flag(key, value)
        elif key == "force":
            opts.force = _flag(key, value)
        elif key == "timeout":
            opts.timeout = float(value)
        else:
            # Other Hydra overrides may pass through `make weights`: they do not concern us.
            print(f"fetch_weights: ignoring '{word}'", file=sys.stderr)
    return opts


def _flag(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"fetch_weights: {key} must be true/false, got '{value}'")


def select(opts: Options, known: dict[str, KnownWeight] = KNOWN_WEIGHTS) -> list[KnownWeight]:
    if opts.only:
        return [known[name] for name in opts.only]
    return [w for w in known.values() if opts.include_optional or not w.optional]


def probe(url: str, timeout: float) -> str | None:
    """None if the server answers (any HTTP status), else why it cannot be reached."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # reachable; the real download reports the status
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


def download(known: KnownWeight, dest_dir: Path, timeout: float) -> Path:
    """Download to a temporary file in `dest_dir`, verify, then rename into place."""
    if known.url is None:
        raise FetchError(f"{known.filename} has no direct URL: {known.manual}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / known.filename
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{known.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(known.url, headers={"User-Agent": USER_AGENT})
        with os.fdopen(fd, "wb") as out, urlopen(request, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
        if verify_weight_file(tmp, known) is False:
            raise FetchError(
                f"{known.filename}: downloaded file fails its {known.check_kind} check "
                f"(expected {known.check_value}); not installed"
            )
        os.replace(tmp, final)
    except (urllib.error.URLError, OSError) as err:
        raise FetchError(f"{known.filename}: download from {known.url} failed ({err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return final


def manual_lines(entries: list[KnownWeight], weights_dir: Path) -> list[str]:
    lines = []
    for w in entries:
        where = (weights_dir / w.filename).resolve()
        source = w.url if w.url else w.manual
        lines.append(f"  {where}\n      <- {source}")
    return lines


def licence_lines(entries: list[KnownWeight]) -> list[str]:
    lines = []
    for w in entries:
        tag = "NON-COMMERCIAL" if w.non_commercial else "check terms"
        lines.append(f"  {w.filename} [{tag}]: {w.licence}")
    return lines


def fetch(opts: Options, entries: list[KnownWeight]) -> int:
    weights_dir = opts.weights_dir
    to_fetch: list[KnownWeight] = []
    by_hand: list[KnownWeight] = []
    for w in entries:
        path = weights_dir / w.filename
        if path.is_file() and not opts.force:
            verdict = verify_weight_file(path, w)
            if verdict is not False:
                note = "verified" if verdict else "present (no published checksum)"
                print(f"ok        {path} ({note})")
                continue
            print(f"corrupt   {path} fails its {w.check_kind} check: fetching again")
        if w.url is None:
            by_hand.append(w)
        else:
            to_fetch.append(w)

    status = 0
    if to_fetch:
        reason = probe(to_fetch[0].url, opts.timeout)
        if reason is not None:
            print(
                f"\nNo internet ({to_fetch[0].url}: {reason}). Nothing was downloaded.\n"
                "Place these files by hand (download them on another machine):"
            )
            print("\n".join(manual_lines(to_fetch + by_hand, weights_dir)))
            print("\nLicences:\n" + "\n".join(licence_lines(entries)))
            return 2
        for w in to_fetch:
            try:
                path = download(w, weights_dir, timeout=max(opts.timeout, 60.0))
            except FetchError as err:
                print(f"FAILED    {err}")
                status = 1
                continue
            verdict = verify_weight_file(path, w)
            print(f"fetched   {path}" + (" (verified)" if verdict else ""))
    if by_hand:
        print("\nNot downloadable by script (Google Drive); place by hand:")
        print("\n".join(manual_lines(by_hand, weights_dir)))
    print("\nLicences (this project ships no third-party weights):")
    print("\n".join(licence_lines(entries)))
    return status


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    return fetch(opts, select(opts))


if __name__ == "__main__":
    raise SystemExit(main())
