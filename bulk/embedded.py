"""How a target's client adapter meets its sandbox dialect: the embedded sandbox's pairing.

Neither side may import the other (the sandbox must be able to catch the client's mistakes),
so this module is the one place that knows both, for the three users of a sandbox run against
its own client: ``bulk upload`` without ``--base-url``, ``bulk sandbox`` (which token to
accept), and the tests (``bulk.testing``). A :class:`Pairing` says which credentials the client
gets for a generated secret and which token the dialect accepts, which dialect options the
embedded sandbox runs with, and which client ``--option`` defaults fit the sandbox's seeded
data. The seeds themselves are the sandbox's (``bulk.sandbox.<name>``): read from there, never
copied. A target without an entry here (a plug-in) gets the default: every credential variable
holds the secret, which is also the token; no options on either side. :func:`seeded_options`
adds what a run's input references to the dialect's options (read off the event loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import UploadConfig
    from .targets.base import Target

__all__ = ["Pairing", "pairing", "seeded_options"]


class Pairing:
    """The default pairing of ``target`` with its dialect; subclasses adjust it per target."""

    def __init__(self, target: type[Target]) -> None:
        self.target = target

    def credentials(self, secret: str) -> tuple[dict[str, str], str]:
        """The client's credentials (environment names -> values) for ``secret``, and the token
        string the dialect accepts (``SandboxConfig.token``)."""
        return {name: secret for name in self.target.credential_env}, secret

    def dialect_options(self) -> dict[str, Any]:
        """``SandboxConfig.options`` of the embedded sandbox."""
        return {}

    def client_options(self) -> dict[str, Any]:
        """Client ``--option`` defaults that fit the sandbox's seeded data (the user's win)."""
        return {}


class _Anny(Pairing):
    # The organization is a setting both sides are given, like a real account's id.
    ORGANIZATION = "sandbox-org"

    def credentials(self, secret: str) -> tuple[dict[str, str], str]:
        return {"ANNY_API_TOKEN": secret, "ANNY_ORGANIZATION": self.ORGANIZATION}, secret

    def dialect_options(self) -> dict[str, Any]:
        return {"organization": self.ORGANIZATION}


class _ChargeOver(Pairing):
    PUBLIC_KEY = "bulk-embedded-sandbox"
    # Every currency `bulk generate` may write, so the demo account takes any generated file.
    CURRENCIES = ("USD", "EUR", "GBP", "CHF", "JPY", "KWD", "CAD", "AUD", "NZD", "SEK", "NOK",
                  "DKK", "PLN", "CZK", "HUF", "BRL", "MXN", "INR", "CNY", "SGD", "HKD", "ZAR")

    def credentials(self, secret: str) -> tuple[dict[str, str], str]:
        return ({"CHARGEOVER_PUBLIC_KEY": self.PUBLIC_KEY, "CHARGEOVER_PRIVATE_KEY": secret},
                f"{self.PUBLIC_KEY}:{secret}")

    def dialect_options(self) -> dict[str, Any]:
        return {"currencies": list(self.CURRENCIES)}  # the items: the sandbox's own seed

    def client_options(self) -> dict[str, Any]:
        from .sandbox.chargeover import ADJUSTMENT_ITEM  # the sandbox's seeded item for discount lines

        return {"default_item": ADJUSTMENT_ITEM}


class _Coperniq(Pairing):
    def dialect_options(self) -> dict[str, Any]:
        # The sandbox's documented seed (accounts CUST-000000.., SKU-001..SKU-050, DISCOUNT) fits
        # `bulk generate`; a quota no demo file reaches, with the real headers.
        return {"accounts": 1000, "catalog_items": 50, "daily_quota": 10_000_000}


_BUILT_IN: dict[str, type[Pairing]] = {"anny": _Anny, "chargeover": _ChargeOver, "coperniq": _Coperniq}


def pairing(target: type[Target]) -> Pairing:
    """The pairing of ``target`` (a registered target class) with its sandbox dialect."""
    return _BUILT_IN.get(target.name, Pairing)(target)


async def seeded_options(target: type[Target], config: UploadConfig, create: frozenset[str] | None) -> dict[str, Any]:
    """The embedded sandbox's options for a run of ``config``: the pairing's
    (:meth:`Pairing.dialect_options`), plus what the input references (``--seed-from`` of that
    input), less the kinds ``--create-missing`` (``create``) is to create: that run rehearses
    the creating. The input is read in a worker thread (:func:`bulk.sandbox.seed_from.references`):
    a signal meanwhile is handled at once, not after the whole file."""
    from .sandbox.seed_from import SEEDED, references, seed_options

    options = pairing(target).dialect_options()
    # stdin cannot be read twice; a sandbox.db already there is restored as it is (a resumed
    # run meets the API the killed one left), so its seed would be ignored: not read for nothing.
    if config.input == "-" or target.name not in SEEDED or (config.out / "sandbox.db").exists():
        return options
    try:
        refs = await references(config.input)
    except OSError as exc:
        raise ConfigError(f"cannot read {config.input}: {exc.strerror or exc}") from None
    return {**options, **seed_options(target.name, refs, leave_out=create or frozenset())}
