"""``stunet-download``: fetch released STU-Net weights into the cache ahead of use, check the cache, list the zoo.

The weights go where every other use of a released model looks for them (stunet-predict --pretrained NAME,
create_model(NAME, pretrained=True), nnUNetv2_train -pretrained_weights NAME): the Hugging Face Hub cache, or
$STUNET_HOME when set. A cached model is reused without network access.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stunet.cli.errors import cli_entry, command_parser, one_line
from stunet.weights.pretrained import get_pretrained_config, list_pretrained

EPILOG = """examples:
  stunet-download stunet_base.totalseg104          # into the cache, then reused offline
  stunet-download all --cache-dir /data/stunet      # the whole zoo, into a folder to copy elsewhere
  stunet-download all --verify                      # re-check the SHA-256 of everything cached
  stunet-download --list

environment: STUNET_HOME (the cache, default the Hugging Face Hub cache), HF_ENDPOINT (a Hub mirror),
HF_HUB_OFFLINE=1 (no network: only the cache), STUNET_DOWNLOAD_TIMEOUT (seconds one file may take, default 21600)"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("stunet-download", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="released models (" + ", ".join(list_pretrained())
                                                            + "), or all")
    p.add_argument("--verify", action="store_true", help="re-hash the cached files instead of downloading")
    p.add_argument("--force", action="store_true", help="download again even if cached (replaces a refused file)")
    p.add_argument("--list", action="store_true", help="list the released models and whether they are cached")
    p.add_argument("--cache-dir", type=Path, help="the cache folder (instead of STUNET_HOME, for this run)")
    return p


def _size(path: Path) -> str:
    size = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


CHECKSUM = {"known": "SHA-256 matches the config", "recorded": "SHA-256 matches the record of its first download"}


def _copy_hint(cache: Path, folders: list[Path]) -> str:
    names = " ".join(sorted({f.name for f in folders}))
    return (f"cache: {cache}\n"
            f"to use them on a machine without network, copy these folders (they hold symbolic links: use tar or "
            f"rsync -a):\n"
            f"  tar -C {cache} -cf stunet-weights.tar {names}\n"
            f"there, unpack into a folder and point STUNET_HOME at it (or unpack into its Hugging Face cache):\n"
            f"  mkdir -p ~/stunet-weights && tar -C ~/stunet-weights -xf stunet-weights.tar\n"
            f"  export STUNET_HOME=~/stunet-weights HF_HUB_OFFLINE=1")


@cli_entry("stunet-download")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from stunet.weights.hub import (WeightsError, cache_dir, cached_path, describe_sources, repo_folder, verify_cached,
                                    weights_path)

    cache = cache_dir(args.cache_dir)  # --cache-dir, else STUNET_HOME, else the Hugging Face Hub cache

    if args.list:
        for name in list_pretrained():
            config = get_pretrained_config(name)
            found = cached_path(config, cache)
            state = f"cached at {found[0]} ({_size(found[0])})" if found else "not cached"
            checksum = "SHA-256 known" if config.sha256 else "SHA-256 recorded at first download"
            print(f"{name}: {state}; {checksum}; sources: {describe_sources(config)}")
        print(f"cache: {cache}")
        return
    if not args.names:
        parser.error("name the released models to download (or all), or pass --list")
    names = list_pretrained() if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in list_pretrained()]
    if unknown:
        parser.error(f"no released model called {', '.join(unknown)}; known: {', '.join(list_pretrained())}, all")

    failed, folders = [], []
    for name in names:
        config = get_pretrained_config(name)
        if args.verify:
            cached = verify_cached(config, cache=cache)
            if cached is None:
                print(f"{name}: not cached")
            elif cached.checksum == "mismatch":
                failed.append(name)
                print(f"{name}: {one_line(str(cached.path))}: SHA-256 {cached.sha256} differs from the "
                      f"{'config' if config.sha256 else 'record of its first download'}; refused (stunet-download "
                      f"{name} --force fetches it again)", file=sys.stderr)
            else:
                print(f"{name}: {cached.path}: {CHECKSUM[cached.checksum]}")
            continue
        try:
            path = weights_path(config, force=args.force, fetch_companion=True, cache=cache)
        except WeightsError as e:
            failed.append(name)
            print(f"stunet-download: error: {one_line(str(e))}", file=sys.stderr)
            continue
        found = cached_path(config, cache)
        status = CHECKSUM["known" if config.sha256 else "recorded"]
        companion = path.with_name(path.name + ".pkl")
        extra = f", with {companion.name}" if companion.is_file() else ""
        print(f"{name}: {path} ({_size(path)}{extra}); {status}")
        if found:
            folders.append(repo_folder(found[1], cache))
    if folders:
        print(_copy_hint(cache, folders))
    if failed:
        sys.exit(1)
