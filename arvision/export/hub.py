"""``arvision export ... --push ORG/NAME``: upload an exported folder to the Hugging Face Hub as it
is, through huggingface_hub (the token of ``hf auth login`` or ``HF_TOKEN``), so that
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` loads it."""

import re
from pathlib import Path

from .. import __version__
from ..errors import ArvisionError

__all__ = ["PushError", "push_folder"]

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class PushError(ArvisionError):
    """The export could not be uploaded (no token, offline, refused by the Hub)."""


def push_folder(folder: Path, repo_id: str, private: bool = False, message: str = "") -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder`` into it; returns its URL."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    written = f"(the export is written: {folder})"
    if not REPO_ID.fullmatch(repo_id):
        raise PushError(f"--push: expected ORG/NAME (a Hub model repository), got {repo_id!r} "
                        f"{written}")
    if constants.HF_HUB_OFFLINE:
        raise PushError(f"--push {repo_id}: HF_HUB_OFFLINE is set, so nothing is uploaded {written}")
    token = get_token()
    if not token:
        raise PushError(f"--push {repo_id}: no Hugging Face token; log in with `hf auth login` or "
                        f"set HF_TOKEN {written}")
    api = HfApi(token=token, library_name="arvision", library_version=__version__)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder),
                          commit_message=message or "Upload an encoder exported by arvision")
    except HfHubHTTPError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PushError(f"--push {repo_id}: the Hub refused the upload ({first}) {written}") from None
    return f"{constants.ENDPOINT}/{url.repo_id}"
