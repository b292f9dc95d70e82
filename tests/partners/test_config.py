"""Partner configs: a bad one names file, key path and problem; the others still load."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ingestion.partners.config import (
    ConfigProblem,
    PartnerConfigError,
    load_partner_config,
    load_partner_configs,
)
from mdp.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_partner_configs_are_valid():
    loaded = load_partner_configs(REPO / "partner_configs")
    assert loaded.problems == []
    formats = {c.inbound.format for c in loaded.configs.values()}
    assert formats == {"csv", "xlsx", "fixed_width", "x12_834"}
    assert any(c.inbound.identifier == "ssn" for c in loaded.configs.values())


@pytest.mark.parametrize(
    ("yaml_text", "key_path", "words"),
    [
        ("inbound:\n  format: parquet\n", "inbound.format", "csv"),
        ("inbound:\n  csv: {delimiter: ';;'}\n", "inbound.csv.delimiter", "at most 1"),
        (
            "inbound:\n  column_mappings: {X: favourite_colour}\n",
            "inbound.column_mappings.X",
            "unknown field 'favourite_colour'",
        ),
        (
            "inbound:\n  validations: {employee_id: {pattern: '([a-z'}}\n",
            "inbound.validations.employee_id.pattern",
            "regular expression",
        ),
        ("inbound:\n  transport: sftp_pull\n", "inbound.location", "sftp_pull needs"),
        (
            "eligibility_api: {rate_limit_per_minute: 0}\n",
            "eligibility_api.rate_limit_per_minute",
            "greater than",
        ),
        ("inbound:\n  unknown_key: 1\n", "inbound.unknown_key", "unknown key"),
        (
            "inbound:\n  filename_patern: 'x*'\n",
            "inbound.filename_patern",
            "did you mean 'filename_pattern'",
        ),
        ("inbound:\n  csv: [a, b]\n", "inbound.csv", "expected a mapping"),
        (
            "inbound:\n  csv: {has_header: false, columns: [ID, FN]}\n",
            "inbound.column_mappings",
            "missing from csv.columns",
        ),
        ('inbound:\n  csv: {delimiter: "\\n"}\n', "inbound.csv.delimiter", "line break"),
        (
            "inbound:\n  column_mappings: {EmpID: employee_id}\n",
            "inbound.column_mappings.Employee ID",  # the later of the two in the file
            "one column per field",
        ),
        (
            "inbound:\n  identifier: ssn\n  column_mappings: {SSN: ssn}\n",
            "inbound.column_mappings.Employee ID",
            "keyed hash",
        ),
        # settings that could not work, or would be ignored without a word
        ("inbound:\n  csv: {columns: [A, B]}\n", "inbound.csv.columns", "has_header is true"),
        (
            "inbound:\n  csv: {has_header: false, columns: [ID, ID]}\n",
            "inbound.csv.columns",
            "'ID' given more than once",
        ),
        ("inbound:\n  filename_pattern: ''\n", "inbound.filename_pattern", "should match"),
        ("inbound:\n  filename_pattern: '  '\n", "inbound.filename_pattern", "should match"),
    ],
)
def test_a_bad_config_names_file_key_path_and_problem(tmp_path, yaml_text, key_path, words):
    base = (REPO / "partner_configs" / "acme_corp.yaml").read_text()
    path = tmp_path / "acme_corp.yaml"
    path.write_text(_merge(base, yaml_text))
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    problems = [p for p in caught.value.problems if p.key_path == key_path]
    assert problems, [str(p) for p in caught.value.problems]
    assert words in problems[0].message
    assert str(problems[0]).startswith(f"acme_corp.yaml: {key_path}:")


def _merge(base: str, override: str) -> str:
    import yaml

    def deep(a, b):
        for k, v in b.items():
            a[k] = (
                deep(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            )
        return a

    return yaml.safe_dump(deep(yaml.safe_load(base), yaml.safe_load(override)))


def test_one_broken_file_does_not_stop_the_others_from_loading(tmp_path):
    for path in (REPO / "partner_configs").glob("*.yaml"):
        shutil.copy(path, tmp_path)
    (tmp_path / "broken.yaml").write_text("partner_id: broken\ninbound: [unclosed\n")
    loaded = load_partner_configs(tmp_path)
    assert len(loaded.configs) == len(list((REPO / "partner_configs").glob("*.yaml")))
    [problem] = loaded.problems
    assert problem.file.name == "broken.yaml"
    assert "line" in problem.key_path and "YAML" in problem.message


def test_partner_validate_command_reports_problems_and_exits_nonzero(tmp_path):
    shutil.copy(REPO / "partner_configs" / "acme_corp.yaml", tmp_path)
    (tmp_path / "typo.yaml").write_text(
        (REPO / "partner_configs" / "acme_corp.yaml")
        .read_text()
        .replace("partner_id: acme_corp", "partner_id: typo")
        .replace("format: csv\n  csv:", "format: cvs\n  csv:")
    )
    result = CliRunner().invoke(main, ["partner", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "ok    acme_corp" in result.output
    assert "typo.yaml: inbound.format:" in result.output


SHIPPED = sorted(p.stem for p in (REPO / "partner_configs").glob("*.yaml"))


def _problems_beside_the_shipped_configs(
    tmp_path: Path, override: str, base: str = "acme_corp"
) -> list[ConfigProblem]:
    """Loads the shipped configs plus broken.yaml (`base` with `override` merged in); the
    shipped ones must still load, and every problem must be broken.yaml's."""
    for path in (REPO / "partner_configs").glob("*.yaml"):
        shutil.copy(path, tmp_path)
    text = (REPO / "partner_configs" / f"{base}.yaml").read_text()
    text = text.replace(f"partner_id: {base}", "partner_id: broken")
    (tmp_path / "broken.yaml").write_text(_merge(text, override))
    loaded = load_partner_configs(tmp_path)
    assert sorted(loaded.configs) == SHIPPED
    assert loaded.problems
    assert {p.file.name for p in loaded.problems} == {"broken.yaml"}
    return loaded.problems


def _reported(problems: list[ConfigProblem], key_path: str, words: str) -> ConfigProblem:
    """The one problem at `key_path`, its message containing `words`."""
    [problem] = [p for p in problems if p.key_path == key_path] or [None]
    assert problem is not None, [str(p) for p in problems]
    assert str(problem).startswith(f"broken.yaml: {key_path}: ")
    assert words in problem.message, str(problem)
    return problem


@pytest.mark.parametrize(
    ("base", "override", "key_path", "words"),
    [
        ("acme_corp", "inbound: {csv: {encoding: utf-9}}", "inbound.csv.encoding", "'utf-9'"),
        ("acme_corp", "inbound: {csv: {encoding: rot13}}", "inbound.csv.encoding", "not a text"),
        (
            "initech",
            "inbound: {fixed_width: {encoding: utf-9}}",
            "inbound.fixed_width.encoding",
            "unknown encoding 'utf-9'",
        ),
    ],
)
def test_an_unknown_encoding_is_refused_at_load(tmp_path, base, override, key_path, words):
    problems = _problems_beside_the_shipped_configs(tmp_path, override, base)
    _reported(problems, key_path, words)


@pytest.mark.parametrize(
    ("date_format", "words"),
    [
        ("MM/DD/YYYY", "lacks a year (%Y or %y), a month (%m, %b or %B) and a day (%d)"),
        ("%Q-%m", "unknown strftime directive(s): %Q"),
        ("%m/%d", "lacks a year"),
        ("%m/%d/%Y%", "a lone % at the end"),
        ("%d/%m/%Y %d", "repeats %d"),
        ("%Y-%m-%d%z", "cannot read back '1987-11-23'"),
    ],
)
def test_a_date_format_that_cannot_read_dates_is_refused_at_load(tmp_path, date_format, words):
    problems = _problems_beside_the_shipped_configs(
        tmp_path, f"inbound: {{date_format: '{date_format}'}}"
    )
    _reported(problems, "inbound.date_format", words)


@pytest.mark.parametrize(
    ("bound", "words"),
    [
        ("2024", "2024 is neither 'today' nor a date (YYYY-MM-DD)"),
        ("yesterday", "'yesterday' is neither 'today' nor a date"),
        ("2024-01-01 10:00:00", "has a time of day"),
    ],
)
def test_a_date_bound_that_is_not_a_date_is_refused_at_load(tmp_path, bound, words):
    problems = _problems_beside_the_shipped_configs(
        tmp_path, f"inbound: {{validations: {{date_of_birth: {{max: {bound}}}}}}}"
    )
    _reported(problems, "inbound.validations.date_of_birth.max", words)
    assert len(problems) == 1, [str(p) for p in problems]  # not one per type the bound may be


def test_an_unquoted_yaml_date_is_a_date_bound(tmp_path):
    path = tmp_path / "acme_corp.yaml"
    base = (REPO / "partner_configs" / "acme_corp.yaml").read_text()
    bounds = "{min: 1900-01-01, max: '2024-01-01'}"
    path.write_text(_merge(base, f"inbound: {{validations: {{date_of_birth: {bounds}}}}}"))
    rule = load_partner_config(path).inbound.validations["date_of_birth"]
    assert (rule.min, rule.max) == (dt.date(1900, 1, 1), dt.date(2024, 1, 1))


@pytest.mark.parametrize(
    ("rules", "key_path", "words"),
    [
        ("{first_name: {type: date}}", "first_name.type", "type 'date' contradicts it"),
        ("{last_name: {type: number, min: 5}}", "last_name.type", "'string', 'date' or 'enum'"),
        ("{last_name: {type: number, min: 5}}", "last_name.min", "5 is neither 'today'"),
        ("{date_of_birth: {pattern: '^19'}}", "date_of_birth.pattern", "would be ignored"),
        ("{first_name: {max: today}}", "first_name.max", "would be ignored"),
        ("{first_name: {type: enum}}", "first_name.allowed", "type enum needs 'allowed'"),
        (
            "{first_name: {min_length: 5, max_length: 2}}",
            "first_name.min_length",
            "5 is greater than max_length 2",
        ),
        (
            "{date_of_birth: {min: 2024-01-01, max: 2000-01-01}}",
            "date_of_birth.min",
            "2024-01-01 is after max 2000-01-01",
        ),
    ],
)
def test_a_rule_that_does_not_fit_its_field_is_refused_at_load(tmp_path, rules, key_path, words):
    problems = _problems_beside_the_shipped_configs(tmp_path, f"inbound: {{validations: {rules}}}")
    _reported(problems, f"inbound.validations.{key_path}", words)


def test_every_rule_problem_is_listed_at_once(tmp_path):
    # a bad regex hid the rules that did not fit their fields until it was fixed: the
    # partner's config was corrected in rounds
    rules = "{program: {pattern: '(('}, email: {type: date}, nonexistent: {type: string}}"
    problems = _problems_beside_the_shipped_configs(tmp_path, f"inbound: {{validations: {rules}}}")
    _reported(problems, "inbound.validations.program.pattern", "not a valid regular expression")
    _reported(problems, "inbound.validations.email.type", "type 'date' contradicts it")
    _reported(problems, "inbound.validations.nonexistent", "unknown field 'nonexistent'")


@pytest.mark.parametrize(
    ("csv", "key_path"),
    [("{delimiter: '|', quotechar: '|'}", "quotechar"), ("{delimiter: '\"'}", "delimiter")],
)
def test_a_delimiter_that_is_also_the_quotechar_is_refused_at_load(tmp_path, csv, key_path):
    problems = _problems_beside_the_shipped_configs(tmp_path, f"inbound: {{csv: {csv}}}")
    _reported(problems, f"inbound.csv.{key_path}", "is both delimiter and quotechar")


def test_an_unknown_mapping_target_is_reported_at_its_source_column(tmp_path):
    problems = _problems_beside_the_shipped_configs(
        tmp_path, "inbound: {column_mappings: {Colour: favourite_colour}}"
    )
    _reported(problems, "inbound.column_mappings.Colour", "unknown field 'favourite_colour'")


def test_a_key_given_twice_in_one_file_is_refused_with_its_line(tmp_path):
    text = (REPO / "partner_configs" / "acme_corp.yaml").read_text()
    text = text.replace(
        "  date_format:", '  date_format: "%Y-%m-%d"\n  date_format:', 1
    )  # the plain loader kept the last one silently
    (tmp_path / "acme_corp.yaml").write_text(text)
    loaded = load_partner_configs(tmp_path)
    assert loaded.configs == {}
    [problem] = loaded.problems
    assert "not valid YAML: the key 'date_format' is given twice" in problem.message
    assert problem.key_path.startswith("line ")


def test_keys_are_the_text_written_and_a_yaml_boolean_value_is_named_as_such(tmp_path):
    # plain YAML read a column called `on` as true and `2024` as a number: reported as
    # "column_mappings[1]", or not matching the file's header
    text = (REPO / "partner_configs" / "acme_corp.yaml").read_text()
    text = text.replace(
        "  column_mappings:\n", "  column_mappings:\n    on: middle_name\n    2024: group_id\n", 1
    )
    (tmp_path / "acme_corp.yaml").write_text(text)
    loaded = load_partner_configs(tmp_path)
    assert not loaded.problems, loaded.problems
    mappings = loaded.configs["acme_corp"].inbound.column_mappings
    assert (mappings["on"], mappings["2024"]) == ("middle_name", "group_id")
    text = text.replace("    on: middle_name\n", "").replace(
        "  validations:\n",
        "  validations:\n    relationship: {type: enum, allowed: [yes, no]}\n",
        1,
    )
    (tmp_path / "acme_corp.yaml").write_text(text)
    problems = {str(p) for p in load_partner_configs(tmp_path).problems}
    assert (
        "acme_corp.yaml: inbound.validations.relationship.allowed[0]: Input should be a valid"
        " string: YAML read it as a boolean (true); put it in quotes"
    ) in problems


def test_one_partner_in_two_files_loads_from_neither(tmp_path):
    shutil.copy(REPO / "partner_configs" / "acme_corp.yaml", tmp_path / "acme_corp.yaml")
    shutil.copy(REPO / "partner_configs" / "acme_corp.yaml", tmp_path / "acme_corp.yml")
    shutil.copy(REPO / "partner_configs" / "initech.yaml", tmp_path / "initech.yaml")
    loaded = load_partner_configs(tmp_path)
    assert sorted(loaded.configs) == ["initech"]
    [problem] = loaded.problems
    assert str(problem) == (
        "acme_corp.yml: partner_id: acme_corp is also configured in acme_corp.yaml;"
        " neither is loaded until one is removed"
    )


def _fixed_width_config(tmp_path: Path, fields: str) -> Path:
    base = (REPO / "partner_configs" / "initech.yaml").read_text()
    path = tmp_path / "initech.yaml"
    path.write_text(_merge(base, f"inbound:\n  fixed_width: {{fields: {fields}}}\n"))
    return path


@pytest.mark.parametrize(
    ("fields", "key_path", "words"),
    [
        (
            "[{name: EMP_ID, start: 1, width: 10}, {name: EMP_ID, start: 11, width: 5}]",
            "inbound.fixed_width.fields[1].name",
            "is also field 0",
        ),
        (
            "[{name: EMP_ID, start: 1, width: 10}, {name: LAST, start: 8, width: 5}]",
            "inbound.fixed_width.fields[1].start",
            "overlaps 'EMP_ID' (columns 1-10)",
        ),
    ],
)
def test_a_fixed_width_layout_with_repeated_or_overlapping_fields_is_refused(
    tmp_path, fields, key_path, words
):
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(_fixed_width_config(tmp_path, fields))
    assert any(p.key_path == key_path and words in p.message for p in caught.value.problems), (
        caught.value.problems
    )


def test_an_ssn_partner_without_required_fields_needs_only_its_ssn(tmp_path):
    base = (REPO / "partner_configs" / "umbrella_plan.yaml").read_text()
    path = tmp_path / "umbrella_plan.yaml"
    config = yaml_without(base, "required_fields")
    path.write_text(config)
    assert load_partner_config(path).inbound.required_fields == ["ssn"]


def yaml_without(text: str, key: str) -> str:
    import yaml

    data = yaml.safe_load(text)
    data["inbound"].pop(key)
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    "schedule", ["every ten minutes", "* * * * * *", "61 * * * *", "0 0 1W * *"]
)
def test_a_pull_schedule_that_is_not_cron_is_refused_at_load(tmp_path, schedule):
    # it loaded, and then failed the whole Dagster code location, every partner with it
    base = (REPO / "partner_configs" / "initech.yaml").read_text()
    path = tmp_path / "initech.yaml"
    path.write_text(_merge(base, f"inbound:\n  schedule: '{schedule}'\n"))
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    [problem] = caught.value.problems
    assert problem.key_path == "inbound.schedule" and "not a cron schedule" in problem.message


@pytest.mark.parametrize(
    ("location", "words"),
    [("port: 70000", "less than or equal to 65535"), ("path: outbound", "absolute path"),
     ("path: /outbound/../etc", "without '..'")],
)  # fmt: skip
def test_a_pull_location_that_cannot_be_reached_is_refused(tmp_path, location, words):
    text = (REPO / "partner_configs" / "initech.yaml").read_text()
    key = location.split(":")[0]
    lines = [line for line in text.splitlines() if not line.strip().startswith(f"{key}:")]
    at = next(i for i, line in enumerate(lines) if line.strip() == "location:")
    lines.insert(at + 1, f"    {location}")
    (tmp_path / "initech.yaml").write_text("\n".join(lines) + "\n")
    problems = load_partner_configs(tmp_path).problems
    assert any(p.key_path == f"inbound.location.{key}" and words in p.message for p in problems), (
        problems
    )


DESIGN_EXAMPLE = """
partner_id: acme_corp
display_name: ACME Corp
inbound:
  transport: sftp_push          # sftp_push: they upload to our server; sftp_pull: we poll theirs
  location: {host_env: ACME_HOST, port: 22, username_env: ACME_USER, key_env: ACME_KEY, path: /inbound}   # pull only
  filename_pattern: "enrollment_*.csv"
  format: csv                   # csv | xlsx | fixed_width | x12_834
  csv: {delimiter: ",", encoding: utf-8, has_header: true}
  xlsx: {sheet: Members, header_row: 1}
  fixed_width: {fields: [{name: EMP_ID, start: 1, width: 10}]}
  identifier: employee_id       # employee_id | ssn (ssn is stored only as a keyed hash + last 4)
  column_mappings: {"Employee ID": employee_id, "First Name": first_name, "Last Name": last_name, "Date of Birth": date_of_birth}
  date_format: "%m/%d/%Y"
  required_fields: [employee_id, first_name, last_name, date_of_birth]
  validations:
    date_of_birth: {type: date, max: today}
    employee_id: {type: string, pattern: "^[A-Z0-9]{6,10}$"}
outbound:
  format: csv
  columns: [employee_id, enrollment_status, completion_date]
  schedule: daily               # cron strings also accepted
  delivery: {method: sftp, host_env: ACME_OUT_HOST, path: /inbound/reports/}
eligibility_api: {enabled: true, rate_limit_per_minute: 1000}
"""


def test_the_design_documents_example_config_loads(tmp_path):
    """architecture.md's example, its `...` filled in: it carries options for every format
    and a location on a push partner, which are accepted (and unused)."""
    (tmp_path / "acme_corp.yaml").write_text(DESIGN_EXAMPLE)
    loaded = load_partner_configs(tmp_path)
    assert loaded.problems == [], loaded.problems
    assert loaded.configs["acme_corp"].inbound.format == "csv"


ACME_TEXT = (REPO / "partner_configs" / "acme_corp.yaml").read_text()
BAD_BASE = (
    "partner_id: bad\ndisplay_name: Bad\ninbound:\n  transport: sftp_push\n  format: csv\n"
    '  column_mappings: {"Employee ID": employee_id}\n'
)


@pytest.mark.parametrize(
    ("extra", "where", "words"),
    [
        ("  validations:\n    date_of_birth: {max: 2024-02-30}\n", "line 8", "day is out of range"),
        ("  validations:\n    date_of_birth: {min: 2024-13-01}\n", "line 8", "month must be"),
        ("eligibility_api: {rate_limit_per_minute: !!int abc}\n", "line 7", "'abc'"),
        ("? [a, b]\n: 1\n", "line 7", "a key must be a name"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "", "nested too deeply"),
    ],
    ids=["impossible-date", "month-13", "bad-int-tag", "list-as-key", "deep-nesting"],
)
def test_a_value_yaml_cannot_build_is_a_problem_and_the_others_still_load(
    tmp_path, extra, where, words
):
    # these raised out of the loader: no partner loaded, the API and Dagster did not start
    (tmp_path / "acme_corp.yaml").write_text(ACME_TEXT)
    (tmp_path / "bad.yaml").write_text(BAD_BASE + extra)

    loaded = load_partner_configs(tmp_path)

    assert list(loaded.configs) == ["acme_corp"]
    [problem] = loaded.problems
    assert problem.file.name == "bad.yaml"
    assert problem.key_path.startswith(where)
    assert words in problem.message, str(problem)


def test_every_cross_field_problem_is_listed_at_once(tmp_path):
    # each one was revealed only once the one before it was fixed
    path = tmp_path / "bad.yaml"
    path.write_text(
        "partner_id: other\ndisplay_name: Bad\ninbound:\n  transport: sftp_pull\n"
        "  format: fixed_width\n  column_mappings:\n    DOB: date_of_birth\n"
        "    Birth Date: date_of_birth\n  required_fields: [employee_id, last_name]\n"
    )
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    found = {(p.key_path, p.message.split(" ")[0]) for p in caught.value.problems}
    assert found == {
        ("partner_id", "'other'"),
        ("inbound.location", "sftp_pull"),
        ("inbound.fixed_width", "format"),
        ("inbound.column_mappings.Birth Date", "columns"),
        ("inbound.identifier", "identifier"),
        ("inbound.required_fields", "required"),
    }


def test_a_wrong_field_does_not_hide_the_problems_across_fields(tmp_path):
    # a bad date_format, a misspelled key or a bad rule stopped pydantic before the checks
    # across fields: the doubled mapping showed only once they were fixed
    path = tmp_path / "bad.yaml"
    path.write_text(
        "partner_id: other\ndisplay_name: Bad\ninbound:\n  transport: sftp_push\n"
        "  format: csv\n  date_format: '%Q'\n  filename_patern: 'x*'\n"
        "  validations: {employee_id: {pattern: '([a-z'}}\n"
        "  column_mappings:\n    ID: employee_id\n    DOB: date_of_birth\n"
        "    Birth Date: date_of_birth\n"
    )
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    found = {p.key_path for p in caught.value.problems}
    assert found == {
        "partner_id",
        "inbound.date_format",
        "inbound.filename_patern",
        "inbound.validations.employee_id.pattern",
        "inbound.column_mappings.Birth Date",
    }


def test_checks_across_fields_wait_while_a_field_they_read_is_wrong(tmp_path):
    # with column_mappings itself wrong, "identifier is not mapped" would judge a stand-in
    path = tmp_path / "bad.yaml"
    path.write_text(
        "partner_id: other\ndisplay_name: Bad\ninbound:\n  transport: sftp_push\n"
        "  format: csv\n  date_format: '%Q'\n  column_mappings: {ID: favourite_colour}\n"
    )
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    found = {p.key_path for p in caught.value.problems}
    assert found == {"partner_id", "inbound.date_format", "inbound.column_mappings.ID"}


def test_merge_keys_work_as_in_plain_yaml(tmp_path):
    # `<<` was read as a key of its own: "Extra inputs are not permitted"
    rules = (
        "  validations:\n"
        "    first_name: &text {type: string, pattern: '^[A-Za-z]+$'}\n"
        "    last_name:\n      <<: *text\n      pattern: '^[A-Z].*$'\n"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_BASE + rules)
    rule = load_partner_config(path).inbound.validations["last_name"]
    assert (rule.type, rule.pattern) == ("string", "^[A-Z].*$")  # its own key overrides
    path.write_text(BAD_BASE + rules + "      pattern: '^x$'\n")  # twice in the mapping itself
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    assert "the key 'pattern' is given twice" in str(caught.value)


@pytest.mark.parametrize("name", ["Hunter2Secret!", "my password", ""])
def test_an_env_setting_holding_a_value_is_refused_without_showing_it(tmp_path, name):
    path = tmp_path / "bad.yaml"
    path.write_text(
        BAD_BASE.replace("sftp_push", "sftp_pull")
        + f"  location: {{host_env: H, username_env: U, password_env: '{name}'}}\n"
    )
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    [problem] = caught.value.problems
    assert problem.key_path == "inbound.location.password_env"
    assert "name of an environment variable" in problem.message
    assert (name or "''") not in str(problem)


def test_a_number_in_an_env_setting_is_not_shown(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        BAD_BASE.replace("sftp_push", "sftp_pull")
        + "  location: {host_env: H, username_env: U, password_env: 84736251}\n"
    )
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    [problem] = caught.value.problems
    assert "environment variable" in problem.message and "84736251" not in str(problem)


def test_files_ending_in_upper_case_yaml_load_and_oversized_ones_are_refused(tmp_path):
    (tmp_path / "acme_corp.YAML").write_text(ACME_TEXT)
    (tmp_path / "bad.yml").write_text(BAD_BASE + "#" * (1 << 20))
    loaded = load_partner_configs(tmp_path)
    assert list(loaded.configs) == ["acme_corp"]
    [problem] = loaded.problems
    assert problem.file.name == "bad.yml" and "larger than a partner config can be" in str(problem)


def test_bytes_that_are_not_utf8_and_control_characters_are_named_by_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(BAD_BASE.encode() + b"display_name2: caf\xe9\n")
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    assert str(caught.value.problems[0]) == (
        "bad.yaml: line 7: not UTF-8: the byte 0xe9 cannot be read"
    )
    path.write_bytes(BAD_BASE.encode() + b"display_name2: a\x01b\n")
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    assert str(caught.value.problems[0]).startswith("bad.yaml: line 7: not valid YAML: a control")


def test_a_column_name_with_dots_is_one_quoted_key_in_the_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        BAD_BASE.replace(
            '{"Employee ID": employee_id}', '{"Employee ID": employee_id, "Date.Of.Birth": colour}'
        )
    )
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    paths = [p.key_path for p in caught.value.problems]
    assert 'inbound.column_mappings."Date.Of.Birth"' in paths


@pytest.mark.parametrize(
    ("outbound", "key_path", "words"),
    [
        ("{columns: [], delivery: {method: api}}", "outbound.columns", "at least 1"),
        ("{columns: [a, a], delivery: {method: sftp}}", "outbound.columns", "'a'"),
        (
            "{columns: [a], schedule: whenever you like, delivery: {method: sftp}}",
            "outbound.schedule",
            "not a cron schedule",
        ),
    ],
)
def test_a_report_section_that_could_not_work_is_refused(tmp_path, outbound, key_path, words):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_BASE + f"outbound: {outbound}\n")
    with pytest.raises(PartnerConfigError) as caught:
        load_partner_config(path)
    [problem] = caught.value.problems
    assert problem.key_path == key_path and words in problem.message, str(problem)


@pytest.mark.parametrize("schedule", ["daily", "weekly", "'0 6 * * 1'"])
def test_a_report_schedule_is_a_word_or_cron(tmp_path, schedule):
    path = tmp_path / "bad.yaml"
    path.write_text(
        BAD_BASE + f"outbound: {{columns: [employee_id], schedule: {schedule},"
        " delivery: {method: sftp}}\n"
    )
    assert load_partner_config(path).outbound is not None
