"""Review sheet: the most suspect rows in order, images from embedded arrays and from on-disk files."""

import base64
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from alr_fast.cli import main
from alr_fast.config import apply_overrides, config_to_dict
from alr_fast.recipes import get_recipe
from alr_fast.labels.review import ReviewImages, review_run


def _fake_run(run, cfg, n, k, *, oos: bool, seed=0):
    """A run folder as train/crossval leave it: config.json and refined_labels.csv with random suspicion."""
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    given = rng.integers(0, k, n)
    other = (given + rng.integers(1, k, n)) % k
    score = rng.permutation(n) + 1
    with open(run / "refined_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        head = ["global_index", "given_label", "refined_label", "confidence", "suspect_rank"]
        w.writerow(head + (["oos_label", "oos_confidence", "oos_given_prob", "oos_suspect_rank"] if oos else []))
        for i in range(n):
            row = [i, given[i], other[i], f"{0.5 + i / (2 * n):.6f}", score[i]]
            if oos:
                row += [other[i], "0.800000", "0.010000", n + 1 - score[i]]
            w.writerow(row)
    return given, other, score


def _png_size(path):
    with Image.open(path) as im:
        return im.size


def test_review_of_embedded_arrays(tmp_path, capsys):
    cfg = apply_overrides(get_recipe("demo"), ["data.dataset=digits"])
    run = tmp_path / "run"
    given, other, score = _fake_run(run, cfg, 1438, 10, oos=False)
    assert main(["review", str(run), "--top", "7", "--html"]) == 0
    printed = capsys.readouterr().out
    assert "ranked by soft-label mass" in printed
    expect = np.argsort(score)[:7]
    with open(run / "review.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["global_index"]) for r in rows] == expect.tolist()
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    assert [int(r["suggested_label"]) for r in rows] == other[expect].tolist()
    assert [r["given_name"] for r in rows] == [str(g) for g in given[expect]]
    w, h = _png_size(run / "review.png")
    assert w > 600 and h > 150
    page = (run / "review.html").read_text()
    assert page.count("data:image/png;base64,") == 7 and "http" not in page  # self-contained
    # the first inlined image is sample expect[0] of the embedded digits (enlarged, nearest neighbour)
    first = page.split("data:image/png;base64,")[1].split('"')[0]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(first))))
    src = ReviewImages(cfg).image(int(expect[0]))[..., 0]
    scale = img.shape[0] // src.shape[0]
    np.testing.assert_array_equal(img[::scale, ::scale], src)


def test_review_of_on_disk_fixture_reads_image_files(tmp_path):
    root = tmp_path / "a10n"
    assert main(["data", "make-fixture", "--dataset", "animal10n", "--out", str(root), "--num-train", "30",
                 "--num-test", "10", "--image-size", "24x20"]) == 0
    cfg = apply_overrides(get_recipe("animal10n"), [f"data.data_root={root}"])
    run = tmp_path / "run"
    _, other, score = _fake_run(run, cfg, 30, 10, oos=True)
    out = review_run(run, top=5, quiet=True)
    assert out["by"] == "oos"
    expect = np.argsort(-score)[:5]  # oos_suspect_rank = n + 1 - score
    with open(run / "review.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["global_index"]) for r in rows] == expect.tolist()
    for r in rows:
        with Image.open(r["path"]) as im:  # the path column names the real file, and that is the image shown
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")),
                                          ReviewImages(cfg).image(int(r["global_index"])))
    assert rows[0]["suggested_name"] in json.loads(json.dumps(ReviewImages(cfg).class_names))
    by_bank = review_run(run, top=5, by="bank", quiet=True)
    assert [r["global_index"] for r in by_bank["rows"]] == np.argsort(score)[:5].tolist()


def test_review_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="refined_labels.csv"):
        review_run(tmp_path)
    cfg = apply_overrides(get_recipe("demo"), ["data.dataset=digits"])
    _fake_run(tmp_path / "r", cfg, 20, 10, oos=False)
    with pytest.raises(ValueError, match="oos_suspect_rank"):
        review_run(tmp_path / "r", by="oos", quiet=True)


def test_short_run_note_on_the_sheet_and_in_the_summary_rule(tmp_path, capsys):
    """A run whose bank changed no label says so on the review sheet (title, printed) instead of tiles alone."""
    from alr_fast.train.metrics import refinement_note

    assert refinement_note("alr", None, 3, 0).startswith("refinement never started (the warm-up lasted all 3")
    assert refinement_note("alr", 5, 5, 0).startswith("refinement never started")
    assert refinement_note("alr", 2, 3, 0).startswith("refinement ran 1 epoch (from epoch 2) and changed no label")
    assert refinement_note("selc", 2, 6, 0).startswith("refinement ran 4 epochs")
    assert refinement_note("alr", 2, 6, 17) is None
    assert refinement_note("ce", None, 6, 0).startswith("method ce does not refine")
    cfg = apply_overrides(get_recipe("demo"), ["data.dataset=digits"])
    run = tmp_path / "short"
    _fake_run(run, cfg, 1438, 10, oos=False)
    (run / "summary.json").write_text(json.dumps({"method": "alr", "epochs": 2, "refine_from_epoch": None,
                                                  "num_changed": 0}))
    out = review_run(run, top=3, html=True)
    assert "NOTE: refinement never started" in capsys.readouterr().out
    assert "NOTE: refinement never started" in out["html"].read_text()
    (run / "summary.json").write_text(json.dumps({"method": "alr", "epochs": 8, "refine_from_epoch": 3,
                                                  "num_changed": 40}))
    review_run(run, top=3)
    assert "NOTE" not in capsys.readouterr().out
