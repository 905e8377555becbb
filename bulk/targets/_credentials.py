"""Credentials from the environment: the body of
:meth:`Target.credentials_from_env <bulk.targets.base.Target.credentials_from_env>` (the engine's,
not a hook) and the shortest secret it accepts. Private: import ``MIN_SECRET_LENGTH`` from
:mod:`bulk.targets.base`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["MIN_SECRET_LENGTH", "credentials_from_env"]

#: the shortest credential accepted from the environment (see ``credentials_from_env``)
MIN_SECRET_LENGTH = 8


def credentials_from_env(target: str, names: tuple[str, ...], env: Mapping[str, str]) -> dict[str, str]:
    """``{name: env[name]}`` for every name of ``names`` (the ``target``'s ``credential_env``);
    ConfigError when one is missing or empty, or shorter than :data:`MIN_SECRET_LENGTH`."""
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise ConfigError(f"the {target} target needs {', '.join(missing)} in the environment")
    # Refused, not warned about: a credential this short also occurs in ordinary text (an
    # id, an amount, a word of an error message), so it can be kept out of the outputs only
    # by mangling them ("***" for every "a"), and left in them it would leak. No real API
    # issues keys this short (the embedded sandbox makes its own long secrets).
    short = [name for name in names if len(env[name]) < MIN_SECRET_LENGTH]
    if short:
        raise ConfigError(f"{', '.join(short)} is shorter than {MIN_SECRET_LENGTH} characters: too short to "
                          "keep out of messages and output files safely; give the real credential")
    return {name: env[name] for name in names}
