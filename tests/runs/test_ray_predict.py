"""`predict --engine ray`: a local Ray instance predicts a folder with bad files among good ones; every row equals
plain predict's (1e-5), the Parquet parts read back as one table, and reruns resume without duplicates."""

from __future__ import annotations

import os
import shutil

import pytest

from cnnlab.commands.predict import predict
from cnnlab.errors import CnnlabError
from cnnlab.runs.ray_predict import KEYS, predict_with_ray
from cnnlab.runs.reject import resolve_threshold

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.slow  # starts a Ray instance (about 15 s on 2 cores)


@pytest.fixture(scope="module")
def archive(tiny_data, tmp_path_factory):
    """12 good images, a truncated JPEG, a text file named .jpg, a 1x1 PNG; and a text file given by name."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("archive") / "photos"
    folder.mkdir()
    good = sorted((tiny_data / "val").rglob("*.jpg"))[:12]
    for k, path in enumerate(good):
        shutil.copy(path, folder / f"{k:02d}_{path.name}")
    (folder / "cut.jpg").write_bytes(good[0].read_bytes()[:300])
    (folder / "notes.jpg").write_text("not a picture")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "dot.png")
    text = folder.parent / "readme.txt"
    text.write_text("hello")
    return folder, text


def _by_path(rows):
    return {row["path"]: row for row in rows}


def _same_rows(ray_rows, plain_rows, threshold):
    assert set(ray_rows) == set(plain_rows)
    for path, plain in plain_rows.items():
        row = ray_rows[path]
        assert ("error" in row) == ("error" in plain), path
        if "error" in plain:
            assert row["error"] == plain["error"], path
            continue
        assert [top["class"] for top in row["top"]] == [top["class"] for top in plain["top"]], path
        for mine, theirs in zip(row["top"], plain["top"]):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-5), path
        # the same answer, except for an image whose top probability is the threshold itself to round-off (the
        # threshold was chosen on these very validation images; one torch thread per actor sums in another order)
        if abs(plain["top"][0]["probability"] - threshold) > 1e-5:
            assert row["unknown"] == plain["unknown"], path


def test_ray_gives_every_file_the_row_plain_predict_gives_and_resumes(tiny_run, archive, tmp_path):
    folder, text = archive
    inputs = [str(folder), str(text)]
    plain = _by_path(predict(tiny_run.run_dir, inputs, workers=0))
    assert len(plain) == 16
    assert "error" in plain[str(folder / "cut.jpg")] and "error" in plain[str(folder / "notes.jpg")]
    assert "error" in plain[str(text)]

    out = tmp_path / "results.parquet"
    # an interrupted run: only the first half of the files made it into parts, and a temporary was left behind
    images = sorted(str(path) for path in folder.iterdir())
    first = _by_path(predict(tiny_run.run_dir, images[:7], engine="ray", out=out))
    assert set(first) == set(images[:7])
    (out / ".tmp-part-interrupted.parquet.x").write_bytes(b"PAR1 half")  # what a kill mid-write leaves
    second = _by_path(predict(tiny_run.run_dir, inputs, engine="ray", out=out))
    assert set(second) == set(plain) - set(first)  # the rerun predicted only the rest
    _same_rows(first | second, plain, resolve_threshold("auto", tiny_run.run_dir))

    table = pq.read_table(out)  # the parts read back as one table: one row per input, no duplicates
    assert table.num_rows == 16 and len(set(table.column("path").to_pylist())) == 16
    assert table.schema.names == ["path", "error", "unknown", "class_1", "probability_1", "class_2",
                                  "probability_2", "class_3", "probability_3", *KEYS]
    record = {row["path"]: row for row in table.to_pylist()}[str(folder / "dot.png")]
    stat = os.stat(folder / "dot.png")
    assert (record["size"], record["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)

    # a file changed since: its old row goes, its new one comes; nothing else is predicted again
    changed = folder / "00_changed.png"
    shutil.copy(folder / "dot.png", changed)
    os.utime(folder / "dot.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = _by_path(predict(tiny_run.run_dir, inputs, engine="ray", out=out))
    assert set(third) == {str(changed), str(folder / "dot.png")}
    table = pq.read_table(out)
    assert table.num_rows == 17 and len(set(table.column("path").to_pylist())) == 17
    assert predict(tiny_run.run_dir, inputs, engine="ray", out=out) == []  # all done: nothing starts


def test_ray_engine_refuses_what_it_cannot_do_in_one_line(tiny_run, archive, tmp_path):
    folder, _ = archive
    with pytest.raises(CnnlabError, match="give --out NAME.parquet"):
        predict(tiny_run.run_dir, [str(folder)], engine="ray")
    with pytest.raises(CnnlabError, match="writes a folder of Parquet parts: give --out NAME.parquet"):
        predict(tiny_run.run_dir, [str(folder)], engine="ray", out=tmp_path / "rows.csv")
    with pytest.raises(CnnlabError, match="with --engine ray that is any node"):
        predict(tiny_run.run_dir, [str(folder)], engine="ray", out=tmp_path / "r.parquet", heatmap=tmp_path)
    (tmp_path / "file.parquet").write_bytes(b"x")
    with pytest.raises(CnnlabError, match="is a file; --engine ray writes a folder"):
        predict(tiny_run.run_dir, [str(folder)], engine="ray", out=tmp_path / "file.parquet")
    with pytest.raises(CnnlabError, match="--address names a Ray cluster"):
        predict(tiny_run.run_dir, [str(folder)], address="127.0.0.1:6379")
    with pytest.raises(CnnlabError, match="cannot reach a Ray cluster there"):
        predict_with_ray(tiny_run.run_dir, [str(folder)], tmp_path / "r.parquet", address="127.0.0.1:9")


def test_a_folder_of_another_tables_columns_is_refused(tiny_run, archive, tmp_path):
    from cnnlab.runs.ray_predict import read_parts

    out = tmp_path / "results.parquet"
    out.mkdir()
    pa = pytest.importorskip("pyarrow")
    pq.write_table(pa.table({"path": ["a.jpg"], "class_1": ["x"]}), out / "part-old-00001.parquet")
    with pytest.raises(CnnlabError, match="part-old-00001.parquet has the columns path, class_1, not this"):
        read_parts(out, ["path", "error", "class_1", "probability_1"])
