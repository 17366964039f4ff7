"""The one rule for which environment variables may hold secrets.

Everything that copies environment variables (the process runtime's job environment, the
environment capture inside an image) drops the names this matches, so a token never reaches a
job, a log, a record or the Hub by that road.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Also used inside images (the environment capture script embeds this pattern), so keep it a plain
# regular expression.
SECRET_NAME_PATTERN = (
    r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|PASSPHRASE|AUTH|CREDENTIAL|COOKIE|SESSION|PRIVATE|SIGNATURE|SALT"
    r"|^HF_|^HUGGING_?FACE|^AWS_|^AZURE_|^ARM_CLIENT|^GOOGLE_|^GCP_|^GCLOUD_|^CLOUDSDK_|^GH_|^GITHUB_|^GITLAB_"
    r"|^CI_JOB_|^ACTIONS_|^OPENAI_|^ANTHROPIC_|^WANDB_|^COMET_|^NEPTUNE_|^MLFLOW_TRACKING_|^NPM_|^PYPI_|^TWINE_"
    r"|^DOCKER_AUTH|^REGISTRY_AUTH|^SSH_|^GPG_|^VAULT_|^KUBECONFIG|^DATABASE_URL|^PGPASS|^MYSQL_PWD|^REDIS_URL"
    r"|^SLACK_|^SENTRY_DSN"
)
# a value shaped like a credential is a secret whatever its name: a URL with a password, Hub,
# GitHub, AWS and API keys, a private key block
SECRET_VALUE_PATTERN = (
    r"://[^/\s:@]+:[^/\s@]*@|\bhf_[A-Za-z0-9]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b|\bsk-[A-Za-z0-9_-]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
SECRET_VALUE = re.compile(SECRET_VALUE_PATTERN)
SECRET_NAME = re.compile(SECRET_NAME_PATTERN, re.IGNORECASE)
# Hub settings that are not secrets and that a job may need to see
NOT_SECRET = frozenset(
    {
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_HUB_DISABLE_XET",
    }
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable called ``name`` may hold a secret."""
    return name.upper() not in NOT_SECRET and SECRET_NAME.search(name) is not None


def is_secret(name: str, value: str = "") -> bool:
    """Whether the variable ``name=value`` may hold a secret: by its name, or by its value's shape."""
    return is_secret_name(name) or SECRET_VALUE.search(value or "") is not None


def without_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` less every variable that may hold a secret (``is_secret``)."""
    return {name: value for name, value in environment.items() if not is_secret(name, value)}
