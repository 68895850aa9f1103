"""`coordinator serve --database` and `--listen`: a URL naming no store, or an address that is
no HOST:PORT, is refused by name, in one line, before anything is opened (a bad URL was a
traceback from deep in the start-up, a bad address blamed a port in use)."""

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


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", ":50051", "host:port"])
def test_a_listen_address_that_is_no_host_and_port_is_refused_by_name(listen: str) -> None:
    with pytest.raises(SystemExit, match=f"--listen is HOST:PORT .* got '{listen}'"):
        settings("--listen", listen)


def test_listen_addresses_are_taken() -> None:
    for listen in ("0.0.0.0:50051", "127.0.0.1:0", "[::1]:50051", "grid.example.org:443"):
        settings("--listen", listen)
