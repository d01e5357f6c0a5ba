"""Released weights on demand: fetched on first use from the Hugging Face Hub into a cache, checked, reused offline.

``weights_path(config)`` gives the local file of a released model's checkpoint (:class:`~stunet.weights.pretrained.
PretrainedConfig`). The file is looked up in the cache first, so a cached model never touches the network. Otherwise
the config's Hub sources are tried in order: huggingface_hub asks the Hub for the file's commit, ETag and size (a HEAD
request) and the body is read here (see "the transfer" below), with a progress bar, resumed with an HTTP range where a
connection breaks, and written under a temporary name that is moved into place only when complete, so an interrupted
download leaves nothing that loads and nothing at all on disk. Processes that need the same file at once (a cold cache
shared by parallel jobs) download it once: the first holds a lock file in the cache (``.locks/models--<org>--<repo>/
<etag>.lock``, where huggingface_hub keeps its own, ``fcntl.flock``) while it downloads, the others wait for it, then check the checksum and use
the file. A download never goes past the size the Hub declared
(it stops there) nor past ``STUNET_DOWNLOAD_TIMEOUT`` seconds (:func:`stunet.settings.download_timeout`, 6 hours
unless set); a server that sends nothing for ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds (10) breaks the connection, which is
resumed up to 5 times in a row. The other sources of a config (Google Drive, Baidu Netdisk) are for manual download
and are named in the messages.

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
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stunet import settings
from stunet.digest import file_sha256
from stunet.errors import CheckpointError
from stunet.locks import file_lock

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
    with tqdm(total=size, unit="B", unit_scale=True, desc=f"checking {path.name}",
              disable=not progress or size < 256 << 20, leave=False) as bar:
        return file_sha256(path, bar.update)


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


# -- the transfer ------------------------------------------------------------------------------------------------
# Why the GET is ours and not huggingface_hub.hf_hub_download's: its file_download.http_get (huggingface_hub 2.4) reads
# the whole body into its temporary file and only then compares the byte count with the size the HEAD declared, so a
# server that streams more than it declared (a GET without Content-Length) fills the disk first; it stops only on a
# single read that waits longer than HF_HUB_DOWNLOAD_TIMEOUT, so a server that sends a byte a second keeps it busy for
# ever; and it reads in 10 MB pieces, so nothing outside it (its progress bar is called once per 10 MB) could check
# size or time between two reads. It does remove its process-unique ``blobs/<etag>.<random>.incomplete`` when it raises
# (not when the process is killed), and never resumes another process's. Patching it would change every other user of
# huggingface_hub in the process. So huggingface_hub still does what it does well: the URL (hf_hub_url), the headers
# (build_hf_headers: user agent, the user's token), the HEAD (get_hf_file_metadata: commit, ETag, size, redirects and
# its errors, such as EntryNotFoundError for a missing companion) and the HTTP client (get_session: proxies and
# certificates as configured for huggingface_hub); the body is read here, piece by piece as the network delivers it,
# each piece checked against the declared size and the deadline before it is written, into the Hub's cache layout
# with its names (``blobs/<etag>``, ``snapshots/<commit>/<file>`` linking to it, ``refs/<revision>``), so
# try_to_load_from_cache and a copied cache work as before. The transfer runs in a worker thread that the caller waits for until the deadline
# only: a server that drips even its headers cannot hold the caller, and the partial file is removed the moment the
# caller gives up (the worker writes nothing after that; it ends at its next read).
RETRIES = 5  # broken connections in a row (without a byte between them) before the transfer fails
ETAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # becomes a file name under blobs/
COMMIT = re.compile(r"[0-9a-f]{40}")
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class TransferError(WeightsError):
    """A download that was stopped (more bytes than declared, past the deadline, a broken or refused transfer); its
    partial file is removed."""


class _Cancelled(Exception):
    """The caller stopped waiting (deadline or interruption): the worker ends without writing anything more."""


class _Transfer:
    """One file's download from one Hub source: :meth:`work` runs in a worker thread, :func:`_hub_download` watches."""

    def __init__(self, source: dict, filename: str, cache: Path, force: bool, seconds: float):
        self.source, self.filename, self.cache, self.force, self.seconds = source, filename, cache, force, seconds
        self.deadline = time.monotonic() + seconds
        self.lock = threading.Lock()  # held to write a piece or move the file into place, and to give up
        self.cancelled = threading.Event()
        self.partial: Path | None = None
        self.received, self.size = 0, None
        self.result: Path | None = None
        self.error: BaseException | None = None

    # -- the caller's side
    def late(self) -> TransferError:
        got = f"after {self.received:,} of {self.size:,} bytes" if self.size is not None else "before the file began"
        return TransferError(f"{self.filename}: the download did not finish within {self.seconds:g} s (the deadline "
                             f"{settings.DOWNLOAD_TIMEOUT}); stopped {got}, the partial file removed (raise "
                             f"{settings.DOWNLOAD_TIMEOUT} for a slow connection)")

    def give_up(self) -> None:
        with self.lock:
            self.cancelled.set()
            self._discard()

    # -- the worker's side
    def work(self) -> None:
        try:
            self._fetch()
        except BaseException as e:  # handed to the caller
            self.error = e
        finally:
            with self.lock:
                self._discard()

    def _discard(self) -> None:
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)
            self.partial = None

    def _check(self) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()
        if time.monotonic() > self.deadline:
            raise self.late()

    def _timeout(self, limit: float) -> float:
        """A network wait of at most ``limit`` seconds that ends by the deadline."""
        self._check()
        return max(0.01, min(float(limit), self.deadline - time.monotonic()))

    def _fetch(self) -> Path:
        from huggingface_hub import constants, hf_hub_url

        parts = self.filename.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise TransferError(f"{self.filename!r}: not a file name inside a Hub repository")
        revision = self.source.get("revision") or constants.DEFAULT_REVISION
        endpoint = _endpoint()
        url = hf_hub_url(self.source["hub"], self.filename, revision=revision, endpoint=endpoint)
        meta = self._head(url, endpoint)
        if not isinstance(meta.commit_hash, str) or not COMMIT.fullmatch(meta.commit_hash):
            raise TransferError(f"{url}: the server named no commit (X-Repo-Commit {meta.commit_hash!r})")
        if not isinstance(meta.etag, str) or not ETAG.fullmatch(meta.etag):
            raise TransferError(f"{url}: the server gave an ETag that cannot name a file ({meta.etag!r})")
        if meta.size is None or meta.size < 0:
            raise TransferError(f"{url}: the server declared no size; refused (a download without one has no end)")
        self.size = meta.size
        storage = repo_folder(self.source, self.cache)
        blob = storage / "blobs" / meta.etag
        pointer = storage / "snapshots" / meta.commit_hash / Path(*parts)
        new = self.force or not blob.is_file()
        if new:
            with self._blob_lock(storage, meta.etag):
                new = self.force or not blob.is_file()  # another process may have fetched it while this one waited
                if new:
                    self._get(url, meta.location, blob)
        with self.lock:
            if self.cancelled.is_set():
                raise _Cancelled()
            if new or self.force or not pointer.exists():
                _link(blob, pointer, new)
            if revision != meta.commit_hash:
                _write_ref(storage / "refs" / revision, meta.commit_hash)
            self.result = pointer
        return pointer

    def _blob_lock(self, storage: Path, etag: str):
        """Held while this process downloads the blob ``etag`` of ``storage``: :func:`stunet.locks.file_lock` on
        ``.locks/<storage>/<etag>.lock`` in the cache (outside ``blobs/``, which holds only whole files), so that
        processes downloading the same file into the same cache fetch it once; the others wait (within the deadline)
        and then find the blob in place."""
        lock = self.cache / ".locks" / storage.name / f"{etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)

        def waiting() -> None:
            print(f"stunet: another process is downloading {self.filename} into {self.cache}; waiting for it",
                  file=sys.stderr)
        return file_lock(lock, "the download lock", waiting=waiting, check=self._check)

    def _head(self, url: str, endpoint: str | None):
        """The file's metadata (huggingface_hub's HEAD, without its own retries, whose every attempt logs lines):
        tried up to 3 times where the Hub is busy (HTTP 429, 5xx) or slow, once where the answer is final (no such
        file or repository, no network)."""
        import httpx2
        from huggingface_hub import constants, get_hf_file_metadata
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(3):
            try:
                meta = get_hf_file_metadata(url, timeout=self._timeout(constants.HF_HUB_ETAG_TIMEOUT),
                                            endpoint=endpoint, retry_on_errors=False)
                self._check()
                return meta
            except (httpx2.TimeoutException, HfHubHTTPError) as e:
                status = getattr(getattr(e, "response", None), "status_code", None)
                if attempt == 2 or not (isinstance(e, httpx2.TimeoutException) or status in (429, 500, 502, 503,
                                                                                             504)):
                    raise
            time.sleep(min(2.0 ** attempt, max(0.0, self.deadline - time.monotonic())))

    def _get(self, url: str, location: str, blob: Path) -> None:
        import httpx2
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session
        from huggingface_hub.utils import tqdm as hub_tqdm

        headers = build_hf_headers()
        if urlsplit(location).netloc != urlsplit(url).netloc:  # a CDN's signed address: the token stays on the Hub
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Accept-Encoding"] = "identity"  # the bytes of the file, counted as they come
        blob.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self._check()
            self.partial = blob.with_name(f"{blob.name}.{uuid.uuid4().hex[:8]}.incomplete")
            out = open(self.partial, "wb")
        failures = 0
        with out, hub_tqdm(total=self.size, unit="B", unit_scale=True, unit_divisor=1024, desc=self.filename) as bar:
            while True:
                asked = {**headers, **({"Range": f"bytes={self.received}-"} if self.received else {})}
                try:
                    timeout = httpx2.Timeout(self._timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT))
                    with get_session().stream("GET", location, headers=asked, follow_redirects=True,
                                              timeout=timeout) as response:
                        self._accept(response, location, out, bar)
                        for piece in response.iter_raw():
                            if piece:
                                self._write(piece, location, out)
                                bar.update(len(piece))
                                failures = 0
                    if self.received == self.size:
                        break
                    problem = f"the body ended after {self.received:,} of {self.size:,} bytes"
                except httpx2.TransportError as e:  # broken, refused or silent connection: resumed where it broke
                    problem = _first_line(e)
                failures += 1
                if failures > RETRIES:
                    raise TransferError(f"{location}: the transfer broke {failures} times in a row without progress "
                                        f"({problem}); the partial file removed")
                time.sleep(min(1.0, max(0.0, self.deadline - time.monotonic())))
                self._check()
        with self.lock:
            if self.cancelled.is_set():
                raise _Cancelled()
            os.replace(self.partial, blob)
            self.partial = None

    def _accept(self, response, location: str, out, bar) -> None:
        """Refuse an answer that is not the (rest of the) file as declared, before reading its body."""
        status = response.status_code
        if status not in (200, 206):  # the body (an error page) is not read
            raise TransferError(f"{location}: HTTP {status} {response.reason_phrase}".rstrip())
        if status == 200 and self.received:  # the range was ignored: the whole file again, from its first byte
            out.seek(0)
            out.truncate()
            self.received = 0
            bar.reset(total=self.size)
        if status == 206:
            match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if not match or int(match[1]) != self.received or match[3] not in ("*", str(self.size)):
                raise TransferError(f"{location}: answered the range bytes={self.received}- with "
                                    f"{response.headers.get('Content-Range')!r} (the file has {self.size:,} bytes)")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise TransferError(f"{location}: sent the file {encoding}-encoded where its bytes were asked for")
        length = response.headers.get("Content-Length")
        if length is not None:
            if not length.strip().isdigit():
                raise TransferError(f"{location}: Content-Length {length!r} is not a number of bytes")
            if self.received + int(length) > self.size:
                raise TransferError(f"{location}: declares {self.received + int(length):,} bytes where the Hub "
                                    f"declared {self.size:,}; refused before reading them")

    def _write(self, piece: bytes, location: str, out) -> None:
        if self.received + len(piece) > self.size:
            raise TransferError(f"{location}: the server sent more than the {self.size:,} bytes it declared; stopped "
                                f"there, the partial file removed")
        with self.lock:
            self._check()
            out.write(piece)
        self.received += len(piece)


def _link(blob: Path, pointer: Path, new: bool) -> None:
    """``pointer`` (snapshots/<commit>/<file>) as a relative symbolic link to ``blob``, replaced in one step; where the
    file system has no links, the file itself (moved when new, else copied), as huggingface_hub does."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    temporary = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.link")
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), temporary)
    except OSError:
        if new:
            os.replace(blob, pointer)
        else:
            shutil.copyfile(blob, temporary)
            os.replace(temporary, pointer)
        return
    os.replace(temporary, pointer)


def _write_ref(ref: Path, commit: str) -> None:
    """refs/<revision> names the commit a branch or tag was at (how try_to_load_from_cache finds the snapshot)."""
    try:
        if ref.read_text() == commit:
            return
    except OSError:
        pass
    ref.parent.mkdir(parents=True, exist_ok=True)
    temporary = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(commit)
    os.replace(temporary, ref)


def _hub_download(source: dict, filename: str, cache: Path, force: bool = False,
                  seconds: float | None = None) -> Path:
    """``filename`` of a Hub source into the cache (its snapshot path); at most ``seconds`` (``STUNET_DOWNLOAD_TIMEOUT``
    unless given) from the first request to the last byte. Raises :class:`TransferError` (one line) when stopped."""
    transfer = _Transfer(source, filename, cache, force, settings.download_timeout() if seconds is None else seconds)
    worker = threading.Thread(target=transfer.work, name=f"stunet-download {filename}", daemon=True)
    worker.start()
    try:
        worker.join(transfer.seconds)
    finally:  # the deadline, or an interruption (Ctrl-C): nothing more is written, the partial file goes now
        if worker.is_alive() and transfer.result is None:
            transfer.give_up()
    if transfer.result is not None:
        return transfer.result
    if worker.is_alive() or isinstance(transfer.error, _Cancelled):
        raise transfer.late()
    raise transfer.error


def _download(config, force: bool = False, cache: str | Path | None = None) -> tuple[Path, dict]:
    sources = hub_sources(config)
    if not sources:
        raise WeightsError(f"{config.name}: {config.checkpoint_file} has no source that can be downloaded "
                           f"automatically; {_where_else(config)}")
    cache = cache_dir(cache)
    seconds = settings.download_timeout()
    try:  # before any request: a cache that cannot be written fails here, not after the transfer
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as e:
        raise WeightsError(f"{config.name}: the cache folder {cache} cannot be written ({_first_line(e)}); choose "
                           f"another (stunet-download --cache-dir, or {settings.HOME})") from e
    problems = []
    for source in sources:
        print(f"stunet: downloading {config.name} ({source['file']}) from {describe_source(source)} into {cache}",
              file=sys.stderr)
        try:
            return _hub_download(source, source["file"], cache, force, seconds), source
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
    """The local checkpoint of a released model (a :class:`~stunet.models.release.PretrainedConfig`): from
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
