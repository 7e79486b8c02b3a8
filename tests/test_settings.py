"""Configuration: precedence, ``${VAR}`` expansion, unknown keys, bad values.

Precedence is checked where a user sees it (which file the scores land in, which exit status a
failure allowance gives), through the real settings layer and job run in this process; the
rules on single values are checked on :func:`batchscore.resolving.resolve` directly.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from batchscore.errors import ConfigError, UsageError
from batchscore.resolving import Origins, resolve
from batchscore.settings import OPTIONS
from conftest import IdStore, ScoreInProcess, sqlite_source, write_config

# -- precedence, observed ------------------------------------------------------------------------


def test_output_path_comes_from_flag_then_env_then_config_then_stdout(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("C1\nC2\n")
    from_config, from_env, from_flag = (tmp_path / f"{n}.csv" for n in ("config", "env", "flag"))
    config = write_config(
        tmp_path / "c.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path)],
        output={"path": str(from_config)},
    )
    env = {"BATCHSCORE_OUTPUT": str(from_env)}

    score_in_process(config=config, environ=env, ids=str(ids), output=str(from_flag))
    assert from_flag.exists()
    assert not from_env.exists()
    assert not from_config.exists()

    score_in_process(config=config, environ=env, ids=str(ids))
    assert from_env.exists()
    assert not from_config.exists()

    score_in_process(config=config, ids=str(ids))
    assert from_config.exists()

    plain = write_config(
        tmp_path / "plain.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path)],
    )
    run = score_in_process(config=plain, ids=str(ids))
    assert run.stdout.decode().splitlines()[1:] == [
        f"C1,{id_store.score('C1')!r}",
        f"C2,{id_store.score('C2')!r}",
    ]


def test_failure_allowance_comes_from_flag_then_env_then_config(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("C1\nNOT-THERE\nC2\n")  # one ID fails
    strict = write_config(
        tmp_path / "strict.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path)],
        run={"max_failed": 0},
    )
    lenient = write_config(
        tmp_path / "lenient.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path)],
        run={"max_failed": 1},
    )
    assert score_in_process(config=strict, ids=str(ids)).status == 3
    assert score_in_process(config=lenient, ids=str(ids)).status == 0
    allow = {"BATCHSCORE_MAX_FAILED": "1"}
    assert score_in_process(config=strict, environ=allow, ids=str(ids)).status == 0
    forbid = {"BATCHSCORE_MAX_FAILED": "0"}
    assert score_in_process(config=lenient, environ=forbid, ids=str(ids)).status == 3
    assert score_in_process(config=strict, environ=allow, ids=str(ids), max_failed=0).status == 3


def test_config_path_can_come_from_the_environment(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("007\n")
    run = score_in_process(environ={"BATCHSCORE_CONFIG": str(id_store.config_path)}, ids=str(ids))
    assert run.status == 0
    assert run.stdout.decode().splitlines() == ["id,score", f"007,{id_store.score('007')!r}"]


# -- precedence, value by value ------------------------------------------------------------------


def settings_for(
    tmp_path: Path, config_extra: dict[str, Any], environ: dict[str, str], **flags: Any
) -> Any:
    config = write_config(
        tmp_path / "config.toml",
        model=tmp_path / "model.txt",
        sources=[sqlite_source(tmp_path / "f.db")],
        **config_extra,
    )
    return resolve(flags, str(config), environ)


@pytest.mark.parametrize(
    ("config", "environ", "flags", "expected"),
    [
        ({}, {}, {}, 1024),
        ({"score": {"batch_size": 100}}, {}, {}, 100),
        ({"score": {"batch_size": 100}}, {"BATCHSCORE_BATCH_SIZE": "200"}, {}, 200),
        (
            {"score": {"batch_size": 100}},
            {"BATCHSCORE_BATCH_SIZE": "200"},
            {"batch_size": 300},
            300,
        ),
        ({"score": {"batch_size": 100}}, {"BATCHSCORE_BATCH_SIZE": ""}, {}, 100),  # empty = unset
    ],
)
def test_batch_size_precedence(
    tmp_path: Path,
    config: dict[str, Any],
    environ: dict[str, str],
    flags: dict[str, Any],
    expected: int,
) -> None:
    assert settings_for(tmp_path, config, environ, **flags).score.batch_size == expected


def test_environment_values_are_parsed_like_flags(tmp_path: Path) -> None:
    environ = {
        "BATCHSCORE_UNORDERED": "yes",
        "BATCHSCORE_QUIET": "0",
        "BATCHSCORE_MAX_FAILED_RATE": "0.25",
        "BATCHSCORE_KEEP": "segment",
        "BATCHSCORE_CONCURRENCY": "32",
    }
    settings = settings_for(tmp_path, {"run": {"quiet": True}}, environ)
    assert settings.output.unordered is True
    assert settings.run.quiet is False
    assert settings.run.max_failed_rate == 0.25
    assert settings.input.keep == ("segment",)
    assert settings.fetch.concurrency == 32


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCHSCORE_BATCH_SIZE", "many"),
        ("BATCHSCORE_DEDUPE", "maybe"),
        ("BATCHSCORE_RATE_LIMIT", "fast"),
    ],
)
def test_a_bad_environment_value_is_reported_under_its_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as error:
        settings_for(tmp_path, {}, {variable: value})
    assert variable in error.value.message
    assert repr(value) in error.value.message


# -- ${VAR} expansion ----------------------------------------------------------------------------


def test_dollar_brace_variables_are_expanded_from_the_environment(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        model="${MODEL_DIR}/" + id_store.model_path.name,
        sources=[sqlite_source(Path("${DATA_DIR}") / id_store.db_path.name, name="${NAME}s")],
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("C1\n")
    environ = {
        "MODEL_DIR": str(id_store.model_path.parent),
        "DATA_DIR": str(id_store.db_path.parent),
        "NAME": "feature",
    }
    run = score_in_process(config=config, environ=environ, ids=str(ids))
    assert run.status == 0
    assert run.stdout.decode().splitlines()[1] == f"C1,{id_store.score('C1')!r}"
    assert "source features:" in run.stderr  # the name came from ${NAME}


def test_a_missing_variable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        model=tmp_path / "model.txt",
        sources=[sqlite_source(tmp_path / "f.db", table="features_${FEATURE_TABLE_SUFFIX}")],
    )
    with pytest.raises(ConfigError) as error:
        resolve({}, str(config), {"OTHER": "x"})
    assert "FEATURE_TABLE_SUFFIX" in error.value.message
    assert "sources[0]" in error.value.message


def test_text_that_only_looks_like_a_variable_is_left_alone(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        model=tmp_path / "model.txt",
        sources=[sqlite_source(tmp_path / "f.db")],
        output={"path": "$HOME/out-{date}.csv"},
    )
    assert resolve({}, str(config), {}).output.path == "$HOME/out-{date}.csv"


def test_the_config_fingerprint_does_not_depend_on_secret_values(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        model=tmp_path / "model.txt",
        sources=[sqlite_source(tmp_path / "${TOKEN}.db")],
    )
    one = resolve({}, str(config), {"TOKEN": "secret-1"}).fingerprint
    two = resolve({}, str(config), {"TOKEN": "secret-2"}).fingerprint
    assert one == two
    assert "secret" not in one
    config.write_text(config.read_text().replace("${TOKEN}.db", "${TOKEN}-v2.db"))
    assert resolve({}, str(config), {"TOKEN": "secret-1"}).fingerprint != one


# -- unknown keys and bad values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[scroe]\nbatch_size = 5\n", ["'scroe'", "did you mean 'score'"]),
        ("[score]\nbatch_sise = 5\n", ["'batch_sise'", "[score]", "did you mean 'batch_size'"]),
        ("[fetch]\nconcurency = 5\n", ["'concurency'", "did you mean 'concurrency'"]),
        ("[[sorces]]\nkind = 'sqlite'\n", ["'sorces'", "did you mean 'sources'"]),
        ("[output]\nrezume = true\n", ["'rezume'", "did you mean 'resume'"]),
    ],
)
def test_unknown_keys_are_errors_suggesting_the_nearest_key(
    tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as error:
        resolve({"model": "m.txt"}, str(config), {})
    for fragment in fragments:
        assert fragment in error.value.message


def test_an_unknown_source_key_is_an_error_suggesting_the_nearest_key(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    source = sqlite_source(id_store.db_path)
    source["tabel"] = source.pop("table")
    config = write_config(tmp_path / "c.toml", model=id_store.model_path, sources=[source])
    with pytest.raises(ConfigError) as error:
        score_in_process(config=config, stdin=b"C1\n")
    assert "'tabel'" in error.value.message
    assert "did you mean 'table'" in error.value.message


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[score]\nbatch_size = "many"\n', ["[score].batch_size", "whole number"]),
        ("[run]\nquiet = 3\n", ["[run].quiet", "true or false"]),
        ("score = 3\n", ["[score]", "table"]),
        ("sources = 3\n", ["sources", "[[sources]]"]),
        ("[model]\npath = 'm.txt'\n[[sources]]\nkind = 'sqlit'\n", ["did you mean 'sqlite'"]),
        (
            "[model]\npath = 'm.txt'\n[[sources]]\nkind = 'sqlite'\n[[sources]]\nkind = 'sqlite'\n",
            ["two sources are named 'sqlite'"],
        ),
        ("[model]\npath = 'm.txt'\n", ["no feature sources", "[[sources]]"]),
        ("[[sources]]\nkind = 'sqlite'\n", ["no model", "-m"]),
        ("[score\nbatch_size = 1\n", ["not valid TOML"]),
    ],
)
def test_bad_config_values_are_config_errors_saying_where(
    tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as error:
        resolve({}, str(config), {})
    for fragment in fragments:
        assert fragment in error.value.message
    assert "\n" not in error.value.message


def test_a_config_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({}, str(tmp_path / "nope.toml"), {})


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"concurrency": 0}, "--concurrency"),
        ({"retries": -1}, "--retries"),
        ({"rate_limit": -1.0}, "--rate-limit"),
        ({"max_failed": -1}, "--max-failed"),
        ({"max_failed_rate": 1.5}, "--max-failed-rate"),
        ({"progress_interval": 0.0}, "--progress-interval"),
        ({"format": "jsnol"}, "did you mean 'jsonl'"),
        ({"input_format": "cvs"}, "did you mean 'csv'"),
        ({"resume": True, "overwrite": True}, "contradict"),
        ({"shard": "3/2"}, "--shard"),
        ({"shard": "half"}, "K/N"),
    ],
)
def test_bad_flag_values_are_usage_errors_naming_the_flag(
    tmp_path: Path, flags: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(UsageError) as error:
        settings_for(tmp_path, {}, {}, **flags)
    assert fragment in error.value.message


def test_date_and_run_id_in_the_output_path_expand(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    template = tmp_path / "scores-{date}-{run_id}.csv"
    run = score_in_process(config=id_store.config_path, stdin=b"C1\n", output=str(template))
    assert run.status == 0, run.stderr
    written = [p.name for p in tmp_path.iterdir() if p.suffix == ".csv"]
    assert len(written) == 1
    _, year, month, day, run_id = written[0].removesuffix(".csv").split("-")
    assert f"{year}-{month}-{day}" == datetime.date.today().isoformat()
    assert run_id
    assert f"scores written to {tmp_path / written[0]}" in run.stderr


# -- a bad value is named as the user gave it -----------------------------------------------------


@pytest.mark.parametrize(
    ("config", "environ", "flags", "message"),
    [
        (
            {"fetch": {"concurrency": 0}},
            {},
            {},
            "[fetch] concurrency = 0 in {config} must be at least 1",
        ),
        (
            {"fetch": {"concurrency": 8}},
            {"BATCHSCORE_CONCURRENCY": "0"},
            {},
            "BATCHSCORE_CONCURRENCY=0 must be at least 1",
        ),
        (
            {"fetch": {"concurrency": 8}},
            {"BATCHSCORE_CONCURRENCY": "4"},
            {"concurrency": 0},
            "--concurrency 0 must be at least 1",
        ),
        (
            {"input": {"format": "cvs"}},
            {},
            {},
            '[input] format = "cvs" in {config} must be text, csv, tsv or jsonl '
            "(did you mean 'csv'?)",
        ),
        (
            {"run": {"max_failed_rate": 1.5}},
            {},
            {},
            "[run] max_failed_rate = 1.5 in {config} must be between 0 and 1",
        ),
        (
            {"output": {"resume": True}},
            {},
            {"overwrite": True},
            "[output] resume = true in {config} and --overwrite contradict each other; "
            "pass one of them",
        ),
        ({"input": {"shard": "3/2"}}, {}, {}, '[input] shard = "3/2" in {config}: --shard K/N'),
        ({"input": {"min_ids": -1}}, {}, {}, "[input] min_ids = -1 in {config} must be 0"),
        ({"fetch": {"down_after": 0}}, {}, {}, "[fetch] down_after = 0 in {config} must be at"),
        ({"input": {"header": True}}, {}, {"input_format": "jsonl"}, "[input] header = true in"),
    ],
)
def test_a_bad_value_is_named_by_the_flag_variable_or_config_key_that_gave_it(
    tmp_path: Path,
    config: dict[str, Any],
    environ: dict[str, str],
    flags: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ConfigError) as error:
        settings_for(tmp_path, config, environ, **flags)
    assert error.value.message.startswith(message.format(config=tmp_path / "config.toml"))


def test_header_and_min_ids_come_from_flag_env_or_config(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"input": {"header": True, "min_ids": 10}}, {})
    assert (settings.input.header, settings.input.min_ids) == (True, 10)
    environ = {"BATCHSCORE_HEADER": "false", "BATCHSCORE_MIN_IDS": "20"}
    settings = settings_for(tmp_path, {"input": {"header": True}}, environ)
    assert (settings.input.header, settings.input.min_ids) == (False, 20)
    settings = settings_for(tmp_path, {}, environ, header=True, min_ids=30)
    assert (settings.input.header, settings.input.min_ids) == (True, 30)


def test_no_header_numbers_the_columns_so_the_id_column_defaults_to_the_first(
    tmp_path: Path,
) -> None:
    """Unset, the header is each format's own (None); --no-header, from a flag, a variable or
    the config, makes the default ID column 1; an --id-column given anywhere is kept."""
    assert settings_for(tmp_path, {}, {}).input.header is None
    assert settings_for(tmp_path, {}, {}).input.id_column == "id"
    for config, environ, flags in (
        ({}, {}, {"header": False}),
        ({}, {"BATCHSCORE_HEADER": "0"}, {}),
        ({"input": {"header": False}}, {}, {}),
    ):
        settings = settings_for(tmp_path, config, environ, **flags)
        assert (settings.input.header, settings.input.id_column) == (False, "1")
    given = settings_for(tmp_path, {"input": {"id_column": "3"}}, {}, header=False)
    assert given.input.id_column == "3"
    origins = Origins()
    origins.from_flag(next(opt for opt in OPTIONS if opt.flag == "header"), False)
    assert origins("input", "header") == "--no-header"


# -- --concurrency auto (issue 20) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "environ", "flags", "expected"),
    [
        ({}, {}, {}, "auto"),  # the default
        ({"fetch": {"concurrency": 16}}, {"BATCHSCORE_CONCURRENCY": "auto"}, {}, "auto"),
        ({"fetch": {"concurrency": "auto"}}, {}, {"concurrency": "24"}, 24),
        ({"fetch": {"concurrency": "auto"}}, {}, {}, "auto"),
        ({}, {"BATCHSCORE_CONCURRENCY": "12"}, {}, 12),
    ],
)
def test_concurrency_is_auto_by_default_or_a_number_from_any_layer(
    tmp_path: Path,
    config: dict[str, Any],
    environ: dict[str, str],
    flags: dict[str, Any],
    expected: Any,
) -> None:
    settings = settings_for(tmp_path, config, environ, **flags)
    assert settings.fetch.concurrency == expected
    assert settings.fetch.ceiling == (expected if isinstance(expected, int) else 256)


def test_a_concurrency_that_is_neither_auto_nor_a_number_is_named_with_a_suggestion(
    tmp_path: Path,
) -> None:
    with pytest.raises(UsageError) as error:
        settings_for(tmp_path, {}, {}, concurrency="atuo")
    assert error.value.message == (
        "--concurrency atuo must be auto or a number (did you mean 'auto'?)"
    )
    with pytest.raises(UsageError) as error:
        settings_for(tmp_path, {}, {"BATCHSCORE_MAX_CONCURRENCY": "0"})
    assert "BATCHSCORE_MAX_CONCURRENCY=0 must be at least 1" in error.value.message
