"""`make demo` run again replaces its own API key and no other."""

from __future__ import annotations

from mdp.demo import DEMO_KEY_LABEL, DEMO_PARTNER, fresh_demo_key
from serving.api_keys import create_key, list_keys


def test_each_demo_revokes_the_previous_demo_key_and_keeps_the_partners_own(platform):
    own_key_id, _ = create_key(platform.params, DEMO_PARTNER, label="demo")  # an operator's
    first_id, _ = fresh_demo_key(platform.params)
    second_id, _ = fresh_demo_key(platform.params)

    keys = {key.key_id: key for key in list_keys(platform.params, DEMO_PARTNER)}
    assert keys[first_id].revoked_at is not None
    assert keys[second_id].revoked_at is None and keys[second_id].label == DEMO_KEY_LABEL
    assert keys[own_key_id].revoked_at is None
    active_demo = [k for k in keys.values() if k.label == DEMO_KEY_LABEL and not k.revoked_at]
    assert [k.key_id for k in active_demo] == [second_id]
