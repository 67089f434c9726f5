"""A directory of named-tensor entries that never serves a bad entry, never breaks a run, and is filled by one
process at a time.

An entry `<key>` is `<key>.safetensors` (any named tensors) and `<key>.json`, its index, written last: an entry
without its index is incomplete. The index records what the entry stands for (`description`), the tensors'
names, dtypes, shapes and offsets as the file's header holds them, the file's size and checksum, and when it was
created; the index's mtime is the entry's last use.

Checks, by measured cost (a 300 MB file in the page cache, 2-core VM): the size and the header are compared with
the index on every load (a stat and a read of a few hundred bytes, about 20 us). The full checksum (xxh3-128,
about 30 ms for 300 MB, as fast as reading the file; sha256 takes 220 ms, blake2b 410 ms) runs the first time a
process loads a file, and on every load with `verify=True`; `verify=False` skips it. A bad entry is logged with
the file and the reason, moved into `quarantine/` and reported as absent, so that the caller computes it again.
An index written by an older format (no checksum) is removed instead: nothing is wrong with it but its age.

`fill` computes missing entries under one lock per key (`.locks/<key>.lock`, flock: the kernel releases it when
its holder dies, SIGKILL included). Keys are locked in sorted order, so two processes that need overlapping sets
of keys cannot deadlock; a process that waits logs who holds the lock and gives up after a timeout with an
error that says what to do. A store that cannot write (full disk, read-only directory) warns and hands the
computed tensors back in memory: the run goes on, uncached.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import xxhash
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from torch import Tensor

from vitcls.errors import ConfigError, VitclsError
from vitcls.io import atomic_write, read_json, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "vitcls.feature_store/1"
CHECKSUM = "xxh3_128"
QUARANTINE = "quarantine"
LOCKS = ".locks"
DEFAULT_LOCK_TIMEOUT_S = 4 * 3600.0  # a backbone pass over a large folder can take hours
WAIT_REPORT_EVERY_S = 300.0
QUIET_WAIT_S = 1.0
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_MAX_HEADER_BYTES = 100_000_000
_READ_CHUNK = 8 << 20

# Files whose full checksum this process has checked: (path, device, inode, size, mtime_ns, checksum).
_VERIFIED: set[tuple] = set()

Compute = Callable[[list[str]], Mapping[str, tuple[Mapping[str, Tensor], Mapping[str, Any]]]]


class StoreLockTimeout(VitclsError):
    """Another process held the lock of an entry longer than the timeout."""


class EntryBusy(VitclsError):
    """Another process holds the lock of an entry (it is filling it)."""


class BadEntry(Exception):
    """An entry that must not be served: `reason` names the file; `outdated` entries are removed, not kept."""

    def __init__(self, reason: str, outdated: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.outdated = outdated


@dataclass
class EntryInfo:
    """One entry as the directory shows it, without checking its data."""

    key: str
    description: dict[str, Any]
    size: int  # bytes of its files
    last_used: float  # unix time
    created: float | None
    state: str  # "complete", "incomplete" (no index or no tensors file), "outdated" (older index format)
    paths: list[Path] = field(default_factory=list)


@dataclass
class QuarantinedEntry:
    path: Path
    size: int
    moved: float  # unix time it was moved aside
    reason: str


def file_checksum(path: str | os.PathLike) -> str:
    digest = xxhash.xxh3_128()
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return f"{CHECKSUM}:{digest.hexdigest()}"


def read_header(path: Path, size: int) -> dict[str, Any]:
    """The tensor table of a safetensors file (its JSON header without `__metadata__`); BadEntry if unreadable."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise BadEntry(f"{path}: {size} bytes, too short for a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise BadEntry(f"{path}: its header length ({length} bytes) does not fit the file ({size} bytes)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise BadEntry(f"{path}: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise BadEntry(f"{path}: its header is not a table of tensors")
    header.pop("__metadata__", None)
    return header


def is_disk_full(error: BaseException) -> bool:
    # safetensors reports write errors as SafetensorError("... No space left on device (os error 28)")
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(error)


class FeatureStore:
    """Named tensors under string keys in one directory; see the module docstring for the guarantees.

    `verify`: None (default) checks an entry's full checksum the first time this process loads it, True on
    every load, False never (size and header only). `lock_timeout_s`: how long `fill` and `save` wait for
    another process that fills the same key.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        verify: bool | None = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ):
        self.directory = Path(directory).expanduser()
        self.verify = verify
        self.lock_timeout_s = lock_timeout_s

    # -- paths -------------------------------------------------------------------------------------------------
    def paths(self, key: str) -> tuple[Path, Path]:
        """(tensors file, index) of `key`."""
        check_key(key)
        return self.directory / f"{key}.safetensors", self.directory / f"{key}.json"

    def lock_path(self, key: str) -> Path:
        return self.directory / LOCKS / f"{key}.lock"

    def _holder_path(self, key: str) -> Path:
        return self.directory / LOCKS / f"{key}.holder.json"

    # -- reading -----------------------------------------------------------------------------------------------
    def load(self, key: str, verify: bool | None = None) -> dict[str, Tensor] | None:
        """The entry's tensors, memory-mapped (pages are read as they are used); None when it is absent or bad
        (a bad one is logged and moved aside first, so that the caller computes it again)."""
        try:
            return self._load(key, self.verify if verify is None else verify)
        except BadEntry as bad:
            self._discard_unless_busy(key, bad)
            return None

    def _load(self, key: str, verify: bool | None) -> dict[str, Tensor] | None:
        """The tensors, None when the entry is absent; BadEntry when it is there but must not be served."""
        index = self._checked_index(key, verify)
        if index is None:
            return None
        tensors_path, index_path = self.paths(key)
        try:
            tensors = safetensors.torch.load_file(tensors_path)
        except (SafetensorError, OSError, ValueError) as error:
            raise BadEntry(f"{tensors_path}: safetensors cannot read it ({error})") from None
        with suppress(OSError):  # a read-only cache still serves
            os.utime(index_path)  # the entry's last use (a few microseconds)
        return tensors

    def _checked_index(self, key: str, verify: bool | None) -> dict[str, Any] | None:
        """The index of a sound entry; None when the entry is absent; BadEntry otherwise."""
        tensors_path, index_path = self.paths(key)
        has_tensors, has_index = tensors_path.is_file(), index_path.is_file()
        if not (has_tensors or has_index):
            return None
        if not has_index:
            raise BadEntry(f"{tensors_path}: no index {index_path.name} beside it (a write that did not finish)")
        try:
            index = read_json(index_path)
        except (OSError, ValueError) as error:
            raise BadEntry(f"{index_path}: unreadable index ({error})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise BadEntry(f"{index_path}: an index of an older format, without a checksum", outdated=True)
        if not {"size", "tensors", "checksum"} <= index.keys():
            raise BadEntry(f"{index_path}: an index without size, tensors or checksum")
        if not has_tensors:
            raise BadEntry(f"{tensors_path}: missing (its index {index_path.name} is there)")
        try:
            stat = tensors_path.stat()
            if stat.st_size != index["size"]:
                raise BadEntry(f"{tensors_path}: {stat.st_size} bytes, its index records {index['size']} (truncated?)")
            if read_header(tensors_path, stat.st_size) != index["tensors"]:
                raise BadEntry(f"{tensors_path}: its header differs from the tensors its index records")
            identity = (str(tensors_path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, index["checksum"])
            if verify or (verify is None and identity not in _VERIFIED):
                checksum = file_checksum(tensors_path)
                if checksum != index["checksum"]:
                    raise BadEntry(f"{tensors_path}: checksum {checksum} differs from the index's {index['checksum']}")
                _VERIFIED.add(identity)
        except OSError as error:  # removed meanwhile, unreadable, an I/O error of the disk
            raise BadEntry(f"{tensors_path}: cannot read it ({error})") from None
        return index

    # -- repairing ---------------------------------------------------------------------------------------------
    def _discard_unless_busy(self, key: str, bad: BadEntry) -> None:
        """Move a bad entry aside, unless another process is filling it right now (it replaces the entry)."""
        try:
            with self._locked([key], timeout_s=0):
                try:  # checked again under the lock: another process may have replaced it meanwhile
                    self._checked_index(key, verify=True)
                except BadEntry as still_bad:
                    self._discard(key, still_bad)
        except EntryBusy:
            log.warning("feature store: not serving %s (%s); another process is filling it", key, bad.reason)

    def _discard(self, key: str, bad: BadEntry) -> None:
        """Remove an outdated entry, or move a bad one into quarantine/ (the caller holds the key's lock)."""
        present = [path for path in self.paths(key) if path.exists()]
        if not present:
            return
        try:
            if bad.outdated:
                for path in present:
                    path.unlink(missing_ok=True)
                log.warning("feature store: removed %s (%s); it is computed again", key, bad.reason)
                return
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.directory / QUARANTINE / f"{key}.{stamp}.{os.getpid()}"
            aside.mkdir(parents=True, exist_ok=True)
            for path in present:
                os.replace(path, aside / path.name)
            (aside / "reason.txt").write_text(bad.reason + "\n", encoding="utf-8")
        except OSError as error:
            log.warning("feature store: bad entry %s: %s; it is computed again (and replaced: moving it aside "
                        "failed: %s)", key, bad.reason, error)
            return
        log.warning("feature store: bad entry %s: %s; moved aside to %s, it is computed again", key, bad.reason, aside)

    # -- writing -----------------------------------------------------------------------------------------------
    def save(self, key: str, tensors: Mapping[str, Tensor], description: Mapping[str, Any]) -> bool:
        """Store `tensors` under `key` (replacing an entry there); False, with a warning, when it could not."""
        with self._locked([key], self.lock_timeout_s):
            return self._write(key, tensors, description)

    def _write(self, key: str, tensors: Mapping[str, Tensor], description: Mapping[str, Any]) -> bool:
        """Write the tensors file, then the index (the caller holds the key's lock)."""
        tensors_path, index_path = self.paths(key)
        contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        checksum: list[str] = []

        def write(tmp: Path) -> None:
            safetensors.torch.save_file(contiguous, tmp)
            checksum.append(file_checksum(tmp))  # of the bytes as they reached the file

        try:
            index_path.unlink(missing_ok=True)  # an entry being replaced is incomplete until its new index exists
            atomic_write(tensors_path, write)
            stat = tensors_path.stat()
            index = {
                "format": FORMAT,
                "key": key,
                "description": dict(description),
                "tensors": read_header(tensors_path, stat.st_size),
                "size": stat.st_size,
                "checksum": checksum[0],
                "created": time.time(),
                "created_by": {"host": socket.gethostname(), "pid": os.getpid()},
            }
            write_json_atomic(index_path, index)
        except (OSError, SafetensorError, BadEntry) as error:
            for path in (index_path, tensors_path):
                path.unlink(missing_ok=True)
            hint = f"; free space, e.g. vitcls-cache prune {self.directory} --max-size SIZE" if is_disk_full(error) else ""
            log.warning(
                "feature store: could not store %s in %s (%s); the run goes on with the tensors in memory, "
                "not cached%s", key, self.directory, error, hint,
            )
            return False
        _VERIFIED.add((str(tensors_path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, checksum[0]))
        return True

    def _remove_temporaries(self, key: str) -> None:
        """Temporary files of a writer of `key` that died (the caller holds the key's lock: none is alive)."""
        for pattern in (f".{key}.safetensors.*.tmp", f".{key}.json.*.tmp"):
            for path in self.directory.glob(pattern):
                path.unlink(missing_ok=True)
                log.info("feature store: removed %s, left by a writer that did not finish", path)

    # -- filling -----------------------------------------------------------------------------------------------
    def fill(self, keys: list[str], compute: Compute, timeout_s: float | None = None) -> dict[str, dict[str, Tensor]]:
        """The tensors of every key: loaded when stored, otherwise computed and stored.

        `compute(missing_keys)` returns `{key: (tensors, description)}` for at least those keys, in one pass (all
        splits of a dataset, all taps of a bank). It runs at most once, on the keys that are still missing after
        this process holds their locks: a process that filled them meanwhile spares the work. Waits up to
        `timeout_s` (default: the store's `lock_timeout_s`) for other processes; raises StoreLockTimeout then.
        """
        keys = list(dict.fromkeys(keys))
        found = {key: self.load(key) for key in keys}
        missing = [key for key in keys if found[key] is None]
        if not missing:
            return found
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        with self._locked(missing, timeout_s, purpose=f"to compute {len(missing)} entries"):
            for key in missing:
                try:
                    found[key] = self._load(key, self.verify)
                except BadEntry as bad:
                    self._discard(key, bad)
            still_missing = [key for key in missing if found[key] is None]
            if still_missing:
                for key in still_missing:
                    self._remove_temporaries(key)
                computed = compute(still_missing)
                absent = [key for key in still_missing if key not in computed]
                if absent:
                    raise VitclsError(f"feature store: the computation returned no tensors for {absent}")
                for key in still_missing:
                    tensors, description = computed[key]
                    found[key] = dict(tensors)
                    if self._write(key, tensors, description):
                        with suppress(BadEntry):  # served from the memory-mapped file, as a later run will be
                            found[key] = self._load(key, verify=False) or found[key]
        return found

    # -- locking -----------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, keys: list[str], timeout_s: float, purpose: str = "") -> Iterator[None]:
        """Hold the locks of `keys`, taken in sorted order (no deadlock between overlapping sets of keys).
        timeout_s=0 tries once and raises EntryBusy."""
        deadline = time.monotonic() + timeout_s
        with ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self._hold(key, deadline, timeout_s, purpose))
            yield

    @contextmanager
    def _hold(self, key: str, deadline: float, timeout_s: float, purpose: str) -> Iterator[None]:
        path = self.lock_path(key)
        lock = FileLock(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except Timeout:
            if timeout_s <= 0:
                raise EntryBusy(f"feature store: {key} in {self.directory} is being filled ({self._holder(key)})") from None
            self._wait(lock, key, deadline, timeout_s)
        except OSError as error:  # a read-only or full file system: the run goes on, unprotected
            log.warning("feature store: cannot lock %s (%s); going on without the lock", path, error)
            lock = None
        if lock is None:
            yield
            return
        try:
            with suppress(OSError):  # who holds the lock, for the message of a process that waits
                write_json_atomic(self._holder_path(key), {
                    "pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "purpose": purpose,
                })
            yield
        finally:
            self._holder_path(key).unlink(missing_ok=True)
            lock.release()

    def _wait(self, lock: FileLock, key: str, deadline: float, timeout_s: float) -> None:
        start = time.monotonic()
        with suppress(Timeout):  # a short wait goes unreported; by then the holder has said who it is
            lock.acquire(timeout=max(0.0, min(QUIET_WAIT_S, deadline - start)), poll_interval=0.05)
            return
        log.warning(
            "feature store: process %d waits for entry %s in %s, which another process is computing (%s); lock %s, "
            "waiting up to %.0f s", os.getpid(), key, self.directory, self._holder(key), lock.lock_file, timeout_s,
        )
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                lock.acquire(timeout=min(remaining, WAIT_REPORT_EVERY_S), poll_interval=0.1)
            except Timeout:
                if time.monotonic() < deadline:
                    log.warning("feature store: still waiting for %s (%.0f s so far; %s)", key,
                                time.monotonic() - start, self._holder(key))
                continue
            log.info("feature store: got the lock of %s after %.1f s", key, time.monotonic() - start)
            return
        raise StoreLockTimeout(
            f"feature store: waited {timeout_s:.0f} s for entry {key} in {self.directory}, which another process is "
            f"still computing ({self._holder(key)}; lock {lock.lock_file}). Wait for that run to finish and start "
            "again (its entries are then loaded), stop it if it hangs (its lock is released when it exits), or "
            "raise the lock timeout (feature_cache.lock_timeout_s)."
        )

    def _holder(self, key: str) -> str:
        try:
            holder = read_json(self._holder_path(key))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
            return f"held by pid {holder['pid']} on {holder['host']} since {since} {holder.get('purpose', '')}".strip()
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    # -- maintenance (vitcls-cache) ----------------------------------------------------------------------------
    def entries(self) -> list[EntryInfo]:
        """Every entry in the directory, complete or not, without reading its tensors."""
        if not self.directory.is_dir():
            return []
        stems: dict[str, list[Path]] = {}
        for path in self.directory.iterdir():
            if path.suffix in (".safetensors", ".json") and _KEY.fullmatch(path.stem) and path.is_file():
                stems.setdefault(path.stem, []).append(path)
        found = []
        for key, paths in sorted(stems.items()):
            tensors_path, index_path = self.paths(key)
            index: Any = None
            if index_path in paths:
                try:
                    index = read_json(index_path)
                except (OSError, ValueError):
                    index = {}
                if not isinstance(index, dict):
                    index = {}
                if tensors_path not in paths and index.get("format") != FORMAT:
                    continue  # some other JSON file in the directory
            if index is None or tensors_path not in paths:
                state = "incomplete"
            else:
                state = "complete" if index.get("format") == FORMAT else "outdated"
            index = index or {}
            try:
                size = sum(path.stat().st_size for path in paths)
                last_used = (index_path if index_path in paths else tensors_path).stat().st_mtime
            except FileNotFoundError:  # removed meanwhile
                continue
            description = index.get("description", {k: v for k, v in index.items() if k != "key"})
            found.append(EntryInfo(key, description, size, last_used, index.get("created"), state, sorted(paths)))
        return found

    def quarantined(self) -> list[QuarantinedEntry]:
        folder = self.directory / QUARANTINE
        if not folder.is_dir():
            return []
        found = []
        for aside in sorted(folder.iterdir()):
            if not aside.is_dir():
                continue
            size = sum(path.stat().st_size for path in aside.iterdir() if path.is_file())
            reason_file = aside / "reason.txt"
            reason = reason_file.read_text(encoding="utf-8").strip() if reason_file.is_file() else "unknown"
            found.append(QuarantinedEntry(aside, size, aside.stat().st_mtime, reason))
        return found

    def temporaries(self) -> list[Path]:
        """Temporary files of writers (alive, or dead and not cleaned yet)."""
        return sorted(self.directory.glob(".*.tmp")) if self.directory.is_dir() else []

    def verify_entry(self, key: str) -> BadEntry | None:
        """Check an entry in full (size, header, checksum): None when it is sound; else what is wrong, after moving
        it aside (an outdated one is removed). Raises EntryBusy while another process fills it."""
        with self._locked([key], timeout_s=0):
            try:
                self._checked_index(key, verify=True)  # its last use stays as it was
            except BadEntry as bad:
                self._discard(key, bad)
                return bad
        return None

    def remove(self, key: str) -> None:
        """Delete an entry; raises EntryBusy while another process fills it."""
        with self._locked([key], timeout_s=0):
            for path in self.paths(key):
                path.unlink(missing_ok=True)
            self._remove_temporaries(key)

    def remove_temporaries_of_dead_writers(self) -> list[Path]:
        """Temporary files whose key no process holds (their writer died); returns those removed."""
        removed = []
        for path in self.temporaries():
            key = temporary_key(path)
            if key is None:
                continue
            try:
                with self._locked([key], timeout_s=0):
                    if path.exists():
                        path.unlink()
                        removed.append(path)
            except EntryBusy:
                continue
        return removed


def temporary_key(path: Path) -> str | None:
    """The key of a writer's temporary file `.<key>.<safetensors|json>.<random>.tmp`."""
    match = re.fullmatch(r"\.(.+)\.(?:safetensors|json)\.[^.]+\.tmp", path.name)
    return match.group(1) if match and _KEY.fullmatch(match.group(1)) else None


def check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ConfigError(
            f"feature store: {key!r} is not a valid entry key (letters, digits, '_', '.', '-'; at most 200 characters)"
        )


def remove_quarantined(entry: QuarantinedEntry) -> None:
    shutil.rmtree(entry.path, ignore_errors=True)
