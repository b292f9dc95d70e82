"""A failed dbt build is retried only when building again might pass."""

from __future__ import annotations

from orchestration.defs.transform.assets import _build_failure


def _result(unique_id: str, status: str) -> dict[str, str]:
    return {"unique_id": unique_id, "status": status}


def test_failed_tests_alone_are_a_verdict_on_the_data_and_not_retried():
    failure = _build_failure(
        [
            _result("model.mdp.dim_member", "success"),
            _result("test.mdp.unique_dim_member_member_id", "fail"),
        ]
    )
    assert not failure.allow_retries
    assert "1 dbt test(s) failed: test.mdp.unique_dim_member_member_id" in failure.description


def test_an_errored_node_may_pass_next_time_and_is_retried():
    failure = _build_failure(
        [
            _result("model.mdp.mart_eligibility", "error"),
            _result("test.mdp.not_null_x", "fail"),
        ]
    )
    assert failure.allow_retries
    assert "model.mdp.mart_eligibility" in failure.description


def test_a_build_that_wrote_no_results_is_retried():
    assert _build_failure([]).allow_retries
