"""Publishing model folders on the Hugging Face Hub.

    push_to_hub("out/demo", "user/nanogpt-demo")       # hf-nanogpt push out/demo user/nanogpt-demo

What a push does, in order, all through huggingface_hub's HfApi:
1. checks the folder holds a complete model (weights, config with auto_map, remote code, generation
   config, tokenizer) before any network call;
2. checks the token with whoami(): missing, invalid, read-only, or not allowed in the repo's namespace
   stops here, before a repo or a commit exists;
3. create_repo(exist_ok=True), create_branch for --revision;
4. upload_folder: one commit with the folder's files and its model card (pointed at the repo id). Large
   files go through LFS, and files the Hub already has are not sent again, so pushing an unchanged
   folder makes no commit and pushing again after an interrupted upload finishes it.

Errors say what happened and what to do; the token never appears in them (nor in logs, cards or config).
"""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from . import __version__
from .model_card import card_for_repo
from .training.checkpoint import CHECKPOINTS
from .training.logs import LOG_FILE, TRACKERS_DIR

try:  # the transport errors of the HTTP client huggingface_hub uses: httpx2 from 2.0, httpx before
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    from httpx import TransportError

# what the trainer keeps in out_dir for itself (resumable state, logs): not part of the published model
LOCAL_ONLY = {CHECKPOINTS, TRACKERS_DIR, LOG_FILE}
# weight files of an earlier push that the new folder may not have (a model that was sharded and no
# longer is): deleted from the repo in the same commit, so that it never holds two sets of weights
STALE_WEIGHTS = ["*.safetensors", "model.safetensors.index.json"]


class HubError(OSError):
    """Publishing failed; the message says what happened and what to do."""


@dataclass
class PushResult:
    repo_id: str
    url: str  # the repo (at the branch, for a --revision push)
    revision: str
    commit: str  # the branch head after the push
    changed: bool  # False: the repo already held exactly these files, and no commit was made


def check_model_folder(model_dir: str | os.PathLike) -> Path:
    """The folder must hold everything from_pretrained, trust_remote_code and pipeline() need."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; expected a model folder written by hf_nanogpt.")
    present = {p.name for p in folder.iterdir()}
    problems = []
    config = json.loads((folder / "config.json").read_text()) if "config.json" in present else None
    if config is None:
        problems.append("config.json")
    elif config.get("model_type") != "nanogpt":
        problems.append(f"config.json with model_type 'nanogpt' (found {config.get('model_type')!r})")
    elif "AutoModelForCausalLM" not in config.get("auto_map", {}):
        problems.append("config.json with an auto_map for AutoModelForCausalLM (remote code)")
    else:
        code = sorted({ref.split(".")[0] + ".py" for ref in config["auto_map"].values()})
        problems += [name for name in code if name not in present]
    if not present & {"model.safetensors", "model.safetensors.index.json"}:
        problems.append("model.safetensors")
    problems += [
        name for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json") if name not in present
    ]
    if problems:
        raise ValueError(
            f"{folder} is not a complete hf_nanogpt model folder: it lacks {', '.join(problems)} "
            f"(found {', '.join(sorted(present)) or 'nothing'}). Write it with "
            f"hf_nanogpt.saving.save_model_folder(model, folder, tokenizer) or `hf-nanogpt convert`, "
            f"which write all of these."
        )
    return folder


def login_help(endpoint: str) -> str:
    return (
        f"Create a token with write access at {endpoint}/settings/tokens, then run `hf auth login` or set HF_TOKEN "
        f"(or pass --token)."
    )


def check_write_access(api: HfApi, repo_id: str) -> None:
    """whoami() before anything is created: the token must exist, be valid, have write access and cover
    the repo's namespace."""
    try:
        me = api.whoami()
    except LocalTokenNotFoundError:
        raise HubError(f"No Hugging Face token found: publishing needs one. {login_help(api.endpoint)}") from None
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 401:
            reason = str(err).splitlines()[0]
            raise HubError(
                f"The Hub at {api.endpoint} rejected the token ({reason}). {login_help(api.endpoint)}"
            ) from None
        raise
    user = me["name"]
    if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise HubError(
            f"This token of {user!r} is read-only, and publishing needs write access. {login_help(api.endpoint)}"
        )
    namespace, _, name = repo_id.partition("/")
    namespaces = [user, *(org["name"] for org in me.get("orgs", []))]
    if namespace not in namespaces:
        raise HubError(
            f"This token belongs to {user!r}, who cannot create repos under {namespace!r} (its namespaces: "
            f"{', '.join(namespaces)}). Push to {user}/{name}, "
            f"or use a token of an account that can write to {namespace!r}."
        )


@contextlib.contextmanager
def staged_folder(folder: Path, card: str) -> Iterator[Path]:
    """The folder as it will be published: its files (linked, not copied) and `card` as README.md.
    Hidden files (a .cache/ of `hf download`, editor files) and the trainer's LOCAL_ONLY state stay
    behind. `folder` itself is not touched."""
    with tempfile.TemporaryDirectory(prefix="hf_nanogpt-push-") as tmp:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if (
                path.is_dir()
                or rel == Path("README.md")
                or rel.parts[0] in LOCAL_ONLY
                or any(part.startswith(".") for part in rel.parts)
            ):
                continue
            target = Path(tmp) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(path.resolve(), target)
            except OSError:  # no symlinks (some Windows setups): copy
                shutil.copy2(path, target)
        (Path(tmp) / "README.md").write_text(card, encoding="utf-8")
        yield Path(tmp)


def causes(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from (huggingface_hub wraps LFS failures in RuntimeError)."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    return chain


def unreachable(api: HfApi, repo_id: str) -> str | None:
    """Why the Hub does not answer now (a transport error), or None when it answers, even with an error."""
    try:
        api.repo_exists(repo_id)
    except (TransportError, ConnectionError, TimeoutError) as err:
        return f"{type(err).__name__}: {err}"
    except HfHubHTTPError:
        pass
    return None


def explain(err: BaseException, what: str, api: HfApi, repo_id: str) -> str:
    """One message for a failed push: what happened, and what to do."""
    chain = causes(err)
    detail = "; ".join(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}" for e in chain)
    again = "The push did not complete: run it again (files the Hub already has are not sent twice)."
    if isinstance(err, ValueError):  # e.g. an invalid repo id: running again will not help
        return f"Failed {what}: {detail}."
    http = next((e for e in chain if isinstance(e, HfHubHTTPError) and e.response is not None), None)
    if http is not None and http.response.status_code in (401, 403):
        return f"The Hub refused {what} ({detail}). {login_help(api.endpoint)}"
    if http is None:
        # without an HTTP answer the cause may be hidden: huggingface_hub's parallel LFS uploads report a
        # dropped connection as "client has been closed" in the other threads. Ask the Hub once more.
        down = unreachable(api, repo_id)
        if down or any(isinstance(e, (TransportError, ConnectionError, TimeoutError)) for e in chain):
            now = f"; now: {down}" if down else ""
            return f"Lost the connection to the Hub at {api.endpoint} while {what} ({detail}{now}). {again}"
    return f"Failed {what} ({detail}). {again}"


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    log=print,
) -> PushResult:
    """Publish a model folder written by this package as the Hub repo `repo_id` ("user/name" or
    "org/name"), in one commit on `revision` (a branch, created from main if needed; default main).

    `token` defaults to HF_TOKEN or the one `hf auth login` stored; `endpoint` to HF_ENDPOINT.
    Returns where the model is and whether a commit was made. Raises ValueError for an incomplete
    folder (before any network call) and HubError for everything the Hub or the network refuses.
    """
    folder = check_model_folder(model_dir)
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_nanogpt", library_version=__version__)
    secret = token or get_token()
    branch = revision or "main"
    what = f"pushing {folder} to {repo_id}"
    try:
        if repo_id.count("/") != 1:
            raise ValueError(f"{repo_id!r} is not a repo id: expected user/name or org/name")
        if secret and secret in repo_id:  # arguments mixed up: never create a repo named after the token
            raise ValueError(
                "the repo id holds the token: pass the token with --token or HF_TOKEN, and REPO_ID as user/name"
            )
        check_write_access(api, repo_id)
        repo_url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        before = api.repo_info(repo_id, revision=branch)
        if private and not before.private:
            raise HubError(
                f"{repo_id} already exists and is public: --private does not change an existing repo. Make it "
                f"private in its settings ({repo_url}/settings) first, or push to a new repo id."
            )
        with staged_folder(folder, card_for_repo(folder, repo_id)) as staged:
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staged,
                revision=branch,
                commit_message=commit_message or f"Upload {folder.name} with hf_nanogpt",
                delete_patterns=STALE_WEIGHTS,
            )
    except (HfHubHTTPError, TransportError, RuntimeError, OSError, ValueError) as err:
        ours = isinstance(err, HubError)
        message = str(err) if ours else explain(err, what, api, repo_id)
        cause = err.__cause__ if ours else err
        leaked = bool(secret) and (secret in message or any(secret in str(e) for e in causes(err)))
        if secret:
            message = message.replace(secret, "<token>")
        # keep the original exception for debugging, unless its text holds the token
        raise HubError(message) from (None if leaked else cause)

    url = repo_url if branch == "main" else f"{repo_url}/tree/{branch}"
    result = PushResult(repo_id, url, branch, commit.oid, changed=commit.oid != before.sha)
    if result.changed:
        log(f"pushed {folder} to {url} (commit {commit.oid[:7]})")
    else:
        log(f"{url} already holds these files (commit {commit.oid[:7]}): nothing to push, no new commit")
    return result


__all__ = ["HubError", "PushResult", "check_model_folder", "push_to_hub"]
