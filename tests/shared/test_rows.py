"""Rows in memory and in files: the same reads either way, whole files only, never trusted when damaged."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhaven.shared.rows import MemoryRows, RowsWriter, cache_path, open_rows

DATA = torch.arange(40 * 3 * 2, dtype=torch.float32).reshape(40, 3, 2).to(torch.float16)


def _file_rows(tmp_path, data=DATA, key="k"):
    with RowsWriter(tmp_path / "r.rows", key=key, row_shape=tuple(data.shape[1:]), dtype="float16") as w:
        for start in range(0, len(data), 7):
            w.append(data[start: start + 7])
        return w.commit()


@settings(max_examples=60, deadline=None)
@given(index=st.lists(st.integers(0, 39), max_size=50), view=st.lists(st.integers(0, 39), min_size=1, max_size=40))
def test_any_read_of_a_file_equals_the_same_read_in_memory(tmp_path_factory, index, view):
    rows = _file_rows(tmp_path_factory.mktemp("r"))
    mem = MemoryRows(DATA)
    assert torch.equal(rows[np.array(index, dtype=np.int64)], mem[np.array(index, dtype=np.int64)])
    sub_f, sub_m = rows.take(view), mem.take(view)
    inner = [i % len(view) for i in index]
    assert torch.equal(sub_f[inner], sub_m[inner])
    assert sub_f.digest() == rows.take(view).digest() and (view == list(range(40))) == (sub_f.digest() == rows.digest())


def test_every_kind_of_index(tmp_path):
    rows = _file_rows(tmp_path)
    assert torch.equal(rows[5], DATA[5]) and torch.equal(rows[-1], DATA[-1])
    assert torch.equal(rows[3:17:2], DATA[3:17:2]) and torch.equal(rows[:], DATA)
    mask = torch.arange(40) % 3 == 0
    assert torch.equal(rows[mask], DATA[mask]) and torch.equal(rows[torch.tensor([9, 2, 9])], DATA[[9, 2, 9]])
    assert torch.equal(rows[:, 1], DATA[:, 1]) and torch.equal(rows[4, 2], DATA[4, 2])
    assert len(rows) == 40 and rows.shape == (40, 3, 2) and rows.nbytes == DATA.numel() * 2
    assert torch.equal(torch.stack(list(rows)), DATA)
    with pytest.raises(IndexError):
        rows[torch.tensor([40])]


def test_rows_travel_to_another_process_by_path(tmp_path):
    view = _file_rows(tmp_path).take([7, 3, 30])
    back = pickle.loads(pickle.dumps(view))
    assert torch.equal(back[:], DATA[[7, 3, 30]])
    (tmp_path / "view.pkl").write_bytes(pickle.dumps(view))
    out = subprocess.run([sys.executable, "-c", "import pickle, sys; rows = pickle.load(open(sys.argv[1], 'rb')); "
                          "print(rows[:].float().sum().item())", str(tmp_path / "view.pkl")],
                         capture_output=True, text=True, check=True, timeout=120)
    assert float(out.stdout) == DATA[[7, 3, 30]].float().sum().item()


def test_an_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), RowsWriter(tmp_path / "x.rows", key="k", row_shape=(3, 2), dtype="float16") as w:
        w.append(DATA[:5])
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="shape"), RowsWriter(tmp_path / "y.rows", key="k", row_shape=(3, 2),
                                                               dtype="float16") as w:
        w.append(torch.zeros(2, 4))
    assert list(tmp_path.iterdir()) == []


def test_a_file_for_another_key_or_damaged_is_not_used(tmp_path):
    rows = _file_rows(tmp_path)
    assert open_rows(rows.path, key="k") is not None and open_rows(rows.path, key="other") is None
    whole = rows.path.read_bytes()
    rows.path.write_bytes(whole[:10] + bytes([whole[10] ^ 4]) + whole[11:])
    assert open_rows(rows.path, key="k") is None  # content no longer matches its hash
    assert open_rows(rows.path, key="k", verify=False) is not None  # (what a quick look would have trusted)
    rows.path.write_bytes(whole[:-1])
    assert open_rows(rows.path, key="k", verify=False) is None
    assert open_rows(tmp_path / "absent.rows", key="k") is None


BUILDER = textwrap.dedent("""
    import fcntl, sys, torch
    from pathlib import Path
    from fedhaven.shared.rows import RowsWriter, cached_rows
    folder, counter = Path(sys.argv[1]), Path(sys.argv[2])

    def build(path):
        with open(counter, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write("x")
        with RowsWriter(path, key="shared", row_shape=(4,), dtype="float16") as w:
            w.append(torch.ones(1000, 4))
            return w.commit()

    print(cached_rows(folder, key="shared", build=build)[:].sum().item())
""")


def test_processes_building_the_same_rows_build_them_once(tmp_path):
    counter = tmp_path / "builds"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path / "cache"), str(counter)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    sums = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert sums == {"4000.0"} and counter.read_text() == "x"
    assert cache_path(tmp_path / "cache", key="shared").exists()


READER = textwrap.dedent("""
    import sys, numpy as np, torch
    from fedhaven.shared.rows import RowsWriter
    from fedhaven.shared.memory import peak_rss_mb, rss_mb
    path, n = sys.argv[1], int(sys.argv[2])
    with RowsWriter(path, key="big", row_shape=(25_000,), dtype="float32") as w:  # 100 KB rows
        for _ in range(n // 100):
            w.append(np.ones((100, 25_000), dtype=np.float32))
        rows = w.commit()
    base = peak_rss_mb()
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(3):  # three epochs of random batches of 100 rows
        for idx in np.array_split(rng.permutation(n), n // 100):
            total += float(rows[np.sort(idx)].sum())
    print(base, peak_rss_mb(), total)
""")


def test_reading_a_file_many_times_its_batch_keeps_memory_at_one_batch(tmp_path):
    """Rows are read into fresh buffers, never mapped: reading a 300 MB file three times over in 10 MB batches
    raises the process's peak (resident, mapped file pages included) by about one batch, not by the file."""
    out = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "big.rows"), "3000"], capture_output=True,
                         text=True, check=True, timeout=300)
    base, peak, total = map(float, out.stdout.split())
    assert total == 3 * 3000 * 25_000
    assert peak - base < 60, f"peak grew by {peak - base:.0f} MB reading a 300 MB file in 10 MB batches"
