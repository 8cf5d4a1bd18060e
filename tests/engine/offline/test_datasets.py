"""Loaders (incl. malformed input), format detection and verified downloads."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankly.engine.offline import datasets

SHARED = Path(os.environ.get("RANKLY_DATASETS")
              or Path(__file__).resolve().parents[3] / "../shared/datasets").resolve()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_movielens_100k_reads_ratings_and_latin1_genres(tmp_path):
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t11\t4\t881250951\n")
    flags = ["0"] * 19
    flags[1] = flags[8] = "1"  # Action, Drama
    write(tmp_path / "u.item", "10|Café Noir (1995)|01-Jan-1995||http://x|" + "|".join(flags)
          + "\n11|Other (1996)|01-Jan-1996||http://y|" + "|".join(["0"] * 19) + "\n", "latin-1")
    ds = datasets.load(tmp_path)
    assert ds.format == "movielens-100k"
    assert ds.interactions.weights.tolist() == [5.0, 3.0, 4.0]
    assert ds.items.titles[0] == "Café Noir (1995)"
    assert ds.items.categories[0] == ("Action", "Drama")
    assert ds.items.categories[1] == ()


def test_movielens_csv_handles_crlf_quoted_titles_and_genres(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\r\n1,1,4.5,964982703\r\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\r\n1,"American President, The (1995)",'
          "Comedy|Drama|Romance\r\n2,Nothing (2000),(no genres listed)\r\n")
    ds = datasets.load(tmp_path / "ratings.csv")
    assert ds.format == "movielens-csv"
    assert ds.items.titles[0] == "American President, The (1995)"
    assert ds.items.categories == [("Comedy", "Drama", "Romance"), ()]
    assert ds.interactions.weights.tolist() == [4.5]


def test_events_csv_with_header_uses_event_weights(tmp_path):
    f = write(tmp_path / "e.csv", "user_id,item_id,category_id,event_type,timestamp\n"
              "u1,a,c1,view,10\nu1,b,c2,purchase,11\nu2,a,c1,add_to_cart,12\n")
    ds = datasets.load(f, event_weights={"purchase": 7})
    assert ds.format == "events-csv"
    assert ds.interactions.weights.tolist() == [1.0, 7.0, 3.0]
    assert ds.interactions.categories.tolist() == ["c1", "c2", "c1"]


def test_events_csv_header_names_the_columns_in_any_order_with_aliases(tmp_path):
    f = write(tmp_path / "e.csv", "\ufeffTime,Item,User,Rating\n10,a,u1,4\n11,b,u2,2.5\n")
    ds = datasets.load(f, format="events-csv")
    assert ds.interactions.user_ids.tolist() == ["u1", "u2"]
    assert ds.interactions.item_ids.tolist() == ["a", "b"]
    assert ds.interactions.timestamps.tolist() == [10, 11]
    assert ds.interactions.weights.tolist() == [4.0, 2.5]


def test_events_csv_without_timestamps_keeps_file_order(tmp_path):
    ds = datasets.load(write(tmp_path / "e.csv", "user_id,item_id\nu1,a\nu2,b\n"))
    assert ds.interactions.item_ids.tolist() == ["a", "b"]
    assert ds.interactions.weights.tolist() == [1.0, 1.0]
    assert ds.interactions.timestamps.tolist() == [2, 3]


@pytest.mark.parametrize("text", ["u1,a\nu2,b\n", "1,10,1500000000\n2,11,1500000001\n",
                                  "u1,a,view,5\n"])
def test_events_csv_without_a_header_is_refused(tmp_path, text):
    with pytest.raises(datasets.DatasetError, match="needs a header row naming its columns"):
        datasets.load(write(tmp_path / "e.csv", text), format="events-csv")


@pytest.mark.parametrize("header, message", [
    ("user_id,item_id,timestamps", "unknown column 'timestamps'"),
    ("user_id,item_id,", "unknown column ''"),
    ("user_id,user,item_id", "names user_id twice"),
])
def test_events_csv_header_with_an_unknown_or_repeated_column_is_refused(tmp_path, header,
                                                                         message):
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.load(write(tmp_path / "e.csv", header + "\nu1,a,1\n"), format="events-csv")


def test_taobao_detected_and_behaviours_mapped(tmp_path):
    f = write(tmp_path / "ub.csv", "1,100,7,pv,1511544070\n1,101,7,buy,1511544071\n"
              "2,100,7,cart,1511544072\n")
    ds = datasets.load(f)
    assert ds.format == "taobao"
    assert ds.interactions.event_types.tolist() == ["view", "purchase", "add_to_cart"]
    assert ds.interactions.weights.tolist() == [1.0, 5.0, 3.0]


def test_events_csv_takes_every_id_the_api_takes_and_refuses_what_it_refuses(tmp_path):
    # ids the HTTP API stores (tests/engine/http/test_hardening_input.py) must train as sent:
    # `rankly events export` writes them into the CSV that `rankly train` reads
    taken = ["a\u00a0b", "zero\u200bwidth", "\U0001f600", "line\u2028sep", "tab-free"]
    refused = ["a\x85b", "a\x7fb", "a\x1fb"]
    rows = [f"{u},i{n},click,{100 + n}" for n, u in enumerate(taken + refused)]
    f = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\n" + "\n".join(rows)
              + "\n")
    ds = datasets.load_events_csv(f)
    assert sorted(ds.interactions.user_ids.tolist()) == sorted(taken)
    report = ds.reports[0]
    assert report.malformed == len(refused)
    assert all("control characters" in why for _, why in report.bad_lines)


def test_malformed_rows_are_counted_with_line_numbers(tmp_path):
    rows = ["1\t10\t5\t881250949"] * 20
    rows[3] = "1\t10\tfive\t881250949"
    rows[7] = "garbage"
    ds = datasets.load_movielens_100k(write(tmp_path / "u.data", "\n".join(rows) + "\n"))
    report = ds.reports[0]
    assert (report.rows, report.loaded, report.malformed) == (20, 18, 2)
    assert [n for n, _ in report.bad_lines] == [4, 8]
    assert "2 malformed" in report.summary()


def test_only_first_ten_bad_lines_are_kept(tmp_path):
    rows = ["u,i,view,1"] * 30 + ["u,i,nonsense_event,1"] * 12
    ds = datasets.load_events_csv(write(tmp_path / "e.csv", "\n".join(rows) + "\n"),
                                  columns=("user_id", "item_id", "event_type", "timestamp"))
    assert ds.reports[0].malformed == 12
    assert [n for n, _ in ds.reports[0].bad_lines] == list(range(31, 41))


def test_mostly_malformed_file_fails_clearly(tmp_path):
    f = write(tmp_path / "u.data", "1\t2\t3\t4\nnope\nnope\nnope\n")
    with pytest.raises(datasets.DatasetError, match="3 of 4 rows are malformed"):
        datasets.load(f, format="movielens-100k")


def test_parse_event_weights():
    assert datasets.parse_event_weights("view=1, purchase=5") == {"view": 1.0, "purchase": 5.0}
    with pytest.raises(datasets.DatasetError):
        datasets.parse_event_weights("view")
    assert datasets.parse_event_weights("view=0") == {"view": 0.0}
    for bad in ("view=-1", "view=inf", "view=nan"):
        with pytest.raises(datasets.DatasetError, match="finite number >= 0"):
            datasets.parse_event_weights(bad)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t10\t5\t881250949\n2\t11\t4\t881250950\n")
    return buf.getvalue()


def test_download_verifies_sha256_then_loads(tmp_path):
    payload = _zip_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    src = write(tmp_path / "src.zip", "")
    src.write_bytes(payload)
    folder = datasets.download("movielens-100k", tmp_path / "data", url=src.as_uri(),
                               sha256=digest)
    assert len(datasets.load(folder).interactions) == 2


def test_download_rejects_a_checksum_mismatch(tmp_path):
    opener = lambda url: io.BytesIO(_zip_bytes())  # noqa: E731
    with pytest.raises(datasets.DatasetError, match="does not match the pinned"):
        datasets.download("movielens-100k", tmp_path, opener=opener)
    assert not list(tmp_path.glob("*.zip"))


def test_pinned_checksums_are_sha256():
    for spec in datasets.DOWNLOADS.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0


@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").exists(),
                    reason=f"licensed MovieLens 100K not present under {SHARED}")
def test_real_movielens_100k_loads_completely():
    ds = datasets.load(SHARED / "ml-100k")
    assert len(ds.interactions) == 100_000 and ds.reports[0].malformed == 0
    assert np.unique(ds.interactions.user_ids).size == 943
    assert len(ds.items.item_ids) == 1682


@pytest.mark.skipif(not (SHARED / "taobao-userbehavior-sample").exists(),
                    reason=f"licensed Taobao sample not present under {SHARED}")
def test_real_taobao_sample_loads_completely():
    ds = datasets.load(SHARED / "taobao-userbehavior-sample" / "UserBehavior_head814users.csv")
    assert ds.format == "taobao" and len(ds.interactions) == 84_287
    assert (ds.interactions.event_types == "purchase").sum() == 1749


@pytest.mark.skipif(not (SHARED / "ml-latest-small" / "ratings.csv").exists(),
                    reason=f"licensed MovieLens latest-small not present under {SHARED}")
def test_real_movielens_latest_loads_completely():
    ds = datasets.load(SHARED / "ml-latest-small")
    assert len(ds.interactions) == 100_836 and len(ds.items.item_ids) == 9742


@pytest.mark.parametrize("command", [["train", "--out", "model"], ["datasets", "inspect"],
                                     ["evaluate"]])
def test_cli_refuses_a_headerless_events_csv_with_exit_code_2(tmp_path, capsys, monkeypatch,
                                                              command):
    from rankly.engine.cli import main

    monkeypatch.chdir(tmp_path)
    f = write(tmp_path / "e.csv", "1,10,1500000000\n1,11,1500000100\n2,10,1500000200\n")
    assert main([*command, "--interactions", str(f), "--format", "events-csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs a header row naming its columns" in err
    assert not (tmp_path / "model").exists()


def test_format_help_documents_the_events_csv_columns(capsys):
    from rankly.engine.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for column in ("user_id and item_id (required)", "timestamp (Unix time in s, ms, us or ns",
                   "event_type", "value", "category_id"):
        assert column in text


def _zip_server(tmp_path, monkeypatch) -> None:
    """Point the movielens-100k download at a local file URL with its checksum."""
    src = tmp_path / "src.zip"
    src.write_bytes(_zip_bytes())
    spec = datasets.Download(src.as_uri(), hashlib.sha256(src.read_bytes()).hexdigest(),
                             "ml-100k")
    monkeypatch.setitem(datasets.DOWNLOADS, "movielens-100k", spec)


def test_download_draws_no_progress_when_stderr_is_not_a_terminal(tmp_path, monkeypatch,
                                                                   capsys):
    from rankly.engine.cli import main

    _zip_server(tmp_path, monkeypatch)
    assert main(["datasets", "download", "movielens-100k", "--dir", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_download_draws_a_byte_counter_on_a_terminal_unless_quiet(tmp_path, monkeypatch,
                                                                  tty_stderr, quiet):
    from rankly.engine.cli import main

    _zip_server(tmp_path, monkeypatch)
    tty_stderr.as_stderr()
    assert main(["datasets", "download", "movielens-100k", "--dir", str(tmp_path / "d"),
                 *(["--quiet"] if quiet else [])]) == 0
    text = tty_stderr.output()
    size = len(_zip_bytes())
    assert ("downloading movielens-100k: 100%" in text and f"{size}/{size}" in text) \
        is not quiet
    assert (text == "") is quiet


# --- the bulk reader of rating files agrees with the row-by-row one ---------------------------

_FIELD = st.one_of(
    st.integers(-3, 10**12).map(str),
    st.sampled_from(["", " 7 ", "1.5", "1e3", "nan", "inf", "-0", "9" * 20, "x" * 70, "a#b",
                     "é", "12_3", "+4"]),
)


def _by_rows(loader, path):
    """``loader`` on ``path`` with the bulk reader switched off."""
    original = datasets._bulk_ratings
    datasets._bulk_ratings = lambda *args, **kwargs: None
    try:
        return loader(path)
    except datasets.DatasetError as exc:
        return exc
    finally:
        datasets._bulk_ratings = original


def _loaded(loader, path):
    try:
        return loader(path)
    except datasets.DatasetError as exc:
        return exc


def _assert_same(a, b):
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert type(a) is type(b) and str(a) == str(b)
        return
    ra, rb = a.reports[0], b.reports[0]
    assert (ra.rows, ra.loaded, ra.malformed, ra.bad_lines, ra.format) == (
        rb.rows, rb.loaded, rb.malformed, rb.bad_lines, rb.format)
    for name in ("user_ids", "item_ids", "weights", "timestamps"):
        x, y = getattr(a.interactions, name), getattr(b.interactions, name)
        assert x.dtype.kind == y.dtype.kind and x.tolist() == y.tolist(), name


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_FIELD, min_size=3, max_size=5), min_size=1, max_size=12),
       blank=st.booleans(), header=st.booleans())
def test_bulk_rating_reader_agrees_with_the_row_reader(tmp_path, rows, blank, header):
    """Whatever the file holds, the fast path loads exactly what the row-by-row loader does
    (the same rows, values and report), or hands the file to it."""
    lines = ["\t".join(r) for r in rows] + ([""] if blank else [])
    path = write(tmp_path / "u.data", "\n".join(lines) + "\n", "latin-1")
    _assert_same(_loaded(datasets.load_movielens_100k, path),
                 _by_rows(datasets.load_movielens_100k, path))
    csv_lines = (["userId,movieId,rating,timestamp"] if header else []) + [
        ",".join(r) for r in rows]
    path = write(tmp_path / "ratings.csv", "\r\n".join(csv_lines) + "\n")
    _assert_same(_loaded(datasets.load_movielens_csv, path),
                 _by_rows(datasets.load_movielens_csv, path))


def test_bulk_rating_reader_keeps_well_formed_files_exact(tmp_path):
    rows = [f"{u}\t{i}\t{r}\t{881250949 + u * 7 + i}" for u in range(1, 40) for i in (3, 17, 99)
            for r in (4,)]
    path = write(tmp_path / "u.data", "\n".join(rows) + "\n")
    assert datasets._bulk_ratings(path, "movielens-100k", "utf-8", None, False, False) is not None
    _assert_same(datasets.load_movielens_100k(path), _by_rows(datasets.load_movielens_100k, path))


def test_a_negative_or_non_finite_weight_is_malformed_in_either_reader(tmp_path):
    good = [f"{u}\t{i}\t4\t{881250949 + u * 7 + i}" for u in range(1, 30) for i in (3, 17)]
    path = write(tmp_path / "u.data", "\n".join(good + ["7\t5\t-3\t881250949"]) + "\n")
    for data in (datasets.load_movielens_100k(path),
                 _by_rows(datasets.load_movielens_100k, path)):
        assert data.reports[0].malformed == 1 and (np.asarray(data.interactions.weights) >= 0).all()


@pytest.mark.parametrize("text,seconds", [
    ("1700000000", 1700000000),
    ("1700000000.75", 1700000000),  # fractions of a second are dropped
    ("1.7e9", 1700000000),
    ("1700000000123", 1700000000),  # milliseconds
    ("1700000000123456", 1700000000),  # microseconds
    ("1700000000123456789", 1700000000),  # nanoseconds
    ("1700000000123.9", 1700000000),
    ("2023-11-14T22:13:20Z", 1700000000),
    ("2023-11-14T22:13:20", 1700000000),  # UTC unless an offset is named
    ("2023-11-15T00:13:20+02:00", 1700000000),
    ("2023-11-14 22:13:20.5", 1700000000),
    ("2023-11-14", 1699920000),
    ("-86400", -86400),
])
def test_events_csv_reads_unix_times_in_any_unit_and_iso_8601(tmp_path, text, seconds):
    f = write(tmp_path / "e.csv", f"user_id,item_id,timestamp\nu1,a,{text}\n")
    assert datasets.load(f).interactions.timestamps.tolist() == [seconds]


def test_events_csv_orders_millisecond_and_iso_rows_alike(tmp_path):
    # a log written in milliseconds keeps its days: a 30-day half-life means 30 days
    f = write(tmp_path / "e.csv", "user_id,item_id,timestamp\n"
              "u1,a,1700000000000\nu1,b,2023-11-15T22:13:20Z\nu1,c,1700172800\n")
    ts = datasets.load(f).interactions.timestamps
    assert np.diff(ts).tolist() == [86400, 86400]


@pytest.mark.parametrize("text,named", [
    ("yesterday", "'yesterday' is not a timestamp (Unix time or ISO 8601"),
    ("2023-13-40", "'2023-13-40' is not a timestamp"),
    ("nan", "'nan' is not a timestamp"),
    ("inf", "'inf' is not a timestamp"),
    ("1e999", "'1e999' is not a timestamp"),
])
def test_events_csv_names_a_timestamp_it_cannot_read(tmp_path, text, named):
    f = write(tmp_path / "e.csv", f"user_id,item_id,timestamp\nu1,a,{text}\nu1,b,1700000000\n")
    ds = datasets.load(f)
    assert ds.interactions.item_ids.tolist() == ["b"]
    assert named in ds.reports[0].summary()


def test_a_file_unreadable_from_its_first_line_says_so(tmp_path):
    f = tmp_path / "e.csv"
    f.write_bytes(b"\xff\xfe not utf-8\nu,i\n")
    with pytest.raises(datasets.DatasetError, match="unreadable from its first line"):
        datasets.load_events_csv(f)


def test_download_into_a_directory_it_cannot_create_names_it(tmp_path, capsys):
    from rankly.engine import cli

    target = tmp_path / "file"
    target.write_text("a file, not a directory\n")
    assert cli.main(["datasets", "download", "movielens-100k", "--dir",
                     str(target / "sub"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {target / 'sub'}") and "[Errno" not in err, err
