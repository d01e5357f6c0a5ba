"""Released weights on demand: fetched on first use from the Hugging Face Hub into a cache, checked, reused offline.

``weights_path(config)`` gives the local file of a released model's checkpoint (:class:`~stunet.weights.pretrained.
PretrainedConfig`). The file is looked up in the cache first, so a cached model never touches the network. Otherwise
the config's Hub sources are tried in order with ``huggingface_hub.hf_hub_download`` (progress bar, retries that resume
an interrupted transfer with HTTP ranges, the file written under a temporary name and moved into place only when
complete, so an interrupted download leaves nothing that loads). The other sources of a config (Google Drive, Baidu
Netdisk) are for manual download and are named in the messages.

Cache: the Hugging Face Hub cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), or ``$STUNET_HOME`` when
set (read by :mod:`stunet.settings`), or the ``cache`` folder a caller passes (``stunet-download --cache-dir``); the layout is the Hub's either way (``models--<org>--<repo>/snapshots/<commit>/<file>``), so the folder can be
copied to another machine as it is. ``HF_ENDPOINT`` selects a mirror; ``HF_HUB_OFFLINE=1`` forbids network access.

Checksums: a file whose SHA-256 differs from the config's ``checkpoint.sha256`` is refused (never loaded). Where the
config knows no checksum, the hash of the first download is recorded in ``stunet-checksums.json`` inside the cached
repository's folder and later loads are checked against it. A load re-hashes the file when its size or modification
time differs from the record's; ``verify_cached`` (``stunet-download --verify``) always re-hashes.

Downloaded files are read by the same safe loader as any other checkpoint (:mod:`stunet.weights.checkpoint`); a download
never implies trust.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from stunet import settings
from stunet.errors import CheckpointError

ENV_HOME = settings.HOME
RECORD_NAME = "stunet-checksums.json"


class WeightsError(CheckpointError):
    """Released weights that are not available or are refused; a one-line message naming the file, the sources and
    what to do."""


@dataclass(frozen=True)
class Cached:
    """A released checkpoint in the cache: its file, the Hub source it came from, and how its checksum stands."""

    name: str
    path: Path
    source: dict
    checksum: str  # "known" (the config's), "recorded" (first download), "mismatch" or "unchecked"
    sha256: str | None = None


def cache_dir(cache: str | Path | None = None) -> Path:
    """Where downloaded weights live: ``cache`` when given, else ``$STUNET_HOME``, else the Hugging Face Hub cache."""
    if cache is not None:
        return Path(cache).expanduser().resolve()
    home = settings.home()
    if home is not None:
        return home
    from huggingface_hub import constants
    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser().resolve()


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now with stunet's yes/no parser, and as huggingface_hub read it at import)."""
    from huggingface_hub import constants
    return settings.flag("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def hub_sources(config) -> list[dict]:
    return [s for s in config.sources if "hub" in s]


def describe_source(source: dict) -> str:
    if "hub" in source:
        where = f"Hub {source['hub']}/{source['file']}"
        if source.get("revision"):
            where += f"@{source['revision']}"
        endpoint = _endpoint()
        return where + (f" (via {endpoint})" if endpoint and "hub" in source else "")
    return str(source.get("url", source))


def describe_sources(config) -> str:
    return ", ".join(describe_source(s) for s in config.sources) or "none listed"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _where_else(config) -> str:
    return (f"sources: {describe_sources(config)}; run `stunet-download {config.name}` on a machine with network and "
            f"copy the cache here (see docs/model_zoo.md), or give the downloaded file itself (--checkpoint FILE, "
            f"pretrained=FILE, -pretrained_weights FILE)")


# -- the checksum record -------------------------------------------------------------------------------------------
def repo_folder(source: dict, cache: Path) -> Path:
    from huggingface_hub.file_download import repo_folder_name
    return cache / repo_folder_name(repo_id=source["hub"], repo_type="model")


def record_file(source: dict, cache: str | Path | None = None) -> Path:
    """The JSON that records the checksums of the files of one Hub repository in the cache."""
    return repo_folder(source, cache_dir(cache)) / RECORD_NAME


def _read_records(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: the checksum record cannot be read ({_first_line(e)}); delete it to record the "
                           f"checksums again at the next load") from e


def _write_records(path: Path, records: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def sha256_of(path: str | Path, progress: bool = True) -> str:
    """The SHA-256 of a file (a progress bar on stderr for large files)."""
    from tqdm import tqdm

    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"checking {path.name}",
                                     disable=not progress or size < 256 << 20, leave=False) as bar:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify(config, path: str | Path, source: dict, rehash: bool = False, progress: bool = True,
           cache: str | Path | None = None) -> str:
    """Check a cached checkpoint against the config's checksum, or the one recorded at its first download (recorded
    now if there is none). Returns "known" or "recorded"; raises :class:`WeightsError` on a mismatch."""
    path = Path(path)
    record = record_file(source, cache)
    records = _read_records(record)
    entry = records.get(source["file"])
    stat = path.resolve().stat()
    if config.sha256:
        expected, said_by, status = config.sha256.lower(), f"the config {config.origin or config.name}", "known"
    elif entry:
        expected, said_by, status = entry["sha256"], f"its first download ({entry.get('recorded', '?')}, {record})", \
            "recorded"
    else:
        expected, said_by, status = None, "", "recorded"
    unchanged = entry is not None and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
    if unchanged and not rehash and expected is not None and entry.get("sha256") == expected:
        return status
    actual = sha256_of(path, progress)
    if expected is not None and actual != expected:
        error = WeightsError(f"{config.name}: {path} has SHA-256 {actual} but {said_by} says {expected} "
                           f"(source {describe_source(source)}); refused, not loaded. Delete the file (or run "
                           f"`stunet-download {config.name} --force`) to fetch it again, or tell the maintainers if "
                           f"the source changed")
        error.actual = actual
        raise error
    records[source["file"]] = {"sha256": actual, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                               "source": describe_source(source),
                               "recorded": (entry or {}).get("recorded") or datetime.datetime.now(
                                   datetime.timezone.utc).isoformat(timespec="seconds"),
                               "checked_against": "config" if config.sha256 else "first download"}
    try:
        _write_records(record, records)
    except OSError as e:  # a read-only cache: checked all the same, recorded next time it can be
        warnings.warn(f"{config.name}: could not write the checksum record {record} ({_first_line(e)}); the file was "
                      f"checked and will be re-hashed at the next load", stacklevel=3)
    return status


# -- finding and downloading -------------------------------------------------------------------------------------
def _cached(source: dict, filename: str, cache: Path):
    from huggingface_hub import try_to_load_from_cache
    return try_to_load_from_cache(source["hub"], filename, cache_dir=str(cache), revision=source.get("revision"))


def cached_path(config, cache: str | Path | None = None) -> tuple[Path, dict] | None:
    """(file, Hub source) of a config's checkpoint already in the cache, or None. Never touches the network."""
    cache = cache_dir(cache)
    for source in hub_sources(config):
        found = _cached(source, source["file"], cache)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found), source
    return None


def _hub_download(source: dict, filename: str, cache: Path, force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(source["hub"], filename, revision=source.get("revision"), cache_dir=str(cache),
                                endpoint=_endpoint(), force_download=force))


def _download(config, force: bool = False, cache: str | Path | None = None) -> tuple[Path, dict]:
    sources = hub_sources(config)
    if not sources:
        raise WeightsError(f"{config.name}: {config.checkpoint_file} has no source that can be downloaded "
                           f"automatically; {_where_else(config)}")
    cache = cache_dir(cache)
    problems = []
    for source in sources:
        print(f"stunet: downloading {config.name} ({source['file']}) from {describe_source(source)} into {cache}",
              file=sys.stderr)
        try:
            return _hub_download(source, source["file"], cache, force), source
        except KeyboardInterrupt:
            raise
        except Exception as e:  # huggingface_hub raises HTTP, connection, OS and value errors
            problems.append(f"{describe_source(source)}: {_first_line(e)}")
    raise WeightsError(f"{config.name}: {config.checkpoint_file} could not be downloaded ({'; '.join(problems)}); "
                       f"nothing was written to the cache; {_where_else(config)}")


def _fetch_companion(config, source: dict, path: Path, downloaded: bool,
                     cache: str | Path | None = None) -> Path | None:
    """The companion (.model.pkl) beside the cached checkpoint: from the cache, or fetched right after the checkpoint
    was. A companion missing on the Hub is a warning, not an error."""
    name = source.get("companion", config.companion_file)
    if not name:
        return None
    cache = cache_dir(cache)
    found = _cached(source, name, cache)
    if isinstance(found, str):
        return Path(found)
    if not downloaded or offline():
        return None
    from huggingface_hub.errors import EntryNotFoundError
    try:
        companion = _hub_download(source, name, cache)
    except EntryNotFoundError:
        why = "is not on the Hub"
    except Exception as e:  # the checkpoint itself is there: go on without its companion
        why = f"could not be downloaded ({_first_line(e)})"
    else:
        if companion.parent != path.parent:
            warnings.warn(f"{config.name}: {name} is in another revision of {source['hub']} than {source['file']}; "
                          f"copy it beside {path} if it belongs to it", stacklevel=3)
        return companion
    consequence = ("the checkpoint loads without it, with the preprocessing of the config" if not config.unknown
                   else f"the config does not know {', '.join(config.unknown)}, which it would have filled in: put "
                        f"{name} beside {path}")
    warnings.warn(f"{config.name}: the companion file {name} {why} ({describe_source(source)}); {consequence}",
                  stacklevel=3)
    return None


def weights_path(config, download: bool = True, force: bool = False, progress: bool = True,
                 fetch_companion: bool = False, cache: str | Path | None = None) -> Path:
    """The local checkpoint of a released model (a :class:`~stunet.weights.pretrained.PretrainedConfig`): from
    the cache, else downloaded (unless ``download`` is False or ``HF_HUB_OFFLINE`` is set), then checked against the
    known or recorded checksum. Its companion file (``.model.pkl``), where the config names one, is fetched beside it
    with a download (or, with ``fetch_companion``, whenever it is neither cached nor known to be missing on the Hub).
    ``cache`` replaces the cache folder (:func:`cache_dir`) for this call. Raises :class:`WeightsError` (one line) when the file is missing or refused."""
    cache = cache_dir(cache)
    found = None if force else cached_path(config, cache)
    downloaded = False
    if found is None:
        if not download or offline():
            why = "offline mode is on (HF_HUB_OFFLINE)" if download else "downloading was not asked for"
            raise WeightsError(f"{config.name}: {config.checkpoint_file} is not in the cache ({cache}) and "
                               f"{why}; {_where_else(config)}")
        found = _download(config, force, cache)
        downloaded = True
    path, source = found
    verify(config, path, source, rehash=downloaded, progress=progress, cache=cache)
    _fetch_companion(config, source, path, downloaded or fetch_companion, cache)
    return path


def verify_cached(config, progress: bool = True, cache: str | Path | None = None) -> Cached | None:
    """Re-hash a cached checkpoint (None when it is not cached). A mismatch is reported, not raised."""
    cache = cache_dir(cache)
    found = cached_path(config, cache)
    if found is None:
        return None
    path, source = found
    try:
        status = verify(config, path, source, rehash=True, progress=progress, cache=cache)
    except WeightsError as e:
        return Cached(config.name, path, source, "mismatch", getattr(e, "actual", None))
    entry = _read_records(record_file(source, cache)).get(source["file"], {})
    return Cached(config.name, path, source, status, entry.get("sha256"))
