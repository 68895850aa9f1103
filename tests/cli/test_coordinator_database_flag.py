"""`coordinator serve --database`: a URL naming no store is refused by name, in one line,
before anything is opened (it was a traceback from deep in the start-up)."""

import pytest

from sparegrid.cli import main as cli_main


def settings(*flags: str):  # type: ignore[no-untyped-def]
    from sparegrid.coordinator.cli import _settings

    return _settings(cli_main.build_parser().parse_args(["coordinator", "serve", *flags]))


@pytest.mark.parametrize("url", ["mysql://x", "sqlite://one-slash-short.db", "http://db"])
def test_a_database_url_naming_no_store_is_refused_by_name(url: str) -> None:
    with pytest.raises(SystemExit, match=f"--database: unknown store URL '{url}'; use"):
        settings("--database", url)


def test_env_names_where_a_bad_url_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_DATABASE", "mysql://x")
    with pytest.raises(SystemExit, match="SPAREGRID_DATABASE: unknown store URL"):
        settings()


def test_urls_that_name_a_store_are_taken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for url in (f"sqlite:///{tmp_path}/c.db", "postgresql://u@h/db", str(tmp_path / "c.db")):
        settings("--database", url)  # no error: nothing is opened yet
