"""data.cache=auto (the default): the decoded-image cache is built when it fits the budget, declined
when it does not, and the decision is logged with the sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import compose_cfg
from foldvision.data.cache import cache_file_for, decide_cache
from foldvision.errors import FoldvisionError


def _paths(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "train").rglob("*.png"))


def test_auto_is_the_default_and_caches_small_data(
    folder_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real CV run with no cache setting trains from the cache file, and says so in the log."""
    from foldvision.cv import run_cv

    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=2", "cv.folds=[0]")
    assert cfg.data.cache == "auto"
    with caplog.at_level(logging.INFO, logger="foldvision"):
        run_cv(cfg, tmp_path / "run")
    assert len(list((folder_data / "cache").glob("images_32x32x3_*.npy"))) == 1
    # the pre-flight plots, drawn in a background thread, are finished before the run ends
    assert all((tmp_path / "run" / "report" / f).stat().st_size > 0 for f in ("lr_schedule.png", "augmentations.png"))
    lines = [r.getMessage() for r in caplog.records if "data.cache=auto" in r.getMessage()]
    assert len(lines) == 1, lines  # one decision per dataset, not one per fold or split
    assert "data.cache=auto: caching: 30 images at 32x32x3" in lines[0] and "MiB decoded" in lines[0]


def test_auto_declines_data_over_the_budget(folder_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "data.cache_budget=1e-9")
    with caplog.at_level(logging.INFO, logger="foldvision"):
        assert cache_file_for(cfg.data, _paths(folder_data), [32, 32], 3) is None
    assert not (folder_data / "cache").exists()
    assert any(
        "data.cache=auto: not caching: 30 images at 32x32x3" in r.getMessage() and "RAM budget" in r.getMessage()
        for r in caplog.records
    )


def test_true_and_false_keep_their_meaning(folder_data: Path) -> None:
    paths = _paths(folder_data)
    off = compose_cfg("data=folder", f"data.root={folder_data}", "data.cache=false")
    assert cache_file_for(off.data, paths, [32, 32], 3) is None
    on = compose_cfg(
        "data=folder", f"data.root={folder_data}", "data.cache=true", "data.cache_budget=1e-9"
    )  # no budget
    assert cache_file_for(on.data, paths, [32, 32], 3).is_file()
    bad = compose_cfg("data=folder", f"data.root={folder_data}", "data.cache=yes")
    with pytest.raises(FoldvisionError, match="data.cache='yes'"):
        cache_file_for(bad.data, paths, [32, 32], 3)


def test_decision_weighs_ram_disk_and_writability(tmp_path: Path) -> None:
    mib = 2**20
    # 100 images of 64x64x3 = 1.17 MiB decoded
    assert decide_cache(100, [64, 64], 3, tmp_path, 0.25, memory=8 * mib, disk=8 * mib)[0]
    use, why = decide_cache(100, [64, 64], 3, tmp_path, 0.25, memory=4 * mib, disk=8 * mib)
    assert not use and "RAM budget" in why and "1.2 MiB decoded" in why
    use, why = decide_cache(100, [64, 64], 3, tmp_path, 0.25, memory=8 * mib, disk=4 * mib)
    assert not use and "disk budget" in why
    blocker = tmp_path / "a_file"  # a path under a file cannot be created, whoever runs this (root too)
    blocker.write_text("x")
    use, why = decide_cache(100, [64, 64], 3, blocker / "cache", 0.25, memory=8 * mib, disk=8 * mib)
    assert not use and "not writable" in why
