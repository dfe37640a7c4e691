"""The AgeIdentity block: the age secret key (or SSH private key) that decrypts encrypted backups."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

LOGO = "https://raw.githubusercontent.com/etcd-io/etcd/main/logos/etcd-glyph-color.png"


class AgeIdentity(Block):
    """An age identity that decrypts backups made with `encrypt_to` its public key."""

    _block_type_name = "age Identity"
    _block_type_slug = "age-identity"
    _description = (
        "The age secret key (AGE-SECRET-KEY-1..., from age-keygen) or SSH private key whose "
        "public key the backups were encrypted to. Restore flows take this block's name."
    )
    _logo_url = LOGO

    identity: SecretStr = Field(description="age secret key file text or OpenSSH private key text")
