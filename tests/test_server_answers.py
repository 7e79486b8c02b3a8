"""Whatever a feature server answers, a run never crashes: http per ID, http batch (list and
object shapes) and Feast, against the real server serving the body under test
(``POST /_raw-body``).

The rules: a body that is not JSON or not the expected shape fails the IDs of its request with
``malformed_response`` (retried first); IDs the answer has but nobody asked for are ignored;
a feature value of the wrong type (a list, an object, a word for a number) is missing (NaN)
for that feature only; numbers beyond the double range (``1e400``) and Python's ``NaN`` are
missing values too.  Tables pin the rules down; hypothesis then throws random bodies at each
endpoint kind, at the sources alone and through the real scoring job.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.model import to_float
from batchscore.settings import FetchSettings
from batchscore.sources import NOT_FOUND, Failure
from conftest import (
    ScoreInProcess,
    TrainedModel,
    batchscore_command,
    clean_environ,
    read_errors,
    read_output,
)
from conftest import write_config as write_config_file
from featureserver import gzip_padded
from servers import FetchResult, ServerProcess, fetch_all, no_backoff_waits, server_process

__all__ = ["no_backoff_waits"]  # a fixture, used by name

pytestmark = pytest.mark.usefixtures("no_backoff_waits")

KINDS = ("per_id", "batch", "batch_object", "feast")
ROUTES = {"per_id": "features", "batch": "batch", "batch_object": "batch", "feast": "feast"}
IDS = ("a", "b")
NAMES = ("f0", "f1")
RETRIES = 1
MALFORMED = Failure("malformed_response", 200, 1 + RETRIES, True)
ABSENT = Failure(NOT_FOUND)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One feature server (a process: in-process jobs stay on their fast path) for the module;
    each test sets the body it serves."""
    with server_process(tmp_path_factory.mktemp("answers"), {}) as srv:
        yield srv


def source(url: str, kind: str, **extra: Any) -> dict[str, Any]:
    """The ``[[sources]]`` table of an endpoint kind, named ``svc``."""
    if kind == "per_id":
        url, extra = f"{url}/features/{{id}}", {"features_path": "features", **extra}
    elif kind == "feast":
        extra = {"entity_key": "id", "feature_service": "scoring", **extra}
    else:
        shape = "?shape=object" if kind == "batch_object" else ""
        url, extra = f"{url}/batch{shape}", {"mode": "batch", **extra}
    return {"name": "svc", "kind": "feast" if kind == "feast" else "http", "url": url, **extra}


def answers(
    srv: ServerProcess,
    kind: str,
    body: bytes,
    *,
    encoding: str | None = None,
    padding: int = 0,
    **extra: Any,
) -> list[FetchResult]:
    """What the source of ``kind`` (with ``extra`` config keys) makes of ``body`` for
    :data:`IDS` (sent with ``encoding``, ``padding`` spaces after it)."""
    srv.raw_body(ROUTES[kind], body, encoding=encoding, padding=padding)
    try:
        [results], _ = fetch_all(
            [source(srv.url, kind, **extra)], IDS, fetch=FetchSettings(retries=RETRIES), names=NAMES
        )
    finally:
        srv.raw_body(ROUTES[kind], None)
    return results


def features(f0: Any = None, f1: Any = None) -> dict[str, Any]:
    return {"f0": f0, "f1": f1}


def feast_body(*columns: tuple[str, list[Any], list[Any]], ids: list[Any] | None = None) -> bytes:
    """A Feast answer: the entity column (``ids``, default :data:`IDS`), then ``columns``."""
    entity = ("id", list(IDS) if ids is None else ids, ["PRESENT"] * len(IDS))
    names = [name for name, _, _ in (entity, *columns)]
    results = [{"values": v, "statuses": s} for _, v, s in (entity, *columns)]
    return json.dumps({"metadata": {"feature_names": names}, "results": results}).encode()


NOT_JSON = [b"", b"not json", b"\xff\xfe", b'{"features": {', b"[" * 3000, b'"\\ud800"']
WRONG_TOP = [b"null", b"[]", b"[1, 2]", b'"x"', b"5", b"true", b"1e400", b"{}"]

# (body, what the source makes of it for IDs a and b)
PER_ID: list[tuple[bytes, list[FetchResult]]] = [
    *((body, [MALFORMED, MALFORMED]) for body in NOT_JSON + WRONG_TOP),
    *(
        (b'{"features": %s}' % shape, [MALFORMED, MALFORMED])
        for shape in (b"null", b"5", b"[]", b'"x"', b"[{}]")
    ),
    (b'{"features": {}}', [features(), features()]),
    (b'{"features": {"f0": 1e400, "f1": NaN}}', [features(), features()]),
    (
        b'{"features": {"f0": 123456789012345678901234567890, "f1": -Infinity}}',
        [features(123456789012345678901234567890)] * 2,  # read again: the int is exact
    ),
    (
        b'{"features": {"f0": [1, 2], "f1": {"x": 1}, "other": "\\ud800"}}',
        [MALFORMED, MALFORMED],  # a lone surrogate is not text: the body is not JSON
    ),
    (
        b'{"features": {"f0": [1, 2], "f1": {"x": 1}}, "id": 99999999999999999999999}',
        [features([1, 2], {"x": 1}), features([1, 2], {"x": 1})],  # kept raw: NaN when scored
    ),
]

BATCH: list[tuple[bytes, list[FetchResult]]] = [
    *((body, [MALFORMED, MALFORMED]) for body in NOT_JSON + WRONG_TOP),
    *(
        (b'{"results": %s}' % shape, [MALFORMED, MALFORMED])
        for shape in (b"null", b"5", b'"x"', b"true", b"[5]", b"[null]", b'[{"features": {}}]')
    ),
    (b'{"results": []}', [ABSENT, ABSENT]),
    (b'{"results": {}}', [ABSENT, ABSENT]),
    # Features of an asked ID that are no object make the answer malformed ...
    (b'{"results": [{"id": "a", "features": 5}]}', [MALFORMED, MALFORMED]),
    (b'{"results": [{"id": "a"}]}', [MALFORMED, MALFORMED]),
    (b'{"results": {"a": null}}', [MALFORMED, MALFORMED]),
    (b'{"results": {"a": [1]}}', [MALFORMED, MALFORMED]),
    # ... those of IDs nobody asked for are ignored, whatever they are.
    (
        b'{"results": [{"id": "zz", "features": 5}, {"id": 1.5}, {"id": null}, {"id": true},'
        b' {"id": [1]}, {"id": {"a": 1}}, {"id": 123456789012345678901234567890},'
        b' {"id": "b", "features": {"f0": 2}}]}',
        [ABSENT, features(2)],
    ),
    (b'{"results": {"zz": 7, "b": {"f1": "x"}, "": null}}', [ABSENT, features(None, "x")]),
    # Echoed as a number, an ID is still the ID.
    (b'{"results": [{"id": 7, "features": {"f0": 1}}]}', [ABSENT, ABSENT]),
    # One ID twice: the same record is fine, two different ones are malformed.
    (
        b'{"results": [{"id": "a", "features": {"f0": 1}}, {"id": "a", "features": {"f0": 1}}]}',
        [features(1), ABSENT],
    ),
    (
        b'{"results": [{"id": "a", "features": {"f0": 1}}, {"id": "a", "features": {"f0": 2}}]}',
        [MALFORMED, MALFORMED],
    ),
    (
        b'{"results": [{"id": "a", "features": {"f0": true, "f1": [1], "f9": 1e400}},'
        b' {"id": "b", "features": {"f0": "1.5", "f1": NaN}}]}',
        [features(True, [1]), features("1.5")],
    ),
]

FEAST: list[tuple[bytes, list[FetchResult]]] = [
    *((body, [MALFORMED, MALFORMED]) for body in NOT_JSON + WRONG_TOP),
    *(
        (body, [MALFORMED, MALFORMED])
        for body in (
            b'{"metadata": null, "results": []}',
            b'{"metadata": [], "results": []}',
            b'{"metadata": {"feature_names": null}, "results": []}',
            b'{"metadata": {"feature_names": ["id", "f0"]}, "results": {}}',
            b'{"metadata": {"feature_names": ["id", "f0"]}, "results": [{}]}',  # lengths differ
            b'{"results": []}',
            feast_body(("f0", "x", ["PRESENT"] * 2)),  # type: ignore[arg-type]
            feast_body(("f0", [1], ["PRESENT"])),  # one entry for two IDs
            feast_body(("f0", [1, 2], [1, 2])),  # statuses that are no strings
            feast_body(("f0", [1, 2], None)),  # type: ignore[arg-type]
            feast_body(("f0", [1, 2], ["PRESENT"] * 2), ids=["b", "a"]),  # other order
            feast_body(("f0", [1, 2], ["PRESENT"] * 2), ids=["a", "zz"]),  # an ID not asked
            feast_body(("f0", [1, 2], ["PRESENT"] * 2), ids=["a"]),
        )
    ),
    (
        feast_body(("f0", [[1], {"x": 1}], ["PRESENT"] * 2), ("f1", [True, "7"], ["PRESENT"] * 2)),
        [features([1], True), features({"x": 1}, "7")],
    ),
    (
        feast_body(("f0", [1, 2], ["NOT_FOUND", "PRESENT"]), ("f1", [3, 4], ["NOT_FOUND"] * 2)),
        [ABSENT, features(2)],
    ),
    (  # an unknown status is not PRESENT: a missing value
        feast_body(("f0", [1, 2], ["WHAT", "PRESENT"]), ("zz", [3, 4], ["PRESENT"] * 2)),
        [features(), features(2)],
    ),
    (
        b'{"metadata": {"feature_names": ["id", "f0", "f1"]}, "results": ['
        b'{"values": ["a", "b"], "statuses": ["PRESENT", "PRESENT"]},'
        b'{"values": [1e400, 123456789012345678901234567890], "statuses": ["PRESENT", "PRESENT"]},'
        b'{"values": [NaN, 2], "statuses": ["PRESENT", "PRESENT"]}]}',
        [features(), features(123456789012345678901234567890, 2)],
    ),
]


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [("per_id", b, e) for b, e in PER_ID]
    + [(kind, b, e) for kind in ("batch", "batch_object") for b, e in BATCH]
    + [("feast", b, e) for b, e in FEAST],
)
def test_every_answer_shape_becomes_features_not_found_or_malformed(
    server: ServerProcess, kind: str, body: bytes, expected: list[FetchResult]
) -> None:
    assert answers(server, kind, body) == expected


def test_int_entity_keys_may_come_back_as_strings(server: ServerProcess) -> None:
    body = feast_body(("f0", [1, 2], ["PRESENT"] * 2), ids=["10", "20"])
    server.raw_body("feast", body)
    try:
        [results], _ = fetch_all(
            [source(server.url, "feast", entity_type="int")], ["10", "20"], names=NAMES
        )
    finally:
        server.raw_body("feast", None)
    assert results == [features(1), features(2)]


# -- answers too long: a gzip bomb, an endless body ----------------------------------------------

TOO_LARGE = Failure("response_too_large", 200, 1, False)
FITTING: dict[str, tuple[bytes, list[FetchResult]]] = {
    "per_id": (b'{"features": {"f0": 1, "f1": 2}}', [features(1, 2), features(1, 2)]),
    "batch": (
        b'{"results": [{"id": "a", "features": {"f0": 1}}, {"id": "b", "features": {"f1": 2}}]}',
        [features(1), features(None, 2)],
    ),
    "feast": (feast_body(("f0", [1, 2], ["PRESENT"] * 2)), [features(1), features(2)]),
}


@pytest.mark.parametrize("kind", sorted(FITTING))
def test_an_answer_longer_than_max_response_bytes_fails_its_ids_without_a_retry(
    server: ServerProcess, kind: str
) -> None:
    """The cap is on the decoded body, to the byte, plain or gzip-encoded.  Before, there was
    no cap: every answer was read whole, however long."""
    body, expected = FITTING[kind]
    cap = {"max_response_bytes": len(body) + 100}
    assert answers(server, kind, body, padding=100, **cap) == expected
    assert answers(server, kind, gzip_padded(body, 100), encoding="gzip", **cap) == expected
    assert answers(server, kind, body, padding=101, **cap) == [TOO_LARGE, TOO_LARGE]
    bomb = gzip_padded(body, 101)
    assert answers(server, kind, bomb, encoding="gzip", **cap) == [TOO_LARGE, TOO_LARGE]


def peak_run(args: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run the real command; its exit status, stderr and peak RSS in MB.

    The peak is the process's own high-water mark (``VmHWM`` in /proc, read until it exits),
    not ``wait4``'s ``ru_maxrss``: Linux carries the parent's RSS at fork through ``exec`` into
    the child's ``ru_maxrss``, so that measured the test process itself (~210 MB alone, ~480 MB
    in a pytest-xdist worker that ran the Dask tests before).
    """
    proc = subprocess.Popen(
        [*batchscore_command(), *args],
        cwd=cwd,
        env=clean_environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    proc_dir = Path(f"/proc/{proc.pid}")
    peak_kb = 0

    def watch() -> None:
        nonlocal peak_kb
        while proc.poll() is None:
            try:
                argv = (proc_dir / "cmdline").read_bytes().split(b"\0")[:-1]
                status = (proc_dir / "status").read_text()
            except OSError:
                break
            # Until exec, /proc shows the forked copy of this test process: not counted.
            if [a.decode() for a in argv[-len(args) :]] == args:
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = proc.stderr.read().decode()
    proc.wait()
    watcher.join(5)
    assert peak_kb > 0, "the command's peak RSS was never read"
    return proc.returncode, stderr, peak_kb / 1024


GIGABYTE = 1 << 30


@pytest.mark.parametrize(
    ("kind", "encoding"), [("per_id", "gzip"), ("batch", None), ("feast", "gzip")]
)
def test_a_gzip_bomb_or_a_gigabyte_body_costs_no_gigabyte_and_fails_its_ids(
    server: ServerProcess,
    trained_models: dict[str, TrainedModel],
    tmp_path: Path,
    kind: str,
    encoding: str | None,
) -> None:
    """Answers of a gigabyte of JSON whitespace, as ~1 MB of gzip or as plain bytes, under the
    default caps.  Before, the process read them whole (1.1 GB and more of memory) and accepted
    them."""
    body, _ = FITTING[kind]
    if encoding == "gzip":
        server.raw_body(ROUTES[kind], gzip_padded(body, GIGABYTE), encoding="gzip")
    else:
        server.raw_body(ROUTES[kind], body, padding=GIGABYTE)
    try:
        config = write_config_file(
            tmp_path / "config.toml",
            model=trained_models["binary"].model_path,
            sources=[source(server.url, kind)],
        )
        (tmp_path / "ids.txt").write_text("a\nb\n")
        out = tmp_path / "scores.csv"
        status, stderr, peak = peak_run(
            ["score", "ids.txt", "-c", str(config), "-o", str(out)], tmp_path
        )
    finally:
        server.raw_body(ROUTES[kind], None)
    assert status == 3, stderr  # failed IDs, more than --max-failed 0
    assert [(e["id"], e["reason"]) for e in read_errors(Path(f"{out}.errors.jsonl"))] == [
        ("a", "response_too_large"),
        ("b", "response_too_large"),
    ]
    assert "max_response_bytes" in stderr  # said once, with what to do
    assert peak < 300, f"peak RSS {peak:.0f} MB"


# -- through the scoring job ---------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Scores :data:`JOB_IDS` with one source of the server, in a fresh folder per run."""

    model: TrainedModel
    server: ServerProcess

    def run(
        self, score_in_process: ScoreInProcess, kind: str, body: bytes
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        self.server.raw_body(ROUTES[kind], body)
        try:
            with tempfile.TemporaryDirectory() as folder:
                config = write_config_file(
                    Path(folder) / "config.toml",
                    model=self.model.model_path,
                    sources=[source(self.server.url, kind)],
                    fetch={"retries": RETRIES},
                )
                ids = Path(folder) / "ids.txt"
                ids.write_text("".join(f"{i}\n" for i in JOB_IDS))
                out = Path(folder) / "scores.jsonl"
                run = score_in_process(
                    config=config, ids=str(ids), output=str(out), max_failed_rate=1.0
                )
                return run.status, read_output(out), read_errors(Path(f"{out}.errors.jsonl"))
        finally:
            self.server.raw_body(ROUTES[kind], None)


JOB_IDS = ("a", "b", "a", "c")


@pytest.fixture(scope="module")
def job(trained_models: dict[str, TrainedModel], server: ServerProcess) -> Job:
    return Job(trained_models["binary"], server)


def test_a_wrong_typed_value_is_missing_for_its_feature_only(
    job: Job, score_in_process: ScoreInProcess
) -> None:
    model = job.model
    row = model.features[0].copy()
    row[np.isnan(row)] = 0.5
    odd: dict[int, Any] = {0: [1, 2], 1: {"x": 1}, 2: "many", 3: True, 4: "1.5", 5: None}
    sent = {f"f{j}": odd.get(j, float(value)) for j, value in enumerate(row)}
    row[[0, 1, 2, 5]] = math.nan  # what SPEC.md's values rule makes of them
    row[[3, 4]] = 1.0, 1.5
    expected = float(model.booster.predict(row.reshape(1, -1))[0])
    n = 3  # distinct IDs: one batch, one Feast request
    bodies = {
        "per_id": json.dumps({"features": sent}).encode(),
        "batch": json.dumps({"results": [{"id": i, "features": sent} for i in "abc"]}).encode(),
        "batch_object": json.dumps({"results": dict.fromkeys("abc", sent)}).encode(),
        "feast": json.dumps(
            {
                "metadata": {"feature_names": ["id", *sent]},
                "results": [{"values": list("abc"), "statuses": ["PRESENT"] * n}]
                + [{"values": [v] * n, "statuses": ["PRESENT"] * n} for v in sent.values()],
            }
        ).encode(),
    }
    for kind, body in bodies.items():
        status, rows, errors = job.run(score_in_process, kind, body)
        assert status == 0, (kind, errors)
        assert [r["id"] for r in rows] == list(JOB_IDS), kind
        assert [r["score"] for r in rows] == [expected] * len(JOB_IDS), kind


def test_a_number_that_is_no_finite_double_is_missing_as_in_an_input_cell(
    job: Job, score_in_process: ScoreInProcess
) -> None:
    """The one rule of every path (test_input_source.py has the input formats and SQLite): a
    number beyond the double range, an infinity or NaN in an answer is missing, the row scored."""
    model = job.model
    row = model.features[0].copy()
    row[np.isnan(row)] = 0.5
    j = int(np.argmax(model.booster.feature_importance("split")))
    sent = {f"f{k}": float(value) for k, value in enumerate(row)}
    row[j] = math.nan
    expected = float(model.booster.predict(row.reshape(1, -1))[0])
    n = 3
    for token in (b"1e400", b"-1e400", b"Infinity", b"NaN", b"1" + b"0" * 400):
        sent[f"f{j}"] = "@"  # type: ignore[assignment]
        bodies = {
            "per_id": json.dumps({"features": sent}),
            "batch": json.dumps({"results": [{"id": i, "features": sent} for i in "abc"]}),
            "feast": json.dumps(
                {
                    "metadata": {"feature_names": ["id", *sent]},
                    "results": [{"values": list("abc"), "statuses": ["PRESENT"] * n}]
                    + [{"values": [v] * n, "statuses": ["PRESENT"] * n} for v in sent.values()],
                }
            ),
        }
        for kind, text in bodies.items():
            body = text.encode().replace(b'"@"', token)
            status, rows, errors = job.run(score_in_process, kind, body)
            assert (status, errors) == (0, []), (kind, token)
            assert [r["score"] for r in rows] == [expected] * len(JOB_IDS), (kind, token)


def test_a_malformed_answer_fails_its_ids_with_the_reason_and_the_run_goes_on(
    job: Job, score_in_process: ScoreInProcess
) -> None:
    for kind in KINDS:
        status, rows, errors = job.run(score_in_process, kind, b'{"results": {"a": 5}, "x": [')
        assert status == 0 and rows == [], kind  # within --max-failed-rate 1.0
        assert [(e["id"], e["line"], e["reason"], e["attempts"]) for e in errors] == [
            (i, n, "malformed_response", 1 + RETRIES) for n, i in enumerate(JOB_IDS, start=1)
        ], kind


# -- random bodies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A number written as is: what JSON allows but doubles and 64-bit integers cannot hold."""

    text: str


def dumps(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` tokens as written (and big ints exact)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(dumps, value)) + "]"
    return json.dumps(value)


WORDS = [*IDS, "zz", "", "1.5", "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE", "x"]
KEYS = ["id", "f0", "f1", "f2", "features", "results", "metadata", "feature_names", "values"]
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(max_size=4),  # surrogates too: "\ud800" is valid JSON text but no string
    st.sampled_from(["1e400", "-1e400", "NaN", "-Infinity", "1" + "0" * 400, "9" * 30]).map(Raw),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
feature_maps = st.dictionaries(st.sampled_from(["f0", "f1", "f2", "zz"]), values, max_size=4)
either = feature_maps | values
id_keys = st.sampled_from([*IDS, "zz", "c"]) | st.text(max_size=3)
ids_like = id_keys | values


def record() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({"id": ids_like, "features": either}) | values


def column(n: int) -> st.SearchStrategy[Any]:
    statuses = st.sampled_from(["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"])
    return (
        st.fixed_dictionaries(
            {
                "values": st.lists(values, min_size=n, max_size=n) | values,
                "statuses": st.lists(statuses | values, min_size=n, max_size=n) | values,
            }
        )
        | values
    )


def structured(kind: str, n: int) -> st.SearchStrategy[Any]:
    """Answers of about the right shape for ``kind`` (``n`` IDs asked), wrong in random ways."""
    if kind == "per_id":
        return st.fixed_dictionaries({"features": either}) | values
    if kind == "feast":
        names = st.lists(st.sampled_from(["id", "f0", "f1", "f2"]) | values, max_size=4)
        return st.fixed_dictionaries(
            {
                "metadata": st.fixed_dictionaries({"feature_names": names}) | values,
                "results": st.lists(column(n), max_size=4) | values,
            }
        )
    return st.fixed_dictionaries(
        {"results": st.lists(record(), max_size=5) | st.dictionaries(id_keys, either) | values}
    )


def bodies(kind: str, n: int) -> st.SearchStrategy[bytes]:
    text = structured(kind, n).map(dumps).map(str.encode)
    return st.one_of(
        text,
        text.flatmap(lambda body: st.integers(0, len(body)).map(lambda cut: body[:cut])),
        st.binary(max_size=24),
    )


def check_results(results: list[FetchResult]) -> None:
    for result in results:
        if isinstance(result, Failure):
            assert result in (ABSENT, MALFORMED), result
        else:
            assert set(result) == set(NAMES)
            for value in result.values():
                assert isinstance(to_float(value), float)  # a number or NaN, never an error


FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,  # fixed seeds: the same bodies on every run (CI)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("kind", KINDS)
def test_random_bodies_never_crash_a_source(server: ServerProcess, kind: str) -> None:
    @FUZZ
    @given(body=bodies(kind, len(IDS)))
    def check(body: bytes) -> None:
        check_results(answers(server, kind, body))

    check()


@pytest.mark.parametrize("kind", KINDS)
def test_random_bodies_never_crash_a_run_and_every_line_is_accounted_for(
    job: Job, score_in_process: ScoreInProcess, kind: str
) -> None:
    @settings(FUZZ, max_examples=8)
    @given(body=bodies(kind, len(set(JOB_IDS))))
    def check(body: bytes) -> None:
        status, rows, errors = job.run(score_in_process, kind, body)
        assert status == 0  # failures within --max-failed-rate 1.0; never 1
        # Every input line once: in the errors file, or else in the output, in order.
        failed = [record["line"] for record in errors]
        assert len(set(failed)) == len(failed)
        scored = [i for n, i in enumerate(JOB_IDS, start=1) if n not in failed]
        assert [row["id"] for row in rows] == scored
        for record in errors:
            assert record["reason"] in ("malformed_response", "not_found", "no_features")
            assert record["id"] == JOB_IDS[record["line"] - 1]

    check()
