"""API keys as the `mdp partner key` commands use them."""

from __future__ import annotations

from mdp.database import ConnectionParams, connect
from serving.api_keys import create_key, hash_key, list_keys, revoke_key


def test_created_key_is_stored_only_as_its_hash(database: ConnectionParams) -> None:
    key_id, key = create_key(database, "acme_corp", label="ops laptop")
    assert key.startswith(f"mdp_{key_id}_") and len(key) > 40
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute("select t::text, key_hash from serving.api_keys t where key_id = %s", (key_id,))
        row_text, key_hash = cur.fetchone()
    assert key_hash == hash_key(key)
    assert key.split("_", 2)[2] not in row_text


def test_keys_are_unique(database: ConnectionParams) -> None:
    made = [create_key(database, "acme_corp") for _ in range(5)]
    assert len({key for _, key in made}) == len({key_id for key_id, _ in made}) == 5


def test_revoking_one_key_leaves_the_partners_others(database: ConnectionParams) -> None:
    first, _ = create_key(database, "keys_partner_one")
    second, _ = create_key(database, "keys_partner_one")
    assert revoke_key(database, "keys_partner_one", first) == 1
    assert revoke_key(database, "keys_partner_one", first) == 0  # already revoked
    active = {k.key_id for k in list_keys(database, "keys_partner_one") if k.active}
    assert active == {second}


def test_revoking_without_a_key_id_revokes_all_of_the_partners_keys(
    database: ConnectionParams,
) -> None:
    for _ in range(3):
        create_key(database, "keys_partner_two")
    other_id, _ = create_key(database, "keys_partner_three")
    assert revoke_key(database, "keys_partner_two") == 3
    assert not [k for k in list_keys(database, "keys_partner_two") if k.active]
    assert [k.key_id for k in list_keys(database, "keys_partner_three") if k.active] == [other_id]


def test_a_key_id_of_another_partner_is_not_revoked(database: ConnectionParams) -> None:
    key_id, _ = create_key(database, "keys_partner_four")
    assert revoke_key(database, "keys_partner_five", key_id) == 0
    assert list_keys(database, "keys_partner_four")[0].active


def test_list_keys_without_a_partner_lists_everyones(database: ConnectionParams) -> None:
    key_id, _ = create_key(database, "keys_partner_six", label="six")
    listed = {k.key_id: k for k in list_keys(database)}
    assert listed[key_id].partner_id == "keys_partner_six"
    assert listed[key_id].label == "six"
