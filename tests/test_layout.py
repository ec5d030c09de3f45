"""staged_dir: a folder output is replaced whole or not at all."""

import pytest

from sonotune.layout import staged_dir


def test_a_finished_staging_folder_replaces_the_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_dir(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # the old output stays readable while the new one is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_failure_leaves_the_target_as_it_was_and_no_staging_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), staged_dir(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
