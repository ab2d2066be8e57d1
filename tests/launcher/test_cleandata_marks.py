"""`make clean-data` deletes only a folder this platform made: one holding its run lock or the embedded
PostgreSQL's cluster. A folder that merely holds a `logs` or `redis` folder (names anyone's may have) is not."""

import pytest

from portfolio import cli


def _clean() -> int:
    with pytest.raises(SystemExit) as exit:
        cli.main(["clean-data"])
    return exit.value.code


@pytest.mark.parametrize("generic", ["logs", "redis", "pgdata", "secret_key"])
def test_a_folder_holding_only_a_generic_name_is_not_deleted(monkeypatch, tmp_path, capsys, generic):
    folder = tmp_path / "x"
    (folder / generic).mkdir(parents=True)
    (folder / "notes.txt").write_text("someone's")
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(folder))
    monkeypatch.delenv("PORTFOLIO_ENV", raising=False)
    assert _clean() == 1
    assert "holds nothing `portfolio run` makes" in capsys.readouterr().out
    assert (folder / "notes.txt").exists()


@pytest.mark.parametrize("mark", ["run.lock", "pgdata/PG_VERSION"])
def test_a_folder_the_launcher_or_the_embedded_postgresql_made_is_deleted(monkeypatch, tmp_path, mark):
    folder = tmp_path / "data"
    (folder / mark).parent.mkdir(parents=True, exist_ok=True)
    (folder / mark).write_text("17\n")
    (folder / "logs").mkdir()
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(folder))
    monkeypatch.delenv("PORTFOLIO_ENV", raising=False)
    assert _clean() == 0
    assert not folder.exists()
