"""The kernel's environment: what it inherits from us, and what the caller adds or removes."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal, Union

from ._errors import InvalidArgument

InheritEnv = Union[bool, Literal["scrub"]]

# Variables a kernel needs to behave like a normal process; everything else is opt-in.
MINIMAL_BASE = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
    "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    "SYSTEMROOT", "SYSTEMDRIVE", "COMSPEC", "PATHEXT", "WINDIR", "USERPROFILE", "APPDATA",
    "LOCALAPPDATA",
)  # fmt: skip

# Names that say "secret" anywhere in them, as whole words between underscores.
_SECRET_WORDS = re.compile(
    r"(?:^|_)(?:TOKEN|TOKENS|KEY|KEYS|APIKEY|SECRET|SECRETS|PASSWORD|PASSWD|PASS|"
    r"CREDENTIAL|CREDENTIALS|CREDS|AUTH|PRIVATE|SESSION|COOKIE|DSN|SIGNATURE)(?:_|$)",
    re.IGNORECASE,
)
# Cloud and API providers whose variables configure access to an account.
_PROVIDER_PREFIXES = (
    "AWS_", "AZURE_", "ARM_", "GOOGLE_", "GCP_", "GCLOUD_", "CLOUDSDK_", "OPENAI_", "ANTHROPIC_",
    "COHERE_", "MISTRAL_", "GROQ_", "GEMINI_", "HF_", "HUGGINGFACE", "REPLICATE_", "TOGETHER_",
    "DEEPSEEK_", "XAI_", "PERPLEXITY_", "FIREWORKS_", "OPENROUTER_", "GH_", "GITHUB_", "GITLAB_",
    "NPM_", "PYPI_", "TWINE_", "DOCKER_", "DIGITALOCEAN_", "HEROKU_", "CLOUDFLARE_", "DATABRICKS_",
    "SNOWFLAKE_", "SLACK_", "STRIPE_", "SENTRY_", "VAULT_", "KUBECONFIG", "WANDB_", "NGROK_",
)  # fmt: skip
# A URL with a password in it (postgres://user:pw@host/db) is a secret whatever its name.
_URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:\s]+:[^/@\s]+@", re.IGNORECASE)


def is_secret(name: str, value: str) -> bool:
    """Whether the scrub policy withholds the variable ``name`` from kernels."""
    upper = name.upper()
    return bool(
        _SECRET_WORDS.search(upper)
        or upper.startswith(_PROVIDER_PREFIXES)
        or _URL_WITH_PASSWORD.match(value)
    )


def kernel_environment(
    inherit_env: InheritEnv,
    overrides: Mapping[str, str | None] | None,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a kernel starts with.

    ``inherit_env="scrub"`` passes ``parent`` (default ``os.environ``) minus secrets, ``True``
    passes all of it, ``False`` only ``MINIMAL_BASE``. ``overrides`` then adds or replaces
    variables, and a ``None`` value removes one.
    """
    parent = os.environ if parent is None else parent
    if inherit_env is True:
        env = dict(parent)
    elif inherit_env is False:
        env = {name: parent[name] for name in MINIMAL_BASE if name in parent}
    elif inherit_env == "scrub":
        env = {name: value for name, value in parent.items() if not is_secret(name, value)}
    else:
        raise InvalidArgument(
            f"inherit_env must be 'scrub', True or False, not {inherit_env!r}"
        )
    for name, value in (overrides or {}).items():
        if not isinstance(name, str) or not (value is None or isinstance(value, str)):
            raise InvalidArgument(
                f"env entries must map str to str (or None to unset); got {name!r}: {value!r}"
            )
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
