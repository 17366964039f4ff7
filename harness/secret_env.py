"""The one secret filter for environment variables.

Everything that copies environment variables (the process runtime's job environment, the
environment capture that goes into a record) drops what ``is_secret`` flags. The capture runs
inside the image with ``python -c`` and the standard library only, so ``ENVIRONMENT_SCRIPT``
embeds this very function's source (``filter_source``) rather than a second copy of the rules.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping

SECRET_RULES: dict[str, list[str]] = {
    # a name holding one of these words (case-insensitive) is a secret
    "words": ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "KEY", "CREDENTIAL", "AUTH", "COOKIE",
              "SESSION", "PRIVATE", "SIGNATURE", "SALT"],
    # every name with one of these prefixes is dropped (service accounts and their settings)...
    "prefixes": ["HF_", "HUGGING_FACE_", "HUGGINGFACE_", "AWS_", "AZURE_", "ARM_CLIENT", "GOOGLE_", "GCP_", "GCLOUD_",
                 "CLOUDSDK_", "GITHUB_", "GH_", "GITLAB_", "CI_JOB_", "ACTIONS_", "OPENAI_", "ANTHROPIC_", "WANDB_",
                 "COMET_", "NEPTUNE_", "MLFLOW_TRACKING_", "NPM_", "PYPI_", "TWINE_", "DOCKER_", "SSH_", "GPG_",
                 "VAULT_", "KUBECONFIG", "DATABASE_URL", "DB_", "PG", "MYSQL_", "REDIS_", "SLACK_", "SENTRY_"],
    # ...except these, which only switch behaviour and are worth recording
    "allowed": ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY",
                "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_XET"],
    # a value shaped like a credential is a secret whatever its name
    "values": [r"://[^/\s:@]+:[^/\s@]*@", r"\bhf_[A-Za-z0-9]{20,}", r"\bgh[pousr]_[A-Za-z0-9]{20,}",
               r"\bgithub_pat_[A-Za-z0-9_]{20,}", r"\bAKIA[0-9A-Z]{16}\b", r"\bsk-[A-Za-z0-9_-]{20,}",
               r"-----BEGIN [A-Z ]*PRIVATE KEY-----"],
}


def is_secret(name, value="", rules=SECRET_RULES):  # type: ignore[no-untyped-def]
    """Whether an environment variable must not be copied: its name or its value looks secret.

    Standard library only and self-contained: its source is embedded in ENVIRONMENT_SCRIPT."""
    import re

    upper = name.upper()
    if any(word in upper for word in rules["words"]):
        return True
    if upper not in rules["allowed"] and upper.startswith(tuple(rules["prefixes"])):
        return True
    return any(re.search(pattern, value or "") for pattern in rules["values"])


def drop_secrets(variables: Mapping[str, str]) -> dict[str, str]:
    """``variables`` without the secrets (``is_secret``)."""
    return {name: value for name, value in variables.items() if not is_secret(name, value)}


def filter_source() -> str:
    """Python source defining ``SECRET_RULES`` and ``is_secret``, for scripts run inside an image."""
    return f"SECRET_RULES = {json.dumps(SECRET_RULES)}\n\n{inspect.getsource(is_secret)}"
