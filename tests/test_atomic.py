"""Files written by many processes at once, as the parts of an array write them."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from data_tools.format import shards
from data_tools.labels import vocab

WRITERS = 6
ROUNDS = 150


def write_many(path: str, writer: int, start) -> None:
    start.wait()  # every writer begins together, as an array's parts do
    for round_ in range(ROUNDS):
        shards.write_json(Path(path), {"writer": writer, "round": round_})
        vocab.write(Path(path).with_name("vocabulary.tsv"), [vocab.Entry("n1", "dog", writer)])


def test_concurrent_writers_of_one_file_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(WRITERS)
    target = tmp_path / "fingerprint.json"
    procs = [ctx.Process(target=write_many, args=(str(target), i, start)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert json.loads(target.read_text())["round"] == ROUNDS - 1
    assert len(vocab.read(tmp_path / "vocabulary.tsv")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fingerprint.json", "vocabulary.tsv"]  # no temp left
