"""The public weight files this project knows: where each comes from, its licence and how to
verify it (`make weights` fetches from this table), and finding one in `paths.weights_dir` with
an error that says where to get it when it is missing.

Reading the files safely is `checkpoints.py`'s job; this module never opens a checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


class MissingWeightsError(FileNotFoundError):
    """A weight file is not where the config says; the message says where to get it."""


@dataclass(frozen=True)
class KnownWeight:
    """One public weight file: where it comes from, its licence and how to verify it."""

    filename: str
    description: str
    used_by: str  # config choice that reads it
    url: str | None  # direct download URL; None when only a manual download exists
    manual: str  # how to get it by hand
    licence: str
    non_commercial: bool
    check_kind: str | None = None  # "sha256_prefix" | "git_blob_sha1" | None
    check_value: str | None = None
    optional: bool = False  # fetched only when asked for by name (or all=true)


_ANIMEGAN_LICENCE = (
    "bryandlee/animegan2-pytorch code: MIT; AnimeGANv2 (TachibanaYoshino) weights are for "
    "non-commercial use only (academic/research/teaching) - treat as non-commercial"
)
_TORCHVISION_LICENCE = (
    "torchvision BSD-3-Clause; trained on ImageNet, whose terms (non-commercial research) may "
    "bind derived weights - check before commercial use"
)


def _animegan(name: str, blob_sha1: str, what: str, optional: bool = False) -> KnownWeight:
    return KnownWeight(
        filename=f"{name}.pt",
        description=f"AnimeGANv2 generator, {what} (bryandlee/animegan2-pytorch, bare state_dict)",
        used_by="bg_stylizer=animegan",
        url=f"https://github.com/bryandlee/animegan2-pytorch/raw/main/weights/{name}.pt",
        manual=f"download weights/{name}.pt from https://github.com/bryandlee/animegan2-pytorch",
        licence=_ANIMEGAN_LICENCE,
        non_commercial=True,
        check_kind="git_blob_sha1",
        check_value=blob_sha1,
        optional=optional,
    )


def _torchvision(
    arch: str, sha256_prefix: str, note: str, used_by: str, optional: bool = False
) -> KnownWeight:
    url = f"https://download.pytorch.org/models/{arch}-{sha256_prefix}.pth"
    return KnownWeight(
        filename=f"{arch}-{sha256_prefix}.pth",
        description=f"torchvision {arch.upper()} IMAGENET1K_V1 (bare state_dict{note})",
        used_by=used_by,
        url=url,
        manual=f"download {url}",
        licence=_TORCHVISION_LICENCE,
        non_commercial=False,
        check_kind="sha256_prefix",
        check_value=sha256_prefix,
        optional=optional,
    )


KNOWN_WEIGHTS: dict[str, KnownWeight] = {
    w.filename: w
    for w in (
        KnownWeight(
            filename="stylegan2-ffhq-config-f.pt",
            description="StyleGAN2 FFHQ 1024 px generator (config-f), rosinality format "
            "{g_ema, latent_avg}",
            used_by="generator=stylegan2",
            url=None,
            manual=(
                "Google Drive only. Either convert NVIDIA's stylegan2-ffhq-config-f.pkl "
                "(NVlabs/stylegan2 README) with rosinality/stylegan2-pytorch convert_weight.py, "
                "or download a converted copy: https://drive.google.com/file/d/"
                "1Yr7KuD959btpmcKGAUsbAk5rPjX2MytK (used by mchong6/JoJoGAN), or from "
                "rosinality's folder https://drive.google.com/drive/folders/"
                "1PQutd-JboOCOZqmd95XWxWrO8gGEvRcO"
            ),
            licence="NVIDIA Source Code License-NC (non-commercial); trained on FFHQ "
            "(CC BY-NC-SA 4.0)",
            non_commercial=True,
        ),
        KnownWeight(
            filename="79999_iter.pth",
            description="face-parsing BiSeNet, 19 CelebAMask-HQ classes (zllrunning/"
            "face-parsing.PyTorch, bare state_dict)",
            used_by="segmenter=bisenet",
            url=None,
            manual=(
                "Google Drive only (zllrunning/face-parsing.PyTorch README): "
                "https://drive.google.com/file/d/154JgKpzCPW82qINcVieuPH3fZ2e0P812"
            ),
            licence="code MIT; trained on CelebAMask-HQ, whose terms allow non-commercial "
            "research/education only - treat as non-commercial",
            non_commercial=True,
        ),
        _animegan(
            "face_paint_512_v2", "d75102f8f201ddaf8dbe6b913b1a97585b55f838", "Face Portrait v2"
        ),
        _animegan(
            "face_paint_512_v1", "19c1a1da4d9580186109a2b055d91044e5127de6", "Face Portrait v1"
        ),
        _animegan("paprika", "58086c9db9fc7a9e5c2876ca31b8079599352643", "Paprika style"),
        _animegan("celeba_distill", "3b7ea61b02254980831cc3bc77af30666dbc999c", "CelebA distilled"),
        _torchvision("vgg19", "dcbb9e9d", "", used_by="loss.perceptual.kind=vgg19"),
        _torchvision(
            "vgg16",
            "397923af",
            "; LPIPS trunk",
            used_by="(no config reads it; nets.vgg.vgg16 loads it for your own LPIPS-VGG trunk)",
            optional=True,  # nothing uses it: fetched by name (only=...) or with all=true
        ),
        KnownWeight(
            filename="model_final_v2_city.pth",
            description="CoinCheung BiSeNetV2, Cityscapes 19 classes (road, car, ...). NOT a "
            "face parser; no face-parsing BiSeNetV2 weights are published",
            used_by="(none; reference only)",
            url="https://github.com/CoinCheung/BiSeNet/releases/download/0.0.0/"
            "model_final_v2_city.pth",
            manual="download from https://github.com/CoinCheung/BiSeNet/releases/tag/0.0.0",
            licence="code MIT; trained on Cityscapes, whose terms are non-commercial",
            non_commercial=True,
            optional=True,
        ),
    )
}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: str | Path) -> str:
    """The SHA-1 `git hash-object` gives a file: sha1(b"blob <size>\\0" + content)."""
    path = Path(path)
    digest = hashlib.sha1()
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weight_file(path: str | Path, known: KnownWeight) -> bool | None:
    """True/False when the file's published check passes/fails; None when none is published."""
    if known.check_kind is None or known.check_value is None:
        return None
    if known.check_kind == "sha256_prefix":
        return file_sha256(path).startswith(known.check_value.lower())
    if known.check_kind == "git_blob_sha1":
        return git_blob_sha1(path) == known.check_value.lower()
    raise ValueError(f"unknown check kind {known.check_kind!r} for {known.filename}")


def describe_source(filename: str) -> str:
    """Where a weight file comes from and its licence, as lines for an error message."""
    known = KNOWN_WEIGHTS.get(filename)
    if known is None:
        listing = ", ".join(KNOWN_WEIGHTS)
        return f"  '{filename}' is not one of the known public files ({listing})."
    how = (
        f"  Download: {known.url} (`make weights` fetches it)"
        if known.url
        else f"  Get it by hand: {known.manual}"
    )
    return (
        f"  What: {known.description} (used by {known.used_by})\n{how}\n  Licence: {known.licence}"
    )


def resolve_weight(weights_dir: str | Path, filename: str) -> Path:
    """The path of `filename` inside `weights_dir`; `MissingWeightsError` if it is not there."""
    directory = Path(weights_dir).expanduser()
    path = (directory / filename).resolve()
    if path.is_file():
        return path
    known = KNOWN_WEIGHTS.get(filename)
    if known is not None and known.url is None:
        action = "`make weights` cannot download this one: place it by hand as above"
    else:
        action = "run `make weights` to fetch the files with direct URLs"
    raise MissingWeightsError(
        f"Weight file not found: {path}\n{describe_source(filename)}\n"
        f"  Fix: {action} (`make weights paths.weights_dir={directory.resolve()}` for this "
        "folder; it also lists what to place by hand), or point paths.weights_dir at the "
        "folder that holds it."
    )
