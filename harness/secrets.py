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
    r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|PASSPHRASE|AUTH|CREDENTIAL|COOKIE|SESSION|PRIVATE|SIGNATURE"
    r"|^HF_|^HUGGING_?FACE|^AWS_|^AZURE_|^GOOGLE_APPLICATION|^GCP_|^GH_|^GITHUB_TOKEN|^DOCKER_AUTH|^REGISTRY_AUTH"
)
SECRET_NAME = re.compile(SECRET_NAME_PATTERN, re.IGNORECASE)
# Hub settings that are not secrets and that a job may need to see
NOT_SECRET = frozenset({"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HOME",
                        "HF_HUB_CACHE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_XET"})


def is_secret_name(name: str) -> bool:
    """Whether an environment variable called ``name`` may hold a secret."""
    return name.upper() not in NOT_SECRET and SECRET_NAME.search(name) is not None


def without_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` less every variable whose name may hold a secret."""
    return {name: value for name, value in environment.items() if not is_secret_name(name)}
