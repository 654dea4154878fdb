"""API keys: format, salted hashing (no plaintext in the store), verification, revocation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hedge.keys import KeyStore, KeyStoreError, digest, split_key, verify


def test_created_key_verifies_and_the_store_holds_no_plaintext(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "keys.db"))
    plaintext, record = store.create("app", policies=["eu"], routes=["chat"], budget_usd=5, rpm=3)
    parts = split_key(plaintext)
    assert parts is not None
    key_id, secret = parts
    assert key_id == record.id and plaintext.startswith("hk_")
    stored = store.active()[key_id]
    assert verify(stored, secret)
    assert not verify(stored, secret[:-1] + ("0" if secret[-1] != "0" else "1"))
    assert stored.hash == digest(stored.salt, secret) and stored.hash != secret.encode()
    assert (stored.policies, stored.routes, stored.budget_usd, stored.rpm) == (
        ("eu",),
        ("chat",),
        5,
        3,
    )
    for path in tmp_path.iterdir():  # the database and its WAL
        assert secret.encode() not in path.read_bytes()
    with sqlite3.connect(tmp_path / "keys.db") as db:
        cells = [c for row in db.execute("SELECT * FROM keys") for c in row]
    assert all(secret not in str(c) for c in cells)
    assert "salt" not in stored.public() and "hash" not in stored.public()


def test_equal_secrets_hash_differently_under_their_own_salts() -> None:
    assert digest(b"a" * 16, "s") != digest(b"b" * 16, "s")


@pytest.mark.parametrize(
    "presented",
    ["", "sk-abc", "hk_", "hk_short_secret", "hk_0123456789ab", "hk_0123456789ab_", "Bearer x"],
)
def test_malformed_keys_are_not_split(presented: str) -> None:
    assert split_key(presented) is None


def test_revoke_by_id_or_unique_name(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "keys.db"))
    _, a = store.create("a")
    _, b1 = store.create("b")
    store.create("b")
    assert store.revoke(a.id).revoked is not None
    assert a.id not in store.active() and len(store.all()) == 3
    with pytest.raises(KeyStoreError, match="2 active keys are named 'b'"):
        store.revoke("b")
    store.revoke(b1.id)
    assert store.revoke("b").name == "b"  # now unique
    assert store.active() == {}
    with pytest.raises(KeyStoreError, match="no active key"):
        store.revoke("nobody")


def test_a_missing_store_has_no_keys_and_changes_its_signature_on_write(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "sub" / "keys.db"))
    assert store.all() == [] and store.signature() == (None, None)
    store.create("x")
    first = store.signature()
    store.revoke("x")
    assert store.signature() != first
