"""Partner configs: a bad one names file, key path and problem; the others still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ingestion.partners.config import PartnerConfigError, load_partner_config, load_partner_configs
from mdp.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_partner_configs_are_valid():
    loaded = load_partner_configs(REPO / "partner_configs")
    assert loaded.problems == []
    assert {c.inbound.format for c in loaded.configs.values()} == {"csv", "xlsx", "fixed_width"}
    assert any(c.inbound.identifier == "ssn" for c in loaded.configs.values())


@pytest.mark.parametrize(
    ("yaml_text", "key_path", "words"),
    [
        ("inbound:\n  format: parquet\n", "inbound.format", "csv"),
        ("inbound:\n  csv: {delimiter: ';;'}\n", "inbound.csv.delimiter", "at most 1"),
        (
            "inbound:\n  column_mappings: {X: favourite_colour}\n",
            "inbound.column_mappings",
            "unknown field",
        ),
        (
            "inbound:\n  validations: {employee_id: {pattern: '([a-z'}}\n",
            "inbound.validations.employee_id.pattern",
            "regular expression",
        ),
        ("inbound:\n  transport: sftp_pull\n", "inbound", "location"),
        (
            "eligibility_api: {rate_limit_per_minute: 0}\n",
            "eligibility_api.rate_limit_per_minute",
            "greater than",
        ),
        ("inbound:\n  unknown_key: 1\n", "inbound.unknown_key", "not permitted"),
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
    assert len(loaded.configs) == 4
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
