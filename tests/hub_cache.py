"""A Hugging Face Hub cache on disk, so that Hub code paths run offline through the same huggingface_hub code a
networked run takes (used by test_hub.py and test_hub_priors.py).

Repos are written as `huggingface_hub` lays out its cache (`models--org--name/{blobs,snapshots,refs,trees}`); loading
then runs with `HF_HUB_OFFLINE=1`. The cached file listing (`trees/<commit>.json`, which `snapshot_download` writes)
may name files that were never downloaded (`remote_only`): loading must then not need them, which checks what a
download fetches.
"""

import hashlib
import json
import os
from pathlib import Path

import diffusers.utils.hub_utils
import huggingface_hub


def write_cached_repo(cache_dir, repo_id, folder=None, ref="main", remote_only=None, files=None, link=False) -> str:
    """
    Write `folder` (and `files`, {path: bytes}) as snapshot `ref` of `repo_id` in the huggingface_hub cache layout;
    `remote_only` ({path: bytes}) are in the cached listing only (on the "Hub", never downloaded). With `link=True`,
    the snapshot links to `folder`'s files instead of copying them (for large weights; the listing's blob ids are then
    made up, which offline loading never checks).

    Returns:
        `str`: the commit hash.
    """
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    paths = {p.relative_to(folder).as_posix(): p for p in Path(folder).rglob("*") if p.is_file()} if folder else {}
    contents = {} if link else {path: p.read_bytes() for path, p in paths.items()}
    contents.update(files or {})
    listing = {path: _blob_id(data) for path, data in {**contents, **(remote_only or {})}.items()}
    sizes = {path: len(data) for path, data in {**contents, **(remote_only or {})}.items()}
    if link:
        listing.update({path: hashlib.sha1(str(p.resolve()).encode()).hexdigest() for path, p in paths.items()})
        sizes.update({path: p.stat().st_size for path, p in paths.items()})
    commit = hashlib.sha1(json.dumps([repo_id, ref, sorted(listing.items())]).encode()).hexdigest()

    def pointer(path):
        target = storage / "snapshots" / commit / path
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    for path, data in contents.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = pointer(path)
        target.symlink_to(os.path.relpath(blob, target.parent))
    if link:
        for path, p in paths.items():
            pointer(path).symlink_to(p.resolve())
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    tree = {path: {"size": sizes[path], "blob_id": blob_id} for path, blob_id in listing.items()}
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    return commit


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def go_offline(monkeypatch, cache_dir, hf_home):
    """Point huggingface_hub at `cache_dir` and turn the network off. Its constants are read at import, so patch them
    as well as the environment (diffusers re-exports `HF_HUB_OFFLINE` for its user agent)."""
    env = {"HF_HUB_CACHE": str(cache_dir), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", True)
