"""Load a block by name with an error a person can act on: what is missing or of the wrong type, and where."""

from __future__ import annotations

import httpx
from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL

from etcd_backup.errors import ConfigError


def api_url() -> str:
    """The Prefect API this process talks to, for messages."""
    return PREFECT_API_URL.value() or "a temporary local Prefect server (PREFECT_API_URL is not set)"


def load_block(ref: str, kind: type[Block] = Block, what: str = "block") -> Block:
    """Load `ref` ('<type-slug>/<name>', or a name when kind is a block class) and check it is a `kind`."""
    if kind is Block and ref.count("/") != 1:
        raise ConfigError(f"{what} {ref!r} must be '<block-type-slug>/<name>', e.g. 'ufile-storage/prod'")
    try:
        block = kind.load(ref)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise ConfigError(f"{what} {ref!r} cannot be loaded: {exc}") from None
        slug = ref.split("/")[0] if kind is Block else kind.get_block_type_slug()
        name = ref.split("/")[-1]
        raise ConfigError(
            f"{what} {ref!r} does not exist on {api_url()}: no {slug} block named {name!r}; create it in the "
            "Prefect UI (Blocks) or in Python, or fix the name"
        ) from None
    except KeyError as exc:
        raise ConfigError(f"{what} {ref!r}: no block type {exc} is registered on {api_url()}") from None
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot load {what} {ref!r}: the Prefect API at {api_url()} does not answer ({exc.__class__.__name__}); "
            "set PREFECT_API_URL (and PREFECT_API_AUTH_STRING if the server has one)"
        ) from None
    return block


def require(block: Block, ref: str, kind: type | tuple[type, ...], what: str, expected: str) -> Block:
    """Raise ConfigError unless block is a `kind`: '<what> <ref> is a <its type>, not <expected>'."""
    if not isinstance(block, kind):
        raise ConfigError(f"{what} {ref!r} is a {block.get_block_type_slug()} block, not {expected}")
    return block
