"""The feature store: bad entries are never served and never break a run, concurrent fills compute once,
a killed filler blocks nobody, a full disk costs only the caching; and vitcls-cache list / verify / prune."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import xxhash
from conftest import REPO_ROOT
from feature_store_worker import tensors_of
from safetensors import SafetensorError

from vitcls.cli import cache as cache_cli
from vitcls.data import feature_store
from vitcls.data.feature_store import FORMAT, EntryBusy, FeatureStore, StoreLockTimeout

WORKER = Path(__file__).with_name("feature_store_worker.py")


class Recorder:
    """A computation that records each call (the keys it was asked for)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, keys):
        self.calls.append(list(keys))
        return {key: (tensors_of(key), {"split": key, "data_root": "/data/x"}) for key in keys}


def assert_equal_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def flip_byte(path: Path, offset: int, keep_mtime: bool = True) -> None:
    """Change one byte in place; with keep_mtime, as bit rot does (the file's times do not change)."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def quarantined_files(directory: Path) -> dict[str, str]:
    """{file name: reason} of everything moved into quarantine/."""
    found = {}
    for aside in (directory / "quarantine").glob("*"):
        reason = (aside / "reason.txt").read_text()
        found.update({path.name: reason for path in aside.iterdir() if path.name != "reason.txt"})
    return found


def worker(directory: Path, keys: str, counter: Path, *options: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(directory), keys, "--counter", str(counter), *options],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def counted_computations(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


# -- storing and loading ----------------------------------------------------------------------------------------


def test_round_trip_and_what_the_index_records(tmp_path):
    store = FeatureStore(tmp_path)
    assert store.load("k") is None
    tensors = {"features": torch.randn(5, 7).to(torch.bfloat16), "labels": torch.tensor([0, 1, 1, 0, 2])}
    assert store.save("k", tensors, {"split": "train", "backbone": "vit_tiny"})
    assert_equal_tensors(store.load("k", verify=True), tensors)

    tensors_path, index_path = store.paths("k")
    index = json.loads(index_path.read_text())
    assert index["format"] == FORMAT and index["key"] == "k"
    assert index["description"] == {"split": "train", "backbone": "vit_tiny"}
    assert index["size"] == tensors_path.stat().st_size
    assert index["checksum"] == "xxh3_128:" + xxhash.xxh3_128(tensors_path.read_bytes()).hexdigest()
    assert {name: (entry["dtype"], entry["shape"]) for name, entry in index["tensors"].items()} == {
        "features": ("BF16", [5, 7]), "labels": ("I64", [5])}
    assert abs(index["created"] - time.time()) < 60
    assert sorted(path.name for path in tmp_path.iterdir()) == [".locks", "k.json", "k.safetensors"]  # no debris


def test_a_load_records_the_last_use(tmp_path):
    store = FeatureStore(tmp_path)
    store.save("k", tensors_of("k"), {})
    index_path = store.paths("k")[1]
    os.utime(index_path, (1_000_000, 1_000_000))
    store.load("k")
    assert index_path.stat().st_mtime > time.time() - 60
    assert store.entries()[0].last_used == index_path.stat().st_mtime


def test_fill_computes_only_the_missing_keys_in_one_call(tmp_path):
    store, compute = FeatureStore(tmp_path), Recorder()
    first = store.fill(["val", "train"], compute)
    assert compute.calls == [["val", "train"]]
    again = store.fill(["train", "val", "test"], compute)
    assert compute.calls == [["val", "train"], ["test"]]
    for key in ("train", "val"):
        assert_equal_tensors(first[key], tensors_of(key))
        assert_equal_tensors(again[key], tensors_of(key))
    assert list(again) == ["train", "val", "test"]


def test_a_computation_that_leaves_out_a_key_is_an_error(tmp_path):
    with pytest.raises(feature_store.VitclsError, match=r"no tensors for \['b'\]"):
        FeatureStore(tmp_path).fill(["a", "b"], lambda keys: {"a": (tensors_of("a"), {})})


@pytest.mark.parametrize("key", ["", "../up", "a/b", ".hidden", "x" * 201])
def test_keys_that_are_not_plain_file_names_are_refused(tmp_path, key):
    with pytest.raises(feature_store.ConfigError, match="not a valid entry key"):
        FeatureStore(tmp_path).load(key)


# -- bad entries: warned about, moved aside, computed again -----------------------------------------------------


def test_a_truncated_file_is_moved_aside_and_computed_again(tmp_path, caplog):
    store, compute = FeatureStore(tmp_path), Recorder()
    store.fill(["k"], compute)
    tensors_path = store.paths("k")[0]
    os.truncate(tensors_path, tensors_path.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        assert store.load("k", verify=False) is None  # the size check runs on every load
    assert str(tensors_path) in caplog.text and "truncated" in caplog.text
    assert "truncated" in quarantined_files(tmp_path)["k.safetensors"]
    assert_equal_tensors(store.fill(["k"], compute)["k"], tensors_of("k"))
    assert compute.calls == [["k"], ["k"]]


def test_a_flipped_data_byte_is_caught_by_the_checksum_on_first_use_in_a_process(tmp_path, caplog):
    counter = tmp_path / "computations.txt"
    writer = worker(tmp_path / "store", "k", counter)  # another process wrote it: this one never checked it
    assert writer.wait(timeout=120) == 0, writer.communicate()
    store = FeatureStore(tmp_path / "store")
    tensors_path = store.paths("k")[0]
    flip_byte(tensors_path, data_offset(tensors_path) + 5)
    assert store.load("k", verify=False) is not None  # size and header are intact: only the checksum sees it
    with caplog.at_level(logging.WARNING):
        assert store.load("k") is None
    assert str(tensors_path) in caplog.text and "checksum" in caplog.text
    assert "checksum" in quarantined_files(tmp_path / "store")["k.safetensors"]
    assert not tensors_path.exists()


def test_the_full_checksum_runs_once_per_process_unless_verify_is_set(tmp_path):
    store = FeatureStore(tmp_path)
    store.save("k", tensors_of("k"), {})
    assert store.load("k") is not None  # checked (and remembered) by this process
    tensors_path = store.paths("k")[0]
    flip_byte(tensors_path, data_offset(tensors_path) + 5)
    assert store.load("k") is not None  # same file, same size and mtime: not hashed again
    assert FeatureStore(tmp_path, verify=True).load("k") is None
    assert "checksum" in quarantined_files(tmp_path)["k.safetensors"]


def test_a_rewritten_file_is_checked_again(tmp_path):
    store = FeatureStore(tmp_path)
    store.save("k", tensors_of("k"), {})
    assert store.load("k") is not None
    tensors_path = store.paths("k")[0]
    flip_byte(tensors_path, data_offset(tensors_path) + 5, keep_mtime=False)  # a new mtime: not the file it checked
    assert store.load("k") is None


@pytest.mark.parametrize(
    ("where", "reason"),
    [(lambda header: 8, "not valid JSON"),  # the opening brace
     (lambda header: 8 + header.index(b'"shape":[') + len(b'"shape":['), "header differs"),  # 6 -> 7 rows
     (lambda header: 7, "does not fit")],  # the high byte of the header's length
)
def test_a_flipped_header_byte_is_caught_on_every_load(tmp_path, caplog, where, reason):
    store = FeatureStore(tmp_path, verify=False)
    store.save("k", tensors_of("k"), {})
    tensors_path = store.paths("k")[0]
    flip_byte(tensors_path, where(tensors_path.read_bytes()[8:data_offset(tensors_path)]))
    with caplog.at_level(logging.WARNING):
        assert store.load("k") is None
    assert reason in caplog.text and str(tensors_path) in caplog.text
    assert reason in quarantined_files(tmp_path)["k.safetensors"]


def test_a_tensors_file_without_its_index_is_incomplete_and_computed_again(tmp_path, caplog):
    store, compute = FeatureStore(tmp_path), Recorder()
    store.fill(["k"], compute)
    tensors_path, index_path = store.paths("k")
    index_path.unlink()
    assert store.entries()[0].state == "incomplete"
    with caplog.at_level(logging.WARNING):
        assert_equal_tensors(store.fill(["k"], compute)["k"], tensors_of("k"))
    assert compute.calls == [["k"], ["k"]]
    assert "no index" in caplog.text and str(tensors_path) in caplog.text
    assert index_path.is_file() and store.load("k", verify=True) is not None


def test_an_index_without_its_tensors_file_is_computed_again(tmp_path):
    store, compute = FeatureStore(tmp_path), Recorder()
    store.fill(["k"], compute)
    store.paths("k")[0].unlink()
    store.fill(["k"], compute)
    assert compute.calls == [["k"], ["k"]] and store.load("k", verify=True) is not None


def test_an_index_of_the_older_format_is_removed_not_quarantined(tmp_path, caplog):
    """The first FeatureCache wrote a flat index without checksum (and other JSON files may share the folder)."""
    safetensors.torch.save_file(tensors_of("k"), tmp_path / "k.safetensors")
    (tmp_path / "k.json").write_text(json.dumps({"split": "train", "key": "k", "num_samples": 6}))
    (tmp_path / "image_checks_0123.json").write_text("{}")
    store = FeatureStore(tmp_path)
    assert [(entry.key, entry.state) for entry in store.entries()] == [("k", "outdated")]
    with caplog.at_level(logging.WARNING):
        assert store.load("k") is None
    assert "older format" in caplog.text
    assert not (tmp_path / "quarantine").exists() and not (tmp_path / "k.safetensors").exists()
    assert (tmp_path / "image_checks_0123.json").exists()


# -- the disk fills up ------------------------------------------------------------------------------------------


def no_space_while_writing_tensors(tensors, path):
    """What safetensors does on a full disk (seen on a 1 MB tmpfs): part of the file, then this error."""
    Path(path).write_bytes(b"\0" * 100)
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def no_space_while_writing_the_index(path, data):
    raise OSError(28, "No space left on device", str(path))


@pytest.mark.parametrize(
    ("target", "failure"),
    [("safetensors.torch.save_file", no_space_while_writing_tensors),
     ("vitcls.data.feature_store.write_json_atomic", no_space_while_writing_the_index)],
)
def test_a_full_disk_warns_leaves_nothing_behind_and_the_run_goes_on(tmp_path, caplog, monkeypatch, target, failure):
    store, compute = FeatureStore(tmp_path), Recorder()
    with monkeypatch.context() as patch:
        patch.setattr(target, failure)
        with caplog.at_level(logging.WARNING):
            result = store.fill(["train", "val"], compute)
    for key in ("train", "val"):
        assert_equal_tensors(result[key], tensors_of(key))  # the computed tensors, in memory
    assert "No space left on device" in caplog.text and "not cached" in caplog.text and "vitcls-cache prune" in caplog.text
    assert [path.name for path in tmp_path.iterdir()] == [".locks"]  # no entry, no partial or temporary file
    store.fill(["train", "val"], compute)  # space again: computed and stored
    assert compute.calls == [["train", "val"], ["train", "val"]]
    assert {entry.key for entry in store.entries()} == {"train", "val"}


# -- concurrent fills ------------------------------------------------------------------------------------------


def test_two_processes_started_together_compute_once_and_get_equal_tensors(tmp_path):
    """Each asks for the keys in another order: taking the locks in that order could deadlock them."""
    counter, go = tmp_path / "computations.txt", tmp_path / "go"
    processes = [
        worker(tmp_path / "store", keys, counter, "--ready", str(tmp_path / f"ready{i}"), "--go", str(go),
               "--out", str(tmp_path / f"out{i}.safetensors"), "--compute-seconds", "1", "--timeout", "60")
        for i, keys in enumerate(["train,val", "val,train"])
    ]
    for i, process in enumerate(processes):
        wait_for(tmp_path / f"ready{i}", process)
    go.touch()
    for process in processes:
        assert process.wait(timeout=120) == 0, process.communicate()
    assert [sorted(line.split()) for line in counted_computations(counter)] == [["train", "val"]]
    outputs = [safetensors.torch.load_file(tmp_path / f"out{i}.safetensors") for i in range(2)]
    assert_equal_tensors(outputs[0], outputs[1])
    assert_equal_tensors({name: outputs[0][f"val/{name}"] for name in ("features", "labels")}, tensors_of("val"))


def test_a_process_that_waits_too_long_gets_an_error_naming_the_holder(tmp_path, caplog):
    counter, started = tmp_path / "computations.txt", tmp_path / "started"
    holder = worker(tmp_path / "store", "k", counter, "--started", str(started), "--compute-seconds", "60")
    try:
        wait_for(started, holder)
        store = FeatureStore(tmp_path / "store")
        with caplog.at_level(logging.WARNING), pytest.raises(StoreLockTimeout) as error:
            store.fill(["k"], Recorder(), timeout_s=0.5)
        message = str(error.value)
        assert f"pid {holder.pid}" in message and "entry k" in message and str(tmp_path / "store") in message
        assert "lock_timeout_s" in message
        assert f"waits for entry k in {tmp_path / 'store'}" in caplog.text and f"pid {holder.pid}" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_filler_killed_while_writing_blocks_nobody_and_leaves_no_debris(tmp_path):
    counter, started = tmp_path / "computations.txt", tmp_path / "started"
    directory = tmp_path / "store"
    killed = worker(directory, "k", counter, "--started", str(started), "--hang-while-writing")
    wait_for(started, killed)
    assert [path.name for path in directory.glob(".k.safetensors.*.tmp")]  # its half-written file
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    store, compute = FeatureStore(directory), Recorder()
    began = time.monotonic()
    result = store.fill(["k"], compute, timeout_s=30)
    assert time.monotonic() - began < 10  # the kernel released the dead process's lock
    assert_equal_tensors(result["k"], tensors_of("k"))
    assert counted_computations(counter) == ["k"] and compute.calls == [["k"]]
    assert not list(directory.glob(".*.tmp"))
    assert store.load("k", verify=True) is not None


# -- vitcls-cache -----------------------------------------------------------------------------------------------

DAY = 86400.0


def filled_store(tmp_path, ages_days: dict[str, float]) -> FeatureStore:
    """Entries last used `age` days ago (the index's mtime is the last use)."""
    store = FeatureStore(tmp_path / "cache")
    store.fill(list(ages_days), Recorder())
    for key, age in ages_days.items():
        when = time.time() - age * DAY
        os.utime(store.paths(key)[1], (when, when))
    return store


def entry_size(store: FeatureStore, key: str) -> int:
    return sum(path.stat().st_size for path in store.paths(key))


def test_cache_list_shows_entries_sizes_last_use_and_meaning(tmp_path, capsys):
    store = filled_store(tmp_path, {"train": 3, "val": 40})
    assert cache_cli.main(["list", str(store.directory)]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = next(line for line in lines if line.startswith("train"))
    assert cache_cli.format_size(entry_size(store, "train")) in train and "3 d ago" in train
    assert "split=train" in train and "data_root=/data/x" in train
    total = entry_size(store, "train") + entry_size(store, "val")
    assert lines[-1] == f"2 entries, {cache_cli.format_size(total)} in {store.directory}"

    assert cache_cli.main(["list", "--json", str(store.directory)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {entry["key"]: entry["size"] for entry in listing["entries"]} == {
        key: entry_size(store, key) for key in ("train", "val")}
    assert listing["total_size"] == entry_size(store, "train") + entry_size(store, "val")


def test_cache_verify_moves_bad_entries_aside_and_exits_1(tmp_path, capsys):
    store = filled_store(tmp_path, {"good": 0, "bad": 0})
    assert cache_cli.main(["verify", str(store.directory)]) == 0
    tensors_path = store.paths("bad")[0]
    flip_byte(tensors_path, data_offset(tensors_path))
    capsys.readouterr()
    assert cache_cli.main(["verify", str(store.directory)]) == 1
    out = capsys.readouterr().out
    assert "ok        good" in out and "BAD       bad" in out and "checksum" in out
    assert not tensors_path.exists() and "bad.safetensors" in quarantined_files(store.directory)
    assert [entry.key for entry in store.entries()] == ["good"]


def test_cache_prune_by_age(tmp_path, capsys):
    store = filled_store(tmp_path, {"new": 1, "old": 31, "older": 90})
    assert cache_cli.main(["prune", str(store.directory), "--older-than", "30d", "--dry-run"]) == 0
    assert "would remove  entry old" in capsys.readouterr().out
    assert len(store.entries()) == 3
    assert cache_cli.main(["prune", str(store.directory), "--older-than", "30d"]) == 0
    assert [entry.key for entry in store.entries()] == ["new"]
    assert FeatureStore(store.directory).load("old") is None


def test_cache_prune_to_a_size_removes_quarantine_then_least_recently_used(tmp_path, capsys):
    store = filled_store(tmp_path, {"a": 5, "b": 1, "c": 3, "d": 2})
    tensors_path = store.paths("d")[0]
    flip_byte(tensors_path, data_offset(tensors_path))
    assert store.verify_entry("d") is not None  # quarantined
    room = entry_size(store, "b") + entry_size(store, "c")
    assert cache_cli.main(["prune", str(store.directory), "--max-size", f"{room}B"]) == 0
    assert [entry.key for entry in store.entries()] == ["b", "c"]  # the quarantine, then a (5 days ago) went
    assert store.quarantined() == []
    assert "removed  quarantined d." in capsys.readouterr().out


def test_cache_prune_leaves_what_a_live_writer_holds_and_removes_what_a_dead_one_left(tmp_path, capsys):
    counter, started = tmp_path / "computations.txt", tmp_path / "started"
    store = filled_store(tmp_path, {"old": 40})
    writer = worker(store.directory, "k", counter, "--started", str(started), "--hang-while-writing")
    try:
        wait_for(started, writer)
        with pytest.raises(EntryBusy):
            store.remove("k")
        assert cache_cli.main(["prune", str(store.directory), "--older-than", "30d"]) == 0
        assert "removed 1 items" in capsys.readouterr().out and store.entries() == []
        assert len(store.temporaries()) == 1  # the live writer's file stays
    finally:
        writer.kill()
        writer.wait()
    assert cache_cli.main(["prune", str(store.directory), "--older-than", "30d"]) == 0
    assert "1 temporary files of writers that died" in capsys.readouterr().out
    assert store.temporaries() == []


def test_cache_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cache_cli.main(["list", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cache_cli.main(["prune", str(tmp_path), "--max-size", "lots"])
    assert "is not a size" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "size"), [("20GB", 20 * 10**9), ("20G", 20 * 10**9), ("500MiB", 500 * 2**20),
                                            ("1.5kB", 1500), ("1000", 1000)])
def test_sizes(text, size):
    assert cache_cli.parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * DAY), ("12h", 43200), ("90min", 5400), ("2w", 14 * DAY)])
def test_ages(text, seconds):
    assert cache_cli.parse_age(text) == seconds


@pytest.mark.parametrize(("size", "text"), [(999, "999 B"), (1500, "1.5 kB"), (20 * 10**9, "20.0 GB"), (3 * 10**12, "3.0 TB")])
def test_size_format(size, text):
    assert cache_cli.format_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [(30, "30 s ago"), (600, "10 min ago"), (5 * 3600, "5 h ago"),
                                               (3 * DAY, "3 d ago")])
def test_age_format(seconds, text):
    assert cache_cli.format_age(seconds) == text
