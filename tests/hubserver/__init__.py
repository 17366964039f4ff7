"""A local Hugging Face Hub–compatible server for tests and offline demos.

``python -m tests.hubserver --root DIR --port PORT [--token T]``, or in-process::

    with HubServer(tmp_path) as hub:
        HfApi(endpoint=hub.url, token="t").create_repo("org/name", repo_type="dataset")
"""

from tests.hubserver.server import HubServer
from tests.hubserver.storage import HubStorage, HubStorageError, RepoRef

__all__ = ["HubServer", "HubStorage", "HubStorageError", "RepoRef"]
